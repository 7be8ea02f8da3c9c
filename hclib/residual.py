"""The residual connection, in its Pre-Norm and Post-Norm placements.

* Pre-Norm: ``h' = h + T(h)`` where ``T`` carries its own norm at its input
  (HC Eq. 15: the HC matrix ``[[0, 1], [1, 1]]``).
* Post-Norm: ``h' = Norm(h + T(h))`` (HC Eq. 16: the input-dependent HC matrix
  ``[[0, 1/sigma], [1, 1/sigma]]`` with ``sigma`` the standard deviation of ``h + T(h)``).

Derived in: notebooks/01_residual_connections.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from hclib.connection import Connection, Mappings, apply_norm, check_eps
from hclib.kernels.dispatch import resolve_impl

__all__ = ["Residual"]


class Residual(Connection):
    """A residual connection around one branch; the state is one hidden vector.

    Args:
        dim: model width ``d``.
        branch: callable ``(..., d) -> (..., d)``. For ``norm="pre"`` it should include its
            own norm at its input (``T := T o Norm``); for ``norm="post"`` it should not.
        norm: ``"pre"`` for ``h + T(h)``; ``"post"`` for ``LayerNorm(h + T(h))``.
        eps: epsilon of the Post-Norm LayerNorm.
        impl: ``"auto"``, ``"torch"``, ``"compile"`` or ``"triton"``, accepted and checked for
            a uniform API: there is nothing to fuse, since ``h + T(h)`` already reads the
            state once and writes it once, so every choice runs the same PyTorch code.

    Shapes:
        state ``(..., d)`` -> ``(..., d)``.
    """

    def __init__(
        self,
        dim: int,
        branch: Callable[..., torch.Tensor],
        norm: str = "pre",
        eps: float = 1e-5,
        impl: str = "auto",
    ) -> None:
        super().__init__(dim, branch, impl)
        if norm not in ("pre", "post"):
            raise ValueError(f"norm must be 'pre' or 'post', got {norm!r}")
        self.placement = norm
        eps = check_eps(eps)
        self.post_norm = nn.LayerNorm(self.dim, eps=eps) if norm == "post" else None

    def forward(self, h: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """``(..., d) -> (..., d)``; extra arguments go to the branch."""
        h = self._check_state(h, (self.dim,), "(d)")
        resolve_impl(self.impl, h)  # checked; nothing to fuse, every impl runs this code
        out = h + self._run_branch(h, args, kwargs)  # HC Eq. 15
        if self.post_norm is not None:
            out = apply_norm(self.post_norm, out)  # HC Eq. 16, in the dtype of h
        return out

    def mappings(self, h: torch.Tensor | None = None) -> Mappings:
        """Per-token weights as a one-stream hyper-connection.

        Pre-Norm: ``pre = post = res = 1``. Post-Norm: ``pre = 1`` and
        ``post = res = 1 / sigma`` with ``sigma = sqrt(var(h + T(h)) + eps)`` (HC Eq. 16), which
        reproduces the LayerNorm exactly when ``h + T(h)`` has zero mean and the norm's affine
        part is the identity (HC Appendix G's assumptions). Post-Norm needs ``h`` (it runs the
        branch); Pre-Norm does not.

        Returns:
            ``Mappings`` with ``pre`` ``(..., 1)``, ``post`` ``(..., 1)``, ``res`` ``(..., 1, 1)``
            (no batch dimensions when ``h`` is None).
        """
        if self.post_norm is None:
            batch = () if h is None else self._check_state(h, (self.dim,), "(d)").shape[:-1]
            dtype = torch.float32 if h is None else h.dtype
            device = None if h is None else h.device
            one = torch.ones(*batch, 1, dtype=dtype, device=device)
            return Mappings(pre=one, post=one.clone(), res=one.unsqueeze(-1))
        if h is None:
            raise ValueError("Post-Norm mappings depend on the input: pass h of shape (..., d)")
        h = self._check_state(h, (self.dim,), "(d)")
        z = h + self._run_branch(h, (), {})
        var = z.var(dim=-1, unbiased=False, keepdim=True)  # (..., 1)
        inv_sigma = torch.rsqrt(var + self.post_norm.eps)
        return Mappings(pre=torch.ones_like(inv_sigma), post=inv_sigma, res=inv_sigma.unsqueeze(-1))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, norm={self.placement!r}"
