"""The GPU size of chapters 8-10: every chapter's runs in about three minutes of one H100/H200.

usage::

    python benchmarks/chapters_gpu.py --out results/<date>-<device>/   # on the GPU machine
    python benchmarks/chapters_gpu.py --dry-run                       # the plan and its estimate
    python benchmarks/chapters_gpu.py --smoke --out /tmp/ch           # the same flow on the CPU

**What runs**, in three lanes at once:

* chapter 8, on the machine's CPU cores (a 64-wide MLP is launch-bound on a GPU, and the
  library's sweep trains on the CPU): :func:`hclib.toy.run_toy_sweep` over the chapter's 14
  configurations at the depth of its full size (32 blocks), 500 AdamW steps of 256 examples
  from 65,536, six seeds, in ``SWEEP_SIZES["gpu"].workers`` processes;
* chapter 9, on the GPU: :func:`hclib.experiments.run_experiments` at the preset
  :data:`hclib.experiments.SIZES` ``["gpu"]`` (a GPT of d = 384 and 6 blocks, 300 steps of
  16,384 bytes: 4.9M tokens per run, Pre-Norm, HC, FC, mHC and HC n = 1, three seeds);
* chapter 10, on the GPU beside chapter 9 (a second process): ``python -m hclib.train fit
  --config configs/moe-gpu.yaml`` (in-process, :func:`hclib.training.cli.main`) for each
  connection and three seeds (a 4-block MoE GPT, 200 steps of 8,192 bytes: 1.6M tokens).

**Output** in ``--out`` (default ``results/<date>-<device>/``), in the files and formats the
chapters load: ``08_toy_models.json`` (:func:`hclib.toy.save_toy_sweep`), ``09_small_gpt/``
(:func:`hclib.experiments.write_results`) and ``10_moe_llm_with_lightning/`` (each run's
``metrics.csv``, ``config.yaml`` and ``hparams.yaml`` under ``<connection>/seed<s>/``, and
``runs.json``), all with ``size`` ``"gpu"``; and, in ``--report-dir`` (default ``--out``),
``chapters_gpu.csv`` and ``chapters_gpu.md``: the plan, the estimate and what ran.

**The budget** (``--budget-s``, default 240): past it, or on SIGTERM, the running work is
stopped; what finished is kept (complete seeds only: a seed is kept when every configuration
of its chapter finished, so that every comparison stays paired), and the report says what
was skipped. A chapter-10 run is not started when its estimate does not fit in what is left.

**The estimate** (``--dry-run`` prints it; :class:`CostModel` holds every assumption): GPU
runs cost their model FLOPs (:func:`hclib.training.flops.flops_per_token`) at 20 % of the
H100's 989 TFLOP/s dense bfloat16, plus a launch-bound cost per block and step (models this
small wait on kernel launches more than on arithmetic), plus fixed costs per run, per
process and for Triton's compile and autotuning. Chapters 9 and 10 run as two processes on
the one GPU: each waits on its own launches, their arithmetic shares the tensor cores, so the
GPU lane is the longer chapter plus the shorter one's arithmetic. The toy sweep costs a CPU
time per block and step, measured on a 2-core machine with one thread per run and rounded up
by 40 %. None of it has been checked on a GPU yet: compare the report's measured seconds
with the estimate and correct :class:`CostModel`.

``--smoke`` runs the same flow on the CPU at toy sizes (in a temporary folder unless
``--out``), to check the plumbing in CI (``tests/test_chapters_gpu.py``); its numbers mean
nothing and its size is ``"smoke"``, which no chapter loads. Never commit it.

**The corpus**: chapters 9 and 10 train on ``shakespeare-byte`` (4.6M training bytes), which
must be built (``python -m hclib.data build --corpus shakespeare-byte``) or carried to a GPU
machine without network (``data/shakespeare-byte``, about 10 MB); without it these two
chapters are skipped with a message and chapter 8 still runs.

Derived in: notebooks/08_toy_models, 09_small_gpt, 10_moe_llm_with_lightning.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import multiprocessing
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # this checkout's hclib when run as a script

import torch  # noqa: E402

from hclib.book import provenance  # noqa: E402
from hclib.toy import SWEEP_SIZES, SweepSize, sweep_configs  # noqa: E402

TOY_NAME = "08_toy_models.json"
GPT_NAME = "09_small_gpt"
MOE_NAME = "10_moe_llm_with_lightning"
MOE_RECIPE = ROOT / "configs" / "moe-gpu.yaml"
MOE_CONNECTIONS = ("residual", "hc", "fc", "mhc")  # chapter 10's, in its order
CORPUS = "shakespeare-byte"  # chapters 9 and 10 at the gpu size
#: seconds kept back from the budget to write the results
RESERVE_S = 5.0
MOE_SEEDS = {"gpu": (0, 1, 2), "smoke": (0, 1)}
#: command-line overrides of configs/moe-gpu.yaml at the smoke size (CPU, toy widths)
MOE_SMOKE = [
    "--trainer.accelerator", "cpu",
    "--trainer.precision", "32-true",
    "--trainer.max_steps", "4",
    "--trainer.val_check_interval", "2",
    "--trainer.log_every_n_steps", "1",
    "--model.d_model", "32",
    "--model.n_head", "2",
    "--model.n_layer", "2",
    "--model.moe_layers", "[1]",
    "--model.n_experts", "4",
    "--model.moe_hidden", "32",
    "--model.warmup_steps", "1",
    "--data.block_size", "16",
    "--data.batch_size", "4",
    "--data.val_batches", "1",
]  # fmt: skip


def gpt_config(size: str):
    """Chapter 9's :class:`hclib.experiments.ExperimentConfig` at ``size`` ("gpu" or "smoke")."""
    from hclib.experiments import experiment_config

    return experiment_config(size).replace(corpus=CORPUS)


def moe_recipe() -> dict[str, Any]:
    import yaml

    return yaml.safe_load(MOE_RECIPE.read_text())


# ------------------------------------------------------------------------------- the estimate


@dataclass(frozen=True)
class CostModel:
    """How long the gpu size takes, from FLOPs and launch counts: every assumption is here.

    Not measured on a GPU yet (the task that wrote this had none): the report prints the
    measured time beside each estimate, so the constants can be corrected from one run.
    """

    #: H100 SXM dense bfloat16 (hclib.traffic.DEVICE_PEAKS); the H200 has the same tensor cores
    peak_flops: float = 989e12
    #: model FLOPs utilisation of the GPTs' matrix products: the 30-40 % of large models is
    #: out of reach at d = 256-384 with batches of 8-16k tokens, so 20 %
    mfu: float = 0.20
    #: launch-bound cost per block and training step (forward, backward, optimizer share),
    #: eager PyTorch at about 15 us per operation: Pre-Norm ~40 operations a block, the
    #: multi-stream connections (hclib's Triton kernels, dynamic weights) ~100
    block_s: dict[str, float] = field(
        default_factory=lambda: {"residual": 0.6e-3, "hc": 1.5e-3, "fc": 1.5e-3, "mhc": 1.5e-3}
    )
    moe_layer_s: float = 1.0e-3  #: routing, top-k, gather and scatter of an MoE layer per step
    step_s: float = 2.0e-3  #: per step: fused AdamW, gradient clipping, the batch
    lightning_step_s: float = 3.0e-3  #: per step: Lightning's loop, logging, callbacks
    gpt_run_s: float = 1.5  #: per chapter-9 run: model, validation every 50 steps, 4 probes
    moe_run_s: float = 2.5  #: per chapter-10 run: Trainer setup, 8 validations, log copy
    process_s: float = 15.0  #: per GPU process: Python, torch, CUDA context, corpus
    #: per connection kind and model shape: Triton compiles and autotunes hclib's kernels
    #: (benchmarks/kernel_resources.py: about 0.2 s a compile; each config is also timed)
    compile_s: float = 10.0
    #: toy sweep, one thread per run: CPU seconds per block and step at batch b are
    #: toy_a + toy_b * b (measured: 0.70 ms at 128, 0.95 ms at 256, mean over the 14
    #: configurations; x1.4 here for a slower core and the GPU processes beside it)
    toy_a: float = 0.6e-3
    toy_b: float = 3.0e-6
    toy_run_s: float = 1.0  #: per toy run: model, evaluation, seesaw measures
    #: what the three chapters together should take
    target_s: float = 180.0

    def toy_run(self, toy: SweepSize) -> float:
        return toy.depth * toy.steps * (self.toy_a + self.toy_b * toy.batch_size) + self.toy_run_s

    def arithmetic(self, flops: float) -> float:
        """Seconds of ``flops`` of model arithmetic at the assumed utilisation."""
        return flops / (self.mfu * self.peak_flops)

    def step(self, flops_per_step: float, n_layer: int, kind: str, moe_layers: int = 0) -> float:
        """Seconds of one training step: arithmetic plus launch-bound overheads."""
        return (
            self.arithmetic(flops_per_step)
            + n_layer * self.block_s[kind]
            + moe_layers * self.moe_layer_s
            + self.step_s
        )


def _flops_per_token(model_config) -> float:
    from hclib.models.gpt import GPT
    from hclib.training.flops import flops_per_token

    with torch.device("meta"):  # no memory, no initialisation
        model = GPT(model_config)
    return flops_per_token(model)


def _vocab(corpus: str) -> int:
    return 256 if corpus.endswith("-byte") else 4096


@dataclass
class Item:
    """One line of the plan: a chapter's runs of one configuration, and their estimate."""

    chapter: str
    what: str
    lane: str  # "cpu" or "gpu"
    runs: int
    tokens_per_run: float
    flops_per_run: float
    seconds: float  # the estimate, all runs (for the CPU lane: wall time over the workers)
    arithmetic_s: float = 0.0  # of which the GPU's arithmetic (FLOPs at the assumed MFU)


def plan(size: str, cost: CostModel | None = None) -> list[Item]:
    """The gpu (or smoke) size's runs and their estimated times (nothing runs here)."""
    cost = cost or CostModel()
    items = []
    toy = SWEEP_SIZES[size]
    configs = sweep_configs()
    runs = len(configs) * len(toy.seeds)
    cpu_seconds = runs * cost.toy_run(toy)
    items.append(
        Item(
            "8",
            f"toy sweep: {len(configs)} configurations x {len(toy.seeds)} seeds, d={toy.dim}, "
            f"L={toy.depth}, {toy.steps} steps of {toy.batch_size} ({toy.workers} CPU processes)",
            "cpu",
            runs,
            toy.steps * toy.batch_size,
            0.0,
            cpu_seconds / toy.workers,
        )
    )
    config = gpt_config(size)
    vocab = _vocab(config.corpus)
    per_step = config.batch_size * config.block_size
    items.append(Item("9", "process start", "gpu", 0, 0, 0, cost.process_s))
    kinds = set()
    for name in config.connections:
        model = config.model_config(name, vocab)
        kinds.add(model.connection)
        flops = _flops_per_token(model) * per_step
        # chapter 9's runs go through Lightning too (hclib.experiments.train_gpt)
        step = cost.step(flops, model.n_layer, model.connection) + cost.lightning_step_s
        n = len(config.seeds)
        items.append(
            Item(
                "9",
                f"GPT {name}: d={config.d_model}, L={config.n_layer}, {config.steps} steps of "
                f"{per_step:,} tokens, {n} seeds",
                "gpu",
                n,
                config.tokens,
                flops * config.steps,
                n * (config.steps * step + cost.gpt_run_s),
                n * config.steps * cost.arithmetic(flops),
            )
        )
    kinds.discard("residual")
    items.append(Item("9", "Triton compile", "gpu", 0, 0, 0, cost.compile_s * len(kinds)))

    recipe = moe_recipe()
    fields = _moe_fields(recipe, size)
    seeds = MOE_SEEDS[size]
    m_steps = int(fields["max_steps"])
    m_per_step = int(fields["batch_size"]) * int(fields["block_size"])
    for connection in MOE_CONNECTIONS:
        model = _moe_model_config(recipe, fields, connection)
        flops = _flops_per_token(model) * m_per_step
        step = cost.step(flops, model.n_layer, connection, len(model.moe_layers))
        step += cost.lightning_step_s
        n = len(seeds)
        items.append(
            Item(
                "10",
                f"MoE {connection}: d={model.d_model}, L={model.n_layer}, "
                f"{len(model.moe_layers)} MoE layers, {m_steps} steps of {m_per_step:,} tokens, "
                f"{n} seeds",
                "gpu",
                n,
                m_steps * m_per_step,
                flops * m_steps,
                n * (m_steps * step + cost.moe_run_s),
                n * m_steps * cost.arithmetic(flops),
            )
        )
    items.insert(-len(MOE_CONNECTIONS), Item("10", "process start", "gpu", 0, 0, 0, cost.process_s))
    items.append(Item("10", "Triton compile", "gpu", 0, 0, 0, cost.compile_s * 3))
    return items


def _moe_fields(recipe: dict[str, Any], size: str) -> dict[str, Any]:
    """The recipe's model, data and trainer values (with the smoke overrides at "smoke")."""
    import yaml

    values = {**recipe["model"], **recipe["data"], **recipe["trainer"]}
    if size == "smoke":
        pairs = dict(zip(MOE_SMOKE[::2], MOE_SMOKE[1::2], strict=True))
        for key, value in pairs.items():
            values[key.rsplit(".", 1)[1]] = yaml.safe_load(value)
    return values


def _moe_model_config(recipe: dict[str, Any], fields: dict[str, Any], connection: str):
    import dataclasses

    from hclib.models.gpt import GPTConfig

    names = {f.name for f in dataclasses.fields(GPTConfig)}
    model = {k: v for k, v in fields.items() if k in names}
    model.update(connection=connection, vocab_size=_vocab(recipe["data"]["corpus"]))
    return GPTConfig(**model)


def estimate(items: Sequence[Item]) -> dict[str, float]:
    """``{"cpu", "9", "10", "gpu", "total"}`` seconds. The three lanes run at once: chapters 9
    and 10 in two processes on the one GPU, where each mostly waits on its own kernel launches
    (its own CPU core) but their arithmetic shares the tensor cores, so the GPU lane is the
    longer chapter plus the shorter one's arithmetic; the total is the longer of the CPU lane
    and the GPU lane."""
    cpu = sum(i.seconds for i in items if i.lane == "cpu")
    ch = {c: sum(i.seconds for i in items if i.chapter == c) for c in ("9", "10")}
    arith = {c: sum(i.arithmetic_s for i in items if i.chapter == c) for c in ("9", "10")}
    longer = max(ch, key=ch.get)
    shorter = "10" if longer == "9" else "9"
    gpu = ch[longer] + arith[shorter]
    return {"cpu": cpu, "9": ch["9"], "10": ch["10"], "gpu": gpu, "total": max(cpu, gpu)}


def plan_table(items: Sequence[Item], cost: CostModel) -> str:
    lines = [
        "| chapter | runs | lane | tokens per run | model TFLOP per run | estimated s |",
        "| --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for i in items:
        tokens = f"{i.tokens_per_run / 1e6:.2f}M" if i.tokens_per_run else ""
        flops = f"{i.flops_per_run / 1e12:.0f}" if i.flops_per_run else ""
        runs = str(i.runs) if i.runs else ""
        lines.append(
            f"| {i.chapter}: {i.what} | {runs} | {i.lane} | {tokens} | {flops} | {i.seconds:.0f} |"
        )
    e = estimate(items)
    lines += [
        "",
        f"Estimated: CPU lane (chapter 8) {e['cpu']:.0f} s; GPU lane {e['gpu']:.0f} s (chapters "
        f"9 and 10 at once, {e['9']:.0f} s and {e['10']:.0f} s alone, sharing the GPU's "
        f"arithmetic); the lanes run at once, so about {e['total']:.0f} s in all "
        f"(target {cost.target_s:.0f} s).",
        "",
        f"Assumptions (CostModel): {cost.mfu:.0%} of {cost.peak_flops / 1e12:.0f} TFLOP/s for "
        f"the model FLOPs; per block and step {cost.block_s['residual'] * 1e3:.1f} ms "
        f"(Pre-Norm) or {cost.block_s['hc'] * 1e3:.1f} ms (HC, FC, mHC) of launches, "
        f"{cost.moe_layer_s * 1e3:.1f} ms per MoE layer, {cost.step_s * 1e3:.1f} ms per step "
        f"(+{cost.lightning_step_s * 1e3:.1f} ms under Lightning); {cost.gpt_run_s} s per GPT "
        f"run, {cost.moe_run_s} s per MoE run, {cost.process_s:.0f} s per process, "
        f"{cost.compile_s:.0f} s of Triton compile per connection kind; the toy sweep at "
        f"{cost.toy_a * 1e3:.1f} ms + {cost.toy_b * 1e6:.1f} us x batch per block and step "
        "on one core. Not yet checked on a GPU.",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------- chapter 8


_TOY: dict[str, Any] = {}


def _toy_init(size: str) -> None:
    from hclib.toy import make_toy_data

    torch.set_num_threads(1)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the parent decides what is kept
    toy = SWEEP_SIZES[size]
    _TOY.update(size=toy, data=make_toy_data(n_train=toy.n_train))


def _toy_job(name: str, seed: int) -> dict[str, Any]:
    """One (configuration, seed) of the sweep, through :func:`hclib.toy.run_toy_sweep`."""
    from hclib.toy import run_toy_sweep

    toy = _TOY["size"]
    (row,) = run_toy_sweep(
        {name: sweep_configs()[name]},
        _TOY["data"],
        [seed],
        **toy.run_kwargs(),
    )
    return row


def complete_seeds(keys: Sequence[tuple[str, int]], names: Sequence[str], seeds) -> list[int]:
    """The seeds for which every name has finished (``keys``: finished (name, seed))."""
    done = set(keys)
    return [s for s in seeds if all((n, s) in done for n in names)]


# ------------------------------------------------------------------------------- chapter 9


def gpt_lane(out: Path, size: str, stop_at: float, data_root: Path | None) -> int:
    """Chapter 9's runs (in a child process): each finished run lands in
    ``out/09_small_gpt/runs/`` as it ends; the parent writes the rest."""
    from hclib.experiments import pick_corpus, run_experiments

    config = gpt_config(size)
    corpus = pick_corpus(config.corpus, data_root)
    device = torch.device("cpu" if size == "smoke" else "cuda")
    run_experiments(
        config, corpus, out=out / GPT_NAME, device=device, stop_at=stop_at, progress=size == "gpu"
    )
    return 0


def write_gpt(out: Path, size: str, data_root: Path | None, seconds: float) -> tuple[int, int]:
    """``09_small_gpt/``'s settings, summary and verdicts from the runs that finished
    (complete seeds only); returns (runs kept, runs planned)."""
    from hclib.experiments import corpus_settings, describe, pick_corpus, write_results

    config = gpt_config(size)
    folder = out / GPT_NAME
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)  # a run stopped by the budget
    records = {}
    for path in sorted((folder / "runs").glob("*.json")):
        record = json.loads(path.read_text())
        records[record["connection"], record["seed"]] = record
    seeds = complete_seeds(list(records), config.connections, config.seeds)
    for (name, seed), _ in list(records.items()):
        if seed not in seeds:  # an unpaired run: not kept
            (folder / "runs" / f"{name}-seed{seed}.json").unlink()
            del records[name, seed]
    planned = len(config.connections) * len(config.seeds)
    if not records:
        shutil.rmtree(folder, ignore_errors=True)
        return 0, planned
    kept = [records[name, seed] for seed in seeds for name in config.connections]
    corpus = pick_corpus(config.corpus, data_root)
    write_results(
        folder,
        config.replace(seeds=tuple(seeds)),
        kept,
        **corpus_settings(corpus),
        **provenance(),
        device=kept[0]["device"],
        machine=f"{platform.machine()}, {os.cpu_count()} cores",
        command="benchmarks/chapters_gpu.py" + (" --smoke" if size == "smoke" else ""),
        runs_finished=len(kept),
        runs_planned=planned,
        seeds_planned=list(config.seeds),
        seconds_this_call=round(seconds),
        setting=describe(config.replace(seeds=tuple(seeds)), corpus.name),
    )
    return len(kept), planned


# ------------------------------------------------------------------------------- chapter 10


def moe_args(size: str, connection: str, seed: int, logs: Path, data_root: Path | None):
    """The ``python -m hclib.train`` arguments of one chapter-10 run."""
    args = ["fit", "--config", str(MOE_RECIPE)]
    if size == "smoke":
        args += MOE_SMOKE
    args += [
        "--model.connection", connection,
        "--seed_everything", str(seed),  # the initial weights
        "--data.seed", str(seed),  # the order of the training windows
        "--trainer.default_root_dir", str(logs),
        "--trainer.logger.init_args.save_dir", str(logs),
        "--trainer.logger.init_args.name", connection,
        "--trainer.logger.init_args.version", f"seed{seed}",
    ]  # fmt: skip
    if data_root is not None:
        args += ["--data.root", str(data_root)]
    return args


def moe_lane(out: Path, size: str, stop_at: float, data_root: Path | None) -> int:
    """Chapter 10's runs (in a child process), in-process through the CLI's entry point; a
    finished run's logs are copied to ``out/10_moe_llm_with_lightning/<connection>/seed<s>/``,
    and a run whose estimate does not fit before ``stop_at`` is not started."""
    from hclib.training.cli import main as train_main
    from hclib.training.runs import quiet_lightning

    per_run = {
        i.what.split(":")[0].split()[1]: i.seconds / i.runs
        for i in plan(size)
        if i.chapter == "10" and i.runs
    }
    target = out / MOE_NAME
    logs = out / f".{MOE_NAME}-logs"
    timing = logs / "seconds.json"
    logs.mkdir(parents=True, exist_ok=True)
    seconds = json.loads(timing.read_text()) if timing.exists() else {}
    for seed in MOE_SEEDS[size]:
        for connection in MOE_CONNECTIONS:
            keep = target / connection / f"seed{seed}"
            if (keep / "metrics.csv").exists():
                continue
            if time.monotonic() + per_run[connection] > stop_at:
                print(f"chapter 10: {connection} seed {seed} not started (budget)", flush=True)
                return 0
            start = time.perf_counter()
            messages = io.StringIO()
            with (
                quiet_lightning(),
                mock.patch.object(sys, "argv", ["hclib.train"]),
                warnings.catch_warnings(),
                contextlib.redirect_stderr(messages),
            ):
                warnings.simplefilter("ignore")
                train_main(moe_args(size, connection, seed, logs, data_root))
            folder = logs / connection / f"seed{seed}"
            keep.mkdir(parents=True, exist_ok=True)
            for name in ("metrics.csv", "config.yaml", "hparams.yaml"):
                shutil.copy2(folder / name, keep / name)
            seconds[f"{connection}/seed{seed}"] = round(time.perf_counter() - start, 1)
            timing.write_text(json.dumps(seconds, indent=1) + "\n")
            print(f"chapter 10: {connection} seed {seed}: {seconds[f'{connection}/seed{seed}']} s")
    return 0


def write_moe(out: Path, size: str, device: str) -> tuple[int, int]:
    """``runs.json`` of chapter 10's results (complete seeds only); (runs kept, planned)."""
    target = out / MOE_NAME
    logs = out / f".{MOE_NAME}-logs"
    timing = logs / "seconds.json"
    seconds = json.loads(timing.read_text()) if timing.exists() else {}
    seeds = MOE_SEEDS[size]
    planned = len(MOE_CONNECTIONS) * len(seeds)
    finished = [
        (c, s) for c in MOE_CONNECTIONS for s in seeds if (target / c / f"seed{s}").is_dir()
    ]
    kept = complete_seeds(finished, MOE_CONNECTIONS, seeds)
    for c, s in finished:
        if s not in kept:
            shutil.rmtree(target / c / f"seed{s}")
    shutil.rmtree(logs, ignore_errors=True)
    if not kept:
        shutil.rmtree(target, ignore_errors=True)
        return 0, planned
    description = {
        "size": size,
        "recipe": str(MOE_RECIPE.relative_to(ROOT)),
        "overlay": " ".join(MOE_SMOKE) if size == "smoke" else "",
        "connections": list(MOE_CONNECTIONS),
        "seeds": kept,
        "seeds_planned": list(seeds),
        "seconds": {k: round(v) for k, v in seconds.items() if int(k.rsplit("seed", 1)[1]) in kept},
        "device": device,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        **provenance(),
    }
    (target / "runs.json").write_text(json.dumps(description, indent=2) + "\n")
    return len(kept) * len(MOE_CONNECTIONS), planned


# ------------------------------------------------------------------------------- the command


def corpus_problem(data_root: Path | None) -> str:
    """Why chapters 9 and 10 cannot run (their corpus is missing and cannot be built), or ""."""
    from hclib.data import ensure_corpus

    try:
        ensure_corpus(CORPUS, data_root)
    except Exception as error:  # noqa: BLE001 - any reason is reported, chapter 8 still runs
        return f"corpus {CORPUS} unavailable ({type(error).__name__}: {error})"
    return ""


class _StopRequestedError(Exception):
    pass


def _on_sigterm(signum, frame) -> None:
    raise _StopRequestedError


@dataclass
class Lane:
    chapter: str
    command: list[str]
    skip: str = ""
    status: str = "not run"
    seconds: float = 0.0
    proc: subprocess.Popen | None = None
    started: float = 0.0


def _stop_child(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 8), (signal.SIGKILL, 3)):
        if proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run(args: argparse.Namespace, out: Path, report_dir: Path) -> int:
    """Run the three lanes until done or the budget; write every chapter's files."""
    size = "smoke" if args.smoke else "gpu"
    start = time.monotonic()
    deadline = start + args.budget_s - RESERVE_S
    items = plan(size)
    toy = SWEEP_SIZES[size]
    configs = sweep_configs()
    problem = corpus_problem(args.data_root)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    threads = max(1, ((os.cpu_count() or 2) - min(toy.workers, os.cpu_count() or 1)) // 2)
    env["OMP_NUM_THREADS"] = str(threads)  # each GPU process; the toy workers have the rest
    if args.smoke:
        env["CUDA_VISIBLE_DEVICES"] = ""
    lanes = []
    for chapter, lane in (("9", "gpt"), ("10", "moe")):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--lane", lane, "--out", str(out)]
        cmd += ["--budget-s", f"{deadline - time.monotonic():.1f}"]
        cmd += ["--smoke"] * args.smoke
        if args.data_root is not None:
            cmd += ["--data-root", str(args.data_root)]
        lanes.append(Lane(chapter, cmd, skip=problem))
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    failures: list[str] = []
    stopped = ""
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    workers = min(toy.workers, os.cpu_count() or 1)  # the estimate assumes toy.workers
    pool = ctx.Pool(workers, initializer=_toy_init, initargs=(size,))
    toy_start = time.monotonic()
    toy_seconds = 0.0
    jobs = [((name, seed), pool.apply_async(_toy_job, (name, seed))) for seed in toy.seeds
            for name in configs]  # fmt: skip
    pool.close()
    try:
        while True:
            now = time.monotonic()
            if now > deadline:
                stopped = "budget"
                break
            for key, job in jobs:
                if key not in rows and job.ready():
                    if job.successful():
                        rows[key] = job.get()
                    elif key not in failures:
                        failures.append(f"chapter 8 {key}: {job._value!r}")
                        rows[key] = {}
            if len(rows) == len(jobs) and not toy_seconds:
                toy_seconds = now - toy_start
            for lane in lanes:
                if lane.status == "not run" and not lane.skip:  # both start at once
                    lane.proc = subprocess.Popen(lane.command, cwd=ROOT, env=env)
                    lane.started, lane.status = now, "running"
                if lane.proc is not None and lane.proc.poll() is not None:
                    rc = lane.proc.returncode
                    lane.status = "ok" if rc == 0 else f"failed (exit {rc})"
                    lane.seconds, lane.proc = now - lane.started, None
                    if rc:
                        failures.append(f"chapter {lane.chapter}: exit {rc} (see the log above)")
            if len(rows) == len(jobs) and all(lane.proc is None for lane in lanes):
                break
            time.sleep(0.2)
    except _StopRequestedError:
        stopped = "SIGTERM"
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # finish writing what finished
        pool.terminate()
        for lane in lanes:
            if lane.proc is not None:
                _stop_child(lane.proc)
                lane.status, lane.seconds = f"stopped: {stopped}", time.monotonic() - lane.started
                lane.proc = None
    toy_seconds = toy_seconds or time.monotonic() - toy_start

    # ---- chapter 8
    finished = [k for k, r in rows.items() if r]
    seeds = complete_seeds(finished, list(configs), toy.seeds)
    kept = [rows[name, seed] for seed in seeds for name in configs]
    if kept:
        from hclib.toy import save_toy_sweep

        save_toy_sweep(
            out / TOY_NAME,
            kept,
            size=size,
            **toy.settings(),
            seeds=seeds,
            seeds_planned=list(toy.seeds),
            configs=configs,
            seconds=round(toy_seconds),
            workers=workers,
            machine=f"{os.cpu_count()} CPU cores ({platform.machine()}), "
            f"{workers} worker processes, beside the GPU runs of chapters 9-10",
            **provenance(),
        )
    results = [("8", len(kept), len(jobs), toy_seconds, "ok" if len(kept) == len(jobs) else "")]
    # ---- chapters 9 and 10
    done9 = (0, len(gpt_config(size).connections) * len(gpt_config(size).seeds))
    done10 = (0, len(MOE_CONNECTIONS) * len(MOE_SEEDS[size]))
    if not problem:
        done9 = write_gpt(out, size, args.data_root, lanes[0].seconds)
        device = "cpu" if args.smoke else _cuda_name()
        done10 = write_moe(out, size, device)
    for lane, done in zip(lanes, (done9, done10), strict=True):
        status = "ok" if done[0] == done[1] else lane.skip or lane.status
        results.append((lane.chapter, *done, lane.seconds, status))
    signal.signal(signal.SIGTERM, previous)
    write_report(report_dir, size, items, results, stopped, failures, time.monotonic() - start)
    for line in failures:
        print("failed:", line, file=sys.stderr)
    return 1 if failures else 0


def _cuda_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def write_report(
    folder: Path,
    size: str,
    items: Sequence[Item],
    results: Sequence[tuple[str, int, int, float, str]],
    stopped: str,
    failures: Sequence[str],
    elapsed: float,
) -> None:
    """``chapters_gpu.csv`` (a row per chapter: runs kept and planned, estimated and measured
    seconds) and ``chapters_gpu.md`` (the plan, its estimate, what ran, what was skipped)."""
    cost = CostModel()
    folder.mkdir(parents=True, exist_ok=True)
    estimated = {c: sum(i.seconds for i in items if i.chapter == c) for c in ("8", "9", "10")}
    table = []
    for chapter, kept, planned, seconds, status in results:
        if not status:
            status = f"stopped: {stopped}" if stopped else "incomplete"
        table.append(
            {
                "chapter": chapter,
                "size": size,
                "runs_kept": kept,
                "runs_planned": planned,
                "estimated_s": round(estimated[chapter], 1),
                "measured_s": round(seconds, 1),
                "status": status,
            }
        )
    with (folder / "chapters_gpu.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    lines = [f"# Chapters 8-10 at the {size} size", "", "## Plan and estimate", ""]
    lines += [plan_table(items, cost), "", "## What ran", ""]
    lines += ["| chapter | runs kept / planned | estimated s | measured s | status |"]
    lines += ["| --- | ---: | ---: | ---: | --- |"]
    for r in table:
        lines.append(
            f"| {r['chapter']} | {r['runs_kept']} / {r['runs_planned']} | {r['estimated_s']:.0f} "
            f"| {r['measured_s']:.0f} | {r['status']} |"
        )
    lines += ["", f"All in {elapsed:.0f} s" + (f"; stopped by the {stopped}." if stopped else ".")]
    skipped = [r for r in table if r["runs_kept"] < r["runs_planned"]]
    if skipped:
        lines += ["", "Skipped (a seed is kept only when every configuration finished):"]
        lines += [
            f"- chapter {r['chapter']}: {r['runs_planned'] - r['runs_kept']} runs ({r['status']})"
            for r in skipped
        ]
    if failures:
        lines += ["", "Failures:", *[f"- {f}" for f in failures]]
    (folder / "chapters_gpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[lines.index("## What ran") :]))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=None, help="default results/<date>-<device>/")
    p.add_argument("--report-dir", type=Path, default=None, help="CSV and Markdown (default --out)")
    p.add_argument("--budget-s", type=float, default=240.0, help="seconds in all (default 240)")
    p.add_argument("--smoke", action="store_true", help="the same flow on the CPU, toy sizes")
    p.add_argument("--dry-run", action="store_true", help="print the plan and estimate only")
    p.add_argument("--data-root", type=Path, default=None, help="folder of built corpora")
    p.add_argument("--lane", choices=("gpt", "moe"), default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    size = "smoke" if args.smoke else "gpu"
    if args.lane is not None:  # a child: one GPU lane until the deadline
        stop_at = time.monotonic() + args.budget_s
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        lane = gpt_lane if args.lane == "gpt" else moe_lane
        return lane(args.out, size, stop_at, args.data_root)
    items = plan(size)
    print(plan_table(items, CostModel()), flush=True)
    if args.dry_run:
        return 0
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit(
            "benchmarks/chapters_gpu.py needs a CUDA device; --smoke runs its flow on the CPU, "
            "--dry-run prints the plan"
        )
    out = args.out
    if out is None:
        if args.smoke:
            out = Path(tempfile.mkdtemp(prefix="hclib-chapters-gpu-"))
        else:
            from hclib.book import results_dir

            out = ROOT / results_dir(_cuda_name())
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(f"writing {out}", flush=True)
    return run(args, out, (args.report_dir or out).resolve())


if __name__ == "__main__":
    sys.exit(main())
