"""Fused read-out of HC (static and dynamic): the branch input and the per-token weights.

Math, per token, for a state of ``k`` rows of ``f`` features (HC: ``k = n`` streams of
``f = d``; FC: ``k = m`` fractions of ``f = d/m``, see :mod:`hclib.kernels.frac`) and ``p``
read-out columns (HC: ``p = 1``; FC: ``p = m``). The weights of row ``i`` are one vector of
``p + k + 1`` coefficients ``[alpha_i | beta_i]`` (HC Eqs. 10-13, FC Eqs. 11-14)::

    z_i    = norm(H_i) @ [W_alpha | W_beta]                     (p + k + 1,)
    coef_i = [s_alpha, ..., s_alpha, s_beta] * act(z_i) + [static_alpha_i | static_beta_i]
    out_j  = sum_i coef_i[j] H_i             for j < p         the read-out (HC Eq. 3)

and the step after the branch needs ``post_i = coef_i[p + k]`` (``B``) and
``res[:, i] = coef_i[p : p + k]`` (``A_r^T``). ``act`` is ``tanh`` (written with ``exp``) or the
identity; ``norm`` is LayerNorm or RMSNorm over the ``f`` features of a row, with or without
a gain and bias. Static connections skip the weights: ``coef = static`` for every token.

One pass over ``H`` computes the weights: the norm is linear once its statistics are known, so
``z = rstd (sum_d (H - c) gamma W - (mu - c) gamma @ W) + bias @ W`` needs only per-row sums
of ``H - c``, ``(H - c)^2`` and ``(H - c) gamma W``, accumulated together (``c``, the row's
first feature, is a shift that keeps ``E[x^2] - E[x]^2`` from cancelling). The read-out then
needs the weights, so a second pass over the same tokens' ``H`` follows inside the same
program, right after the first (a program's tokens are ``BT k f s`` bytes, 32 KiB per token at
n = 4, d = 4096, bf16): it is served from L2 only while the resident programs' tokens fit there,
so HBM sees ``H`` once (full reuse) to twice (none).

Bytes per token (``s`` bytes per element): forward reads ``k f s`` (to ``2 k f s`` without L2
reuse) and writes ``p f s`` (the branch input) plus ``k (2 (p + k + 1) + 2)`` float32 weights
and statistics. The backward reads ``H``, ``dout`` and the post+res step's ``dH`` and writes
``dH``: ``(3 k + p) f s``, plus a second read of ``H`` and ``dout`` (its second pass, after the
per-token weight gradients are known) that L2 serves only in part: a program's ``BT = 64``
tokens are 2 MiB at n = 4, d = 4096, bf16. Per program, one float32 partial sum
``(p + k + 1, f)`` for the projection's gradient is written and reduced over programs in
PyTorch afterwards (deterministic, no atomics): ``4 (p + k + 1) / (BT k s)`` of the state's
bytes, 4.7 % for HC n = 4 in bf16. All other parameter gradients follow from that sum and from
per-token gradients of the ``k (p + k + 1)`` coefficients, summed in PyTorch.

Layout: ``H`` flattened to ``(T, k, f)`` contiguous, ``k`` padded to a power of two ``KP``. The
forward runs one program per ``BT = 16 / KP`` tokens (16 rows, what ``tl.dot`` needs), looping
over ``f`` in blocks of ``BD``: tiles ``(BT, KP, BD)``. The backward runs one program per
``BT = 64`` tokens (which sets the number of partial sums) and walks them in sub-blocks of
``ROWS = 16`` or ``32`` rows: pass 1 over ``f`` per sub-block, then pass 2 per block of ``BD``
features over the sub-blocks, so that the projection's gradient for those features sums over
all 64 tokens in registers while every tile stays ``(ROWS / KP, KP, BD)``. The projection and
its two gradients are ``tl.dot`` s of the ``(rows, BD)`` tiles with the ``(BD, p + k + 1)``
block of ``W``, coefficients padded to 16, on tensor cores in 3xTF32 (float32 accuracy); the
interpreter and float64 compute them in IEEE arithmetic. ``BD``, ``ROWS`` and the warps are
autotuned among configs that compile without register spills on sm_80 and sm_90 for
``k <= 8`` (``benchmarks/kernel_resources.py``); in the interpreter the blocks are large (each
program runs in Python). Math in float32 (float64 for float64 inputs); the read-out and ``dH``
in the dtype of ``H``.

Layers: ``_readout_fwd`` / ``_readout_bwd`` (kernels) -> :func:`readout_forward` /
:func:`readout_backward` (launchers) -> :class:`ReadOut` (``torch.autograd.Function``) ->
:func:`hyper_pre` (HC) and :func:`hclib.kernels.frac.frac_pre` (FC). The oracle is
:class:`hclib.HyperConnection` itself (its ``mappings`` and forward).

Derived in: notebooks/07_memory_traffic_and_fused_kernels.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from hclib.connection import compute_dtype
from hclib.kernels.dispatch import launch
from hclib.kernels.ops import registered
from hclib.kernels.post_res import cast_rtne

__all__ = [
    "ReadOut",
    "ReadOutConfig",
    "hyper_pre",
    "readout",
    "readout_backward",
    "readout_forward",
]


# ------------------------------------------------------------------------------- kernels
@triton.jit
def _tanh(x):
    """``tanh`` from ``exp`` (the interpreter has no libdevice): odd, saturating, no overflow."""
    e = tl.exp(-2.0 * tl.abs(x))
    r = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -r, r)


@triton.jit
def _readout_fwd(
    H,  # (T, K, F) state
    STATIC,  # (K, NC) [static_alpha | static_beta]
    W,  # (F, NC) [W_alpha | W_beta]                      (DYNAMIC)
    GAMMA,  # (F,) norm gain                               (AFFINE_W)
    GW,  # (NC,) gamma @ W (or the column sums of W)
    BW,  # (NC,) norm bias @ W (or zeros)
    SCALE,  # (NC,) [s_alpha, ..., s_alpha, s_beta]
    OUT,  # (T, P, F) read-out, dtype of H
    COEF,  # (T, K, NC) out: the weights                   (DYNAMIC)
    Z,  # (T, K, NC) out: the projections before act       (DYNAMIC)
    MEAN,  # (T, K) out
    RSTD,  # (T, K) out
    T,
    F,
    eps,
    K: tl.constexpr,
    KP: tl.constexpr,
    P: tl.constexpr,
    PP: tl.constexpr,
    NC: tl.constexpr,
    NCP: tl.constexpr,
    DYNAMIC: tl.constexpr,
    LAYER: tl.constexpr,
    AFFINE_W: tl.constexpr,
    TANH: tl.constexpr,
    ACC: tl.constexpr,
    PREC: tl.constexpr,
    BT: tl.constexpr,
    BD: tl.constexpr,
):
    pid = tl.program_id(0)
    t = (pid * BT + tl.arange(0, BT)).to(tl.int64)  # (BT,) tokens
    i = tl.arange(0, KP)  # rows
    j = tl.arange(0, PP)  # read-out columns
    c = tl.arange(0, NCP)  # coefficients
    t_ok, i_ok, c_ok = t < T, i < K, c < NC
    ti_ok = t_ok[:, None] & i_ok[None, :]  # (BT, KP)
    tic_ok = ti_ok[:, :, None] & c_ok[None, None, :]  # (BT, KP, NCP)
    ic = i[:, None] * NC + c[None, :]  # (KP, NCP) offsets in a (K, NC) block
    static = tl.load(STATIC + ic, mask=i_ok[:, None] & c_ok[None, :], other=0.0).to(ACC)
    if DYNAMIC:
        # pass 1: row sums of H - shift, (H - shift)^2 and (H - shift) gamma W, together
        shift = tl.zeros((BT, KP), dtype=ACC)
        if LAYER:
            shift = tl.load(H + t[:, None] * (K * F) + i[None, :] * F, mask=ti_ok, other=0.0)
            shift = shift.to(ACC)
        s1 = tl.zeros((BT, KP), dtype=ACC)
        s2 = tl.zeros((BT, KP), dtype=ACC)
        u = tl.zeros((BT * KP, NCP), dtype=ACC)
        for d0 in range(0, F, BD):
            d = d0 + tl.arange(0, BD)
            d_ok = d < F
            tid_ok = ti_ok[:, :, None] & d_ok[None, None, :]
            rows = t[:, None, None] * (K * F) + i[None, :, None] * F + d[None, None, :]
            h = tl.load(H + rows, mask=tid_ok, other=0.0).to(ACC)  # (BT, KP, BD)
            h = tl.where(tid_ok, h - shift[:, :, None], 0.0)
            s1 += tl.sum(h, axis=2)
            s2 += tl.sum(h * h, axis=2)
            if AFFINE_W:
                h = h * tl.load(GAMMA + d, mask=d_ok, other=0.0).to(ACC)[None, None, :]
            w_ok = d_ok[:, None] & c_ok[None, :]
            w = tl.load(W + d[:, None] * NC + c[None, :], mask=w_ok, other=0.0).to(ACC)
            u += tl.dot(tl.reshape(h, (BT * KP, BD)), w, input_precision=PREC)  # (BT KP, NCP)
        u = tl.reshape(u, (BT, KP, NCP))
        gw = tl.load(GW + c, mask=c_ok, other=0.0).to(ACC)
        bw = tl.load(BW + c, mask=c_ok, other=0.0).to(ACC)
        m1 = s1 / F  # mean of H - shift
        if LAYER:
            var = tl.maximum(s2 / F - m1 * m1, 0.0)
            mean = shift + m1
            u = u - m1[:, :, None] * gw[None, None, :]  # sum_d (H - mu) gamma W
        else:
            var = s2 / F  # mean square (RMSNorm)
            mean = tl.zeros((BT, KP), dtype=ACC)
        rstd = 1.0 / tl.sqrt(var + eps)
        z = rstd[:, :, None] * u + bw[None, None, :]  # norm(H_i) @ W  (BT, KP, NCP)
        a = _tanh(z) if TANH else z
        scale = tl.load(SCALE + c, mask=c_ok, other=0.0).to(ACC)
        coef = scale[None, None, :] * a + static[None, :, :]  # (BT, KP, NCP)
        tic = t[:, None, None] * (K * NC) + ic[None, :, :]
        tl.store(COEF + tic, coef, mask=tic_ok)
        tl.store(Z + tic, z, mask=tic_ok)
        tl.store(MEAN + t[:, None] * K + i[None, :], mean, mask=ti_ok)
        tl.store(RSTD + t[:, None] * K + i[None, :], rstd, mask=ti_ok)
    else:
        coef = tl.zeros((BT, KP, NCP), dtype=ACC) + static[None, :, :]
    # the read-out weights, coef[:, :, :P]  (BT, KP, PP)
    is_pre = c[None, None, None, :] == j[None, None, :, None]  # column c is read-out j
    pre = tl.sum(tl.where(is_pre, coef[:, :, None, :], 0.0), axis=3)  # (BT, KP, PP)
    # pass 2: out_j = sum_i coef_i[j] H_i (the same tokens' H again: from L2 if still there)
    for d0 in range(0, F, BD):
        d = d0 + tl.arange(0, BD)
        d_ok = d < F
        td_ok = t_ok[:, None] & d_ok[None, :]
        tid_ok = ti_ok[:, :, None] & d_ok[None, None, :]
        rows = t[:, None, None] * (K * F) + i[None, :, None] * F + d[None, None, :]
        h = tl.load(H + rows, mask=tid_ok, other=0.0).to(ACC)  # (BT, KP, BD)
        out = tl.sum(pre[:, :, :, None] * h[:, :, None, :], axis=1)  # (BT, PP, BD)
        outs = t[:, None, None] * (P * F) + j[None, :, None] * F + d[None, None, :]
        out_ok = td_ok[:, None, :] & (j < P)[None, :, None]
        tl.store(OUT + outs, cast_rtne(out, OUT.dtype.element_ty), mask=out_ok)


@triton.jit
def _readout_bwd(
    GOUT,  # (T, P, F) gradient of the read-out
    GHP,  # (T, K, F) gradient of H from the post+res step                 (HAS_GHP)
    GIN,  # (T, K, NC) gradient of the weights from the post+res step     (HAS_GIN)
    H,  # (T, K, F)
    STATIC,  # (K, NC)
    COEF,  # (T, K, NC)                                                   (DYNAMIC)
    Z,  # (T, K, NC)                                                      (DYNAMIC)
    MEAN,  # (T, K)
    RSTD,  # (T, K)
    W,  # (F, NC)
    GAMMA,  # (F,)                                                        (AFFINE_W)
    GW,  # (NC,)
    BW,  # (NC,)
    SCALE,  # (NC,)
    GH,  # (T, K, F) out, dtype of H
    GCOEF,  # (T, K, NC) out: gradient of the weights, read-out included
    GZ,  # (T, K, NC) out: gradient of the projections                    (DYNAMIC)
    GC,  # (T, 2, K) out: the norm's two row constants c1, c2             (DYNAMIC)
    SPART,  # (programs, NC, F) out: sum over the program's rows of xhat g_z (DYNAMIC)
    T,
    F,
    K: tl.constexpr,
    KP: tl.constexpr,
    P: tl.constexpr,
    PP: tl.constexpr,
    NC: tl.constexpr,
    NCP: tl.constexpr,
    DYNAMIC: tl.constexpr,
    LAYER: tl.constexpr,
    AFFINE_W: tl.constexpr,
    TANH: tl.constexpr,
    HAS_GHP: tl.constexpr,
    HAS_GIN: tl.constexpr,
    ACC: tl.constexpr,
    PREC: tl.constexpr,
    BT: tl.constexpr,
    ROWS: tl.constexpr,
    BD: tl.constexpr,
):
    # one program per BT tokens, walked in sub-blocks of BS = ROWS / KP tokens: every tile is
    # (BS, KP, BD) or (ROWS, NCP), whatever BT, while the partial sums stay one per BT tokens
    BS: tl.constexpr = ROWS // KP
    tl.static_assert(BT % BS == 0, "sub-blocks must tile the program's tokens")
    pid = tl.program_id(0).to(tl.int64)
    i = tl.arange(0, KP)
    c = tl.arange(0, NCP)
    i_ok, c_ok = i < K, c < NC
    ic = i[:, None] * NC + c[None, :]
    # pass 1, per sub-block: the weights' gradient, d coef_i[j] = sum_d dout_j H_i (j < P),
    # then (dynamic) the projections' gradient and the norm's row constants; the loops over j
    # keep every tile (BS, KP, BD), whatever P (FC has P = m)
    for s0 in range(0, BT, BS):
        t = pid * BT + s0 + tl.arange(0, BS)  # (BS,) tokens
        t_ok = t < T
        ti_ok = t_ok[:, None] & i_ok[None, :]
        tic_ok = ti_ok[:, :, None] & c_ok[None, None, :]
        tic = t[:, None, None] * (K * NC) + ic[None, :, :]
        if HAS_GIN:
            g_coef = tl.load(GIN + tic, mask=tic_ok, other=0.0).to(ACC)
        else:
            g_coef = tl.zeros((BS, KP, NCP), dtype=ACC)
        for d0 in range(0, F, BD):
            d = d0 + tl.arange(0, BD)
            d_ok = d < F
            td_ok = t_ok[:, None] & d_ok[None, :]
            tid_ok = ti_ok[:, :, None] & d_ok[None, None, :]
            rows = t[:, None, None] * (K * F) + i[None, :, None] * F + d[None, None, :]
            h = tl.load(H + rows, mask=tid_ok, other=0.0).to(ACC)  # (BS, KP, BD)
            for jj in range(P):  # a loop, not unrolled: FC has P = m columns
                go = tl.load(
                    GOUT + t[:, None] * (P * F) + jj * F + d[None, :], mask=td_ok, other=0.0
                )
                col = tl.sum(h * go.to(ACC)[:, None, :], axis=2)  # (BS, KP)
                g_coef += tl.where(c[None, None, :] == jj, col[:, :, None], 0.0)
        tl.store(GCOEF + tic, g_coef, mask=tic_ok)
        if DYNAMIC:
            z = tl.load(Z + tic, mask=tic_ok, other=0.0).to(ACC)
            scale = tl.load(SCALE + c, mask=c_ok, other=0.0).to(ACC)
            g_z = g_coef * scale[None, None, :]
            if TANH:
                a = _tanh(z)
                g_z = g_z * (1.0 - a * a)
            tl.store(GZ + tic, g_z, mask=tic_ok)
            gw = tl.load(GW + c, mask=c_ok, other=0.0).to(ACC)
            bw = tl.load(BW + c, mask=c_ok, other=0.0).to(ACC)
            # the norm's backward needs mean_d(dxhat) and mean_d(dxhat xhat), both closed
            # forms: dxhat = gamma (W g_z), so the sums are g_z . (gamma @ W) and
            # g_z . (z - bias @ W)
            c1 = tl.sum(g_z * gw[None, None, :], axis=2) / F  # (BS, KP)
            c2 = tl.sum(g_z * (z - bw[None, None, :]), axis=2) / F
            tc = t[:, None] * (2 * K) + i[None, :]
            tl.store(GC + tc, c1, mask=ti_ok)
            tl.store(GC + tc + K, c2, mask=ti_ok)
    if DYNAMIC:
        tl.debug_barrier()  # GZ and GC are read back below, by other threads of this program
    # pass 2, per block of BD features, per sub-block: dH_i = sum_j coef_i[j] dout_j
    # + dH_i(post+res) + the norm's backward; the projection's gradient sum_t xhat g_z for the
    # block's features is accumulated over the program's tokens in registers
    for d0 in range(0, F, BD):
        d = d0 + tl.arange(0, BD)
        d_ok = d < F
        if DYNAMIC:
            w_ok = c_ok[:, None] & d_ok[None, :]
            w_t = tl.load(W + d[None, :] * NC + c[:, None], mask=w_ok, other=0.0).to(ACC)
            s_c = tl.zeros((NCP, BD), dtype=ACC)
            if AFFINE_W:
                gamma = tl.load(GAMMA + d, mask=d_ok, other=0.0).to(ACC)
        for s0 in range(0, BT, BS):
            t = pid * BT + s0 + tl.arange(0, BS)
            t_ok = t < T
            ti_ok = t_ok[:, None] & i_ok[None, :]
            td_ok = t_ok[:, None] & d_ok[None, :]
            tid_ok = ti_ok[:, :, None] & d_ok[None, None, :]
            rows = t[:, None, None] * (K * F) + i[None, :, None] * F + d[None, None, :]
            if HAS_GHP:
                g_h = tl.load(GHP + rows, mask=tid_ok, other=0.0).to(ACC)
            else:
                g_h = tl.zeros((BS, KP, BD), dtype=ACC)
            for jj in range(P):  # sum_j coef_i[j] dout_j, a loop (not unrolled)
                go = tl.load(
                    GOUT + t[:, None] * (P * F) + jj * F + d[None, :], mask=td_ok, other=0.0
                )
                if DYNAMIC:
                    coef_j = COEF + t[:, None] * (K * NC) + i[None, :] * NC + jj
                    p_j = tl.load(coef_j, mask=ti_ok, other=0.0)  # (BS, KP)
                else:
                    p_j = tl.load(STATIC + i * NC + jj, mask=i_ok, other=0.0)[None, :]  # (1, KP)
                g_h += p_j.to(ACC)[:, :, None] * go.to(ACC)[:, None, :]
            if DYNAMIC:
                tk = t[:, None] * K + i[None, :]
                mean = tl.load(MEAN + tk, mask=ti_ok, other=0.0).to(ACC)
                rstd = tl.load(RSTD + tk, mask=ti_ok, other=0.0).to(ACC)
                tc = t[:, None] * (2 * K) + i[None, :]
                c1 = tl.load(GC + tc, mask=ti_ok, other=0.0)
                c2 = tl.load(GC + tc + K, mask=ti_ok, other=0.0)
                tic = t[:, None, None] * (K * NC) + ic[None, :, :]
                tic_ok = ti_ok[:, :, None] & c_ok[None, None, :]
                g_z2 = tl.reshape(tl.load(GZ + tic, mask=tic_ok, other=0.0), (ROWS, NCP))
                h = tl.load(H + rows, mask=tid_ok, other=0.0).to(ACC)
                if LAYER:
                    xhat = (h - mean[:, :, None]) * rstd[:, :, None]
                else:
                    xhat = h * rstd[:, :, None]
                xhat = tl.where(tid_ok, xhat, 0.0)
                g_hn = tl.dot(g_z2, w_t, input_precision=PREC)  # W g_z  (ROWS, BD)
                g_hn = tl.reshape(g_hn, (BS, KP, BD))
                xhat2 = tl.reshape(xhat, (ROWS, BD))
                s_c += tl.dot(tl.trans(g_z2), xhat2, input_precision=PREC)  # (NCP, BD)
                if AFFINE_W:
                    g_hn = g_hn * gamma[None, None, :]
                if LAYER:
                    g_h += rstd[:, :, None] * (g_hn - c1[:, :, None] - xhat * c2[:, :, None])
                else:
                    g_h += rstd[:, :, None] * (g_hn - xhat * c2[:, :, None])
            tl.store(GH + rows, cast_rtne(g_h, GH.dtype.element_ty), mask=tid_ok)
        if DYNAMIC:
            tl.store(SPART + pid * (NC * F) + c[:, None] * F + d[None, :], s_c, mask=w_ok)


# BT is set by the launcher: BT k = 16 rows for tl.dot in the forward; in the backward BT
# sizes the buffer of partial sums, and ROWS = BS k rows of BS tokens make one sub-block.
# The configs the rules below keep compile without register spills for k <= 8 on sm_80 and
# sm_90, in bf16 and float32 (checked by benchmarks/kernel_resources.py).
def _prune_forward(configs, named_args, **meta):
    """Dynamic weights: feature blocks of at most 64 (at 128, pass 1's tile and its ``tl.dot``
    spill registers); static read-outs keep every config."""
    if meta.get("DYNAMIC", True):
        return [c for c in configs if c.kwargs["BD"] <= 64] or configs[:1]
    return configs


def _prune_backward(configs, named_args, **meta):
    """Keep sub-blocks of at least one token and at most the program's ``BT`` tokens; for 8
    read-out columns or more (FC at m = 8) with a float32 state, feature blocks of at most 32
    (ptxas spills a few bytes at 64)."""
    KP, BT, P = meta.get("KP", 1), meta.get("BT", GPU_BACKWARD_TOKENS), meta.get("P", 1)
    size = named_args["H"].element_size() if "H" in named_args else 2
    kept = [c for c in configs if KP <= c.kwargs["ROWS"] <= KP * BT]
    if P >= 8 and size >= 4:
        kept = [c for c in kept if c.kwargs["BD"] * c.kwargs["ROWS"] <= 512 * c.num_warps // 4]
    return kept or configs[:1]


_readout_fwd_tuned = triton.autotune(
    configs=[triton.Config({"BD": bd}, num_warps=w) for bd, w in [(32, 4), (64, 8), (128, 8)]],
    key=["F", "K", "P", "DYNAMIC"],
    prune_configs_by={"early_config_prune": _prune_forward},
)(_readout_fwd)
_readout_bwd_tuned = triton.autotune(
    configs=[
        triton.Config({"ROWS": rows, "BD": bd}, num_warps=w)
        for rows, bd, w in [(16, 32, 4), (16, 64, 4), (32, 64, 8)]
    ],
    key=["F", "K", "P", "DYNAMIC"],
    prune_configs_by={"early_config_prune": _prune_backward},
)(_readout_bwd)

#: tokens per program of the backward on a GPU: more tokens, fewer partial sums to write
#: (``4 (p + k + 1) / (BT k s)`` of the state's bytes: 4.7 % for HC n = 4 in bf16)
GPU_BACKWARD_TOKENS = 64


def gpu_forward_meta(K: int, F: int) -> dict:
    """The forward's launcher-set constexprs on a GPU (``BT``: ``tl.dot`` needs 16 rows)."""
    return {"BT": max(1, 16 // triton.next_power_of_2(K))}


def gpu_backward_meta(K: int, F: int) -> dict:
    """The backward's launcher-set constexprs on a GPU (``ROWS`` and ``BD`` are tuned)."""
    return {"BT": GPU_BACKWARD_TOKENS}


# ----------------------------------------------------------------------------- launchers
class ReadOutConfig(NamedTuple):
    """The constant part of a read-out: ``P`` read-out columns, the norm and the activation."""

    P: int  #: read-out columns (HC: 1, FC: m)
    layer: bool  #: LayerNorm (True) or RMSNorm (False)
    eps: float  #: the norm's epsilon
    tanh: bool  #: tanh on the projections


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _precision(acc: torch.dtype, gpu: bool) -> str:
    """``tl.dot``'s precision: 3xTF32 on a GPU's tensor cores (float32 accuracy: the products'
    error is about 2^-22 relative), plain IEEE products in float64 and in the interpreter."""
    return "tf32x3" if gpu and acc != torch.float64 else "ieee"


def _cpu_block_d(F: int) -> int:
    return min(triton.next_power_of_2(F), 128)


def _cpu_block_t(T: int, KP: int, BD: int) -> int:
    """Tokens per program in the interpreter: few, large programs (each runs in Python)."""
    return max(1, min(triton.next_power_of_2(T), 16384 // (KP * BD)))


def _meta(
    K: int, NC: int, cfg: ReadOutConfig, dynamic: bool, affine_w: bool, acc, gpu: bool
) -> dict:
    P = cfg.P
    return dict(
        K=K,
        KP=triton.next_power_of_2(K),
        P=P,
        PP=triton.next_power_of_2(P),
        NC=NC,
        NCP=max(16, triton.next_power_of_2(NC)),  # tl.dot needs 16 on a GPU
        DYNAMIC=dynamic,
        LAYER=cfg.layer,
        AFFINE_W=affine_w,
        TANH=cfg.tanh,
        ACC=_acc(acc),
        PREC=_precision(acc, gpu),
    )


def _norm_folds(W, gamma, bias):
    """``gamma @ W`` and ``bias @ W``, ``(NC,)`` each (the column sums and zeros without them)."""
    gw = W.sum(0) if gamma is None else gamma @ W
    bw = torch.zeros_like(gw) if bias is None else bias @ W
    return gw.contiguous(), bw.contiguous()


def readout_forward(H, static, W, gamma, bias, scale, cfg: ReadOutConfig):
    """Launch the forward kernel on a flat, contiguous state.

    Args:
        H: ``(T, k, f)``.
        static: ``(k, NC)`` = ``[static_alpha | static_beta]`` with ``NC = p + k + 1``.
        W: ``(f, NC)`` = ``[W_alpha | W_beta]``, or None for a static connection (then
            ``gamma``, ``bias`` and ``scale`` are None too).
        gamma, bias: the norm's gain and bias ``(f,)``, or None.
        scale: ``(NC,)`` = ``[s_alpha] * (p + k) + [s_beta]``.
        cfg: see :class:`ReadOutConfig`.

    Returns:
        ``(out, coef, z, mean, rstd)``: the read-out ``(T, p, f)`` in the dtype of ``H``; for
        dynamic weights the weights and projections ``(T, k, NC)`` and the norm's statistics
        ``(T, k)`` in the compute dtype (None for static ones).
    """
    T, K, F = H.shape
    NC = static.shape[1]
    dynamic = W is not None
    out = torch.empty((T, cfg.P, F), dtype=H.dtype, device=H.device)
    coef = z = mean = rstd = None
    if dynamic:
        coef = torch.empty((T, K, NC), dtype=static.dtype, device=H.device)
        z = torch.empty_like(coef)
        mean = torch.empty((T, K), dtype=static.dtype, device=H.device)
        rstd = torch.empty_like(mean)
        gw, bw = _norm_folds(W, gamma, bias)
    if T == 0:
        return out, coef, z, mean, rstd
    meta = _meta(K, NC, cfg, dynamic, gamma is not None, static.dtype, H.is_cuda)
    dummy = static
    args = (H, static, W if dynamic else dummy, dummy if gamma is None else gamma)
    args += (gw, bw, scale) if dynamic else (dummy, dummy, dummy)
    args += (out,) + ((coef, z, mean, rstd) if dynamic else (dummy,) * 4)
    args += (T, F, cfg.eps)
    BD = _cpu_block_d(F)
    BT = gpu_forward_meta(K, F)["BT"] if H.is_cuda else _cpu_block_t(T, meta["KP"], BD)
    launch(
        _readout_fwd,
        _readout_fwd_tuned,
        lambda m: (triton.cdiv(T, BT),),
        args,
        H.is_cuda,
        {"BD": BD},
        BT=BT,
        **meta,
    )
    return out, coef, z, mean, rstd


def readout_backward(g_out, g_hp, g_coef, saved, cfg: ReadOutConfig):
    """Launch the backward kernel and reduce the parameter gradients.

    Args:
        g_out: gradient of the read-out ``(T, p, f)`` (None: zero).
        g_hp: gradient of ``H`` from the post+res step ``(T, k, f)`` (None: zero).
        g_coef: gradient of the weights ``(T, k, NC)`` from the post+res step (None: zero).
        saved: ``(H, static, W, gamma, bias, scale, coef, z, mean, rstd)``.

    Returns:
        ``(dH, dstatic, dW, dgamma, dbias, dscale)``, None where the input was None.
    """
    H, static, W, gamma, bias, scale, coef, z, mean, rstd = saved
    T, K, F = H.shape
    NC = static.shape[1]
    dynamic = W is not None
    acc = static.dtype
    if g_out is None:
        g_out = torch.zeros((T, cfg.P, F), dtype=H.dtype, device=H.device)
    g_out = g_out.contiguous()
    g_H = torch.empty_like(H)
    g_coef_all = torch.zeros((T, K, NC), dtype=acc, device=H.device)
    g_static = torch.zeros_like(static)
    if T == 0:
        if g_hp is not None:
            g_H = g_hp.to(H.dtype)
        if not dynamic:
            return g_H, g_static, None, None, None, None
        zero = torch.zeros_like
        g_gamma = None if gamma is None else zero(gamma)
        return g_H, g_static, zero(W), g_gamma, None if bias is None else zero(bias), zero(scale)
    on_gpu = H.is_cuda
    BD = _cpu_block_d(F)
    meta = _meta(K, NC, cfg, dynamic, gamma is not None, acc, on_gpu)
    BT = gpu_backward_meta(K, F)["BT"] if on_gpu else _cpu_block_t(T, meta["KP"], BD)
    # the interpreter walks each program's tokens in 4 sub-blocks, as a GPU walks its 64
    cpu_meta = {"BD": BD, "ROWS": meta["KP"] * max(1, BT // 4)}
    programs = triton.cdiv(T, BT)
    dummy = static
    if dynamic:
        g_z = torch.empty((T, K, NC), dtype=acc, device=H.device)
        g_c = torch.empty((T, 2, K), dtype=acc, device=H.device)
        s_part = torch.empty((programs, NC, F), dtype=acc, device=H.device)
        gw, bw = _norm_folds(W, gamma, bias)
    args = (g_out, dummy if g_hp is None else g_hp.contiguous())
    args += (dummy if g_coef is None else g_coef.contiguous(), H, static)
    if dynamic:
        args += (coef, z, mean, rstd, W, dummy if gamma is None else gamma, gw, bw, scale)
        args += (g_H, g_coef_all, g_z, g_c, s_part, T, F)
    else:
        args += (dummy,) * 9 + (g_H, g_coef_all, dummy, dummy, dummy, T, F)
    launch(
        _readout_bwd,
        _readout_bwd_tuned,
        lambda m: (programs,),
        args,
        on_gpu,
        cpu_meta,
        BT=BT,
        HAS_GHP=g_hp is not None,
        HAS_GIN=g_coef is not None,
        **meta,
    )
    g_static = g_coef_all.sum(0)  # (k, NC)
    if not dynamic:
        return g_H, g_static, None, None, None, None
    S = s_part.sum(0).T  # sum over tokens and rows of xhat g_z  (f, NC)
    G = g_z.sum((0, 1))  # sum over tokens and rows of g_z  (NC,)
    # z = (xhat gamma + bias) @ W: every parameter gradient is a fold of S and G
    g_W = S if gamma is None else gamma[:, None] * S
    if bias is not None:
        g_W = g_W + bias[:, None] * G[None, :]
    g_gamma = None if gamma is None else (W * S).sum(1)
    g_bias = None if bias is None else W @ G
    a = torch.tanh(z) if cfg.tanh else z
    g_scale = (g_coef_all * a).sum((0, 1))  # (NC,)
    return g_H, g_static, g_W, g_gamma, g_bias, g_scale


# ----------------------------------------------------------------------- autograd and API
@registered  # a torch.library op under torch.compile (hclib.kernels.ops)
class ReadOut(torch.autograd.Function):
    """The read-out and weights of :func:`readout_forward`, with the fused backward.

    Returns ``(out, H, coef)`` (dynamic) or ``(out, H)`` (static). The state comes back
    unchanged as an output so that the post+res step can take it from here: its gradient then
    arrives in this backward, which adds it to the read-out's inside the kernel instead of
    leaving a separate addition of two state-sized gradients to autograd.
    """

    @staticmethod
    def forward(ctx, H, static, W, gamma, bias, scale, cfg):
        out, coef, z, mean, rstd = readout_forward(H, static, W, gamma, bias, scale, cfg)
        ctx.cfg = cfg
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(H, static, W, gamma, bias, scale, coef, z, mean, rstd)
        return (out, H) if W is None else (out, H, coef)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out, g_hp, g_coef=None):
        grads = readout_backward(g_out, g_hp, g_coef, ctx.saved_tensors, ctx.cfg)
        return (*grads, None)


def readout(
    H: torch.Tensor,
    P: int,
    static_alpha: torch.Tensor,
    static_beta: torch.Tensor,
    dynamic_alpha: torch.Tensor | None = None,
    dynamic_beta: torch.Tensor | None = None,
    alpha_scale: torch.Tensor | None = None,
    beta_scale: torch.Tensor | None = None,
    norm_weight: torch.Tensor | None = None,
    norm_bias: torch.Tensor | None = None,
    *,
    norm: str = "layer",
    eps: float | None = 1e-5,
    tanh: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The read-out of an alpha-beta connection (HC or FC) on a flat state ``(T, k, f)``.

    Args:
        H: ``(T, k, f)``.
        P: read-out columns ``p`` (HC: 1, FC: ``m``).
        static_alpha: ``(k, p + k)``; static_beta: ``(k,)``.
        dynamic_alpha: ``(f, p + k)``; dynamic_beta: ``(f,)``; alpha_scale, beta_scale:
            ``(1,)``; all None for a static connection.
        norm_weight, norm_bias: the norm's gain and bias ``(f,)``, or None.
        norm: ``"layer"`` or ``"rms"``; eps: its epsilon (None: the dtype's machine epsilon,
            as :class:`torch.nn.RMSNorm`); tanh: tanh on the projections.

    Returns:
        ``(out, post, res, H_pass)``: the read-out ``(T, p, f)`` in the dtype of ``H``;
        ``post`` ``(T, k)`` and ``res`` ``(T, k, k)`` (``(k,)`` and ``(k, k)`` when static) in
        the compute dtype; and ``H`` routed through the op, to be given to the post+res step
        in place of ``H`` (see :class:`ReadOut`).
    """
    T, K, F = H.shape
    acc = compute_dtype(H.dtype, static_alpha.dtype)
    static = torch.cat([static_alpha, static_beta[:, None]], dim=1).to(acc)  # (k, NC)
    if eps is None:
        eps = torch.finfo(acc).eps
    cfg = ReadOutConfig(P=P, layer=norm == "layer", eps=float(eps), tanh=bool(tanh))
    if dynamic_alpha is None:
        out, H_pass = ReadOut.apply(H, static.contiguous(), None, None, None, None, cfg)
        return out, static[:, P + K], static[:, P : P + K].T, H_pass
    W = torch.cat([dynamic_alpha, dynamic_beta[:, None]], dim=1).to(acc)  # (f, NC)
    scale = torch.cat([alpha_scale.expand(P + K), beta_scale.reshape(1)]).to(acc)  # (NC,)
    gamma = None if norm_weight is None else norm_weight.to(acc).contiguous()
    bias = None if norm_bias is None else norm_bias.to(acc).contiguous()
    out, H_pass, coef = ReadOut.apply(
        H, static.contiguous(), W.contiguous(), gamma, bias, scale.contiguous(), cfg
    )
    return out, coef[..., P + K], coef[..., P : P + K].transpose(-1, -2), H_pass


def hyper_pre(
    H: torch.Tensor,
    static_alpha: torch.Tensor,
    static_beta: torch.Tensor,
    dynamic_alpha: torch.Tensor | None = None,
    dynamic_beta: torch.Tensor | None = None,
    alpha_scale: torch.Tensor | None = None,
    beta_scale: torch.Tensor | None = None,
    norm_weight: torch.Tensor | None = None,
    norm_bias: torch.Tensor | None = None,
    *,
    norm: str = "layer",
    eps: float | None = 1e-5,
    tanh: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """HC's fused read-out: the branch input ``h0 = A_m^T H`` (Eq. 3) and the per-token
    ``post = B`` and ``res = A_r^T`` (Eqs. 10-13), differentiable.

    The parameters are those of :class:`hclib.HyperConnection` (Algorithm 2 layout):
    ``static_alpha`` ``(n, n+1)`` = ``[A_m | A_r]``, ``static_beta`` ``(n,)``; for dynamic HC
    also ``dynamic_alpha`` ``(d, n+1)``, ``dynamic_beta`` ``(d,)``, ``alpha_scale`` and
    ``beta_scale`` ``(1,)``, and the norm's gain and bias ``(d,)`` when it has them.

    Args:
        H: state ``(..., n, d)``; leading dims are flattened to tokens.
        norm, eps, tanh: as :class:`hclib.HyperConnection`.

    Returns:
        ``(h0, post, res, H_pass)``: ``h0`` ``(..., d)`` in the dtype of ``H``; ``post``
        ``(..., n)`` and ``res`` ``(..., n, n)`` in the compute dtype (float32, or float64),
        without leading dims for static HC; ``H_pass`` is ``H`` routed through the op: give
        it, not ``H``, to :func:`hclib.kernels.post_res.post_res` so that both gradients of
        the state are summed inside the fused backward.

    Runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1``.
    """
    *batch, n, d = H.shape
    T = math.prod(batch)
    out, post, res, H_pass = readout(
        H.reshape(T, n, d).contiguous(),
        1,
        static_alpha,
        static_beta,
        dynamic_alpha,
        dynamic_beta,
        alpha_scale,
        beta_scale,
        norm_weight,
        norm_bias,
        norm=norm,
        eps=eps,
        tanh=tanh,
    )
    if dynamic_alpha is not None:
        post, res = post.reshape(*batch, n), res.reshape(*batch, n, n)
    return out.reshape(*batch, d), post, res, H_pass.reshape(H.shape)
