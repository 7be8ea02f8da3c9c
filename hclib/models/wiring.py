"""Choosing a connection by name, and wiring the carried state in and out of a model.

Every model of the book (the toy MLP, the GPT, the MoE GPT) is a stack of branches; one
switch picks how they are connected:

========== ========================================= =================================
name       connection                                carried state per token
========== ========================================= =================================
residual   :class:`hclib.Residual` (``norm`` pre/post) ``(d,)``
hc         :class:`hclib.HyperConnection`            ``(n, d)``: expand, then sum (HC Alg. 1)
fc         :class:`hclib.FracConnection`             ``(m, d/m)``: split, then concatenate
mhc        :class:`hclib.ManifoldHyperConnection`    ``(n, d)``: expand, then sum
========== ========================================= =================================
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from hclib.connection import Connection
from hclib.frac import FracConnection
from hclib.hyper import HyperConnection
from hclib.kernels.dispatch import check_impl
from hclib.manifold import ManifoldHyperConnection
from hclib.residual import Residual
from hclib.streams import (
    check_count,
    expand_streams,
    merge_fractions,
    reduce_streams,
    split_fractions,
)

__all__ = ["CONNECTIONS", "build_connection", "carried_dtype", "enter_state", "leave_state"]

CONNECTIONS = ("residual", "hc", "fc", "mhc")


def check_connection(kind: str, dim: int, n: int = 4, m: int = 4) -> None:
    """Raise a clear error for an unknown connection name or a bad rate."""
    if kind not in CONNECTIONS:
        raise ValueError(f"connection must be one of {CONNECTIONS}, got {kind!r}")
    check_count(n, "n", "streams")
    check_count(m, "m", "fractions")
    if kind == "fc" and dim % m:
        raise ValueError(f"d={dim} is not divisible by m={m} fractions")


def build_connection(
    kind: str,
    dim: int,
    branch: Callable[..., torch.Tensor],
    layer_id: int = 0,
    *,
    n: int = 4,
    m: int = 4,
    dynamic: bool = True,
    norm: str = "pre",
    tanh: bool = True,
    impl: str = "auto",
) -> Connection:
    """Wrap ``branch`` in the connection called ``kind`` (see the module table).

    Args:
        kind: ``"residual"``, ``"hc"``, ``"fc"`` or ``"mhc"``.
        dim: model width ``d``.
        branch: callable ``(..., d) -> (..., d)``.
        layer_id: index of the connection in the model (HC reads stream ``layer_id % n``).
        n: streams for ``hc`` and ``mhc``; m: fractions for ``fc``.
        dynamic: dynamic (input-dependent) weights for ``hc`` and ``fc``.
        norm: ``"pre"`` or ``"post"``, for ``residual`` only.
        tanh: tanh on the dynamic projections of ``hc`` and ``fc``.
        impl: ``"auto"``, ``"torch"``, ``"compile"`` or ``"triton"``, for every connection
            (see :func:`hclib.kernels.resolve_impl`).
    """
    check_connection(kind, dim, n, m)
    check_impl(impl)
    if kind == "residual":
        return Residual(dim, branch, norm=norm, impl=impl)
    if kind == "hc":
        return HyperConnection(
            dim, branch, n=n, layer_id=layer_id, dynamic=dynamic, tanh=tanh, impl=impl
        )
    if kind == "fc":
        return FracConnection(
            dim, branch, m=m, layer_id=layer_id, dynamic=dynamic, tanh=tanh, impl=impl
        )
    return ManifoldHyperConnection(dim, branch, n=n, layer_id=layer_id, impl=impl)


def carried_dtype(h: torch.Tensor, state_dtype: str = "autocast") -> torch.dtype:
    """The dtype the carried state is held in, for an embedding output ``h``.

    ``"autocast"``: under an enabled autocast for ``h``'s device, the autocast dtype
    (bfloat16 under Lightning's ``bf16-mixed``), else ``h.dtype``. ``"weights"``: always
    ``h.dtype``, the weights' dtype (float32 under ``bf16-mixed``: twice the bytes per
    token and stream). The connections keep the dtype of the state they are given, and
    compute their coefficients in float32 either way.
    """
    if state_dtype not in ("autocast", "weights"):
        raise ValueError(f"state_dtype must be 'autocast' or 'weights', got {state_dtype!r}")
    device = h.device.type
    if state_dtype == "autocast" and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return h.dtype


def enter_state(kind: str, h: torch.Tensor, n: int = 4, m: int = 4) -> torch.Tensor:
    """The carried state made from the embedding ``h`` ``(..., d)``: replicate, split or keep."""
    if kind in ("hc", "mhc"):
        return expand_streams(h, n)  # (..., n, d)
    if kind == "fc":
        return split_fractions(h, m)  # (..., m, d/m)
    return h


def leave_state(kind: str, H: torch.Tensor) -> torch.Tensor:
    """The hidden state ``(..., d)`` read from the last carried state: sum, concat or keep."""
    if kind in ("hc", "mhc"):
        return reduce_streams(H)
    if kind == "fc":
        return merge_fractions(H)
    return H
