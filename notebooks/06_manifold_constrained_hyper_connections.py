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
# derives the Sinkhorn-Knopp projection, rebuilds the mHC layer from its equations and compares
# it with HC on the same gain measure.

# %%
import subprocess
import sys

if "google.colab" in sys.modules:
    hclib_url = "hclib[notebooks] @ git+https://github.com/hclib-book/hclib"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", hclib_url], check=True)

# %%
# ruff: noqa: E402  (the imports follow the Colab install cell)
import warnings

import matplotlib.pyplot as plt
import torch
from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter
from torch import nn

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm outside Jupyter widgets

import hclib
from hclib import amax_gain
from hclib.book import scaled
from hclib.models.mlp import DeepMLP
from hclib.plotting import color, use_book_style
from hclib.toy import make_toy_data, train_toy

use_book_style()
# The models here are tiny: one thread avoids the thread start-up cost that dominates small
# operations on a CPU (and is much worse when other programs share the cores).
torch.set_num_threads(1)

# %% [markdown]
# The last section trains two small networks, and mHC is slow on a CPU (twenty Sinkhorn-Knopp
# iterations per layer, each a handful of tiny operations, in the forward and the backward pass).
# The default sizes keep the chapter near a minute on two CPU cores; set
# `HCLIB_BOOK_SIZE=full` before starting Jupyter for the deeper, longer run.

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
# multiplied by the *composite* mapping $\prod_{i=l}^{L-1} H^{\mathrm{res}}_i$, and every branch
# output is multiplied by a tail of the same product. If that product grows, signals grow with
# depth in the forward pass; if its transpose grows, so do gradients in the backward pass.
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

# %%
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
ax.yaxis.set_major_locator(FixedLocator([0.8, 1, 1.5, 2, 3, 5, 10]))
ax.yaxis.set_major_formatter(ScalarFormatter())
ax.yaxis.set_minor_locator(NullLocator())
ax.set_xlabel("depth l (number of mixing matrices multiplied)")
ax.set_ylabel("forward Amax gain of the product")
ax.set_title(r"Products of HC-like mixing matrices $I + \sigma G$")
ax.legend(loc="upper left")
plt.show()

# %% [markdown]
# **Figure 6.1.** Forward Amax gain of the product of $l$ random matrices $I + \sigma G$
# (median over 200 stacks, with the 5-95% band), on a log axis. A single layer is barely
# different from the identity, yet the gain of the product keeps drifting away from 1 as depth
# grows, faster for larger $\sigma$, and the spread between stacks widens.

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

# %%
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
plt.show()

# %% [markdown]
# **Figure 6.2.** Median over 1000 random $4 \times 4$ logit matrices of the largest column-sum
# error after $t$ iterations, for entries of standard deviation 0.5 to 4, on a log axis. The
# error falls geometrically, and more slowly the larger the logits: near-zero entries make the
# matrix close to a decomposable one, where the normalisations barely talk to each other. The
# curves flatten at the float64 rounding floor. The row-sum error, not drawn, stays at that floor
# from the first iteration.


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
# At mHC's $t_{\max} = 20$ the columns are within about a thousandth of 1 for moderate logits
# but can be off by much more for large ones. This is why the mHC paper finds the single-layer
# backward gain "slightly" off 1 while the forward gain is 1: the forward gain reads row sums,
# which are exact by construction; the backward gain reads column sums, which are not.

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
# backward gain and spectral norm of the product stay within 1% of it: the column errors do not
# compound, because a long product of positive mixing matrices approaches a matrix with equal
# rows, whose column sums are pinned by the exact row sums.

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
# Why not spread $H^{\mathrm{pre}}$ evenly, $1/n$ on every stream, which would also sum to 1? At
# initialisation all streams are copies, the mixing matrix and the write-in treat all streams
# alike, and with an even read-out nothing in the network can tell the streams apart: every
# stream receives the same gradient, stays a copy of the others through training, and the $n$
# streams are worth one. Concentrating the read-out on stream $k \bmod n$, as HC's one-hot
# $e_{k \bmod n}$ does, breaks that symmetry. A few training steps of a four-layer stack show
# it: with the even read-out the streams remain identical, with ours they separate.


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
# ## mHC against HC on the gain measure
#
# **(a) Random perturbations.** Perturb both kinds of layer with the same Gaussian matrices $G$
# of the first section: HC's mixing matrix becomes $I + \sigma G$ with $\sigma = 0.1$, mHC's becomes
# $\operatorname{SK}(b^{\mathrm{res}} + G)$, a perturbation of its logits by $G$ itself. To
# compare sizes we measure how far each perturbed matrix moves from its initial value (mean
# absolute change of an entry).

# %%
b_res = hclib.ManifoldHyperConnection(8, nn.Identity(), n=4).bias[8:].detach().double().view(4, 4)
mhc_init = hclib.sinkhorn_knopp(b_res)
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

# %%
fig, ax = plt.subplots()
for label, (fw, bw), key in (("HC", hc_random[0.1], "hc"), ("mHC", mhc_random, "mhc")):
    for gain, ls, which in ((fw, "-", "forward"), (bw, "--", "backward")):
        ax.plot(depth, gain.median(0).values, ls, color=color(key), label=f"{label} {which}")
    ax.fill_between(depth, bw.quantile(0.05, 0), bw.quantile(0.95, 0), color=color(key), alpha=0.15)
ax.set_yscale("log")
ax.yaxis.set_major_locator(FixedLocator([0.8, 1, 1.5, 2, 3, 5, 10]))
ax.yaxis.set_major_formatter(ScalarFormatter())
ax.yaxis.set_minor_locator(NullLocator())
ax.set_xlabel("depth l (number of mixing matrices multiplied)")
ax.set_ylabel("Amax gain of the product")
ax.set_title("Same-size random perturbations: HC against mHC")
ax.legend(loc="upper left")
plt.show()

# %% [markdown]
# **Figure 6.3.** Composite Amax gains over depth for random perturbations that move one mixing
# matrix's entries by the same amount on average: HC's $I + 0.1\,G$ (blue) and mHC's
# $\operatorname{SK}(b^{\mathrm{res}} + 2G)$ (purple). Lines are medians over 200 stacks (solid
# forward, dashed backward), shades the 5-95% band of the backward gain. HC's products drift
# upwards with depth; mHC's forward gain is a flat line at 1 and its backward gain stays within a
# few per cent of it.

# %% [markdown]
# mHC's mixing matrix sits near the saturated corner of its sigmoid-like parametrisation, so its
# logits must move by about $2G$, twenty times HC's $0.1\,G$, before its entries move as much. With
# the two matched in that way, HC's products drift as in Figure 6.1, while mHC's composite forward
# gain is 1 to every printed digit and its backward gain stays within a few per cent of 1, the
# truncation error of 20 Sinkhorn-Knopp iterations.
#
# **(b) Trained models.** Now train two `DeepMLP`s on the toy task of the earlier chapters, one
# joined by dynamic HC, one by mHC, both with $n = 4$ streams and the same data, seed and optimiser.
# After training we pass 512 validation inputs through each, average every layer's
# $H^{\mathrm{res}}$ over the inputs (as the mHC paper averages over the tokens of a sequence) and
# compute the Amax gains of each layer's matrix and of the composite products: forward from the
# first layer up, $H^{\mathrm{res}}_l \cdots H^{\mathrm{res}}_1$, and backward from the last layer
# down, $H^{\mathrm{res}}_L \cdots H^{\mathrm{res}}_l$, as in the paper's Figure 3.


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


data = make_toy_data()
x_probe = data.x_val[:512]
gains, acc = {}, {}
for kind in ("hc", "mhc"):
    torch.manual_seed(0)
    model = DeepMLP(data.in_features, data.classes, depth=DEPTH, connection=kind, n=4)
    history = train_toy(model, data, steps=STEPS, batch_size=BATCH, progress=False)
    acc[kind] = history["val_acc"][-1]
    gains[kind] = gains_over_depth(res_per_layer(model, x_probe).double())

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
layers = torch.arange(1, DEPTH + 1)
for ax, which in zip(axes, ("single", "composite"), strict=True):
    for kind, label in (("hc", "HC"), ("mhc", "mHC")):
        g = gains[kind]
        ax.plot(layers, g[f"{which} forward"], "-", color=color(kind), label=f"{label} forward")
        ax.plot(layers, g[f"{which} backward"], "--", color=color(kind), label=f"{label} backward")
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(FixedLocator([0.8, 0.9, 1.0, 1.25, 1.5, 2, 3, 5, 10, 20, 50]))
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("layer l")
    ax.set_title(f"{which}-layer mapping" if which == "single" else "composite mapping")
axes[0].set_ylabel("Amax gain (token-averaged H_res)")
axes[0].legend(loc="upper right")
fig.suptitle(f"Trained toy networks, depth {DEPTH}, {STEPS} steps")
plt.tight_layout()
plt.show()

# %% [markdown]
# **Figure 6.4.** Amax gains of the token-averaged mixing matrices of the trained networks, on a
# log axis. Left: each layer's own matrix. Right: the composite products, forward from the first
# layer up to layer $l$ and backward from the last layer down to layer $l$. HC's single layers
# drift above and below 1 after training and their products accumulate the drift; mHC's forward
# gains sit exactly on 1 and, at the default size, its backward gains within a fraction of a per
# cent of it (the column sums carry Sinkhorn-Knopp's truncation error, so longer training and
# deeper stacks can move them a little further).

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
# forward signal exactly and the gradients approximately; with 20 iterations and moderate
# logits the difference is a fraction of a per cent either way.
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
