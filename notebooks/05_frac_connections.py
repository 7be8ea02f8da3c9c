# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
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
# # Frac-connections
#
# *Goal: keep what hyper-connections learn about mixing layers while carrying a hidden state
# no wider than the residual stream's, by splitting it into fractions instead of copying it.*
#
# [![Open In Colab](figures/colab-badge.svg)](https://colab.research.google.com/github/hclib-book/hclib/blob/main/notebooks/05_frac_connections.ipynb)
#
# **Prerequisites:** Chapter 1 (the Pre-Norm residual and the seesaw, including the
# cosine similarity of consecutive layers' inputs), Chapter 2 (streams and the HC matrix) and
# Chapter 3 (dynamic weights). Background: `torch.autograd` saves tensors for the backward
# pass.
#
# Hyper-connections {cite:p}`zhu2024hyperconnections` carry $n$ copies of the hidden state from
# layer to layer. That buys the network freedom to arrange its layers, and it costs memory: the
# state that every layer reads, writes and keeps for the backward pass is $n$ times wider.
# Frac-connections {cite:p}`zhu2025fracconnections` (FC) ask how much of that freedom survives
# if the state keeps its width $d$ and is *cut* into $m$ pieces instead. This chapter builds an
# FC layer from its matrix, checks that it starts out as the Pre-Norm residual exactly,
# defines the dynamic version that every FC experiment trains, measures what FC saves in memory,
# and tests the paper's claim about representation diversity on the toy task.
#
# What the paper reports (FC Tables 1, 3 and 4, Figures 4 and 5; **the paper's numbers, not
# reproduced in this book**), for dynamic FC with $m = 4$ fractions:
#
# | model (training tokens) | training loss vs baseline | 7-benchmark average, baseline $\to$ FC |
# |---|---|---|
# | OLMoE-1.3B, mixture of experts (about 500B) | $-0.014$ | |
# | OLMoE-7B, mixture of experts (3T) | $-0.012$ | 68.30 $\to$ 68.65 |
# | OLMo2-1B2, dense (2T) | | 62.5 $\to$ 63.2 |
#
# The extra parameters are 165,056 for the dense 1.2B model (0.014%).

# %% tags=["remove-input"]
import subprocess
import sys

if "google.colab" in sys.modules:
    hclib_url = "hclib[notebooks] @ git+https://github.com/hclib-book/hclib"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", hclib_url], check=True)

# %% tags=["remove-input"]
# ruff: noqa: E402  (the imports follow the Colab install cell)
import matplotlib.pyplot as plt
import torch
from torch import nn

import hclib
from hclib.book import scaled
from hclib.diagrams import draw_split_vs_copies
from hclib.models.mlp import DeepMLP
from hclib.models.wiring import build_connection, enter_state, leave_state
from hclib.plotting import color, show_figure, use_book_style
from hclib.toy import make_toy_data, seesaw_measures, train_toy

use_book_style()
# The models here are tiny: one thread avoids the thread start-up cost that dominates small
# operations on a CPU (and is much worse when other programs share the cores).
torch.set_num_threads(1)

# %% [markdown]
# The experiment at the end of the chapter trains three small networks. By default it runs at a
# size that keeps the whole chapter near a minute on two CPU cores; set the environment variable
# `HCLIB_BOOK_SIZE=full` before starting Jupyter to train them longer, with larger batches (the
# text describes the default run).

# %%
DEPTH = scaled(small=32, full=32)  # blocks in the toy networks of the last section
STEPS = scaled(small=150, full=1500)  # training steps per network
BATCH = scaled(small=128, full=256)  # training batch size
print(f"book size: {hclib.book.book_size()}, depth={DEPTH}, steps={STEPS}, batch={BATCH}")

# %% [markdown]
# ## Splitting instead of widening
#
# HC turns the hidden state $h \in \mathbb{R}^d$ into a matrix by stacking $n$ copies of it.
# FC turns it into a matrix by reshaping (FC Eq. 6):
#
# $$
# H = \begin{pmatrix} h_1 \\ \vdots \\ h_m \end{pmatrix}
# = \operatorname{Reshape}\big(h, (m, d/m)\big), \qquad h_i \in \mathbb{R}^{d/m}.
# $$
#
# Fraction $i$ is the contiguous block of features $i\,d/m, \dots, (i+1)\,d/m - 1$. The paper
# calls $m$ the *frac-rate* and thinks of it as an expansion rate $n = 1/m \le 1$: HC with
# $n > 1$ widens, FC with $m > 1$ narrows each row, and the two coincide at $n = m = 1$.
# `hclib.split_fractions` does the reshape and `hclib.merge_fractions` undoes it.

# %% tags=["nbval-check-output"]
d, m, n = 8, 4, 4
h = torch.arange(d, dtype=torch.float32)
H_fc = hclib.split_fractions(h, m)  # (m, d/m)
H_hc = hclib.expand_streams(h, n)  # (n, d)
print("h            ", h.tolist())
print("FC fractions ", H_fc.tolist())
print("HC streams   ", tuple(H_hc.shape), "every row equals h:", bool((H_hc == h).all()))
print("merge(split(h)) == h:", torch.equal(hclib.merge_fractions(H_fc), h))
print("split is a view of h (no copy):", H_fc.data_ptr() == h.data_ptr())
print("elements carried: residual", h.numel(), "| FC", H_fc.numel(), "| HC", H_hc.numel())

# %% [markdown]
# The split costs nothing: it is a view of the same memory. The state has $d$ elements, as the
# residual stream does, where HC's has $n d$. {numref}`fig-05-split-vs-copies` draws the two
# states to scale.

# %% tags=["remove-output"]
ax = draw_split_vs_copies(d=16, n=4, m=4)
ax.set_title("The carried state, one cell per number (colour: feature index)")
show_figure(ax.figure, "fig-05-split-vs-copies")

# %% [markdown]
# ```{glue:figure} fig-05-split-vs-copies
# :name: fig-05-split-vs-copies
#
# A hidden state of $d = 16$ features (top), as HC carries it with $n = 4$ streams (middle) and as
# FC carries it with $m = 4$ fractions (bottom), drawn to scale: one cell is one number, its
# colour the feature index. HC repeats every feature in every stream, four times the numbers; FC
# stacks four contiguous quarters of the same vector, the same 16 numbers.
# ```

# %% [markdown]
# ## The FC matrix
#
# An FC layer is described by one matrix of shape $(m+1) \times 2m$ (FC Eq. 7):
#
# $$
# \mathcal{FC} = \begin{pmatrix} \mathbf{0}_{1\times m} & B \\ Y & A \end{pmatrix},
# \qquad B \in \mathbb{R}^{1\times m},\; Y \in \mathbb{R}^{m\times m},
# \; A \in \mathbb{R}^{m\times m}.
# $$
#
# Compare the HC matrix of Chapter 2, $\begin{pmatrix} 0 & B \\ A_m & A_r \end{pmatrix}$ of shape
# $(n+1)\times(n+1)$. Two blocks play the same roles: $A$ mixes the fractions of the carried
# state (HC's $A_r$) and $B$ weights what the layer writes back (HC's $B$). The read-out
# changes: HC's single column $A_m$ collapses $n$ streams into one $d$-vector, whereas FC's
# $Y$ is a full $m \times m$ matrix, because the branch input must again be $d$ wide and is
# assembled from $m$ mixed fractions. Here is the matrix FC starts from (the section on
# initialisation explains why), for $m = 4$:

# %% tags=["nbval-check-output"]
fc = hclib.FracConnection(d, nn.Identity(), m=4, dynamic=False)
print(fc.static_matrix())
print("static parameters per layer: FC m=4:", 4 * (2 * 4 + 1), "| HC n=4:", 4 * (4 + 2))

# %% [markdown]
# The static parameter counts are $m(2m+1)$ for FC (FC Eq. 16) and $n(n+2)$ for HC (HC Eq. 21):
# a few dozen numbers per layer either way. Memory, not parameters, is what FC saves.

# %% [markdown]
# ## The forward pass, from scratch
#
# With $H^{k-1}$ the state entering layer $k$ and $T^k$ its branch (attention or feed-forward,
# with its own pre-norm), FC Eq. 8 and Algorithm 1 compute
#
# $$
# h_0 = \operatorname{concat}\big(Y^\top H^{k-1}\big) \in \mathbb{R}^{d}, \qquad
# H^{k} = B^\top \odot \operatorname{split}\big(T^k(h_0)\big) + A^\top H^{k-1}.
# $$
#
# Read it in three steps.
#
# 1. **Read out.** $Y^\top H^{k-1}$ is an $m \times (d/m)$ matrix: each of its rows is a weighted
#    sum of fractions. Concatenating the rows gives the $d$-wide branch input.
# 2. **Write in.** The branch output $T^k(h_0)$ is split into $m$ fractions again, and fraction
#    $i$ is scaled by $\beta_i$. This is an elementwise (diagonal) product, not HC's outer
#    product $B^\top T(h_0)^\top$: in HC every stream receives the whole output, here fraction $i$
#    receives only the $i$-th piece of it. The outer product would not even fit, since a
#    fraction is $d/m$ wide and the output is $d$ wide.
# 3. **Mix the state.** $A^\top H^{k-1}$ recombines the fractions of the old state, as $A_r$ does
#    with HC's streams.
#
# The whole layer fits in a few lines.


# %%
def fc_forward(M: torch.Tensor, H: torch.Tensor, T) -> torch.Tensor:
    """One frac-connection layer (FC Eq. 8) from its (m+1, 2m) matrix M.

    H: the state (..., m, d/m); T: the branch, (..., d) -> (..., d).
    """
    m = M.shape[0] - 1
    B, Y, A = M[0, m:], M[1:, :m], M[1:, m:]  # (m,), (m, m), (m, m)
    h0 = (Y.T @ H).flatten(-2)  # concat(Y^T H)  (..., d)
    y = T(h0).unflatten(-1, (m, H.shape[-1]))  # split(T(h0))  (..., m, d/m)
    return B[:, None] * y + A.T @ H  # beta_i scales fraction i  (..., m, d/m)


# %% [markdown]
# Now a random FC matrix (the top-left block must stay zero: a layer's output does not feed its
# own input), a small branch, and a batch of states, all in float64, so that agreement with
# `hclib.FracConnection.from_matrix` can be demanded to the last bits.

# %% tags=["nbval-check-output"]
torch.manual_seed(0)
d, m = 16, 4
T = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU()).double()
M = torch.randn(m + 1, 2 * m, dtype=torch.float64)
M[0, :m] = 0.0  # the 0_{1 x m} block
H = torch.randn(5, 7, m, d // m, dtype=torch.float64)  # (B, T, m, d/m)

layer = hclib.FracConnection.from_matrix(M, d, T)
torch.testing.assert_close(fc_forward(M, H, T), layer(H), rtol=1e-12, atol=1e-12)
print("from-scratch FC layer equals hclib.FracConnection.from_matrix:", True)

# %% [markdown]
# With $m = 1$ the FC matrix is $2\times 2$, the same shape as the HC matrix with $n = 1$, and
# the two layers are the same function (the paper's Figure 1 puts both on one axis of rates):

# %% tags=["nbval-check-output"]
M1 = torch.tensor([[0.0, 0.7], [1.3, 0.9]], dtype=torch.float64)
h_in = torch.randn(5, d, dtype=torch.float64)
out_fc = hclib.FracConnection.from_matrix(M1, d, T)(hclib.split_fractions(h_in, 1))
out_hc = hclib.HyperConnection.from_matrix(M1, d, T)(hclib.expand_streams(h_in, 1))
torch.testing.assert_close(out_fc, out_hc, rtol=1e-12, atol=1e-12)
print("FC with m=1 equals HC with n=1:", True)

# %% [markdown]
# ## Dynamic FC: weights computed from each fraction
#
# Every FC experiment in the paper, and every FC network in this book, uses *dynamic* FC: the
# matrix of Eq. 7 gets an input-dependent correction per token, as dynamic HC does in Chapter 3.
# FC Eqs. 11-14 write it as
#
# $$
# \begin{aligned}
# \bar H &= \operatorname{norm}(H) \in \mathbb{R}^{m\times (d/m)} && \text{(FC Eq. 11)}\\
# B(H) &= s_\beta \circ \tanh(\bar H W_\beta)^\top + B \in \mathbb{R}^{1\times m},
#   \quad W_\beta \in \mathbb{R}^{(d/m)\times 1} && \text{(FC Eq. 12)}\\
# Y(H) &= s_\alpha \circ \tanh(\bar H W_\gamma) + Y \in \mathbb{R}^{m\times m},
#   \quad W_\gamma \in \mathbb{R}^{(d/m)\times m} && \text{(FC Eq. 13)}\\
# A(H) &= s_\alpha \circ \tanh(\bar H W_\alpha) + A \in \mathbb{R}^{m\times m},
#   \quad W_\alpha \in \mathbb{R}^{(d/m)\times m} && \text{(FC Eq. 14)}
# \end{aligned}
# $$
#
# Read the shapes, because they carry the design.
#
# - **The norm works on each fraction alone**, over its $d/m$ features, not over the whole
#   $d$-vector: row $i$ of $\bar H$ is fraction $i$ normalised by its own mean and spread.
#   (In HC, Eq. 10 normalises each of the $n$ streams over its $d$ features.)
# - **Fraction $i$ computes row $i$** of every weight: $(\bar H W_\gamma)_{i,:}$ reads only
#   $\bar H_{i,:}$. Row $i$ of $Y$ says how much fraction $i$ contributes to each of the $m$
#   pieces of the branch input, row $i$ of $A$ where fraction $i$ goes in the carried state, and
#   $\beta_i$ how strongly the $i$-th piece of the branch output is written into fraction $i$.
#   The projections $W$ are shared by all fractions, so they have $d/m$ rows, not $d$.
# - **Two learned scalars** $s_\alpha$ (shared by $Y$ and $A$) and $s_\beta$ scale the dynamic
#   terms. They start at 0.01 and the projections at zero (FC Eq. 15), so a fresh dynamic FC layer
#   is exactly its static matrix; the $\tanh$ keeps each dynamic entry within $\pm s$.
#
# `hclib.FracConnection` stores the two $m\times m$ static blocks side by side as `static_alpha`
# $= [Y \mid A]$ and the projections as `dynamic_alpha` $= [W_\gamma \mid W_\alpha]$, the layout of
# the paper's pseudocode (FC Algorithm 2):

# %% tags=["nbval-check-output"]
d, m = 16, 4
layer = hclib.FracConnection(d, nn.Identity(), m=m)
for name, p in layer.named_parameters():
    print(f"{name:14s} {tuple(p.shape)}")
print("norm:", layer.norm)


# %% [markdown]
# From scratch, the per-token weights are a few lines. We give every parameter random values
# (at initialisation the dynamic terms are zero, which would test nothing) and compare with
# `layer.mappings`, which returns $Y^\top$, $B$ and $A^\top$ per token (Chapter 3's naming:
# `pre`, `post`, `res`), and then the whole layer, FC Eq. 8 with the per-token matrices.


# %%
def dfc_weights(layer: hclib.FracConnection, H: torch.Tensor):
    """FC Eqs. 11-14 for H (..., m, d/m): per-token Y, A (..., m, m) and B (..., m)."""
    m = H.shape[-2]
    H_bar = nn.functional.layer_norm(H, H.shape[-1:], eps=layer.norm.eps)  # Eq. 11, per fraction
    W_gamma, W_alpha = layer.dynamic_alpha[:, :m], layer.dynamic_alpha[:, m:]  # (d/m, m) each
    Y0, A0 = layer.static_alpha[:, :m], layer.static_alpha[:, m:]  # (m, m) each
    s_alpha, s_beta = layer.alpha_scale, layer.beta_scale
    B = s_beta * torch.tanh(H_bar @ layer.dynamic_beta) + layer.static_beta  # Eq. 12  (..., m)
    Y = s_alpha * torch.tanh(H_bar @ W_gamma) + Y0  # Eq. 13, row i from fraction i  (..., m, m)
    A = s_alpha * torch.tanh(H_bar @ W_alpha) + A0  # Eq. 14  (..., m, m)
    return Y, A, B


def dfc_forward(layer: hclib.FracConnection, H: torch.Tensor, T) -> torch.Tensor:
    """Dynamic FC: FC Eq. 8 with the per-token weights of Eqs. 11-14."""
    Y, A, B = dfc_weights(layer, H)
    h0 = (Y.transpose(-1, -2) @ H).flatten(-2)  # concat(Y^T H)  (..., d)
    y = T(h0).unflatten(-1, H.shape[-2:])  # split(T(h0))  (..., m, d/m)
    return B.unsqueeze(-1) * y + A.transpose(-1, -2) @ H  # (..., m, d/m)


# %% tags=["nbval-check-output"]
torch.manual_seed(2)
T = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU()).double()
layer = hclib.FracConnection(d, T, m=m).double()
with torch.no_grad():
    for p in layer.parameters():
        if p is not layer.static_alpha and p is not layer.static_beta:  # keep Y = A = I, B = 1
            p.copy_(torch.randn_like(p))
H = torch.randn(5, 7, m, d // m, dtype=torch.float64)  # (B, T, m, d/m)
Y, A, B = dfc_weights(layer, H)
maps = layer.mappings(H)
torch.testing.assert_close(Y.transpose(-1, -2), maps.pre, rtol=1e-12, atol=1e-12)
torch.testing.assert_close(A.transpose(-1, -2), maps.res, rtol=1e-12, atol=1e-12)
torch.testing.assert_close(B, maps.post, rtol=1e-12, atol=1e-12)
torch.testing.assert_close(dfc_forward(layer, H, T), layer(H), rtol=1e-12, atol=1e-12)
print("from-scratch dynamic FC (Eqs. 11-14) equals hclib.FracConnection:", True)
scale = layer.alpha_scale.abs().item()
within = bool(((Y - torch.eye(m, dtype=Y.dtype)).abs() <= scale).all())
print("every dynamic entry of Y within |s_alpha| of the static one:", within)
whole = nn.functional.layer_norm(H.flatten(-2), (d,)).unflatten(-1, H.shape[-2:])  # over all d
differs = not torch.allclose(whole, nn.functional.layer_norm(H, (d // m,)))
print("normalising each fraction differs from normalising the whole d-vector:", differs)

# %% [markdown]
# Which of these parts matter? The paper's ablation (FC Figure 4, OLMoE-1.3B, relative to dynamic
# FC with $m = 2$; **the paper's result**, not measured here) removes one at a time: removing the
# rescaling $s_\alpha, s_\beta$ hurts most, removing the $\tanh$ less, and removing the norm least,
# though still measurably. Dynamic FC with $m = 4$ beats static FC with $m = 4$, which beats the
# baseline.

# %% [markdown]
# ## At initialisation, FC is Pre-Norm exactly
#
# FC Eq. 15 initialises every layer with $Y = A = I$, $B = \mathbf{1}$ and the dynamic
# projections at zero (so the dynamic terms $s \tanh(\cdot)$ of FC Eqs. 12-14 vanish, as in the
# previous section). Put these
# into Eq. 8: $h_0 = \operatorname{concat}(H) = h$, and
# $H^k = \operatorname{split}(T^k(h)) + H^{k-1} = \operatorname{split}\big(h + T^k(h)\big)$.
# Every FC layer is then the Pre-Norm layer $h \mapsto h + T(h)$ acting on a reshaped vector,
# and the final concatenation returns the Pre-Norm hidden state itself.
#
# Contrast HC ({doc}`Chapter 2 <02_hyper_connections>` derives it): its initialisation also
# reproduces Pre-Norm, but every one of the $n$
# streams carries the Pre-Norm state, so their sum at the end is $n$ times it and only the final
# norm removes the factor. FC has no such factor, and unlike HC's $e_{k \bmod n}$ read-out its
# initialisation does not depend on the layer index.
#
# We check both claims on a stack of twelve layers, in float64, with dynamic FC and HC as the
# book's models use them.

# %% tags=["nbval-check-output"]
torch.manual_seed(1)
d, m, n, L = 16, 4, 4, 12
branches = [nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU()).double() for _ in range(L)]
pre = [hclib.Residual(d, b) for b in branches]
fcs = [hclib.FracConnection(d, b, m=m, layer_id=k).double() for k, b in enumerate(branches)]
hcs = [hclib.HyperConnection(d, b, n=n, layer_id=k).double() for k, b in enumerate(branches)]

x = torch.randn(4, 9, d, dtype=torch.float64)  # (B, T, d)
h, H_f, H_h = x, hclib.split_fractions(x, m), hclib.expand_streams(x, n)
every_layer_equal = True
with torch.no_grad():
    for k in range(L):
        h, H_f, H_h = pre[k](h), fcs[k](H_f), hcs[k](H_h)
        every_layer_equal &= torch.equal(hclib.merge_fractions(H_f), h)
print("FC equals Pre-Norm after every layer, bit for bit:", every_layer_equal)
print("final FC state == final Pre-Norm state:", torch.equal(hclib.merge_fractions(H_f), h))
ratio = hclib.reduce_streams(H_h).norm() / h.norm()
print(f"HC: |sum of streams| / |Pre-Norm state| = {ratio:.2f}")
torch.testing.assert_close(hclib.reduce_streams(H_h) / n, h, rtol=1e-12, atol=1e-12)
print("HC sum of streams / n == Pre-Norm state:", True)

# %% [markdown]
# The FC result is not merely close: identities times numbers and additions of zero are exact in
# floating point, and the remaining addition is the same one Pre-Norm performs. HC's sum of
# streams is exactly $n = 4$ times the Pre-Norm state, as expected.

# %% [markdown]
# ## Memory: what the carried state costs
#
# FC's reason to exist is memory, and the paper argues it by width alone: the state has $d$
# features instead of HC's $n d$ (it gives no measurement). Let us measure two things.
#
# **The state itself.** Take a batch shaped like a 1B-parameter language model's: 8 sequences of
# 1024 tokens, $d = 2048$, in bfloat16. Tensors on PyTorch's `meta` device have a shape and a
# dtype but no storage, so we can ask for their size without allocating anything.

# %% tags=["nbval-check-output"]
h_meta = torch.empty(8, 1024, 2048, dtype=torch.bfloat16, device="meta")  # (B, T, d)
for kind, rate in (("residual", 1), ("fc", 4), ("hc", 4)):
    state = enter_state(kind, h_meta, n=rate, m=rate)
    shape = str(tuple(state.shape))
    print(f"{kind:8s} state {shape:22s} {state.nbytes / 2**20:6.0f} MiB per layer")

# %% [markdown]
# That is one copy of the state. Training keeps far more: every operation that needs its input
# for the backward pass saves it, and all of those saved tensors stay alive until the backward
# pass reaches them. HC's Appendix B estimates HC's extra activation memory as
# $2 n\, s b d L$, added to Korthikanti et al.'s formula for a transformer of $L$ layers
# (sequence length $s$, batch $b$). A transformer layer holds two HC modules (attention and
# feed-forward), so per token this is $n$ vectors of width $d$ per module, one copy of the
# $n$-stream state. The appendix does not itemise which tensors it counts, so we measure.
#
# **What autograd saves.** `torch.autograd.graph.saved_tensors_hooks` lets us watch every tensor
# autograd stores during a forward pass. The hook below records the storage behind each one:
# several saved tensors can share a storage (a view, or one tensor saved by two operations), so
# we count every storage once, at its full size, and skip the parameters, which exist whether
# or not we train. Each branch is the toy networks' `LayerNorm -> Linear -> GELU`.


# %%
def saved_activations(kind: str, rate: int, dynamic: bool, d=256, L=8, tokens=512) -> float:
    """Activation memory autograd saves over L layers, in d-vectors per token per layer."""
    torch.manual_seed(0)
    layers = [
        build_connection(
            kind,
            d,
            nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU()),
            k,
            n=rate,
            m=rate,
            dynamic=dynamic,
        )
        for k in range(L)
    ]
    params = {p.untyped_storage().data_ptr() for lay in layers for p in lay.parameters()}
    storages = {}  # data pointer -> bytes

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            storages[s.data_ptr()] = s.nbytes()
        return t

    x = torch.randn(tokens, d, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        H = enter_state(kind, x, n=rate, m=rate)
        for layer in layers:
            H = layer(H)
        leave_state(kind, H).sum()
    return sum(storages.values()) / (tokens * L * d * x.element_size())


# %% tags=["nbval-check-output"]
print("saved for backward, in d-vectors per token per layer (float32, d=256)")
print(f"{'connection':16s} {'static':>7s} {'dynamic':>8s}   extra over Pre-Norm (dynamic)")
base = saved_activations("residual", 1, True)
for kind, label in (("residual", "Pre-Norm"), ("fc", "FC m=4"), ("hc", "HC n=4")):
    s, dyn = saved_activations(kind, 4, False), saved_activations(kind, 4, True)
    print(f"{label:16s} {s:7.1f} {dyn:8.1f}   {dyn - base:+.1f}")
print("HC Appendix B estimate of HC's extra per module, n:", 4)

# %% [markdown]
# The Pre-Norm block saves three vectors per token: the inputs of its LayerNorm, its Linear
# layer and its GELU. Static HC saves $2n + 4$. The branch's LayerNorm keeps its input $h_0$,
# which is the first row of the $(n+1) \times d$ product $(A_m\;A_r)^\top H$, so all $n+1$ rows
# stay alive; the gradient of $(A_m\;A_r)$ needs the state $H$ ($n$ rows); the gradient of $B$
# needs the branch output (one row); the Linear layer and the GELU keep their inputs as in
# Pre-Norm (two rows). Dynamic HC adds the normalised state $\bar H$ that feeds its projections,
# $n$ more rows: $3n + 4$ in all, about 16 for $n = 4$. That is $3n + 1$ more than Pre-Norm, about
# three times the paper's estimate of $n$ per module: a straightforward implementation keeps the
# state, the mixed state and more, where an implementation tuned for memory would recompute
# them (as mHC does, Chapter 6). FC keeps the same
# kinds of tensors, but none grows with $m$: the product $(Y\;A)^\top H$ holds $2m$ fractions,
# i.e. two $d$-vectors, and the state, the branch output and the Linear and GELU inputs one each:
# 6 vectors static; the normalised state makes 7 dynamic, plus the per-token weights themselves
# ($2m^2 + m$ numbers, small next to $d$).
#
# The sweep below makes the scaling visible: HC's cost grows linearly with the number of
# streams, FC's barely grows with the number of fractions.

# %% tags=["remove-output"]
rates = [1, 2, 4, 8]
mem = {kind: [saved_activations(kind, r, True) for r in rates] for kind in ("fc", "hc")}
mem["residual"] = saved_activations("residual", 1, True)

fig, ax = plt.subplots()
ax.axhline(mem["residual"], color=color("pre-norm"), label="Pre-Norm residual")
ax.plot(rates, mem["hc"], "o-", color=color("hc"), label="HC, n streams (dynamic)")
ax.plot(rates, mem["fc"], "s-", color=color("fc"), label="FC, m fractions (dynamic)")
ax.plot(
    rates,
    [mem["residual"] + r for r in rates],
    ":",
    color=color("hc"),
    label="Pre-Norm + n (HC Appendix B)",
)
ax.set_xscale("log", base=2)
ax.set_xticks(rates, [str(r) for r in rates])
ax.set_xlabel("expansion rate n (HC) or frac-rate m (FC)")
ax.set_ylabel("saved activations\n(d-vectors per token per layer)")
ax.set_title("Activation memory kept for the backward pass (measured)")
ax.legend()
show_figure(fig, "fig-05-memory")

# %% [markdown]
# ```{glue:figure} fig-05-memory
# :name: fig-05-memory
#
# Activation memory that autograd keeps for the backward pass, measured with saved-tensor hooks
# over an 8-layer stack of the toy blocks ($d = 256$, float32), in units of one $d$-wide vector
# per token and layer. HC (blue) grows linearly with $n$, about three times as fast as the
# paper's estimate of $n$ per module (dotted), because our reference implementation keeps the
# state, the mixed state, the normalised state and the branch output; FC (green) stays a few
# vectors above Pre-Norm for every $m$. At $n = m = 1$ the two are the same layer and cost the
# same.
# ```
#
# {numref}`fig-05-memory` plots the sweep; its numbers:

# %% tags=["nbval-check-output"]
print("rate:     ", rates)
print("HC, n:    ", [f"{v:.1f}" for v in mem["hc"]])
print("FC, m:    ", [f"{v:.1f}" for v in mem["fc"]])
print("Pre-Norm: ", f"{mem['residual']:.1f}")

# %% [markdown]
# These numbers describe a straightforward PyTorch implementation, not an optimised one. The
# mHC paper (Chapter 6) recomputes the connection's intermediate tensors in the backward pass
# instead of storing them, which removes most of HC's extra at the cost of some compute; the
# same trick would apply to FC. What no implementation can remove is the width of the state
# passed between layers, and there FC keeps $d$ where HC needs $n d$.

# %% [markdown]
# ## Do fractions diversify the layers?
#
# The seesaw of Chapter 1: in a deep Pre-Norm network, consecutive layers see almost the same
# input (their cosine similarity approaches 1), so the deeper layers add little. HC fights this
# by letting each layer read a different combination of streams. FC's Figure 2 measures the
# cosine similarity of adjacent layers' inputs in a 7B mixture-of-experts model and finds the
# order Pre-Norm > FC > HC: FC diversifies the layers, but less than HC does. The paper reads it
# as "representational capacity HC > FC > Pre-Norm".
#
# We run the same measurement on the toy task: three `DeepMLP`s of the same width and depth,
# joined by the Pre-Norm residual, dynamic FC with $m = 4$ and dynamic HC with $n = 4$, trained
# with the same data, seed and optimiser. Before training, the initialisation section tells us
# what to expect: all three compute the same function, so their layer inputs, and the
# similarities, agree.

# %%
data = make_toy_data()
x_probe, y_probe = data.x_val[:512], data.y_val[:512]
KINDS = {"pre-norm": "residual", "fc": "fc", "hc": "hc"}
LABELS = {"pre-norm": "Pre-Norm", "fc": "FC, m=4", "hc": "HC, n=4"}
init, trained, acc = {}, {}, {}
for name, kind in KINDS.items():
    torch.manual_seed(0)
    model = DeepMLP(data.in_features, data.classes, depth=DEPTH, connection=kind)
    init[name] = seesaw_measures(model, x_probe, y_probe)
    history = train_toy(model, data, steps=STEPS, batch_size=BATCH, progress=False)
    trained[name] = seesaw_measures(model, x_probe, y_probe)
    acc[name] = history["val_acc"][-1]

# %% tags=["nbval-check-output"]
same_at_init = all(
    torch.allclose(init[k]["cos_median"], init["pre-norm"]["cos_median"], atol=1e-4)
    for k in ("fc", "hc")
)
print("before training, FC and HC give Pre-Norm's similarities:", same_at_init)
for name in KINDS:
    print(f"{LABELS[name]:9s} validation accuracy after training: {acc[name]:.2f}")

# %% [markdown]
# Deep in a Pre-Norm network the similarities crowd just below 1, so we plot the
# *dissimilarity* $1 - \cos$ on a logarithmic axis, where a factor of two between two curves is
# as visible near 0.002 as near 0.1.

# %% tags=["remove-output"]
fig, ax = plt.subplots()
pairs = torch.arange(1, DEPTH)  # pair k compares the inputs of layers k-1 and k
for name in KINDS:
    s = trained[name]
    ax.plot(pairs, 1 - s["cos_median"], color=color(name), label=LABELS[name])
    ax.fill_between(pairs, 1 - s["cos_p95"], 1 - s["cos_p05"], color=color(name), alpha=0.15)
ax.set_yscale("log")
ax.set_xlabel("layer k (compares the inputs of layers k-1 and k)")
ax.set_ylabel("1 - cosine similarity (log scale)")
ax.set_title(f"Adjacent-layer input dissimilarity after {STEPS} steps (depth {DEPTH})")
ax.legend(loc="upper right")
show_figure(fig, "fig-05-similarity")

# %% [markdown]
# ```{glue:figure} fig-05-similarity
# :name: fig-05-similarity
#
# One minus the cosine similarity between the inputs of consecutive layers of the trained toy
# networks: median over 512 validation inputs (line) and 5-95% band (shade); lower means more
# similar inputs. All three curves fall with depth, the seesaw's collapse. HC (blue) stays above
# the others in the deeper half, with a saw-tooth of period $n = 4$ left by its initial read-out
# of stream $k \bmod 4$; FC (green) lies on Pre-Norm's curve (vermilion) or slightly above it.
# ```
#
# The averages over the deeper half of {numref}`fig-05-similarity`:

# %% tags=["nbval-check-output"]
deep = slice((DEPTH - 1) // 2, None)  # the deeper half of the layer pairs
dissim = {k: (1 - trained[k]["cos_median"][deep]).mean().item() for k in KINDS}
for name in KINDS:
    ratio = dissim[name] / dissim["pre-norm"]
    print(
        f"{LABELS[name]:9s} mean similarity in the deeper half: {1 - dissim[name]:.3f}, "
        f"dissimilarity {ratio:.1f} x Pre-Norm's"
    )
print("ordering Pre-Norm > FC > HC (similarity):", dissim["pre-norm"] < dissim["fc"] < dissim["hc"])

# %% [markdown]
# **Verdict.** The ordering of the paper's Figure 2 does appear on the toy task, but only one
# half of it clearly. HC's layers see markedly more different inputs than Pre-Norm's: the
# deeper half of the network is about 2.4 times further from perfect similarity. FC sits on the
# right side of Pre-Norm, but barely (1.1 times): at two decimals the mean similarities are equal,
# and a margin this small is of the size that a different seed or a different machine could
# move. Whether it grows with training is an experiment for the reader: run the chapter with
# `HCLIB_BOOK_SIZE=full`, which trains ten times longer at a larger batch.
#
# Why FC's effect is so much weaker than HC's at this scale: the only ways FC can make
# consecutive inputs differ are the mixing matrices $Y$ and $A$, which start at the identity and
# whose dynamic parts are scaled by $s_\alpha = 0.01$, and the per-fraction weights $B$. HC has
# the same slow weights, but its initialisation already routes each layer through a different
# stream ($e_{k \bmod n}$), which training amplifies as soon as the streams start to differ; FC
# starts every layer from the same identity read-out. A short training run on a 64-wide MLP
# moves FC's weights little. The paper's curve comes from a 7B mixture-of-experts model trained on
# trillions of tokens, and nothing here contradicts it; what the toy task shows is that FC's
# diversity gain, if any, comes slowly, and that it costs nothing in accuracy.

# %% [markdown]
# ## Summary
#
# - FC splits the hidden state into $m$ contiguous fractions of width $d/m$ (FC Eq. 6) instead
#   of copying it $n$ times; the carried state stays $d$ wide.
# - One layer is an $(m+1)\times 2m$ matrix $\begin{pmatrix} 0 & B \\ Y & A\end{pmatrix}$
#   (FC Eq. 7): $Y$ mixes fractions into the branch input, which is their concatenation;
#   $B$ scales each fraction of the branch output elementwise; $A$ mixes the state (FC Eq. 8).
#   Our ten-line version equals `hclib.FracConnection.from_matrix`, and $m = 1$ is HC with $n = 1$.
# - Dynamic FC (FC Eqs. 11-14) adds $s \tanh(\bar H W)$ to each block, computed per token from
#   each fraction normalised over its own $d/m$ features: fraction $i$ sets row $i$ of $Y$ and
#   $A$ and the weight $\beta_i$, with shared projections $W_\gamma, W_\alpha \in
#   \mathbb{R}^{(d/m)\times m}$, $W_\beta \in \mathbb{R}^{d/m}$ and two scales that start at 0.01.
#   Our version equals `hclib.FracConnection`; the paper's ablation ranks the scales as the most
#   important part and the norm as the least.
# - With $Y = A = I$, $B = \mathbf{1}$ (FC Eq. 15) every layer is $h + T(h)$: a stack of FC
#   layers equals the Pre-Norm stack bit for bit in float64, with no factor $m$ (HC's sum of
#   streams carries a factor $n$).
# - Measured with saved-tensor hooks, dynamic HC with $n = 4$ keeps about 16 $d$-vectors per
#   token and layer for the backward pass ($3n + 4$), dynamic FC about 7 and Pre-Norm 3; HC's cost
#   grows linearly with $n$, FC's barely with $m$. The carried state itself is $d$ wide for FC and
#   $n d$ for HC.
# - On the toy task the adjacent-layer similarity orders as Pre-Norm > FC > HC, as in FC's
#   Figure 2, but at the default size FC's margin over Pre-Norm is tiny while HC's is large.

# %% [markdown]
# ## Exercises
#
# ```{exercise} HC's activation memory at OLMo scale
# :label: ex-05-memory
# HC's Appendix B estimates HC's extra activation memory as $2 n\, s b d L$ for $L$ transformer
# layers. Take OLMo-1B's shape, $n = 4$, $d = 2048$, $L = 16$, with $s b = 16\,384$ tokens per
# device, and count elements stored in bfloat16. How many GiB does HC add per device? (HC's
# Table 9 reports a measured growth from 41.11 GB to 51.86 GB for DHC×4 at this micro-batch.) What
# does the same accounting give for FC, whose state is $d$ wide, and why is FC's extra not zero in
# this chapter's measurement?
# ```
#
# ```{solution} ex-05-memory
# :class: dropdown
# $2 \cdot 4 \cdot 16\,384 \cdot 2048 \cdot 16 = 4\,294\,967\,296$ elements, times 2 bytes,
# is exactly 8 GiB (8.6 GB) per device, somewhat less than the 10.75 GB the table measures.
# The same accounting with a $d$-wide state, i.e. $n$ replaced by 1, gives FC a quarter of that,
# 2 GiB, for any $m$. Our measurement gives more
# than zero for FC because its branch input is a *new* tensor ($\operatorname{concat}(Y^\top H)$,
# not the state itself) and the gradients of $Y$, $A$ and $B$ need the state and the branch
# output; the Pre-Norm residual needs none of these, since its weights are fixed at 1.
# ```
#
# ```{exercise} A permutation as read-out
# :label: ex-05-permutation
# Let $Y$ be a permutation matrix, $A = I$ and $B = \mathbf{1}$, and let the branch start with a
# LayerNorm followed by a Linear layer $W$. Show that this FC layer equals a Pre-Norm layer
# whose branch reads the features in a different order. Can static $Y$ of this kind make
# consecutive layers' inputs less similar?
# ```
#
# ```{solution} ex-05-permutation
# :class: dropdown
# $h_0 = \operatorname{concat}(Y^\top H) = P h$ for the permutation $P$ that moves whole
# fractions. LayerNorm commutes with permutations once its gain and bias are permuted with the
# features (mean and variance do not depend on the order): $\operatorname{LN}(P h) =
# P\,\operatorname{LN}'(h)$. And $W P$ is just another Linear layer, so the branch computes
# $T'(h)$ with the permuted norm and weight $W P$: a Pre-Norm layer $h + T'(h)$ in disguise (the
# write-in is unchanged). The cosine
# similarity between $P h$ and the next layer's input does change, since the vectors are
# compared feature by feature, but nothing the network can compute changes. Diversity in the
# measurement is not automatically capacity.
# ```
#
# ```{exercise} Counting FC parameters
# :label: ex-05-params
# Derive the number of parameters of one static FC module (FC Eq. 16) and of one dynamic FC
# module whose norm is an RMSNorm over the $d/m$ features of a fraction with a learnable gain
# (FC Eq. 19). Evaluate the dynamic count for $d = 2048$, $m = 4$ and $L = 16$ blocks of two
# modules, and check your formula with `hclib.FracConnection(..., norm="rms", norm_affine=True)`.
# ```
#
# ```{solution} ex-05-params
# :class: dropdown
# Static: $B$ has $m$ entries, $Y$ and $A$ have $m^2$ each: $m(2m+1)$, 36 for $m = 4$.
# Dynamic adds the norm gain ($d/m$), the projections $W_\gamma, W_\alpha \in
# \mathbb{R}^{(d/m)\times m}$ and $W_\beta \in \mathbb{R}^{d/m}$, i.e. $(d/m)(2m+1)$, and the two
# scales $s_\alpha, s_\beta$: $d/m + (d/m)(2m+1) + m(2m+1) + 2 = 512 + 4608 + 36 + 2 = 5158$
# per module, $5158 \cdot 32 = 165\,056$ for the model, as FC's parameter count states.
# `sum(p.numel() for p in hclib.FracConnection(2048, nn.Identity(), m=4, norm="rms",
# norm_affine=True).parameters())` returns 5158.
# ```
#
# ```{exercise} Why FC needs no layer-dependent read-out
# :label: ex-05-symmetry
# HC initialises layer $k$ to read only stream $k \bmod n$ (HC Eq. 14); FC initialises every
# layer with the same $Y = I$ (FC Eq. 15). HC could also reproduce Pre-Norm at init with the
# uniform read-out $A_m = \tfrac{1}{n}\mathbf{1}$. Why does HC avoid it, and why does FC not face
# the same problem?
# ```
#
# ```{solution} ex-05-symmetry
# :class: dropdown
# At HC's initialisation all $n$ streams hold the same vector. With a uniform read-out and the
# same write-in $B = \mathbf{1}$ for every stream, nothing in the network tells the streams
# apart: every stream's weights receive the same gradient, every update keeps them equal, and
# the $n$ streams remain copies of one another forever, so HC would stay Pre-Norm. The one-hot
# read-out $e_{k \bmod n}$ breaks this symmetry (the stream that layer $k$ reads gets a different
# gradient from the others) while still giving the Pre-Norm input, because all streams are equal.
# FC's fractions are never copies: fraction $i$ holds features $i\,d/m, \dots, (i+1)\,d/m-1$,
# which differ from the start, so the gradients of the entries of $Y$, $A$ and $B$ already differ
# from fraction to fraction. There is no symmetry to break, and the identity read-out, which
# passes the whole state to the branch, is the natural Pre-Norm choice.
# ```

# %% tags=["remove-cell", "nbval-check-output"]
# The count quoted in the solution of ex-05-params (hidden in the book).
dfc = hclib.FracConnection(2048, nn.Identity(), m=4, norm="rms", norm_affine=True)
per_module = sum(p.numel() for p in dfc.parameters())
print(f"dynamic FC module, d=2048, m=4: {per_module}; 32 modules: {32 * per_module}")
