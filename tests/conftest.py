"""Shared test setup: Triton's CPU interpreter when there is no GPU, and the `gpu` marker.

``TRITON_INTERPRET=1`` must be set before any ``@triton.jit`` function is created, i.e. before
a file of ``hclib.kernels`` is imported; setting it here, when CUDA is absent, lets the
kernel tests run on CPU tensors in CI. Tests marked ``gpu`` are skipped without CUDA.

Inductor compiles into a fresh cache folder for every test session: an entry left by an
earlier version of a kernel in the shared default folder (/tmp/torchinductor_<user>) has made
compiled results wrong after the kernel's arguments changed.
"""

import os
import tempfile

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="hclib-inductor-"))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
