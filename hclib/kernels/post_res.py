"""Fused write-in and mixing, ``H' = res @ H + post (x) y``: the step every connection ends with.

Math, per token ``t`` (the :class:`hclib.Mappings` convention, mHC Eq. 3)::

    H'[t, i, :] = sum_j res[t, i, j] H[t, j, :] + post[t, i] y[t, :]

HC (Eq. 5) is ``res = A_r^T``, ``post = B``; mHC is its ``H_res``, ``H_post``; FC (Eq. 8) is
``res = A^T``, ``post = B`` with ``y`` split into fractions, ``y[t, i, :]`` for row ``i``.
``res`` and ``post`` may be per token (dynamic weights) or shared by all tokens (static).

Bytes per token (state of ``n`` rows of ``d``, ``s`` bytes per element): the forward reads
``H`` and ``y`` and writes ``H'``: ``(2 n + 1) d s`` (plus ``n^2 + n`` weights, from cache when
static). The backward reads ``dH'``, ``H`` and ``y`` and writes ``dH`` and ``dy``:
``(3 n + 2) d s``, and ``n^2 + n`` float32 weight gradients per token. A per-token gradient
of static weights is summed over tokens afterwards in PyTorch (``T (n^2 + n)`` floats, small
next to the state); nothing uses atomics, so every result is deterministic.

Layout: the state is flattened to ``T`` tokens, ``(T, n, d)`` contiguous. The forward runs
one program per ``(BT tokens, BD features)`` tile, ``n`` as a padded power of two
(``NP``), so each ``H`` row is one coalesced load of ``BD`` features; the backward runs one
program per ``BT`` tokens with a loop over ``d`` (the weight gradients are reductions over
``d``, kept in registers in float32). Math in float32 (float64 for float64 inputs), results in
the dtype of each input.

Layers: ``_post_res_fwd`` / ``_post_res_bwd`` (kernels) -> :func:`post_res_forward` /
:func:`post_res_backward` (launchers) -> :class:`PostRes` (``torch.autograd.Function``) ->
:func:`post_res` (shape checks, any leading dims). The oracle is
:func:`hclib.kernels.reference.post_res_reference`.

Derived in: notebooks/07_memory_traffic_and_fused_kernels.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from hclib.connection import compute_dtype
from hclib.kernels.dispatch import interpreting, launch
from hclib.kernels.ops import registered

__all__ = ["PostRes", "cast_rtne", "post_res", "post_res_backward", "post_res_forward"]

# Triton's interpreter truncates float32 -> bfloat16 (the GPU rounds to nearest even); the
# truncation biases every stored value towards zero, which sums over tokens turn into errors
# far above bfloat16's rounding. Under the interpreter, cast_rtne rounds by hand.
_ROUND_BF16_BY_HAND = tl.constexpr(interpreting())


# ------------------------------------------------------------------------------- kernels
@triton.jit
def cast_rtne(x, dtype: tl.constexpr):
    """``x.to(dtype)`` rounded to nearest even, also for bfloat16 in the interpreter."""
    if _ROUND_BF16_BY_HAND and dtype == tl.bfloat16:
        bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000  # round the low 16 bits
        return bits.to(tl.float32, bitcast=True).to(dtype)  # exact: the low bits are zero
    return x.to(dtype)


@triton.jit
def _post_res_fwd(
    H,  # (T, N, D) state
    Y,  # (T, D) branch output, or (T, N, D) with Y_ROWS
    POST,  # (T, N) or (N,) with s_post_t = 0
    RES,  # (T, N, N) or (N, N) with s_res_t = 0
    OUT,  # (T, N, D)
    T,
    D,
    s_post_t,
    s_res_t,
    N: tl.constexpr,
    NP: tl.constexpr,
    Y_ROWS: tl.constexpr,
    ACC: tl.constexpr,
    BT: tl.constexpr,
    BD: tl.constexpr,
):
    t = (tl.program_id(0) * BT + tl.arange(0, BT)).to(tl.int64)  # (BT,) tokens
    i = tl.arange(0, NP)  # (NP,) rows of the output
    d = tl.program_id(1) * BD + tl.arange(0, BD)  # (BD,) features
    t_ok, i_ok, d_ok = t < T, i < N, d < D
    ti_ok = t_ok[:, None] & i_ok[None, :]  # (BT, NP)
    td_ok = t_ok[:, None] & d_ok[None, :]  # (BT, BD)
    tid_ok = ti_ok[:, :, None] & d_ok[None, None, :]  # (BT, NP, BD)
    rows = t[:, None, None] * (N * D) + i[None, :, None] * D + d[None, None, :]  # (BT, NP, BD)

    post = tl.load(POST + t[:, None] * s_post_t + i[None, :], mask=ti_ok, other=0.0).to(ACC)
    if Y_ROWS:
        y = tl.load(Y + rows, mask=tid_ok, other=0.0).to(ACC)  # (BT, NP, BD)
    else:
        y = tl.load(Y + t[:, None] * D + d[None, :], mask=td_ok, other=0.0).to(ACC)
        y = y[:, None, :]  # (BT, 1, BD): the same y for every row
    acc = post[:, :, None] * y  # post (x) y  (BT, NP, BD)
    for j in tl.static_range(N):
        h_j = tl.load(H + t[:, None] * (N * D) + j * D + d[None, :], mask=td_ok, other=0.0)
        r_j = tl.load(RES + t[:, None] * s_res_t + i[None, :] * N + j, mask=ti_ok, other=0.0)
        acc += r_j.to(ACC)[:, :, None] * h_j.to(ACC)[:, None, :]  # res[:, :, j] H[:, j]
    tl.store(OUT + rows, cast_rtne(acc, OUT.dtype.element_ty), mask=tid_ok)


@triton.jit
def _post_res_bwd(
    G,  # (T, N, D) gradient of the output
    H,  # (T, N, D)
    Y,  # (T, D) or (T, N, D) with Y_ROWS
    POST,  # (T, N) or (N,)
    RES,  # (T, N, N) or (N, N)
    GH,  # (T, N, D) out: res^T G
    GY,  # (T, D) or (T, N, D) out: post^T G (per row with Y_ROWS)
    GPOST,  # (T, N) out, ACC
    GRES,  # (T, N, N) out, ACC
    T,
    D,
    s_post_t,
    s_res_t,
    N: tl.constexpr,
    NP: tl.constexpr,
    Y_ROWS: tl.constexpr,
    ACC: tl.constexpr,
    BT: tl.constexpr,
    BD: tl.constexpr,
):
    t = (tl.program_id(0) * BT + tl.arange(0, BT)).to(tl.int64)  # (BT,)
    i = tl.arange(0, NP)  # rows of H' (and of G)
    j_col = tl.arange(0, NP)  # rows of H, as columns of res
    t_ok, i_ok = t < T, i < N
    ti_ok = t_ok[:, None] & i_ok[None, :]  # (BT, NP)
    post = tl.load(POST + t[:, None] * s_post_t + i[None, :], mask=ti_ok, other=0.0).to(ACC)
    g_post = tl.zeros((BT, NP), dtype=ACC)
    g_res = tl.zeros((BT, NP, NP), dtype=ACC)
    for d0 in range(0, D, BD):
        d = d0 + tl.arange(0, BD)
        d_ok = d < D
        td_ok = t_ok[:, None] & d_ok[None, :]
        tid_ok = ti_ok[:, :, None] & d_ok[None, None, :]
        rows = t[:, None, None] * (N * D) + i[None, :, None] * D + d[None, None, :]
        g = tl.load(G + rows, mask=tid_ok, other=0.0).to(ACC)  # (BT, NP, BD)
        if Y_ROWS:
            y = tl.load(Y + rows, mask=tid_ok, other=0.0).to(ACC)
            g_post += tl.sum(g * y, axis=2)
            tl.store(GY + rows, cast_rtne(post[:, :, None] * g, GY.dtype.element_ty), mask=tid_ok)
        else:
            y = tl.load(Y + t[:, None] * D + d[None, :], mask=td_ok, other=0.0).to(ACC)
            g_post += tl.sum(g * y[:, None, :], axis=2)
            g_y = tl.sum(post[:, :, None] * g, axis=1)  # sum_i post_i G_i  (BT, BD)
            tl.store(
                GY + t[:, None] * D + d[None, :], cast_rtne(g_y, GY.dtype.element_ty), mask=td_ok
            )
        for j in tl.static_range(N):
            h_j = tl.load(H + t[:, None] * (N * D) + j * D + d[None, :], mask=td_ok, other=0.0)
            col = tl.sum(g * h_j.to(ACC)[:, None, :], axis=2)  # dres[:, :, j]  (BT, NP)
            g_res += tl.where(j_col[None, None, :] == j, col[:, :, None], 0.0)
            r_j = tl.load(RES + t[:, None] * s_res_t + i[None, :] * N + j, mask=ti_ok, other=0.0)
            g_h = tl.sum(r_j.to(ACC)[:, :, None] * g, axis=1)  # sum_i res_ij G_i  (BT, BD)
            tl.store(
                GH + t[:, None] * (N * D) + j * D + d[None, :],
                cast_rtne(g_h, GH.dtype.element_ty),
                mask=td_ok,
            )
    tl.store(GPOST + t[:, None] * N + i[None, :], g_post, mask=ti_ok)
    tij = t[:, None, None] * (N * N) + i[None, :, None] * N + j_col[None, None, :]
    tij_ok = ti_ok[:, :, None] & (j_col < N)[None, None, :]
    tl.store(GRES + tij, g_res, mask=tij_ok)


def _configs(pairs):
    return [triton.Config({"BT": bt, "BD": bd}, num_warps=w) for bt, bd, w in pairs]


# The configs below compile without register spills on sm_80 and sm_90 for n <= 8 once pruned
# (checked by benchmarks/kernel_resources.py, which applies the same rule).
def _prune(configs, named_args, **meta):
    """Keep at most 8 state rows per program (``BT NP <= 8``): the loop over the ``n`` source
    rows holds several ``(BT, NP, BD)`` tiles, which spill from 16 rows on (``BT = 4`` at
    ``n = 4`` on sm_80 in float32, at ``n = 8`` everywhere)."""
    NP = meta.get("NP", 1)
    return [c for c in configs if c.kwargs["BT"] * NP <= 8] or configs[:1]


_post_res_fwd_tuned = triton.autotune(
    configs=_configs([(1, 1024, 4), (1, 2048, 8), (4, 256, 4)]),
    key=["D", "N", "Y_ROWS"],
    prune_configs_by={"early_config_prune": _prune},
)(_post_res_fwd)
_post_res_bwd_tuned = triton.autotune(
    configs=_configs([(1, 512, 4), (1, 1024, 8), (4, 128, 4)]),
    key=["D", "N", "Y_ROWS"],
    prune_configs_by={"early_config_prune": _prune},
)(_post_res_bwd)


# ----------------------------------------------------------------------------- launchers
def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _cpu_blocks(T: int, D: int, NP: int) -> dict:
    """Block sizes for the interpreter: few, large programs (each runs in Python)."""
    BD = min(triton.next_power_of_2(D), 256)
    BT = max(1, min(triton.next_power_of_2(T), 16384 // (NP * BD)))
    return {"BT": BT, "BD": BD}


def post_res_forward(
    H: torch.Tensor, y: torch.Tensor, post: torch.Tensor, res: torch.Tensor
) -> torch.Tensor:
    """Launch the forward kernel on flat, contiguous tensors.

    Args:
        H: ``(T, n, d)``; y: ``(T, d)`` or ``(T, n, d)``; post: ``(T, n)`` or ``(n,)``;
        res: ``(T, n, n)`` or ``(n, n)``, both in the compute dtype (float32 or float64).

    Returns:
        ``H'`` ``(T, n, d)`` in the dtype of ``H``.
    """
    T, N, D = H.shape
    out = torch.empty_like(H)
    if T == 0 or D == 0:
        return out
    NP = triton.next_power_of_2(N)
    args = (H, y, post, res, out, T, D, N if post.dim() == 2 else 0)
    args += (N * N if res.dim() == 3 else 0,)
    launch(
        _post_res_fwd,
        _post_res_fwd_tuned,
        lambda meta: (triton.cdiv(T, meta["BT"]), triton.cdiv(D, meta["BD"])),
        args,
        H.is_cuda,
        _cpu_blocks(T, D, NP),
        N=N,
        NP=NP,
        Y_ROWS=y.dim() == 3,
        ACC=_acc(post.dtype),
    )
    return out


def post_res_backward(
    g: torch.Tensor, H: torch.Tensor, y: torch.Tensor, post: torch.Tensor, res: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the backward kernel on flat, contiguous tensors (shapes of :func:`post_res_forward`).

    Args:
        g: gradient of ``H'``, ``(T, n, d)``.

    Returns:
        ``(dH, dy, dpost, dres)``: ``dH`` in the dtype of ``H``, ``dy`` in that of ``y``, and
        per-token ``dpost`` ``(T, n)`` and ``dres`` ``(T, n, n)`` in the compute dtype (sum
        them over tokens for static weights).
    """
    T, N, D = H.shape
    g_H, g_y = torch.empty_like(H), torch.empty_like(y)
    g_post = torch.zeros((T, N), dtype=post.dtype, device=H.device)
    g_res = torch.zeros((T, N, N), dtype=res.dtype, device=H.device)
    if T == 0 or D == 0:
        return g_H, g_y, g_post, g_res
    NP = triton.next_power_of_2(N)
    args = (g, H, y, post, res, g_H, g_y, g_post, g_res, T, D)
    args += (N if post.dim() == 2 else 0, N * N if res.dim() == 3 else 0)
    launch(
        _post_res_bwd,
        _post_res_bwd_tuned,
        lambda meta: (triton.cdiv(T, meta["BT"]),),
        args,
        H.is_cuda,
        _cpu_blocks(T, D, NP),
        N=N,
        NP=NP,
        Y_ROWS=y.dim() == 3,
        ACC=_acc(post.dtype),
    )
    return g_H, g_y, g_post, g_res


# ----------------------------------------------------------------------- autograd and API
@registered  # a torch.library op under torch.compile (hclib.kernels.ops)
class PostRes(torch.autograd.Function):
    """``H' = res @ H + post (x) y`` on flat tensors, with the fused backward.

    Inputs as :func:`post_res_forward` (``post`` and ``res`` already in the compute dtype);
    the gradients of shared (token-less) ``post`` and ``res`` are summed over tokens.
    """

    @staticmethod
    def forward(ctx, H, y, post, res):
        ctx.save_for_backward(H, y, post, res)
        return post_res_forward(H, y, post, res)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        H, y, post, res = ctx.saved_tensors
        g_H, g_y, g_post, g_res = post_res_backward(g.contiguous(), H, y, post, res)
        if post.dim() == 1:
            g_post = g_post.sum(0)
        if res.dim() == 2:
            g_res = g_res.sum(0)
        return g_H, g_y, g_post, g_res


def _check(H: object, y: object, post: object, res: object) -> None:
    for name, x in (("H", H), ("y", y), ("post", post), ("res", res)):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
            raise TypeError(f"{name} must be a floating-point torch.Tensor, got {got}")
    if H.dim() < 2:
        raise ValueError(f"expected a state H of shape (..., n, d), got {tuple(H.shape)}")
    *batch, n, d = H.shape
    batch = tuple(batch)
    shapes = {
        "y": (y, [(*batch, d), (*batch, n, d)], "(..., d) or (..., n, d)"),
        "post": (post, [(n,), (*batch, n)], "(n,) or (..., n)"),
        "res": (res, [(n, n), (*batch, n, n)], "(n, n) or (..., n, n)"),
    }
    for name, (x, allowed, text) in shapes.items():
        if tuple(x.shape) not in allowed:
            raise ValueError(
                f"for H of shape {tuple(H.shape)}, {name} must have shape {text} = "
                f"{' or '.join(str(s) for s in dict.fromkeys(allowed))}, got {tuple(x.shape)}"
            )
    devices = {x.device for x in (H, y, post, res)}
    if len(devices) > 1:
        names = sorted(map(str, devices))
        raise ValueError(f"H, y, post and res must be on one device, got {names}")


def post_res(
    H: torch.Tensor, y: torch.Tensor, post: torch.Tensor, res: torch.Tensor
) -> torch.Tensor:
    """Fused ``H' = res @ H + post (x) y`` (mHC Eq. 3; HC Eq. 5; FC Eq. 8), differentiable.

    ``H'[..., i, :] = sum_j res[..., i, j] H[..., j, :] + post[..., i] y[..., :]``: HC passes
    ``res = A_r^T`` and ``post = B`` (what :meth:`hclib.HyperConnection.mappings` returns),
    mHC its ``H_res`` and ``H_post``; FC passes ``res = A^T``, ``post = B`` and ``y`` split
    into fractions, one row per fraction.

    Args:
        H: state ``(..., n, d)``, any floating dtype; leading dims are flattened to tokens.
        y: branch output ``(..., d)`` (written into every row) or ``(..., n, d)`` (row ``i``
            gets ``y[..., i, :]``).
        post: write-in weights ``(..., n)`` per token, or ``(n,)`` shared by all tokens.
        res: mixing weights ``(..., n, n)`` per token, or ``(n, n)`` shared.

    Returns:
        ``(..., n, d)`` in the dtype of ``H``; the math runs in float32 (float64 if any input
        is float64). Gradients reach all four inputs, each in its own dtype.

    Runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1``.
    """
    _check(H, y, post, res)
    *batch, n, d = H.shape
    acc = compute_dtype(H.dtype, y.dtype, post.dtype, res.dtype)
    T = math.prod(batch)
    H2 = H.reshape(T, n, d).contiguous()  # (T, n, d)
    y2 = y.reshape(T, *y.shape[len(batch) :]).contiguous()  # (T, d) or (T, n, d)
    post2 = post.to(acc).reshape(-1, n) if post.dim() > 1 else post.to(acc)  # (T, n) or (n,)
    res2 = res.to(acc).reshape(-1, n, n) if res.dim() > 2 else res.to(acc)  # (T, n, n) or (n, n)
    out = PostRes.apply(H2, y2, post2.contiguous(), res2.contiguous())  # (T, n, d)
    return out.reshape(H.shape)
