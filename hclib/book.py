"""What the chapters share about running the book: the size knob and the Colab check.

Every experiment that takes more than a few seconds reads one environment variable,
``HCLIB_BOOK_SIZE``:

* ``small`` (the default): sizes that run each chapter in about a minute on 2 CPU cores;
  this is what CI and the rendered book use.
* ``medium`` (chapters 8 and 9): the sizes of ``benchmarks/chapters_medium.py``, about 35
  minutes per chapter on 2 CPU cores; their results are committed under
  ``results/<date>-cpu-medium/`` and shown beside the default run.
* ``full``: the largest sizes the chapters describe, for a many-core machine or a GPU
  (``HCLIB_BOOK_SIZE=full bash dev.sh book``).

GPU runs (benchmarks, full-size chapters) are committed under one folder per day and device,
``results/<date>-<device>/``: :func:`results_dir` names it, and :func:`provenance` gives what
every such file records about the software that made it.

The repository's address is set once, in book/_config.yml (``repository.url``);
``python -m hclib.book sync-links`` (:func:`sync_repository_links`) writes it into every
chapter's Colab badge and install cell and into the README.
"""

from __future__ import annotations

import datetime
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "SIZE_VARIABLE",
    "book_size",
    "device_slug",
    "on_colab",
    "provenance",
    "results_dir",
    "scaled",
    "sync_repository_links",
]

SIZE_VARIABLE = "HCLIB_BOOK_SIZE"
_SIZES = ("small", "medium", "full")
T = TypeVar("T")


def book_size() -> str:
    """``"small"``, ``"medium"`` or ``"full"``, from ``HCLIB_BOOK_SIZE`` (default ``"small"``)."""
    size = os.environ.get(SIZE_VARIABLE, "small").strip().lower() or "small"
    if size not in _SIZES:
        raise ValueError(f"{SIZE_VARIABLE} must be one of {_SIZES}, got {size!r}")
    return size


def scaled(small: T, full: T, medium: T | None = None) -> T:
    """Pick the value for the current book size (``medium`` falls back to ``small`` when a
    chapter has no medium value of its own)."""
    size = book_size()
    if size == "full":
        return full
    if size == "medium" and medium is not None:
        return medium
    return small


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


def provenance() -> dict[str, Any]:
    """What a committed results file records about its making: ``torch`` and ``hclib``
    versions, the ``date`` (ISO) and the git ``commit`` of the checkout hclib is imported
    from (None outside a git checkout)."""
    import torch

    import hclib

    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parents[1],
            capture_output=True,
            text=True,
            timeout=10,
        )
        commit = done.stdout.strip() if done.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "torch": torch.__version__,
        "hclib": hclib.__version__,
        "date": datetime.date.today().isoformat(),
        "commit": commit or None,
    }


_GITHUB = re.compile(r"https://github\.com/[\w.-]+/[\w.-]*[\w-]")  # no final "." of a sentence
_COLAB_LINK = re.compile(r"(/github/)[\w.-]+/[\w.-]+/blob/[\w.-]+(/notebooks/)")


def sync_repository_links(root: Path | str = ".") -> list[Path]:
    """Write book/_config.yml's ``repository.url`` (and ``branch``) into every chapter's Colab
    badge and install cell (``notebooks/*.py`` and the paired ``.ipynb``) and into README.md.

    Only the GitHub addresses of the repository itself change (``https://github.com/OWNER/REPO``
    wherever it appears in those files, and the ``OWNER/REPO/blob/BRANCH`` of Colab links);
    the files are otherwise left byte for byte as they were. Returns the files it changed.
    Needs PyYAML (in the ``dev`` and ``train`` extras).
    """
    import yaml

    root = Path(root)
    config = yaml.safe_load((root / "book" / "_config.yml").read_text(encoding="utf-8"))
    url = config["repository"]["url"].rstrip("/")
    branch = config["repository"].get("branch", "main")
    match = re.fullmatch(r"https://github\.com/([\w.-]+/[\w.-]+)", url)
    if match is None:
        raise ValueError(f"repository.url must be https://github.com/OWNER/REPO, got {url!r}")
    ours = {"hclib", url.rsplit("/", 1)[-1]}  # the repository's name, before and after a move
    files = sorted((root / "notebooks").glob("[0-9][0-9]_*.py"))
    files += [p.with_suffix(".ipynb") for p in files if p.with_suffix(".ipynb").exists()]
    files.append(root / "README.md")
    changed = []
    for path in files:
        text = path.read_text(encoding="utf-8")
        new = _COLAB_LINK.sub(rf"\g<1>{match.group(1)}/blob/{branch}\g<2>", text)
        new = _GITHUB.sub(lambda m: url if m.group().rsplit("/", 1)[-1] in ours else m.group(), new)
        if new != text:
            path.write_text(new, encoding="utf-8")
            changed.append(path)
    return changed


if __name__ == "__main__":
    if sys.argv[1:] != ["sync-links"]:
        sys.exit("usage: python -m hclib.book sync-links   (run from the repository root)")
    for changed_path in sync_repository_links():
        print(f"updated {changed_path}")
