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
# # Memory traffic and fused kernels
#
# *Goal: count the bytes a connection moves, see why they and not its arithmetic set its speed,
# and write a fused Triton kernel that moves each byte once.*
#
# [![Open In Colab](figures/colab-badge.svg)](https://colab.research.google.com/github/hclib-book/hclib/blob/main/notebooks/07_memory_traffic_and_fused_kernels.ipynb)
#
# **Prerequisites:** Chapters 2, 3, 5 and 6 (HC, its dynamic weights, FC and mHC, and the
# `Mappings` that every connection computes). Background: a GPU keeps its tensors in a large
# memory off the chip (HBM, a few TB/s) and computes on small, fast memories on the chip; a
# *kernel* is one function launched on the GPU. No GPU is needed: the kernel of this chapter also
# runs in Triton's interpreter on the CPU.
#
# Hyper-connections add almost no arithmetic to a network: HC's Table 8 puts dynamic HC with
# $n = 4$ at 0.2% more FLOPs than OLMo-1B. Yet the mHC paper {cite:p}`xie2025mhc` found that a
# straightforward implementation costs far more time than that and wrote a set of fused kernels,
# with recomputation, to bring mHC's overhead down to 6.7% at $n = 4$. The gap is memory traffic.
# This chapter counts the bytes each connection moves (the mHC paper's Table 2, recomputed from
# the shapes), measures what eager PyTorch moves, derives two floors (the least an
# implementation must move with one kernel per op, and with a layer's write-in fused with the
# next layer's read-out), builds a fused kernel for the write-in and mixing step and checks it
# against `hclib`, looks at the memory kept for the backward pass and the dtype of the state, and
# ends with where the library's kernels stand.

# %% tags=["remove-input"]
import subprocess
import sys

if "google.colab" in sys.modules:
    hclib_url = "hclib[notebooks,gpu] @ git+https://github.com/hclib-book/hclib"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", hclib_url], check=True)

# %%
# ruff: noqa: E402  (the imports follow the Colab install cell and TRITON_INTERPRET)
import os

import torch

if not torch.cuda.is_available():
    # Triton compiles kernels for a GPU. Without one, its interpreter runs the same kernels on CPU
    # tensors, one program after another in Python: slow, but it computes the same numbers.
    # Triton reads this variable when a @triton.jit function is defined, so it is set before
    # triton (or any kernel of hclib.kernels) is imported.
    os.environ["TRITON_INTERPRET"] = "1"

import csv
from pathlib import Path

import matplotlib.pyplot as plt
import triton
import triton.language as tl
from IPython.display import Image, display
from matplotlib.patches import Patch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import hclib
from hclib import traffic
from hclib.plotting import color, use_book_style

use_book_style()
# The tensors here are small: one thread avoids the thread start-up cost that dominates small
# operations on a CPU (and is much worse when other programs share the cores).
torch.set_num_threads(1)
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
H100 = traffic.device_peak("NVIDIA H100 80GB HBM3")  # the GPU the book's targets are set for
print(f"device: {DEVICE}, Triton interpreter: {os.environ.get('TRITON_INTERPRET') == '1'}")
print(f"{H100.name}: {H100.bandwidth_tbs} TB/s, {H100.bf16_tflops:.0f} bf16 TFLOP/s")

# %% [markdown]
# Everything in this chapter runs in seconds, so it has no size knob: the counts are exact at any
# size, and the GPU timings at the end come from a committed benchmark run, not from this
# notebook.

# %% [markdown]
# ## Bytes, not FLOPs
#
# A GPU kernel is limited either by its arithmetic or by the bytes it moves between memory and
# the chip. The *roofline* model {cite:p}`williams2009roofline` compares the two through
# the **arithmetic intensity** $I$, FLOPs per byte moved: a kernel can run at most at
#
# $$
# \text{attainable FLOP/s} = \min\big(\text{peak FLOP/s},\; I \times \text{bandwidth}\big).
# $$
#
# The two terms meet at the *ridge point*, peak FLOP/s divided by bandwidth: about 295 FLOP per
# byte for an H100 SXM in bfloat16. Below the ridge a kernel is memory bound and its time is
# bytes divided by bandwidth, however few FLOPs it has.
#
# We count the FLOPs of one forward pass of each connection with PyTorch's `FlopCounterMode`,
# which counts the matrix products (the elementwise work, norms and activations add a few FLOPs per
# element and change nothing below), and divide by the bytes a connection must at least move in
# its forward pass, which the section after next derives: every op reads its inputs once and
# writes its outputs once, in bfloat16. The comparison is a two-layer MLP branch of width $4d$
# on $T$ tokens, which reads its weights once for all tokens.
#
# One catch: `FlopCounterMode` knows matrix-matrix products (`mm`, `bmm`, `addmm`) but not the
# matrix-vector product `mv`, which dynamic HC and FC use for their $W_\beta$ projection (one
# number per token). Left alone it would count those FLOPs as zero. We give it the formula, $2
# \times$ rows $\times$ columns, through its `custom_mapping`, and check it on a product whose
# count we know.

# %% tags=["nbval-check-output"]
n, d, T = 4, 4096, 4096  # streams (and fractions), width, tokens per call


def connection(kind: str, dim: int, rate: int, branch: nn.Module | None = None) -> nn.Module:
    """hclib's module of each kind (dynamic weights, the library's defaults)."""
    branch = nn.Identity() if branch is None else branch
    if kind == "residual":
        return hclib.Residual(dim, branch)
    if kind == "hc":
        return hclib.HyperConnection(dim, branch, n=rate)
    if kind == "fc":
        return hclib.FracConnection(dim, branch, m=rate)
    return hclib.ManifoldHyperConnection(dim, branch, n=rate)


def state(kind: str, tokens: int, dim: int, rate: int, dtype=torch.float32) -> torch.Tensor:
    """A random state: (T, d) residual, (T, n, d) HC and mHC, (T, m, d/m) FC."""
    shape = {"residual": (tokens, dim), "fc": (tokens, rate, dim // rate)}
    return torch.randn(*shape.get(kind, (tokens, rate, dim)), dtype=dtype)


def mv_flops(matrix_shape, vector_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of aten.mv, a (rows, cols) matrix times a (cols,) vector: a multiply-add each."""
    rows, cols = matrix_shape
    return 2 * rows * cols


WITH_MV = {torch.ops.aten.mv: mv_flops}  # FlopCounterMode's table lacks matrix-vector products


def flops_per_token(kind: str, dim: int, rate: int, tokens: int = 8, mapping=WITH_MV) -> float:
    """Matrix-product FLOPs of one forward pass per token (residual add: one per feature)."""
    if kind == "residual":
        return float(dim)
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        connection(kind, dim, rate)(state(kind, tokens, dim, rate))
    return counter.get_total_flops() / tokens


with FlopCounterMode(display=False, custom_mapping=WITH_MV) as counter:
    torch.randn(3, 5) @ torch.randn(5)  # dispatches to aten.mv
print("FlopCounterMode counts a 3x5 matrix-vector product as", counter.get_total_flops(), "FLOPs")
for kind in ("fc", "hc", "mhc"):
    missed = flops_per_token(kind, d, n) - flops_per_token(kind, d, n, mapping={})
    print(f"{kind:4s} matrix-vector FLOPs the default table misses: {missed / d:.2f} d per token")


KINDS = ("residual", "fc", "hc", "mhc")
LABELS = {"residual": "residual add", "fc": "FC m=4", "hc": "HC n=4", "mhc": "mHC n=4"}
intensity = {}
for kind in KINDS:
    flops = flops_per_token(kind, d, n)
    nbytes = traffic.floor_bytes(kind, d, n, mode="forward")
    intensity[kind] = flops / nbytes
    print(
        f"{LABELS[kind]:12s} {flops / d:6.1f} d FLOP and {nbytes / d:4.0f} d bytes per token: "
        f"{intensity[kind]:5.2f} FLOP/byte"
    )
mlp_flops = 2 * T * d * 4 * d * 2  # two matrix products, d -> 4d -> d
mlp_bytes = 2 * (2 * 4 * d * d) + 2 * T * (d + 2 * 4 * d + d)  # weights once; x, hidden (w+r), y
intensity["MLP branch"] = mlp_flops / mlp_bytes
print(f"{'MLP branch':12s} on {T} tokens: {intensity['MLP branch']:.0f} FLOP/byte")
print(f"H100 ridge point: {H100.ridge:.0f} FLOP/byte")
most = max(intensity[k] for k in KINDS)
print(
    f"the most intense connection is {H100.ridge / most:.0f} x below the ridge: at most "
    f"{100 * most / H100.ridge:.1f}% of the tensor cores' peak, even at full memory bandwidth"
)

# %%
fig, ax = plt.subplots()
xs = torch.logspace(-1.5, 4, 200)
ax.plot(xs, torch.clamp(xs * H100.bandwidth_tbs, max=H100.bf16_tflops), color="black", lw=1.5)
ax.axvline(H100.ridge, color=color("reference"), ls=":", lw=1)
ax.text(H100.ridge * 1.15, 3, "ridge", color=color("reference"))
points = {LABELS[k]: (intensity[k], color(k if k != "residual" else "pre-norm")) for k in KINDS}
points["MLP branch"] = (intensity["MLP branch"], color("reference"))
offsets = {"FC m=4": (-58, 4), "HC n=4": (6, -14), "MLP branch": (-30, -16)}
for label, (x, c) in points.items():
    y = min(x * H100.bandwidth_tbs, H100.bf16_tflops)
    ax.plot([x], [y], "o", color=c, ms=7)
    ax.annotate(
        label, (x, y), textcoords="offset points", xytext=offsets.get(label, (6, -12)), color=c
    )
ax.set_xscale("log")
ax.set_yscale("log")
ax.set_xlabel("arithmetic intensity (FLOP per byte of memory traffic)")
ax.set_ylabel("attainable TFLOP/s")
ax.set_title(f"Roofline of an {H100.name} (bfloat16, {H100.bandwidth_tbs} TB/s)")
plt.show()

# %% [markdown]
# **Figure 7.1.** The roofline of an H100 SXM: attainable bfloat16 throughput against arithmetic
# intensity, both on log axes. Left of the ridge the slope is the memory bandwidth; right of it
# the flat roof is the tensor cores' peak. Each connection's forward pass (at the least traffic it
# can have) lies far down the sloped part, between one and three orders of magnitude left of the
# ridge; the MLP branch it would wrap lies on the roof.

# %% [markdown]
# Every connection does fewer than ten FLOPs per byte it moves, more than thirty times less than
# the H100 needs to be busy: its tensor cores would sit idle for more than 97% of the time even in
# a perfect implementation. mHC has the highest intensity, because its projection reads all $n d$
# features of a token into $n^2 + 2n$ logits, but it too is memory bound. The branch is the
# opposite: its weights are read once for thousands of tokens. A connection's time is therefore
# its bytes divided by the bandwidth, and the way to make it fast is to move fewer bytes.

# %% [markdown]
# ## mHC's Table 2, recomputed from the shapes
#
# The mHC paper counts, per token, the elements an HC layer reads and writes outside its branch
# when every step is its own kernel that reads its inputs from memory and writes its outputs back
# (mHC Section 3.2, Table 2). In the paper's notation the state is $x_l \in \mathbb{R}^{n \times
# C}$, $C = d$, and the layer is $x_{l+1} = H^{\mathrm{res}} x_l + H^{\mathrm{post}\top}
# \mathcal F(H^{\mathrm{pre}} x_l)$ (mHC Eq. 3):
#
# - *calculate the mappings*: read the $n$ streams ($nC$), write the $n^2 + 2n$ coefficients;
# - *apply* $H^{\mathrm{pre}}$: read the streams and $n$ weights, write the branch input ($C$);
# - *apply* $H^{\mathrm{post}}$: read the branch output and $n$ weights, write $n$ scaled copies;
# - *apply* $H^{\mathrm{res}}$: read the streams and $n^2$ weights, write the mixed streams;
# - *residual merge*: read both $n$-stream results, write their sum.
#
# The residual add reads $2C$ and writes $C$. `hclib.traffic.mhc_table2` lists these rows; their
# sums are the paper's totals, $(5n+1)C + n^2 + 2n$ reads and $(3n+1)C + n^2 + 2n$ writes, which
# for the 27B model's $n = 4$, $C = 2560$ are the 53,784 and 33,304 the paper prints.

# %% tags=["nbval-check-output"]
rows = traffic.mhc_table2(4, 2560)
totals = {"residual": traffic.Traffic(0, 0), "hc": traffic.Traffic(0, 0)}
print(f"{'method':9s} {'operation':32s} {'reads':>7s} {'writes':>7s}")
for row in rows:
    print(f"{row.method:9s} {row.op:32s} {row.traffic.read:7,d} {row.traffic.write:7,d}")
    totals[row.method] = totals[row.method] + row.traffic
for method, total in totals.items():
    print(f"{method:9s} {'total':32s} {total.read:7,d} {total.write:7,d}")
print(f"HC moves {totals['hc'].total / totals['residual'].total:.1f} x the residual add's elements")
unfused = traffic.post_res_traffic(4, 2560, fused=False)
fused = traffic.post_res_traffic(4, 2560, fused=True)
print(f"post+res unfused: reads {unfused.read:,}, writes {unfused.write:,}")
print(f"post+res fused:   reads {fused.read:,}, writes {fused.write:,}")

# %% [markdown]
# Unfused, an HC layer with four streams moves 11.3 times the elements of the residual add it
# replaces. Most of it is the state going back and forth: the three last steps alone write
# $3nC$ and read $(3n+1)C$, because $H^{\mathrm{post}\top} y$ and $H^{\mathrm{res}} x$ each go to
# memory only to be read again by the merge. The mHC paper's kernel $\mathcal F_{\mathrm{post,res}}$
# computes $H^{\mathrm{res}} x + H^{\mathrm{post}\top} y$ in one pass (mHC Section 4.3): it reads
# $(n+1)C$ and writes $nC$, a third of the unfused traffic. That is the kernel we write below.

# %% [markdown]
# ## What eager PyTorch moves
#
# `hclib`'s modules are the reference: readable, one line per equation, and every line a separate
# PyTorch operation. Each operation is at least one kernel that reads its inputs from memory and
# writes its result back. `hclib.traffic.count_traffic` runs a function under a PyTorch dispatch
# mode that sees every operation and records the bytes of its tensor arguments and results
# (views such as transposes and slices move nothing and are skipped). We run each connection
# forward and backward, as in training, on a bfloat16 state of 256 tokens of width 4096, with a
# branch that returns a fixed tensor so that we count only the connection, and express the result
# in bytes per token per feature.


# %%
def eager_bytes(kind: str, tokens: int = 256, dim: int = 4096, rate: int = 4):
    """Bytes per token and feature that hclib's reference moves: forward, backward, and the
    forward's operations as (name, reads, writes)."""
    torch.manual_seed(0)
    y = torch.randn(tokens, dim, dtype=torch.bfloat16, requires_grad=True)
    seen = {}

    def branch(h0):  # costs nothing: y does not depend on the branch input h0
        seen["h0"] = h0
        return y

    module = connection(kind, dim, rate, branch)
    H = state(kind, tokens, dim, rate, torch.bfloat16).requires_grad_()
    out, forward_ops = traffic.count_traffic(module, H)
    h0 = seen["h0"]
    inputs = (H, y, *module.parameters())
    cotangents = (torch.randn_like(h0), torch.randn_like(out))
    _, backward_ops = traffic.count_traffic(torch.autograd.grad, (h0, out), inputs, cotangents)
    per = tokens * dim
    return (
        sum(op.read + op.write for op in forward_ops) / per,
        sum(op.read + op.write for op in backward_ops) / per,
        [(op.op, op.read / per, op.write / per) for op in forward_ops],
    )


eager = {kind: eager_bytes(kind) for kind in KINDS}

# %% tags=["nbval-check-output"]
forward_ops = eager["hc"][2]
print(f"HC (n=4) forward, eager: {len(forward_ops)} operations")
for name, reads, writes in forward_ops:
    print(f"  {name:18s} reads {reads:6.2f}, writes {writes:6.2f}")

# %% [markdown]
# This is dynamic HC's forward pass as the reference writes it (bytes per token per feature, so a
# bfloat16 copy of one stream is 2 and of the whole state $2n = 8$). The state is first converted
# to float32, because the connection's math runs in float32 (a 2-byte read and a 4-byte write per
# element); the LayerNorm reads it and writes a normalised copy; the two projections (`mm` for
# $W_\alpha$, `mv` for $W_\beta$) read that copy twice more; the read-out and mixing (`bmm`) read
# the state and write $n+1$ rows; the write-in and the sum write two more $n$-stream tensors; and
# the result goes back to bfloat16. The small operations in between act on the $n(n+1) + n$
# coefficients per token. Each of these
# round trips is a full pass over the $n d$ numbers of every token.

# %%
fig, ax = plt.subplots()
x = torch.arange(len(KINDS), dtype=torch.float32)
w = 0.2
colours = [color(kd if kd != "residual" else "pre-norm") for kd in KINDS]
bars = [
    ("eager, forward", [eager[kd][0] for kd in KINDS], 1.0, None),
    ("floor, forward", [traffic.floor_bytes(kd, 1, 4, "forward") for kd in KINDS], 1.0, "//"),
    ("eager, backward", [eager[kd][1] for kd in KINDS], 0.55, None),
    ("floor, backward", [traffic.floor_bytes(kd, 1, 4, "backward") for kd in KINDS], 0.55, "//"),
]
for k, (_, values, alpha, hatch) in enumerate(bars):
    ax.bar(x + (k - 1.5) * w, values, w, color=colours, alpha=alpha, hatch=hatch, edgecolor="white")
handles = [
    Patch(facecolor="#777777", alpha=alpha, hatch=hatch, edgecolor="white", label=label)
    for label, _, alpha, hatch in bars
]
ax.set_xticks(x, [LABELS[kd] for kd in KINDS])
ax.set_yscale("log")
ax.set_ylim(3, 5000)
ax.set_ylabel("bytes per token per feature")
ax.set_title("Memory traffic of one connection: eager reference and floor (bfloat16 state)")
ax.legend(handles=handles, loc="upper left", ncols=2)
plt.show()

# %% [markdown]
# **Figure 7.2.** Bytes moved per token and per feature by `hclib`'s eager reference (plain bars)
# and the per-op floor derived in the next section (hatched), forward (dark) and backward
# (light), on a log axis; colours are the connections'. The residual add already moves exactly
# its floor; every other connection's eager version moves about ten times more, in both
# directions.

# %% tags=["nbval-check-output"]
for kind in KINDS:
    forward, backward, _ = eager[kind]
    floor = traffic.floor_bytes(kind, 1, 4)
    print(
        f"{LABELS[kind]:12s} eager {forward:6.1f} + {backward:6.1f} bytes per token and feature, "
        f"floor {floor:3d}: {(forward + backward) / floor:4.1f} x the floor"
    )

# %% [markdown]
# Eager HC moves 9.7 times its per-op floor, FC 8.7 times and mHC 11.7 times. mHC's twenty
# Sinkhorn-Knopp iterations act on $n^2$ numbers per token and barely count at this width; what
# costs more is its RMSNorm of the flattened state, written as separate operations (square, mean,
# product), each a pass over the state in float32, forward and again backward. If a kernel
# reaches the same fraction of the memory bandwidth as the eager operations do, this ratio is the
# speed-up that fusion can buy. (The count is an upper bound for a GPU only in one respect: a
# small tensor, such as the per-token coefficients, can be found in the cache instead of memory;
# the large ones, at tens of thousands of tokens, cannot.)

# %% [markdown]
# ## Two floors: per op, and across layers
#
# How few bytes can a connection move? In a network the branch sits between the connection's two
# halves: its input $h_0 = \mathrm{pre}(H)$ must be written before it runs, and the next state
# $H' = H^{\mathrm{res}} H + H^{\mathrm{post}\top} y$ needs its output $y$. The answer depends on
# what we assume about how the work is cut into kernels, so we derive two floors, each with its
# assumption.
#
# **The per-op floor** assumes one kernel per op: a connection is two ops, `pre` and
# `post_res`, and nothing of the size of the state survives on the chip from one to the other.
# Each op must read its inputs once and write its outputs once, and with the mappings fused into
# the read-out (the state is read once to compute both the coefficients and $h_0$), that is also
# enough. Per token, with the state $k d$ elements wide ($k = n$ for HC and mHC, $k = 1$ for FC,
# whose fractions are a view of $d$ features), and $\delta X$ the gradient of the loss with
# respect to $X$:
#
# | op | reads | writes |
# |---|---|---|
# | pre | $H$: $k d$ | $h_0$: $d$ |
# | post_res | $H$, $y$: $(k+1) d$ | $H'$: $k d$ |
# | post_res backward | $\delta H'$, $H$, $y$: $(2k+1) d$ | $\delta H$, $\delta y$: $(k+1) d$ |
# | pre backward | $\delta h_0$, $H$, $\delta H$: $(2k+1) d$ | $\delta H$: $k d$ |
#
# The backward pass runs the ops in reverse. `post_res`'s backward needs the gradient of its
# output, the state (for the gradient of $H^{\mathrm{res}}$, $\langle \delta H'_i, H_j\rangle$)
# and $y$ (for the gradient of $H^{\mathrm{post}}$); it writes the gradients of $H$ and $y$.
# `pre`'s backward needs the gradient of $h_0$ and the state (for the dynamic weights' gradients
# through the norm) and adds its contribution to the gradient of $H$ in place, reading the first
# part once. In all, forward $(3k+2)d$, backward $(6k+3)d$, both $(9k+5)d$ elements. The residual
# add has no read-out ($h_0$ is $h$ itself): forward it reads $h$ and $y$ and writes $h'$, backward
# it hands the gradient of $h'$ to $y$ unchanged and adds the branch's gradient to it for $h$:
# $3d$ each way. The per-token coefficients (at most $n^2 + 2n$ numbers) and the parameters (read
# once for all tokens) are left out; at $d = 4096$ they are below 0.1% of the total.
# `hclib.traffic.floor_ops` writes this table down.
#
# **The cross-layer floor** drops the cut between `post_res` of layer $l$ and `pre` of layer
# $l+1$: no branch sits between them, so one kernel can read $H_l$ and $y_l$, form $H_{l+1}$ on
# the chip, compute the next layer's mappings from it and write both $H_{l+1}$ and the next
# branch input $h_0^{(l+1)}$. The state is then read once per layer instead of twice. The only
# assumption left is that no state-sized tensor stays on the chip *across a branch*, which holds
# for any branch large enough to need the chip to itself. Its backward reads
# $\delta H_{l+1}$, $\delta h_0^{(l+1)}$, $H_l$ and $y_l$ ($H_{l+1}$ is recomputed on the chip
# from the last two) and writes $\delta H_l$ and $\delta y_l$:
#
# | fused op | reads | writes |
# |---|---|---|
# | post_res + next pre | $H$, $y$: $(k+1) d$ | $H'$, $h_0'$: $(k+1) d$ |
# | backward | $\delta H'$, $\delta h_0'$, $H$, $y$: $(2k+2)d$ | $\delta H$, $\delta y$: $(k+1)d$ |
#
# Forward $(2k+2)d$, backward $(3k+3)d$, $(5k+5)d$ in all: $25d$ for $n = 4$ against the per-op
# floor's $41d$. `floor_ops(..., fusion="cross-layer")` holds it. The two side by side, with
# what each means at 32k tokens of width 4096 on an H100:

# %% tags=["nbval-check-output"]
for name, t in traffic.floor_ops("hc", 1, 4).items():
    print(f"HC n=4 per-op      {name:28s} reads {t.read:2d} d, writes {t.write:2d} d")
for name, t in traffic.floor_ops("hc", 1, 4, fusion="cross-layer").items():
    print(f"HC n=4 cross-layer {name:28s} reads {t.read:2d} d, writes {t.write:2d} d")
tokens, width = 32 * 1024, 4096
residual_floor = traffic.floor_elements("residual", 1).total
print(f"\n{'':12s} {'per-op floor':>26s}   {'cross-layer floor':>26s}")
for kind in KINDS:
    cells = []
    for fusion in traffic.FUSIONS:
        elements = traffic.floor_elements(kind, 1, 4, fusion=fusion).total
        nbytes = traffic.floor_bytes(kind, width, 4, fusion=fusion) * tokens
        ms = nbytes / (H100.bandwidth_tbs * 1e12) * 1e3
        cells.append(f"{elements:3d} d {ms:5.2f} ms {elements / residual_floor:4.1f} x res")
    print(f"{LABELS[kind]:12s} {cells[0]:>26s}   {cells[1]:>26s}")

# %% [markdown]
# Per op, a perfect HC or mHC implementation takes at least 6.8 times as long as the residual add
# ($41d$ against $6d$) at the same fraction of the bandwidth, FC 2.3 times; fused across layers,
# 4.2 and 1.7 times. Neither is a law of nature: each holds under its assumption, and the second
# shows that most of the per-op floor's excess over the residual add is the state being read on
# both sides of a cut that the network does not need. What remains, $(5k+5)d$, is the state
# that is $k$ times wider being read and written once per layer each way. The benchmark at the
# end of the chapter reports the bandwidth a kernel reaches on the *per-op* byte count, as a
# fraction of the device's peak, since `hclib`'s kernels are per-op kernels; its targets are 70%
# of the peak for HC and mHC, and at most three times the residual add's time for FC.
#
# Even the per-op floor is not the least for the backward pass under its own assumption: an
# exercise below finds a schedule that moves less by giving up the strict one-op-one-backward
# structure.

# %% [markdown]
# ## A fused post+res kernel in Triton
#
# The write-in and mixing step is the op every connection ends with, and it is the clearest
# case for fusion: per token,
#
# $$
# H'_i = \sum_j H^{\mathrm{res}}_{ij} H_j + H^{\mathrm{post}}_i\, y, \qquad i = 1, \dots, n,
# $$
#
# with `Mappings`' `post` $(T, n)$ and `res` $(T, n, n)$ (HC: $B$ and $A_r^\top$; mHC:
# $H^{\mathrm{post}}$ and $H^{\mathrm{res}}$). The arithmetic is $2n^2 + 2n$ FLOPs per feature;
# the bytes are what matter. A fused kernel loads each $H_j$ and $y$ once, keeps every
# intermediate in registers and writes each $H'_i$ once.
#
# [Triton](https://triton-lang.org) writes a GPU kernel as a Python function that one *program*
# runs on one block of the data, with operations on whole blocks. Here a program takes a block of
# `BT` tokens and `BD` features, so that its loads of a row of $H$ are contiguous in memory. It
# keeps an accumulator of shape `(BT, NP, BD)` for the $n$ output rows ($n$ padded to a power of
# two, `NP`, as Triton's blocks must be), starts it at $H^{\mathrm{post}}_i y$, and adds
# $H^{\mathrm{res}}_{ij} H_j$ for one input row $j$ at a time, so each row is loaded once. The
# loop over $j$ is unrolled at compile time (`tl.static_range`); the math is in float32.


# %%
@triton.jit
def post_res_kernel(
    H,  # (T, N, D) state
    Y,  # (T, D) branch output
    POST,  # (T, N) float32 write-in weights
    RES,  # (T, N, N) float32 mixing weights
    OUT,  # (T, N, D) next state
    T,
    D,
    N: tl.constexpr,
    NP: tl.constexpr,
    BT: tl.constexpr,
    BD: tl.constexpr,
):
    t = tl.program_id(0) * BT + tl.arange(0, BT)  # (BT,) this program's tokens
    f = tl.program_id(1) * BD + tl.arange(0, BD)  # (BD,) this program's features
    i = tl.arange(0, NP)  # (NP,) output rows, padded to a power of two
    tf_ok = (t < T)[:, None] & (f < D)[None, :]  # (BT, BD)
    ti_ok = (t < T)[:, None] & (i < N)[None, :]  # (BT, NP)
    # the write-in, post_i * y, starts the accumulator of every output row
    y = tl.load(Y + t[:, None] * D + f[None, :], mask=tf_ok, other=0.0).to(tl.float32)
    post = tl.load(POST + t[:, None] * N + i[None, :], mask=ti_ok, other=0.0)  # (BT, NP)
    acc = post[:, :, None] * y[:, None, :]  # (BT, NP, BD)
    # the mixing: input row j is loaded once and added into every output row i
    for j in tl.static_range(N):
        h_j = tl.load(H + (t[:, None] * N + j) * D + f[None, :], mask=tf_ok, other=0.0)
        res_j = tl.load(RES + (t[:, None] * N + i[None, :]) * N + j, mask=ti_ok, other=0.0)
        acc += res_j[:, :, None] * h_j.to(tl.float32)[:, None, :]  # (BT, NP, BD)
    out = OUT + (t[:, None, None] * N + i[None, :, None]) * D + f[None, None, :]
    tl.store(out, acc.to(OUT.dtype.element_ty), mask=ti_ok[:, :, None] & tf_ok[:, None, :])


def post_res(
    H: torch.Tensor,
    y: torch.Tensor,
    post: torch.Tensor,
    res: torch.Tensor,
    BT: int = 16,
    BD: int = 64,
) -> torch.Tensor:
    """H' = res @ H + post (x) y: H (T, n, d), y (T, d), post (T, n), res (T, n, n)."""
    T, n, d = H.shape
    H, y = H.contiguous(), y.contiguous()
    post, res = post.float().contiguous(), res.float().contiguous()
    out = torch.empty_like(H)
    grid = (triton.cdiv(T, BT), triton.cdiv(d, BD))  # one program per (token, feature) block
    post_res_kernel[grid](
        H, y, post, res, out, T, d, N=n, NP=triton.next_power_of_2(n), BT=BT, BD=BD
    )
    return out


# %% [markdown]
# The launcher flattens nothing and checks little; the library's version,
# `hclib.kernels.post_res.post_res`, adds the shape checks, static weights shared by all tokens,
# FC's per-fraction write-in, 64-bit offsets for large tensors, the backward kernel and a
# `torch.autograd.Function`, and tunes `BT` and `BD` on a GPU. On a CPU the interpreter runs our
# kernel program by program, which is why the sizes below are small.
#
# We check the kernel against `hclib`. A dynamic HC and an mHC module, with their parameters moved
# off their initial values so that every token has different weights, give their `Mappings` for
# a random bfloat16 state; the branch is a small Linear layer. The kernel's $H'$ must equal the
# module's own output, which runs the reference equations.


# %%
class Recorder(nn.Module):
    """Wraps a branch and keeps its last input h0 and output y."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, h0: torch.Tensor) -> torch.Tensor:
        self.h0, self.y = h0, self.inner(h0)
        return self.y


torch.manual_seed(0)
T_check, d_check = 50, 200  # not multiples of the block sizes: the masks matter
checks = {}
for kind in ("hc", "mhc"):
    branch = Recorder(nn.Sequential(nn.LayerNorm(d_check), nn.Linear(d_check, d_check)))
    branch.to(torch.bfloat16)  # a bfloat16 branch on the bfloat16 branch input
    module = connection(kind, d_check, 4, branch).to(DEVICE)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if not name.startswith("branch."):  # move the connection's weights off their init
                p.add_(0.1 * torch.randn_like(p))
    H = state(kind, T_check, d_check, 4, torch.bfloat16).to(DEVICE)
    with torch.no_grad():
        reference = module(H)  # the reference equations; the branch records its output y
        _, post, res = module.mappings(H)  # float32: (T, n) and (T, n, n)
        checks[kind] = (post_res(H, branch.y, post, res), reference)

# %% tags=["nbval-check-output"]
for kind, (ours, reference) in checks.items():
    torch.testing.assert_close(ours, reference, rtol=1.6e-2, atol=1e-5)  # bfloat16 rounding
    gap = (ours.float() - reference.float()).abs().max().item()
    step = reference.float().abs().max().item() * 2**-7  # bfloat16's spacing at the largest value
    print(f"{kind}: kernel == module output, largest gap within one bfloat16 step: {gap <= step}")

# %% [markdown]
# The kernel's output equals the module's to within one rounding of bfloat16, the precision of
# the result (both compute in float32 and round once at the end; the small differences come from
# the order of the additions). The same check in float32, and against the library's kernel
# (which runs in the interpreter as well), leaves only float32 rounding:

# %% tags=["nbval-check-output"]
torch.manual_seed(1)
H32 = torch.randn(T_check, 4, d_check, device=DEVICE)
y32 = torch.randn(T_check, d_check, device=DEVICE)
post32 = torch.rand(T_check, 4, device=DEVICE) * 2
res32 = hclib.sinkhorn_knopp(torch.randn(T_check, 4, 4, device=DEVICE))
expected = res32 @ H32 + post32.unsqueeze(-1) * y32.unsqueeze(-2)  # (T, n, d)
torch.testing.assert_close(post_res(H32, y32, post32, res32), expected, rtol=1e-6, atol=1e-6)
print("float32: kernel == res @ H + post (x) y")
try:
    from hclib.kernels.post_res import post_res as library_post_res
except ImportError as err:  # the library's kernels need triton, which this notebook has
    print("hclib.kernels.post_res is not available:", err)
else:
    torch.testing.assert_close(
        post_res(H32, y32, post32, res32), library_post_res(H32, y32, post32, res32)
    )
    print("float32: kernel == hclib.kernels.post_res.post_res")

# %% [markdown]
# What it moves per token: $n d$ elements of $H$ and $d$ of $y$ read, $n d$ of $H'$ written,
# plus $n^2 + n$ float32 coefficients: exactly the fused row of the previous table,
# $(n+1)d$ read and $n d$ written, and the `post_res` line of the floor. Nothing else touches
# memory.

# %% [markdown]
# ## Memory kept for the backward pass
#
# Bytes moved are time; bytes kept are memory. Autograd keeps, for every layer, whatever each
# operation's backward needs, and for a connection most of it is state-sized. HC's Appendix B
# estimates the extra activation memory of HC over a residual network as $2 n\, s b\, d\, L$
# elements for $L$ transformer layers of two connections each and $s b$ tokens (each connection
# keeps an $n d$-wide state per token), and $n\, s b\, d$ if the states are recomputed in the
# backward pass instead (claim 16 of the book's list of checkable claims). For a 7B-sized layer
# stack:

# %% tags=["nbval-check-output"]
tokens, width, layers = 8192, 4096, 32  # tokens per GPU, d, transformer layers
for rate in (2, 4):
    kept = traffic.hc_activation_elements(rate, tokens, width, layers) * 2  # bfloat16 bytes
    recomputed = traffic.hc_activation_elements(rate, tokens, width, layers, recompute=True) * 2
    print(
        f"HC n={rate}: {kept / 2**30:4.1f} GiB more activations per GPU, "
        f"{recomputed / 2**30:.2f} GiB with the streams recomputed"
    )

# %% [markdown]
# Sixteen gigabytes for $n = 4$ is a large share of an 80 GB GPU, which is why the mHC paper
# recomputes (mHC Section 4.3, Table 3): it discards the connections' intermediate tensors after
# the forward pass and recomputes them in the backward pass, which costs no branch evaluation
# but the connection's whole forward pass again (below). It keeps the state $x_{l_0}$ ($nC$ per
# token) at the start of every block of $L_r$ layers and the branch outputs of every layer,
# and while one block is being recomputed it holds $(n+2)C$ per layer of that block. The
# elements per token to minimise over the block size are therefore (mHC Eq. 20)
#
# $$
# n \left\lceil \frac{L}{L_r} \right\rceil + (n+2) L_r \quad (\text{in units of } C),
# \qquad L_r^* \approx \sqrt{\frac{n L}{n+2}},
# $$
#
# the closed form coming from replacing $\lceil L/L_r \rceil$ by $L/L_r$ and setting the
# derivative to zero.

# %% [markdown]
# Recomputing is not free in bytes. Rebuilding a layer's intermediates means running its
# connection's forward again: reading the state and the branch output and writing the
# recomputed state and branch input, the forward floor once more, not just one more read of the
# kept state. `hclib.traffic.recompute_elements` counts it per layer under each floor:

# %% tags=["nbval-check-output"]
for kind in ("hc", "fc"):
    for fusion in traffic.FUSIONS:
        extra = traffic.recompute_elements(kind, 1, 4, fusion).total
        base = traffic.floor_elements(kind, 1, 4, fusion=fusion).total
        print(
            f"{LABELS[kind]:7s} {fusion:11s}: recomputation adds {extra:2d} d per token and layer "
            f"to {base:2d} d, +{extra / base:.0%}"
        )

# %% [markdown]
# A third more traffic for HC and mHC per op, two fifths more across layers: recomputation trades
# memory for time in a connection, too, although it re-runs no branch. (The mHC paper's 6.7%
# overhead includes it.)

# %%
n_r, L = 4, 60  # the 27B model: 30 layers of two connections each
blocks = range(1, 31)
costs = [traffic.recompute_cost(n_r, L, b) for b in blocks]
best = traffic.best_recompute_block(n_r, L)
estimate = traffic.recompute_block_estimate(n_r, L)

fig, ax = plt.subplots()
ax.plot(list(blocks), costs, "o-", color=color("mhc"), ms=4, label="kept elements (units of C)")
smooth = torch.linspace(1, 30, 300)
without_ceiling = n_r * L / smooth + (n_r + 2) * smooth
label = r"without the ceiling, $nL/L_r + (n+2)L_r$"
ax.plot(smooth, without_ceiling, ":", color=color("reference"), label=label)
ax.axvline(estimate, color=color("reference"), lw=1)
ax.plot([best], [traffic.recompute_cost(n_r, L, best)], "o", color="black", ms=8, fillstyle="none")
ax.set_xlabel("recomputation block size $L_r$ (layers)")
ax.set_ylabel("elements kept per token / C")
ax.set_ylim(0, 200)
ax.set_title(f"mHC's recomputation blocks, n={n_r}, L={L}")
ax.legend(loc="upper right")
plt.show()

# %% [markdown]
# **Figure 7.3.** Elements kept per token, in units of $C$, as a function of the recomputation
# block size for $n = 4$ and $L = 60$ (mHC Eq. 20; dots), the same expression without the ceiling
# (dotted), the closed-form optimum $\sqrt{nL/(n+2)}$ (vertical line) and the best integer block
# (circle). The curve is flat near its minimum: blocks of 5 to 8 layers all keep within a few per
# cent of the least memory.

# %% tags=["nbval-check-output"]
print(f"best block L_r = {best} keeps {traffic.recompute_cost(n_r, L, best)} C per token")
print(f"closed form sqrt(nL/(n+2)) = {estimate:.2f}")
print(f"every layer its own block: {traffic.recompute_cost(n_r, L, 1)} C per token")
print(f"no recomputation: {n_r * L} C of states alone")
worst = max(
    abs(traffic.best_recompute_block(k, layers) - traffic.recompute_block_estimate(k, layers))
    for k in (1, 2, 4, 8)
    for layers in range(1, 129)
)
print(f"blocks of 5 to 8: {[traffic.recompute_cost(n_r, L, b) for b in range(5, 9)]} C")
print(f"largest gap, best block vs closed form, n in 1, 2, 4, 8 and L <= 128: {worst:.2f}")

# %% [markdown]
# For the 27B model's 60 connections, blocks of 6 layers keep 76 $C$ per token against 246 $C$
# when every layer is its own block and 240 $C$ for the states alone without recomputation: a
# factor of three. The closed form, 6.32, is within 2 of the best integer block for every
# $n \in \{1, 2, 4, 8\}$ and $L \le 128$ we tried. In practice, the paper notes, the blocks are
# aligned with the pipeline stages instead, since a block must not cross from one GPU to the next.

# %% [markdown]
# ## The state's dtype
#
# The counts so far assume every tensor in bfloat16, 2 bytes. Under mixed precision
# (`bf16-mixed`, autocast) the branch computes in bfloat16, but the state is an ordinary tensor
# that autocast does not touch: if a model keeps it in float32, as a model built without an
# explicit dtype does, every read and write of $H$, $H'$ and their gradients costs 4 bytes while
# $y$ and $h_0$ cost 2. The eager reference above converts the state to float32 for its math in
# any case; what matters for the floor is the dtype the state is *stored* in between layers.
# `floor_bytes(..., state_element_size=4)` counts it:

# %% tags=["nbval-check-output"]
print(f"{'':12s} {'bf16 state':>11s} {'fp32 state':>11s}  (bytes per token and unit of d)")
for kind in KINDS:
    for fusion in traffic.FUSIONS:
        b16 = traffic.floor_bytes(kind, 1, 4, fusion=fusion)
        b32 = traffic.floor_bytes(kind, 1, 4, fusion=fusion, state_element_size=4)
        print(f"{LABELS[kind]:12s} {b16:11d} {b32:11d}  {b32 / b16:.2f} x  {fusion}")

# %% [markdown]
# A float32 state nearly doubles HC's and mHC's traffic (1.88 times per op: nine of its fourteen
# passes are state-sized and $n$ times wider), where the residual add's grows by two thirds. The
# cost buys precision: the state accumulates every layer's contribution, and rounding it to
# bfloat16 at every layer rounds that sum 2L times. Keeping the state in the autocast dtype, with
# float32 as an option for the runs that need it, is the choice that matches the floors above.
#
# ## Where `hclib`'s kernels stand
#
# `hclib.kernels` holds per-op kernels: a fused read-out (mappings and $h_0$ in one kernel, for
# HC, FC and mHC), the fused post+res of this chapter, and their backward kernels. Their byte
# counts, from their design (each kernel file's docstring, collected in
# `hclib.traffic.kernel_elements`), against both floors:

# %% tags=["nbval-check-output"]
print(f"{'':12s} {'per-op floor':>12s} {'cross-layer':>12s} {'hclib kernels':>14s}   (d per token)")
for kind in KINDS:
    low, high = traffic.kernel_elements(kind, 1, 4)
    per_op = traffic.floor_elements(kind, 1, 4).total
    cross = traffic.floor_elements(kind, 1, 4, fusion="cross-layer").total
    moved = f"{low.total}" if low == high else f"{low.total} to {high.total}"
    print(f"{LABELS[kind]:12s} {per_op:12d} {cross:12d} {moved:>14s}")

# %% [markdown]
# HC's kernels move exactly the per-op floor when the second pass over a token's state, which the
# read-out needs once its coefficients are known, is served from the GPU's L2 cache, and $9d$
# more when it is not; mHC's read-out moves $5d$ more in any case (its backward needs the
# gradient of the read-out weights before it can write any $\delta H$) and FC's $3d$ more without
# L2 reuse. None of them reaches the cross-layer floor: that needs a kernel that spans two
# layers' connections, which the library does not have.
#
# Whether a kernel compiles into something a GPU can run well is a second question: a Triton
# kernel whose tiles need more registers than a thread has spills them to memory, and one that
# asks for more shared memory than the chip has does not launch. `benchmarks/kernel_resources.py`
# compiles every kernel for each target architecture, shape and dtype and records the registers,
# spills and shared memory of each configuration; its table is read here when it has been
# computed.


# %%
def kernel_resources() -> list[dict] | None:
    """The rows of the committed kernel compile table, or None if it has not been computed."""
    for folder in (Path.cwd(), *Path.cwd().parents):  # the checkout this notebook runs in
        path = folder / "results" / "2026-12-04-cpu" / "kernel_resources.csv"
        if path.exists():
            with path.open() as f:
                return list(csv.DictReader(f))
    return None


# %% tags=["nbval-check-output"]
def flag(value: str) -> bool:
    """A yes/no column of the CSV (written as True/False)."""
    return value.strip().lower() in ("1", "true", "yes")


compiled = kernel_resources()
if compiled is None:
    print(
        "The kernel compile table has not been computed yet "
        "(results/2026-12-04-cpu/kernel_resources.csv; run benchmarks/kernel_resources.py)."
    )
else:
    archs = sorted({r["arch"] for r in compiled})
    print(f"{len(compiled)} compiled configurations for sm_{', sm_'.join(archs)}")
    header = f"{'arch':6s} {'kernel':30s} {'configs':>7s} {'usable':>6s} {'fit':>4s} {'spill':>5s}"
    print(header + f" {'max regs':>8s} {'max smem KiB':>12s}")
    for arch in archs:
        for kernel in sorted({r["kernel"] for r in compiled if r["arch"] == arch}):
            rows = [r for r in compiled if r["arch"] == arch and r["kernel"] == kernel]
            usable = [r for r in rows if not flag(r["pruned"])]  # autotuning may pick these
            fit = sum(flag(r["fits"]) for r in usable)
            spill = sum(int(float(r["spill_bytes"] or 0)) > 0 for r in usable)
            regs = max((int(float(r["registers"] or 0)) for r in usable), default=0)
            smem = max((int(float(r["shared_bytes"] or 0)) for r in usable), default=0)
            print(
                f"sm_{arch:3s} {kernel:30s} {len(rows):7d} {len(usable):6d} {fit:4d} {spill:5d}"
                f" {regs:8d} {smem / 1024:12.1f}"
            )

# %% [markdown]
# Per architecture and kernel, the table counts the compiled configurations (tile sizes for each
# $n$, $d$ and dtype), those that autotuning may pick (not pruned for their shape), how many of
# these fit the chip's limits and how many spill registers to memory, and the most registers a
# thread and the most shared memory a program needs among them. Every configuration that
# autotuning may pick fits and none spills; the README's test command compiles them all again
# and fails if that ever changes. Until timings from a GPU are committed, this table is the
# evidence that the kernels are ready to run on one; it says nothing about their speed.
#
# ### On a GPU: the benchmark
#
# `benchmarks/connections.py` times the library's connections on a GPU. It defines *the
# connection's work* identically for every implementation: from the state $H$ and a fixed branch
# output $y$ (so the branch costs nothing), compute $h_0 = \mathrm{pre}(H)$ and
# $H' = \mathrm{post\_res}(H, y)$, the dynamic mappings included; backward, the gradients of $H$,
# $y$ and the parameters from random cotangents of $h_0$ and $H'$. It runs the residual add, the
# eager reference, the reference under `torch.compile`, `hclib`'s Triton kernels, and the two
# libraries a reader might pick instead: lucidrains' `hyper-connections` (HC, FC and mHC) and
# Liger-Kernel's fused mHC. For every shape it reports the median time, the bandwidth reached on
# the floor byte count of this chapter as a fraction of the GPU's data-sheet peak, and the time
# as a multiple of the residual add's, and it states each target met or missed. To regenerate the
# results on a GPU, from the repository's root:
#
# ```bash
# pip install -e '.[dev,bench]'     # triton, hyper-connections, liger-kernel
# python benchmarks/connections.py  # writes results/<date>-<device>/connections.{csv,md,png}
# ```
#
# and commit the folder. The next cell shows the newest committed run.


# %%
def repository_root() -> Path | None:
    """The checkout this notebook runs in (the folder with benchmarks/), if any."""
    for folder in (Path.cwd(), *Path.cwd().parents):
        if (folder / "benchmarks" / "connections.py").exists():
            return folder
    return None


def gpu_results(root: Path | None) -> list[Path]:
    """results/*/connections.csv files measured on a GPU (a --smoke run on the CPU is not one)."""
    found = []
    for path in sorted((root / "results").glob("*/connections.csv")) if root else []:
        with path.open() as f:
            rows = list(csv.DictReader(f))
        if rows and all(r["smoke"] == "0" and r["device"] != "cpu" for r in rows):
            found.append(path)
    return found


def show_benchmark(path: Path, tokens: int = 32768, width: int = 4096, rate: int = 4) -> None:
    """The run's targets, its table at one shape (forward+backward) and its figure."""
    with path.open() as f:
        rows = list(csv.DictReader(f))
    print(f"{path.parent.name}: {rows[0]['device']}, peak {rows[0]['peak_tbs'] or '?'} TB/s")
    report = (path.parent / "connections.md").read_text().splitlines()
    print("\n".join(line for line in report if line.startswith("- **")))
    print(f"\nT={tokens}, d={width}, n=m={rate}, forward+backward:")
    print(
        f"{'connection':11s} {'provider':11s} {'ms':>8s} {'GB/s':>7s} {'% peak':>7s} {'x res':>6s}"
    )
    for r in rows:
        shape = (int(r["tokens"]), int(r["d"]), r["mode"])
        if shape != (tokens, width, "forward+backward"):
            continue
        if r["connection"] != "residual" and int(r["rate"]) != rate:
            continue
        if r["status"] != "ok":
            print(f"{r['connection']:11s} {r['provider']:11s} {r['status']}")
            continue
        print(
            f"{r['connection']:11s} {r['provider']:11s} {float(r['median_ms']):8.3f} "
            f"{float(r['achieved_gbps']):7.0f} {r['pct_of_peak'] or '':>7s} {r['x_residual']:>6s}"
        )
    figure = path.parent / "connections.png"
    if figure.exists():
        display(Image(filename=str(figure)))


results = gpu_results(repository_root())
if results:
    show_benchmark(results[-1])
else:
    print(
        "No GPU results are committed yet: results/ holds no connections.csv measured on a GPU.\n"
        "On a machine with a CUDA GPU, from the repository's root, run\n"
        "    pip install -e '.[dev,bench]'\n"
        "    python benchmarks/connections.py\n"
        "and commit the folder it writes, results/<date>-<device>/."
    )

# %% [markdown]
# When a run is committed, the cell above lists each target with its margin, the times of every
# implementation at 32k tokens of width 4096 with $n = m = 4$, and the run's figure: for each
# connection, the bandwidth reached as a share of the peak (top) and the time as a multiple of the
# residual add (bottom), against the number of tokens. Read them with this chapter's numbers in
# mind: a per-op implementation cannot beat the per-op floor (6.8 residual adds for HC and mHC,
# 2.3 for FC); one fused across layers could reach 4.2 and 1.7; the eager reference moves ten
# times the per-op floor or more.

# %% [markdown]
# ## Summary
#
# - A connection does fewer than ten FLOPs per byte it moves, thirty times below an H100's ridge
#   point: its time is its memory traffic divided by the bandwidth (Figure 7.1).
# - Counted per token with every step its own kernel (mHC Table 2), HC with $n = 4$ moves
#   $(8n+2)C + 2(n^2+2n)$ elements, 11.3 times the residual add; fusing the write-in, the mixing and
#   the merge into one kernel cuts that step's reads from $(3n+1)C$ to $(n+1)C$ and its writes
#   from $3nC$ to $nC$.
# - `hclib`'s eager reference, counted op by op with a dispatch mode, moves about ten times the
#   per-op floor for HC and FC and about twelve times for mHC (Figure 7.2).
# - Two floors, each with its assumption. Per op (one kernel for `pre`, one for `post_res`):
#   $(3k+2)d$ forward and $(6k+3)d$ backward per token for a state $k d$ wide, 6.8 residual adds
#   for HC and mHC with $n = 4$, 2.3 for FC. Across layers (a layer's `post_res` fused with the
#   next layer's `pre`; nothing state-sized kept on chip across a branch): $(2k+2)d$ and
#   $(3k+3)d$, 4.2 and 1.7 residual adds. `hclib`'s kernels are per-op kernels: HC's reach the
#   per-op floor when L2 serves their second pass, mHC's move $5d$ more.
# - FLOPs: `FlopCounterMode` misses matrix-vector products (`aten.mv`); with its formula added,
#   every connection still does fewer than ten FLOPs per byte.
# - A float32 state under bfloat16 autocast nearly doubles HC's and mHC's floors; recomputing
#   the connections in the backward pass adds their forward floor once more per layer.
# - A Triton kernel for $H' = H^{\mathrm{res}} H + H^{\mathrm{post}\top} y$ in thirty lines moves
#   exactly the fused count and matches `hclib`'s modules; it runs on the CPU in Triton's
#   interpreter.
# - Activation memory: HC adds $2n\,sb\,dL$ elements (16 GiB per GPU for a 7B-sized model at
#   $n = 4$); mHC's recomputation in blocks of $L_r \approx \sqrt{nL/(n+2)}$ layers keeps about a
#   third of what one block per layer keeps (Figure 7.3).

# %% [markdown]
# ## Exercises
#
# ```{exercise} Table 2 for frac-connections
# :label: ex-07-fc-table
# Write the rows of mHC's Table 2 for an FC layer with $m$ fractions, every step its own kernel:
# calculating the mappings, applying $Y$, applying $B$ and $A$, and the merge. Express the totals
# in units of $d$ and compare them with HC's for $n = m = 4$. Which row of HC's table has no
# counterpart, and why is FC's floor independent of $m$?
# ```
#
# ```{solution} ex-07-fc-table
# :class: dropdown
# FC's state is $d$ wide: $m$ fractions of $d/m$. Calculating the mappings reads $d$ and writes
# $2m^2 + m$ coefficients; applying $Y$ reads $d$ (plus $m^2$) and writes the branch input $d$;
# applying $B$ reads $y$ ($d$, plus $m$) and writes $d$; applying $A$ reads $d$ (plus $m^2$) and
# writes $d$; the merge reads $2d$ and writes $d$. Reads $6d$, writes $4d$ (plus $O(m^2)$): $10d$
# against HC's $(8n+2)d = 34d$ for $n = 4$. Nothing is $m$ times wider, so no row grows with $m$:
# the fractions are a view of the same $d$ numbers, and the floor ($5d$ forward, $9d$ backward)
# depends on $d$ alone. HC's rows grow with $n$ because its state has $n$ copies.
# ```
#
# ```{exercise} A backward pass below the per-op floor
# :label: ex-07-backward
# The floor of this chapter lets each op's backward write the gradients of its inputs. Suppose
# instead that `post_res`'s backward writes only $\delta y$ (and the small coefficient
# gradients), and that `pre`'s backward, which runs after the branch's backward, reads
# $\delta H'$ again and computes the whole $\delta H$, including
# $H^{\mathrm{res}\top} \delta H'$ and the gradient of $H^{\mathrm{res}}$. How many elements per
# token does the backward pass move now, for HC with $n$ streams? What must be kept alive longer,
# and why can autograd's usual one-function-per-op structure not express it directly?
# ```
#
# ```{solution} ex-07-backward
# :class: dropdown
# `post_res` backward: read $\delta H'$ ($nd$) and $y$ ($d$) for $\delta y = \sum_i
# H^{\mathrm{post}}_i \delta H'_i$ and $\delta H^{\mathrm{post}}_i = \langle \delta H'_i,
# y\rangle$; write $\delta y$ ($d$). `pre` backward: read $\delta h_0$ ($d$), $H$ ($nd$) and
# $\delta H'$ ($nd$); write $\delta H$ ($nd$). In all $(4n+3)d$ instead of $(6n+3)d$: $19d$
# instead of $27d$ for $n = 4$. The price: $\delta H'$ must stay in memory until after the
# branch's backward, and the gradient with respect to $H$ of the `post_res` op is produced by
# another op's backward, which autograd's contract (each `Function.backward` returns the gradients
# of its own inputs) does not allow without a custom function spanning both ops and the branch.
# ```
#
# ```{exercise} Where the roofline bends
# :label: ex-07-ridge
# Compute the ridge point of an A100 80GB SXM (312 bf16 TFLOP/s, 2.039 TB/s) with
# `hclib.traffic.device_peak`. How many tokens must the MLP branch of this chapter process at
# $d = 4096$ before it becomes compute bound on that GPU? Does anything change for the
# connections?
# ```
#
# ```{solution} ex-07-ridge
# :class: dropdown
# `traffic.device_peak("NVIDIA A100-SXM4-80GB").ridge` is $312 / 2.039 \approx 153$ FLOP per
# byte. The MLP's intensity is $16 T d^2 / (16 d^2 + 20 T d)$ (weights once, activations per
# token); setting it to 153 at $d = 4096$ gives $T = 16 \cdot 153\, d / (16 d - 20 \cdot 153)
# \approx 161$ tokens, so any realistic batch is compute bound. The connections' intensities do
# not depend on the number of tokens and stay below 10: memory bound on every GPU in the table.
# ```
#
# ```{exercise} The backward kernel of post+res
# :label: ex-07-bwd-kernel
# Write down the four gradients of $H'_i = \sum_j R_{ij} H_j + p_i y$ for one token, check them
# against `torch.autograd` on random tensors, and count the elements the backward kernel must read
# and write. Extend `post_res_kernel` into a backward kernel that computes $\delta H$ and
# $\delta y$ and, per token, $\delta p$ and $\delta R$.
# ```
#
# ```{solution} ex-07-bwd-kernel
# :class: dropdown
# With $G_i = \delta H'_i$: $\delta H_j = \sum_i R_{ij} G_i$, $\delta y = \sum_i p_i G_i$,
# $\delta p_i = \langle G_i, y \rangle$ and $\delta R_{ij} = \langle G_i, H_j \rangle$ (sums
# over the $d$ features). The kernel reads $G$ ($nd$), $H$ ($nd$) and $y$ ($d$), writes
# $\delta H$ ($nd$) and $\delta y$ ($d$): $(3n+2)d$, plus $n^2 + n$ coefficient gradients per
# token, the `post_res backward` line of the floor. Because $\delta p$ and $\delta R$ are sums
# over $d$, a program that owns a block of features produces only partial sums; either one program
# loops over all of $d$ for its tokens (as `hclib.kernels.post_res` does), or the partial sums are
# added in a second small step.
# ```
#
# ```{exercise} Recomputation within pipeline stages
# :label: ex-07-stages
# Split the 27B model's 60 connections into 4 pipeline stages of 15 on 4 GPUs; a recomputation
# block may not cross a stage. With `hclib.traffic.recompute_cost`, find the best block size for a
# stage and the elements per token (in units of $C$) that each GPU keeps. Compare with the closed
# form and with the simplest choice, one block per stage.
# ```
#
# ```{solution} ex-07-stages
# :class: dropdown
# `traffic.best_recompute_block(4, 15)` is 3: five blocks keep $4 \cdot 5 = 20\,C$ of states and
# one block being recomputed $6 \cdot 3 = 18\,C$, 38 $C$ per token on each GPU (blocks of 4 keep
# 40 $C$). The closed form gives $\sqrt{4 \cdot 15 / 6} \approx 3.16$. One block per stage
# ($L_r = 15$) keeps $4 + 6 \cdot 15 = 94\,C$, two and a half times more: aligning blocks with
# stages is a constraint on where blocks end, not a reason to make them as long as a stage.
# ```
