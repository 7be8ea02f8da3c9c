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
# # Hyper-connections
#
# *Goal: widen the residual stream into $n$ streams, write one layer as a small matrix (the HC
# matrix), implement its forward pass from scratch, and see why the paper's initialisation is
# exactly a Pre-Norm network.*
#
# [![Open In Colab](figures/colab-badge.svg)](https://colab.research.google.com/github/hclib-book/hclib/blob/main/notebooks/02_hyper_connections.ipynb)
#
# **Prerequisites:** Chapter 1 (Pre-Norm and Post-Norm, the seesaw measures on the toy
# network). Matrix products and `torch.einsum`.
#
# Chapter 1 ended on a seesaw: Post-Norm keeps consecutive layers distinct but divides its skip
# path in every block, Pre-Norm keeps a clean skip path but lets deep layers see nearly the
# same input. Both are *fixed* recipes for how a layer's output is added to what came before.
# Hyper-connections {cite:p}`zhu2024hyperconnections` make that recipe learnable: the hidden
# state becomes $n$ parallel streams, and a handful of scalars per layer say which mixture of
# the streams the layer reads, how the streams are mixed among themselves, and how much of the
# layer's output each stream receives. This chapter covers the *static* version, in which
# those scalars are ordinary trainable parameters (chapter 3 makes them depend on the input).
#
# The default run takes about a minute on two CPU cores. With `HCLIB_BOOK_SIZE=full` set
# before Jupyter starts, the toy networks at the end train ten times longer, on larger batches
# and a larger training set; the prose describes the default run, and says where the full run
# differs.

# %%
# ruff: noqa: E402
import subprocess
import sys

if "google.colab" in sys.modules:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "hclib[notebooks] @ git+https://github.com/hclib-book/hclib",
        ],
        check=True,
    )

# %%
import matplotlib.pyplot as plt
import torch
from torch import nn
from torch.nn import functional as F

import hclib
from hclib.book import scaled
from hclib.models import DeepMLP
from hclib.plotting import color, use_book_style
from hclib.toy import make_toy_data, seesaw_measures, train_toy

use_book_style()
torch.set_num_threads(1)  # the toy tensors are tiny: one thread is fastest on a shared CPU

DIM = 64  # model width d
DEPTH = 32  # number of layers L in the toy networks
STEPS = scaled(small=120, full=1500)  # AdamW steps for each trained network
BATCH = scaled(small=128, full=256)  # training batch size
print(f"d={DIM}, L={DEPTH}, steps={STEPS}, batch={BATCH}")

# %% [markdown]
# ## From one stream to $n$
#
# A residual network carries one hidden vector $h \in \mathbb{R}^d$ per token from layer to
# layer. A hyper-connected network carries $n$ of them, stacked as the rows of a matrix
# $H \in \mathbb{R}^{n \times d}$; $n$ is the *expansion rate*. The embedding is copied into
# every row, $H^0 = (h^0\; h^0 \cdots h^0)^\top$, and after the last layer the rows are summed
# back into one vector, $h^L = \sum_i h^L_i$, before the final norm and the output head (HC
# Section 2.1 and Algorithm 1). In code the state has shape `(B, T, n, d)` where a residual
# network has `(B, T, d)`.

# %%
n = 3
h = torch.randn(2, 5, DIM)  # (B, T, d)
H = h.unsqueeze(-2).repeat(1, 1, n, 1)  # (B, T, n, d): every stream is a copy of h

# %% tags=["nbval-check-output"]
torch.testing.assert_close(hclib.expand_streams(h, n), H, rtol=0, atol=0)
torch.testing.assert_close(hclib.reduce_streams(H), H.sum(dim=-2), rtol=0, atol=0)
print("state shape:", tuple(H.shape), "-> summed back:", tuple(hclib.reduce_streams(H).shape))
print("expand_streams / reduce_streams match the from-scratch lines:", True)

# %% [markdown]
# Between those two ends, every layer $k$ maps $H^{k-1}$ to $H^k$ around one branch $T^k$
# (the layer's feed-forward or attention block, including its own pre-norm, as in chapter 1).

# %% [markdown]
# ## The HC matrix, cell by cell
#
# A static hyper-connection is described by one $(n+1) \times (n+1)$ matrix (HC Eq. 1),
#
# $$
# \mathcal{HC} = \begin{pmatrix} 0_{1 \times 1} & B \\ A_m & A_r \end{pmatrix},
# \qquad B \in \mathbb{R}^{1 \times n},\; A_m \in \mathbb{R}^{n \times 1},\;
# A_r \in \mathbb{R}^{n \times n}.
# $$
#
# Its three blocks answer three questions:
#
# - $A_m$ (column 0, rows $1..n$): with which weight does each stream enter the branch input?
#   The branch reads one vector, $h_0 = \sum_i (A_m)_i\, h_i$.
# - $A_r$ (rows and columns $1..n$): how are the streams mixed with each other on their way
#   to the next layer? Entry $(A_r)_{ij}$ is the weight of old stream $i$ in new stream $j$.
# - $B$ (row 0, columns $1..n$): how much of the branch output is written into each stream?
#
# The top-left zero says that a layer's output does not feed its own input. We build a
# random matrix for $n = 3$ block by block:

# %%
torch.manual_seed(0)
B = torch.randn(1, n, dtype=torch.float64)  # write-in weights (1, n)
A_m = torch.randn(n, 1, dtype=torch.float64)  # read-out weights (n, 1)
A_r = torch.randn(n, n, dtype=torch.float64)  # stream mixing (n, n)

top = torch.cat([torch.zeros(1, 1, dtype=torch.float64), B], dim=1)  # (1, n+1)
bottom = torch.cat([A_m, A_r], dim=1)  # (n, n+1)
M = torch.cat([top, bottom], dim=0)  # the HC matrix (n+1, n+1)
print(M.numpy().round(2))

# %% [markdown]
# ## The forward pass (HC Eqs. 2-5)
#
# With $H \in \mathbb{R}^{n \times d}$ the layer computes
#
# $$
# \hat H = B^\top\, T\big(H^\top A_m\big)^\top + A_r^\top H \qquad \text{(HC Eq. 2)},
# $$
#
# which the paper splits into three steps:
#
# $$
# h_0^\top = A_m^\top H \;\;\text{(Eq. 3)}, \qquad
# H' = A_r^\top H \;\;\text{(Eq. 4)}, \qquad
# \hat H = B^\top \big(T(h_0)\big)^\top + H' \;\;\text{(Eq. 5)}.
# $$
#
# $h_0 \in \mathbb{R}^d$ is the branch input, $H'$ the mixed streams, and $B^\top T(h_0)^\top$
# an outer product: stream $i$ receives $B_i \, T(h_0)$. Written from scratch for a batch of
# tokens, with `einsum` over the stream index:


# %%
def hc_forward(H, M, T):
    """One static hyper-connection, HC Eqs. 3-5. H: (..., n, d); M: (n+1, n+1)."""
    B, A_m, A_r = M[0, 1:], M[1:, 0], M[1:, 1:]  # (n,), (n,), (n, n)
    h0 = torch.einsum("i,...id->...d", A_m, H)  # Eq. 3: branch input (..., d)
    H_mixed = torch.einsum("ij,...id->...jd", A_r, H)  # Eq. 4: A_r^T H (..., n, d)
    y = T(h0)  # the branch (..., d)
    return torch.einsum("i,...d->...id", B, y) + H_mixed  # Eq. 5 (..., n, d)


# %% [markdown]
# `hclib.HyperConnection.from_matrix` builds a static hyper-connection whose HC matrix is
# exactly `M`. We give both the same Pre-Norm branch and compare in float64.

# %%
torch.manual_seed(1)
T = nn.Sequential(nn.LayerNorm(DIM), nn.Linear(DIM, DIM), nn.GELU()).double()
H = torch.randn(2, 5, n, DIM, dtype=torch.float64)  # (B, T, n, d)
hc = hclib.HyperConnection.from_matrix(M, DIM, T)

# %% tags=["nbval-check-output"]
torch.testing.assert_close(hc(H), hc_forward(H, M, T), rtol=1e-12, atol=1e-12)
torch.testing.assert_close(hc.static_matrix(), M, rtol=0, atol=0)
print("HyperConnection.from_matrix(M) equals HC Eqs. 3-5:", True)

# %% [markdown]
# ## Width and depth connections (HC Eqs. 6-7)
#
# The paper groups the cells of $\mathcal{HC}$ in a second way. The *width connections*
# $\mathrm{WC} = (A_m \;\; A_r) \in \mathbb{R}^{n \times (n+1)}$ (HC Eq. 7) are everything that
# reads the current streams; the *depth connections*
# $\mathrm{DC} = \begin{pmatrix} B \\ \operatorname{diag}(A_r) \end{pmatrix} \in
# \mathbb{R}^{2 \times n}$ (HC Eq. 6) say, for each stream, how much of the layer output is
# added and how much of the stream itself is kept: the residual-like part. Because Eqs. 3
# and 4 both read $H$, one matrix product does them together (Algorithm 1, line 5):
#
# $$
# \mathrm{WC}^\top H = \begin{pmatrix} A_m^\top H \\ A_r^\top H \end{pmatrix}
# = \begin{pmatrix} h_0^\top \\ H' \end{pmatrix} \in \mathbb{R}^{(n+1) \times d}.
# $$

# %%
WC = torch.cat([A_m, A_r], dim=1)  # (n, n+1)
DC = torch.cat([B, torch.diagonal(A_r).unsqueeze(0)], dim=0)  # (2, n)
mix = WC.T @ H  # (B, T, n+1, d): row 0 is h_0, rows 1..n are H'

# %% tags=["nbval-check-output"]
h0 = torch.einsum("i,...id->...d", A_m.squeeze(1), H)
torch.testing.assert_close(mix[..., 0, :], h0, rtol=1e-12, atol=1e-12)
torch.testing.assert_close(mix[..., 1:, :], A_r.T @ H, rtol=1e-12, atol=1e-12)
torch.testing.assert_close(hc.static_alpha, WC, rtol=0, atol=0)  # hclib stores WC ...
torch.testing.assert_close(hc.static_beta, B.squeeze(0), rtol=0, atol=0)  # ... and B
print("WC^T H gives the branch input (row 0) and H' (rows 1..n):", True)
print("DC (B over diag A_r):")
print(DC.numpy().round(2))
print(f"multiply-adds per token for n=4, d={DIM}: WC^T H {DIM * 4 * 5}, one d x d linear {DIM**2}")

# %% [markdown]
# The one matmul costs $d \cdot n \cdot (n+1)$ multiply-adds per token: for $n = 4$ and
# $d = 64$ the last line above compares it with the $d^2$ of the single linear layer of our
# toy branch, and the branch of a real Transformer is far wider. `hclib` stores the parameters in
# this layout: `static_alpha` is $\mathrm{WC}$, `static_beta` is $B$.

# %% [markdown]
# ## Pre-Norm is the matrix $\begin{pmatrix} 0 & 1 \\ 1 & 1 \end{pmatrix}$
#
# With one stream ($n = 1$) the HC matrix has three cells. Setting all of them to 1 gives
# $h_0 = h$, $H' = h$ and $\hat h = T(h) + h$: the Pre-Norm residual connection of chapter 1
# (HC Eq. 15), with the norm inside the branch.

# %%
torch.manual_seed(2)
h = torch.randn(4, 7, DIM, dtype=torch.float64)  # (B, T, d)
prenorm_matrix = torch.tensor([[0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
hc1 = hclib.HyperConnection.from_matrix(prenorm_matrix, DIM, T)
residual = hclib.Residual(DIM, T, norm="pre")

# %% tags=["nbval-check-output"]
out = hc1(hclib.expand_streams(h, 1))  # (B, T, 1, d)
torch.testing.assert_close(out.squeeze(-2), residual(h), rtol=1e-12, atol=1e-12)
torch.testing.assert_close(out.squeeze(-2), h + T(h), rtol=1e-12, atol=1e-12)
print("HC with [[0, 1], [1, 1]] equals the Pre-Norm residual h + T(h):", True)

# %% [markdown]
# Post-Norm fits the same frame only with an input-dependent matrix: dividing both the skip
# path and the branch output by $\sigma = \operatorname{std}(h + T(h))$ gives
# $\begin{pmatrix} 0 & 1/\sigma \\ 1 & 1/\sigma \end{pmatrix}$ (HC Eq. 16, under the
# assumptions of its Appendix G), the $1/\sigma$ of chapter 1. A static HC matrix can
# therefore express Pre-Norm exactly and Post-Norm's *pattern* (a decaying skip path), and
# everything between: that is the paper's argument for learning it.

# %% [markdown]
# ## The initialisation (HC Eq. 14) is a Pre-Norm network
#
# A new architecture is easiest to adopt if it starts from a network we know trains well. HC
# Eq. 14 initialises layer $k$ (counted from 0, as in Algorithm 2) with
#
# $$
# \begin{pmatrix} 0 & B^k \\ A_m^k & A_r^k \end{pmatrix}
# = \begin{pmatrix} 0 & 1_{1 \times n} \\ e_{k \bmod n} & I_n \end{pmatrix}:
# $$
#
# the branch reads stream $k \bmod n$ alone, the streams are not mixed, and the branch output
# is added to every stream. `hclib.HyperConnection(..., layer_id=k)` starts there:

# %%
for k in range(3):
    layer = hclib.HyperConnection(DIM, T, n=2, layer_id=k, dynamic=False)
    print(f"layer {k}:\n{layer.static_matrix().numpy()}")

# %% [markdown]
# Why is this a Pre-Norm network? By induction over the layers, with $u$ the Pre-Norm state:
#
# 1. *Start.* $H^0 = 1_n (h^0)^\top$: every stream equals the Pre-Norm input $u^0 = h^0$.
# 2. *Step.* Suppose every stream of $H^{k-1}$ equals $u^{k-1}$, i.e.
#    $H^{k-1} = 1_n (u^{k-1})^\top$. Then
#    - the branch input is $h_0 = (H^{k-1})^\top e_{k \bmod n} = u^{k-1}$, whichever stream
#      is picked, since they are all equal (Eq. 3);
#    - the mixed streams are $H' = I^\top H^{k-1} = H^{k-1}$ (Eq. 4);
#    - the new state is $H^k = 1_n\, T^k(u^{k-1})^\top + 1_n (u^{k-1})^\top
#      = 1_n \big(u^{k-1} + T^k(u^{k-1})\big)^\top = 1_n (u^k)^\top$ (Eq. 5).
#
#    So every stream of $H^k$ equals the Pre-Norm state $u^k$.
# 3. *End.* The final sum is $\sum_i h^L_i = n\, u^L$, and a LayerNorm (or RMSNorm) is
#    invariant to scaling its input: $\operatorname{LN}(n u^L) = \operatorname{LN}(u^L)$,
#    exactly when the norm's $\epsilon$ is 0 and up to a tiny $\epsilon$ effect otherwise.
#
# Let us verify each step numerically on a stack of 8 random Pre-Norm branches with $n = 4$,
# in float64.

# %%
torch.manual_seed(3)
L, n = 8, 4
branches = [
    nn.Sequential(nn.LayerNorm(DIM), nn.Linear(DIM, DIM), nn.GELU()).double() for _ in range(L)
]
stack = [
    hclib.HyperConnection(DIM, br, n=n, layer_id=k, dynamic=False) for k, br in enumerate(branches)
]
h = torch.randn(3, 6, DIM, dtype=torch.float64)  # (B, T, d)

u, H = h, hclib.expand_streams(h, n)  # Pre-Norm state; HC state (B, T, n, d)
streams_equal_prenorm = True
for branch, layer in zip(branches, stack, strict=True):
    u = u + branch(u)  # the Pre-Norm network
    H = layer(H)  # the hyper-connected network
    streams_equal_prenorm &= torch.allclose(H, u.unsqueeze(-2).expand_as(H), rtol=0, atol=1e-12)
final = hclib.reduce_streams(H)

# %% tags=["nbval-check-output"]
print("after every layer, every stream equals the Pre-Norm state:", streams_equal_prenorm)
print("final sum equals n x Pre-Norm state:", torch.allclose(final, n * u, rtol=0, atol=1e-12))
ln0 = lambda x: F.layer_norm(x, (DIM,), eps=0.0)  # noqa: E731
ln = lambda x: F.layer_norm(x, (DIM,), eps=1e-5)  # noqa: E731
print(
    "after a final LayerNorm with eps=0, equal:",
    torch.allclose(ln0(final), ln0(u), rtol=0, atol=1e-12),
)
gap = (ln(final) - ln(u)).abs().max().item()
print(f"with eps=1e-5, largest difference below 1e-4: {gap < 1e-4}")

# %% [markdown]
# Two consequences are worth keeping in mind. First, a hyper-connected network at
# initialisation is not *like* a Pre-Norm network, it *is* one, carried $n$ times; any
# difference comes from training moving the HC matrices. Second, the $n$ copies cost memory:
# the state is $n$ times wider, which is what frac-connections (chapter 5) avoid. `hclib`'s
# toy model `DeepMLP(connection="hc")` uses exactly this initialisation.

# %% [markdown]
# ## Static HC on the toy task
#
# Now the experiment of chapter 1 again, with five 32-layer networks that differ only in
# their connections: Pre-Norm, Post-Norm, and static hyper-connections (`dynamic=False`) with
# $n = 1, 2, 4$. All start from the same seed, so the three HC networks start as the Pre-Norm
# network; their HC matrices are trained with the rest by AdamW (learning rate $10^{-3}$,
# no weight decay on the static weights, as in the paper).

# %%
data = make_toy_data(n_train=scaled(small=8192, full=65536))  # more examples for longer runs
x_probe, y_probe = data.x_val[:256], data.y_val[:256]
CONFIGS = {
    "Pre-Norm": dict(norm="pre"),
    "Post-Norm": dict(norm="post"),
    "HC n=1": dict(connection="hc", n=1, dynamic=False),
    "HC n=2": dict(connection="hc", n=2, dynamic=False),
    "HC n=4": dict(connection="hc", n=4, dynamic=False),
}
STYLES = {"HC n=1": ":", "HC n=2": "--", "HC n=4": "-"}


def make_model(config):
    torch.manual_seed(0)
    return DeepMLP(data.in_features, data.classes, dim=DIM, depth=DEPTH, **config)


models, histories = {}, {}
for name, config in CONFIGS.items():
    models[name] = make_model(config)
    histories[name] = train_toy(models[name], data, steps=STEPS, batch_size=BATCH, eval_every=STEPS)
measures = {name: seesaw_measures(m, x_probe, y_probe) for name, m in models.items()}


def line_style(name):
    return dict(color=color(name.lower()), ls=STYLES.get(name, "-"))


# %%
fig, ax = plt.subplots()
k = torch.arange(1, DEPTH)
for name, m in measures.items():
    ax.plot(k, m["cos_median"], label=name, **line_style(name))
ax.fill_between(
    k,
    measures["HC n=4"]["cos_p05"],
    measures["HC n=4"]["cos_p95"],
    color=color("hc"),
    alpha=0.15,
    lw=0,
    label="HC n=4, 5th-95th percentile",
)
ax.set_xlabel("layer k")
ax.set_ylabel("cos(input of layer k-1, input of layer k)")
ax.set_title(f"after {STEPS} training steps")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# **Figure 2.1.** Median cosine similarity between the inputs of consecutive layers after
# training (the probe of HC Figure 3), for the two residual baselines and static HC with
# $n = 1, 2, 4$ (blue). The blue curves follow the Pre-Norm curve (vermilion) closely, with
# $n = 4$ dipping slightly below it at some layers; all of them stay far above Post-Norm
# (orange).

# %%
fig, ax = plt.subplots()
layers = torch.arange(DEPTH)
for name, m in measures.items():
    g = m["grad_norm"]
    ax.semilogy(layers, g, label=name, **line_style(name))
ax.set_xlabel("layer k (0 = next to the input)")
ax.set_ylabel("gradient norm of the layer's parameters")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# **Figure 2.2.** Gradient norm of each layer's branch parameters after training, on one
# batch of 256 validation examples. None of the networks shows a vanishing gradient toward
# the input; the static HC networks sit on top of the Pre-Norm curve.

# %% tags=["nbval-check-output"]
deep = slice(DEPTH // 2, None)
print(
    f"{'network':<10} {'val loss':>8} {'val acc':>8} {'cos (deeper half)':>18} {'g_0 / g_31':>11}"
)
for name, m in measures.items():
    hist = histories[name]
    cos_deep = m["cos_median"][deep].mean().item()
    ratio = (m["grad_norm"][0] / m["grad_norm"][-1]).item()
    loss, acc = hist["val_loss"][-1], hist["val_acc"][-1]
    print(f"{name:<10} {loss:8.2f} {acc:8.2f} {cos_deep:18.3f} {ratio:11.1f}")

# %% [markdown]
# How far did training move the HC matrices from their initialisation? The next cell prints
# the largest change of any entry, over all 32 layers.


# %%
def max_matrix_change(model, n):
    change = 0.0
    for k, layer in enumerate(model.layers):
        init = hclib.HyperConnection(DIM, nn.Identity(), n=n, layer_id=k, dynamic=False)
        change = max(change, (layer.static_matrix() - init.static_matrix()).abs().max().item())
    return change


# %% tags=["nbval-check-output"]
for n in (1, 2, 4):
    change = max_matrix_change(models[f"HC n={n}"], n)
    print(f"HC n={n}: largest change of an HC-matrix entry = {change:.2f}")

# %% [markdown]
# What the toy run shows, plainly:
#
# - The three static HC networks reach the validation loss and accuracy of Pre-Norm (the
#   table above); on this task and at this training length they neither help nor hurt.
# - Static HC does **not** lower the adjacent-layer similarity relative to Pre-Norm here: the
#   blue curves of Figure 2.1 lie on or just below the Pre-Norm curve, while the HC paper's
#   Figure 3 shows a markedly lower similarity for HC in a 1B-parameter language model after
#   500B tokens.
#   The reason is in the last table: with a learning rate of $10^{-3}$ and this few steps,
#   AdamW moves each entry by at most about $10^{-3}$ per step, so the HC matrices stay
#   close to Eq. 14 and the networks stay close to the Pre-Norm network they started as.
# - The gradient side is unchanged too (Figure 2.2): as with Pre-Norm, the lowest layers
#   receive at least as much gradient as the top ones.
#
# Training longer changes the second point. In the full-size run (`HCLIB_BOOK_SIZE=full`,
# 1,500 steps on eight times more data) the HC matrices move several times further from
# Eq. 14, and the same table and figure then show the effect of HC Figure 3: the deeper-half
# similarity of HC $n = 4$ falls clearly below Pre-Norm's, to about Post-Norm's level and with
# a much wider 5th-95th percentile band; $n = 2$ falls less, and $n = 1$ stays on the Pre-Norm
# curve (one stream cannot weaken some connections while keeping others, HC Appendix F). The
# validation losses of all five networks stay alike, and the gradient profiles keep the
# Pre-Norm shape. Run it to check; the default run cannot afford it.

# %% [markdown]
# ## Giving the matrices room to move
#
# If the HC matrices are what should move, let them: `train_toy(..., connection_lr=...)` gives
# the connections' own parameters (here $B$, $A_m$, $A_r$) their own learning rate, while the
# branches keep $10^{-3}$. We train the $n = 4$ network again with the HC matrices learning 10
# and 100 times faster.

# %%
FAST = {"HC n=4, HC lr x10": 1e-2, "HC n=4, HC lr x100": 1e-1}
for name, connection_lr in FAST.items():
    models[name] = make_model(CONFIGS["HC n=4"])
    histories[name] = train_toy(
        models[name],
        data,
        steps=STEPS,
        batch_size=BATCH,
        eval_every=STEPS,
        connection_lr=connection_lr,
    )
    measures[name] = seesaw_measures(models[name], x_probe, y_probe)
STYLES.update({"HC n=4, HC lr x10": "-.", "HC n=4, HC lr x100": (0, (1, 3))})
shown = ["Pre-Norm", "Post-Norm", "HC n=4", *FAST]

fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), layout="constrained")
for name in shown:
    cos_ax = axes[1] if name.endswith("x100") else axes[0]
    cos_ax.plot(k, measures[name]["cos_median"], label=name, **line_style(name))
    axes[2].semilogy(layers, measures[name]["grad_norm"], label=name, **line_style(name))
axes[0].set_title("similarity (zoomed)")
axes[1].set_title("similarity, HC lr x100")
axes[1].set_ylim(-1.05, 1.05)
for ax in axes[:2]:
    ax.set_xlabel("layer k")
    ax.set_ylabel("cos(input of layer k-1, input of layer k)")
axes[2].set_title("gradient per layer")
axes[2].set_xlabel("layer k (0 = next to the input)")
axes[2].set_ylabel("gradient norm of the layer's parameters")
axes[2].legend(fontsize=7)
plt.show()

# %% [markdown]
# **Figure 2.3.** Left and middle: median adjacent-layer cosine similarity (the middle panel
# holds the run whose similarity leaves the left panel's range); right: gradient norm per
# layer (log scale). Baselines, and HC $n = 4$ with the HC matrices trained at the base
# learning rate (solid blue), 10 times faster (dash-dotted) and 100 times faster
# (dotted). Ten times faster pulls the similarity curve below Pre-Norm's, with dips at a few
# layers. A hundred times faster breaks the network apart: consecutive inputs jump between
# similar, orthogonal and opposite, and the gradient norms spread over many orders of
# magnitude, with the upper layers receiving almost nothing.

# %% tags=["nbval-check-output"]
name = "HC n=4, HC lr x10"
cos_fast = measures[name]["cos_median"][deep].mean().item()
cos_pre = measures["Pre-Norm"]["cos_median"][deep].mean().item()
print(f"x10: mean median cosine in the deeper half {cos_fast:.2f} (Pre-Norm {cos_pre:.2f})")
print(
    f"x10: validation loss {histories[name]['val_loss'][-1]:.2f}, "
    f"largest change of an HC-matrix entry {max_matrix_change(models[name], 4):.1f}"
)
name = "HC n=4, HC lr x100"
g = measures[name]["grad_norm"]
print(
    "x100: mean median cosine in the deeper half below 0.5:",
    measures[name]["cos_median"][deep].mean().item() < 0.5,
)
print("x100: gradient of layer 0 over layer 31 above 1e6:", (g[0] / g[-1]).item() > 1e6)

# %% [markdown]
# Where does the explosion come from? Reading the streams through $L$ layers multiplies
# their mixing matrices, $A_r^{L	op} \cdots A_r^{1	op}$, and nothing keeps that product
# bounded. The mHC paper measures this with the *Amax gain* (largest absolute row sum, and
# column sum for the backward pass) of the product, `hclib.amax_gain`; at initialisation
# every $A_r$ is the identity and the gain is exactly 1.


# %%
def composite_gain(model):
    P = torch.eye(model.n)
    with torch.no_grad():
        for layer in model.layers:
            P = layer.mappings().res @ P  # res = A_r^T: state' = res @ state
    return hclib.amax_gain(P)


# %% tags=["nbval-check-output"]
print("at initialisation:", composite_gain(make_model(CONFIGS["HC n=4"])).forward.item() == 1.0)
for name in ("HC n=4", *FAST):
    gain = composite_gain(models[name])
    print(
        f"{name:<20} composite forward gain above 10: {gain.forward.item() > 10}, "
        f"above 1e6: {gain.forward.item() > 1e6}"
    )

# %% [markdown]
# So the toy task reproduces both halves of the story, in miniature. Once the HC matrices
# actually move, adjacent layers become less similar than in Pre-Norm, as HC Figure 3 reports
# at scale. But an unconstrained product of 32 learned mixing matrices can also amplify the
# signal without bound: what the early layers write is blown up by every later $A_r$, the
# upper layers' outputs become negligible next to it, and their gradients (after the final
# norm divides by the huge stream sum) nearly vanish. This is the instability that the mHC
# paper observes in large HC models and removes by constraining $A_r$ to doubly stochastic
# matrices (chapter 6). At the base learning rate neither half shows in the default run,
# because the matrices barely move; in the full-size run the first does and the second does
# not. Chapter 3 adds the input-dependent part of the matrices, and chapter 4 reads
# the learned matrices layer by layer.

# %% [markdown]
# ## Summary
#
# - A hyper-connection carries $n$ streams $H \in \mathbb{R}^{n \times d}$ instead of one
#   hidden vector; the embedding is copied into every stream and the streams are summed at
#   the end.
# - One layer is an $(n+1) \times (n+1)$ HC matrix $\begin{pmatrix} 0 & B \\ A_m & A_r
#   \end{pmatrix}$ (HC Eq. 1): $A_m$ reads the branch input, $A_r$ mixes the streams, $B$
#   writes the branch output (HC Eqs. 2-5). Our from-scratch `hc_forward` equals
#   `hclib.HyperConnection.from_matrix` exactly.
# - The width connections $\mathrm{WC} = (A_m\; A_r)$ compute the branch input and the mixed
#   streams in one matmul, $\mathrm{WC}^\top H$; the depth connections
#   $(B;\, \operatorname{diag} A_r)$ are the residual-like part (HC Eqs. 6-7).
# - Pre-Norm is the $n = 1$ matrix $\begin{pmatrix} 0 & 1 \\ 1 & 1 \end{pmatrix}$;
#   Post-Norm needs the input-dependent $1/\sigma$ (HC Eqs. 15-16).
# - The initialisation of HC Eq. 14 makes every stream carry the Pre-Norm state; the final
#   sum is $n$ times it and equal after the final norm.
# - On the 32-layer toy task, static HC with $n = 1, 2, 4$ trained at the base learning rate
#   stays close to Pre-Norm in loss, adjacent-layer similarity and gradient profile: its
#   matrices barely leave Eq. 14 (ten times longer training, the full-size run, lowers the
#   similarity of $n = 4$ clearly). Trained 10 times faster, HC $n = 4$ lowers the
#   adjacent-layer similarity below Pre-Norm's (HC Figure 3's claim); 100 times faster, the
#   product of its mixing matrices explodes and the gradient profile spans many orders of
#   magnitude (mHC's motivation).

# %% [markdown]
# ## Exercises
#
# ````{exercise} Sequential and parallel
# :label: ex-02-sequential
# HC Eq. 17 uses, for $n = 2$, the matrix
# $\begin{pmatrix} 0 & 1 & 1 \\ 1 & 1 & 0 \\ 0 & 0 & 1 \end{pmatrix}$ in every layer. Show
# that if both streams start equal they stay equal and follow $h \leftarrow h + T(h)$. Check
# it with `hc_forward` on a stack of 4 layers.
# ````
#
# ````{solution} ex-02-sequential
# :class: dropdown
# Here $A_m = e_1$, $A_r = I$ and $B = (1, 1)$: the same pattern as the initialisation of
# Eq. 14, except that every layer reads stream 1. With $H = 1_2 h^\top$ the branch input is
# $h$, and both streams become $h + T(h)$.
# ```python
# M_seq = torch.tensor([[0.0, 1, 1], [1, 1, 0], [0, 0, 1]], dtype=torch.float64)
# x = torch.randn(5, DIM, dtype=torch.float64)
# H, u = hclib.expand_streams(x, 2), x
# for br in branches[:4]:
#     H, u = hc_forward(H, M_seq, br), u + br(u)
# print(torch.allclose(H, u.unsqueeze(-2).expand_as(H)))
# ```
# ````
#
# ```{exercise} Counting parameters
# :label: ex-02-params
# How many trainable scalars does one static hyper-connection add? Check your formula against
# `sum(p.numel() for p in layer.parameters())` for a layer whose branch is `nn.Identity()`,
# and compute the total for the HC $n = 4$ toy network of this chapter.
# ```
#
# ```{solution} ex-02-params
# :class: dropdown
# $B$ has $n$ entries and $\mathrm{WC} = (A_m\; A_r)$ has $n(n+1)$, so $n(n+2)$ in total (HC
# Eq. 21): 24 for $n = 4$. With 32 layers the toy network gains $32 \cdot 24 = 768$
# parameters, against about $32 \cdot 64 \cdot 66$ in its branches.
# ```
#
# ```{exercise} Does the initial stream matter?
# :label: ex-02-stream
# At initialisation layer $k$ reads stream $k \bmod n$. Argue that any other choice of
# one-hot $A_m$ (for example, every layer reads stream 0) gives the same function at
# initialisation. Why might the choice still matter once training starts?
# ```
#
# ```{solution} ex-02-stream
# :class: dropdown
# At initialisation all streams are equal (the induction above never used *which* stream
# is read), so every one-hot $A_m$ gives the Pre-Norm network. The gradients differ, though:
# the gradient of $\mathcal{L}$ with respect to the entries of $A_m$ and $A_r$ depends on
# which stream feeds which layer, so training breaks the symmetry between the streams
# differently. Rotating the read-out stream spreads the layers over the streams, so that
# different streams can specialise; reading stream 0 everywhere makes the other streams
# pure copies that only $A_r$ can make useful.
# ```
#
# ````{exercise} Which matrices exploded?
# :label: ex-02-gain
# For the network trained with the HC matrices 100 times faster, print the forward Amax gain
# of each single layer's $A_r^\top$ (`hclib.amax_gain(layer.mappings().res)`) next to the
# gain of the product up to that layer. Does the explosion need any single large matrix?
# ````
#
# ````{solution} ex-02-gain
# :class: dropdown
# ```python
# P = torch.eye(4)
# for k, layer in enumerate(models["HC n=4, HC lr x100"].layers):
#     R = layer.mappings().res.detach()
#     P = R @ P
#     print(k, hclib.amax_gain(R).forward.item(), hclib.amax_gain(P).forward.item())
# ```
# Each single gain stays of order one (a few at most), but from roughly the tenth layer on
# the gain of the product grows by about that factor with every layer: 32 factors of modest
# size are enough. This is why mHC bounds
# every factor at exactly 1 (doubly stochastic matrices) instead of hoping that the product
# stays tame.
# ````
