"""Chapter 9 at full size: the GPT with each connection, two seeds, on one GPU.

usage::

    python benchmarks/gpt_experiments.py                      # the full size (needs CUDA)
    python benchmarks/gpt_experiments.py --connections residual,mhc --seeds 0,1
    python benchmarks/gpt_experiments.py --out results/2026-12-01-nvidia-h100-80gb-hbm3/09_small_gpt
    python benchmarks/gpt_experiments.py --smoke              # a tiny size on the CPU

**What runs**: :func:`hclib.experiments.run_experiments` with the preset
:data:`hclib.experiments.SIZES` ``["full"]``: a GPT of d = 512, 16 blocks (32 connections),
8 heads, windows of 512 tokens, 50.4M parameters in the blocks (52.5M besides the embedding
with a 4096-token vocabulary, 58.8M with 16384), trained for 6200 steps of 64 windows (203M
tokens) with each of Pre-Norm, HC (n = 4), FC (m = 4), mHC (n = 4) and the one-stream
control HC n = 1, seeds 0 and 1, bfloat16 autocast, hclib's Triton kernels where they apply
(``impl="auto"``). The minimum the chapter asks for is Pre-Norm and
mHC with both seeds; ``--connections`` and ``--seeds`` choose.

**The corpus**: ``--corpus auto`` (default) takes the first *built* corpus of
``fineweb-edu-bpe``, ``tinystories-bpe``, ``shakespeare-bpe``. Build a large one first where
there is a network (``pip install datasets``; ``python -m hclib.data build --corpus
tinystories-bpe``): 203M tokens are about 130 passes over the Shakespeare corpus, which a
50M-parameter model memorises. The settings record which corpus was used.

**Output** in ``--out`` (default ``results/<date>-<device>/09_small_gpt/``): ``runs/<name>-
seed<k>.json`` as each run ends (a run already there is not trained again), ``settings.json``,
``summary.csv`` (final losses, tokens/s, peak memory, the claims' measures) and ``verdicts.md``
(the reproduction table). Unfinished runs keep a checkpoint in ``checkpoints/``.
``--max-minutes`` stops cleanly before a time limit (exit status 3); the same command with the
same ``--out`` continues where it stopped, step for step. Chapter 9 loads the newest such
folder whose size is ``full``.

``--smoke`` runs the ``smoke`` size on the CPU into a temporary folder (unless ``--out``): it
checks that the script works; its numbers mean nothing. Never commit CPU results as GPU ones.

Derived in: notebooks/09_small_gpt.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from hclib.book import provenance
from hclib.experiments import (
    VARIANTS,
    corpus_settings,
    describe,
    experiment_config,
    judge_claims,
    markdown_table,
    pick_corpus,
    results_folder,
    run_experiments,
    write_results,
)

RESULTS_NAME = "09_small_gpt"
INCOMPLETE = 3  # exit status when --max-minutes stopped the work


def _names(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"expected names among {', '.join(VARIANTS)}, got {text!r}"
        )
    return names


def _ints(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers such as 0,1, got {text!r}") from None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=("full", "small", "smoke"), default="full")
    p.add_argument("--smoke", action="store_true", help="--size smoke on the CPU, temp folder")
    p.add_argument("--corpus", default=None, help="corpus name or auto (default: the size's)")
    p.add_argument("--data-root", type=Path, default=None, help="folder of built corpora")
    p.add_argument("--connections", type=_names, default=None, help="e.g. residual,hc,fc,mhc")
    p.add_argument("--seeds", type=_ints, default=None, help="e.g. 0,1")
    p.add_argument("--steps", type=int, default=None, help="override the size's steps")
    p.add_argument("--out", type=Path, default=None, help="default results/<date>-<device>/")
    p.add_argument("--max-minutes", type=float, default=None, help="stop cleanly after this")
    p.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true", help="no progress lines")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    size = "smoke" if args.smoke else args.size
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if size == "full" and device.type != "cuda":
        raise SystemExit(
            "the full size trains 50M-parameter GPTs on 203M tokens each and found no CUDA "
            "device; run it on a GPU, or check the script with --smoke"
        )
    if device.type == "cpu":
        torch.set_num_threads(max(1, min(os.cpu_count() or 1, 8)) if size != "smoke" else 1)
    config = experiment_config(size)
    changes = {}
    if args.corpus:
        changes["corpus"] = args.corpus
    if args.connections:
        changes["connections"] = tuple(args.connections)
    if args.seeds:
        changes["seeds"] = tuple(args.seeds)
    if args.steps:
        changes["steps"] = args.steps
        changes["size"] = f"{size}+steps={args.steps}"  # not the documented size any more
        changes["warmup_steps"] = min(config.warmup_steps, max(0, args.steps // 10))
    config = config.replace(**changes)

    corpus = pick_corpus(config.corpus, args.data_root)
    if corpus.name == "shakespeare-bpe" and size == "full":
        passes = config.tokens / len(corpus.train)
        print(
            f"warning: no larger corpus is built; {config.tokens / 1e6:.0f}M tokens are "
            f"{passes:.0f} passes over {corpus.name} (see --corpus)",
            file=sys.stderr,
        )
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    out = args.out
    if out is None:
        if size == "smoke":
            out = Path(tempfile.mkdtemp(prefix="hclib-gpt-smoke-")) / RESULTS_NAME
        else:
            out = results_folder(Path("results"), device_name, RESULTS_NAME)
    stop_at = time.monotonic() + 60 * args.max_minutes if args.max_minutes else None
    print(f"{describe(config, corpus.name)}; {device_name}; writing {out}", flush=True)

    started = time.perf_counter()
    records, _ = run_experiments(
        config,
        corpus,
        out=out,
        device=device,
        stop_at=stop_at,
        checkpoint_every=args.checkpoint_every,
        progress=not args.no_progress,
    )
    planned = len(config.connections) * len(config.seeds)
    write_results(
        out,
        config,
        records,
        **corpus_settings(corpus),
        **provenance(),
        device=device_name,
        machine=f"{platform.machine()}, {os.cpu_count()} cores",
        command=" ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        runs_finished=len(records),
        runs_planned=planned,
        seconds_this_call=round(time.perf_counter() - started),
        setting=describe(config, corpus.name),
    )
    print(markdown_table(judge_claims(records, setting=describe(config, corpus.name))))
    if len(records) < planned:
        print(
            f"\n{len(records)} of {planned} runs finished; the same command with --out {out} "
            "continues",
            flush=True,
        )
        return INCOMPLETE
    print(f"\nwrote {out}: settings.json, runs/, summary.csv, verdicts.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
