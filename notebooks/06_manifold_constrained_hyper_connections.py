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
# # Manifold-constrained hyper-connections
#
# *Goal: see why products of unconstrained stream-mixing matrices can blow up a deep network,
# and how projecting every mixing matrix onto the doubly stochastic matrices prevents it.*
#
# [![Open In Colab](figures/colab-badge.svg)](https://colab.research.google.com/github/hclib-book/hclib/blob/main/notebooks/06_manifold_constrained_hyper_connections.ipynb)
#
# **Prerequisites:** Chapters 2 and 3 (hyper-connections, static and dynamic); Chapter 4's
# unfolding of a stack into products of mixing matrices helps but is not required. Background:
# matrix norms (row and column sums), the sigmoid function.
#
# Hyper-connections {cite:p}`zhu2024hyperconnections` mix $n$ residual streams with a learned
# matrix in every layer. Nothing bounds that matrix, and a signal that crosses $L$ layers is
# multiplied by the product of $L$ of them. The mHC paper {cite:p}`xie2025mhc` reports that this
# product reached gains in the thousands in a 27B-parameter model, together with a loss spike,
# and proposes to keep every mixing matrix doubly stochastic. This chapter measures the problem,
# derives the Sinkhorn-Knopp projection, rebuilds the mHC layer from its equations, asks why it
# is built that way and what the constraint costs, and compares it with HC on the same gain
# measure.
#
# What the paper reports for its largest model, a 27B-parameter mixture-of-experts language model
# with $n = 4$ streams (mHC Section 5, Table 4, Figures 5 and 7; **the paper's numbers, not
# reproduced in this book**):
#
# | | baseline | HC | mHC |
# |---|---|---|---|
# | final training loss, relative to the baseline | 0 | (loss surge near step 12k) | $-0.021$ |
# | BBH (exact match, 3-shot) | 43.8 | 48.9 | 51.0 |
# | DROP (F1, 3-shot) | 47.0 | 51.6 | 53.9 |
# | GSM8K (exact match, 8-shot) | 46.7 | 53.2 | 53.8 |
# | MMLU (accuracy, 5-shot) | 59.0 | 63.0 | 63.4 |
# | largest composite Amax gain of the stream mixing | | about 3000 | about 1.6 |
#
# mHC beats HC on seven of the paper's eight benchmarks (HC is ahead on MATH), and the paper
# reports 6.7% more training time than the baseline at $n = 4$ with its fused kernels.

# %% tags=["remove-input"]
import subprocess
import sys

if "google.colab" in sys.modules:
    hclib_url = "hclib[notebooks] @ git+https://github.com/hclib-book/hclib"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", hclib_url], check=True)

# %% tags=["remove-input"]
# ruff: noqa: E402  (the imports follow the Colab install cell)
import matplotlib.pyplot as plt
import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

import hclib
from hclib import amax_gain
from hclib.book import scaled
from hclib.diagrams import draw_mixing_heatmap, draw_permutation_sum, draw_stream_flow
from hclib.models.mlp import DeepMLP
from hclib.plotting import color, set_log_ticks, show_figure, use_book_style
from hclib.toy import make_toy_data, train_toy

use_book_style()
# The models here are tiny: one thread avoids the thread start-up cost that dominates small
# operations on a CPU (and is much worse when other programs share the cores).
torch.set_num_threads(1)

# %% [markdown]
# The last section trains two small networks, and mHC is slow on a CPU (twenty Sinkhorn-Knopp
# iterations per layer, each a handful of tiny operations, in the forward and the backward pass).
# The default sizes keep the chapter near a minute on two CPU cores; set
# `HCLIB_BOOK_SIZE=full` before starting Jupyter for a deeper, longer run (the text quotes the
# default run only).

# %%
DEPTH = scaled(small=16, full=32)  # blocks of the toy networks in the last section
STEPS = scaled(small=150, full=1000)  # training steps
BATCH = scaled(small=128, full=256)  # training batch size
print(f"book size: {hclib.book.book_size()}, depth={DEPTH}, steps={STEPS}, batch={BATCH}")

# %% [markdown]
# ## Why products of mixing matrices can explode
#
# In the mHC paper's notation a hyper-connection layer maps the $n$ streams
# $x_l \in \mathbb{R}^{n\times d}$ to
#
# $$
# x_{l+1} = H^{\mathrm{res}}_l x_l + H^{\mathrm{post}\,\top}_l\,
# \mathcal{F}\big(H^{\mathrm{pre}}_l x_l\big) \qquad \text{(mHC Eq. 3)},
# $$
#
# where $H^{\mathrm{pre}}$ ($1\times n$) reads the branch input out of the streams,
# $H^{\mathrm{post}}$ ($1\times n$) writes the branch output back, and $H^{\mathrm{res}}$
# ($n\times n$) mixes the streams; in HC's own notation these are $A_m^\top$, $B$ and $A_r^\top$.
# Unroll it from layer $l$ to layer $L$ (mHC Eq. 4): the streams of layer $l$ reach layer $L$
# multiplied by the *composite* mapping
# $H^{\mathrm{res}}_{L-1} H^{\mathrm{res}}_{L-2} \cdots H^{\mathrm{res}}_l
# = \prod_{i=1}^{L-l} H^{\mathrm{res}}_{L-i}$, the latest layer's matrix on the left, and
# every branch output is multiplied by a tail of the same product. If that product grows,
# signals grow with depth in the forward pass; if its transpose grows, so do gradients in the
# backward pass.
#
# The mHC paper measures both with the **Amax gain magnitude** (mHC Section 3.1): for a matrix
# $M$, the forward gain is the largest absolute row sum, $\max_i |\sum_j M_{ij}|$, and the
# backward gain the largest absolute column sum, $\max_j |\sum_i M_{ij}|$. The forward gain is
# how much $M$ amplifies a state whose streams are all equal; the backward gain is the same for
# the gradient, which is multiplied by $M^\top$. Both are 1 for the identity.
# `hclib.amax_gain` computes them:

# %% tags=["nbval-check-output"]
M = torch.tensor([[1.1, 0.2], [-0.1, 0.9]])
g = amax_gain(M)
print(
    f"row sums {[round(v, 2) for v in M.sum(1).tolist()]}, "
    f"column sums {[round(v, 2) for v in M.sum(0).tolist()]}"
)
print(f"forward gain {g.forward:.2f}, backward gain {g.backward:.2f}")

# %% [markdown]
# An HC layer starts with $H^{\mathrm{res}} = I$ (HC Eq. 14) and training moves it a little.
# Model a trained layer as $I + \sigma G$ with $G$ a matrix of standard normal entries, and
# compose $L = 60$ such layers, as many as the 27B model of the mHC paper has sub-layers
# (30 blocks, attention and feed-forward each count). We draw 200 such stacks for each $\sigma$.


# %%
def composite_gains(res: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Amax gains of the composites res[..., l] @ ... @ res[..., 0] for every depth l.

    res: (draws, L, n, n). Returns (forward, backward), each (draws, L).
    """
    n = res.shape[-1]
    P = torch.eye(n, dtype=res.dtype).expand(res.shape[0], n, n)
    fw, bw = [], []
    for layer in range(res.shape[1]):
        P = res[:, layer] @ P  # the product up to this layer  (draws, n, n)
        gain = amax_gain(P)
        fw.append(gain.forward)
        bw.append(gain.backward)
    return torch.stack(fw, 1), torch.stack(bw, 1)


torch.manual_seed(0)
n, L, draws = 4, 60, 200
eye = torch.eye(n, dtype=torch.float64)
G = torch.randn(draws, L, n, n, dtype=torch.float64)  # reused in the last section
SIGMAS = (0.02, 0.05, 0.1)
hc_random = {s: composite_gains(eye + s * G) for s in SIGMAS}

# %% tags=["remove-output"]
fig, ax = plt.subplots()
depth = torch.arange(1, L + 1)
for s, alpha, ls in zip(SIGMAS, (0.5, 0.75, 1.0), (":", "--", "-"), strict=True):
    fw = hc_random[s][0]
    ax.plot(
        depth, fw.median(0).values, ls, color=color("hc"), alpha=alpha, label=f"$\\sigma$ = {s}"
    )
    lo, hi = fw.quantile(0.05, 0), fw.quantile(0.95, 0)
    ax.fill_between(depth, lo, hi, color=color("hc"), alpha=0.12 * alpha)
ax.set_yscale("log")
set_log_ticks(ax.yaxis, [0.8, 1, 1.5, 2, 3, 5, 10])
ax.set_xlabel("depth l (number of mixing matrices multiplied)")
ax.set_ylabel("forward Amax gain of the product")
ax.set_title(r"Products of HC-like mixing matrices $I + \sigma G$")
ax.legend(loc="upper left")
show_figure(fig, "fig-06-random-products")

# %% [markdown]
# ```{glue:figure} fig-06-random-products
# :name: fig-06-random-products
#
# Forward Amax gain of the product of $l$ random matrices $I + \sigma G$ (median over 200
# stacks, with the 5-95% band), on a log axis. A single layer is barely different from the
# identity, yet the gain of the product keeps drifting away from 1 as depth grows, faster for
# larger $\sigma$, and the spread between stacks widens.
# ```
#
# {numref}`fig-06-random-products` shows the result, and the next cell prints its end points.

# %% tags=["nbval-check-output"]
for s in SIGMAS:
    fw, bw = hc_random[s]
    single = amax_gain(eye + s * G[:, 0]).forward.median().item()
    print(
        f"sigma={s}: one layer {single:.2f}, after 60 layers median {fw[:, -1].median():.1f}, "
        f"95th percentile {fw[:, -1].quantile(0.95):.1f} (backward: {bw[:, -1].median():.1f})"
    )
print(f"a steady 14% excess per layer, 1.14^60 = {1.14**60:.0f}")

# %% [markdown]
# Random perturbations compound like a random walk in the logarithm. The median single layer's gain
# is 4% ($\sigma = 0.02$) to 21% ($\sigma = 0.1$) above 1; after 60 layers the median product
# amplifies by a factor of 1.3 to 2.8 and the unlucky stacks (the 95th percentile) by up to 9.5.
# Training can do worse than random, because its perturbations need not cancel: if every layer's row
# sums exceed 1 by the same 14%, the product's gain is $1.14^{60} \approx 2600$. That is the order
# of magnitude the mHC paper reports for HC in its 27B model (a composite gain peaking near 3000 in
# its Figure 3; this is the paper's number, not something we can reproduce on a CPU), where it came
# with a loss surge and a gradient-norm spike around 12k training steps.

# %% [markdown]
# ## Sinkhorn-Knopp, from scratch
#
# mHC's fix is to let $H^{\mathrm{res}}$ be learned freely but to *project* it, in every layer and
# for every token, onto the set of **doubly stochastic** matrices (mHC Eq. 6): non-negative
# entries, every row and every column summing to 1. Row sums of 1 make the forward gain 1,
# column sums of 1 make the backward gain 1, and, as shown two sections below, products keep both.
#
# How do we turn an arbitrary real matrix $\tilde H$ into a doubly stochastic one,
# differentiably? Two steps (mHC Eqs. 8-9).
#
# 1. **Positivity by exponentiation.** $M^{(0)} = \exp(\tilde H)$, entrywise. Every entry is now
#    positive and the map is smooth.
# 2. **Alternate normalisations.** Divide every column by its sum ($\mathcal{T}_c$), then every
#    row by its sum ($\mathcal{T}_r$), and repeat:
#    $M^{(t)} = \mathcal{T}_r\big(\mathcal{T}_c(M^{(t-1)})\big)$.
#    Each step fixes one kind of sum and disturbs the other a little less than before; Sinkhorn
#    and Knopp proved that for a positive matrix the iteration converges to a doubly stochastic
#    matrix of the form $D_1 \exp(\tilde H) D_2$ with positive diagonal $D_1$, $D_2$.
#
# mHC stops after $t_{\max} = 20$ iterations: $H^{\mathrm{res}} = M^{(20)}$. In code:


# %%
def sinkhorn(logits: torch.Tensor, iters: int = 20) -> torch.Tensor:
    """Sinkhorn-Knopp as mHC Eq. 9 writes it: exp, then (columns, then rows) x iters."""
    M = logits.exp()  # M^(0), entrywise positive  (..., n, n)
    for _ in range(iters):
        M = M / M.sum(dim=-2, keepdim=True)  # T_c: every column sums to 1
        M = M / M.sum(dim=-1, keepdim=True)  # T_r: every row sums to 1
    return M


# %% [markdown]
# `hclib.sinkhorn_knopp` runs the same iteration on $\log M$: dividing by a sum is subtracting its
# log-sum-exp. In exact arithmetic the two are identical; check it on a batch of random logits
# in float64.

# %% tags=["nbval-check-output"]
torch.manual_seed(1)
logits = 2.0 * torch.randn(1000, 4, 4, dtype=torch.float64)
torch.testing.assert_close(sinkhorn(logits), hclib.sinkhorn_knopp(logits), rtol=1e-12, atol=1e-14)
print("from-scratch Sinkhorn-Knopp equals hclib.sinkhorn_knopp:", True)
far = torch.tensor([[0.0, -760.0], [-5.0, -770.0]], dtype=torch.float64)  # column 2 underflows
print("logits ~760 apart: linear form finite:", bool(sinkhorn(far).isfinite().all()))
print("                   log form finite:   ", bool(hclib.sinkhorn_knopp(far).isfinite().all()))

# %% [markdown]
# The log form is what the library uses because of the last two lines: when logits are far
# apart, $\exp$ underflows to exact zeros, a whole column can vanish, and $\mathcal{T}_c$ divides
# $0$ by $0$. In the log domain nothing underflows until the very last $\exp$.
#
# What the iterations do to one matrix is easiest to see. Take random $4\times 4$ logits, and
# after each half-step write every row sum to the right of its row and every column sum under
# its column ({numref}`fig-06-sk-steps`).


# %%
def sinkhorn_steps(logits: torch.Tensor, iters: int) -> list[tuple[str, torch.Tensor]]:
    """The matrix after exp and after each half-step of `sinkhorn`, with a title for each."""
    M = logits.exp()
    steps = [("exp(logits)", M)]
    for t in range(1, iters + 1):
        M = M / M.sum(dim=-2, keepdim=True)  # T_c
        steps.append((f"t={t}, columns", M))
        M = M / M.sum(dim=-1, keepdim=True)  # T_r
        steps.append((f"t={t}, rows", M))
    return steps


torch.manual_seed(7)
logits_one = torch.randn(4, 4, dtype=torch.float64)
steps = sinkhorn_steps(logits_one, 20)
torch.testing.assert_close(steps[-1][1], hclib.sinkhorn_knopp(logits_one), rtol=0, atol=1e-12)

# %% tags=["remove-output"]
shown = [steps[i] for i in (0, 1, 2, 3, 4, 40)]  # exp; t=1 and t=2 half-steps; t=20 rows
fig, axes = plt.subplots(2, 3, figsize=(7.5, 5.0))
for ax, (title, M) in zip(axes.flat, shown, strict=True):
    draw_mixing_heatmap(M, ax, color("mhc"), title, vmax=float(M.max()))
fig.tight_layout()
show_figure(fig, "fig-06-sk-steps")

# %% [markdown]
# ```{glue:figure} fig-06-sk-steps
# :name: fig-06-sk-steps
#
# Sinkhorn-Knopp on one random $4\times 4$ logit matrix, read row by row: $\exp$ of the
# logits; after the first column normalisation $\mathcal{T}_c$ (columns sum to 1, rows do not);
# after the first row normalisation $\mathcal{T}_r$ (rows sum to 1, columns are now only close);
# the two half-steps of the second iteration; after mHC's 20 iterations. Sums written to the
# right of a row and under a column; vermilion marks a sum that differs from 1 in the third
# decimal.
# ```
#
# The first column normalisation does most of the work; each later iteration moves the column
# sums closer to 1 while the rows, normalised last, are exact.

# %% [markdown]
# ## How fast does it converge?
#
# Because $\mathcal{T}_r$ comes last, every row of $M^{(t)}$ sums to 1 after every iteration, up
# to rounding: the last thing the algorithm did was divide each row by its sum. The columns are
# the ones that carry the truncation error. We follow the largest column-sum error,
# $\max_j |\sum_i M^{(t)}_{ij} - 1|$, over the iterations for random $4\times 4$ logits of
# several scales (standard deviation of the entries), taking the median over 1000 matrices.


# %%
def sinkhorn_errors(logits: torch.Tensor, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Largest column-sum and row-sum errors after each iteration: two (iters, batch) tensors."""
    M = logits.exp()
    col_err, row_err = [], []
    for _ in range(iters):
        M = M / M.sum(dim=-2, keepdim=True)  # T_c
        M = M / M.sum(dim=-1, keepdim=True)  # T_r
        col_err.append((M.sum(dim=-2) - 1).abs().amax(dim=-1))
        row_err.append((M.sum(dim=-1) - 1).abs().amax(dim=-1))
    return torch.stack(col_err), torch.stack(row_err)


torch.manual_seed(2)
SCALES = (0.5, 1.0, 2.0, 4.0)
ITERS = 60
errors = {
    s: sinkhorn_errors(s * torch.randn(1000, 4, 4, dtype=torch.float64), ITERS) for s in SCALES
}

# %% tags=["remove-output"]
fig, ax = plt.subplots()
t = torch.arange(1, ITERS + 1)
for s, ls in zip(SCALES, (":", "-.", "--", "-"), strict=True):
    median = errors[s][0].median(1).values.clamp_min(1e-17)  # exact zeros: below the axis
    ax.plot(t, median, ls, color=color("mhc"), label=f"logit scale {s}")
ax.axvline(20, color=color("reference"), ls=":", lw=1, label="t_max = 20 (mHC)")
ax.set_yscale("log")
ax.set_xlabel("Sinkhorn-Knopp iteration t")
ax.set_ylabel("largest |column sum - 1|")
ax.set_title("Column sums converge; rows are exact after every iteration")
ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
show_figure(fig, "fig-06-sk-convergence")

# %% [markdown]
# ```{glue:figure} fig-06-sk-convergence
# :name: fig-06-sk-convergence
#
# Median over 1000 random $4 \times 4$ logit matrices of the largest column-sum error after $t$
# iterations, for entries of standard deviation 0.5 to 4, on a log axis. The error falls
# geometrically, and more slowly the larger the logits: near-zero entries make the matrix close
# to a decomposable one, where the normalisations barely talk to each other. The curves flatten
# at the float64 rounding floor. The row-sum error, not drawn, stays at that floor from the
# first iteration.
# ```


# %% tags=["nbval-check-output"]
def sci(v: float) -> str:
    return f"{v:.0e}" if v > 1e-10 else "<1e-10"


for s in SCALES:
    col, row = errors[s]
    print(
        f"scale {s}: column error at t=20: median {sci(col[19].median())}, "
        f"worst {sci(col[19].max())}; rows within 1e-12 at every t: {bool((row < 1e-12).all())}"
    )

# %% [markdown]
# At mHC's $t_{\max} = 20$ the typical (median) column error is below $10^{-6}$ for logits of
# scale up to 2 and a few thousandths at scale 4, while the worst of the 1000 matrices is off
# by a few per cent from scale 2 on ({numref}`fig-06-sk-convergence`). This is why the mHC
# paper finds the single-layer backward gain "slightly" off 1 while the forward gain is 1: the
# forward gain reads row sums, which are exact by construction; the backward gain reads column
# sums, which are not.

# %% [markdown]
# ## Doubly stochastic matrices are closed under products
#
# Let $P$ and $Q$ be doubly stochastic, and $\mathbf 1$ the all-ones vector. Then
# $(PQ)\mathbf 1 = P(Q\mathbf 1) = P\mathbf 1 = \mathbf 1$ and
# $\mathbf 1^\top PQ = \mathbf 1^\top Q = \mathbf 1^\top$, and $PQ$ is non-negative: the product is
# doubly stochastic again. So the composite mapping of the first section stays doubly stochastic
# at any depth, and both of its Amax gains are exactly 1. It also cannot stretch any vector: the
# spectral norm obeys $\|M\|_2^2 \le \|M\|_1 \|M\|_\infty$ (largest column sum times largest row
# sum) $= 1$, and $M\mathbf 1 = \mathbf 1$ shows the bound is attained, so $\|M\|_2 = 1$.
#
# We check this numerically with matrices projected to convergence (200 iterations), and then
# with mHC's 20 iterations, where only the rows are exact.

# %% tags=["nbval-check-output"]
torch.manual_seed(3)
logits = 3.0 * torch.randn(60, 4, 4, dtype=torch.float64)  # fairly large logits
for iters in (200, 20):
    ds = hclib.sinkhorn_knopp(logits, iters=iters)  # 60 layers' mixing matrices
    P = torch.linalg.multi_dot(list(ds.flip(0)))  # ds[59] @ ... @ ds[0]
    gain = amax_gain(P)
    print(
        f"{iters:3d} iterations: largest single backward gain {amax_gain(ds).backward.max():.4f}; "
        f"product of 60: forward gain {gain.forward:.4f}, backward gain {gain.backward:.4f}, "
        f"spectral norm {torch.linalg.matrix_norm(P, 2):.4f}"
    )
print(
    "spectral norm of every single matrix is 1:",
    bool(
        torch.allclose(
            torch.linalg.matrix_norm(hclib.sinkhorn_knopp(logits, 200), 2),
            torch.ones(60, dtype=torch.float64),
        )
    ),
)

# %% [markdown]
# With 200 iterations every printed digit is 1. With mHC's 20 and logits of this size, a single
# matrix's backward gain is off by up to about 2%, yet the forward gain of the product of 60
# matrices is still exactly 1 (products of row-stochastic matrices are row-stochastic), and the
# backward gain and spectral norm of the product stay within 1% of it. The column errors do not
# compound because of how a product acts on the all-ones row vector $\mathbf 1^\top$, whose
# entries are the column sums: each nearly doubly stochastic factor maps $\mathbf 1^\top$ to
# $\mathbf 1^\top + e^\top$ with a small error $e$, but the next factor, being row-stochastic
# with positive entries, maps any row vector with zero sum (which $e^\top$ is, up to rounding,
# because the row sums are exact) to a smaller one. Each factor adds a small error and shrinks the
# errors already there, so they stay of the size of one factor's error instead of piling up.

# %% [markdown]
# ## The mHC layer, from scratch
#
# mHC keeps HC's three mappings but changes how they are computed (mHC Eqs. 7-8). For one token
# with streams $x_l \in \mathbb{R}^{n\times d}$:
#
# $$
# \begin{aligned}
# \vec x_l' &= \operatorname{RMSNorm}\big(\operatorname{vec}(x_l)\big)
#   \in \mathbb{R}^{1\times nd},\\
# \tilde H^{\mathrm{pre}} &= \alpha^{\mathrm{pre}}\,(\vec x_l' \varphi^{\mathrm{pre}})
#   + b^{\mathrm{pre}},\qquad
# \tilde H^{\mathrm{post}} = \alpha^{\mathrm{post}}\,(\vec x_l' \varphi^{\mathrm{post}})
#   + b^{\mathrm{post}},\\
# \tilde H^{\mathrm{res}} &= \alpha^{\mathrm{res}}\,
#   \operatorname{mat}(\vec x_l' \varphi^{\mathrm{res}}) + b^{\mathrm{res}},\\
# H^{\mathrm{pre}} &= \sigma(\tilde H^{\mathrm{pre}}),\qquad
# H^{\mathrm{post}} = 2\sigma(\tilde H^{\mathrm{post}}),\qquad
# H^{\mathrm{res}} = \operatorname{SinkhornKnopp}(\tilde H^{\mathrm{res}}).
# \end{aligned}
# $$
#
# Three differences from dynamic HC (Chapter 3):
#
# - the weights read **all** streams at once, flattened into one $nd$-vector, instead of each
#   stream computing its own row;
# - there is no $\tanh$; instead the sigmoid keeps $H^{\mathrm{pre}}$ in $(0, 1)$ and
#   $H^{\mathrm{post}}$ in $(0, 2)$, non-negative, so that read-out and write-in cannot cancel
#   streams against each other;
# - $H^{\mathrm{res}}$ goes through Sinkhorn-Knopp, so it is doubly stochastic.
#
# `hclib.ManifoldHyperConnection` stores $[\varphi^{\mathrm{pre}}\,|\,\varphi^{\mathrm{post}}\,|
# \,\varphi^{\mathrm{res}}]$ as one $(nd) \times (n^2 + 2n)$ matrix `phi` and the three biases as
# one vector `bias`, the fused layout of the paper's kernels; $\operatorname{mat}$ reads $n^2$
# numbers row by row into an $n\times n$ matrix.


# %%
def mhc_forward(x, T, phi, bias, a_pre, a_post, a_res, eps=1e-6, iters=20):
    """One mHC layer (mHC Eqs. 3, 7-9). x: (..., n, d); T: (..., d) -> (..., d)."""
    n = x.shape[-2]
    v = x.flatten(-2)  # vec(x_l)  (..., n d)
    v = v * torch.rsqrt(v.pow(2).mean(dim=-1, keepdim=True) + eps)  # RMSNorm, no gain
    z = v @ phi  # (..., n^2 + 2n)
    H_pre = torch.sigmoid(a_pre * z[..., :n] + bias[:n])  # (..., n), in (0, 1)
    H_post = 2 * torch.sigmoid(a_post * z[..., n : 2 * n] + bias[n : 2 * n])  # in (0, 2)
    res_logits = a_res * z[..., 2 * n :] + bias[2 * n :]  # (..., n^2)
    H_res = sinkhorn(res_logits.unflatten(-1, (n, n)), iters)  # mat(.), then SK  (..., n, n)
    h0 = (H_pre.unsqueeze(-2) @ x).squeeze(-2)  # H_pre x  (..., d)
    return H_res @ x + H_post.unsqueeze(-1) * T(h0).unsqueeze(-2)  # Eq. 3  (..., n, d)


# %% [markdown]
# To compare with the library, give its module random values for every parameter (at
# initialisation $\varphi = 0$, which would leave most of the formula untested).

# %% tags=["nbval-check-output"]
torch.manual_seed(4)
n, d = 4, 16
T = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU()).double()
layer = hclib.ManifoldHyperConnection(d, T, n=n).double()
with torch.no_grad():
    for p in (layer.phi, layer.bias, layer.alpha_pre, layer.alpha_post, layer.alpha_res):
        p.copy_(torch.randn_like(p))
x = torch.randn(3, 5, n, d, dtype=torch.float64)  # (B, T, n, d)
params = (layer.phi, layer.bias, layer.alpha_pre, layer.alpha_post, layer.alpha_res)
torch.testing.assert_close(mhc_forward(x, T, *params), layer(x), rtol=1e-12, atol=1e-12)
print("from-scratch mHC layer equals hclib.ManifoldHyperConnection:", True)
maps = layer.mappings(x)
print("H_pre in (0, 1):", bool(((maps.pre > 0) & (maps.pre < 1)).all()))
print("H_post in (0, 2):", bool(((maps.post > 0) & (maps.post < 2)).all()))
print("H_res rows sum to 1:", bool(torch.allclose(maps.res.sum(-1), torch.ones(3, 5, n).double())))

# %% [markdown]
# ## Initialisation: our choice
#
# The mHC paper gives the initial gates $\alpha = 0.01$ but not the initial biases $b$ or
# projections $\varphi$. HC's recipe cannot be copied: $H^{\mathrm{res}} = I$ would need logits
# of $-\infty$ off the diagonal, and a one-hot $H^{\mathrm{pre}}$ would need infinite logits as
# well. `hclib` chooses (see the docstring of `ManifoldHyperConnection`):
#
# - $\varphi = 0$, as HC's dynamic projections: at initialisation the mappings are
#   $\sigma(b^{\mathrm{pre}})$, $2\sigma(b^{\mathrm{post}})$ and
#   $\operatorname{SK}(b^{\mathrm{res}})$;
# - $b^{\mathrm{post}}$ with $2\sigma(b^{\mathrm{post}}) = 1$: the write-in $B = \mathbf 1$ of HC;
# - $b^{\mathrm{res}}$ with a constant $c$ on the diagonal and 0 elsewhere: $\exp(b^{\mathrm{res}})$
#   then has equal row and column sums, so Sinkhorn-Knopp only rescales it, to a matrix with 0.95
#   on the diagonal and $0.05/(n-1)$ elsewhere: near the identity, and exactly doubly stochastic;
# - $b^{\mathrm{pre}}$ with $H^{\mathrm{pre}} = 0.9$ on stream $k \bmod n$ for layer $k$ and
#   $0.1/(n-1)$ on the others: the weights sum to 1 and are concentrated on one stream.
#
# Why this keeps the Pre-Norm equivalence: the network starts with $n$ copies of the embedding,
# $x = (h, \dots, h)$. A read-out whose weights sum to 1 gives $H^{\mathrm{pre}} x = h$; a mixing
# matrix whose rows sum to 1 maps equal streams to the same equal streams; and the write-in adds
# $1 \cdot \mathcal{F}(h)$ to each. So every stream carries $h + \mathcal{F}(h)$, the Pre-Norm
# state, after every layer, however far $H^{\mathrm{res}}$ is from the identity (and, as in HC,
# the final sum of the streams is $n$ times the Pre-Norm state, a factor the final norm removes).
# Let us check it in float64 (modules created in float64, so that the biases are not rounded to
# float32 first).

# %% tags=["nbval-check-output"]
torch.manual_seed(5)
n, d, L = 4, 16, 12
torch.set_default_dtype(torch.float64)
try:
    branches = [nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU()) for _ in range(L)]
    mhc_stack = [
        hclib.ManifoldHyperConnection(d, b, n=n, layer_id=k) for k, b in enumerate(branches)
    ]
    pre_stack = [hclib.Residual(d, b) for b in branches]
finally:
    torch.set_default_dtype(torch.float32)
h = torch.randn(4, 9, d, dtype=torch.float64)
x = hclib.expand_streams(h, n)
with torch.no_grad():
    for k in range(L):
        h, x = pre_stack[k](h), mhc_stack[k](x)
err = (x - h.unsqueeze(-2)).abs().max().item()
print("every stream equals the Pre-Norm state after 12 layers (to 1e-12):", err < 1e-12)
m0 = mhc_stack[1].mappings(x)
print("layer 1 at init: H_pre =", [round(v, 3) for v in m0.pre[0, 0].tolist()])
print("                 H_post =", [round(v, 3) for v in m0.post[0, 0].tolist()])
print("                 H_res row 0 =", [round(v, 4) for v in m0.res[0, 0, 0].tolist()])

# %% [markdown]
# Why not spread $H^{\mathrm{pre}}$ evenly, $1/n$ on every stream, which would also sum to 1?
# Because of the symmetry argument of {ref}`ex-05-symmetry`: with copies in every stream and a
# read-out, write-in and mixing that treat all streams alike, every stream receives the same
# gradient and the $n$ streams stay worth one; concentrating the read-out on stream
# $k \bmod n$, as HC's one-hot $e_{k \bmod n}$ does, breaks it. A few training steps of a
# four-layer stack show it: with the even read-out the streams remain identical, with ours they
# separate.


# %%
def stream_spread(pre_init: float, steps: int = 20) -> float:
    """Largest difference between streams after `steps` SGD steps of a 4-layer mHC stack."""
    torch.manual_seed(6)
    n, d = 4, 16
    layers = nn.ModuleList(
        hclib.ManifoldHyperConnection(
            d,
            nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU()),
            n=n,
            layer_id=k,
            pre_init=pre_init,
        )
        for k in range(4)
    )
    opt = torch.optim.SGD(layers.parameters(), lr=0.1)
    x0, target = torch.randn(64, d), torch.randn(64, d)
    for step in range(steps + 1):
        x = hclib.expand_streams(x0, n)
        for layer in layers:
            x = layer(x)
        if step == steps:
            return (x - x[..., :1, :]).abs().max().item()
        loss = (hclib.reduce_streams(x) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


# %% tags=["nbval-check-output"]
# float32: copies agree up to rounding (about 1e-6), hence the threshold
print("even read-out (1/n): streams still copies after 20 steps:", stream_spread(0.25) < 1e-4)
print("our read-out (0.9):  streams still copies after 20 steps:", stream_spread(0.9) < 1e-4)

# %% [markdown]
# ## Why mHC is built this way
#
# The equations above make three choices that the mHC paper states more than it argues: a
# write-in of $2\sigma(\cdot)$, mixing matrices whose columns (not only rows) sum to 1, and
# non-negative entries everywhere. This section derives what each one buys, and then what the
# constraint costs.
#
# ### The write-in: why $2\sigma$
#
# HC starts every write-in weight at $B = 1$ (HC Eq. 14), which is what makes its initial network
# a Pre-Norm network ({doc}`Chapter 2 <02_hyper_connections>`). mHC wants $H^{\mathrm{post}}$
# non-negative and bounded, so it passes a logit $z$ through a sigmoid. $\sigma(z)$ alone lies in
# $(0, 1)$ and can only reach 1 as $z \to \infty$, where its slope vanishes. $2\sigma(z)$ lies in
# $(0, 2)$, equals exactly 1 at $z = 0$, and $z = 0$ is where the sigmoid is steepest:
# $\frac{d}{dz} 2\sigma(z) = 2\sigma(z)\big(1 - \sigma(z)\big)$ peaks there at $1/2$. So the
# gate starts at HC's $B = 1$ with a zero bias, is as sensitive to training there as it will
# ever be, and can move both ways, damping a branch towards 0 or doubling it.

# %% tags=["nbval-check-output"]
z = torch.linspace(-6, 6, 1201, dtype=torch.float64, requires_grad=True)
(2 * torch.sigmoid(z)).sum().backward()
slope = z.grad
print(f"2 sigmoid(0) = {2 * torch.sigmoid(torch.tensor(0.0)).item():.1f}")
steepest = z[slope.argmax()].abs()
print(f"slope of 2 sigmoid: largest at |z| = {steepest:.2f}, value {slope.max():.3f}")
fresh = hclib.ManifoldHyperConnection(8, nn.Identity(), n=4)
print("hclib's post bias at init:", fresh.bias[4:8].tolist(), "-> H_post = 1")

# %% [markdown]
# ### Column sums of 1 conserve what the output reads
#
# Row sums of 1 keep equal streams equal: $H^{\mathrm{res}}\mathbf 1 = \mathbf 1$. Column sums of
# 1 do something else: $\mathbf 1^\top H^{\mathrm{res}} x = \mathbf 1^\top x$, the *sum* of the
# streams passes the mixing unchanged. And the sum of the streams is exactly what the network's
# output reads (`hclib.reduce_streams`, HC's final sum). Summing mHC Eq. 3 over the streams gives
#
# $$
# \mathbf 1^\top x_{l+1} = \mathbf 1^\top x_l
#   + \Big(\sum_i H^{\mathrm{post}}_{l,i}\Big)\,\mathcal{F}\big(H^{\mathrm{pre}}_l x_l\big),
# $$
#
# a Pre-Norm residual stream with a gate on each branch: whatever the mixing does, it cannot
# amplify, damp or cancel what has been written so far, only move it between streams. This is the
# "global mean of the features" that, in the paper's words, unconstrained HC fails to preserve.
# The unfolded matrix of Chapter 4 makes it concrete: with doubly stochastic mixing, layer $j$
# reaches the output with weight $\sum_i H^{\mathrm{post}}_{j,i}$ (the embedding, copied into $n$
# streams, with weight $n$), whatever the matrices in between. We check both statements, with
# converged projections and with a random stack of mHC layers.

# %% tags=["nbval-check-output"]
torch.manual_seed(8)
x_streams = torch.randn(5, 4, 16, dtype=torch.float64)  # (tokens, n, d)
ds = hclib.sinkhorn_knopp(2.0 * torch.randn(4, 4, dtype=torch.float64), iters=200)
hc_like = torch.eye(4, dtype=torch.float64) + 0.1 * torch.randn(4, 4, dtype=torch.float64)
for name, mix in (("doubly stochastic", ds), ("HC-like I + 0.1 G", hc_like)):
    change = (hclib.reduce_streams(mix @ x_streams) - hclib.reduce_streams(x_streams)).abs().max()
    print(f"{name:18s}: sum of the streams unchanged (to 1e-12): {bool(change < 1e-12)}")

torch.set_default_dtype(torch.float64)
try:
    stack = [hclib.ManifoldHyperConnection(16, nn.Identity(), n=4, layer_id=k) for k in range(6)]
finally:
    torch.set_default_dtype(torch.float32)
with torch.no_grad():
    for layer in stack:  # random parameters, as in the check of the layer above
        for p in (layer.phi, layer.bias, layer.alpha_pre, layer.alpha_post, layer.alpha_res):
            p.copy_(torch.randn_like(p))
    H_probe = hclib.expand_streams(torch.randn(32, 16, dtype=torch.float64), 4)
    C_mhc = hclib.connection_matrix(stack, H_probe)
    post_totals, H = [], H_probe
    for layer in stack:  # the token-averaged write-in total of each layer
        post_totals.append(layer.mappings(H).post.mean(0).sum())
        H = layer(H)
reach = C_mhc[-1, 1:-1]  # how much of layers 1..6 reaches the output
print(f"embedding -> output: {C_mhc[-1, 0]:.6f} (n = 4)")
gap = (reach - torch.stack(post_totals)).abs().max()
print(f"layer -> output minus its write-in total: largest {gap:.0e}")

# %% [markdown]
# The doubly stochastic mixing leaves the sum untouched to rounding; a mixing matrix that is only
# near the identity changes it. In the stack, every layer's weight in the output is its
# write-in total, up to the truncation error of 20 Sinkhorn-Knopp iterations.
#
# ### A doubly stochastic matrix is an average of permutations
#
# The doubly stochastic $n\times n$ matrices form a convex polytope, the Birkhoff polytope, whose
# corners are the $n!$ permutation matrices; the Birkhoff-von Neumann theorem says every doubly
# stochastic matrix is a convex combination of them, $M = \sum_t w_t P_t$ with $w_t > 0$,
# $\sum_t w_t = 1$. So $H^{\mathrm{res}} x$ is a weighted average of *reshufflings* of the
# streams: each $P_t$ routes whole streams to new places, and the weights say how often. The proof
# is an algorithm. A doubly stochastic matrix always has a permutation that touches only positive
# entries (Hall's marriage theorem); subtract that permutation, weighted by its smallest entry,
# and what is left is a multiple of a doubly stochastic matrix with at least one more zero.
# Repeat until nothing is left: at most $n^2 - n + 1$ steps, since the last one removes $n$
# entries (a decomposition with at most $(n-1)^2 + 1$ terms always exists, but this greedy loop
# does not promise to find one that short). Finding a permutation on the positive entries is
# an assignment problem, which `scipy.optimize.linear_sum_assignment` solves; we ask for the one
# whose entries have the largest product (smallest sum of $-\log$) and sort the terms by weight
# at the end.


# %%
def birkhoff(M: np.ndarray, tol: float = 1e-12) -> tuple[list[float], list[np.ndarray]]:
    """Birkhoff-von Neumann decomposition of a doubly stochastic M: weights and permutations.

    perms[t][i] is the column of the 1 in row i of the t-th permutation matrix.
    """
    R = M.copy()
    weights, perms = [], []
    while R.max() > tol:
        cost = np.where(R > tol, -np.log(np.maximum(R, tol)), 1e9)  # forbid zero entries
        rows, cols = linear_sum_assignment(cost)
        if cost[rows, cols].max() >= 1e9:
            raise ValueError("no permutation on the positive entries: M is not doubly stochastic")
        w = R[rows, cols].min()
        weights.append(w)
        perms.append(cols)
        R[rows, cols] -= w
    order = np.argsort(weights)[::-1]  # largest weight first
    return [float(weights[i]) for i in order], [perms[i] for i in order]


torch.manual_seed(9)
D = hclib.sinkhorn_knopp(2.0 * torch.randn(4, 4, dtype=torch.float64), iters=500).numpy()
weights, perms = birkhoff(D)

# %% tags=["nbval-check-output"]
rebuilt = sum(w * np.eye(4)[p] for w, p in zip(weights, perms, strict=True))
print(f"{len(weights)} permutations (the loop's bound: n^2 - n + 1 = 13)")
print(f"weights sum to {sum(weights):.6f}, all positive: {min(weights) > 0}")
print(f"largest weights: {[round(w, 3) for w in weights[:3]]}")
print("sum_t w_t P_t reproduces M to 1e-10:", bool(np.abs(rebuilt - D).max() < 1e-10))

# %% tags=["remove-output"]
fig = draw_permutation_sum(D, weights, perms, color("mhc"), max_terms=4)
show_figure(fig, "fig-06-birkhoff")

# %% [markdown]
# ```{glue:figure} fig-06-birkhoff
# :name: fig-06-birkhoff
#
# A doubly stochastic $4\times 4$ matrix $M$ (left) written as a weighted sum of permutation
# matrices, computed with `linear_sum_assignment`; the largest four terms are drawn and the rest
# summarised. Each permutation routes every stream to exactly one stream; $M$ routes them
# at random with these probabilities.
# ```
#
# ### What the constraint costs
#
# **Averaging.** A permutation keeps the streams as distinct as they were; any genuine mixture
# makes them more alike. A doubly stochastic matrix with positive entries maps the part of the
# streams that deviates from their average, $x - \tfrac{1}{n}\mathbf 1\mathbf 1^\top x$, to a
# smaller one (by at most its second-largest singular value), and a long product of such matrices
# tends to $\tfrac{1}{n}\mathbf 1 \mathbf 1^\top$: every stream becomes the average. The paper
# notes that repeated application increases the mixing across streams. Our initial mixing
# matrix, $0.95$ on the diagonal, shrinks the deviation by $0.95 - 0.05/3$ per layer, so a
# difference between streams written at the first layer is mostly averaged away sixty layers
# later unless training moves the matrices towards permutations. HC's identity initialisation
# keeps it intact.

# %% tags=["nbval-check-output"]
b_res = hclib.ManifoldHyperConnection(8, nn.Identity(), n=4).bias[8:].detach().double().view(4, 4)
mhc_init = hclib.sinkhorn_knopp(b_res)  # mHC's initial H_res
shrink = torch.linalg.svdvals(mhc_init)[1].item()
P60 = torch.linalg.matrix_power(mhc_init, 60)
print(f"initial H_res: second singular value {shrink:.4f} (0.95 - 0.05/3 = {0.95 - 0.05 / 3:.4f})")
print(f"60 initial layers: deviation from the average shrinks to {shrink**60:.3f} of its size")
print(f"  largest |entry - 1/4| of the product: {(P60 - 0.25).abs().max():.3f}")

# %% [markdown]
# **No negative weights.** The sigmoids and the exponential inside Sinkhorn-Knopp make every
# entry of $H^{\mathrm{pre}}$, $H^{\mathrm{post}}$ and $H^{\mathrm{res}}$ positive, which is the
# point (the paper: it "prevents signal cancellation"). It also rules out what the HC paper finds
# trained HC doing (HC Section 4.5, Eqs. 28-29;
# see {doc}`Chapter 4 <04_what_hyper_connections_express>`): storing a long-range connection as a
# pair of streams with opposite signs, which cancel in the sum the output reads, and removing the
# embedding from the output. With mHC the embedding reaches the output with weight exactly $n$
# (checked above) for as long as the network trains.
#
# **Where the gain comes from.** The mHC paper ablates HC itself, switching its three mappings on
# one at a time and replacing the disabled ones by fixed values ($H^{\mathrm{pre}} = 1/n$,
# $H^{\mathrm{post}} = 1$, $H^{\mathrm{res}} = I$). Its Table 1, in training loss relative to the
# baseline (**the paper's numbers**; the model size is not stated):
#
# | mappings learned | $H^{\mathrm{res}}$ | $H^{\mathrm{res}}$, $H^{\mathrm{pre}}$ | all three |
# |---|---|---|---|
# | loss relative to the baseline | $-0.022$ | $-0.025$ | $-0.027$ |
#
# Most of HC's gain comes from the stream mixing, the very mapping mHC constrains. The constraint
# is therefore a bet that a mixing matrix restricted to averages of permutations keeps that gain;
# the paper's 27B results at the top of the chapter are its evidence, and the costs above are
# what it gives up.

# %% [markdown]
# ## mHC against HC on the gain measure
#
# **(a) Random perturbations.** Perturb both kinds of layer with the same Gaussian matrices $G$
# of the first section: HC's mixing matrix becomes $I + \sigma G$ with $\sigma = 0.1$, mHC's becomes
# $\operatorname{SK}(b^{\mathrm{res}} + G)$, a perturbation of its logits by $G$ itself. To
# compare sizes we measure how far each perturbed matrix moves from its initial value (mean
# absolute change of an entry).

# %%
shift_hc = (0.1 * G).abs().mean().item()


def shift_mhc(scale: float) -> float:
    """Mean absolute entry change of SK(b_res + scale G) relative to SK(b_res)."""
    return (hclib.sinkhorn_knopp(b_res + scale * G) - mhc_init).abs().mean().item()


lo, hi = 0.0, 20.0  # bisect for the logit scale that moves the entries as much as HC's 0.1 G
for _ in range(30):
    mid = (lo + hi) / 2
    lo, hi = (mid, hi) if shift_mhc(mid) < shift_hc else (lo, mid)
scale = (lo + hi) / 2
mhc_random = composite_gains(hclib.sinkhorn_knopp(b_res + scale * G))

# %% tags=["nbval-check-output"]
print(f"mean |entry change| of one mixing matrix: HC {shift_hc:.3f}, mHC {shift_mhc(scale):.3f}")
print(f"(mHC logits perturbed by {scale:.1f} G)")
fw_hc, bw_hc = hc_random[0.1]
fw_m, bw_m = mhc_random
print(
    f"after 60 layers, median forward gain: HC {fw_hc[:, -1].median():.2f}, "
    f"mHC {fw_m[:, -1].median():.6f}"
)
print(
    f"after 60 layers, largest backward gain: HC {bw_hc[:, -1].max():.1f}, "
    f"mHC {bw_m[:, -1].max():.4f}"
)

# %% tags=["remove-output"]
fig, ax = plt.subplots()
for label, (fw, bw), key in (("HC", hc_random[0.1], "hc"), ("mHC", mhc_random, "mhc")):
    for gain, ls, which in ((fw, "-", "forward"), (bw, "--", "backward")):
        ax.plot(depth, gain.median(0).values, ls, color=color(key), label=f"{label} {which}")
    ax.fill_between(depth, bw.quantile(0.05, 0), bw.quantile(0.95, 0), color=color(key), alpha=0.15)
ax.set_yscale("log")
set_log_ticks(ax.yaxis, [0.8, 1, 1.5, 2, 3, 5, 10])
ax.set_xlabel("depth l (number of mixing matrices multiplied)")
ax.set_ylabel("Amax gain of the product")
ax.set_title("Same-size random perturbations: HC against mHC")
ax.legend(loc="upper left")
show_figure(fig, "fig-06-random-hc-mhc")

# %% [markdown]
# ```{glue:figure} fig-06-random-hc-mhc
# :name: fig-06-random-hc-mhc
#
# Composite Amax gains over depth for random perturbations that move one mixing matrix's entries
# by the same amount on average: HC's $I + 0.1\,G$ (blue) and mHC's
# $\operatorname{SK}(b^{\mathrm{res}} + 2G)$ (purple). Lines are medians over 200 stacks (solid
# forward, dashed backward), shades the 5-95% band of the backward gain. HC's products drift
# upwards with depth; mHC's forward gain is a flat line at 1 and its backward gain stays within a
# few per cent of it.
# ```

# %% [markdown]
# mHC's mixing matrix sits near the saturated corner of its sigmoid-like parametrisation, so its
# logits must move by about $2G$, twenty times HC's $0.1\,G$, before its entries move as much. With
# the two matched in that way, HC's products drift as in {numref}`fig-06-random-products`
# ({numref}`fig-06-random-hc-mhc`), while mHC's composite forward
# gain is 1 to every printed digit and its backward gain stays within a few per cent of 1, the
# truncation error of 20 Sinkhorn-Knopp iterations.
#
# **(b) Trained models.** Now train two `DeepMLP`s on the toy task of the earlier chapters, one
# joined by dynamic HC, one by mHC, both with $n = 4$ streams and the same data, seed and optimiser.
# After training we pass 512 validation inputs through each, average every layer's
# $H^{\mathrm{res}}$ over the inputs (as the mHC paper averages over the tokens of a sequence) and
# compute the Amax gains of each layer's matrix and of the composite products: forward from the
# first layer up, $H^{\mathrm{res}}_l \cdots H^{\mathrm{res}}_1$, and backward from the last layer
# down, $H^{\mathrm{res}}_L \cdots H^{\mathrm{res}}_l$. This is our reading of the two curves of
# the paper's Figure 3, whose legend the text versions of the paper render only partly; the
# measure itself, Amax gains of token-averaged mappings, is the one its Section 3.1 defines.


# %%
def res_per_layer(model: DeepMLP, x: torch.Tensor) -> torch.Tensor:
    """Each layer's H_res averaged over the inputs x: (depth, n, n)."""
    out = []
    with torch.no_grad():
        H = model.state(x)  # the replicated embedding  (N, n, d)
        for layer in model.layers:
            out.append(layer.mappings(H).res.mean(dim=0))
            H = layer(H)
    return torch.stack(out)


def gains_over_depth(res: torch.Tensor) -> dict[str, torch.Tensor]:
    """Single-layer and composite Amax gains of a (depth, n, n) stack of mixing matrices."""
    single = amax_gain(res)
    forward, _ = composite_gains(res.unsqueeze(0))  # H_l ... H_1, bottom up
    # top-down products Q_l = H_L ... H_l grow on the right; their transposes
    # Q_l^T = H_l^T Q_{l+1}^T grow on the left, and the row sums of Q_l^T are Q_l's column sums
    backward, _ = composite_gains(res.flip(0).transpose(-1, -2).unsqueeze(0))
    return {
        "single forward": single.forward,
        "single backward": single.backward,
        "composite forward": forward[0],
        "composite backward": backward[0].flip(0),  # index l: the product H_L ... H_l
    }


# %%
data = make_toy_data()
x_probe = data.x_val[:512]
res_trained, gains, acc = {}, {}, {}
for kind in ("hc", "mhc"):
    torch.manual_seed(0)
    model = DeepMLP(data.in_features, data.classes, depth=DEPTH, connection=kind, n=4)
    history = train_toy(model, data, steps=STEPS, batch_size=BATCH, progress=False)
    acc[kind] = history["val_acc"][-1]
    res_trained[kind] = res_per_layer(model, x_probe).double()
    gains[kind] = gains_over_depth(res_trained[kind])

# %% tags=["remove-output"]
fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
layers = torch.arange(1, DEPTH + 1)
for ax, which in zip(axes, ("single", "composite"), strict=True):
    for kind, label in (("hc", "HC"), ("mhc", "mHC")):
        g = gains[kind]
        ax.plot(layers, g[f"{which} forward"], "-", color=color(kind), label=f"{label} forward")
        ax.plot(layers, g[f"{which} backward"], "--", color=color(kind), label=f"{label} backward")
    ax.set_yscale("log")
    set_log_ticks(ax.yaxis, [0.8, 0.9, 1.0, 1.25, 1.5, 2, 3, 5, 10, 20, 50])
    ax.set_xlabel("layer l")
    ax.set_title(f"{which}-layer mapping" if which == "single" else "composite mapping")
axes[0].set_ylabel("Amax gain (token-averaged H_res)")
axes[0].legend(loc="upper right")
fig.suptitle(f"Trained toy networks, depth {DEPTH}, {STEPS} steps")
plt.tight_layout()
show_figure(fig, "fig-06-trained-gains")

# %% [markdown]
# ```{glue:figure} fig-06-trained-gains
# :name: fig-06-trained-gains
#
# Amax gains of the token-averaged mixing matrices of the trained networks, on a log axis.
# Left: each layer's own matrix. Right: the composite products, forward from the first layer up
# to layer $l$ and backward from the last layer down to layer $l$. HC's single layers drift above
# and below 1 after training and their products accumulate the drift; mHC's forward gains sit
# exactly on 1 and its backward gains within a fraction of a per cent of it (the column sums
# carry Sinkhorn-Knopp's truncation error).
# ```

# %% tags=["nbval-check-output"]
for kind, label in (("hc", "HC "), ("mhc", "mHC")):
    g = gains[kind]
    single = torch.cat([g["single forward"], g["single backward"]])
    print(f"{label}: single-layer gains between {single.min():.3f} and {single.max():.3f}")
    peak = max(g["composite forward"].max(), g["composite backward"].max()).item()
    low = min(g["composite forward"].min(), g["composite backward"].min()).item()
    print(
        f"{label}: composite gains between {low:.3f} and {peak:.3f}; "
        f"validation accuracy {acc[kind]:.2f}"
    )

# %% [markdown]
# The gains summarise each matrix by two numbers. {numref}`fig-06-stream-flow` draws the
# matrices themselves for the first layers of both trained networks: how much of each stream
# flows into each stream of the next layer.

# %% tags=["remove-output"]
FLOW_LAYERS = 8
fig, axes = plt.subplots(2, 1, figsize=(7.0, 5.0), sharex=True)
for ax, kind, label in zip(axes, ("hc", "mhc"), ("HC", "mHC"), strict=True):
    draw_stream_flow(res_trained[kind][:FLOW_LAYERS], ax, color(kind), f"{label}, trained")
fig.tight_layout()
show_figure(fig, "fig-06-stream-flow")

# %% [markdown]
# ```{glue:figure} fig-06-stream-flow
# :name: fig-06-stream-flow
#
# The token-averaged stream mixing $H^{\mathrm{res}}$ of the first eight layers of the trained
# toy networks, HC (top) and mHC (bottom). A band from stream $i$ at one layer boundary to stream
# $j$ at the next has a width proportional to $\sqrt{|H^{\mathrm{res}}_{ji}|}$, so that entries
# of a few hundredths stay visible beside diagonal entries near 1; dashed vermilion bands
# are negative entries, which only HC has. Both stay close to their initial mixing; HC's small
# off-diagonal entries take both signs, while mHC's are all positive and leak a little of every
# stream into every other, the averaging that doubly stochastic mixing implies.
# ```

# %%
for kind, label in (("hc", "HC "), ("mhc", "mHC")):
    res = res_trained[kind]
    off = res[:, ~torch.eye(4, dtype=torch.bool)]  # off-diagonal entries  (depth, 12)
    print(
        f"{label}: negative entries {int((res < 0).sum())} of {res.numel()}; "
        f"smallest entry {res.min():.4f}; mean off-diagonal entry {off.mean():.4f}"
    )

# %% tags=["nbval-check-output"]
# trained values vary a little between machines: the checked lines state the signs only
print("HC: some token-averaged mixing entries are negative:", bool((res_trained["hc"] < 0).any()))
print("mHC: every entry positive:", bool((res_trained["mhc"] > 0).all()))

# %% [markdown]
# **What reproduces at this scale, and what does not.** The mechanism does: after a short training
# run on a small toy network, HC's mixing matrices already move away from gain 1, some of
# them by a quarter, and the composite products carry that drift through the network; mHC's
# stay at 1 by construction. The magnitude does not: HC's composite gains here stay within a
# small factor of 1, three orders of magnitude below the paper's 27B model, and nothing in our
# toy training diverges. Explosions need depth, long training and the feedback between growing
# activations and growing updates that a large language model provides. The first section's
# arithmetic shows how a consistent excess of a few per cent per layer would get there. Both
# networks learn the toy task equally well, so on this evidence the constraint costs nothing in
# accuracy; whether it pays at scale is the paper's claim, not ours.

# %% [markdown]
# ## Summary
#
# - A hyper-connection's stream mixing $H^{\mathrm{res}}$ enters a deep network as a product over
#   layers (mHC Eq. 4). Its Amax gains (largest absolute row and column sums) measure how much
#   that product can amplify signals and gradients; random near-identity matrices already
#   compound with depth, and a steady 14% excess per layer reaches about 2600, the order of the
#   ~3000 that the mHC paper reports for HC at 27B.
# - Sinkhorn-Knopp (mHC Eqs. 8-9) makes a doubly stochastic matrix from any logits: exponentiate,
#   then alternately normalise columns and rows. Our version equals `hclib.sinkhorn_knopp`.
#   Because rows are normalised last they are exact after every iteration; the column error
#   shrinks geometrically, more slowly for large logits.
# - Products of doubly stochastic matrices are doubly stochastic, with both gains and the
#   spectral norm exactly 1, so depth cannot amplify the residual path.
# - The design follows from what the output reads. $2\sigma$ gives HC's write-in of 1 at a zero
#   logit, where the sigmoid is steepest; column sums of 1 conserve the sum of the streams, so
#   every layer reaches the output with its write-in total and the embedding with weight $n$;
#   a doubly stochastic matrix is a weighted average of permutations (Birkhoff-von Neumann,
#   computed here with `linear_sum_assignment`).
# - The constraint costs something: mixtures pull the streams towards their average (our
#   initial matrix shrinks their differences by a factor $0.933$ per layer), and non-negative
#   weights cannot store opposite-sign stream pairs or remove the embedding from the output,
#   both of which trained HC can do. The paper's ablation puts most of HC's gain in
#   $H^{\mathrm{res}}$, the mapping mHC constrains.
# - The mHC layer (mHC Eqs. 7-8) reads all streams flattened, uses sigmoids instead of $\tanh$
#   and projects $H^{\mathrm{res}}$ with Sinkhorn-Knopp; our version equals
#   `hclib.ManifoldHyperConnection`. Our initialisation (read-out summing to 1 and concentrated on
#   stream $k \bmod n$, write-in 1, near-identity doubly stochastic mixing) reproduces Pre-Norm
#   exactly while letting the streams separate.
# - On random perturbations and on trained toy networks, mHC's composite gains stay at 1 where
#   HC's drift; the size of HC's drift at small scale is modest, far from the paper's 3000.

# %% [markdown]
# ## Exercises
#
# ```{exercise} Spectral norm of a doubly stochastic matrix
# :label: ex-06-spectral
# Show that $\|M\|_2 \le \sqrt{\|M\|_1 \|M\|_\infty}$ for any matrix, where $\|M\|_1$ is the largest
# absolute column sum and $\|M\|_\infty$ the largest absolute row sum, and conclude that a doubly
# stochastic matrix has spectral norm exactly 1. Does the same hold for a matrix that is only
# row-stochastic?
# ```
#
# ```{solution} ex-06-spectral
# :class: dropdown
# $\|M\|_2^2$ is the largest eigenvalue of $M^\top M$, which is at most any induced norm of
# $M^\top M$, in particular $\|M^\top M\|_\infty \le \|M^\top\|_\infty \|M\|_\infty =
# \|M\|_1 \|M\|_\infty$. For a doubly stochastic matrix both factors are 1, so $\|M\|_2 \le 1$, and
# $M\mathbf 1 = \mathbf 1$ gives a vector that is not shrunk, so $\|M\|_2 = 1$. A row-stochastic
# matrix can have larger column sums: $\begin{pmatrix} 1 & 0 \\ 1 & 0 \end{pmatrix}$ has rows
# summing to 1 but spectral norm $\sqrt 2$; its products can grow gradients while keeping the
# forward gain 1.
# ```
#
# ```{exercise} Rows first
# :label: ex-06-rows-first
# Suppose Sinkhorn-Knopp normalised rows first and columns last,
# $M^{(t)} = \mathcal{T}_c(\mathcal{T}_r(M^{(t-1)}))$. Which Amax gain of a single projected
# matrix, and of a product of 60 of them, would be exact after 20 iterations? Modify `sinkhorn`
# and check with `amax_gain`.
# ```
#
# ```{solution} ex-06-rows-first
# :class: dropdown
# Now the columns are normalised last, so every column sums to 1 and the **backward** gain is
# exactly 1, for one matrix and, since $\mathbf 1^\top P Q = \mathbf 1^\top Q = \mathbf 1^\top$, for
# any product; the forward gain carries the truncation error instead. mHC's order protects the
# forward signal exactly and the gradients approximately; with 20 iterations the difference
# either way is the column error measured in {numref}`fig-06-sk-convergence`.
# ```
#
# ```{exercise} mHC with one stream
# :label: ex-06-one-stream
# What does an mHC layer compute when $n = 1$? What is $H^{\mathrm{res}}$, and what remains of
# the read-out and write-in? Check your answer with `hclib.ManifoldHyperConnection(d, T, n=1)`.
# ```
#
# ```{solution} ex-06-one-stream
# :class: dropdown
# Sinkhorn-Knopp of a $1\times 1$ matrix is $e^{z}/e^{z} = 1$, whatever the logit, so the
# residual path is the identity. The layer computes
# $x + H^{\mathrm{post}}\,\mathcal{F}(H^{\mathrm{pre}} x)$ with a per-token gate
# $H^{\mathrm{post}} \in (0, 2)$ on the branch output and a scale $H^{\mathrm{pre}} \in (0, 1)$ on
# its input; a branch that begins with a norm ignores the latter (up to the norm's epsilon). So
# with one stream mHC is a Pre-Norm residual with a learned, input-dependent gate on the
# branch; `layer.mappings(x).res` is a tensor of ones.
# ```
#
# ```{exercise} Counting mHC parameters
# :label: ex-06-params
# Count the parameters of one mHC module with $n = 4$ streams and width $C = 2560$ (the 27B
# model), and compare with one dynamic HC module of the same width, whose count is
# $d(n+2) + n(n+2) + 2$ without norm parameters (HC Eqs. 23-25). Where does the difference come
# from?
# ```
#
# ```{solution} ex-06-params
# :class: dropdown
# $\varphi$ maps the flattened $nC = 10\,240$ features to $n^2 + 2n = 24$ logits: $245\,760$
# weights; plus 24 biases and 3 gates, $245\,787$ in all
# (`sum(p.numel() for p in hclib.ManifoldHyperConnection(2560, nn.Identity(), n=4).parameters())`).
# Dynamic HC has $2560 \cdot 6 + 24 + 2 = 15\,386$. The factor of about 16 comes from reading all
# streams at once: every one of mHC's $n^2 + 2n$ weights looks at all $nC$ numbers, whereas HC's
# projections read one stream of $C$ features and are shared across streams. Both are still tiny
# next to the branch they wrap.
# ```

# %% tags=["remove-cell", "nbval-check-output"]
# The counts quoted in the solution of ex-06-params (hidden in the book).
count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
mhc_count = count(hclib.ManifoldHyperConnection(2560, nn.Identity(), n=4))
hc_count = count(hclib.HyperConnection(2560, nn.Identity(), n=4))
print(f"mHC module: {mhc_count}, dynamic HC module: {hc_count}, ratio {mhc_count / hc_count:.1f}")
