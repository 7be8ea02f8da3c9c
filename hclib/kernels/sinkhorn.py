"""Sinkhorn-Knopp in registers: forward and backward of mHC Eq. 9 as Triton code.

The math (mHC Eqs. 8-9, the same as :func:`hclib.manifold.sinkhorn_knopp`, the oracle): for one
token's logits ``x`` ``(n, n)``, ``M^(0) = exp(x)`` and ``M^(t) = T_r(T_c(M^(t-1)))`` for
``t = 1 .. iters`` (``T_c`` divides every column by its sum, ``T_r`` every row). As in the
reference, the rounds run on ``L = log M``::

    L^(0) = x
    L <- L - logsumexp_i(L)     T_c: every column's log-sum-exp subtracted
    L <- L - logsumexp_j(L)     T_r: every row's
    SK(x) = exp(L^(iters))

where nothing underflows: each token's result is the exact iteration for logits of any spread,
computed on its own (no flag, no second pass, no decision shared between tokens).

Backward without stored iterates. With ``Lc = T_c(L)`` and ``Lr = T_r(Lc)``, one round's
vector-Jacobian product is ``dLc = dLr - exp(Lr) rowsum(dLr)``, ``dL = dLc - exp(Lc)
colsum(dLc)`` (the derivative of a log-sum-exp is a softmax), starting from ``dL^(iters) =
dSK * SK`` and ending at ``dx = dL^(0)``. Round ``t`` needs its input ``L^(t-1)``; instead of
storing the ``iters`` iterates (``iters n^2`` numbers per token), the backward recomputes them
in registers from ``x``, with one checkpoint tile: the rounds are cut into segments of
``ceil(sqrt(iters))``; for each segment, last first, its first iterate is recomputed from
``x`` and each later one from that checkpoint. About ``iters^1.5`` rounds in all (70 for
``iters = 20``, against 20 in the forward and 190 without the checkpoint), some ``n^2``
exponentials and ``6 n^2`` flops each: a few thousand per token and no memory traffic.

Bytes per token (``n^2`` logits of ``s`` bytes, ``s = 4`` in float32): the forward reads the
logits and writes ``SK(x)``: ``2 s n^2``; the backward reads the logits and the output gradient
and writes the logit gradient: ``3 s n^2``. Nothing else is saved between the two.

Layout: ``logits`` ``(T, n, n)`` contiguous, row-major (``x[t, i, j]`` at ``t n^2 + i n + j``);
one program takes ``BLOCK_T`` tokens as a ``(BLOCK_T, NP, NP)`` register tile, ``NP`` the next
power of two ``>= n``, padded entries masked to ``-inf`` (0 after ``exp``). The
``@triton.jit`` helpers :func:`sinkhorn_tile_exact` and :func:`sinkhorn_tile_backward` work on
such a tile and are reused inside the fused mHC read-out (:mod:`hclib.kernels.manifold_pre`).

Layers: the tile helpers -> ``_sinkhorn_*_kernel`` -> :func:`sinkhorn_forward` /
:func:`sinkhorn_backward` (launchers, under the tensor's CUDA device) -> the registered op
``torch.ops.hclib.sinkhorn_knopp`` with its autograd formula (``torch.compile`` keeps it in
one graph) -> :func:`sinkhorn_knopp` (functional, same signature and checks as the reference).

Derived in: notebooks/06_manifold_constrained_hyper_connections (the iterations) and
notebooks/07 (the kernel).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from hclib.connection import compute_dtype
from hclib.kernels.dispatch import device_of, fake
from hclib.manifold import _check_iters, _check_logit_values, _check_logits

__all__ = [
    "backward_segment",
    "sinkhorn_backward",
    "sinkhorn_forward",
    "sinkhorn_knopp",
    "sinkhorn_tile_backward",
    "sinkhorn_tile_exact",
]


# ----------------------------------------------------------------------------- tile helpers
# A tile is (BLOCK_T, NP, NP): axis 1 indexes rows i, axis 2 columns j. `valid` is a mask that
# broadcasts to the tile and is False on the padding (i >= n or j >= n).


@triton.jit
def _padding(valid):
    """``(pad_columns, pad_rows)`` ``(1, NP)``: True where a column (row) is padding."""
    ok = valid.to(tl.int32)
    return tl.max(ok, axis=1) == 0, tl.max(ok, axis=2) == 0


@triton.jit
def _log_sum_exp(L, axis: tl.constexpr, pad):
    """Log-sum-exp of ``L`` over ``axis`` (1: down each column, 2: along each row), as
    ``torch.logsumexp``: ``m + log(sum(exp(L - m)))`` with ``m`` the max (0 where it is -inf).
    A padded line gives 0, so that it stays -inf; a real line of -inf gives -inf (and the
    matrix NaN, as in the reference)."""
    m = tl.max(L, axis=axis)
    m = tl.where(m == float("-inf"), 0.0, m)
    if axis == 1:
        s = tl.sum(tl.exp(L - m[:, None, :]), axis=1)
    else:
        s = tl.sum(tl.exp(L - m[:, :, None]), axis=2)
    return tl.where(pad, 0.0, m + tl.log(s))


# The rounds are written out inside the loops rather than called as helpers where they are hot:
# the interpreter pays for every call of a jit function, and a compiled kernel inlines them.


@triton.jit
def _log_rounds(L, valid, pad_columns, pad_rows, count):
    """``count`` rounds of Eq. 9 on ``L = log M``: subtract each column's, then each row's
    log-sum-exp (``T_c``, ``T_r``); the padding stays at -inf."""
    for _ in range(count):
        L = tl.where(valid, L - _log_sum_exp(L, 1, pad_columns)[:, None, :], float("-inf"))
        L = tl.where(valid, L - _log_sum_exp(L, 2, pad_rows)[:, :, None], float("-inf"))
    return L


@triton.jit
def sinkhorn_tile_exact(x, valid, iters):
    """``SK(x)`` of a ``(BLOCK_T, NP, NP)`` logit tile, 0 on the padding: ``iters`` rounds on
    ``log M`` (nothing underflows), each token on its own."""
    pad_columns, pad_rows = _padding(valid)
    L = _log_rounds(tl.where(valid, x, float("-inf")), valid, pad_columns, pad_rows, iters)
    return tl.where(valid, tl.exp(L), 0.0)


@triton.jit
def sinkhorn_tile_backward(x, valid, g, iters, segment):
    """Vector-Jacobian product of SK: ``dx`` ``(BLOCK_T, NP, NP)`` for the output gradient ``g``.

    Steps back through the rounds on ``L = log M``. With ``Lc = T_c(L)`` and ``Lr = T_r(Lc)``,
    one round's product is ``dLc = dLr - exp(Lr) rowsum(dLr)``, ``dL = dLc - exp(Lc)
    colsum(dLc)``, starting from ``dL^(iters) = g * SK`` and ending at ``dx = dL^(0)``.
    Round ``k + 1`` needs its input ``L^(k)``, recomputed in registers, never stored: the
    rounds are cut into segments of ``segment`` rounds (about ``sqrt(iters)``); for each
    segment, last first, its first iterate is recomputed from ``x`` and kept as a checkpoint,
    and each iterate inside it from the checkpoint. That is about ``iters^1.5`` rounds in all
    (70 for ``iters = 20``, ``segment = 5``) instead of the ``iters^2 / 2`` of recomputing
    every iterate from ``x``, for one extra tile.
    """
    pad_columns, pad_rows = _padding(valid)
    segments = tl.cdiv(iters, segment)
    L0 = tl.where(valid, x, float("-inf"))
    out = tl.where(valid, tl.exp(_log_rounds(L0, valid, pad_columns, pad_rows, iters)), 0.0)
    G = tl.where(valid, g * out, 0.0)  # dL^(iters) = dSK * SK
    for back_segment in range(segments):
        first = (segments - 1 - back_segment) * segment
        checkpoint = _log_rounds(L0, valid, pad_columns, pad_rows, first)  # L^(first)
        last = tl.minimum(first + segment, iters) - 1
        for back in range(last - first + 1):
            L = _log_rounds(checkpoint, valid, pad_columns, pad_rows, last - back - first)
            # round k + 1 (k = last - back) forward again: Lc = T_c(L^(k)), Lr = T_r(Lc)
            Lc = tl.where(valid, L - _log_sum_exp(L, 1, pad_columns)[:, None, :], float("-inf"))
            Lr = tl.where(valid, Lc - _log_sum_exp(Lc, 2, pad_rows)[:, :, None], float("-inf"))
            dLc = G - tl.where(valid, tl.exp(Lr), 0.0) * tl.sum(G, axis=2)[:, :, None]
            G = dLc - tl.where(valid, tl.exp(Lc), 0.0) * tl.sum(dLc, axis=1)[:, None, :]
            G = tl.where(valid, G, 0.0)
    return G


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
def _sinkhorn_forward_kernel(x_ptr, out_ptr, T, n, iters, NP: tl.constexpr, BLOCK_T: tl.constexpr):
    offsets, valid, mask = _tile_offsets(tl.program_id(0), T, n, NP, BLOCK_T)
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0)
    tl.store(out_ptr + offsets, sinkhorn_tile_exact(x, valid, iters), mask=mask)


@triton.jit
def _sinkhorn_backward_kernel(
    x_ptr, g_ptr, dx_ptr, T, n, iters, segment, NP: tl.constexpr, BLOCK_T: tl.constexpr
):
    offsets, valid, mask = _tile_offsets(tl.program_id(0), T, n, NP, BLOCK_T)
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0)
    g = tl.load(g_ptr + offsets, mask=mask, other=0.0)
    dx = sinkhorn_tile_backward(x, valid, g, iters, segment)
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


def sinkhorn_forward(logits: torch.Tensor, iters: int) -> torch.Tensor:
    """``SK(logits)``: ``(..., n, n) -> (T, n, n)`` in float32 (float64 for float64 input)."""
    x = _as_tokens(logits)
    T, n = x.shape[0], x.shape[-1]
    out = torch.empty_like(x)
    if T == 0 or fake(x):
        return out
    BLOCK_T = _block_tokens(n, x.device)
    grid = (triton.cdiv(T, BLOCK_T),)
    with device_of(x):
        _sinkhorn_forward_kernel[grid](x, out, T, n, iters, NP=padded_rate(n), BLOCK_T=BLOCK_T)
    return out


def sinkhorn_backward(logits: torch.Tensor, grad: torch.Tensor, iters: int) -> torch.Tensor:
    """``d SK / d logits`` applied to ``grad``: ``(..., n, n), (..., n, n) -> (T, n, n)``."""
    x = _as_tokens(logits)
    g = grad.reshape(x.shape).to(x.dtype).contiguous()
    T, n = x.shape[0], x.shape[-1]
    dx = torch.empty_like(x)
    if T == 0 or fake(x):
        return dx
    BLOCK_T = _block_tokens(n, x.device)
    grid = (triton.cdiv(T, BLOCK_T),)
    with device_of(x):
        _sinkhorn_backward_kernel[grid](
            x, g, dx, T, n, iters, backward_segment(iters), NP=padded_rate(n), BLOCK_T=BLOCK_T
        )
    return dx


# ------------------------------------------------------------------ the registered op
# torch.library custom ops instead of an autograd.Function: torch.compile keeps them inside its
# graph as opaque calls, and their fake versions (the same launchers, which allocate the
# outputs and launch nothing on fake tensors) give it the output shapes. A custom op rather than
# triton_op + wrap_triton: Inductor gains nothing from seeing inside a kernel it cannot fuse
# with, and wrap_triton cannot trace the interpreter's kernels, so the CPU tests could not
# check the traced path.


def _forward(logits: torch.Tensor, iters: int) -> torch.Tensor:
    return sinkhorn_forward(logits, iters).view(logits.shape).to(logits.dtype)


def _backward_impl(logits: torch.Tensor, grad: torch.Tensor, iters: int) -> torch.Tensor:
    return sinkhorn_backward(logits, grad, iters).view(logits.shape).to(logits.dtype)


_sinkhorn_op = torch.library.custom_op("hclib::sinkhorn_knopp", _forward, mutates_args=())
_sinkhorn_op.register_fake(_forward)
_sinkhorn_backward_op = torch.library.custom_op(
    "hclib::sinkhorn_knopp_backward", _backward_impl, mutates_args=()
)
_sinkhorn_backward_op.register_fake(_backward_impl)


def _setup_context(ctx, inputs, output) -> None:
    logits, iters = inputs
    ctx.save_for_backward(logits)
    ctx.iters = iters


def _backward(ctx, grad: torch.Tensor):
    (logits,) = ctx.saved_tensors
    return _sinkhorn_backward_op(logits, grad, ctx.iters), None


_sinkhorn_op.register_autograd(_backward, setup_context=_setup_context)


def sinkhorn_knopp(logits: torch.Tensor, iters: int = 20) -> torch.Tensor:
    """:func:`hclib.manifold.sinkhorn_knopp` as Triton kernels, with a backward that recomputes.

    Args:
        logits: ``(..., n, n)`` floating point, finite or ``-inf``, on a CUDA device or (under
            ``TRITON_INTERPRET=1``) the CPU.
        iters: number of column-then-row rounds, an integer ``>= 1``.

    Returns:
        ``(..., n, n)`` in the dtype of ``logits``, computed in float32 (float64 for float64),
        each matrix on its own, in log space as the reference. Registered as the op
        ``torch.ops.hclib.sinkhorn_knopp`` (``torch.compile`` does not break the graph on it).

    Raises:
        as :func:`hclib.manifold.sinkhorn_knopp` (the NaN / ``+inf`` check is left out under
        ``torch.compile``).
    """
    _check_logits(logits)
    iters = _check_iters(iters)
    if not torch.compiler.is_compiling():
        _check_logit_values(logits)
    return _sinkhorn_op(logits, iters)
