"""FC's fused split / mix / merge: the kernels of HC on fractions instead of streams.

Math, per token (FC Eq. 8, Algorithm 1; ``H`` ``(m, d/m)`` holds the ``m`` fractions)::

    h0 = concat(Y^T H)                        merge(mix): fraction j of h0 = sum_i Y_ij H_i
    H' = B o split(T(h0)) + A^T H             B scales fraction i of the branch output

with the dynamic weights of FC Eqs. 11-14 computed per fraction from its ``d/m`` features.
This is the read-out of :mod:`hclib.kernels.hyper_pre` with ``k = m`` rows of ``f = d/m``
features and ``p = m`` read-out columns (HC has ``p = 1``), followed by the post+res step of
:mod:`hclib.kernels.post_res` with one branch-output row per fraction. Split and merge cost
nothing: fractions are contiguous slices, so ``(T, d)`` and ``(T, m, d/m)`` are the same
memory, and the read-out kernel writes ``concat(Y^T H)`` directly as ``(T, d)``.

Bytes per token (``s`` bytes per element): the read-out reads ``d s`` and writes ``d s``
(HC writes ``d s`` from ``n d s`` read); the post+res step reads ``2 d s`` and writes
``d s``: FC moves about ``4 d s`` per token forward where HC at rate ``n`` moves
``(3 n + 2) d s``. The backward and its partial sums are those of the two kernels.

Layers: the kernels and launchers of :mod:`hclib.kernels.hyper_pre` and
:mod:`hclib.kernels.post_res` -> their ``torch.autograd.Function`` s -> :func:`frac_pre` and
:func:`frac_post_res` -> :class:`hclib.FracConnection` (``impl="triton"``), the oracle.

Derived in: notebooks/07_memory_traffic_and_fused_kernels.
"""

from __future__ import annotations

import math

import torch

from hclib.kernels.hyper_pre import readout
from hclib.kernels.post_res import post_res

__all__ = ["frac_post_res", "frac_pre"]


def frac_pre(
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
    """FC's fused read-out: ``h0 = concat(Y^T H)`` and the per-token ``post = B``,
    ``res = A^T`` (FC Eqs. 8, 11-14), differentiable.

    The parameters are those of :class:`hclib.FracConnection` (Algorithm 2 layout):
    ``static_alpha`` ``(m, 2m)`` = ``[Y | A]``, ``static_beta`` ``(m,)``; for dynamic FC also
    ``dynamic_alpha`` ``(d/m, 2m)``, ``dynamic_beta`` ``(d/m,)``, ``alpha_scale`` and
    ``beta_scale`` ``(1,)``, and the norm's gain and bias ``(d/m,)`` when it has them.

    Args:
        H: fractions ``(..., m, d/m)``; leading dims are flattened to tokens.
        norm, eps, tanh: as :class:`hclib.FracConnection`.

    Returns:
        ``(h0, post, res, H_pass)``: ``h0`` ``(..., d)`` in the dtype of ``H``; ``post``
        ``(..., m)`` and ``res`` ``(..., m, m)`` in the compute dtype, without leading dims for
        static FC; ``H_pass`` is ``H`` routed through the op, for :func:`frac_post_res`.
    """
    *batch, m, f = H.shape
    T = math.prod(batch)
    out, post, res, H_pass = readout(
        H.reshape(T, m, f).contiguous(),
        m,
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
        post, res = post.reshape(*batch, m), res.reshape(*batch, m, m)
    h0 = out.reshape(*batch, m * f)  # merge: (T, m, d/m) is (T, d) in memory
    return h0, post, res, H_pass.reshape(H.shape)


def frac_post_res(
    H: torch.Tensor, y: torch.Tensor, post: torch.Tensor, res: torch.Tensor
) -> torch.Tensor:
    """FC's fused update ``H' = B o split(y) + A^T H`` (FC Eq. 8), differentiable.

    Args:
        H: fractions ``(..., m, d/m)`` (``H_pass`` of :func:`frac_pre`).
        y: branch output ``(..., d)``; fraction ``i`` of it is scaled by ``post[..., i]``.
        post: ``(..., m)`` or ``(m,)``; res: ``(..., m, m)`` or ``(m, m)`` (= ``A^T``).

    Returns:
        ``(..., m, d/m)`` in the dtype of ``H``.
    """
    m, f = H.shape[-2:]
    if y.shape[-1] != m * f:
        raise ValueError(
            f"the branch output must have d = m * d/m = {m * f} features, got {tuple(y.shape)}"
        )
    return post_res(H, y.unflatten(-1, (m, f)), post, res)  # split(y): (..., m, d/m)
