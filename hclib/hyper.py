"""Hyper-connections (HC, Zhu et al. 2024, arXiv 2409.19606), static and dynamic.

The state is ``n`` streams ``H`` ``(..., n, d)``. One layer is described by the HC matrix
(HC Eq. 1)::

    HC = [[0,   B  ],      B   (1, n)  write-in weights (depth-connections)
          [A_m, A_r]]      A_m (n, 1)  read-out weights, A_r (n, n) stream mixing

and computes (HC Eqs. 2-5)::

    h_0 = A_m^T H                 the branch input        (Eq. 3)
    H'  = A_r^T H                 the mixed streams       (Eq. 4)
    H^  = B^T T(h_0)^T + H'       the next state          (Eq. 5)

Dynamic HC adds input-dependent terms (Eqs. 10-13), computed per stream from
``norm(H)``, scaled by learnable scalars ``s_alpha, s_beta`` initialised to 0.01.
Initialisation (Eq. 14, Algorithm 2): layer ``k`` reads stream ``k mod n``, ``A_r = I``,
``B = 1``, dynamic projections zero; this makes an HC network equal to the Pre-Norm
residual network (each stream carries the Pre-Norm hidden state).

Derived in: notebooks/02_hyper_connections (static), notebooks/03_dynamic_hyper_connections
(dynamic), notebooks/04_what_hyper_connections_express (``from_matrix``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from hclib.connection import AlphaBetaConnection, Mappings, as_matrix, check_layer_id
from hclib.kernels.dispatch import compiled, resolve_impl
from hclib.streams import check_count

__all__ = ["HyperConnection"]


def _write_in(
    y: torch.Tensor, H_mixed: torch.Tensor, beta: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """HC Eq. 5, ``H^ = B^T y + H'``, in the dtype of ``H'``; the result in ``dtype``."""
    out = beta.unsqueeze(-1) * y.to(H_mixed.dtype).unsqueeze(-2) + H_mixed  # (..., n, d)
    return out.to(dtype)


class HyperConnection(AlphaBetaConnection):
    """Hyper-connection around one branch (HC Eqs. 1-14).

    Args:
        dim: model width ``d``.
        branch: callable ``(..., d) -> (..., d)`` including its own pre-norm.
        n: expansion rate, the number of streams.
        layer_id: index of this connection in the network, 0-based; at init the branch
            reads stream ``layer_id % n`` (Algorithm 2).
        dynamic: add the input-dependent weights of dynamic HC (Eqs. 10-13).
        tanh: apply ``tanh`` to the dynamic projections (``False`` is the paper's
            "w/o tanh" variant).
        norm: ``"layer"`` (LayerNorm, as in Algorithm 2) or ``"rms"``: the norm of Eq. 10.
        norm_affine: give that norm learnable parameters. Default ``False``: an affine gain
            in front of the zero-initialised projections is redundant, and the paper's
            OLMo parameter counts use a norm without parameters (Appendix B).
        eps: epsilon of that norm.
        impl: ``"auto"`` (default), ``"torch"``, ``"compile"`` or ``"triton"``, resolved per
            call by :func:`hclib.kernels.resolve_impl`: ``"torch"`` runs the equations below,
            ``"compile"`` the same code under ``torch.compile`` (the branch stays eager),
            ``"triton"`` the fused kernels :func:`hclib.kernels.hyper_pre.hyper_pre` (norm,
            projection, tanh, scale and ``h_0`` in one read-out) and
            :func:`hclib.kernels.post_res.post_res`; ``"auto"`` picks ``"triton"`` on NVIDIA
            GPUs of compute capability >= 9.0 for float32 and bfloat16 states, ``"torch"``
            elsewhere (:func:`hclib.kernels.dispatch.auto_impl`).

    Parameters (Algorithm 2 layout):
        ``static_alpha`` ``(n, n+1)`` = ``[A_m | A_r]``; ``static_beta`` ``(n,)`` = ``B``;
        dynamic only: ``dynamic_alpha`` ``(d, n+1)`` = ``[W_m | W_r]``,
        ``dynamic_beta`` ``(d,)`` = ``W_beta``, ``alpha_scale`` and ``beta_scale`` ``(1,)``.

    Shapes:
        state ``H`` ``(..., n, d)`` -> ``(..., n, d)``.
    """

    def __init__(
        self,
        dim: int,
        branch: Callable[..., torch.Tensor],
        n: int = 4,
        layer_id: int = 0,
        dynamic: bool = True,
        tanh: bool = True,
        norm: str = "layer",
        norm_affine: bool = False,
        eps: float = 1e-5,
        impl: str = "auto",
    ) -> None:
        dim = check_count(dim, "dim", "features")
        n = check_count(n, "n", "streams")
        layer_id = check_layer_id(layer_id)
        # Eq. 14: A_m = e_{layer_id mod n}, A_r = I, B = 1.
        static_alpha = torch.zeros(n, n + 1)  # [A_m | A_r]  (n, n+1)
        static_alpha[layer_id % n, 0] = 1.0
        static_alpha[:, 1:] = torch.eye(n)
        static_beta = torch.ones(n)  # B  (n,)
        super().__init__(
            dim,
            branch,
            static_alpha,
            static_beta,
            dim,
            dynamic,
            tanh,
            norm,
            norm_affine,
            eps,
            impl,
        )
        self.n = n
        self.layer_id = layer_id

    def forward(self, H: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """``(..., n, d) -> (..., n, d)``; extra arguments go to the branch.

        The connection math runs in float32 (float64 if the input or the module is float64);
        the branch sees its input in the dtype of ``H`` and the result has the dtype of ``H``.
        """
        impl = resolve_impl(self.impl, self._check_state(H, (self.n, self.dim), "(n, d)"))
        if impl == "triton":
            return self._forward_triton(H, args, kwargs)
        read_out, write_in = HyperConnection._read_out, _write_in
        if impl == "compile":  # the same two functions, compiled once for every module
            read_out, write_in = compiled(read_out), compiled(write_in)
        h0, H_mixed, beta = read_out(self, H)
        y = self._run_branch(h0, args, kwargs)  # (..., d)
        return write_in(y, H_mixed, beta, H.dtype)

    def _read_out(self, H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The reference up to the branch: ``h_0`` in the dtype of ``H``, ``H'`` and ``B``."""
        Hc, alpha, beta = self._state_weights(H, (self.n, self.dim), "(n, d)", expand=False)
        # Algorithm 1 line 5: one matmul gives the branch input (row 0) and H' (rows 1..n).
        mix = alpha.transpose(-1, -2) @ Hc  # WC^T H  (..., n+1, d)
        h0, H_mixed = mix[..., 0, :], mix[..., 1:, :]  # Eq. 3 (..., d), Eq. 4 (..., n, d)
        return h0.to(H.dtype), H_mixed, beta

    def _forward_triton(self, H: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
        """The fused read-out, the branch, the fused write-in; same dtypes as the reference."""
        from hclib.kernels.hyper_pre import hyper_pre  # imports triton: only on use
        from hclib.kernels.post_res import post_res

        h0, post, res, H_pass = hyper_pre(H, **self._fused_parameters())  # h0 (..., d)
        y = self._run_branch(h0, args, kwargs)  # (..., d)
        return post_res(H_pass, y, post, res)  # Eq. 5 with post = B, res = A_r^T

    def mappings(self, H: torch.Tensor | None = None) -> Mappings:
        """Per-token ``pre = A_m^T`` ``(..., n)``, ``post = B`` ``(..., n)``,
        ``res = A_r^T`` ``(..., n, n)`` (mHC Eq. 3 naming), in the compute dtype.

        Static HC needs no ``H`` (then there are no batch dimensions); dynamic HC does.
        """
        _, alpha, beta = self._state_weights(H, (self.n, self.dim), "(n, d)")
        return Mappings(pre=alpha[..., 0], post=beta, res=alpha[..., 1:].transpose(-1, -2))

    @classmethod
    def from_matrix(
        cls, matrix: torch.Tensor, dim: int, branch: Callable[..., torch.Tensor]
    ) -> HyperConnection:
        """A static hyper-connection whose HC matrix (Eq. 1) is exactly ``matrix``.

        Args:
            matrix: ``(n+1, n+1)`` in the layout ``[[0, B], [A_m, A_r]]``; the top-left entry
                must be 0 (a layer's output does not feed its own input). A float64 matrix
                gives a float64 module.
            dim: model width ``d``.
            branch: callable ``(..., d) -> (..., d)``.
        """
        M = as_matrix(matrix)
        rows, cols = M.shape
        if rows != cols or rows < 2:
            raise ValueError(
                f"an HC matrix must be square (n+1, n+1) with n >= 1, got {tuple(M.shape)}"
            )
        module = cls(dim, branch, n=rows - 1, dynamic=False)
        module._load_static_matrix(M)  # B = M[0, 1:], [A_m | A_r] = M[1:, :]
        return module

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, n={self.n}, layer_id={self.layer_id}, dynamic={self.dynamic}, "
            f"tanh={self.use_tanh}"
        )
