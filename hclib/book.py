"""What the chapters share about running the book: the size knob and the Colab check.

Every experiment that takes more than a few seconds reads one environment variable,
``HCLIB_BOOK_SIZE``:

* ``small`` (the default): sizes that run each chapter in about a minute on 2 CPU cores;
  this is what CI and the rendered book use.
* ``full``: the sizes the chapters' prose discusses, for a laptop with time to spare or a
  GPU (``HCLIB_BOOK_SIZE=full bash dev.sh book``).

GPU runs (benchmarks, full-size chapters) are committed under one folder per day and device,
``results/<date>-<device>/``: :func:`results_dir` names it.
"""

from __future__ import annotations

import datetime
import os
import re
import sys
from pathlib import Path
from typing import TypeVar

__all__ = ["SIZE_VARIABLE", "book_size", "device_slug", "on_colab", "results_dir", "scaled"]

SIZE_VARIABLE = "HCLIB_BOOK_SIZE"
_SIZES = ("small", "full")
T = TypeVar("T")


def book_size() -> str:
    """``"small"`` or ``"full"``, from ``HCLIB_BOOK_SIZE`` (default ``"small"``)."""
    size = os.environ.get(SIZE_VARIABLE, "small").strip().lower() or "small"
    if size not in _SIZES:
        raise ValueError(f"{SIZE_VARIABLE} must be one of {_SIZES}, got {size!r}")
    return size


def scaled(small: T, full: T) -> T:
    """Pick the value for the current book size."""
    return full if book_size() == "full" else small


def on_colab() -> bool:
    """Whether the code runs in Google Colab (the chapters then install hclib first)."""
    return "google.colab" in sys.modules


def device_slug(device_name: str) -> str:
    """A device name as a folder name: "NVIDIA H100 80GB HBM3" -> "nvidia-h100-80gb-hbm3"."""
    return re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-") or "device"


def results_dir(device_name: str, root: Path | str = "results", date: str | None = None) -> Path:
    """``<root>/<date>-<device slug>``, the folder of one day's committed GPU results
    (``date`` in ISO format, default today)."""
    date = date or datetime.date.today().isoformat()
    return Path(root) / f"{date}-{device_slug(device_name)}"
