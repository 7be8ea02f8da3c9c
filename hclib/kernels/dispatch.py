"""Which implementation runs a connection's math: ``impl="auto" | "torch" | "compile" | "triton"``.

Every connection module takes ``impl`` and resolves it on each call from the device of its
state, so one model moves between CPU and GPU without being rebuilt:

============ ===============================================================================
``impl``     what runs
============ ===============================================================================
``"torch"``  the reference: the module's own PyTorch code, equation by equation (the oracle)
``"compile"`` ``torch.compile`` of that same reference math (the branch stays eager)
``"triton"`` the fused kernels of :mod:`hclib.kernels` (CUDA tensors, or CPU tensors when
             ``TRITON_INTERPRET=1`` was set before the kernels were imported)
``"auto"``   ``"triton"`` where the kernels are compiled, tuned and tested for: an NVIDIA GPU of
             compute capability 9.0 or more (H100, H200, B200), a float32 or bfloat16
             state, triton installed; ``"torch"`` elsewhere (CPU, older or AMD GPUs,
             float16 or float64 states). :func:`auto_impl` says why; the choice is logged
             once (``logging``, logger ``hclib.kernels``, level INFO).
============ ===============================================================================

Nothing here imports triton: ``import hclib`` works without it, and the kernel files are
imported only when a Triton path first runs.

Derived in: notebooks/07_memory_traffic_and_fused_kernels.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
from collections.abc import Callable

import torch

__all__ = [
    "AUTO_DTYPES",
    "AUTO_MIN_CAPABILITY",
    "IMPLS",
    "auto_impl",
    "check_impl",
    "compile_options",
    "compiled",
    "device_of",
    "fake",
    "interpreting",
    "launch",
    "reset_compiled",
    "resolve_impl",
    "triton_available",
]

#: the values every connection's ``impl`` argument accepts
IMPLS = ("auto", "torch", "compile", "triton")

#: state dtypes ``"auto"`` gives to the kernels: those they are tuned and tested for (float16,
#: as on a T4, and float64 take the reference; ``impl="triton"`` still runs them)
AUTO_DTYPES = (torch.float32, torch.bfloat16)

#: the oldest NVIDIA compute capability ``"auto"`` gives to the kernels (Hopper: what their
#: configs are compiled and tuned for)
AUTO_MIN_CAPABILITY = (9, 0)

logger = logging.getLogger("hclib.kernels")
_LOGGED: set[tuple[str, str]] = set()


def check_impl(impl: object) -> str:
    """Return ``impl`` if it is one of :data:`IMPLS`, else raise a clear error."""
    if not isinstance(impl, str) or impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    return impl


_TRITON: list[bool] = []  # found or not, looked up once


def triton_available() -> bool:
    """Whether the ``triton`` package is installed (found without importing it, once; a plain
    cache rather than ``functools.cache``, which ``torch.compile`` warns about when tracing)."""
    if not _TRITON:
        _TRITON.append(importlib.util.find_spec("triton") is not None)
    return _TRITON[0]


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``).

    The variable must be set before the first kernel file is imported: Triton reads it when a
    ``@triton.jit`` function is created (``tests/conftest.py`` sets it when CUDA is absent).
    """
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve_impl(impl: str, tensor: torch.Tensor) -> str:
    """The implementation that runs for a state ``tensor``: ``"torch"``, ``"compile"`` or
    ``"triton"``.

    Args:
        impl: one of :data:`IMPLS`.
        tensor: the state the connection is called with; its device and dtype decide
            ``"auto"`` (:func:`auto_impl`, logged once per decision).

    Raises:
        ValueError: unknown ``impl``, or ``"triton"`` for a CPU tensor outside the interpreter.
        ImportError: ``"triton"`` without the triton package.
    """
    check_impl(impl)
    if impl == "auto":
        choice, why = auto_impl(tensor)
        if (choice, why) not in _LOGGED and not torch.compiler.is_compiling():
            _LOGGED.add((choice, why))
            logger.info("impl='auto' runs %s: %s", choice, why)
        return choice
    if impl == "triton":
        if not triton_available():
            raise ImportError(
                "impl='triton' needs the triton package (pip install triton); "
                "use impl='torch' or 'auto' without it"
            )
        if not tensor.is_cuda and not interpreting():
            raise ValueError(
                "impl='triton' runs on CUDA tensors, or on CPU tensors when TRITON_INTERPRET=1 "
                f"is set before hclib.kernels is imported; got a tensor on {tensor.device}"
            )
    return impl


def auto_impl(tensor: torch.Tensor) -> tuple[str, str]:
    """What ``impl="auto"`` runs for a state ``tensor``, and why: ``("triton" | "torch", why)``.

    ``"triton"`` only on an NVIDIA GPU (never ROCm: ``torch.version.hip``) of compute capability
    at least :data:`AUTO_MIN_CAPABILITY`, for a state dtype in :data:`AUTO_DTYPES`, with triton
    installed; the reference everywhere else.
    """
    if not tensor.is_cuda:
        return "torch", f"the state is on {tensor.device}, not on a CUDA GPU"
    if not triton_available():
        return "torch", "triton is not installed"
    if torch.version.hip:
        return "torch", "a ROCm GPU: the kernels are tuned for NVIDIA (impl='triton' forces them)"
    major, minor = torch.cuda.get_device_capability(tensor.device)
    if (major, minor) < AUTO_MIN_CAPABILITY:
        want = ".".join(map(str, AUTO_MIN_CAPABILITY))
        return "torch", (
            f"compute capability {major}.{minor} < {want}, which the kernels are tuned for "
            "(impl='triton' forces them)"
        )
    if tensor.dtype not in AUTO_DTYPES:
        return "torch", (
            f"a {tensor.dtype} state: the kernels are tuned and tested for "
            f"{', '.join(map(str, AUTO_DTYPES))}"
        )
    return "triton", f"NVIDIA GPU of compute capability {major}.{minor}, {tensor.dtype} state"


#: keyword arguments of ``torch.compile`` for ``impl="compile"`` (e.g. ``{"mode":
#: "max-autotune"}``, or ``{"backend": "aot_eager"}`` to trace without generating code);
#: set them before the first compiled call, or call :func:`reset_compiled` afterwards
compile_options: dict = {}

_COMPILED: dict[Callable, Callable] = {}


def compiled(fn: Callable) -> Callable:
    """``torch.compile(fn, **compile_options)``, made once per function, shared by every module.

    The connections compile the functions of their reference math (``_read_out`` before the
    branch, ``_write_in`` after it); with PyTorch's default inlining of ``nn.Module`` s,
    modules of the same shape and settings share one compiled graph instead of recompiling
    per instance.
    """
    if fn not in _COMPILED:
        _COMPILED[fn] = torch.compile(fn, **compile_options)
    return _COMPILED[fn]


def reset_compiled() -> None:
    """Forget the compiled functions (the next ``impl="compile"`` call compiles again)."""
    _COMPILED.clear()


def launch(
    kernel, tuned, grid: Callable[[dict], tuple], args: tuple, on_gpu: bool, cpu_meta: dict, **meta
) -> None:
    """Run a Triton kernel: autotuned on a GPU, with plain block sizes in the interpreter.

    The launch runs under :func:`device_of` the first CUDA tensor argument, and is skipped
    for fake tensors (:func:`fake`), so that a launcher also gives the output shapes of a
    registered op while ``torch.compile`` traces it.

    Args:
        kernel: the ``@triton.jit`` function.
        tuned: the same kernel wrapped in ``triton.autotune`` (its configs set the tuned
            meta-parameters, so they are not passed here on a GPU).
        grid: ``meta -> (programs, ...)``, reading the block sizes from ``meta``.
        args: the positional arguments of the kernel.
        on_gpu: whether the tensors live on a GPU.
        cpu_meta: the tuned meta-parameters' values for the interpreter (no autotuning
            without a GPU: the interpreter would time Python, not the kernel).
        meta: the other constexpr arguments.
    """
    if fake(*args):
        return
    with device_of(*args):
        if on_gpu:
            tuned[grid](*args, **meta)
        else:
            kernel[grid](*args, **meta, **cpu_meta)


def device_of(*args: object) -> contextlib.AbstractContextManager:
    """``torch.cuda.device`` of the first CUDA tensor among ``args`` (a no-op without one).

    Triton launches a kernel on the *current* CUDA device, whatever device its pointers live
    on; every launch runs under this guard so that a model on ``cuda:1`` runs its kernels there.
    """
    for arg in args:
        if isinstance(arg, torch.Tensor) and arg.is_cuda:
            return torch.cuda.device(arg.device)
    return contextlib.nullcontext()


def fake(*args: object) -> bool:
    """Whether a tensor among ``args`` is a fake tensor (shapes without data, as
    ``torch.compile`` traces): nothing must be launched on it. ``wrap_triton`` skips such
    launches itself for compiled kernels; the interpreter's kernels need this check."""
    from torch._subclasses.fake_tensor import is_fake

    return any(isinstance(arg, torch.Tensor) and is_fake(arg) for arg in args)
