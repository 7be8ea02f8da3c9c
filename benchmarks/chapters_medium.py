"""The medium size of chapters 8 and 9: results that decide more, on 2 CPU cores.

usage::

    python benchmarks/chapters_medium.py --chapter 8     # about 35 min of 2 cores
    python benchmarks/chapters_medium.py --chapter 9     # about 35 min of 2 cores
    python benchmarks/chapters_medium.py --dry-run       # the settings, nothing runs
    python benchmarks/chapters_medium.py --smoke --out /tmp/m   # the same flow, toy sizes

**What runs.** Chapter 8: :func:`hclib.toy.run_toy_sweep` at :data:`hclib.toy.SWEEP_SIZES`
``["medium"]`` (the chapter's 14 configurations, 32 blocks, 600 AdamW steps of 256 examples
from 65,536, eight seeds) in two worker processes. Chapter 9:
:func:`hclib.experiments.run_lightning` at :data:`hclib.experiments.SIZES` ``["medium"]``,
every connection and seed trained by ``hclib.training`` (Lightning), one after the other.

**Resumable.** Every finished run is kept the moment it ends (chapter 8 in
``<out>/.08_toy_models-runs/``, chapter 9 as ``<out>/09_small_gpt/runs/*.json``, with
Lightning checkpoints of the run under way); the same command continues where it stopped, and
``--max-minutes`` stops it cleanly (exit status 3). It is meant to run in the background,
``nohup python benchmarks/chapters_medium.py --chapter 8 > medium8.log 2>&1 &``.

**Output** in ``--out`` (default ``results/<date>-cpu-medium/``), in the files and formats the
chapters load: ``08_toy_models.json`` and ``09_small_gpt/``, both with ``size`` ``"medium"``.
Commit them; chapters 8 and 9 show the newest medium results beside their default run.

Derived in: notebooks/08_toy_models, 09_small_gpt.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # this checkout's hclib when run as a script

import torch  # noqa: E402

from hclib.book import provenance  # noqa: E402

TOY_NAME = "08_toy_models.json"
GPT_NAME = "09_small_gpt"
INCOMPLETE = 3  # exit status when --max-minutes stopped the work


def chapter8(out: Path, size: str) -> int:
    """Chapter 8's sweep at ``size``, resumable; writes ``out/08_toy_models.json``."""
    from hclib.toy import SWEEP_SIZES, make_toy_data, run_toy_sweep, save_toy_sweep, sweep_configs

    toy = SWEEP_SIZES[size]
    configs = sweep_configs()
    runs_dir = out / f".{TOY_NAME.removesuffix('.json')}-runs"
    workers = min(toy.workers, os.cpu_count() or 1)
    print(
        f"chapter 8, {size} size: {len(configs)} configurations x {len(toy.seeds)} seeds, "
        f"d={toy.dim}, L={toy.depth}, {toy.steps} steps of {toy.batch_size}, "
        f"{workers} processes; finished runs in {runs_dir}",
        flush=True,
    )
    start = time.perf_counter()
    rows = run_toy_sweep(
        configs,
        make_toy_data(n_train=toy.n_train),
        toy.seeds,
        workers=workers,
        runs_dir=runs_dir,
        progress=True,
        **toy.run_kwargs(),
    )
    seconds = time.perf_counter() - start
    path = save_toy_sweep(
        out / TOY_NAME,
        rows,
        size=size,
        **toy.settings(),
        seeds=list(toy.seeds),
        configs=configs,
        # the runs' own times add up to the CPU time; the wall time of this call may cover
        # only the runs that were left after an interruption
        seconds=round(sum(r["seconds"] for r in rows) / workers),
        cpu_seconds=round(sum(r["seconds"] for r in rows)),
        seconds_this_call=round(seconds),
        workers=workers,
        machine=f"{os.cpu_count()} CPU cores ({platform.machine()}), {workers} worker processes",
        **provenance(),
        command=f"benchmarks/chapters_medium.py --chapter 8{' --smoke' * (size == 'smoke')}",
    )
    shutil.rmtree(runs_dir)
    print(f"wrote {path} ({len(rows)} runs, {seconds:.0f} s in this call)", flush=True)
    return 0


def _gpt_job(job: tuple[str, int], size: str, folder: str, stop_at: float | None, data_root):
    """One (connection, seed) of chapter 9, in a worker process (one torch thread)."""
    from hclib.experiments import experiment_config, pick_corpus, run_experiments

    torch.set_num_threads(1)
    name, seed = job
    config = experiment_config(size)
    corpus = pick_corpus(config.corpus, data_root)
    records, _ = run_experiments(
        config,
        corpus,
        connections=[name],
        seeds=[seed],
        out=Path(folder),
        stop_at=stop_at,
        checkpoint_every=100,
        device="cpu",
        progress=True,
    )
    return name, seed, records[0] if records else None  # None: stopped at the deadline


def chapter9(out: Path, size: str, stop_at: float | None, data_root: Path | None) -> int:
    """Chapter 9's runs at ``size`` through ``hclib.training`` (Lightning), two at a time,
    resumable; writes ``out/09_small_gpt/`` when every run has finished."""
    import multiprocessing

    from hclib.experiments import (
        corpus_settings,
        describe,
        experiment_config,
        pick_corpus,
        write_results,
    )

    config = experiment_config(size)
    corpus = pick_corpus(config.corpus, data_root)
    folder = out / GPT_NAME
    jobs = [(name, seed) for seed in config.seeds for name in config.connections]
    workers = min(2, os.cpu_count() or 1, len(jobs))
    print(
        f"chapter 9, {size} size: {describe(config, corpus.name)}, {config.steps} steps, "
        f"runs {', '.join(config.connections)} x seeds {list(config.seeds)}, {workers} processes; "
        f"finished runs in {folder / 'runs'}",
        flush=True,
    )
    start = time.perf_counter()
    ctx = multiprocessing.get_context("spawn")  # fresh processes: no state of this one
    records = []  # in the order of jobs; None for a run stopped at the deadline
    with ctx.Pool(workers, maxtasksperchild=1) as pool:
        args = [(job, size, str(folder), stop_at, data_root) for job in jobs]
        for name, seed, record in pool.starmap(_gpt_job, args, chunksize=1):
            records.append(record)
            if record is None:
                print(f"chapter 9: {name} seed {seed} stopped at the deadline", flush=True)
    seconds = time.perf_counter() - start
    if None in records:
        print(f"stopped after {seconds:.0f} s; run the same command to continue", flush=True)
        return INCOMPLETE
    write_results(
        folder,
        config,
        records,
        **corpus_settings(corpus),
        **provenance(),
        device=records[0]["device"],
        machine=f"{platform.machine()}, {os.cpu_count()} cores, {workers} runs at a time",
        command=f"benchmarks/chapters_medium.py --chapter 9{' --smoke' * (size == 'smoke')}",
        # the runs' own times (a resumed run's include its earlier calls) over the processes
        seconds=round(sum(r["seconds"] for r in records) / workers),
        seconds_this_call=round(seconds),
        setting=describe(config, corpus.name),
    )
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)
    print(f"wrote {folder} ({len(records)} runs, {seconds:.0f} s in this call)", flush=True)
    return 0


def describe_sizes(size: str) -> str:
    """The settings of both chapters at ``size``, one line each."""
    from hclib.experiments import describe, experiment_config
    from hclib.toy import SWEEP_SIZES, sweep_configs

    toy = SWEEP_SIZES[size]
    gpt = experiment_config(size)
    return "\n".join(
        [
            f"chapter 8 ({size}): {len(sweep_configs())} configurations x {len(toy.seeds)} "
            f"seeds = {toy.runs} runs; d={toy.dim}, L={toy.depth}, {toy.steps} AdamW steps of "
            f"{toy.batch_size} from {toy.n_train:,} examples; {toy.workers} processes",
            f"chapter 9 ({size}): {describe(gpt)}; {gpt.steps} steps of {gpt.batch_size} x "
            f"{gpt.block_size} tokens; runs {', '.join(gpt.connections)} x seeds "
            f"{list(gpt.seeds)} = {len(gpt.connections) * len(gpt.seeds)} runs; 2 processes",
        ]
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--chapter", choices=("8", "9"), action="append", help="8, 9 or both")
    p.add_argument("--out", type=Path, default=None, help="default results/<date>-cpu-medium/")
    p.add_argument("--smoke", action="store_true", help="toy sizes, a temporary folder")
    p.add_argument("--dry-run", action="store_true", help="print the settings only")
    p.add_argument("--max-minutes", type=float, default=None, help="stop cleanly after this")
    p.add_argument("--data-root", type=Path, default=None, help="folder of built corpora")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    size = "smoke" if args.smoke else "medium"
    chapters = args.chapter or ["8", "9"]
    if args.dry_run:
        print(describe_sizes(size))
        return 0
    out = args.out
    if out is None:
        if args.smoke:
            out = Path(tempfile.mkdtemp(prefix="hclib-chapters-medium-"))
        else:
            out = ROOT / "results" / f"{datetime.date.today().isoformat()}-cpu-medium"
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(describe_sizes(size), flush=True)
    stop_at = None if args.max_minutes is None else time.monotonic() + 60 * args.max_minutes
    status = 0
    if "8" in chapters:
        status = max(status, chapter8(out, size))
    if "9" in chapters:
        status = max(status, chapter9(out, size, stop_at, args.data_root))
    return status


if __name__ == "__main__":
    sys.exit(main())
