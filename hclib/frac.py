"""Frac-connections (FC, Zhu et al. 2025, arXiv 2503.14125), static and dynamic.

Instead of widening the hidden state into ``n`` copies, FC splits it into ``m`` contiguous
fractions ``H`` ``(..., m, d/m)`` (FC Eq. 6), so the carried state stays ``d`` wide.
One layer is described by the FC matrix (FC Eq. 7), of shape ``(m+1, 2m)``::

    FC = [[0_{1 x m}, B],      B (1, m): per-fraction write-in scales
          [Y,         A]]      Y (m, m): fraction mixing into the branch input
                               A (m, m): fraction mixing of the residual

and computes (FC Eq. 8, Algorithm 1)::

    h_0 = concat(Y^T H)                                  the branch input  (..., d)
    H^  = B^T o split(T(h_0)) + A^T H                    B acts per fraction (elementwise)

Dynamic FC (Eqs. 11-14) adds ``s * tanh(norm(H) W)`` terms, computed per fraction from its
``d/m`` features. Initialisation (Eq. 15): ``Y = A = I``, ``B = 1``, projections zero,
scales 0.01, which makes every FC layer exactly the Pre-Norm residual ``h + T(h)``.

Derived in: notebooks/05_frac_connections.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from hclib.connection import AlphaBetaConnection, Mappings, as_matrix, check_layer_id
from hclib.streams import check_count, merge_fractions, split_fractions

__all__ = ["FracConnection"]


class FracConnection(AlphaBetaConnection):
    """Frac-connection around one branch (FC Eqs. 6-15).

    Args:
        dim: model width ``d``; must be divisible by ``m``.
        branch: callable ``(..., d) -> (..., d)`` including its own pre-norm.
        m: frac-rate, the number of fractions.
        layer_id: index of this connection in the network, 0-based. FC's initialisation
            does not depend on it (unlike HC's); it is kept for a uniform API.
        dynamic: add the input-dependent weights of dynamic FC (Eqs. 11-14).
        tanh: apply ``tanh`` to the dynamic projections.
        norm: ``"layer"`` (LayerNorm, FC Algorithm 2) or ``"rms"`` (the norm of the
            paper's parameter count, Eq. 19): applied to each fraction's ``d/m`` features.
        norm_affine: give that norm learnable parameters (``norm="rms", norm_affine=True``
            matches the paper's count ``|theta_norm| = d/m``).
        eps: epsilon of that norm.

    Parameters (FC Algorithm 2 layout):
        ``static_alpha`` ``(m, 2m)`` = ``[Y | A]``; ``static_beta`` ``(m,)`` = ``B``;
        dynamic only: ``dynamic_alpha`` ``(d/m, 2m)`` = ``[W_gamma | W_alpha]``,
        ``dynamic_beta`` ``(d/m,)``, ``alpha_scale`` and ``beta_scale`` ``(1,)``.

    Shapes:
        state ``H`` ``(..., m, d/m)`` -> ``(..., m, d/m)``.
    """

    def __init__(
        self,
        dim: int,
        branch: Callable[..., torch.Tensor],
        m: int = 4,
        layer_id: int = 0,
        dynamic: bool = True,
        tanh: bool = True,
        norm: str = "layer",
        norm_affine: bool = False,
        eps: float = 1e-5,
    ) -> None:
        m = check_count(m, "m", "fractions")
        check_count(dim, "dim", "features")
        if dim % m:
            raise ValueError(f"d={dim} is not divisible by m={m} fractions")
        static_alpha = torch.cat([torch.eye(m), torch.eye(m)], dim=1)  # Eq. 15: [Y | A] = [I | I]
        static_beta = torch.ones(m)  # B = 1
        super().__init__(
            dim, branch, static_alpha, static_beta, dim // m, dynamic, tanh, norm, norm_affine, eps
        )
        self.m = m
        self.frac_dim = dim // m
        self.layer_id = check_layer_id(layer_id)

    def _tail(self) -> tuple[tuple[int, int], str]:
        return (self.m, self.frac_dim), "(m, d/m)"

    def forward(self, H: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """``(..., m, d/m) -> (..., m, d/m)``; extra arguments go to the branch.

        The connection math runs in float32 (float64 if the input or the module is float64);
        the branch sees its input in the dtype of ``H`` and the result has the dtype of ``H``.
        """
        Hc, alpha, beta = self._state_weights(H, *self._tail(), expand=False)
        m = self.m
        mix = alpha.transpose(-1, -2) @ Hc  # [Y | A]^T H  (..., 2m, d/m)
        h0 = merge_fractions(mix[..., :m, :])  # concat(Y^T H)  (..., d)
        y = self._run_branch(h0.to(H.dtype), args, kwargs).to(Hc.dtype)  # (..., d)
        out = beta.unsqueeze(-1) * split_fractions(y, m) + mix[..., m:, :]  # Eq. 8 (..., m, d/m)
        return out.to(H.dtype)

    def mappings(self, H: torch.Tensor | None = None) -> Mappings:
        """Per-token ``pre = Y^T`` ``(..., m, m)``, ``post = B`` ``(..., m)``,
        ``res = A^T`` ``(..., m, m)``, in the compute dtype.

        Static FC needs no ``H`` (then there are no batch dimensions); dynamic FC does.
        """
        _, alpha, beta = self._state_weights(H, *self._tail())
        m = self.m
        pre = alpha[..., :m].transpose(-1, -2)  # Y^T
        res = alpha[..., m:].transpose(-1, -2)  # A^T
        return Mappings(pre=pre, post=beta, res=res)

    @classmethod
    def from_matrix(
        cls, matrix: torch.Tensor, dim: int, branch: Callable[..., torch.Tensor]
    ) -> FracConnection:
        """A static frac-connection whose FC matrix (Eq. 7) is exactly ``matrix``.

        Args:
            matrix: ``(m+1, 2m)`` in the layout ``[[0, B], [Y, A]]``; the top-left ``1 x m``
                block must be zero. A float64 matrix gives a float64 module.
            dim: model width ``d``, divisible by ``m``.
            branch: callable ``(..., d) -> (..., d)``.
        """
        M = as_matrix(matrix)
        rows, cols = M.shape
        m = rows - 1
        if m < 1 or cols != 2 * m:
            raise ValueError(
                f"an FC matrix must have shape (m+1, 2m) with m >= 1, got {(rows, cols)}"
            )
        module = cls(dim, branch, m=m, dynamic=False)
        module._load_static_matrix(M)  # B = M[0, m:], [Y | A] = M[1:, :]
        return module

    def extra_repr(self) -> str:
        return f"dim={self.dim}, m={self.m}, dynamic={self.dynamic}, tanh={self.use_tanh}"
