"""hclib: residual, hyper-, frac- and manifold-constrained hyper-connections in PyTorch.

The reference modules follow the papers' equations line by line:

* :class:`Residual` (Pre-Norm / Post-Norm), state ``(..., d)``;
* :class:`HyperConnection` (HC, arXiv 2409.19606), state ``(..., n, d)``;
* :class:`FracConnection` (FC, arXiv 2503.14125), state ``(..., m, d/m)``;
* :class:`ManifoldHyperConnection` (mHC, arXiv 2512.24880), state ``(..., n, d)``.

Each wraps one branch ``T: (..., d) -> (..., d)`` and maps the carried state to the next;
:func:`connect` joins a list of branches into one ``(..., d) -> (..., d)`` module with any
of the four (``connection="residual"`` is the baseline).

``import hclib`` needs only torch and numpy. Training (:mod:`hclib.training`,
``python -m hclib.train``) and the corpora (``python -m hclib.data``) need the ``train``
extra, the figures (:mod:`hclib.plotting`) the ``notebooks`` extra:
``pip install "hclib[train,notebooks]"``.
"""

from hclib.analysis import AmaxGain, amax_gain, connection_matrix
from hclib.connection import Connection, Mappings
from hclib.frac import FracConnection
from hclib.hyper import HyperConnection
from hclib.manifold import ManifoldHyperConnection, sinkhorn_knopp
from hclib.optim import param_groups
from hclib.residual import Residual
from hclib.stack import ConnectedStack, connect
from hclib.streams import expand_streams, merge_fractions, reduce_streams, split_fractions

__version__ = "0.1.0"

__all__ = [
    "AmaxGain",
    "ConnectedStack",
    "Connection",
    "FracConnection",
    "HyperConnection",
    "ManifoldHyperConnection",
    "Mappings",
    "Residual",
    "amax_gain",
    "connect",
    "connection_matrix",
    "expand_streams",
    "merge_fractions",
    "param_groups",
    "reduce_streams",
    "sinkhorn_knopp",
    "split_fractions",
]
