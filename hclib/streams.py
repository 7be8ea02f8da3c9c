"""Streams and fractions: the two ways of turning one hidden state into several.

Hyper-connections *widen* the hidden state: ``h`` is replicated into ``n`` streams
(HC Section 2.1) and the streams are summed again before the final norm (HC Algorithm 1).
Frac-connections *split* it: ``h`` is cut into ``m`` contiguous fractions of width
``d / m`` (FC Eq. 6) and the fractions are concatenated again at the end.

Derived in: notebooks/02_hyper_connections (streams), notebooks/05_frac_connections
(fractions).
"""

from __future__ import annotations

import operator

import numpy as np
import torch

__all__ = [
    "as_int",
    "check_count",
    "expand_streams",
    "merge_fractions",
    "reduce_streams",
    "split_fractions",
]


def as_int(value: object, name: str, expected: str = "an int") -> int:
    """``value`` as a Python ``int`` if it is integer-like, else a ``TypeError``.

    Integer-like: an ``int``, a NumPy integer, a 0-d integer tensor or array, or anything else
    with ``__index__`` (PEP 357). Bools are refused (``True`` is not a count), and so are
    floats, even whole ones (``4.0``), and tensors with more than one element.

    Args:
        value: what the caller was given.
        name: its name in the error message, e.g. ``"n"``.
        expected: what was expected, for the message (default ``"an int"``).
    """
    if isinstance(value, torch.Tensor):
        integer = value.ndim == 0 and not value.is_floating_point() and not value.is_complex()
        accepted = integer and value.dtype != torch.bool
    elif isinstance(value, np.ndarray):
        accepted = value.ndim == 0 and np.issubdtype(value.dtype, np.integer)
    else:
        accepted = not isinstance(value, (bool, np.bool_))
    if accepted:
        try:
            return operator.index(value)
        except TypeError:
            pass
    shown = type(value).__name__
    if isinstance(value, (torch.Tensor, np.ndarray)):
        shown += f" of dtype {value.dtype} and shape {tuple(value.shape)}"
    raise TypeError(f"{name} must be {expected}, got {shown}")


def check_count(value: object, name: str, what: str) -> int:
    """Return ``value`` as an ``int >= 1``, else raise a clear error.

    Integer-like values (NumPy integers, 0-d integer tensors, anything with ``__index__``)
    are accepted and converted; see :func:`as_int`.

    Args:
        value: the count to check (an expansion rate ``n`` or frac-rate ``m``).
        name: its symbol in the book, e.g. ``"n"``.
        what: what it counts, e.g. ``"streams"``.
    """
    value = as_int(value, name, f"an int number of {what}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1 {what}, got {name}={value}")
    return value


def _check_tensor(x: object, name: str, min_dim: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < min_dim:
        raise ValueError(
            f"{name} must have at least {min_dim} dimension(s), got shape {tuple(x.shape)}"
        )
    return x


def expand_streams(h: torch.Tensor, n: int) -> torch.Tensor:
    """Replicate a hidden state into ``n`` identical streams (HC Section 2.1).

    ``H^0 = (h^0 h^0 ... h^0)^T``.

    Args:
        h: hidden state, shape ``(..., d)``.
        n: expansion rate, the number of streams (``int >= 1``).

    Returns:
        A new (contiguous) tensor of shape ``(..., n, d)`` whose every stream equals ``h``.
    """
    _check_tensor(h, "h", 1)
    n = check_count(n, "n", "streams")
    return h.unsqueeze(-2).expand(*h.shape[:-1], n, h.shape[-1]).contiguous()  # (..., n, d)


def reduce_streams(H: torch.Tensor) -> torch.Tensor:
    """Sum the streams back into one hidden state (HC Algorithm 1, line 11).

    ``h^L = sum_i h_i^L``.

    Args:
        H: stacked streams, shape ``(..., n, d)``.

    Returns:
        Shape ``(..., d)``.
    """
    _check_tensor(H, "H", 2)
    return H.sum(dim=-2)  # (..., d)


def split_fractions(h: torch.Tensor, m: int) -> torch.Tensor:
    """Split a hidden state into ``m`` contiguous fractions (FC Eq. 6).

    ``H = Reshape(h, (m, d/m))``: fraction ``i`` holds features ``i*d/m ... (i+1)*d/m - 1``.

    Args:
        h: hidden state, shape ``(..., d)`` with ``d`` divisible by ``m``.
        m: frac-rate, the number of fractions (``int >= 1``).

    Returns:
        A view of shape ``(..., m, d // m)``.
    """
    _check_tensor(h, "h", 1)
    m = check_count(m, "m", "fractions")
    d = h.shape[-1]
    if d % m:
        raise ValueError(f"d={d} is not divisible by m={m} fractions")
    return h.unflatten(-1, (m, d // m))  # (..., m, d/m)


def merge_fractions(H: torch.Tensor) -> torch.Tensor:
    """Concatenate fractions back into one hidden state: the inverse of :func:`split_fractions`.

    Args:
        H: fractions, shape ``(..., m, d/m)``.

    Returns:
        Shape ``(..., d)``.
    """
    _check_tensor(H, "H", 2)
    return H.flatten(-2)  # (..., d)
