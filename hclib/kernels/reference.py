"""The pure-PyTorch oracle of every fused op in :mod:`hclib.kernels`, beside the kernels.

These functions state what each kernel computes, in the connection modules' own convention
(:class:`hclib.Mappings`), with the math in float32 (float64 if any input is float64) and the
result in the dtype of the state. They import no triton. The connection modules themselves
remain the oracle of whole connections; these are the oracle of the pieces.

Derived in: notebooks/07_memory_traffic_and_fused_kernels.
"""

from __future__ import annotations

import torch

from hclib.connection import compute_dtype

__all__ = ["post_res_reference"]


def post_res_reference(
    H: torch.Tensor, y: torch.Tensor, post: torch.Tensor, res: torch.Tensor
) -> torch.Tensor:
    """Write-in and mixing, ``H' = res @ H + post (x) y`` (mHC Eq. 3; HC Eq. 5 with
    ``res = A_r^T``, ``post = B``; FC Eq. 8 with ``res = A^T`` and ``y`` split into fractions).

    Args:
        H: state ``(..., n, d)``.
        y: branch output ``(..., d)``, written into every row, or ``(..., n, d)``, one row per
            row of ``H`` (FC's ``split(y)``).
        post: ``(..., n)`` or ``(n,)``.
        res: ``(..., n, n)`` or ``(n, n)``.

    Returns:
        ``(..., n, d)`` in the dtype of ``H``.
    """
    dtype = compute_dtype(H.dtype, y.dtype, post.dtype, res.dtype)
    Hc, yc = H.to(dtype), y.to(dtype)
    if yc.dim() == Hc.dim() - 1:
        yc = yc.unsqueeze(-2)  # (..., 1, d): the same y for every row
    out = res.to(dtype) @ Hc + post.to(dtype).unsqueeze(-1) * yc  # (..., n, d)
    return out.to(H.dtype)
