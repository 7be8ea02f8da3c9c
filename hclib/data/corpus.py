"""A built corpus on disk: its files, its manifest, and the checks that guard them.

A corpus named ``name`` lives in ``<root>/<name>/``::

    train.bin       the train split: token ids, raw little-endian uint16, one after another
    val.bin         the val split, same format
    tokenizer.json  the BPE tokenizer (``tokenizers`` format); absent for byte-level corpora
    manifest.json   what the files hold: sizes and sha256 of every file, the source and its
                    licence, the tokenizer, the build settings; written last

:func:`write_corpus` writes each file to a temporary name and renames it into place, and
writes the manifest last (after deleting the old one first), so a build cut short leaves a
folder without a manifest, never a manifest that describes files that are not there.
:func:`load_corpus` checks every file against the manifest before it hands out a
:class:`Corpus`; a file of the wrong size or checksum raises :class:`CorpusCorruptError`.

Used in: notebooks/09_small_gpt and 10_moe_llm_with_lightning (through
:class:`hclib.training.CorpusDataModule`).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hclib.data.tokenizer import ByteTokenizer, load_bpe

__all__ = [
    "DEFAULT_CORPUS",
    "FORMAT_VERSION",
    "MAX_VOCAB",
    "Corpus",
    "CorpusCorruptError",
    "CorpusMissingError",
    "build_command",
    "data_root",
    "file_sha256",
    "load_corpus",
    "read_manifest",
    "write_corpus",
]

DEFAULT_CORPUS = "shakespeare-bpe"
FORMAT_VERSION = 1
MAX_VOCAB = 65535  # token ids are stored as uint16
DTYPE = np.dtype("<u2")
SPLITS = ("train", "val")
MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"


class CorpusMissingError(FileNotFoundError):
    """The corpus has not been built; the message gives the command that builds it."""


class CorpusCorruptError(ValueError):
    """A file of the corpus does not match its manifest, or the manifest is missing or partial."""


def data_root() -> Path:
    """The folder that holds built corpora (and ``downloads/``, the cached sources).

    ``$HCLIB_DATA`` if set; else the repository's ``data/`` folder when ``hclib`` runs from a
    clone or an editable install (``data/`` sits beside the ``hclib/`` package); else
    ``~/.cache/hclib/data``.
    """
    env = os.environ.get("HCLIB_DATA")
    if env:
        return Path(env).expanduser()
    import hclib

    repo_data = Path(hclib.__file__).resolve().parents[1] / "data"
    if repo_data.is_dir():
        return repo_data
    return Path.home() / ".cache" / "hclib" / "data"


def build_command(name: str, root: Path | str | None = None) -> str:
    """The shell command that builds corpus ``name`` (into ``root`` when it is not the default)."""
    command = f"python -m hclib.data build --corpus {name}"
    if root is not None and Path(root).expanduser().resolve() != data_root().resolve():
        command += f" --root {root}"
    return command


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Corpus:
    """A built corpus: two token memory maps, the tokenizer that made them, and the manifest.

    Attributes:
        name: the corpus name, e.g. ``"shakespeare-bpe"``.
        path: its folder, ``<root>/<name>``.
        vocab_size: the model's vocabulary size; every id in ``train`` and ``val`` is below it.
        manifest: the parsed ``manifest.json`` (source, licence, sizes, checksums, settings).
        train: the train split, a read-only ``np.memmap`` of uint16 ids, shape ``(N_train,)``.
        val: the val split, shape ``(N_val,)``; no work (play, poem, document) is in both.
    """

    name: str
    path: Path
    vocab_size: int
    manifest: dict[str, Any]
    train: np.memmap
    val: np.memmap
    _tokenizer: Any = field(default=None, repr=False, compare=False)

    @property
    def tokenizer_kind(self) -> str:
        """``"bpe"``, ``"byte"`` (UTF-8 bytes) or ``"ids"`` (no tokenizer: synthetic ids)."""
        return self.manifest["tokenizer"]["kind"]

    def _get_tokenizer(self) -> Any:
        if self._tokenizer is None:
            kind = self.tokenizer_kind
            if kind == "bpe":
                self._tokenizer = load_bpe(self.path / TOKENIZER)
            elif kind == "byte":
                self._tokenizer = ByteTokenizer()
            else:
                raise ValueError(
                    f"corpus {self.name!r} holds bare token ids (tokenizer kind {kind!r}): it "
                    "was written without a tokenizer, so it cannot encode or decode text"
                )
        return self._tokenizer

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, as the corpus's tokenizer splits it."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        return self._get_tokenizer().encode(text)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """The text of token ids (a list, a 1-D array or tensor); exact for ids from ``encode``."""
        ids = np.asarray(ids).reshape(-1).tolist()
        return self._get_tokenizer().decode(ids)

    def __len__(self) -> int:
        return len(self.train) + len(self.val)


def _check_vocab_size(vocab_size: object) -> int:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)):
        raise TypeError(f"vocab_size must be an int, got {type(vocab_size).__name__}")
    if not 1 <= vocab_size <= MAX_VOCAB:
        raise ValueError(
            f"vocab_size must be in 1..{MAX_VOCAB} (token ids are stored as uint16), "
            f"got vocab_size={vocab_size}"
        )
    return int(vocab_size)


def _as_ids(ids: object, split: str, vocab_size: int) -> np.ndarray:
    array = np.asarray(ids)
    if array.ndim != 1:
        raise ValueError(f"{split} must be a 1-D sequence of token ids, got shape {array.shape}")
    if len(array) == 0:
        raise ValueError(f"{split} holds no tokens; a split needs at least one")
    if array.dtype.kind not in "iu":
        raise TypeError(f"{split} must hold integer token ids, got dtype {array.dtype}")
    low, high = int(array.min()), int(array.max())
    if low < 0 or high >= vocab_size:
        raise ValueError(
            f"{split} holds token ids in {low}..{high}, outside 0..{vocab_size - 1} "
            f"(vocab_size={vocab_size})"
        )
    return array.astype(DTYPE, copy=False)


class _AtomicWriter:
    """Write a file under a temporary name, hashing it as it goes; rename on :meth:`commit`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        self.file = open(self.tmp, "wb")  # closed by commit() or abort()
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self.digest.update(data)
        self.size += len(data)

    def commit(self) -> dict[str, Any]:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)
        return {"file": self.path.name, "bytes": self.size, "sha256": self.digest.hexdigest()}

    def abort(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


class SplitWriter:
    """Append token ids to one split's ``.bin`` file; :meth:`commit` renames it into place.

    Builders that stream a large source (an online corpus) write chunk by chunk with this
    instead of holding the whole split in memory.
    """

    def __init__(self, folder: Path, split: str, vocab_size: int) -> None:
        self.split, self.vocab_size = split, vocab_size
        self.writer = _AtomicWriter(folder / f"{split}.bin")
        self.tokens = 0

    def append(self, ids: Sequence[int] | np.ndarray) -> None:
        if len(ids) == 0:
            return
        array = _as_ids(ids, self.split, self.vocab_size)
        self.writer.write(array.tobytes())
        self.tokens += len(array)

    def commit(self) -> dict[str, Any]:
        if self.tokens == 0:
            self.abort()
            raise ValueError(f"{self.split} holds no tokens; a split needs at least one")
        entry = self.writer.commit()
        return {"tokens": self.tokens, **entry}

    def abort(self) -> None:
        self.writer.abort()


def begin_corpus(root: Path | str, name: str) -> Path:
    """Make ``<root>/<name>/`` and remove its manifest: from here on the folder is unfinished."""
    folder = Path(root).expanduser() / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)
    return folder


def finish_corpus(
    folder: Path,
    splits: dict[str, dict[str, Any]],
    vocab_size: int,
    source: dict[str, Any],
    tokenizer_json: str | None = None,
    text: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
) -> Corpus:
    """Write the tokenizer (if any) and then the manifest, and load the result."""
    name = folder.name
    if tokenizer_json is not None:
        writer = _AtomicWriter(folder / TOKENIZER)
        writer.write(tokenizer_json.encode("utf-8"))
        tokenizer = {"kind": "bpe", "vocab_size": vocab_size, **writer.commit()}
        tokenizer["learned"] = len(json.loads(tokenizer_json)["model"]["vocab"])
        tokenizer["library"] = _tokenizers_version()
    else:
        (folder / TOKENIZER).unlink(missing_ok=True)
        tokenizer = {"kind": "byte" if vocab_size == 256 else "ids", "vocab_size": vocab_size}
    for split, facts in (text or {}).items():
        splits[split] = {**facts, **splits[split]}  # the file's own facts win
    manifest = {
        "format": FORMAT_VERSION,
        "name": name,
        "dtype": "uint16",
        "vocab_size": vocab_size,
        "source": source,
        "tokenizer": tokenizer,
        "splits": splits,
        "settings": settings or {},
    }
    writer = _AtomicWriter(folder / MANIFEST)
    writer.write((json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    writer.commit()
    return load_corpus(name, root=folder.parent, verify=False)


def _tokenizers_version() -> str:
    import tokenizers

    return f"tokenizers {tokenizers.__version__}"


def write_corpus(
    root: Path | str,
    name: str,
    train: Sequence[int] | np.ndarray,
    val: Sequence[int] | np.ndarray,
    vocab_size: int,
    source: dict[str, Any],
    tokenizer_json: str | None = None,
    *,
    text: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
) -> Corpus:
    """Write a corpus to ``<root>/<name>/`` atomically and return it loaded.

    Each file goes to a temporary name and is renamed into place; the old manifest is removed
    first and the new one written last, so an interrupted write is seen as unfinished.
    Tests use this to make tiny synthetic corpora.

    Args:
        root: the data root (see :func:`data_root`).
        name: the corpus name, the folder's name.
        train, val: 1-D token ids, each in ``0..vocab_size-1``, at least one per split.
        vocab_size: the vocabulary size, at most 65535 (ids are stored as uint16).
        source: where the text came from (package, version, sha256, licence, files...).
        tokenizer_json: the BPE tokenizer as JSON; ``None`` means byte-level when
            ``vocab_size == 256``, else bare ids (the corpus cannot encode or decode).
        text: per split, facts about the text before tokenising, merged into the manifest's
            entry for the split, e.g. ``{"train": {"chars": 4599954, "works": 38}}``.
        settings: the build settings, compared by :func:`hclib.data.build` to decide
            whether a corpus on disk is the one asked for.

    Returns:
        The :class:`Corpus` just written.
    """
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise ValueError(f"name must be a folder name such as 'shakespeare-bpe', got {name!r}")
    vocab_size = _check_vocab_size(vocab_size)
    arrays = {"train": _as_ids(train, "train", vocab_size), "val": _as_ids(val, "val", vocab_size)}
    folder = begin_corpus(root, name)
    splits = {}
    for split, array in arrays.items():
        writer = SplitWriter(folder, split, vocab_size)
        try:
            writer.append(array)
            splits[split] = writer.commit()
        except BaseException:
            writer.abort()
            raise
    return finish_corpus(folder, splits, vocab_size, source, tokenizer_json, text, settings)


def read_manifest(name: str, root: Path | str | None = None) -> dict[str, Any]:
    """The parsed manifest of corpus ``name``, checked for completeness.

    Raises:
        CorpusMissingError: no folder (or an empty one) for the corpus.
        CorpusCorruptError: the folder has files but no readable, complete manifest.
    """
    root = data_root() if root is None else Path(root).expanduser()
    folder = root / name
    path = folder / MANIFEST
    if not path.exists():
        if not folder.is_dir() or not any(p.is_file() for p in folder.iterdir()):
            raise CorpusMissingError(  # hclib.data.load_corpus adds the buildable corpora
                f"corpus {name!r} is not built in {root}; build it with: "
                f"{build_command(name, root)}"
            )
        raise CorpusCorruptError(
            f"corpus {name!r} in {folder} has no manifest.json (an interrupted build?); "
            f"rebuild it with: {build_command(name, root)} --force"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorpusCorruptError(
            f"{path} is not valid JSON ({error}); rebuild with: {build_command(name, root)} --force"
        ) from error
    problem = _manifest_problem(manifest, name)
    if problem:
        raise CorpusCorruptError(
            f"{path} is partial or from another format: {problem}; "
            f"rebuild with: {build_command(name, root)} --force"
        )
    return manifest


def _manifest_problem(manifest: object, name: str) -> str | None:
    if not isinstance(manifest, dict):
        return f"expected a JSON object, got {type(manifest).__name__}"
    for key in ("format", "name", "dtype", "vocab_size", "source", "tokenizer", "splits"):
        if key not in manifest:
            return f"the key {key!r} is missing"
    if manifest["format"] != FORMAT_VERSION:
        return f"format {manifest['format']!r}, expected {FORMAT_VERSION}"
    if manifest["name"] != name:
        return f"it names corpus {manifest['name']!r}, expected {name!r}"
    if manifest["dtype"] != "uint16":
        return f"dtype {manifest['dtype']!r}, expected 'uint16'"
    tokenizer = manifest["tokenizer"]
    if not isinstance(tokenizer, dict) or tokenizer.get("kind") not in ("bpe", "byte", "ids"):
        return "the tokenizer entry has no kind among 'bpe', 'byte', 'ids'"
    if tokenizer["kind"] == "bpe" and not {"file", "bytes", "sha256"} <= tokenizer.keys():
        return "the BPE tokenizer entry lacks its file, bytes or sha256"
    for split in SPLITS:
        entry = manifest["splits"].get(split) if isinstance(manifest["splits"], dict) else None
        if not isinstance(entry, dict) or not {"file", "tokens", "bytes", "sha256"} <= entry.keys():
            return f"the {split!r} split lacks its file, tokens, bytes or sha256"
        if entry["bytes"] != entry["tokens"] * DTYPE.itemsize or entry["tokens"] < 1:
            return f"the {split!r} split claims {entry['tokens']} tokens in {entry['bytes']} bytes"
    return None


def _check_file(folder: Path, entry: dict[str, Any], verify: bool, rebuild: str) -> None:
    path = folder / entry["file"]
    if not path.is_file():
        raise CorpusCorruptError(f"{path} is missing; rebuild with: {rebuild}")
    size = path.stat().st_size
    if size != entry["bytes"]:
        raise CorpusCorruptError(
            f"{path} holds {size} bytes, the manifest expects {entry['bytes']} "
            f"(truncated or overwritten); rebuild with: {rebuild}"
        )
    if verify:
        digest = file_sha256(path)
        if digest != entry["sha256"]:
            raise CorpusCorruptError(
                f"{path} has sha256 {digest[:16]}..., the manifest expects "
                f"{entry['sha256'][:16]}... (the file changed); rebuild with: {rebuild}"
            )


def _vocab_problem(
    manifest: dict[str, Any], folder: Path, maps: dict[str, np.ndarray] | None
) -> str | None:
    """What makes the manifest's ``vocab_size`` disagree with its tokenizer or its ids, if any.

    A model sized from a wrong ``vocab_size`` fails deep inside its embedding (an index out of
    range) or never predicts some tokens; here it is caught when the corpus is opened.
    """
    vocab_size, tokenizer = manifest["vocab_size"], manifest["tokenizer"]
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
        return f"the manifest's vocab_size is {vocab_size!r}, expected an int >= 1"
    if tokenizer.get("vocab_size", vocab_size) != vocab_size:
        return (
            f"the manifest's vocab_size {vocab_size} disagrees with its tokenizer entry's "
            f"{tokenizer['vocab_size']}"
        )
    if tokenizer["kind"] == "byte" and vocab_size != 256:
        return f"a byte-level corpus has 256 tokens, the manifest says vocab_size {vocab_size}"
    if tokenizer["kind"] == "bpe":
        try:
            learned = len(
                json.loads((folder / tokenizer["file"]).read_text("utf-8"))["model"]["vocab"]
            )
        except (OSError, ValueError, KeyError, TypeError) as error:
            return f"its tokenizer {tokenizer['file']} cannot be read ({error})"
        if learned > vocab_size:
            return (
                f"its tokenizer has {learned} tokens, more than the manifest's vocab_size "
                f"{vocab_size}: a model sized from the manifest could not embed them all"
            )
    for split, ids in (maps or {}).items():
        if len(ids) and int(ids.max()) >= vocab_size:
            return f"the {split} split holds token id {int(ids.max())} >= vocab_size {vocab_size}"
    return None


def load_corpus(
    name: str = DEFAULT_CORPUS, root: Path | str | None = None, verify: bool = True
) -> Corpus:
    """Open a built corpus, after checking its files against the manifest.

    Args:
        name: the corpus name (``hclib.data.CORPORA`` lists the buildable ones;
            :func:`hclib.data.load_corpus` names them when ``name`` is none of them).
        root: the data root (None: :func:`data_root`).
        verify: also compare every file's sha256 with the manifest (about 30 ms for the
            Shakespeare corpora); sizes are always checked.

    Returns:
        The :class:`Corpus`, its splits as read-only uint16 memory maps.

    Raises:
        CorpusMissingError: the corpus is not built; the message gives the build command.
        CorpusCorruptError: a file's size or sha256 differs from the manifest, or the manifest
            is missing or partial.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a corpus name such as {DEFAULT_CORPUS!r}, got {name!r}")
    root = data_root() if root is None else Path(root).expanduser()
    manifest = read_manifest(name, root)
    folder = root / name
    rebuild = f"{build_command(name, root)} --force"
    for split in SPLITS:
        _check_file(folder, manifest["splits"][split], verify, rebuild)
    if manifest["tokenizer"]["kind"] == "bpe":
        _check_file(folder, manifest["tokenizer"], verify, rebuild)
    maps = {
        split: np.memmap(folder / manifest["splits"][split]["file"], dtype=DTYPE, mode="r")
        for split in SPLITS
    }
    problem = _vocab_problem(manifest, folder, maps if verify else None)
    if problem:
        raise CorpusCorruptError(f"corpus {name!r} in {folder}: {problem}; rebuild with: {rebuild}")
    return Corpus(
        name=name,
        path=folder,
        vocab_size=int(manifest["vocab_size"]),
        manifest=manifest,
        train=maps["train"],
        val=maps["val"],
    )


def log(message: str, progress: bool) -> None:
    """Print one line of build progress to stderr when ``progress`` is on."""
    if progress:
        print(f"[hclib.data] {message}", file=sys.stderr, flush=True)
