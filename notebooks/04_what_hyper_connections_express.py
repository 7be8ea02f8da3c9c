# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # What hyper-connections express
#
# *Goal: write familiar architectures as HC matrices, and unfold any stack of HC layers into
# one picture of which layer feeds which.*
#
# [![Open In Colab](figures/colab-badge.svg)](https://colab.research.google.com/github/hclib-book/hclib/blob/main/notebooks/04_what_hyper_connections_express.ipynb)
#
# **Prerequisites:** Chapter 1 (Pre-Norm and Post-Norm residual connections), chapter 2 (the
# HC matrix, HC Eqs. 1-5), chapter 3 (dynamic weights, for the trained model at the end).
# Products of small matrices.
#
# An HC layer with $n$ streams is one $(n+1)\times(n+1)$ matrix
# $\begin{pmatrix} 0 & B \\ A_m & A_r \end{pmatrix}$ (HC Eq. 1): read the branch input
# $h_0 = H^\top A_m$ out of the streams, mix the streams with $A_r$, write the branch output
# back with weights $B$ (HC Eq. 2: $\hat H = B^\top T(h_0)^\top + A_r^\top H$). Different
# matrices give different architectures. Section 3 of the HC paper
# {cite:p}`zhu2024hyperconnections` makes this concrete: the two residual placements, a
# sequential and a parallel arrangement of layers, all are particular matrices. We derive each
# one and check it numerically, then turn the question around: given any stack of HC layers,
# how much does each layer's output reach each later layer (HC Eq. 27)?
#
# The default run takes well under a minute on two CPU cores; `HCLIB_BOOK_SIZE=full` trains the
# model of the last section four times longer.

# %% tags=["remove-input"]
# ruff: noqa: E402
import subprocess
import sys

HCLIB = "hclib[notebooks] @ git+https://github.com/hclib-book/hclib"
if "google.colab" in sys.modules:  # install the book's library on Colab only
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", HCLIB], check=True)

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import LogNorm, Normalize
from torch import nn
from torch.nn import functional as F

import hclib
from hclib.book import scaled
from hclib.diagrams import draw_unfolded_network
from hclib.models.mlp import DeepMLP
from hclib.plotting import color, show_figure, use_book_style
from hclib.toy import make_toy_data, train_toy

use_book_style()
torch.set_num_threads(1)  # tiny tensors: one thread is fastest, and much faster on a shared CPU
F64 = torch.float64
d = 12  # model width of the small checks


def prenorm_branch(seed):
    """A random branch with its own pre-norm, T = Tanh o Linear o LayerNorm, in float64."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.Tanh()).double()


# %% [markdown]
# ## Post-Norm is an input-dependent matrix
#
# {doc}`Chapter 2 <02_hyper_connections>` showed that with one stream the Pre-Norm residual is
# the HC matrix $\begin{pmatrix} 0 & 1 \\ 1 & 1 \end{pmatrix}$ (HC Eq. 15) and stated that
# Post-Norm needs the input-dependent
# $\begin{pmatrix} 0 & 1/\sigma \\ 1 & 1/\sigma \end{pmatrix}$ (HC Eq. 16). Here we check
# when the second statement is exact.
#
# Post-Norm normalises *after* the sum: $\hat h = \operatorname{LayerNorm}(h + T(h))$. A
# LayerNorm subtracts the mean over features, divides by the standard deviation, and applies
# a gain and a bias. HC Appendix G reads it as an HC matrix under three assumptions:
#
# 1. the gain and bias are the identity (a learned affine map can be folded into the next
#    layer's first linear map);
# 2. the sum $h + T(h)$ already has zero mean over features, which holds when $h$ has zero
#    mean and the branch re-centres its output ($T := C \circ T$ with $C(y) = y - \bar y$;
#    HC Eq. 36 writes $T = C \circ T \circ A$);
# 3. no $\varepsilon$ inside the square root.
#
# Then $\operatorname{LayerNorm}(h + T(h)) = (h + T(h))/\sigma$, with $\sigma$ the standard
# deviation over features of $h + T(h)$. Expanding the variance of a sum,
# $\sigma^2 = \sigma_h^2 + \sigma_{T(h)}^2 + 2\sigma_{h,T(h)}$, so
#
# $$\mathrm{HC}_{\text{Post-Norm}} = \begin{pmatrix} 0 & 1/\sigma \\ 1 & 1/\sigma \end{pmatrix},
# \qquad \sigma = \sqrt{\sigma_h^2 + \sigma_{T(h)}^2 + 2\sigma_{h,T(h)}}
# \qquad \text{(HC Eq. 16)}.$$
#
# The matrix depends on the token through $\sigma$, so it is not a fixed (static) HC matrix:
# the paper calls it "non-trainable". We build it per token from the three statistics and
# compare with PyTorch's LayerNorm ($\varepsilon = 0$, no affine) and with `hclib.Residual`'s
# `mappings`, which returns $1/\sigma$ as its write and mix weights.

# %%
torch.manual_seed(0)
linear = nn.Linear(d, d).double()


def recentred_branch(x):
    """T = C o Linear: the branch output has zero mean over features (assumption 2)."""
    y = linear(x)
    return y - y.mean(dim=-1, keepdim=True)


def postnorm_as_hc(h, branch):
    """HC Eq. 2 with the per-token matrix of HC Eq. 16 (n = 1)."""
    y = branch(h)  # the branch reads h_0 = A_m h = h
    hc, yc = h - h.mean(-1, keepdim=True), y - y.mean(-1, keepdim=True)
    var_h, var_y = hc.pow(2).mean(-1, keepdim=True), yc.pow(2).mean(-1, keepdim=True)
    cov = (hc * yc).mean(-1, keepdim=True)
    inv_sigma = 1 / torch.sqrt(var_h + var_y + 2 * cov)  # (tokens, 1)
    return inv_sigma * y + inv_sigma * h, inv_sigma  # B T(h) + A_r h with B = A_r = 1/sigma


# %% tags=["nbval-check-output"]
torch.manual_seed(1)
h = torch.randn(64, d, dtype=F64)
h = h - h.mean(-1, keepdim=True)  # assumption 2: zero-mean input
layer_norm = F.layer_norm(h + recentred_branch(h), (d,), eps=0.0)  # assumptions 1 and 3
out, inv_sigma = postnorm_as_hc(h, recentred_branch)
torch.testing.assert_close(out, layer_norm, rtol=0, atol=1e-12)
residual = hclib.Residual(d, recentred_branch, norm="post", eps=0.0)
torch.testing.assert_close(residual.mappings(h).post, inv_sigma, rtol=0, atol=1e-12)
print("Eq. 16 per token == LayerNorm(h + T(h)) under the assumptions:", True)
print("1/sigma from Eq. 16 == hclib.Residual(norm='post').mappings(h).post:", True)

# %% [markdown]
# The assumptions are not decoration. Drop the re-centring (a plain linear branch) and give
# $h$ a non-zero mean, and the matrix of Eq. 16 no longer reproduces the LayerNorm, because
# the LayerNorm also subtracts the mean of the sum, which no HC matrix can do:

# %% tags=["nbval-check-output"]
h_shifted = h + 0.5
out, _ = postnorm_as_hc(h_shifted, linear)
error = (out - F.layer_norm(h_shifted + linear(h_shifted), (d,), eps=0.0)).abs().max()
print(f"without the assumptions: max |Eq. 16 - LayerNorm| = {error:.2f}")

# %% [markdown]
# In the real Post-Norm networks of this book (and in `hclib.connection_matrix`) we still use
# $1/\sigma$ as the layer's weights: it captures the part of Post-Norm that matters for how
# layers connect, the division of everything carried so far by $\sigma$ at every layer.

# %% [markdown]
# ## The sequential arrangement
#
# With $n$ streams, the matrix
#
# $$\mathrm{HC}_{\text{seq}} = \begin{pmatrix} 0 & \mathbf 1_{1\times n} \\ e_1 & I_n
# \end{pmatrix} \qquad \text{(HC Eq. 42; Eq. 17 is } n = 2\text{)}$$
#
# reads stream 1 ($A_m = e_1$), leaves the streams as they are ($A_r = I$) and adds the
# branch output to every stream ($B = \mathbf 1$). It is HC's initialisation (HC Eq. 14) with
# stream 1 read everywhere instead of stream $k \bmod n$, so the induction of
# {doc}`Chapter 2 <02_hyper_connections>` applies unchanged: equal streams stay equal, each is the
# Pre-Norm chain $h \leftarrow h + T(h)$, and the extra streams carry copies. A numerical check:


# %%
def sequential_matrix(n):
    """HC Eq. 42: [[0, 1_{1 x n}], [e_1, I_n]]."""
    M = torch.zeros(n + 1, n + 1, dtype=F64)
    M[0, 1:] = 1.0  # B = 1
    M[1, 0] = 1.0  # A_m = e_1
    M[1:, 1:] = torch.eye(n, dtype=F64)  # A_r = I
    return M


print(sequential_matrix(2))

# %% tags=["nbval-check-output"]
for n in (2, 3, 4):
    branches = [prenorm_branch(seed) for seed in range(6)]
    h = torch.randn(8, d, dtype=F64)
    H = hclib.expand_streams(h, n)  # (tokens, n, d)
    ok = True
    for branch in branches:
        h = h + branch(h)  # the Pre-Norm chain
        H = hclib.HyperConnection.from_matrix(sequential_matrix(n), d, branch)(H)
        ok &= all(torch.allclose(H[:, i], h, rtol=0, atol=1e-12) for i in range(n))
    print(f"n={n}: after each of 6 layers every stream equals the Pre-Norm state: {ok}")

# %% [markdown]
# ## The parallel arrangement, and the matrix the paper's text lost
#
# A *parallel transformer block* (as in GPT-J and PaLM) lets attention and the FFN read the
# same input instead of one after the other. HC Section 3.2 shows that alternating two HC
# matrices with $n = 2$ does this for every pair of layers: the pair computes
#
# $$
# h^{k+1} = \big(T_a(h^k) + h^k\big) + \big(T_b(h^k) + h^k\big)
# \qquad \text{(HC Eq. 53, } n = 2\text{)},
# $$
#
# where $h^k$, the *group input*, is the sum of the two streams. The odd layers use
#
# $$\mathrm{HC}_{\text{odd}} = \begin{pmatrix} 0 & 1 & 0 \\ 1 & 1 & 1 \\ 1 & 1 & 1
# \end{pmatrix} \qquad \text{(HC Eq. 18)}.$$
#
# The even-layer matrix, HC Eq. 19, did not survive in the text versions of the paper we
# could read, so we derive it. Call the two streams *slots* and let $x = s_1 + s_2$ be the
# group input. The odd layer reads $A_m^\top H = s_1 + s_2 = x$; its mixing $A_r = \mathbf 1
# \mathbf 1^\top$ sets *both* slots to $s_1 + s_2 = x$; and $B = (1, 0)$ adds its output to
# slot 1. After it,
#
# | | slot 1 | slot 2 |
# |---|---|---|
# | before the pair | $s_1$ | $s_2$ |
# | after the odd layer (Eq. 18) | $x + T_a(x)$ | $x$ |
# | after the even layer (Eq. 19) | $x + T_a(x)$ | $x + T_b(x)$ |
#
# The even layer has three jobs, one per block of its matrix:
#
# * **read $x$**, not $x + T_a(x)$, or it would be sequential: slot 2 still holds $x$, so
#   $A_m = e_2 = (0, 1)^\top$;
# * **keep both slots** (slot 1 holds $T_a$'s result, slot 2 must still be $x$ when the output
#   arrives): $A_r = I$;
# * **write its output into slot 2**, where it read: $B = e_2^\top = (0, 1)$.
#
# Assembled as $\begin{pmatrix} 0 & B \\ A_m & A_r \end{pmatrix}$:
#
# $$\mathrm{HC}_{\text{even}} = \begin{pmatrix} 0 & 0 & 1 \\ 0 & 1 & 0 \\ 1 & 0 & 1
# \end{pmatrix} \qquad \text{(HC Eq. 19, derived)}.$$
#
# The sum of the slots is then $2x + T_a(x) + T_b(x)$, Eq. 53. Note the $2x$: unlike the
# usual parallel block $x + T_a(x) + T_b(x)$, HC's version counts the group input once per
# layer. Each branch normalises its own input, so the branches do not mind, but the carried
# signal doubles every group; we will see it in the unfolded matrix below.

# %% tags=["nbval-check-output"]
HC_ODD = torch.tensor([[0, 1, 0], [1, 1, 1], [1, 1, 1]], dtype=F64)  # HC Eq. 18
HC_EVEN = torch.tensor([[0, 0, 1], [0, 1, 0], [1, 0, 1]], dtype=F64)  # HC Eq. 19, derived

torch.manual_seed(2)
H = torch.randn(8, 2, d, dtype=F64)  # any two slots
for pair in range(3):
    T_a, T_b = prenorm_branch(10 + 2 * pair), prenorm_branch(11 + 2 * pair)
    x = hclib.reduce_streams(H)  # the group input
    H = hclib.HyperConnection.from_matrix(HC_ODD, d, T_a)(H)
    slots_after_odd = torch.allclose(H[:, 0], x + T_a(x), rtol=0, atol=1e-12) and torch.allclose(
        H[:, 1], x, rtol=0, atol=1e-12
    )
    H = hclib.HyperConnection.from_matrix(HC_EVEN, d, T_b)(H)
    eq53 = torch.allclose(hclib.reduce_streams(H), T_a(x) + x + T_b(x) + x, rtol=0, atol=1e-12)
    print(
        f"pair {pair}: slots after the odd layer as in the table: {slots_after_odd}; "
        f"sum of slots == T_a(x) + x + T_b(x) + x: {eq53}"
    )

# %% [markdown]
# ### Any $n$: HC Eqs. 54-55 and an indexing slip
#
# For groups of $n$ layers, HC Appendix H gives the matrix of layer $k$ (layers numbered from
# 1) by the position of $k-1$ in its group:
#
# $$k - 1 \equiv 0 \pmod n:\quad \begin{pmatrix} 0 & e_1^\top \\ \mathbf 1_{n\times 1} &
# \mathbf 1_{n\times n} \end{pmatrix} \quad \text{(HC Eq. 54)}, \qquad
# k - 1 \equiv i \pmod n,\ i \ne 0:\quad \begin{pmatrix} 0 & e_i^\top \\ e_i & I_n
# \end{pmatrix} \quad \text{(HC Eq. 55)}.$$
#
# The first layer of a group reads the sum of all slots, sets every slot to it and writes
# into slot 1, as the odd layer above. The others should each read an untouched slot, keep the
# slots, and write back where they read. Read with the usual convention ($e_1$ is slot 1),
# Eq. 55 for $i = 1$ reads slot 1, which the first layer has just written to: the second
# layer would see $x + T_1(x)$, and the group would not be parallel. The arrangement works
# when $e_i$ in Eq. 55 means the slot with **0-based** index $i$ (slot $i+1$): for $n = 2$ that
# is exactly the even-layer matrix we derived. We check both readings.


# %%
def parallel_matrix(n, i, literal=False):
    """HC Eqs. 54-55 for the layer at position i (0-based) in its group of n.

    literal=True reads e_i in Eq. 55 as slot i (1-based), the reading that fails.
    """
    M = torch.zeros(n + 1, n + 1, dtype=F64)
    if i == 0:  # Eq. 54
        M[0, 1] = 1.0  # B = e_1^T: write into slot 1
        M[1:, :] = 1.0  # A_m = 1, A_r = 1 1^T: read the sum, every slot becomes the sum
        return M
    slot = i - 1 if literal else i  # 0-based index of the slot this layer reads and writes
    M[0, 1 + slot] = 1.0  # B = e^T
    M[1 + slot, 0] = 1.0  # A_m = e
    M[1:, 1:] = torch.eye(n, dtype=F64)  # A_r = I
    return M


# %% tags=["nbval-check-output"]
assert torch.equal(parallel_matrix(2, 0), HC_ODD) and torch.equal(parallel_matrix(2, 1), HC_EVEN)
for n in (2, 3, 4):
    for literal in (False, True):
        torch.manual_seed(n)
        H = torch.randn(8, n, d, dtype=F64)
        x = hclib.reduce_streams(H)
        branches = [prenorm_branch(20 + i) for i in range(n)]
        for i, branch in enumerate(branches):
            H = hclib.HyperConnection.from_matrix(parallel_matrix(n, i, literal), d, branch)(H)
        expected = sum(branch(x) + x for branch in branches)  # HC Eq. 53
        ok = torch.allclose(hclib.reduce_streams(H), expected, rtol=0, atol=1e-11)
        reading = "e_i = slot i (literal)" if literal else "e_i = slot i+1 (0-based i)"
        print(f"n={n}, {reading:<27}: group computes Eq. 53: {ok}")

# %% [markdown]
# For $n = 2$ both readings coincide only in Eq. 54; from the second layer on the literal
# reading fails for every $n$, and the 0-based one works.

# %% [markdown]
# ## Unfolding a stack into a layer-to-layer matrix
#
# Each HC matrix describes one layer. To see a whole network, follow every layer's output to
# every later layer. Number the layers $0, 1, \dots, L, L+1$: layer 0 is the embedding (its
# "output" $y_0 = h^0$ is copied into all streams, $H^0 = \mathbf 1 y_0^\top$), layers
# $1..L$ are the branches with outputs $y_j = T^j(h_0^j)$, and layer $L+1$ is the output,
# which reads the sum of the streams. Treat the $y_j$ as given; everything else is linear. One
# layer (HC Eq. 5) is
#
# $$H^k = A_r^{k\top} H^{k-1} + B^{k\top} y_k^\top.$$
#
# Unrolling this recursion down to $H^0 = B^{0\top} y_0^\top$ with $B^0 = \mathbf 1_{1\times n}$,
#
# $$H^{k-1} = \sum_{j=0}^{k-1} \big(A_r^{k-1\,\top} \cdots A_r^{j+1\,\top}\big) B^{j\top}
# y_j^\top = \sum_{j=0}^{k-1} \big(A_r^{j+1} \cdots A_r^{k-1}\big)^\top B^{j\top} y_j^\top,$$
#
# and layer $k$ reads $h_0^{k\top} = A_m^{k\top} H^{k-1}$, a weighted sum of the earlier
# outputs with the scalar weights
#
# $$c_{kj} = B^j \Big(\prod_{t=j+1}^{k-1} A_r^t\Big) A_m^k \qquad \text{(HC Eq. 27)},$$
#
# a $1\times n$ row, an $n\times n$ product (in increasing $t$, empty for $j = k-1$) and an
# $n\times 1$ column. For the output, $A_m^{L+1} = \mathbf 1_{n\times 1}$. The
# $(L+2)\times(L+2)$ matrix $C = (c_{kj})$ is strictly lower triangular: entry $(k, j)$ says
# how much of layer $j$'s output reaches layer $k$'s input. We build it from scratch.


# %%
def unfold(Bs, A_ms, A_rs):
    """HC Eq. 27: Bs[t] (n,), A_ms[t] (n,), A_rs[t] (n, n) for layers t = 1..L (list index t-1)."""
    L, n = len(Bs), Bs[0].shape[0]
    ones = torch.ones(n, dtype=F64)
    B = [ones] + list(Bs)  # B^0 = 1: the embedding is copied into every stream
    A_m = [None] + list(A_ms) + [ones]  # A_m^{L+1} = 1: the output sums the streams
    A_r = [None] + list(A_rs)
    C = torch.zeros(L + 2, L + 2, dtype=F64)
    for k in range(1, L + 2):
        for j in range(k):
            product = torch.eye(n, dtype=F64)
            for t in range(j + 1, k):
                product = product @ A_r[t]
            C[k, j] = B[j] @ product @ A_m[k]
    return C


# %% [markdown]
# To check it we need a stack whose layer outputs we know. A *free branch* ignores its input
# and returns a fixed vector (and records the input it was given), so the outputs $y_j$ are
# ours to choose and the inputs the layers receive can be compared with $\sum_j c_{kj} y_j$.
# The layers get random static matrices, and `hclib.connection_matrix` must agree too.


# %%
class FreeBranch:
    """A branch that returns a fixed output and records the input it received."""

    def __init__(self, y):
        self.y, self.seen = y, None

    def __call__(self, x):
        self.seen = x
        return self.y


# %% tags=["nbval-check-output"]
torch.manual_seed(3)
n, L, tokens = 3, 6, 5
y = [torch.randn(tokens, d, dtype=F64) for _ in range(L + 1)]  # y_0 (embedding) .. y_L
matrices = []
for _ in range(L):
    M = torch.randn(n + 1, n + 1, dtype=F64) * 0.7
    M[0, 0] = 0.0
    matrices.append(M)
branches = [FreeBranch(y[j]) for j in range(1, L + 1)]
layers = [
    hclib.HyperConnection.from_matrix(M, d, b) for M, b in zip(matrices, branches, strict=True)
]

C = unfold(
    [M[0, 1:] for M in matrices], [M[1:, 0] for M in matrices], [M[1:, 1:] for M in matrices]
)
torch.testing.assert_close(C, hclib.connection_matrix(layers), rtol=0, atol=1e-12)

H = hclib.expand_streams(y[0], n)
for layer in layers:
    H = layer(H)
inputs = [b.seen for b in branches] + [hclib.reduce_streams(H)]  # what layers 1..L+1 read
for k, seen in enumerate(inputs, start=1):
    torch.testing.assert_close(seen, sum(C[k, j] * y[j] for j in range(k)), rtol=0, atol=1e-10)
print("unfold (Eq. 27 by hand) == hclib.connection_matrix:", True)
print("every layer input == sum_j c_kj y_j:", True)

# %% [markdown]
# `hclib.connection_matrix` uses the per-token naming of chapter 3 (`pre` $= A_m$, `post`
# $= B$, `res` $= A_r^\top$) and computes the same products. For dynamic layers it first
# averages each layer's weights over the tokens and then composes the averages. That is a
# choice: the HC paper says only that its figures show averages of the per-token values, and the
# average over tokens of the per-token products $c_{kj}$ is in general not the product of the
# averaged weights. (The mHC paper, Chapter 6, computes its gains on mappings averaged over the
# tokens of a sequence.)
#
# ## Three small networks, drawn
#
# Before unfolding deep networks, look at three four-layer ones with fixed matrices, drawn as
# a network beside their unfolded matrix ({numref}`fig-04-networks`): Pre-Norm
# ($\begin{pmatrix} 0&1\\1&1\end{pmatrix}$ in every layer), Post-Norm with the same
# $\sigma = 1.5$ in every layer ($\begin{pmatrix} 0&1/\sigma\\1&1/\sigma\end{pmatrix}$, a
# stand-in for the per-token $\sigma$ of a real network) and two pairs of parallel layers
# (Eqs. 18-19).


# %%
def static_stack(matrices):
    """HC layers with the given static matrices and branches that play no role."""
    return [hclib.HyperConnection.from_matrix(M, d, nn.Identity()) for M in matrices]


SIGMA = 1.5
small = {
    "Pre-Norm": static_stack([torch.tensor([[0.0, 1.0], [1.0, 1.0]], dtype=F64)] * 4),
    f"Post-Norm, sigma = {SIGMA}": static_stack(
        [torch.tensor([[0.0, 1 / SIGMA], [1.0, 1 / SIGMA]], dtype=F64)] * 4
    ),
    "parallel pairs": static_stack([HC_ODD, HC_EVEN] * 2),
}
C_small = {name: hclib.connection_matrix(stack) for name, stack in small.items()}

# %% tags=["remove-output"]
fig, axes = plt.subplots(3, 2, figsize=(7.0, 9.6), gridspec_kw={"width_ratios": [1, 1.25]})
keys = ("pre-norm", "post-norm", "hc")
for (name, C), key, (ax_net, ax_mat) in zip(C_small.items(), keys, axes, strict=True):
    draw_unfolded_network(C, ax_net, ax_mat, color(key), name)
fig.tight_layout()
show_figure(fig, "fig-04-networks")

# %% [markdown]
# ```{glue:figure} fig-04-networks
# :name: fig-04-networks
#
# Three four-layer networks drawn as their layers (left: the embedding at the bottom, the output
# on top, an arc from every layer to every later layer it feeds, thicker for larger weights)
# beside their unfolded connection matrices (right; entry $(k, j)$ is how much of layer $j$'s
# output reaches layer $k$'s input). Pre-Norm: every layer feeds every later one with weight 1.
# Post-Norm with a fixed $\sigma = 1.5$: the weight falls by $1/\sigma$ per layer passed, so
# each layer hears mostly its nearest predecessors. Parallel pairs (HC Eqs. 18-19): no arc from
# layer 1 to layer 2 or from layer 3 to layer 4, the two layers of a pair read the same input,
# and the carried signal doubles from pair to pair.
# ```

# %% tags=["nbval-check-output"]
for name, C in C_small.items():
    print(f"{name:20s} output row: {[round(v, 3) for v in C[-1, :-1].tolist()]}")

# %% [markdown]
# ## Four networks, four patterns
#
# Now we unfold four networks of the same depth and draw $C$:
#
# * **Pre-Norm** (`hclib.Residual`): every entry below the diagonal is 1. Each layer reads the
#   plain sum of everything before it, the "lower triangle of ones".
# * **Post-Norm**: the toy MLP of chapter 1 with Post-Norm connections, at initialisation. Its
#   per-token matrices (Eq. 16) are computed from the states the toy inputs produce.
# * **Parallel blocks**: static HC with $n = 2$ and the alternating matrices of Eqs. 18-19.
# * **Trained dynamic HC**: the toy MLP with dynamic HC and $n = 4$, trained on the toy task
#   of `hclib.toy`. At initialisation its matrix is Pre-Norm's (with an output row of $n$,
#   because the output sums $n$ copies).

# %%
DEPTH, DIM, RATE = 12, 32, 4
STEPS = scaled(small=1500, full=6000)

data = make_toy_data(seed=0)
x = data.x_val  # the inputs whose states feed the input-dependent matrices


def unfolded(model):
    model.eval()
    with torch.no_grad():
        return hclib.connection_matrix(model.layers, model.state(x))


C_pre = hclib.connection_matrix([hclib.Residual(DIM, nn.Identity()) for _ in range(DEPTH)])

torch.manual_seed(0)
post = DeepMLP(
    data.in_features, data.classes, dim=DIM, depth=DEPTH, connection="residual", norm="post"
)
C_post = unfolded(post)

parallel = [
    hclib.HyperConnection.from_matrix(HC_ODD if k % 2 == 0 else HC_EVEN, DIM, nn.Identity())
    for k in range(DEPTH)
]
C_par = hclib.connection_matrix(parallel)

# %%
torch.manual_seed(0)
hc = DeepMLP(data.in_features, data.classes, dim=DIM, depth=DEPTH, connection="hc", n=RATE)
C_init = unfolded(hc)
history = train_toy(
    hc, data, steps=STEPS, lr=3e-3, weight_decay=0.1, eval_every=STEPS, progress=False
)
C_hc = unfolded(hc)

# %% tags=["nbval-check-output"]
expected_init = torch.tril(torch.ones(DEPTH + 2, DEPTH + 2), diagonal=-1)
expected_init[-1] *= RATE
print(
    "Pre-Norm: strictly lower-triangular ones:",
    torch.equal(C_pre, torch.tril(torch.ones_like(C_pre), -1)),
)
print(
    "HC at initialisation: Pre-Norm's pattern, output row = n:",
    torch.allclose(C_init, expected_init),
)
print("trained HC: validation accuracy above 0.6 (chance 0.125):", history["val_acc"][-1] > 0.6)

# %% tags=["remove-output"]
C_hc_shown = C_hc.clone()
C_hc_shown[-1] /= RATE  # the output sums n streams: divided by n, HC at init shows Pre-Norm's ones
panels = [
    ("Pre-Norm", C_pre, color("pre-norm"), Normalize(vmin=0, vmax=1)),
    ("Post-Norm (toy MLP, init)", C_post, color("post-norm"), None),
    (
        "parallel blocks (HC Eqs. 18-19)",
        C_par,
        color("hc"),
        LogNorm(vmin=1, vmax=float(C_par.max())),
    ),
    (f"dynamic HC, n={RATE}, trained (output row / n)", C_hc_shown, color("hc"), None),
]
fig, axes = plt.subplots(2, 2, figsize=(9.5, 8.4))
for ax, (title, C, title_color, norm) in zip(axes.flat, panels, strict=True):
    shown = C.numpy().astype(float)
    shown[np.triu_indices_from(shown)] = np.nan  # on and above the diagonal: no connection
    if isinstance(norm, LogNorm):
        shown[shown == 0] = np.nan  # log scale: leave the zeros blank too
    image = ax.imshow(shown, cmap="viridis", norm=norm)
    fig.colorbar(image, ax=ax, shrink=0.8, label="weight $c_{kj}$")
    ax.set_title(title, color=title_color)
    ticks = range(0, DEPTH + 2, 2)
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xlabel("source layer $j$ (0 = embedding)")
    ax.set_ylabel(f"target layer $k$ ({DEPTH + 1} = output)")
    ax.grid(False)
fig.tight_layout()
show_figure(fig, "fig-04-unfolded")

# %% [markdown]
# ```{glue:figure} fig-04-unfolded
# :name: fig-04-unfolded
#
# Unfolded connection matrices (HC Eq. 27) of four networks of equal depth: row $k$ shows how
# much of each earlier layer's output reaches layer $k$'s input; blank cells are zero (no path).
# Pre-Norm: a uniform triangle of ones. Post-Norm: weights shrink the further back the source
# layer is. Parallel blocks (log colour scale): a staircase, because the two layers of a pair
# read the same input and the second never sees the first, with weights that double from one
# pair to the next. Trained HC (output row divided by $n = 4$, so that HC at initialisation
# would look exactly like the Pre-Norm panel): the learned pattern discussed below. Each panel
# has its own colour scale.
# ```
#
# {numref}`fig-04-unfolded` shows the four patterns at depth 12. The Post-Norm entry $c_{kj}$
# is the product of the factors $1/\sigma$ of layers $j, \dots, k-1$ ({ref}`ex-04-postnorm`).
# In this freshly initialised toy MLP the branch outputs are small next to the normalised
# state, so $\sigma$ is close to one and the decay is slow; the first layer, whose input is the
# small embedding, has $\sigma < 1$ and weights above one. The numbers behind the three structured
# panels:

# %% tags=["nbval-check-output"]
print(
    "Post-Norm: c_{k,j} shrinks with distance k-j in the output row:",
    bool((C_post[-1, 2:-1].diff() > 0).all()),
)
print("Post-Norm: c_{L+1,L} =", f"{C_post[-1, -2]:.2f}", " c_{L+1,2} =", f"{C_post[-1, 2]:.2f}")
print(
    "parallel: rows 2g+1 and 2g+2 equal (a pair reads one input):",
    all(torch.equal(C_par[2 * g + 1], C_par[2 * g + 2]) for g in range(DEPTH // 2)),
)
print(
    "parallel: no path from the odd layer to the even layer of a pair:",
    all(C_par[2 * g + 2, 2 * g + 1] == 0 for g in range(DEPTH // 2)),
)
print(
    "parallel: largest weight (embedding -> output) =",
    int(C_par.max()),
    "= n * 2 ** (L/2) =",
    2 * 2 ** (DEPTH // 2),
)

# %% [markdown]
# ## Does the trained model learn a Λ?
#
# In OLMo-1B-DHC×4 the HC paper finds a **Λ-shaped** pattern (HC Section 4.5, Figure 7): large
# weights near the diagonal, so that each layer leans on the few layers just below it
# (Post-Norm-like), *and* large weights in the first columns, so that the bottom layers
# feed almost every later layer (Pre-Norm-like), with smaller weights in between. Our toy
# model is about five orders of magnitude smaller than OLMo-1B-DHC×4 (printed below), trains
# for a minute instead of weeks, and its "layers" are one linear map each. We measure the
# pattern rather than eyeball it:
# for each row $k \ge 6$ we average the weights in three regions,
#
# * **bottom**: the embedding and layer 1 (columns 0-1),
# * **near**: the two layers just below $k$ (columns $k-2$, $k-1$),
# * **middle**: everything in between,
#
# and call the pattern Λ-shaped if bottom and near are both larger than middle. Pre-Norm has
# all three equal. In the output row (divided by $n$) we take the embedding alone as the
# bottom, since that is the connection the paper discusses there.

# %% tags=["nbval-check-output"]
toy_params = sum(p.numel() for p in hc.parameters())
OLMO_DHC4 = 1.17715846e9  # OLMo-1B-DHC×4, HC Table 7
print(f"toy HC model: {toy_params} parameters; OLMo-1B-DHC×4: {OLMO_DHC4:.3g}")
print(f"ratio: 10^{np.log10(OLMO_DHC4 / toy_params):.1f}")


# %%
def regions(C):
    """Mean weight of the bottom, middle and near regions over rows 6..L (the output excluded)."""
    rows = [
        (C[k, :2].mean(), C[k, 2 : k - 2].mean(), C[k, k - 2 : k].mean())
        for k in range(6, C.shape[0] - 1)
    ]
    return torch.tensor(rows).mean(0).tolist()


def output_regions(C):
    """The output row divided by n (it sums the n streams): embedding, middle, near."""
    out = C[-1] / RATE
    return [out[0].item(), out[2:-3].mean().item(), out[-3:-1].mean().item()]


for name, (bottom, middle, near) in (
    ("Pre-Norm", regions(C_pre)),
    ("HC at init", regions(C_init)),
    ("HC trained", regions(C_hc)),
    ("  output / n", output_regions(C_hc)),
):
    print(f"{name:<12} bottom {bottom:.2f}  middle {middle:.2f}  near {near:.2f}")
print(f"embedding -> output, / n: {C_hc[-1, 0] / RATE:.2f}")

# %% [markdown]
# As in chapter 3, the trained values vary a little from machine to machine; the checked cell
# states the comparisons with a 10% margin.

# %% tags=["nbval-check-output"]
bottom, middle, near = regions(C_pre)
print("Pre-Norm: Lambda-shaped:", bottom > 1.1 * middle and near > 1.1 * middle)
bottom, middle, near = regions(C_hc)
print(
    "HC trained, layer inputs: bottom > middle:",
    bottom > 1.1 * middle,
    "  near > middle:",
    near > 1.1 * middle,
)
bottom, middle, near = output_regions(C_hc)
print(
    "HC trained, output row:   bottom > middle:",
    bottom > 1.1 * middle,
    "  near > middle:",
    near > 1.1 * middle,
)
print(
    "HC trained: the embedding still reaches the output with weight > n/2:",
    bool(C_hc[-1, 0] > RATE / 2),
)

# %% tags=["remove-output"]
fig, ax = plt.subplots(figsize=(6.4, 3.4))
for k, style in ((DEPTH + 1, "-"), (DEPTH, "--"), (DEPTH // 2 + 2, ":")):
    label = "output row" if k == DEPTH + 1 else f"input of layer {k}"
    scale = RATE if k == DEPTH + 1 else 1  # the output sums n streams: divide by n to compare
    ax.plot(
        range(k),
        (C_hc[k, :k] / scale).numpy(),
        style,
        marker="o",
        ms=3,
        color=color("hc"),
        label=f"HC trained, {label}" + (" / n" if scale > 1 else ""),
    )
ax.axhline(1.0, color=color("pre-norm"), lw=1.5, label="Pre-Norm (and HC at init)")
ax.set_xlabel("source layer $j$ (0 = embedding)")
ax.set_ylabel("weight $c_{kj}$")
ax.legend(fontsize=8, loc="upper center")
show_figure(fig, "fig-04-rows")

# %% [markdown]
# ```{glue:figure} fig-04-rows
# :name: fig-04-rows
#
# Three rows of the trained model's unfolded matrix, plotted against the source layer (the
# output row divided by $n = 4$ so that all start from the same Pre-Norm level of one). A Λ in
# the matrix is a dip in the middle of each row: high at the embedding, low in the middle, high
# again next to the diagonal.
# ```
#
# **Does the small model show the Λ? By our measure, yes, in a weak form.** Starting from
# Pre-Norm's flat rows, training left the weights of the middle layers below those of the
# bottom layers and of the nearest layers, in the inputs of the deep layers and in the output:
# the dip of {numref}`fig-04-rows`. All three regions move, and not all of them up: the checked
# comparisons above are about their order, not their size. Three differences from the paper
# should be said just as plainly:
#
# * the contrast is mild: the weights stay within a small factor of Pre-Norm's ones (compare
#   the colour scales of {numref}`fig-04-unfolded`), nothing like a band that switches layers
#   off;
# * the embedding is *not* removed from the output: it still reaches the output with more than
#   half of its initial weight, whereas OLMo-1B-DHC×4 learns to cancel it there (HC
#   Section 4.5);
# * the pattern takes training to appear, and what a shorter run learns is left to the reader:
#   rerun the last section with a smaller `STEPS` and compare the three regions.
#
# Our model also cannot show the paper's other findings that depend on a transformer (attention
# and FFN layers behaving differently) or on reading the streams separately (HC Eqs. 28-29:
# long-range connections stored in pairs of streams with opposite signs); exercise material
# for the GPT of later chapters.

# %% [markdown]
# ## Summary
#
# * Pre-Norm is the static HC matrix $\begin{pmatrix} 0 & 1 \\ 1 & 1\end{pmatrix}$ (HC Eq. 15,
#   Chapter 2); Post-Norm is $\begin{pmatrix} 0 & 1/\sigma \\ 1 & 1/\sigma\end{pmatrix}$
#   with a per-token $\sigma$ (HC Eq. 16), exact only when the sum is already centred and the
#   norm has no affine part and no $\varepsilon$.
# * With $n$ streams, one matrix gives a sequential stack (HC Eq. 42) and alternating matrices
#   give parallel blocks (HC Eqs. 18-19, 54-55). We derived the even-layer matrix
#   $\begin{pmatrix} 0&0&1\\0&1&0\\1&0&1\end{pmatrix}$ that the paper's text lost, and showed
#   that Eq. 55's $e_i$ must index slots from 0.
# * Any stack of HC layers unfolds into a layer-to-layer matrix with entries
#   $c_{kj} = B^j (\prod_t A_r^t) A_m^k$ (HC Eq. 27); `hclib.connection_matrix` computes it,
#   averaging dynamic weights over tokens.
# * Drawn as networks ({numref}`fig-04-networks`), Pre-Norm feeds every layer from every
#   earlier one, Post-Norm mostly from the nearest, and parallel pairs skip the partner layer.
# * Pre-Norm unfolds to a triangle of ones, Post-Norm to weights that decay with distance,
#   parallel blocks to a staircase. A small dynamic HC model trained on the toy task moves from
#   Pre-Norm's triangle toward a weak Λ (bottom and nearby layers weigh more than the middle),
#   but keeps the embedding in its output, unlike the paper's OLMo model.

# %% [markdown]
# ## Exercises
#
# ```{exercise} Is the even-layer matrix unique?
# :label: ex-04-even
# Find a different $3\times 3$ matrix for the even layer that also makes every pair compute
# HC Eq. 53 (the *sum* of the slots), and say what is lost with it. Check your answer
# with `hclib.HyperConnection.from_matrix`.
# ```
#
# ```{solution} ex-04-even
# :class: dropdown
# Writing into slot 1 instead, $B = (1, 0)$ with $A_m = e_2$ and $A_r = I$, i.e.
# $\begin{pmatrix} 0&1&0\\0&1&0\\1&0&1\end{pmatrix}$, leaves slot 1 $= x + T_a(x) + T_b(x)$
# and slot 2 $= x$: the sum is again $2x + T_a(x) + T_b(x)$. Only the sum is fixed by Eq. 53,
# and the next odd layer reads and mixes only the sum, so the network computes the same
# function. What differs is the bookkeeping: with Eq. 19 each slot ends holding one branch's
# result plus the input, which is the pattern that generalises to $n$ layers (Eq. 55: each
# layer writes where it read).
# ```
#
# ```{exercise} Post-Norm as a product of $1/\sigma$
# :label: ex-04-postnorm
# Show that for a Post-Norm stack, Eq. 27 gives $c_{kj} = \prod_{t=j}^{k-1} 1/\sigma_t$ for
# $j \ge 1$ (and the same product from $t = 1$ for $j = 0$), where $\sigma_t$ is layer $t$'s
# standard deviation. Check it on `C_post` with `post.layers[t].mappings(h)` averaged over the
# tokens. If every $\sigma_t = \sigma$, how fast does the weight decay with distance?
# ```
#
# ```{solution} ex-04-postnorm
# :class: dropdown
# With $n = 1$, $A_m^k = 1$ and $B^t = A_r^t = 1/\sigma_t$, so
# $c_{kj} = B^j \prod_{t=j+1}^{k-1} A_r^t = \prod_{t=j}^{k-1} 1/\sigma_t$ for $j \ge 1$; for the
# embedding $B^0 = 1$ and the product starts at $t = 1$. (Use the token averages of the
# mappings, as `connection_matrix` does.) With a constant $\sigma > 1$ the weight falls
# geometrically, as $\sigma^{-(k-j)}$: Post-Norm keeps only the last few layers, which is
# HC's reading of why Post-Norm avoids representation collapse but makes deep gradients
# vanish.
# ```
#
# ```{exercise} The sequential arrangement, unfolded
# :label: ex-04-sequential
# Without running code, what is the unfolded matrix of 6 layers of $\mathrm{HC}_{\text{seq}}$
# (HC Eq. 42) with $n = 3$? Then check with `hclib.connection_matrix`.
# ```
#
# ```{solution} ex-04-sequential
# :class: dropdown
# $A_r = I$, so every product is $I$ and $c_{kj} = B^j A_m^k = \mathbf 1^\top e_1 = 1$ for
# every layer input: the triangle of ones of Pre-Norm. In the output row $A_m^{L+1} =
# \mathbf 1$, so $c_{L+1, j} = \mathbf 1^\top \mathbf 1 = n = 3$: the output sums three equal
# copies, exactly like HC at initialisation.
# ```
#
# ```{exercise} Where does the doubling come from?
# :label: ex-04-doubling
# In {numref}`fig-04-unfolded` the parallel arrangement's weights double from one pair of
# layers to the next. Which block of which matrix causes it? Change that block so that the
# carried signal no longer grows, and check that each pair then computes $x + T_a(x) + T_b(x)$.
# ```
#
# ```{solution} ex-04-doubling
# :class: dropdown
# The odd layer's $A_r = \mathbf 1\mathbf 1^\top$ copies the sum $x$ into *both* slots, so
# the slots hold $2x$ in total before any branch output is added. Move everything into slot 2
# instead and empty slot 1: $A_r = \begin{pmatrix}0&1\\0&1\end{pmatrix}$ (entry $ij$ is how much
# of slot $i$ goes into slot $j$), with $A_m = \mathbf 1$ and $B = (1, 0)$ as before. After
# the odd layer slot 1 holds $T_a(x)$ and slot 2 holds $x$; the even layer (Eq. 19) reads
# slot 2 and adds $T_b(x)$ there, and the sum of the slots is
# $x + T_a(x) + T_b(x)$. The unfolded weights are then 0 or 1,
# except the embedding's column, which stays 2 (the embedding enters as two copies).
# ```
