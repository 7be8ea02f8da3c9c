"""One line to connect a stack of branches: :func:`hclib.connect`.

A model built from branches ``T_1 ... T_L`` (attention and feed-forward blocks, each with its
own pre-norm) needs three pieces around its connections, and :func:`connect` puts them in one
module:

1. at the embedding, the carried state is made from ``h`` ``(..., d)``: replicated into ``n``
   streams for HC and mHC (HC Section 2.1), split into ``m`` fractions for FC (FC Eq. 6),
   kept for the residual connection;
2. layer ``k`` (0-based) is wrapped with ``layer_id=k``, so that at initialisation HC's layer
   ``k`` reads stream ``k mod n`` (HC Eq. 14, Algorithm 2) and mHC's mostly that stream;
3. after the last layer the state is read back to ``(..., d)``: the streams summed
   (HC Algorithm 1, line 11), the fractions concatenated.

``connection="residual"`` gives the Pre-Norm residual network with the same branches: the A/B
switch of every experiment in the book. The pieces themselves live in
:mod:`hclib.models.wiring` (:func:`~hclib.models.wiring.build_connection`,
:func:`~hclib.models.wiring.enter_state`, :func:`~hclib.models.wiring.leave_state`), which the
book's models use too.

The stack is the one notebooks/02_hyper_connections builds by hand (HC Algorithm 1); the
book's models (:mod:`hclib.models`, chapters 8-10) wire their blocks with the same pieces.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable

import torch
from torch import nn

from hclib.connection import Connection
from hclib.models.wiring import build_connection, check_connection, enter_state, leave_state
from hclib.streams import check_count

__all__ = ["ConnectedStack", "connect"]

#: the keyword options :func:`connect` passes on to every connection
OPTIONS = tuple(
    name
    for name, parameter in inspect.signature(build_connection).parameters.items()
    if parameter.kind is inspect.Parameter.KEYWORD_ONLY and name not in ("n", "m")
)


class ConnectedStack(nn.Module):
    """A stack of branches joined by one kind of connection: ``(..., d) -> (..., d)``.

    Built by :func:`connect`; see there for the arguments. ``layers`` is the
    ``nn.ModuleList`` of connections (what :func:`hclib.connection_matrix` unfolds);
    :meth:`enter` and :meth:`leave` are the two ends, for a model that needs the carried state
    itself.

    Shapes:
        ``h`` ``(..., d)`` -> ``(..., d)``; inside, the state is ``(..., d)`` (residual),
        ``(..., n, d)`` (HC, mHC) or ``(..., m, d/m)`` (FC).
    """

    def __init__(
        self,
        layers: Iterable[Connection],
        dim: int,
        connection: str,
        n: int,
        m: int,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.dim, self.connection, self.n, self.m = dim, connection, n, m

    def enter(self, h: torch.Tensor) -> torch.Tensor:
        """The carried state made from ``h`` ``(..., d)``: replicate, split or keep."""
        if not isinstance(h, torch.Tensor):
            raise TypeError(f"h must be a torch.Tensor, got {type(h).__name__}")
        if h.dim() < 1 or h.shape[-1] != self.dim:
            raise ValueError(f"expected h of shape (..., {self.dim}), got {tuple(h.shape)}")
        return enter_state(self.connection, h, n=self.n, m=self.m)

    def leave(self, H: torch.Tensor) -> torch.Tensor:
        """The hidden state ``(..., d)`` read from the carried state: sum, concatenate or keep.

        HC and mHC sum their ``n`` streams, so at initialisation the result is ``n`` times the
        Pre-Norm hidden state; the final norm a model applies next removes the factor.
        """
        return leave_state(self.connection, H)

    def forward(self, h: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """``(..., d) -> (..., d)``; extra arguments go to every branch (e.g. a mask)."""
        H = self.enter(h)
        for layer in self.layers:
            H = layer(H, *args, **kwargs)
        return self.leave(H)

    def extra_repr(self) -> str:
        rate = {"hc": f", n={self.n}", "mhc": f", n={self.n}", "fc": f", m={self.m}"}
        return f"connection={self.connection!r}, dim={self.dim}{rate.get(self.connection, '')}"


def connect(
    branches: Iterable[Callable[..., torch.Tensor]],
    dim: int,
    connection: str = "hc",
    n: int = 4,
    m: int = 4,
    **options,
) -> ConnectedStack:
    """Join ``branches`` into one module with the connection called ``connection``.

    ``connect([T_1, ..., T_L], d, "hc")`` maps ``h`` ``(..., d)`` to ``(..., d)``: it expands
    ``h`` into the carried state, runs layer ``k`` as ``build_connection(connection, d, T_k,
    layer_id=k)`` and reads the state back (HC Algorithm 1). At initialisation every
    connection computes the Pre-Norm residual network ``h_k = h_{k-1} + T_k(h_{k-1})``: exactly
    for ``"residual"`` and ``"fc"``, and ``n`` times it for ``"hc"`` and ``"mhc"`` (every
    stream carries it and the streams are summed; a final norm removes the factor).

    Args:
        branches: a list (or ``nn.ModuleList``) of callables ``(..., d) -> (..., d)``, each
            including its own pre-norm: attention and feed-forward blocks, not a block with
            its own residual such as ``nn.TransformerEncoderLayer`` (which gives a warning).
        dim: model width ``d``.
        connection: ``"residual"`` (the Pre-Norm baseline, the A/B switch), ``"hc"``,
            ``"fc"`` or ``"mhc"``.
        n: streams for ``"hc"`` and ``"mhc"`` (HC's expansion rate).
        m: fractions for ``"fc"`` (FC's frac-rate); ``d`` must be divisible by it.
        **options: passed to every connection: ``dynamic`` and ``tanh`` (HC, FC), ``norm``
            (``"pre"`` or ``"post"``, residual only), ``impl`` (all); see
            :func:`hclib.models.build_connection`.

    Returns:
        A :class:`ConnectedStack`; ``stack.layers[k]`` is the connection around branch ``k``.

    Example::

        blocks = [nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d)) for _ in range(6)]
        stack = hclib.connect(blocks, d, "mhc", n=4)   # (B, T, d) -> (B, T, d)
        baseline = hclib.connect(blocks_copy, d, "residual")
    """
    dim = check_count(dim, "dim", "features")
    n, m = check_count(n, "n", "streams"), check_count(m, "m", "fractions")
    check_connection(connection, dim, n, m)
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise TypeError(f"unknown option(s) {unknown} for connect(); the options are {OPTIONS}")
    if isinstance(branches, nn.Module) and not isinstance(branches, nn.ModuleList):
        # an nn.Sequential is one branch (its modules run in a row), not a list of branches
        raise TypeError(
            f"branches must be a list of branches, got one {type(branches).__name__}: "
            "pass [branch] for a single layer, list(blocks) for the blocks of a Sequential"
        )
    branches = list(branches)
    if not branches:
        raise ValueError("branches is empty: give at least one branch (..., d) -> (..., d)")
    layers = [
        build_connection(connection, dim, branch, layer_id, n=n, m=m, **options)
        for layer_id, branch in enumerate(branches)
    ]
    return ConnectedStack(layers, dim, connection, n, m)
