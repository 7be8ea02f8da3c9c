"""A deep toy MLP that takes any connection: the network of the seesaw experiments.

``x -> Linear -> [connection(Norm -> Linear -> activation)] x depth -> Norm -> Linear``

Each block's branch is one norm, one square linear layer and one activation, so depth is
cheap and the only thing that differs between runs is how the blocks are connected.
With ``connection="residual", norm="post"`` the norm moves after the sum (Post-Norm) and the
final norm is dropped, as in the original Transformer.

Used in: notebooks/01_residual_connections (the seesaw), 02, 05 and 08 (toy comparisons).
"""

from __future__ import annotations

import torch
from torch import nn

from hclib.models.wiring import build_connection, check_connection, enter_state, leave_state
from hclib.streams import check_count

__all__ = ["DeepMLP"]

_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh, "silu": nn.SiLU}


class DeepMLP(nn.Module):
    """A stack of ``depth`` one-layer blocks joined by the chosen connection.

    Args:
        in_features: input width.
        out_features: output width (classes or regression targets).
        dim: model width ``d``.
        depth: number of blocks (connections).
        connection: ``"residual"``, ``"hc"``, ``"fc"`` or ``"mhc"``.
        norm: ``"pre"`` or ``"post"``, for ``connection="residual"``.
        n: streams (``hc``, ``mhc``); m: fractions (``fc``).
        dynamic: dynamic weights for ``hc`` and ``fc``.
        activation: ``"gelu"``, ``"relu"``, ``"tanh"`` or ``"silu"``.
        impl: ``"auto"``, ``"torch"``, ``"compile"`` or ``"triton"``: what runs the
            connections' math (see :func:`hclib.kernels.resolve_impl`).

    Shapes:
        ``(..., in_features) -> (..., out_features)``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        dim: int = 64,
        depth: int = 32,
        connection: str = "residual",
        norm: str = "pre",
        n: int = 4,
        m: int = 4,
        dynamic: bool = True,
        activation: str = "gelu",
        impl: str = "auto",
    ) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            check_count(value, name, "features")
        check_count(depth, "depth", "blocks")
        check_connection(connection, dim, n, m)
        if norm not in ("pre", "post"):
            raise ValueError(f"norm must be 'pre' or 'post', got {norm!r}")
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}"
            )
        self.connection, self.n, self.m = connection, n, m
        post = connection == "residual" and norm == "post"
        self.embed = nn.Linear(in_features, dim)
        self.layers = nn.ModuleList()
        for k in range(depth):
            branch = nn.Sequential(
                nn.Identity() if post else nn.LayerNorm(dim),
                nn.Linear(dim, dim),
                _ACTIVATIONS[activation](),
            )
            self.layers.append(
                build_connection(
                    connection, dim, branch, k, n=n, m=m, dynamic=dynamic, norm=norm, impl=impl
                )
            )
        self.final_norm = nn.Identity() if post else nn.LayerNorm(dim)
        self.head = nn.Linear(dim, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in_features) -> (..., out_features)``."""
        H = enter_state(self.connection, self.embed(x), self.n, self.m)  # carried state
        for layer in self.layers:
            H = layer(H)
        return self.head(self.final_norm(leave_state(self.connection, H)))

    def state(self, x: torch.Tensor) -> torch.Tensor:
        """The carried state entering the first block (for :func:`hclib.connection_matrix`)."""
        return enter_state(self.connection, self.embed(x), self.n, self.m)
