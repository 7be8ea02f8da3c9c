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
from hclib.kernels.dispatch import compiled, resolve_impl
from hclib.streams import check_count, merge_fractions, split_fractions

__all__ = ["FracConnection"]


def _write_in(
    y: torch.Tensor, A_mixed: torch.Tensor, beta: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """FC Eq. 8, ``H^ = B^T o split(y) + A^T H``, in the dtype of ``A^T H``; the result in
    ``dtype``."""
    y = y.to(A_mixed.dtype)  # (..., d)
    out = beta.unsqueeze(-1) * split_fractions(y, A_mixed.shape[-2]) + A_mixed  # (..., m, d/m)
    return out.to(dtype)


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
        impl: ``"auto"`` (default), ``"torch"``, ``"compile"`` or ``"triton"``, resolved per
            call by :func:`hclib.kernels.resolve_impl`: ``"torch"`` runs the equations below,
            ``"compile"`` the same code under ``torch.compile`` (the branch stays eager),
            ``"triton"`` the fused kernels :func:`hclib.kernels.frac.frac_pre` and
            :func:`hclib.kernels.frac.frac_post_res`; ``"auto"`` picks ``"triton"`` on NVIDIA
            GPUs of compute capability >= 9.0 for float32 and bfloat16 states, ``"torch"``
            elsewhere (:func:`hclib.kernels.dispatch.auto_impl`).

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
        impl: str = "auto",
    ) -> None:
        m = check_count(m, "m", "fractions")
        dim = check_count(dim, "dim", "features")
        if dim % m:
            raise ValueError(f"d={dim} is not divisible by m={m} fractions")
        static_alpha = torch.cat([torch.eye(m), torch.eye(m)], dim=1)  # Eq. 15: [Y | A] = [I | I]
        static_beta = torch.ones(m)  # B = 1
        super().__init__(
            dim,
            branch,
            static_alpha,
            static_beta,
            dim // m,
            dynamic,
            tanh,
            norm,
            norm_affine,
            eps,
            impl,
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
        impl = resolve_impl(self.impl, self._check_state(H, *self._tail()))
        if impl == "triton":
            return self._forward_triton(H, args, kwargs)
        read_out, write_in = FracConnection._read_out, _write_in
        if impl == "compile":  # the same two functions, compiled once for every module
            read_out, write_in = compiled(read_out), compiled(write_in)
        h0, A_mixed, beta = read_out(self, H)
        y = self._run_branch(h0, args, kwargs)  # (..., d)
        return write_in(y, A_mixed, beta, H.dtype)

    def _read_out(self, H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The reference up to the branch: ``h_0`` in the dtype of ``H``, ``A^T H`` and ``B``."""
        Hc, alpha, beta = self._state_weights(H, *self._tail(), expand=False)
        m = self.m
        mix = alpha.transpose(-1, -2) @ Hc  # [Y | A]^T H  (..., 2m, d/m)
        h0 = merge_fractions(mix[..., :m, :])  # concat(Y^T H)  (..., d)
        return h0.to(H.dtype), mix[..., m:, :], beta

    def _forward_triton(self, H: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
        """The fused split/mix/merge, the branch, the fused update; dtypes as the reference."""
        from hclib.kernels.frac import frac_post_res, frac_pre  # imports triton: only on use

        h0, post, res, H_pass = frac_pre(H, **self._fused_parameters())  # h0 (..., d)
        y = self._run_branch(h0, args, kwargs)  # (..., d)
        return frac_post_res(H_pass, y, post, res)  # Eq. 8 with post = B, res = A^T

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
