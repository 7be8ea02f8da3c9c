"""Sinkhorn-Knopp in registers: forward and backward of mHC Eq. 9 as Triton code.

The math (mHC Eqs. 8-9, the same as :func:`hclib.manifold.sinkhorn_knopp`, the oracle): for one
token's logits ``x`` ``(n, n)``::

    M^(0) = exp(x - colmax(x))                      (the column factors cancel in the first T_c)
    M^(t) = T_r(T_c(M^(t-1))),  t = 1 .. iters      T_c: divide every column by its sum,
                                                    T_r: divide every row by its sum
    SK(x) = M^(iters)

Should a row or column sum underflow to 0 for some token (logits some 100 apart in float32), every
token of the call is redone on ``log M``, where ``T_c`` and ``T_r`` subtract a log-sum-exp and
nothing underflows: the reference decides this for the whole call too (entries that underflow
without emptying a row or column make the two spaces differ by more than rounding). The kernel
raises a flag in device memory instead of syncing with the host; a second launch redoes the
tokens when the flag is up, and the backward reads it to pick its space.

Backward without stored iterates. With ``A = T_c(M) = M / c`` (``c`` the column sums of ``M``)
and ``B = T_r(A) = A / r`` (``r`` the row sums of ``A``), one round's vector-Jacobian product is::

    dA = (dB - rowsum(dB * B)) / r          dM = (dA - colsum(dA * A)) / c

and at the start ``dx = dM^(0) * M^(0)`` (``colmax`` is a constant: SK does not depend on it).
In log space the same round is ``dLc = dLr - exp(Lr) rowsum(dLr)``, ``dL = dLc - exp(Lc)
colsum(dLc)``, starting from ``dL^(iters) = dSK * SK``. Round ``t`` needs its input
``M^(t-1)``; instead of storing the ``iters`` iterates (``iters n^2`` numbers per token), the
backward recomputes them in registers from ``M^(0)``, with one checkpoint tile: the rounds are
cut into segments of ``ceil(sqrt(iters))``; for each segment, last first, its first iterate is
recomputed from ``M^(0)`` and each later one from that checkpoint. About ``iters^1.5`` rounds
in all (70 for ``iters = 20``, against 20 in the forward and 190 without the checkpoint), some
``4 n^2`` flops each: a few thousand flops per token and no memory traffic.

Bytes per token (``n^2`` logits of ``s`` bytes, ``s = 4`` in float32): the forward reads the
logits and writes ``SK(x)``: ``2 s n^2``; the backward reads the logits and the output gradient
and writes the logit gradient: ``3 s n^2``. Nothing else is saved between the two.

Layout: ``logits`` ``(T, n, n)`` contiguous, row-major (``x[t, i, j]`` at ``t n^2 + i n + j``);
one program takes ``BLOCK_T`` tokens as a ``(BLOCK_T, NP, NP)`` register tile, ``NP`` the next
power of two ``>= n``, padded entries masked to 0 (``-inf`` in log space). The ``@triton.jit``
helpers :func:`sinkhorn_tile` and :func:`sinkhorn_tile_backward` work on such a tile and are
reused inside the fused mHC read-out (:mod:`hclib.kernels.manifold_pre`).

Layers: the tile helpers -> ``_sinkhorn_*_kernel`` -> :func:`sinkhorn_forward` /
:func:`sinkhorn_backward` (launchers) -> :class:`SinkhornKnopp` (autograd) ->
:func:`sinkhorn_knopp` (functional, same signature as the reference).

Derived in: notebooks/06_manifold_constrained_hyper_connections (the iterations) and
notebooks/07 (the kernel).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from hclib.connection import compute_dtype
from hclib.streams import check_count

__all__ = [
    "SinkhornKnopp",
    "backward_segment",
    "sinkhorn_backward",
    "sinkhorn_forward",
    "sinkhorn_knopp",
    "sinkhorn_tile",
    "sinkhorn_tile_backward",
]


# ----------------------------------------------------------------------------- tile helpers
# A tile is (BLOCK_T, NP, NP): axis 1 indexes rows i, axis 2 columns j. `valid` is a mask that
# broadcasts to the tile and is False on the padding (i >= n or j >= n).


@triton.jit
def _padding(valid):
    """``(pad_columns, pad_rows)`` ``(1, NP)``: 1.0 where a column (row) is padding, else 0."""
    ok = valid.to(tl.int32)
    return (tl.max(ok, axis=1) == 0).to(tl.float32), (tl.max(ok, axis=2) == 0).to(tl.float32)


@triton.jit
def _start(x, valid):
    """``M^(0) = exp(x - colmax(x))`` on the valid entries, 0 on the padding."""
    xm = tl.where(valid, x, float("-inf"))
    m = tl.max(xm, axis=1)
    m = tl.where(m == float("-inf"), 0.0, m)
    return tl.where(valid, tl.exp(xm - m[:, None, :]), 0.0)


# The rounds are written out inside the loops rather than called as helpers: the interpreter
# pays for every call of a jit function, and a compiled kernel inlines them anyway.


@triton.jit
def _rounds(M, pad_columns, pad_rows, count):
    """``count`` rounds ``M <- T_r(T_c(M))``; a padded column or row sums to 0 and is divided
    by 1 (``pad_*`` is 1.0 there)."""
    for _ in range(count):
        M = M / (tl.sum(M, axis=1) + pad_columns)[:, None, :]  # T_c
        M = M / (tl.sum(M, axis=2) + pad_rows)[:, :, None]  # T_r
    return M


@triton.jit
def _log_rounds(L, valid, count):
    """``count`` rounds in log space: subtract each column's, then each row's log-sum-exp;
    the padding stays at -inf (its max is replaced by 0 and its sum by 1)."""
    for _ in range(count):
        m = tl.max(L, axis=1)
        m = tl.where(m == float("-inf"), 0.0, m)
        s = tl.sum(tl.where(valid, tl.exp(L - m[:, None, :]), 0.0), axis=1)
        L = tl.where(valid, L - (m + tl.log(tl.where(s > 0, s, 1.0)))[:, None, :], float("-inf"))
        m = tl.max(L, axis=2)
        m = tl.where(m == float("-inf"), 0.0, m)
        s = tl.sum(tl.where(valid, tl.exp(L - m[:, :, None]), 0.0), axis=2)
        L = tl.where(valid, L - (m + tl.log(tl.where(s > 0, s, 1.0)))[:, :, None], float("-inf"))
    return L


@triton.jit
def _not_finite(M):
    """Per token ``(BLOCK_T,)``: 1 where some entry is NaN or infinite, else 0."""
    bad = ((M != M) | (tl.abs(M) == float("inf"))).to(tl.int32)
    return tl.max(tl.max(bad, axis=2), axis=1)


@triton.jit
def sinkhorn_tile(x, valid, iters):
    """``(SK(x), bad)`` of a ``(BLOCK_T, NP, NP)`` logit tile in ``exp`` space, in the dtype of
    ``x``, 0 on the padding; ``bad`` ``(BLOCK_T,)`` is 1 for a token whose row or column sum
    underflowed to 0 (its entries are then NaN or infinite): the caller must then redo every
    token of the call in log space (:func:`sinkhorn_tile_log`), as the reference does.
    """
    pad_columns, pad_rows = _padding(valid)
    M = _rounds(_start(x, valid), pad_columns, pad_rows, iters)
    return M, _not_finite(M)


@triton.jit
def sinkhorn_tile_log(x, valid, iters):
    """``SK(x)`` of a tile computed in log space (the reference's fallback), 0 on the padding."""
    L = _log_rounds(tl.where(valid, x, float("-inf")), valid, iters)
    return tl.where(valid, tl.exp(L), 0.0)


@triton.jit
def sinkhorn_tile_backward(x, valid, g, iters, segment, log_space):
    """Vector-Jacobian product of SK: ``dx`` ``(BLOCK_T, NP, NP)`` for the output gradient ``g``.

    Steps back through the rounds; round ``k + 1`` needs its input ``M^(k)``, recomputed in
    registers, never stored. The rounds are cut into segments of ``segment`` rounds (about
    ``sqrt(iters)``): for each segment, last first, its first iterate is recomputed from
    ``M^(0)`` and kept as a checkpoint, and each iterate inside it from the checkpoint. That is
    about ``iters^1.5`` rounds in all (70 for ``iters = 20``, ``segment = 5``) instead of the
    ``iters^2 / 2`` of recomputing every iterate from ``M^(0)``, for one extra tile.
    ``log_space`` (a scalar) says the forward ran in log space.
    """
    segments = tl.cdiv(iters, segment)
    if log_space:
        L0 = tl.where(valid, x, float("-inf"))
        out = tl.where(valid, tl.exp(_log_rounds(L0, valid, iters)), 0.0)
        G = tl.where(valid, g * out, 0.0)  # dL^(iters) = dSK * SK
        for back_segment in range(segments):
            first = (segments - 1 - back_segment) * segment
            checkpoint = _log_rounds(L0, valid, first)  # L^(first)
            last = tl.minimum(first + segment, iters) - 1
            for back in range(last - first + 1):
                L = _log_rounds(checkpoint, valid, last - back - first)  # L^(k), k = last - back
                m = tl.max(L, axis=1)  # round k + 1, forward again: Lc = T_c(L), Lr = T_r(Lc)
                m = tl.where(m == float("-inf"), 0.0, m)
                s = tl.sum(tl.where(valid, tl.exp(L - m[:, None, :]), 0.0), axis=1)
                Lc = L - (m + tl.log(tl.where(s > 0, s, 1.0)))[:, None, :]
                Lc = tl.where(valid, Lc, float("-inf"))
                m = tl.max(Lc, axis=2)
                m = tl.where(m == float("-inf"), 0.0, m)
                s = tl.sum(tl.where(valid, tl.exp(Lc - m[:, :, None]), 0.0), axis=2)
                Lr = Lc - (m + tl.log(tl.where(s > 0, s, 1.0)))[:, :, None]
                Lr = tl.where(valid, Lr, float("-inf"))
                dLc = G - tl.where(valid, tl.exp(Lr), 0.0) * tl.sum(G, axis=2)[:, :, None]
                G = dLc - tl.where(valid, tl.exp(Lc), 0.0) * tl.sum(dLc, axis=1)[:, None, :]
                G = tl.where(valid, G, 0.0)
        dx = G
    else:
        pad_columns, pad_rows = _padding(valid)
        M0 = _start(x, valid)
        G = tl.where(valid, g, 0.0)
        for back_segment in range(segments):
            first = (segments - 1 - back_segment) * segment
            checkpoint = _rounds(M0, pad_columns, pad_rows, first)  # M^(first)
            last = tl.minimum(first + segment, iters) - 1
            for back in range(last - first + 1):
                M = _rounds(checkpoint, pad_columns, pad_rows, last - back - first)  # M^(k)
                c = tl.sum(M, axis=1) + pad_columns  # round k + 1, forward again
                A = M / c[:, None, :]  # T_c
                r = tl.sum(A, axis=2) + pad_rows
                B = A / r[:, :, None]  # T_r
                dA = (G - tl.sum(G * B, axis=2)[:, :, None]) / r[:, :, None]
                G = (dA - tl.sum(dA * A, axis=1)[:, None, :]) / c[:, None, :]
                G = tl.where(valid, G, 0.0)
        dx = G * M0  # d exp(x - colmax) / dx, colmax held constant
    return tl.where(valid, dx, 0.0)


def backward_segment(iters: int) -> int:
    """Rounds per checkpoint segment of :func:`sinkhorn_tile_backward`: ``ceil(sqrt(iters))``."""
    return max(1, math.isqrt(iters - 1) + 1) if iters > 1 else 1


# ------------------------------------------------------------------------------ kernels


@triton.jit
def _tile_offsets(pid, T, n, NP: tl.constexpr, BLOCK_T: tl.constexpr):
    t = (pid * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
    t = t[:, None, None]  # (BLOCK_T, 1, 1)
    i = tl.arange(0, NP)[None, :, None]  # (1, NP, 1)
    j = tl.arange(0, NP)[None, None, :]  # (1, 1, NP)
    valid = (i < n) & (j < n)  # (1, NP, NP)
    offsets = t * n * n + i * n + j  # (BLOCK_T, NP, NP)
    return offsets, valid, (t < T) & valid


@triton.jit
def _sinkhorn_forward_kernel(
    x_ptr,
    out_ptr,
    flag_ptr,
    T,
    n,
    iters,
    REDO: tl.constexpr,
    NP: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    """``REDO = False``: SK in ``exp`` space, and ``flag = 1`` if a token underflowed.
    ``REDO = True`` (launched right after): if the flag is set, every token again in log space.
    """
    offsets, valid, mask = _tile_offsets(tl.program_id(0), T, n, NP, BLOCK_T)
    if REDO:
        if tl.load(flag_ptr) > 0:
            x = tl.load(x_ptr + offsets, mask=mask, other=0.0)
            tl.store(out_ptr + offsets, sinkhorn_tile_log(x, valid, iters), mask=mask)
    else:
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0)
        M, bad = sinkhorn_tile(x, valid, iters)
        tl.store(out_ptr + offsets, M, mask=mask)
        if tl.max(bad, axis=0) > 0:
            tl.atomic_max(flag_ptr, 1)


@triton.jit
def _sinkhorn_backward_kernel(
    x_ptr, g_ptr, dx_ptr, flag_ptr, T, n, iters, segment, NP: tl.constexpr, BLOCK_T: tl.constexpr
):
    offsets, valid, mask = _tile_offsets(tl.program_id(0), T, n, NP, BLOCK_T)
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0)
    g = tl.load(g_ptr + offsets, mask=mask, other=0.0)
    dx = sinkhorn_tile_backward(x, valid, g, iters, segment, tl.load(flag_ptr) > 0)
    tl.store(dx_ptr + offsets, dx, mask=mask)


# ---------------------------------------------------------------------------- launchers


def padded_rate(n: int) -> int:
    """``NP``: the register tile's side, the next power of two ``>= max(n, 2)``."""
    return max(2, triton.next_power_of_2(n))


def _block_tokens(n: int, device: torch.device) -> int:
    """Tokens per program: 512 tile entries on a GPU (4 per thread with 4 warps; larger tiles
    spill registers in the backward), 64 tokens in the interpreter (fewer, larger programs run
    faster there)."""
    NP = padded_rate(n)
    if device.type == "cuda":
        return max(1, 512 // (NP * NP))
    return 64


def _as_tokens(logits: torch.Tensor) -> torch.Tensor:
    """``(..., n, n)`` logits as a contiguous ``(T, n, n)`` tensor in the compute dtype."""
    n = logits.shape[-1]
    return logits.reshape(-1, n, n).to(compute_dtype(logits.dtype)).contiguous()


def sinkhorn_forward(logits: torch.Tensor, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(SK(logits), flag)``: ``(T, n, n) -> (T, n, n)`` in float32 (float64 for float64
    input), and an int32 ``(1,)`` flag, 1 where the call fell back to log space (no host sync).
    """
    x = _as_tokens(logits)
    T, n = x.shape[0], x.shape[-1]
    out = torch.empty_like(x)
    flag = torch.zeros(1, dtype=torch.int32, device=x.device)
    if T == 0:
        return out, flag
    BLOCK_T = _block_tokens(n, x.device)
    grid = (triton.cdiv(T, BLOCK_T),)
    for redo in (False, True):
        _sinkhorn_forward_kernel[grid](
            x, out, flag, T, n, iters, REDO=redo, NP=padded_rate(n), BLOCK_T=BLOCK_T
        )
    return out, flag


def sinkhorn_backward(
    logits: torch.Tensor, grad: torch.Tensor, flag: torch.Tensor, iters: int
) -> torch.Tensor:
    """``d SK / d logits`` applied to ``grad``: ``(T, n, n), (T, n, n) -> (T, n, n)``; ``flag``
    is the forward's (log space or not)."""
    x = _as_tokens(logits)
    g = grad.reshape(x.shape).to(x.dtype).contiguous()
    T, n = x.shape[0], x.shape[-1]
    dx = torch.empty_like(x)
    if T == 0:
        return dx
    BLOCK_T = _block_tokens(n, x.device)
    grid = (triton.cdiv(T, BLOCK_T),)
    segment = backward_segment(iters)
    _sinkhorn_backward_kernel[grid](
        x, g, dx, flag, T, n, iters, segment, NP=padded_rate(n), BLOCK_T=BLOCK_T
    )
    return dx


class SinkhornKnopp(torch.autograd.Function):
    """``SK(logits)`` with a backward that recomputes the iterations (saves only the logits and
    the log-space flag)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, iters: int) -> torch.Tensor:
        out, flag = sinkhorn_forward(logits, iters)
        ctx.save_for_backward(logits, flag)
        ctx.iters = iters
        return out.view(logits.shape).to(logits.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, flag = ctx.saved_tensors
        dx = sinkhorn_backward(logits, grad, flag, ctx.iters)
        return dx.view(logits.shape).to(logits.dtype), None


def sinkhorn_knopp(logits: torch.Tensor, iters: int = 20) -> torch.Tensor:
    """:func:`hclib.manifold.sinkhorn_knopp` as Triton kernels, with a backward that recomputes.

    Args:
        logits: ``(..., n, n)``, on a CUDA device or (under ``TRITON_INTERPRET=1``) the CPU.
        iters: number of column-then-row rounds, ``>= 1``.

    Returns:
        ``(..., n, n)`` in the dtype of ``logits``, computed in float32 (float64 for float64).
        Where any token underflows, every token is computed in log space, as in the reference.
    """
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() < 2 or logits.shape[-1] != logits.shape[-2]:
        raise ValueError(f"logits must have shape (..., n, n), got {tuple(logits.shape)}")
    iters = check_count(iters, "iters", "Sinkhorn-Knopp iterations")
    return SinkhornKnopp.apply(logits, iters)
