"""What every connection shares: the wrapped branch, shape checks and the mappings tuple.

A *connection* wraps one branch ``T`` (an attention or feed-forward block that includes its
own pre-norm) and maps the carried state of layer ``k-1`` to the state of layer ``k``.
The four connections of the book differ only in how they read the branch input out of the
state, write the branch output back, and mix the state. In the mHC paper's naming
(mHC Eq. 3), one layer is::

    x_{l+1} = H_res x_l + H_post^T T(H_pre x_l)

and :class:`Mappings` holds exactly those three per-token weights ``(pre, post, res)``.
"""

from __future__ import annotations

import math
import numbers
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from hclib.kernels.dispatch import check_impl
from hclib.streams import as_int, check_count

__all__ = [
    "AlphaBetaConnection",
    "Connection",
    "Mappings",
    "apply_norm",
    "as_matrix",
    "check_eps",
    "check_finite",
    "check_flag",
    "check_layer_id",
    "compute_dtype",
    "make_norm",
]


class Mappings(NamedTuple):
    """Per-token read-out, write-in and mixing weights of one connection (mHC Eq. 3 naming).

    For a state of ``k`` streams (``k = 1`` residual, ``k = n`` HC and mHC):
    ``pre`` ``(..., k)``, ``post`` ``(..., k)``, ``res`` ``(..., k, k)`` with
    ``state' = res @ state + post[:, None] * T(pre @ state)``.

    For ``m`` fractions (FC): ``pre`` ``(..., m, m)`` mixes fractions into the branch input,
    ``post`` ``(..., m)`` scales each fraction of the branch output, ``res`` ``(..., m, m)``.
    """

    pre: torch.Tensor
    post: torch.Tensor
    res: torch.Tensor


def check_layer_id(layer_id: object) -> int:
    """Return ``layer_id`` as an ``int >= 0`` (integer-like values accepted), else raise."""
    layer_id = as_int(layer_id, "layer_id")
    if layer_id < 0:
        raise ValueError(f"layer_id must be >= 0, got {layer_id}")
    return layer_id


def check_flag(value: object, name: str) -> bool:
    """Return ``value`` if it is a bool (Python or NumPy), else a ``TypeError``.

    A flag given as a string or a number is refused rather than read as truthy:
    ``tanh="no"`` would otherwise turn tanh on.
    """
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return bool(value)


def check_finite(value: object, name: str) -> float:
    """Return ``value`` as a finite ``float`` (a real number, not a bool), else raise."""
    if isinstance(value, torch.Tensor) and value.ndim == 0 and value.dtype != torch.bool:
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def check_eps(value: object, name: str = "eps") -> float:
    """Return a norm's epsilon as a finite ``float >= 0``, else raise.

    A negative epsilon can make ``variance + eps`` negative and the norm NaN; a NaN or
    infinite one makes every output NaN or zero. Zero is allowed: it is the exact norm of the
    equations, which the book's chapters use to compare a module with them (a state that is
    exactly zero then gives NaN, as ``0 / 0``).
    """
    value = check_finite(value, name)
    if value < 0:
        raise ValueError(f"{name} must be >= 0 (a norm's epsilon), got {value}")
    return value


def as_matrix(matrix: object) -> torch.Tensor:
    """A 2-D finite floating tensor from a tensor, array or nested list.

    The caller checks the shape (an empty matrix fails that check with a ``ValueError``).
    """
    M = torch.as_tensor(matrix)
    if M.dtype == torch.bool or M.is_complex():
        raise TypeError(f"the connection matrix must hold real numbers, got dtype {M.dtype}")
    if not M.is_floating_point():
        M = M.to(torch.get_default_dtype())
    if M.dim() != 2:
        raise ValueError(f"the connection matrix must be 2-D, got shape {tuple(M.shape)}")
    if not bool(torch.isfinite(M).all()):
        where = tuple(torch.nonzero(~torch.isfinite(M))[0].tolist())
        raise ValueError(f"the connection matrix must be finite, got {M[where].item()} at {where}")
    return M


#: branches that already add their own residual: wrapping one adds the input twice
RESIDUAL_BLOCKS: tuple[type[nn.Module], ...] = (
    nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
)


def warn_if_residual_block(branch: object) -> None:
    """Warn when ``branch`` is, or contains, a block that adds its own residual
    (see :data:`RESIDUAL_BLOCKS`; ``nn.TransformerEncoder`` and ``nn.Transformer`` hold them).

    ``nn.TransformerEncoderLayer`` computes ``x + SA(x)`` and ``x + FF(x)`` itself; inside a
    connection, which adds ``x`` again, the layer computes ``2x + ...``: the residual stream
    is counted twice and grows with depth.
    """
    if not isinstance(branch, nn.Module):
        return
    block = next((m for m in branch.modules() if isinstance(m, RESIDUAL_BLOCKS)), None)
    if block is None:
        return
    where = "" if block is branch else f" (inside the {type(branch).__name__})"
    # point the warning at the first caller outside hclib (the line that built the module)
    package, frame, level = os.path.dirname(__file__), sys._getframe(0), 1
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    warnings.warn(
        f"the branch is a {type(block).__name__}{where}, which adds its own residual "
        "(x + attention(x), x + feed-forward(x)); wrapped in a connection, which adds x "
        "again, the input is counted twice. Wrap its sub-blocks instead (a pre-norm "
        "attention and a pre-norm feed-forward, each as one branch).",
        UserWarning,
        stacklevel=level,
    )


def make_norm(kind: str, dim: int, affine: bool, eps: float) -> nn.Module:
    """The norm that feeds the dynamic weights (HC Eq. 10, FC Eq. 11).

    Args:
        kind: ``"layer"`` (LayerNorm, HC Algorithm 2) or ``"rms"`` (RMSNorm).
        dim: number of features normalised.
        affine: whether the norm has a learnable gain (and, for LayerNorm, bias).
        eps: added to the variance.
    """
    if kind == "layer":
        return nn.LayerNorm(dim, eps=eps, elementwise_affine=affine, bias=affine)
    if kind == "rms":
        return nn.RMSNorm(dim, eps=eps, elementwise_affine=affine)
    raise ValueError(f"norm must be 'layer' or 'rms', got {kind!r}")


def apply_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a LayerNorm or RMSNorm in the dtype of ``x``, casting its parameters if needed."""
    weight = None if norm.weight is None else norm.weight.to(x.dtype)
    if isinstance(norm, nn.LayerNorm):
        bias = None if norm.bias is None else norm.bias.to(x.dtype)
        return nn.functional.layer_norm(x, norm.normalized_shape, weight, bias, norm.eps)
    return nn.functional.rms_norm(x, norm.normalized_shape, weight, norm.eps)


def compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The dtype the connection math runs in: at least float32, float64 if anything is."""
    out = torch.float32
    for dtype in dtypes:
        out = torch.promote_types(out, dtype)
    return out


class Connection(nn.Module):
    """Base class: holds the model width ``dim`` and the wrapped ``branch``.

    Args:
        dim: model width ``d`` (``int >= 1``).
        branch: any callable ``(..., d) -> (..., d)``; an ``nn.Module`` is registered as a
            submodule. Extra positional and keyword arguments given to the connection are
            forwarded to it.
        impl: ``"auto"``, ``"torch"``, ``"compile"`` or ``"triton"``: what runs the
            connection's own math, resolved on every call from the device of the state by
            :func:`hclib.kernels.resolve_impl` (``"auto"``: the fused Triton kernels for CUDA
            tensors when triton is installed, the PyTorch reference elsewhere). The attribute
            ``impl`` may be changed after construction.
    """

    def __init__(self, dim: int, branch: Callable[..., torch.Tensor], impl: str = "auto") -> None:
        super().__init__()
        self.impl = check_impl(impl)
        self.dim = check_count(dim, "dim", "features")
        if not callable(branch):
            raise TypeError(
                f"branch must be a callable (..., d) -> (..., d), got {type(branch).__name__}"
            )
        warn_if_residual_block(branch)
        self.branch = branch

    def _check_state(self, H: Any, tail: tuple[int, ...], what: str) -> torch.Tensor:
        if not isinstance(H, torch.Tensor):
            raise TypeError(f"the state must be a torch.Tensor, got {type(H).__name__}")
        if not H.is_floating_point():
            raise TypeError(f"the state must be a floating-point tensor, got {H.dtype}")
        if H.dim() < len(tail) or tuple(H.shape[H.dim() - len(tail) :]) != tail:
            expected = ", ".join(["..."] + [str(s) for s in tail])
            raise ValueError(f"expected a state of shape ({expected}) {what}, got {tuple(H.shape)}")
        return H

    def _run_branch(self, h0: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
        y = self.branch(h0, *args, **kwargs)
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"the branch must return a torch.Tensor, got {type(y).__name__}")
        if y.shape != h0.shape:
            raise ValueError(
                "the branch must map (..., d) to (..., d) without changing the width; "
                f"it mapped {tuple(h0.shape)} to {tuple(y.shape)}"
            )
        return y

    def mappings(self, H: torch.Tensor | None = None) -> Mappings:  # pragma: no cover
        raise NotImplementedError


class AlphaBetaConnection(Connection):
    """The weights shared by HC and FC: a static part plus a gated dynamic part.

    HC Eqs. 10-13 and FC Eqs. 11-14 have one form::

        alpha(H) = s_alpha * tanh(norm(H) @ W_alpha) + static_alpha    (per stream/fraction)
        beta(H)  = s_beta  * tanh(norm(H) @ W_beta)  + static_beta

    with the projections zero and the scales 0.01 at init (HC Algorithm 2, FC Algorithm 2).

    Args:
        dim: model width ``d``.
        branch: the wrapped callable.
        static_alpha: initial static alpha ``(k, cols)``; ``static_beta``: ``(k,)``.
        features: width of one stream or fraction (what ``W_alpha`` reads).
        dynamic, tanh, norm, norm_affine, eps, impl: see :class:`hclib.HyperConnection`.
    """

    #: parameters that take weight decay (HC Section 4, FC Section 4.3: the projections)
    decayed_parameters = ("dynamic_alpha", "dynamic_beta")

    def __init__(
        self,
        dim: int,
        branch: Callable[..., torch.Tensor],
        static_alpha: torch.Tensor,
        static_beta: torch.Tensor,
        features: int,
        dynamic: bool,
        tanh: bool,
        norm: str,
        norm_affine: bool,
        eps: float,
        impl: str = "auto",
    ) -> None:
        super().__init__(dim, branch, impl)
        self.dynamic = check_flag(dynamic, "dynamic")
        self.use_tanh = check_flag(tanh, "tanh")
        norm_affine = check_flag(norm_affine, "norm_affine")
        eps = check_eps(eps)
        self.static_alpha = nn.Parameter(static_alpha)
        self.static_beta = nn.Parameter(static_beta)
        if self.dynamic:
            self.norm = make_norm(norm, features, norm_affine, eps)
            cols = static_alpha.shape[-1]
            self.dynamic_alpha = nn.Parameter(torch.zeros(features, cols))  # W_alpha
            self.dynamic_beta = nn.Parameter(torch.zeros(features))  # W_beta
            self.alpha_scale = nn.Parameter(torch.full((1,), 0.01))  # s_alpha
            self.beta_scale = nn.Parameter(torch.full((1,), 0.01))  # s_beta
        elif norm not in ("layer", "rms"):
            raise ValueError(f"norm must be 'layer' or 'rms', got {norm!r}")

    def _weights(
        self, Hc: torch.Tensor | None, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``alpha`` ``(..., k, cols)`` and ``beta`` ``(..., k)`` in ``dtype``.

        ``Hc`` ``(..., k, features)`` is the state already cast to ``dtype``; static
        connections ignore it (it may be None).
        """
        alpha = self.static_alpha.to(dtype)
        beta = self.static_beta.to(dtype)
        if not self.dynamic:
            return alpha, beta
        if Hc is None:
            raise ValueError("dynamic weights depend on the input: pass the state")
        act = torch.tanh if self.use_tanh else (lambda x: x)
        Hn = apply_norm(self.norm, Hc)  # norm of every stream / fraction  (..., k, features)
        W_alpha, W_beta = self.dynamic_alpha.to(dtype), self.dynamic_beta.to(dtype)
        s_alpha, s_beta = self.alpha_scale.to(dtype), self.beta_scale.to(dtype)
        alpha = s_alpha * act(Hn @ W_alpha) + alpha  # (..., k, cols)
        beta = s_beta * act(Hn @ W_beta) + beta  # (..., k)
        return alpha, beta

    def _state_weights(
        self, H: torch.Tensor | None, tail: tuple[int, ...], what: str, expand: bool = True
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """Check ``H``, cast it to the compute dtype and return ``(Hc, alpha, beta)``.

        With ``H`` None (static only) ``Hc`` is None and the weights have no batch dims;
        otherwise, with ``expand``, static weights are expanded to the batch shape of ``H``.
        """
        if H is None:
            if self.dynamic:
                raise ValueError(
                    f"dynamic weights depend on the input: pass the state of shape {what}"
                )
            alpha, beta = self._weights(None, compute_dtype(self.static_alpha.dtype))
            return None, alpha, beta
        H = self._check_state(H, tail, what)
        Hc = H.to(compute_dtype(H.dtype, self.static_alpha.dtype))
        alpha, beta = self._weights(Hc, Hc.dtype)
        if not expand:
            return Hc, alpha, beta
        batch = Hc.shape[: Hc.dim() - 2]
        return Hc, alpha.expand(*batch, *alpha.shape[-2:]), beta.expand(*batch, beta.shape[-1])

    def _fused_parameters(self) -> dict[str, Any]:
        """The keyword arguments of :func:`hclib.kernels.hyper_pre.hyper_pre` and
        :func:`hclib.kernels.frac.frac_pre`: this module's parameters and settings."""
        params: dict[str, Any] = {
            "static_alpha": self.static_alpha,
            "static_beta": self.static_beta,
            "tanh": self.use_tanh,
        }
        if self.dynamic:
            params.update(
                dynamic_alpha=self.dynamic_alpha,
                dynamic_beta=self.dynamic_beta,
                alpha_scale=self.alpha_scale,
                beta_scale=self.beta_scale,
                norm_weight=self.norm.weight,
                norm_bias=getattr(self.norm, "bias", None),  # RMSNorm has none
                norm="layer" if isinstance(self.norm, nn.LayerNorm) else "rms",
                eps=self.norm.eps,
            )
        return params

    def static_matrix(self) -> torch.Tensor:
        """The static connection matrix ``[[0, beta], [alpha]]``, detached.

        HC (Eq. 1): ``[[0, B], [A_m, A_r]]``, ``(n+1, n+1)``.
        FC (Eq. 7): ``[[0_{1 x m}, B], [Y, A]]``, ``(m+1, 2m)``.
        """
        with torch.no_grad():
            alpha, beta = self.static_alpha, self.static_beta
            zeros = alpha.new_zeros(1, alpha.shape[1] - beta.shape[0])
            top = torch.cat([zeros, beta.unsqueeze(0)], dim=1)
            return torch.cat([top, alpha], dim=0).clone()

    def _load_static_matrix(self, M: torch.Tensor) -> None:
        """Set the static parameters from a matrix laid out as :meth:`static_matrix`.

        A float64 matrix makes float64 parameters; anything else float32.
        """
        if tuple(M.shape) != tuple(self.static_matrix().shape):
            raise ValueError(
                f"expected a matrix of shape {tuple(self.static_matrix().shape)}, "
                f"got {tuple(M.shape)}"
            )
        k = self.static_beta.shape[0]
        corner = M[0, : M.shape[1] - k]
        if torch.any(corner != 0):
            raise ValueError(
                "the top-left block of a connection matrix must be zero (a layer's output "
                f"does not feed its own input), got {corner.tolist()}"
            )
        dtype = torch.float64 if M.dtype == torch.float64 else torch.float32
        self.static_beta = nn.Parameter(M[0, M.shape[1] - k :].to(dtype).clone())
        self.static_alpha = nn.Parameter(M[1:, :].to(dtype).clone())
