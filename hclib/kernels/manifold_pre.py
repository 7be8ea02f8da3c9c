"""mHC's read-out, fused: RMSNorm, projection, sigmoid / 2 sigmoid / Sinkhorn-Knopp and ``h0``.

The math, per token (mHC Eqs. 7-8 in the reordered form of Eqs. 14-16; the oracle is
:class:`hclib.ManifoldHyperConnection` with ``impl="torch"``)::

    x   = vec(H)                                   (n d,)  stream 0 first
    p   = x phi                                    (K,)    K = n^2 + 2n, one matmul (Eq. 14)
    r   = 1 / sqrt(mean(x^2) + eps)                        the RMSNorm, applied after (Eq. 15)
    z   = r p                                      (K,)    = RMSNorm(x) phi
    l   = alpha * z + b                            (K,)    alpha_pre / post / res per segment
    pre = sigmoid(l_pre),  post = 2 sigmoid(l_post),  res = SK(mat(l_res))        (Eq. 8)
    h0  = sum_i pre_i H_i                          (d,)    the branch input

Backward, given ``dh0``, ``dpost``, ``dres`` and the gradient ``dH_pass`` that reached the state
through ``post_res`` (see below)::

    dpre_i = <dh0, H_i>                 dl = sigmoid' and SK backward (recomputed in registers)
    dz  = alpha * dl                    dalpha = sum_t <dl, z> per segment,  db = sum_t dl
    dphi = sum_t x_t (r_t dz_t)^T       (n d, K): a matmul reduced over tokens
    dH   = pre (x) dh0 + mat(r dz phi^T) - (<dz, z> r^2 / (n d)) x + dH_pass

Kernels and passes (``s`` bytes per state element, 2 for bf16; small per-token vectors of
``O(n^2)`` floats left out):

* forward, one program per ``BT = 64`` tokens: pass 1 reads the token block's ``x`` once for
  both ``p`` (``tl.dot`` against ``phi``, zero-padded to ``KP >= 16`` columns, in ``(BC, KP)``
  tiles of whole rows: every row of ``phi`` serves 64 tokens) and ``sum x^2``; the epilogue
  computes the coefficients (Sinkhorn in registers), then pass 2 reads ``H`` again for ``h0``
  (it needs ``pre`` first). The second read is of the same ``BT n d s`` bytes (2 MiB at n = 4,
  d = 4096, bf16) a moment later; with a hundred or more such programs resident the working set
  exceeds an H100's 50 MB L2, so count it as a second read from memory: the forward moves
  ``n d s`` (floor, full L2 reuse) to ``2 n d s`` bytes per token and writes ``d s`` for ``h0``.
* backward, kernel 1, one program per ``BT`` tokens: reads ``H`` and ``dh0`` for ``dpre``,
  then the coefficient gradients in registers (Sinkhorn's backward recomputes the rounds; no
  iterate is stored); writes ``r dz`` and a few scalars per token: ``n d s + d s`` bytes.
* backward, kernel 2, one program per ``(BD features of one stream, token split)``: reads ``H``,
  ``dH_pass`` and ``dh0``, writes ``dH`` (``3 n d s + d s`` bytes per token when the ``n``
  programs of the same features, which are neighbours in the grid, share ``dh0`` through L2),
  and accumulates ``dphi`` for its ``BD`` rows of ``phi`` across its tokens with ``tl.dot``
  (per-split partial sums, added in PyTorch: deterministic, no atomics). Rows are read in
  segments of ``BD s >= 128`` bytes (``BD >= 64`` in bf16).

Against the floor of :mod:`hclib.traffic` (per token, in elements: ``pre`` reads ``n d`` and
writes ``d``; its backward reads ``dh0``, ``H`` and the partial ``dH``, ``(2n + 1) d``, and
writes ``dH``, ``n d``), the read-out moves ``n d`` extra in the forward when pass 2 misses L2,
and ``(n + 1) d`` extra in the backward (kernel 1's read of ``H`` and ``dh0``: ``dpre`` must be
complete before any ``dH`` can be written). Per layer with ``post_res`` at ``n = 4``: 41 d of
floor, 46 d to 50 d moved.

The state gradient from ``post_res`` (``res^T dH'``) and the one from the read-out would meet
in autograd's accumulation, an extra read-read-write of the state. :func:`manifold_pre`
therefore returns ``H_pass``, ``H`` itself as a view, to be handed to ``post_res``: the
gradient that reaches ``H_pass`` is added inside backward kernel 2, in the same pass that
writes ``dH``.

Layout: ``H`` ``(T, n, d)`` contiguous, read as ``(T, n d)`` in pass 1 (coalesced chunks of
``BC`` columns) and as one ``(BT, BD)`` tile per stream in pass 2; ``phi`` ``(n d, K)``
row-major (the forward reads a copy padded to ``(n d, KP)``; ``K`` and ``KP`` are
constexprs); the saved ``z`` ``(T, K)`` and ``r`` ``(T,)`` in float32
(float64 when the module or the input is float64). Matmuls accumulate in float32: on a GPU a
bf16 state meets ``phi`` split into two bf16 halves (``phi = hi + lo``, about 16 mantissa
bits; the halves are cached with the weight and remade only when its version changes), a
float32 state uses 3xTF32; the interpreter computes every ``tl.dot`` in float32 (or
float64). Block sizes are autotuned on a GPU (not in float64) and fixed in the interpreter.

Layers: ``_manifold_pre_*`` kernels -> :func:`manifold_pre_forward` /
:func:`manifold_pre_backward` (launchers) -> :class:`ManifoldPre` (autograd) ->
:func:`manifold_pre` -> ``ManifoldHyperConnection(impl="triton")``.

Derived in: notebooks/06_manifold_constrained_hyper_connections (the math) and
notebooks/07_memory_traffic_and_fused_kernels (the kernel).
"""

from __future__ import annotations

import functools
import weakref

import torch
import triton
import triton.language as tl

from hclib.connection import compute_dtype
from hclib.kernels.dispatch import launch
from hclib.kernels.ops import registered
from hclib.kernels.sinkhorn import (
    backward_segment,
    padded_rate,
    sinkhorn_tile_backward,
    sinkhorn_tile_exact,
)

__all__ = [
    "ManifoldPre",
    "clear_phi_cache",
    "manifold_pre",
    "manifold_pre_backward",
    "manifold_pre_forward",
]


# ------------------------------------------------------------------------------ helpers
@triton.jit
def _sigmoid(v):
    return 1.0 / (1.0 + tl.exp(-v))


@triton.jit
def _store_value(x, ROUND: tl.constexpr):
    """``x`` ready to be cast to the state's dtype: with ``ROUND``, already rounded to the
    nearest bfloat16 (ties to even), as a GPU's conversion does; the interpreter's own cast
    truncates, which would bias every bf16 ``h0`` and ``dH`` it writes."""
    if ROUND:
        bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16  # round the low 16 bits away
        x = bits.to(tl.float32, bitcast=True)
    return x


@triton.jit
def _logits(Z, BIAS, ALPHA, t, t_ok, K: tl.constexpr, N: tl.constexpr, NP: tl.constexpr):
    """The token block's ``z`` pieces and logits ``l = alpha z + b``: pre and post ``(BT, NP)``,
    res ``(BT, NP, NP)``; padding (streams ``>= n``, tokens ``>= T``) reads ``z = 0``."""
    i = tl.arange(0, NP)
    j = tl.arange(0, NP)
    i_ok = i < N
    ij_ok = i_ok[:, None] & (j < N)[None, :]  # (NP, NP)
    ti_ok = t_ok[:, None] & i_ok[None, :]  # (BT, NP)
    tij_ok = t_ok[:, None, None] & ij_ok[None, :, :]  # (BT, NP, NP)
    row = t[:, None] * K  # (BT, 1)
    z_pre = tl.load(Z + row + i[None, :], mask=ti_ok, other=0.0)
    z_post = tl.load(Z + row + N + i[None, :], mask=ti_ok, other=0.0)
    ij = i[:, None] * N + j[None, :]  # (NP, NP): mat() is row-major
    z_res = tl.load(Z + row[:, :, None] + 2 * N + ij[None, :, :], mask=tij_ok, other=0.0)
    b_pre = tl.load(BIAS + i, mask=i_ok, other=0.0)
    b_post = tl.load(BIAS + N + i, mask=i_ok, other=0.0)
    b_res = tl.load(BIAS + 2 * N + ij, mask=ij_ok, other=0.0)
    l_pre = tl.load(ALPHA) * z_pre + b_pre[None, :]  # Eq. 7
    l_post = tl.load(ALPHA + 1) * z_post + b_post[None, :]
    l_res = tl.load(ALPHA + 2) * z_res + b_res[None, :, :]
    return z_pre, z_post, z_res, l_pre, l_post, l_res


# ------------------------------------------------------------------------------ forward
@triton.jit
def _manifold_pre_fwd(
    H,  # (T, N, D) state
    PHI,  # (N D, KP) ACC, zero-padded, or its bf16 high half with SPLIT
    PHI_LO,  # (N D, KP) bf16 low half with SPLIT (else unused)
    BIAS,  # (K,) ACC
    ALPHA,  # (3,) ACC: alpha_pre, alpha_post, alpha_res
    H0,  # (T, D) out, dtype of H
    POST,  # (T, N) out, ACC
    RES,  # (T, N, N) out, ACC
    Z,  # (T, K) out, ACC: RMSNorm(x) phi, saved for backward
    RINV,  # (T,) out, ACC: 1 / rms, saved for backward
    T,
    D,
    K: tl.constexpr,
    eps,
    iters,
    N: tl.constexpr,
    NP: tl.constexpr,
    KP: tl.constexpr,
    SPLIT: tl.constexpr,
    PREC: tl.constexpr,
    ACC: tl.constexpr,
    ROUND: tl.constexpr,
    BT: tl.constexpr,
    BC: tl.constexpr,
    BD: tl.constexpr,
):
    ND = N * D
    t = (tl.program_id(0) * BT + tl.arange(0, BT)).to(tl.int64)  # (BT,) tokens
    t_ok = t < T
    k = tl.arange(0, KP)
    k_ok = k < K

    # pass 1: p = x phi and sum(x^2), one read of the token block
    acc = tl.zeros((BT, KP), dtype=ACC)
    ssq = tl.zeros((BT,), dtype=ACC)
    for c0 in range(0, ND, BC):
        c = c0 + tl.arange(0, BC)  # (BC,) columns of vec(H)
        c_ok = c < ND
        x = tl.load(H + t[:, None] * ND + c[None, :], mask=t_ok[:, None] & c_ok[None, :], other=0.0)
        xa = x.to(ACC)  # (BT, BC)
        ssq += tl.sum(xa * xa, axis=1)
        rows = c[:, None] * KP + k[None, :]  # (BC, KP) rows of phi, padded to KP columns
        rows_ok = c_ok[:, None]
        if SPLIT:  # bf16 x against phi = hi + lo, both bf16, float32 accumulation
            acc = tl.dot(x, tl.load(PHI + rows, mask=rows_ok, other=0.0), acc)
            acc = tl.dot(x, tl.load(PHI_LO + rows, mask=rows_ok, other=0.0), acc)
        else:
            phi = tl.load(PHI + rows, mask=rows_ok, other=0.0)
            acc = tl.dot(xa, phi, acc, input_precision=PREC)
    r = 1.0 / tl.sqrt(ssq / ND + eps)  # (BT,)
    z = acc * r[:, None]  # (BT, KP) = RMSNorm(x) phi
    tl.store(Z + t[:, None] * K + k[None, :], z, mask=t_ok[:, None] & k_ok[None, :])
    tl.store(RINV + t, r, mask=t_ok)
    tl.debug_barrier()  # z is read back below in the (stream, stream) layout

    # the coefficients (Eqs. 7-8), Sinkhorn in registers
    _, _, _, l_pre, l_post, l_res = _logits(Z, BIAS, ALPHA, t, t_ok, K, N, NP)
    i = tl.arange(0, NP)
    j = tl.arange(0, NP)
    i_ok = i < N
    ti_ok = t_ok[:, None] & i_ok[None, :]  # (BT, NP)
    valid = (i_ok[:, None] & (j < N)[None, :])[None, :, :]  # (1, NP, NP)
    pre = tl.where(ti_ok, _sigmoid(l_pre), 0.0)  # (BT, NP)
    post = 2.0 * _sigmoid(l_post)
    res = sinkhorn_tile_exact(l_res, valid, iters)  # (BT, NP, NP), every token on its own
    tl.store(POST + t[:, None] * N + i[None, :], post, mask=ti_ok)
    tij = t[:, None, None] * (N * N) + i[None, :, None] * N + j[None, None, :]
    tl.store(RES + tij, res, mask=t_ok[:, None, None] & valid)

    # pass 2: h0 = sum_i pre_i H_i, the same token block again (from L2 when it is still there);
    # one (BT, BD) tile per stream keeps the registers to two such tiles
    for d0 in range(0, D, BD):
        d = d0 + tl.arange(0, BD)
        td_ok = t_ok[:, None] & (d < D)[None, :]
        h0 = tl.zeros((BT, BD), dtype=ACC)
        for s in tl.static_range(N):
            pre_s = tl.sum(tl.where(i[None, :] == s, pre, 0.0), axis=1)  # (BT,)
            x = tl.load(H + t[:, None] * ND + s * D + d[None, :], mask=td_ok, other=0.0)
            h0 += pre_s[:, None] * x.to(ACC)
        tl.store(
            H0 + t[:, None] * D + d[None, :],
            _store_value(h0, ROUND).to(H0.dtype.element_ty),
            mask=td_ok,
        )


@triton.jit
def _manifold_pre_bwd_coef(
    H,  # (T, N, D)
    G_H0,  # (T, D) gradient of h0
    G_POST,  # (T, N) ACC
    G_RES,  # (T, N, N) ACC
    Z,  # (T, K) saved
    RINV,  # (T,) saved
    BIAS,  # (K,)
    ALPHA,  # (3,)
    PRE,  # (T, N) out: pre, for kernel 2
    DZS,  # (T, KP) out, zero-filled: r dz
    CX,  # (T,) out: -<dz, z> r^2 / (N D), the coefficient of x in dH
    PART,  # (programs, K + 3) out: this block's sums of dl (= db) and of <dl, z> per segment
    T,
    D,
    K: tl.constexpr,
    iters,
    segment,  # Sinkhorn backward's checkpoint segment
    N: tl.constexpr,
    NP: tl.constexpr,
    KP: tl.constexpr,
    ACC: tl.constexpr,
    BT: tl.constexpr,
    BD: tl.constexpr,
):
    ND = N * D
    pid = tl.program_id(0)
    t = (pid * BT + tl.arange(0, BT)).to(tl.int64)
    t_ok = t < T
    i = tl.arange(0, NP)
    j = tl.arange(0, NP)
    i_ok = i < N
    ti_ok = t_ok[:, None] & i_ok[None, :]  # (BT, NP)
    valid = (i_ok[:, None] & (j < N)[None, :])[None, :, :]  # (1, NP, NP)
    tij_ok = t_ok[:, None, None] & valid

    # dpre_i = <dh0, H_i>, reduced over d in ACC, one (BT, BD) tile per stream
    g_pre = tl.zeros((BT, NP), dtype=ACC)
    for d0 in range(0, D, BD):
        d = d0 + tl.arange(0, BD)
        td_ok = t_ok[:, None] & (d < D)[None, :]
        gh = tl.load(G_H0 + t[:, None] * D + d[None, :], mask=td_ok, other=0.0).to(ACC)
        for s in tl.static_range(N):
            x = tl.load(H + t[:, None] * ND + s * D + d[None, :], mask=td_ok, other=0.0)
            g_s = tl.sum(x.to(ACC) * gh, axis=1)  # (BT,)
            g_pre += tl.where(i[None, :] == s, g_s[:, None], 0.0)

    # the coefficients' backward: sigmoid, 2 sigmoid, Sinkhorn (recomputed in registers)
    z_pre, z_post, z_res, l_pre, l_post, l_res = _logits(Z, BIAS, ALPHA, t, t_ok, K, N, NP)
    s_pre = _sigmoid(l_pre)
    s_post = _sigmoid(l_post)
    g_post = tl.load(G_POST + t[:, None] * N + i[None, :], mask=ti_ok, other=0.0)
    tij = t[:, None, None] * (N * N) + i[None, :, None] * N + j[None, None, :]
    g_res = tl.load(G_RES + tij, mask=tij_ok, other=0.0)
    dl_pre = tl.where(ti_ok, g_pre * s_pre * (1.0 - s_pre), 0.0)  # (BT, NP)
    dl_post = tl.where(ti_ok, g_post * 2.0 * s_post * (1.0 - s_post), 0.0)
    dl_res = sinkhorn_tile_backward(l_res, valid, g_res, iters, segment)
    dl_res = tl.where(tij_ok, dl_res, 0.0)  # (BT, NP, NP)
    dz_pre = tl.load(ALPHA) * dl_pre
    dz_post = tl.load(ALPHA + 1) * dl_post
    dz_res = tl.load(ALPHA + 2) * dl_res
    zdz = tl.sum(dz_pre * z_pre, axis=1) + tl.sum(dz_post * z_post, axis=1)
    zdz += tl.sum(tl.sum(dz_res * z_res, axis=2), axis=1)  # <dz, z>  (BT,)
    r = tl.load(RINV + t, mask=t_ok, other=0.0)
    tl.store(CX + t, -zdz * r * r / ND, mask=t_ok)
    tl.store(PRE + t[:, None] * N + i[None, :], s_pre, mask=ti_ok)
    row = t[:, None] * KP  # DZS rows are KP wide, the padding stays 0
    tl.store(DZS + row + i[None, :], r[:, None] * dz_pre, mask=ti_ok)
    tl.store(DZS + row + N + i[None, :], r[:, None] * dz_post, mask=ti_ok)
    ij = i[:, None] * N + j[None, :]
    tl.store(DZS + row[:, :, None] + 2 * N + ij[None, :, :], r[:, None, None] * dz_res, mask=tij_ok)

    # this block's share of db and dalpha (summed over blocks in PyTorch)
    part = PART + pid * (K + 3)
    tl.store(part + i, tl.sum(dl_pre, axis=0), mask=i_ok)
    tl.store(part + N + i, tl.sum(dl_post, axis=0), mask=i_ok)
    tl.store(part + 2 * N + ij, tl.sum(dl_res, axis=0), mask=i_ok[:, None] & (j < N)[None, :])
    tl.store(part + K, tl.sum(tl.sum(dl_pre * z_pre, axis=1), axis=0))
    tl.store(part + K + 1, tl.sum(tl.sum(dl_post * z_post, axis=1), axis=0))
    tl.store(part + K + 2, tl.sum(tl.sum(tl.sum(dl_res * z_res, axis=2), axis=1), axis=0))


@triton.jit
def _manifold_pre_bwd_state(
    H,  # (T, N, D)
    G_H0,  # (T, D)
    G_PASS,  # (T, N, D) gradient that reached H_pass (with HAS_PASS)
    PRE,  # (T, N)
    DZS,  # (T, KP)
    CX,  # (T,)
    PHI,  # (N D, K) ACC
    G_H,  # (T, N, D) out, dtype of H
    G_PHI,  # (splits, N D, K) out, ACC: per-split partial sums
    T,
    D,
    K: tl.constexpr,
    per_split,  # tokens per split
    N: tl.constexpr,
    NP: tl.constexpr,
    KP: tl.constexpr,
    HAS_PASS: tl.constexpr,
    SPLIT: tl.constexpr,
    PREC: tl.constexpr,
    ACC: tl.constexpr,
    ROUND: tl.constexpr,
    BT: tl.constexpr,
    BD: tl.constexpr,
):
    ND = N * D
    # this program's columns of vec(H): BD features of one stream (the streams of the same
    # features are neighbouring programs, so they share dh0 through L2)
    s = tl.program_id(0) % N
    feat = (tl.program_id(0) // N) * BD + tl.arange(0, BD)  # (BD,)
    col_ok = feat < D
    hcol = s * D + feat  # (BD,) columns of vec(H), rows of phi
    k = tl.arange(0, KP)
    k_ok = k < K
    phi_t = tl.load(
        PHI + hcol[None, :] * K + k[:, None], mask=k_ok[:, None] & col_ok[None, :], other=0.0
    )  # (KP, BD): phi^T restricted to these rows
    g_phi = tl.zeros((BD, KP), dtype=ACC)
    t_begin = tl.program_id(1) * per_split
    t_end = tl.minimum(t_begin + per_split, T)
    for t0 in range(t_begin, t_end, BT):
        t = (t0 + tl.arange(0, BT)).to(tl.int64)
        t_ok = t < t_end
        m = t_ok[:, None] & col_ok[None, :]  # (BT, BD)
        x = tl.load(H + t[:, None] * ND + hcol[None, :], mask=m, other=0.0)
        dzs = tl.load(DZS + t[:, None] * KP + k[None, :], mask=t_ok[:, None], other=0.0)
        pre = tl.load(PRE + t * N + s, mask=t_ok, other=0.0)  # (BT,)
        gh = tl.load(G_H0 + t[:, None] * D + feat[None, :], mask=m, other=0.0)
        cx = tl.load(CX + t, mask=t_ok, other=0.0)
        xa = x.to(ACC)
        g = pre[:, None] * gh.to(ACC) + cx[:, None] * xa
        g += tl.dot(dzs, phi_t, input_precision=PREC)  # (r dz) phi^T  (BT, BD)
        if HAS_PASS:
            g += tl.load(G_PASS + t[:, None] * ND + hcol[None, :], mask=m, other=0.0).to(ACC)
        g = _store_value(g, ROUND).to(G_H.dtype.element_ty)
        tl.store(G_H + t[:, None] * ND + hcol[None, :], g, mask=m)
        if SPLIT:  # bf16 x against r dz = hi + lo, both bf16
            hi = dzs.to(tl.bfloat16)
            lo = (dzs - hi.to(ACC)).to(tl.bfloat16)
            g_phi = tl.dot(tl.trans(x), hi, g_phi)
            g_phi = tl.dot(tl.trans(x), lo, g_phi)
        else:
            g_phi = tl.dot(tl.trans(xa), dzs, g_phi, input_precision=PREC)  # x^T (r dz)
    out = G_PHI + tl.program_id(1).to(tl.int64) * ND * K
    tl.store(out + hcol[:, None] * K + k[None, :], g_phi, mask=col_ok[:, None] & k_ok[None, :])


# ---------------------------------------------------------------------------- launchers
def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _coef_width(n: int) -> int:
    """``KP``: ``K = n^2 + 2n`` padded to a power of two ``>= 16`` (``tl.dot``'s minimum)."""
    return max(16, triton.next_power_of_2(n * n + 2 * n))


def _precision(H: torch.Tensor, acc: torch.dtype) -> tuple[bool, str]:
    """``(SPLIT, PREC)``: a bf16 state on a GPU meets ``phi`` as two bf16 halves; float32 uses
    3xTF32; float64 and the interpreter (which computes in numpy) use plain IEEE products."""
    if not H.is_cuda or acc == torch.float64:
        return False, "ieee"
    return H.dtype == torch.bfloat16, "tf32x3"


def _tuned(H: torch.Tensor, acc: torch.dtype) -> bool:
    """Autotune on a GPU, except in float64 (a gradient check, not a training run)."""
    return H.is_cuda and acc != torch.float64


def _round_in_kernel(H: torch.Tensor) -> bool:
    """Round bf16 results to nearest even by hand: only in the interpreter, which truncates."""
    return not H.is_cuda and H.dtype == torch.bfloat16


#: id(phi) -> (weak reference to phi, its version, its address, (hi, lo)): the forward's
#: operands of each weight, remade only when the weight changes (an optimizer step bumps its
#: version) or is another tensor
_PHI_OPERANDS: dict[int, tuple] = {}


def _phi_operands(phi: torch.Tensor, KP: int, split: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``phi`` as the forward's ``tl.dot`` reads it: zero-padded to ``KP`` columns (aligned rows,
    no column mask), and with ``split`` as two bfloat16 halves ``phi = hi + lo`` (about 16
    mantissa bits); otherwise ``(padded, padded)``.

    The split is cached with the weight: made once per version of ``phi`` (what an optimizer's
    in-place step or ``load_state_dict`` bumps), not on every call. A change written through
    ``phi.data`` does not bump the version and is not seen: change weights in place under
    ``torch.no_grad()`` instead (or call :func:`clear_phi_cache`)."""
    if not split:  # float32 / float64: a padded copy (cheap; nothing to split)
        padded = torch.zeros((phi.shape[0], KP), dtype=phi.dtype, device=phi.device)
        padded[:, : phi.shape[1]] = phi.detach()
        return padded, padded
    hit = _PHI_OPERANDS.get(id(phi))
    if hit is not None:
        ref, version, address, key, ops = hit
        if ref() is phi and (version, address, key) == (phi._version, phi.data_ptr(), (KP, split)):
            return ops
    for k in [k for k, v in _PHI_OPERANDS.items() if v[0]() is None]:
        del _PHI_OPERANDS[k]  # weights that are gone
    with torch.no_grad():
        padded = torch.zeros((phi.shape[0], KP), dtype=phi.dtype, device=phi.device)
        padded[:, : phi.shape[1]] = phi
        hi = padded.to(torch.bfloat16)
        ops = (hi, (padded - hi.to(phi.dtype)).to(torch.bfloat16))
    _PHI_OPERANDS[id(phi)] = (weakref.ref(phi), phi._version, phi.data_ptr(), (KP, split), ops)
    return ops


def clear_phi_cache() -> None:
    """Forget the cached bfloat16 halves of every ``phi`` (see :func:`_phi_operands`)."""
    _PHI_OPERANDS.clear()


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


# Every config below that its rule keeps compiles without register spills on sm_80 and sm_90
# for n <= 8 (checked by benchmarks/kernel_resources.py, which applies the same rules).
def _fwd_configs():
    # 64 tokens per program: phi is read once per 64 tokens' rows of H (a quarter of their
    # bytes at n = 4 in bf16, from L2), in (BC, KP) tiles of whole aligned rows
    return [
        triton.Config({"BT": bt, "BC": bc, "BD": bd}, num_warps=w, num_stages=s)
        for bt, bc, bd, w, s in [
            (64, 32, 64, 8, 3),
            (64, 64, 64, 8, 3),
            # (64, 64, 128, 8, 2) is left out: on sm_80 at n = 2 (bf16) ptxas spills 16 bytes
        ]
    ]


def _prune_fwd(configs, named_args, **meta):
    """At ``n = 8`` (``KP = 128``) with a float32 state, ``BC BD <= 2048``: the ``(64, KP)``
    accumulator leaves no room for wider tiles."""
    size = named_args["H"].element_size() if "H" in named_args else 2
    if meta.get("KP", 16) >= 128 and size >= 4:
        return [c for c in configs if c.kwargs["BC"] * c.kwargs["BD"] <= 2048] or configs[:1]
    return configs


def _coef_configs():
    return [
        triton.Config({"BT": bt, "BD": bd}, num_warps=w)
        for bt, bd, w in [(4, 128, 4), (8, 64, 4), (16, 128, 8)]
    ]


def _prune_coef(configs, named_args, **meta):
    """Sinkhorn's ``(BT, NP, NP)`` tiles of at most two values per thread
    (``BT NP^2 <= 64 num_warps``): its backward keeps several of them live."""
    NP = meta.get("NP", 2)
    return [c for c in configs if c.kwargs["BT"] * NP * NP <= 64 * c.num_warps] or configs[:1]


def _state_configs():
    # BD features of one stream per program: 128 bytes or more per row segment (BD >= 64 in
    # bf16, >= 32 in float32; _prune_state drops the narrower ones)
    return [
        triton.Config({"BT": bt, "BD": bd}, num_warps=w, num_stages=s)
        for bt, bd, w, s in [
            (16, 32, 4, 3),
            (16, 64, 8, 3),
            (32, 64, 8, 3),
        ]
    ]


def _prune_state(configs, named_args, **meta):
    """Keep the configs whose rows of ``H`` are read in segments of at least 128 bytes, whose
    ``(BT, BD)`` state tiles are at most 4 KiB, and at ``n = 8`` (``KP = 128``) whose ``(BT,
    KP)`` tile of ``r dz`` has at most 2048 values."""
    size = named_args["H"].element_size() if "H" in named_args else 2
    KP = meta.get("KP", 16)

    def ok(c):
        BT, BD = c.kwargs["BT"], c.kwargs["BD"]
        return BD * size >= 128 and BT * BD * size <= 4096 and (KP < 128 or BT * KP <= 2048)

    return [c for c in configs if ok(c)] or configs[:1]


_fwd_tuned = triton.autotune(
    configs=_fwd_configs(),
    key=["D", "N", "SPLIT"],
    prune_configs_by={"early_config_prune": _prune_fwd},
)(_manifold_pre_fwd)
_coef_tuned = triton.autotune(  # PART has one row per program: configs differ in their count
    configs=_coef_configs(),
    key=["D", "N"],
    reset_to_zero=["PART"],
    prune_configs_by={"early_config_prune": _prune_coef},
)(_manifold_pre_bwd_coef)
_state_tuned = triton.autotune(
    configs=_state_configs(),
    key=["D", "N", "SPLIT", "HAS_PASS"],
    prune_configs_by={"early_config_prune": _prune_state},
)(_manifold_pre_bwd_state)


def _state_kernel(NP: int):
    """The autotuned kernel 2 (the same for every ``NP``: its tiles are one stream's)."""
    return _state_tuned


def _cpu_tokens(T: int, most: int) -> int:
    """Tokens per program in the interpreter: few, large programs (each runs in Python)."""
    return max(16, min(most, triton.next_power_of_2(max(T, 1))))


def manifold_pre_forward(
    H: torch.Tensor,
    phi: torch.Tensor,
    bias: torch.Tensor,
    alpha: torch.Tensor,
    eps: float,
    iters: int,
) -> tuple[torch.Tensor, ...]:
    """Launch the forward on flat, contiguous tensors.

    Args:
        H: ``(T, n, d)``, any floating dtype.
        phi: ``(n d, K)``, bias ``(K,)``, alpha ``(3,)``, all in the compute dtype.
        eps: the RMSNorm's epsilon; iters: Sinkhorn-Knopp rounds.

    Returns:
        ``(h0, post, res, z, rinv)``: ``h0`` ``(T, d)`` in the dtype of ``H``; ``post``
        ``(T, n)``, ``res`` ``(T, n, n)``, ``z`` ``(T, K)``, ``rinv`` ``(T,)`` in the compute
        dtype.
    """
    T, n, d = H.shape
    K, acc = phi.shape[1], phi.dtype
    dev = H.device
    h0 = torch.empty((T, d), dtype=H.dtype, device=dev)
    post = torch.empty((T, n), dtype=acc, device=dev)
    res = torch.empty((T, n, n), dtype=acc, device=dev)
    z = torch.empty((T, K), dtype=acc, device=dev)
    rinv = torch.empty((T,), dtype=acc, device=dev)
    if T == 0:
        return h0, post, res, z, rinv
    NP, KP = padded_rate(n), _coef_width(n)
    split, prec = _precision(H, acc)
    phi_hi, phi_lo = _phi_operands(phi, KP, split)
    args = (H, phi_hi, phi_lo, bias, alpha, h0, post, res, z, rinv, T, d, K, eps, iters)
    cpu = {
        "BT": 16,
        "BC": min(256, max(16, triton.next_power_of_2(n * d))),
        "BD": min(128, triton.next_power_of_2(d)),
    }
    if H.is_cuda:  # float64 on a GPU: small fixed tiles (the tuned ones overflow shared memory)
        cpu = {"BT": 16, "BC": 32, "BD": 32}
    launch(
        _manifold_pre_fwd,
        _fwd_tuned,
        lambda meta: (triton.cdiv(T, meta["BT"]),),
        args,
        _tuned(H, acc),
        cpu,
        N=n,
        NP=NP,
        KP=KP,
        SPLIT=split,
        PREC=prec,
        ACC=_acc(acc),
        ROUND=_round_in_kernel(H),
    )
    # one pass: the Sinkhorn tile iterates on log M for every token (hclib.kernels.sinkhorn)
    return h0, post, res, z, rinv


def manifold_pre_backward(
    g_h0: torch.Tensor,
    g_post: torch.Tensor,
    g_res: torch.Tensor,
    g_pass: torch.Tensor | None,
    H: torch.Tensor,
    phi: torch.Tensor,
    bias: torch.Tensor,
    alpha: torch.Tensor,
    z: torch.Tensor,
    rinv: torch.Tensor,
    iters: int,
) -> tuple[torch.Tensor, ...]:
    """Launch the two backward kernels (shapes and dtypes of :func:`manifold_pre_forward`).

    Args:
        g_h0: ``(T, d)``; g_post ``(T, n)``; g_res ``(T, n, n)``; g_pass ``(T, n, d)`` or
            ``None``: the gradients of the forward's outputs.

    Returns:
        ``(dH, dphi, dbias, dalpha)``: ``dH`` ``(T, n, d)`` in the dtype of ``H`` (``g_pass``
        included), the others in the compute dtype, ``dalpha`` ``(3,)``.
    """
    T, n, d = H.shape
    K, acc = phi.shape[1], phi.dtype
    dev = H.device
    NP, KP = padded_rate(n), _coef_width(n)
    split, prec = _precision(H, acc)
    g_H = torch.empty_like(H)
    if T == 0:
        g_bias = torch.zeros(K, dtype=acc, device=dev)
        return g_H, torch.zeros_like(phi), g_bias, torch.zeros(3, dtype=acc, device=dev)
    pre = torch.empty((T, n), dtype=acc, device=dev)
    dzs = torch.zeros((T, KP), dtype=acc, device=dev)
    cx = torch.empty((T,), dtype=acc, device=dev)
    g_h0 = g_h0.contiguous()
    g_post = g_post.to(acc).contiguous()
    g_res = g_res.to(acc).contiguous()

    # kernel 1: per token block; its partial sums have one row per program
    cpu1 = {"BT": _cpu_tokens(T, 64), "BD": min(128, triton.next_power_of_2(d))}
    if H.is_cuda:
        cpu1 = {"BT": min(c.kwargs["BT"] for c in _coef_configs()), "BD": 64}
    blocks = triton.cdiv(T, cpu1["BT"])  # the fewest tokens per program: the most rows
    part = torch.zeros((blocks, K + 3), dtype=acc, device=dev)
    launch(
        _manifold_pre_bwd_coef,
        _coef_tuned,
        lambda meta: (triton.cdiv(T, meta["BT"]),),
        (H, g_h0, g_post, g_res, z, rinv, bias, alpha, pre, dzs, cx, part)
        + (T, d, K, iters, backward_segment(iters)),
        _tuned(H, acc),
        cpu1,
        N=n,
        NP=NP,
        KP=KP,
        ACC=_acc(acc),
    )
    part = part.sum(0)

    # kernel 2: per (features of one stream, token split)
    if H.is_cuda:
        columns = n * triton.cdiv(d, 64)  # programs per split with 64-feature blocks
        splits = max(1, min(triton.cdiv(T, 128), (4 * _sm_count(dev.index or 0)) // columns))
    else:
        splits = 1
    per_split = triton.cdiv(T, splits)
    g_phi = torch.empty((splits, n * d, K), dtype=acc, device=dev)
    has_pass = g_pass is not None
    g_pass = g_pass.contiguous() if has_pass else g_H  # unused without HAS_PASS
    cpu2 = {"BT": _cpu_tokens(T, 64), "BD": min(triton.next_power_of_2(d), 128)}
    if H.is_cuda:
        cpu2 = {"BT": 16, "BD": 32}
    launch(
        _manifold_pre_bwd_state,
        _state_kernel(NP),
        lambda meta: (n * triton.cdiv(d, meta["BD"]), splits),
        (H, g_h0, g_pass, pre, dzs, cx, phi, g_H, g_phi, T, d, K, per_split),
        _tuned(H, acc),
        cpu2,
        N=n,
        NP=NP,
        KP=KP,
        HAS_PASS=has_pass,
        SPLIT=split,
        PREC=prec,
        ACC=_acc(acc),
        ROUND=_round_in_kernel(H),
    )
    return g_H, g_phi.sum(0), part[:K], part[K:]


# ----------------------------------------------------------------------- autograd and API
@registered  # a torch.library op under torch.compile (hclib.kernels.ops)
class ManifoldPre(torch.autograd.Function):
    """``(h0, post, res, H_pass)`` of flat, contiguous inputs, with the fused backward.

    Inputs as :func:`manifold_pre_forward`, with the three gates as separate ``(1,)`` tensors
    (the module's parameters) and ``phi``, ``bias`` in any dtype.
    """

    @staticmethod
    def forward(ctx, H, phi, bias, alpha_pre, alpha_post, alpha_res, eps, iters):
        acc = compute_dtype(H.dtype, phi.dtype)
        phi_c = phi.to(acc).contiguous()
        bias_c = bias.to(acc).contiguous()
        alpha = torch.cat([a.reshape(1) for a in (alpha_pre, alpha_post, alpha_res)]).to(acc)
        h0, post, res, z, rinv = manifold_pre_forward(H, phi_c, bias_c, alpha, eps, iters)
        ctx.save_for_backward(H, phi_c, bias_c, alpha, z, rinv)
        ctx.iters = iters
        ctx.dtypes = (phi.dtype, bias.dtype, alpha_pre.dtype, alpha_post.dtype, alpha_res.dtype)
        return h0, post, res, H.view_as(H)

    @staticmethod
    def backward(ctx, g_h0, g_post, g_res, g_pass):
        H, phi, bias, alpha, z, rinv = ctx.saved_tensors
        g_H, g_phi, g_bias, g_alpha = manifold_pre_backward(
            g_h0, g_post, g_res, g_pass, H, phi, bias, alpha, z, rinv, ctx.iters
        )
        t_phi, t_bias, t_pre, t_post, t_res = ctx.dtypes
        return (
            g_H,
            g_phi.to(t_phi),
            g_bias.to(t_bias),
            g_alpha[0:1].to(t_pre),
            g_alpha[1:2].to(t_post),
            g_alpha[2:3].to(t_res),
            None,
            None,
        )


def manifold_pre(
    H: torch.Tensor,
    phi: torch.Tensor,
    bias: torch.Tensor,
    alpha_pre: torch.Tensor,
    alpha_post: torch.Tensor,
    alpha_res: torch.Tensor,
    eps: float,
    iters: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """mHC's read-out in one kernel: ``(h0, post, res, H_pass)`` from the state (Eqs. 7-8).

    Args:
        H: state ``(..., n, d)``, any floating dtype; leading dims are flattened to tokens.
        phi: ``(n d, n^2 + 2n)`` = ``[phi_pre | phi_post | phi_res]``; bias ``(n^2 + 2n,)``;
        alpha_pre, alpha_post, alpha_res: ``(1,)`` gates (the module's parameters).
        eps: the RMSNorm's epsilon; iters: Sinkhorn-Knopp rounds.

    Returns:
        ``h0`` ``(..., d)`` in the dtype of ``H`` (the branch input), ``post`` ``(..., n)`` and
        ``res`` ``(..., n, n)`` in float32 (float64 if ``H`` or ``phi`` is), and ``H_pass``:
        ``H`` itself, to be passed on to :func:`hclib.kernels.post_res.post_res` so that its
        state gradient is added inside this op's backward kernel instead of by autograd.

    Runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1``.
    """
    *batch, n, d = H.shape
    if phi.shape != (n * d, n * n + 2 * n):
        raise ValueError(
            f"for a state of {n} streams of width {d}, phi must have shape "
            f"({n * d}, {n * n + 2 * n}), got {tuple(phi.shape)}"
        )
    H2 = H.reshape(-1, n, d).contiguous()  # (T, n, d)
    h0, post, res, H_pass = ManifoldPre.apply(
        H2, phi, bias, alpha_pre, alpha_post, alpha_res, float(eps), int(iters)
    )
    return (
        h0.reshape(*batch, d),
        post.reshape(*batch, n),
        res.reshape(*batch, n, n),
        H_pass.reshape(H.shape),
    )
