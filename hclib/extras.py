"""The optional parts of hclib and the pip extra that brings each one.

``pip install hclib`` installs the connections (torch and numpy only). The rest needs an
extra, and a command that needs one says which when its package is missing:

=========== ============================================== ==================================
extra       packages                                       what needs it
=========== ============================================== ==================================
train       pytorch-lightning, jsonargparse, tensorboard,  :mod:`hclib.training`,
            tokenizers                                     ``python -m hclib.train``,
                                                           ``python -m hclib.data``
notebooks   jupyterlab, jupytext, matplotlib, ipykernel,   the chapters, :mod:`hclib.plotting`,
            tqdm                                           :mod:`hclib.toy`'s progress bar
book        jupyter-book and its Sphinx extensions         ``bash dev.sh book``
dev         pytest, ruff, nbval, triton, ... (and train,   ``bash dev.sh test``
            notebooks)
gpu         triton                                         the fused kernels on CUDA
bench       hyper-connections, liger-kernel                ``benchmarks/connections.py``
=========== ============================================== ==================================
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingExtraError", "require"]


class MissingExtraError(ModuleNotFoundError):
    """An optional package is missing; the message names the extra that installs it."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module``, or raise :class:`MissingExtraError` naming the extra that brings it.

    Args:
        module: the import name, e.g. ``"pytorch_lightning"``.
        extra: the pip extra of hclib that installs it, e.g. ``"train"``.
        purpose: what needs it, for the message, e.g. ``"python -m hclib.train"``.

    Returns:
        The imported module.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        missing = error.name or module
        if missing.split(".")[0] != module.split(".")[0]:
            raise  # a missing dependency of the package itself: not ours to explain
        raise MissingExtraError(
            f"{purpose} needs the package {missing!r}, which is in hclib's {extra!r} extra: "
            f"pip install 'hclib[{extra}]' (from a clone of the repository: "
            f"pip install -e '.[{extra}]')",
            name=missing,
        ) from error
