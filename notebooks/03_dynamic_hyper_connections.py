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
# # Dynamic hyper-connections
#
# *Goal: let every token choose its own HC matrix, see why the paper's initialisation makes
# that safe, and count what it costs in parameters and FLOPs.*
#
# [![Open In Colab](figures/colab-badge.svg)](https://colab.research.google.com/github/hclib-book/hclib/blob/main/notebooks/03_dynamic_hyper_connections.ipynb)
#
# **Prerequisites:** Chapter 2 (streams, the static HC matrix of HC Eqs. 1-5 and the
# initialisation of HC Eq. 14). PyTorch autograd and `torch.optim.AdamW`.
#
# In chapter 2 every layer had one HC matrix, the same for every token. The HC paper's default
# model, the one behind its headline results, is *dynamic* (DHC): each token computes a small
# correction to that matrix from its own hidden streams {cite:p}`zhu2024hyperconnections`.
# This chapter writes the correction out (HC Eqs. 10-13), explains the two details that make
# it safe to switch on (a `tanh` and scales that start at 0.01), looks at what a trained toy
# model does with it, and counts the cost.
#
# The default run takes well under a minute on two CPU cores. Set the environment variable
# `HCLIB_BOOK_SIZE=full` before starting Jupyter to train the toy model ten times longer; the
# prose describes the default run.

# %% tags=["remove-input"]
# ruff: noqa: E402
import subprocess
import sys

HCLIB = "hclib[notebooks] @ git+https://github.com/hclib-book/hclib"
if "google.colab" in sys.modules:  # install the book's library on Colab only
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", HCLIB], check=True)

# %%
import matplotlib.pyplot as plt
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

import hclib
from hclib.book import scaled
from hclib.diagrams import draw_hc_heatmap
from hclib.models.mlp import DeepMLP
from hclib.plotting import color, show_figure, use_book_style
from hclib.toy import make_toy_data, train_toy

use_book_style()
torch.set_num_threads(1)  # tiny tensors: one thread is fastest, and much faster on a shared CPU
F64 = torch.float64

# %% [markdown]
# ## What the paper reports
#
# The numbers below are **the paper's**, not this book's: language models trained on 500B
# tokens, the Pre-Norm baseline against dynamic hyper-connections with $n$ streams (DHC×$n$),
# from HC Table 1 (OLMo-1B) and Table 5 (OLMo-7B). V2 and V3 are the paper's two validation
# sets; "downstream" is the average accuracy over seven tasks.
#
# | model, 500B tokens | V2 loss | V3 loss | downstream avg. (%) |
# |---|---|---|---|
# | OLMo-1B (Pre-Norm baseline) | 2.811 | 2.544 | 62.5 |
# | OLMo-1B-DHC×1 | 2.819 | 2.556 | 62.3 |
# | OLMo-1B-DHC×2 | 2.802 | 2.534 | 63.0 |
# | OLMo-1B-DHC×4 | 2.781 | 2.514 | 63.8 |
# | OLMo-1B-DHC×8 | 2.778 | 2.516 | 62.8 |
# | OLMo-7B (Pre-Norm baseline) | 2.581 | 2.322 | 70.1 |
# | OLMo-7B-DHC×4 | 2.559 | 2.304 | 71.0 |
#
# One stream is slightly worse than the baseline, more streams are better, and $n = 4$ is
# the paper's default. For the mixture-of-experts model OLMoE-1B-7B the paper reports that
# DHC×4 converges 1.8 times faster than the baseline (HC Figure 1).
# This chapter builds the dynamic weights and counts their cost; it does not train a model
# large enough to test these numbers.

# %% [markdown]
# ## The dynamic weights, written out
#
# A static HC layer with $n$ streams is the $(n+1)\times(n+1)$ matrix
# $\begin{pmatrix} 0 & B \\ A_m & A_r \end{pmatrix}$ (HC Eq. 1, drawn in {numref}`fig-02-layer`):
# $A_m \in \mathbb{R}^{n\times 1}$ says how the branch input is read out of the streams,
# $B \in \mathbb{R}^{1\times n}$ how the branch output is written back, and
# $A_r \in \mathbb{R}^{n\times n}$ how the streams are mixed.
# Dynamic HC keeps these as a *static part* and adds a term computed from the token's own
# streams $H \in \mathbb{R}^{n\times d}$:
#
# $$
# \begin{aligned}
# \bar H &= \operatorname{norm}(H) && \text{(HC Eq. 10)}\\
# B(H) &= s_\beta \circ \tanh(\bar H W_\beta)^\top + B && \text{(HC Eq. 11)}\\
# A_m(H) &= s_\alpha \circ \tanh(\bar H W_m) + A_m && \text{(HC Eq. 12)}\\
# A_r(H) &= s_\alpha \circ \tanh(\bar H W_r) + A_r && \text{(HC Eq. 13)}
# \end{aligned}
# $$
#
# The norm acts on each stream separately (a LayerNorm over its $d$ features), and the
# projections have shapes $W_\beta, W_m \in \mathbb{R}^{d\times 1}$ and
# $W_r \in \mathbb{R}^{d\times n}$. The scales $s_\alpha$ and $s_\beta$ are two learnable
# scalars ($s_\alpha$ is shared by $A_m$ and $A_r$). The layer then computes HC Eq. 2 with these
# per-token matrices: $\hat H = B(H)^\top\, T\big(H^\top A_m(H)\big)^\top + A_r(H)^\top H$.
#
# We write the equations with plain tensors, give the parameters random values (at
# initialisation they are zero, which would make the check empty), and compare with
# `hclib.HyperConnection`.

# %%
torch.manual_seed(0)
n, d, tokens = 4, 16, 32

params = {  # the layout of HC Algorithm 2: static_alpha = [A_m | A_r], dynamic_alpha = [W_m | W_r]
    "static_alpha": torch.randn(n, n + 1, dtype=F64),  # (n, n+1)
    "static_beta": torch.randn(n, dtype=F64),  # B  (n,)
    "dynamic_alpha": torch.randn(d, n + 1, dtype=F64),  # (d, n+1)
    "dynamic_beta": torch.randn(d, dtype=F64),  # W_beta  (d,)
    "alpha_scale": torch.tensor([0.3], dtype=F64),  # s_alpha
    "beta_scale": torch.tensor([0.2], dtype=F64),  # s_beta
}


def dynamic_hc_weights(H, p, eps=1e-5):
    """HC Eqs. 10-13 for a batch of tokens: returns B (..., n), A_m (..., n), A_r (..., n, n)."""
    Hbar = F.layer_norm(H, (H.shape[-1],), eps=eps)  # Eq. 10, every stream on its own (..., n, d)
    W_m, W_r = p["dynamic_alpha"][:, :1], p["dynamic_alpha"][:, 1:]  # (d, 1), (d, n)
    B = p["beta_scale"] * torch.tanh(Hbar @ p["dynamic_beta"]) + p["static_beta"]  # Eq. 11
    A_m = p["alpha_scale"] * torch.tanh(Hbar @ W_m)[..., 0] + p["static_alpha"][:, 0]  # Eq. 12
    A_r = p["alpha_scale"] * torch.tanh(Hbar @ W_r) + p["static_alpha"][:, 1:]  # Eq. 13
    return B, A_m, A_r


def dynamic_hc_forward(H, p, branch):
    """HC Eq. 2 with per-token matrices: H^ = B^T T(H^T A_m)^T + A_r^T H."""
    B, A_m, A_r = dynamic_hc_weights(H, p)
    h0 = torch.einsum("...i,...id->...d", A_m, H)  # the branch input, Eq. 3  (..., d)
    mixed = torch.einsum("...ji,...jd->...id", A_r, H)  # A_r^T H, Eq. 4  (..., n, d)
    return torch.einsum("...i,...d->...id", B, branch(h0)) + mixed  # Eq. 5  (..., n, d)


# %% [markdown]
# `hclib` stores the same parameters under the same names. Its `mappings(H)` returns the
# per-token weights in the naming that chapter 6 will use (mHC Eq. 3): `pre` is $A_m$, `post`
# is $B$ and `res` is $A_r^\top$ (the matrix that multiplies the streams).

# %%
branch = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.Tanh()).double()
layer = hclib.HyperConnection(d, branch, n=n, dynamic=True).double()
with torch.no_grad():
    for name, value in params.items():
        getattr(layer, name).copy_(value)

H = torch.randn(tokens, n, d, dtype=F64)
B, A_m, A_r = dynamic_hc_weights(H, params)
maps = layer.mappings(H)
torch.testing.assert_close(maps.pre, A_m, rtol=0, atol=1e-13)
torch.testing.assert_close(maps.post, B, rtol=0, atol=1e-13)
torch.testing.assert_close(maps.res, A_r.transpose(-1, -2), rtol=0, atol=1e-13)
with torch.no_grad():
    torch.testing.assert_close(layer(H), dynamic_hc_forward(H, params, branch), rtol=0, atol=1e-12)
print("HC Eqs. 10-13 and Eq. 2 by hand == hclib.HyperConnection")

# %% [markdown]
# Because the norm and the projections act row by row, row $i$ of $A_m(H)$ and $A_r(H)$ and
# entry $i$ of $B(H)$ depend on stream $i$ alone. Perturbing one stream moves exactly one row
# of each matrix:

# %% tags=["nbval-check-output"]
H2 = H.clone()
H2[:, 2] += torch.randn(tokens, d, dtype=F64)  # change stream 2 only
B2, A_m2, A_r2 = dynamic_hc_weights(H2, params)
moved = [
    bool(
        (A_m2[:, i] != A_m[:, i]).any()
        or (A_r2[:, i] != A_r[:, i]).any()
        or (B2[:, i] != B[:, i]).any()
    )
    for i in range(n)
]
print("rows that moved when stream 2 changed:", [i for i in range(n) if moved[i]])

# %% [markdown]
# ## Zero projections and small scales: dynamic HC starts as static HC
#
# HC Algorithm 2 initialises the projections $W_\beta, W_m, W_r$ to **zero** and the scales
# $s_\alpha, s_\beta$ to **0.01**. With $W = 0$, every $\tanh(\bar H W)$ is $\tanh(0) = 0$, so
# the dynamic layer computes exactly the static layer of chapter 2, which in turn computes the
# Pre-Norm residual network (HC Eq. 14, {ref}`sec-02-init-prenorm`). Nothing about the dynamic
# part has to be "warmed up".
#
# What about learning? Write $u = \bar H W$ for one projection and $g = \partial L / \partial
# A$ for the gradient reaching the matrix entry that $u$ feeds. Then
#
# $$
# \frac{\partial L}{\partial s} = \sum_{\text{tokens}} g \,\tanh(u), \qquad
# \frac{\partial L}{\partial W}
#   = s \sum_{\text{tokens}} \bar H^\top \big(g \circ (1 - \tanh^2 u)\big).
# $$
#
# At $W = 0$ the first is **exactly zero** and the second is $s\, \bar H^\top g$: the
# projections receive a gradient ($s = 0.01$ times the one they would get with a scale of
# one), the scales do not, yet. We check all three claims on one layer, with a random
# linear read-out as the loss.


# %%
def grads_at_init(scale, n=4, d=16, tokens=64, seed=0):
    """Output and gradients of a freshly initialised dynamic HC layer whose scales are `scale`."""
    torch.manual_seed(seed)
    branch = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.Tanh()).double()
    dynamic = hclib.HyperConnection(d, branch, n=n, layer_id=1, dynamic=True).double()
    static = hclib.HyperConnection(d, branch, n=n, layer_id=1, dynamic=False).double()
    with torch.no_grad():
        dynamic.alpha_scale.fill_(scale)
        dynamic.beta_scale.fill_(scale)
    H = torch.randn(tokens, n, d, dtype=F64)
    target = torch.randn(tokens, n, d, dtype=F64)
    out = dynamic(H)
    (out * target).sum().backward()
    return {
        "equals static": torch.equal(out, static(H)),
        "grad s": torch.cat([dynamic.alpha_scale.grad, dynamic.beta_scale.grad]),
        "grad W": torch.cat([dynamic.dynamic_alpha.grad.flatten(), dynamic.dynamic_beta.grad]),
    }


# %% tags=["nbval-check-output"]
paper, unit, zero = grads_at_init(0.01), grads_at_init(1.0), grads_at_init(0.0)
print("s = 0.01: output equals static HC:     ", paper["equals static"])
print("s = 0.01: gradient of the scales == 0: ", bool((paper["grad s"] == 0).all()))
print("s = 0.01: gradient of the W's != 0:    ", bool(paper["grad W"].abs().max() > 0))
ratio = paper["grad W"] / unit["grad W"]
nonzero = unit["grad W"] != 0
print(
    "grad W at s = 0.01 / grad W at s = 1:  ",
    f"{ratio[nonzero].min():.6f} .. {ratio[nonzero].max():.6f}",
)
print(
    "s = 0:    every gradient of W and s == 0:",
    bool((zero["grad W"] == 0).all() and (zero["grad s"] == 0).all()),
)

# %% [markdown]
# The last line is the reason the scales do not start at zero. With $W = 0$ *and* $s = 0$
# both gradients vanish (each is proportional to the other parameter), so the dynamic part
# would sit at a saddle and never move. With $s = 0.01$, the first optimizer step moves the
# $W$'s away from zero; from then on $\tanh(\bar H W) \ne 0$ and the scales receive gradient
# too. One AdamW step on a layer inside a loss shows the hand-over, and something else:
# AdamW divides each gradient by its own running size, so the small factor $s$ does not slow
# the $W$'s down. After one step every moved entry has moved by the learning rate,
# $10^{-3}$:

# %% tags=["nbval-check-output"]
torch.manual_seed(1)
layer = hclib.HyperConnection(
    d, nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.Tanh()), n=n, layer_id=0
)
H, target = torch.randn(64, n, d), torch.randn(64, n, d)
opt = torch.optim.AdamW(hclib.param_groups(layer, weight_decay=0.1), lr=1e-3)
for step in (1, 2):
    opt.zero_grad()
    (layer(H) * target).sum().backward()
    s_grad = torch.cat([layer.alpha_scale.grad, layer.beta_scale.grad]).abs().max().item()
    print(
        f"step {step}: |W| max = {layer.dynamic_alpha.abs().max().item():.4f}, "
        f"scales get gradient: {s_grad > 0}"
    )
    opt.step()

# %% [markdown]
# Why the `tanh`? It bounds every dynamic term: $|s\tanh(\cdot)| \le |s|$, so no token can
# move an entry of its matrix further than $|s_\alpha|$ (or $|s_\beta|$) from the static
# value, however large $\bar H W$ becomes. The matrix stays a bounded perturbation of the
# static one, which the network learns slowly and shares across tokens. Without the `tanh`
# (the paper's "w/o tanh" variant, `tanh=False`) the deviation grows with $W$:

# %% tags=["nbval-check-output"]
torch.manual_seed(2)
H = torch.randn(256, n, d)
for use_tanh in (True, False):
    layer = hclib.HyperConnection(d, nn.Identity(), n=n, tanh=use_tanh)
    with torch.no_grad():
        layer.dynamic_alpha.normal_(0.0, 3.0)  # large projections, as after a long run
        layer.dynamic_beta.normal_(0.0, 3.0)
    pre, post, res = layer.mappings(H)
    static = layer.static_alpha.detach()
    deviation = max(
        (pre - static[:, 0]).abs().max().item(),
        (res.transpose(-1, -2) - static[:, 1:]).abs().max().item(),
        (post - layer.static_beta.detach()).abs().max().item(),
    )
    print(f"tanh={use_tanh!s:<5}  max |dynamic - static| = {deviation:.3f}   (s = 0.01)")

# %% [markdown]
# Both variants start identically (at $u = 0$, $\tanh u = u$ to first order and
# $\tanh'(0) = 1$, so even the first gradients agree); they differ only once the projections
# have grown. In HC Table 1 the differences between the two variants are small and go both
# ways across the validation sets; the paper keeps `tanh` in its default model.

# %% [markdown]
# ## What the weights do per token
#
# Now a trained model. We train the toy MLP of chapter 1 (a stack of one-layer blocks) with
# dynamic HC, $n = 4$ streams, on the teacher task from `hclib.toy`, then forward the
# validation set and collect, for every layer, the per-token matrices $A_m(H)$, $B(H)$,
# $A_r(H)$. Here a "token" is one input vector of the toy task.

# %%
STEPS = scaled(small=400, full=4000)
DEPTH, DIM, RATE = 8, 32, 4

data = make_toy_data(seed=0)
torch.manual_seed(0)
model = DeepMLP(data.in_features, data.classes, dim=DIM, depth=DEPTH, connection="hc", n=RATE)
history = train_toy(
    model, data, steps=STEPS, lr=3e-3, weight_decay=0.1, eval_every=STEPS, progress=False
)


def layer_states(model, x):
    """The state (..., n, d) entering every layer of `model`, in order."""
    H, states = model.state(x), []
    with torch.no_grad():
        for layer in model.layers:
            states.append(H)
            H = layer(H)
    return states


model.eval()
states = layer_states(model, data.x_val)
with torch.no_grad():
    maps = [layer.mappings(H) for layer, H in zip(model.layers, states, strict=True)]

# %%
print(f"validation accuracy after {STEPS} steps: {history['val_acc'][-1]:.3f}  (chance: 1/8)")
s_alpha = torch.tensor([layer.alpha_scale.item() for layer in model.layers])
s_beta = torch.tensor([layer.beta_scale.item() for layer in model.layers])
print("|s_alpha| per layer:", [f"{abs(s):.2f}" for s in s_alpha.tolist()])
print("|s_beta|  per layer:", [f"{abs(s):.2f}" for s in s_beta.tolist()])

# %% [markdown]
# The exact values depend on the machine (training amplifies the tiny rounding differences
# between CPUs and thread counts), so the checked cell below states only what the text relies
# on:

# %% tags=["nbval-check-output"]
print("validation accuracy above 0.6 (chance 0.125):", history["val_acc"][-1] > 0.6)
grew = bool((s_alpha.abs() > 0.01).all() and (s_beta.abs() > 0.01).all())
print("every scale grew beyond its initial 0.01:", grew)

# %% [markdown]
# The scales grew beyond 0.01 in every layer (the listing above shows by how much): the model
# chose to use the dynamic part. To see what it does, look first at a few tokens. Each token
# has its own HC matrix $\begin{pmatrix} 0 & B(H) \\ A_m(H) & A_r(H) \end{pmatrix}$, which we
# assemble from `mappings` (its `res` is $A_r^\top$); with the projections at zero it must be
# the static matrix for every token, which the first lines check on a fresh layer.


# %%
def token_matrices(pre, post, res):
    """Per-token HC matrices (tokens, n+1, n+1) = [[0, B(H)], [A_m(H), A_r(H)]] from mappings."""
    tokens, n = pre.shape
    M = torch.zeros(tokens, n + 1, n + 1)
    M[:, 0, 1:] = post  # B(H)
    M[:, 1:, 0] = pre  # A_m(H)
    M[:, 1:, 1:] = res.transpose(-1, -2)  # A_r(H) = res^T
    return M


fresh = hclib.HyperConnection(DIM, nn.Identity(), n=RATE, layer_id=1)
with torch.no_grad():
    M_fresh = token_matrices(*fresh.mappings(torch.randn(5, RATE, DIM)))
torch.testing.assert_close(M_fresh, fresh.static_matrix().expand(5, -1, -1), rtol=0, atol=0)

K_SHOW = DEPTH // 2  # a middle layer of the trained model
static = model.layers[K_SHOW].static_matrix()
M_tok = token_matrices(*maps[K_SHOW])  # (validation tokens, n+1, n+1)
TOKENS = [int((data.y_val == c).nonzero()[0]) for c in range(3)]  # first token of classes 0-2
dyn = M_tok[TOKENS] - static  # the input-dependent parts, (3, n+1, n+1)

# %% tags=["remove-output"]
fig, axes = plt.subplots(2, 2, figsize=(7.4, 6.6), layout="constrained")
axes = axes.flatten()
draw_hc_heatmap(static, axes[0], title=f"layer {K_SHOW}: static part")
vmax = dyn.abs().max().item()
for ax, t, D in zip(axes[1:], TOKENS, dyn, strict=True):
    title = f"token {t} (class {data.y_val[t].item()}): + dynamic part"
    draw_hc_heatmap(D, ax, vmax=vmax, title=title, fmt="{:+.2f}")
fig.colorbar(axes[1].images[0], ax=list(axes[1:]), shrink=0.8, label="dynamic part")
show_figure(fig, "fig-03-tokens")

# %% [markdown]
# ```{glue:figure} fig-03-tokens
# :name: fig-03-tokens
#
# The HC matrix of a middle layer of the trained toy model: its static part (top left, shared
# by all tokens; row 0 is $B$, column 0 is $A_m$, the rest $A_r$, outlined in the colours of
# {numref}`fig-02-layer`) and, for three validation tokens of different classes, the part that
# each token's own streams add to it (HC Eqs. 11-13; note the much smaller colour scale).
# Each token's matrix is the static one plus its panel. The rows of a panel nearly agree: row
# $i$ reads stream $i$ only, and in this small model a token's four streams are still close to
# each other (the check below the figure).
# ```

# %% tags=["nbval-check-output"]
s_a, s_b = (
    abs(model.layers[K_SHOW].alpha_scale.item()),
    abs(model.layers[K_SHOW].beta_scale.item()),
)
print("per-token matrices assembled from mappings equal the static one at W = 0:", True)
print(
    "the three tokens' matrices all differ:",
    bool((dyn[0] != dyn[1]).any() and (dyn[1] != dyn[2]).any()),
)
print(
    "every dynamic part within the tanh bound (|s_beta| in row 0, |s_alpha| below):",
    bool((dyn[:, 0].abs() <= s_b).all() and (dyn[:, 1:].abs() <= s_a).all()),
)
print(
    "largest dynamic part smaller than a fifth of the largest static entry:",
    vmax < 0.2 * static.abs().max().item(),
)
centred = states[K_SHOW] - states[K_SHOW].mean(-1, keepdim=True)  # (tokens, n, d), as the norm
unit = F.normalize(centred, dim=-1)
stream_cos = torch.einsum("tid,tjd->tij", unit, unit).mean(0)  # (n, n), mean over tokens
print("every two streams entering this layer: mean cosine above 0.8:", bool(stream_cos.min() > 0.8))

# %% [markdown]
# Over all validation tokens, we subtract each matrix's static part and plot, for three
# layers, the distribution of the *dynamic part* of every entry. The dashed lines are
# $\pm|s|$, the bound that the `tanh` enforces.


# %%
def dynamic_parts(layer, pre, post, res):
    """The input-dependent part of each matrix, (tokens, entries) each, with entry labels."""
    static_alpha, static_beta = layer.static_alpha.detach(), layer.static_beta.detach()
    n = static_beta.shape[0]
    streams = [f"{i}" for i in range(n)]
    return {
        "$A_m$": (pre - static_alpha[:, 0], streams),
        "$B$": (post - static_beta, streams),
        "$A_r$": (
            (res.transpose(-1, -2) - static_alpha[:, 1:]).flatten(1),
            [f"{i}{j}" for i in range(n) for j in range(n)],
        ),
    }


def spread_box(ax, values, labels, bound):
    """Boxes of 5th-95th percentiles per entry, with the tanh bound +-|s| dashed."""
    ax.boxplot(
        values.numpy(), whis=(5, 95), showfliers=False, widths=0.6,
        boxprops={"color": color("hc")}, medianprops={"color": color("reference")},
    )  # fmt: skip
    for y in (bound, -bound):
        ax.axhline(y, color=color("reference"), ls="--", lw=0.8)
    ax.set_xticks(range(1, values.shape[1] + 1), labels, fontsize=7)


# %% tags=["remove-output"]
SHOW = [0, DEPTH // 2, DEPTH - 1]
fig, axes = plt.subplots(
    len(SHOW), 3, figsize=(10, 2.3 * len(SHOW)), sharey="row",
    gridspec_kw={"width_ratios": [4, 4, 16]},
)  # fmt: skip
for row, k in enumerate(SHOW):
    layer = model.layers[k]
    for col, (name, (values, labels)) in enumerate(dynamic_parts(layer, *maps[k]).items()):
        scale = layer.beta_scale if name == "$B$" else layer.alpha_scale
        spread_box(axes[row, col], values, labels, abs(scale.item()))
        if row == 0:
            axes[row, col].set_title(f"{name} ({['read-out', 'write-in', 'stream mixing'][col]})")
        if col == 0:
            axes[row, col].set_ylabel(f"layer {k}\nvalue - static part")
        if row == len(SHOW) - 1:
            axes[row, col].set_xlabel("entry (stream $i$, or $ij$)")
fig.tight_layout()
show_figure(fig, "fig-03-spread")

# %% [markdown]
# ```{glue:figure} fig-03-spread
# :name: fig-03-spread
#
# Distribution over validation tokens of the input-dependent part of each HC weight, for the
# first, a middle and the last layer of the trained toy model (boxes: quartiles; whiskers:
# 5th-95th percentiles; dashed: $\pm|s|$, the bound set by `tanh`). Entry $ij$ of $A_r$ is
# how much of stream $i$ goes into stream $j$. The spread shows that different tokens use
# different matrices; every box stays inside the dashed band.
# ```
#
# Two patterns are pure structure, not learning. In layer 0 the four streams are still four
# copies of the embedding, and since row $i$ depends on stream $i$ only, the four boxes of
# $A_m$ and of $B$ are identical (and entry $ij$ of $A_r$ depends on $j$ alone). In the last
# layer the four entries of each row of $A_r$ agree: after the last layer the streams are only
# summed, so it makes no difference to the loss into which stream a token mixes, the columns
# of $W_r$ receive identical gradients, and having started at zero they stay identical.
#
# How much does a token's matrix differ from its layer's average? The table below gives, per
# layer, the standard deviation over tokens of each kind of entry, averaged over the entries,
# next to the static part's typical size.

# %%
print("layer  std(A_m)  std(B)  std(A_r)   |static B| mean")
for k, (pre, post, res) in enumerate(maps):
    static_b = model.layers[k].static_beta.detach().abs().mean().item()
    print(
        f"{k:>5}  {pre.std(0).mean():>8.3f}  {post.std(0).mean():>6.3f}  "
        f"{res.std(0).mean():>8.3f}   {static_b:>8.2f}"
    )

# %% tags=["nbval-check-output"]
stds = torch.stack([torch.stack([m.std(0).mean() for m in layer_maps]) for layer_maps in maps])
static_b = torch.stack([layer.static_beta.detach().mean() for layer in model.layers])
print("every per-token std between 0.01 and 0.2:", bool((stds > 0.01).all() and (stds < 0.2).all()))
print("static B of every layer between 0.8 and 1.2:", bool(((static_b - 1).abs() < 0.2).all()))

# %% [markdown]
# In this small model the per-token standard deviations lie between a hundredth and a fifth,
# small against the static parts (the static $B$ stays near its initial ones): the dynamic
# part *modulates* a shared matrix rather than replacing it. The HC paper makes a related
# observation on its vision model (HC Figure 12, the last layer of a ViT-Base with DHC×2):
# the write weights $\beta$ ($B$) are concentrated within each class, while the read and
# mixing weights $\alpha$ vary more but still differ between classes. Our toy task has no
# such structure to find, so we do not read more into the particular entries.

# %% [markdown]
# ## Parameters: the count behind HC Table 7
#
# A static module stores $A_m$ ($n$), $A_r$ ($n^2$) and $B$ ($n$):
#
# $$|\theta_{\text{SHC}}| = n + n^2 + n = n(n+2) \qquad \text{(HC Eq. 21)}.$$
#
# A dynamic module adds the norm of Eq. 10, $W_\beta$ and $W_m$ ($d$ each), $W_r$ ($d\,n$),
# and the two scales:
#
# $$
# |\theta_{\text{DHC}}| = |\theta_{\text{norm}}| + d(n+2) + n(n+2) + 2
# \qquad \text{(HC Eqs. 23-25)}.
# $$
#
# A transformer layer has two modules (one around attention, one around the FFN), so a model
# with $L$ layers carries $2L$ of them (HC Eq. 22). We count the parameters of real `hclib`
# modules at OLMo sizes and compare with the formula. The branch is an `nn.Identity`, so only
# the connection's own parameters are counted.


# %%
def hc_params_formula(d, n, dynamic, norm_params=0):
    static = n * (n + 2)  # Eq. 21
    return norm_params + d * (n + 2) + static + 2 if dynamic else static  # Eqs. 23-25


def hc_params_counted(d, n, dynamic, norm="layer", norm_affine=False):
    module = hclib.HyperConnection(
        d, nn.Identity(), n=n, dynamic=dynamic, norm=norm, norm_affine=norm_affine
    )
    return sum(p.numel() for p in module.parameters())


# %% tags=["nbval-check-output"]
for n_ in (1, 2, 4, 8):
    same = all(
        hc_params_counted(64, n_, dyn) == hc_params_formula(64, n_, dyn) for dyn in (False, True)
    )
    print(f"n={n_}: module counts equal Eq. 21 (static) and Eqs. 23-25 (dynamic, d=64): {same}")

# %% [markdown]
# HC Appendix B works out two examples with OLMo-1B ($d = 2048$, 16 layers, parameter-free
# norms): 768 extra parameters for static HC with $n = 4$ and 394,048 for dynamic HC with
# $n = 4$. The modules give both, and a few hundredths of a percent of the model:

# %% tags=["nbval-check-output"]
shc4 = 2 * 16 * hc_params_counted(2048, 4, False)
dhc4 = 2 * 16 * hc_params_counted(2048, 4, True)
print(f"OLMo-1B-SHCx4: {shc4:,} extra parameters;  OLMo-1B-DHCx4: {dhc4:,}")
print(f"OLMo-1B-DHCx4: {100 * dhc4 / 1.17676442e9:.3f}% of the model's 1.17676442 B (HC Table 7)")

# %% [markdown]
# ````{dropdown} In depth: HC Table 7 row by row
# Table 7 evaluates the formula for three models: OLMo-1B and OLMo-7B ($d = 4096$, 32
# layers), both with parameter-free norms, and OLMoE-1B-7B ($d = 2048$, 16 layers), whose
# RMSNorms carry a gain of $d$ parameters. It prints both an "HC Params" column and the model
# totals with and without HC, and the difference of the totals is a second, independent
# reading of the same number. The hidden cell below compares all three (the paper's values
# are constants, in billions). What it shows:
#
# * for the two static models the "HC Params" column is ten times the formula (and ten times
#   the difference of its own totals), a slipped decimal;
# * for OLMo-7B-DHC×4 the column disagrees with the formula while the totals agree with it;
# * for OLMoE-1B-7B-DHC×4 both readings give about 394,000, OLMo-1B's value, i.e. the count
#   *without* the norm gains; with the $d$-parameter RMSNorm the formula gives more, so the
#   table appears to leave the norm out.
#
# We trust Eqs. 21-25: they follow from the parameter shapes (which the modules confirm), and
# the differences of the table's own totals agree with them in every row where the norm is
# parameter-free.
# ````

# %% tags=["nbval-check-output", "hide-cell"]
# model: (d, layers, n, dynamic, norm params, "HC Params" column, total w/o HC, total with HC)
TABLE7 = {
    "OLMo-1B-SHCx2": (2048, 16, 2, False, 0, 0.0000026, 1.17676442, 1.17676467),
    "OLMo-1B-SHCx4": (2048, 16, 4, False, 0, 0.0000077, 1.17676442, 1.17676518),
    "OLMo-1B-DHCx2": (2048, 16, 2, True, 0, 0.0002625, 1.17676442, 1.17702688),
    "OLMo-1B-DHCx4": (2048, 16, 4, True, 0, 0.0003940, 1.17676442, 1.17715846),
    "OLMo-7B-DHCx4": (4096, 32, 4, True, 0, 0.0013124, 6.88809574, 6.88967027),
    "OLMoE-1B-7B-DHCx4": (2048, 16, 4, True, 2048, 0.0003940, 6.91909427, 6.91948832),
}
print(f"{'model':<18} {'counted':>10} {'HC column':>10} {'totals diff':>11}  column ok  diff ok")
for name, (d_, L, n_, dyn, norm_p, column, before, after) in TABLE7.items():
    counted = 2 * L * hc_params_counted(d_, n_, dyn, norm="rms", norm_affine=norm_p > 0)
    assert counted == 2 * L * hc_params_formula(d_, n_, dyn, norm_p)
    column_n, diff_n = round(column * 1e9), round((after - before) * 1e9)
    # the column has 7 decimals of a billion (steps of 100), the totals 8 (steps of 10)
    print(
        f"{name:<18} {counted:>10,} {column_n:>10,} {diff_n:>11,}  "
        f"{abs(column_n - counted) <= 50!s:<9}  {abs(diff_n - counted) <= 10}"
    )

# %% [markdown]
# ## FLOPs: the width connection against a transformer layer
#
# The main cost of a static module is one matrix product per token: the
# $(n+1)\times n$ matrix $\mathrm{WC}^\top = (A_m\;A_r)^\top$ applied to the $n\times d$
# streams (HC Algorithm 1, line 5), which gives the branch input and the mixed streams at once.
# That is $d\,n\,(n+1)$ multiply-adds, or $2\,d\,n\,(n+1)$ FLOPs. We let PyTorch's
# `FlopCounterMode` count it (it counts matrix products, two FLOPs per multiply-add, and ignores
# elementwise work such as the write-back $B^\top T(h_0)^\top + H'$).


# %% tags=["nbval-check-output"]
def flops_per_token(module, *shape, device="cpu"):
    with FlopCounterMode(display=False) as counter:
        module(torch.zeros(1, *shape, device=device))
    return counter.get_total_flops()


d_olmo = 2048
for n_ in (2, 4):
    static = flops_per_token(
        hclib.HyperConnection(d_olmo, nn.Identity(), n=n_, dynamic=False), n_, d_olmo
    )
    dynamic = flops_per_token(hclib.HyperConnection(d_olmo, nn.Identity(), n=n_), n_, d_olmo)
    print(
        f"n={n_}: static {static:,} FLOPs = 2 d n (n+1): {static == 2 * d_olmo * n_ * (n_ + 1)};"
        f"  dynamic {dynamic:,} = 2 x static: {dynamic == 2 * static}"
    )

# %% [markdown]
# The dynamic module counts twice the static one: besides the mixing it projects the $n$
# normalised streams onto $W_m, W_r$, another $n \times d \times (n+1)$ product. The counter
# misses one term: $\bar H W_\beta$ is a matrix-*vector* product, which `FlopCounterMode` does
# not count; it adds $2\,n\,d$ FLOPs, and we add it by hand below.
#
# Against what? We build one OLMo-1B transformer layer's matrices on PyTorch's `meta` device
# (shapes only, no memory): attention's four $d\times d$ projections and the SwiGLU FFN's three
# $d\times 8192$ matrices, plus the tied $d\times 50304$ unembedding, and count them with the
# same counter. HC Appendix B writes a layer as $4d^2 + 2\,d\,d_{\text{ffn}}$ multiply-adds for
# a two-matrix FFN; OLMo's SwiGLU has three matrices. Like the paper's Table 8, this counts the
# matrix products of a forward pass and not the attention scores.

# %% tags=["nbval-check-output", "hide-input"]
OLMO_1B = {"d": 2048, "layers": 16, "ffn_hidden": 8192, "vocab": 50304}  # OLMo-1B config


def olmo_layer(d, ffn_hidden):
    attention = [nn.Linear(d, d, bias=False, device="meta") for _ in range(4)]  # q, k, v, out
    ffn = [nn.Linear(d, ffn_hidden, bias=False, device="meta") for _ in range(2)]  # gate, up
    return attention, ffn, nn.Linear(ffn_hidden, d, bias=False, device="meta")  # down


def layer_flops(d, ffn_hidden):
    attention, ffn, down = olmo_layer(d, ffn_hidden)
    total = sum(flops_per_token(lin, d, device="meta") for lin in attention + ffn)
    return total + flops_per_token(down, ffn_hidden, device="meta")


cfg = OLMO_1B
d_ = cfg["d"]
per_layer = layer_flops(cfg["d"], cfg["ffn_hidden"])
unembed = flops_per_token(
    nn.Linear(cfg["d"], cfg["vocab"], bias=False, device="meta"), cfg["d"], device="meta"
)
model_flops = cfg["layers"] * per_layer + unembed
print(
    f"one OLMo-1B layer: {per_layer / 1e6:.1f} MFLOPs per token "
    f"(= 2 (4d^2 + 3 d d_hidden): {per_layer == 2 * (4 * d_ * d_ + 3 * d_ * cfg['ffn_hidden'])})"
)
print(f"whole model:       {model_flops / 1e9:.4f} GFLOPs per token   (HC Table 8: 2.3536)")
params = cfg["layers"] * (4 * d_ * d_ + 3 * d_ * cfg["ffn_hidden"]) + d_ * cfg["vocab"]
print(f"= 2 x {params:,} parameters: {model_flops == 2 * params}   (HC Table 7: 1.17676442 B)")

# %% [markdown]
# Our count of the baseline is within 0.0001 GFLOPs of Table 8's. It is exactly twice the
# parameter count (the usual rule of thumb for a forward pass), and that parameter count is
# Table 7's OLMo-1B total to all printed digits, so we have the right shapes. Now the overhead
# of the $2L = 32$ modules:

# %% tags=["nbval-check-output"]
TABLE8 = {"SHCx2": 0.038, "SHCx4": 0.127, "DHCx2": 0.076, "DHCx4": 0.200}  # HC Table 8, % extra
d_, L = cfg["d"], cfg["layers"]
print("model   FLOPs/module   2 modules / layer   whole model   HC Table 8")
for n_ in (2, 4):
    for dyn in (False, True):
        module = hclib.HyperConnection(d_, nn.Identity(), n=n_, dynamic=dyn)
        f = flops_per_token(module, n_, d_) + (2 * n_ * d_ if dyn else 0)  # + H W_beta by hand
        name = f"{'DHC' if dyn else 'SHC'}x{n_}"
        print(
            f"{name:<6} {f:>13,}   {100 * 2 * f / per_layer:>16.3f}%   "
            f"{100 * 2 * L * f / model_flops:>10.3f}%   {TABLE8[name]:>9.3f}%"
        )

# %% [markdown]
# Counted this way, HC adds about a tenth of a percent of FLOPs (static, $n = 4$) to a quarter
# of a percent (dynamic, $n = 4$), the same order as Table 8's 0.13% and 0.20%.
#
# ```{dropdown} In depth: why the digits differ from HC Table 8
# The paper does not say exactly which operations Table 8 counts. Our static count is below
# the paper's, so the paper includes some elementwise work (the write-back
# $B^\top T(h_0)^\top + H'$, perhaps the norm); our dynamic count is above it, so the paper
# leaves out part of what we count (perhaps the projections of the normalised streams, which
# are matrix products). No choice of ours reproduces all four rows at once.
# ```
#
# The conclusion does not depend on these details: one module's width connection
# costs $d\,n(n+1)$ multiply-adds per token against the $8d^2$ of the two-matrix FFN of width
# $4d$ it wraps, a ratio of $n(n+1)/(8d)$, tiny for $d$ in the thousands. The real
# cost of hyper-connections is elsewhere: the carried state is $n$ times wider, which costs
# activation memory and memory bandwidth (HC Table 9; mHC Section 4), not FLOPs.

# %% [markdown]
# ## Weight decay: static weights without, projections with
#
# The HC paper (Section 4) trains the static parts $B, A_m, A_r$ **without** weight decay and
# the dynamic projections $W$ **with** it. The reason is where each group should rest. Decay
# pulls a parameter toward zero. For a projection $W$, zero is its initial value and means
# "use the static matrix": decay is a mild pull toward static HC, a sensible prior. For the
# static part, zero means $B = 0$ and $A_r = 0$, a layer that forgets its streams and writes
# nothing: decay would pull the network away from the residual path it started on.
#
# How strong is that pull? AdamW's decoupled decay multiplies a parameter by $1 - \eta\lambda$
# each step, whatever its gradient. Over a long run the factor compounds:

# %% tags=["nbval-check-output"]
for lr, wd, steps in [(3e-3, 0.1, 400), (4e-4, 0.1, 100_000)]:
    print(
        f"lr={lr:g}, weight decay={wd:g}, {steps:>7,} steps: the decay alone scales a weight "
        f"by {(1 - lr * wd) ** steps:.3g}"
    )

# %% [markdown]
# On the toy run the effect is modest, but over a pretraining run of $10^5$ steps the decay
# alone would shrink $A_r$'s ones to about 2%: the gradient would have to fight it all the
# time. `hclib.param_groups` applies the paper's rule
# and extends it to the whole model the usual way (norms, biases and scales without decay,
# every other matrix with it). We write the rule for the HC parameters from scratch and compare
# with its groups on a small dynamic-HC model.

# %%
small = DeepMLP(data.in_features, data.classes, dim=16, depth=2, connection="hc", n=4)
decayed, not_decayed = (set(g["names"]) for g in hclib.param_groups(small, weight_decay=0.1))


def paper_rule(name):
    """HC Section 4: projections decay; static weights and scales do not."""
    return name.endswith(("dynamic_alpha", "dynamic_beta"))


hc_names = [
    name
    for name, _ in small.named_parameters()
    if ".branch." not in name and name.startswith("layers.")
]
assert {n_ for n_ in hc_names if paper_rule(n_)} == decayed & set(hc_names)
assert {n_ for n_ in hc_names if not paper_rule(n_)} == not_decayed & set(hc_names)

# %% tags=["nbval-check-output"]
for title, names in (("with weight decay", decayed), ("without weight decay", not_decayed)):
    print(f"{title}:")
    for name in sorted(names):
        if name.startswith("layers.0.") or not name.startswith("layers."):
            print(f"    {name:<32} {tuple(dict(small.named_parameters())[name].shape)}")
print("(layers.1 is split the same way)")

# %% [markdown]
# The HC layer's projections `dynamic_alpha` ($[W_m \mid W_r]$, $d\times(n+1)$) and
# `dynamic_beta` ($W_\beta$) are in the decayed group with the branch's and the embedding's
# linear weights; `static_alpha` ($[A_m \mid A_r]$), `static_beta` ($B$) and the scales are not.
# `hclib.toy.train_toy` builds its AdamW from these groups, as every training loop in the book
# does.

# %% tags=["nbval-check-output", "remove-cell"]
# checks the solution of exercise ex-03-params (hidden in the book)
per_module = hc_params_counted(2048, 8, True)
print(f"DHCx8, d=2048: {per_module:,} per module, {2 * 16 * per_module:,} in OLMo-1B")
print(f"W_r: {2048 * 8:,} of them ({100 * 2048 * 8 / per_module:.0f}%)")

# %% [markdown]
# ## Summary
#
# * Dynamic HC adds, per token, $s\tanh(\operatorname{norm}(H)W)$ to each static weight
#   (HC Eqs. 10-13); row $i$ of each matrix depends on stream $i$ only.
# * With $W = 0$ at initialisation, dynamic HC *is* static HC (and so the Pre-Norm network).
#   The gradient of the scales is exactly zero at first, while the $W$'s receive a gradient
#   proportional to $s = 0.01$. AdamW normalises that factor away: its first step moves the
#   $W$'s by the learning rate, whatever $s$ is. Scales of zero would freeze both.
# * `tanh` bounds each dynamic term by $|s|$: the per-token matrix stays a bounded perturbation
#   of the layer's shared matrix. In the trained toy model the scales grew beyond 0.01, and
#   the per-token weights spread around the static ones by between a hundredth and a fifth
#   (standard deviation over tokens).
# * Cost: $n(n+2)$ parameters per static module and $|\theta_{\text{norm}}| + d(n+2) + n(n+2)
#   + 2$ per dynamic one (768 and 394,048 for OLMo-1B with $n = 4$); FLOPs at most about a
#   quarter of a percent of the model. Some entries of HC Table 7 disagree with these formulas; the
#   formulas agree with the modules and with the table's own totals.
# * Weight decay goes on the projections, never on the static weights, whose zero would cut
#   the residual path (`hclib.param_groups`).

# %% [markdown]
# ## Exercises
#
# ```{exercise} Scales that start at zero
# :label: ex-03-zero-scales
# Suppose an implementation initialises $s_\alpha = s_\beta = 0$ and $W = 0$. Which parameters
# of the HC module receive a non-zero gradient at the first step, and what happens after many
# steps? What changes if instead $W$ starts random and small while $s = 0$?
# ```
#
# ```{solution} ex-03-zero-scales
# :class: dropdown
# With $s = 0$ and $W = 0$ the gradient of $s$ is $\sum g\tanh(\bar H W) = 0$ and the gradient
# of $W$ is proportional to $s = 0$: neither moves, ever (weight decay keeps $W$ at zero too).
# Only the static parts learn, so the model is a static HC network. With $W$ random and $s = 0$
# the output still equals static HC at initialisation, and now $s$ receives gradient
# ($\tanh(\bar H W) \ne 0$), so the dynamic part switches on after the first steps. This also
# works; the paper's choice ($W = 0$, $s = 0.01$) gets the same effect without a random
# initialisation of $W$. Check it with `grads_at_init` after filling `dynamic_alpha` with small
# random values.
# ```
#
# ```{exercise} Parameters of a wider model
# :label: ex-03-params
# Count the extra parameters of dynamic HC with $n = 8$ in OLMo-1B ($d = 2048$, 16 layers,
# parameter-free norms), first with the formula, then with `hc_params_counted`. What fraction
# of them sits in $W_r$?
# ```
#
# ```{solution} ex-03-params
# :class: dropdown
# Per module $d(n+2) + n(n+2) + 2 = 2048 \cdot 10 + 80 + 2 = 20{,}562$, so $32 \times 20{,}562 =
# 657{,}984$ for the model (`2 * 16 * hc_params_counted(2048, 8, True)` gives the same; a
# hidden cell of this chapter checks it).
# $W_r$ has $d\,n = 16{,}384$ of the 20,562 parameters per module, about 80%: the dynamic
# stream mixing dominates the count and grows as $d\,n$.
# ```
#
# ```{exercise} When would the width connection matter?
# :label: ex-03-flops
# Take a transformer layer with a GELU FFN of hidden size $4d$, so $12d^2$ multiply-adds per
# token, and two static HC modules. For $n = 4$, below which width $d$ does the width
# connection cost more than 1% of the layer's multiply-adds? Check your answer with
# `flops_per_token`.
# ```
#
# ```{solution} ex-03-flops
# :class: dropdown
# Two modules cost $2\,d\,n(n+1) = 40d$ multiply-adds, so the ratio is $40d / 12d^2 = 10/(3d)$.
# It exceeds 1% when $d < 1000/3$, i.e. $d \le 333$. Only toy-sized models, like the ones in
# this book's CPU experiments, are in that range; there HC's FLOPs are a visible, but still
# small, fraction.
# ```
#
# ```{exercise} Decay on everything
# :label: ex-03-decay
# Train the toy model of this chapter twice for the same number of steps: once with
# `hclib.param_groups(model, 0.1)` and once with `torch.optim.AdamW(model.parameters(),
# weight_decay=1.0)` (decay on every parameter, exaggerated). Compare the mean of the diagonal
# of $A_r$ and of $B$ across layers at the end. What do you expect, and why does it matter
# more for long runs?
# ```
#
# ```{solution} ex-03-decay
# :class: dropdown
# With decay on everything the static weights are multiplied by $1 - \eta\lambda$ at every
# step, so the diagonal of $A_r$ and the entries of $B$ drift below one unless the gradient
# pushes back, and they drift further the longer you train (the factor is
# $(1-\eta\lambda)^{\text{steps}}$). With the paper's groups they stay where the loss wants
# them. On a short toy run the difference is small; over hundreds of thousands of steps the
# decay alone would remove most of the identity path.
# ```
