"""The small GPT's experiments: one training run per connection and seed, measured and kept.

Chapter 9 trains the same GPT with each connection (Pre-Norm residual, HC, FC, mHC, and HC
with one stream as a control, :data:`VARIANTS`) at equal depth, width and tokens, repeats
each run with a few seeds, and judges the papers' claims from the spread. This module holds
what the chapter and its full-size script (``benchmarks/gpt_experiments.py``) share:

* :class:`ExperimentConfig` and :func:`experiment_config`: the sizes, ``"smoke"`` (tests),
  ``"small"`` (the book's CPU default), ``"medium"`` (about 35 minutes of 2 CPU cores,
  ``benchmarks/chapters_medium.py``), ``"gpu"`` (about a minute and a half of one H100,
  ``benchmarks/chapters_gpu.py``) and ``"full"`` (one GPU, documented in the chapter);
* :func:`train_gpt`: one run through ``hclib.training`` (Lightning's ``Trainer`` with
  :class:`hclib.training.GPTModule`, the trainer of ``python -m hclib.train``), with the
  callbacks of :mod:`hclib.training.runs` recording the training loss and gradient norm of
  every step, the validation loss, the connections' diagnostics over training
  (:func:`hclib.training.probe_connections`: Amax gains, adjacent-layer similarity, the
  unfolded connection matrix), tokens per second and memory; it can stop at a deadline and
  resume from Lightning's checkpoint, step for step;
* :func:`run_experiments`: every (connection, seed), each run saved as JSON when it ends;
* :func:`write_results`, :func:`load_results`, :func:`newest_results`: the results folder
  ``results/<date>-<device>/<name>/`` (``settings.json``, ``runs/*.json``, ``summary.csv``,
  ``verdicts.md``);
* :data:`GPT_CLAIMS`, :func:`run_metric`, :func:`judge_claims`, :func:`markdown_table`: the
  papers' claims, a scalar per run for each, and the reproduction table's verdicts
  (:func:`hclib.stats.compare_seeds` over paired seeds, "no better"/"no worse" claims against
  the margin :data:`LOSS_MARGIN` stated here, before any run); :func:`verdict_records` turns the
  rows into the records of the book's reproduction table (:mod:`hclib.stats`);
* :func:`plot_val_curves`, :func:`plot_gain_curves`: the figures that repeat.

A run record is a plain dict of JSON types (lists of floats), so that a results folder is
readable without hclib.

Derived in: notebooks/09_small_gpt.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import platform
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from hclib.book import results_dir
from hclib.models.gpt import GPT, GPTConfig
from hclib.models.wiring import CONNECTIONS
from hclib.stats import VerdictRecord, compare_seeds, markdown_table, records_from_rows
from hclib.streams import check_count
from hclib.training.datamodule import TrainWindows
from hclib.training.flops import flops_per_token

__all__ = [
    "AUTO_CORPORA",
    "GPT_CLAIMS",
    "LOSS_MARGIN",
    "METRICS",
    "NOT_MEASURED",
    "SIZES",
    "Claim",
    "ExperimentConfig",
    "VARIANTS",
    "TrainedGPT",
    "corpus_settings",
    "describe",
    "experiment_config",
    "judge_claims",
    "lambda_contrast",
    "load_results",
    "markdown_table",
    "newest_results",
    "per_seed",
    "pick_corpus",
    "plot_gain_curves",
    "plot_val_curves",
    "results_folder",
    "run_experiments",
    "run_label",
    "run_metric",
    "saved_activation_bytes",
    "summary_rows",
    "train_gpt",
    "verdict_records",
    "write_results",
]

#: the runs an experiment can hold, by name: (connection, GPTConfig fields that differ from
#: the experiment's). "hc-n1" is HC with one stream, the control of HC Table 1's first row:
#: the same learnable scalars as HC without the extra streams.
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "residual": ("residual", {}),
    "hc": ("hc", {}),
    "fc": ("fc", {}),
    "mhc": ("mhc", {}),
    "hc-n1": ("hc", {"n": 1}),
}

#: the corpora ``corpus="auto"`` tries, largest first (the first one that is built is used)
AUTO_CORPORA = ("fineweb-edu-bpe", "tinystories-bpe", "shakespeare-bpe")
#: the verdict of a claim that lacks two paired seeds
NOT_MEASURED = "not measured (needs 2 paired seeds)"


# ---------------------------------------------------------------------------------------------
# Sizes
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that defines one experiment: the model, the data, the optimiser, the probes.

    Every connection trains the same GPT (:class:`hclib.models.GPTConfig` with these sizes)
    on the same number of tokens, ``steps * batch_size * block_size``.
    """

    size: str  #: "smoke", "small", "medium", "gpu", "full" or a name of your own
    corpus: str  #: a corpus name of hclib.data, or "auto" (the first built of AUTO_CORPORA)
    d_model: int  #: model width d
    n_layer: int  #: transformer blocks (2 connections each)
    n_head: int  #: attention heads
    block_size: int  #: tokens per training window T
    batch_size: int  #: windows per step B
    steps: int  #: optimizer steps
    lr: float  #: peak learning rate of AdamW
    warmup_steps: int  #: linear warmup (then cosine to min_lr_ratio * lr at the last step)
    min_lr_ratio: float = 0.1  #: the cosine's floor
    weight_decay: float = 0.1  #: on matrices only (hclib.param_groups)
    betas: tuple[float, float] = (0.9, 0.95)  #: AdamW's
    grad_clip: float = 1.0  #: global gradient-norm clipping (0: none)
    n: int = 4  #: streams of HC and mHC
    m: int = 4  #: fractions of FC
    dynamic: bool = True  #: dynamic HC and FC (the papers' default)
    tie_embeddings: bool = True  #: share the token embedding with the output layer
    eval_every: int = 50  #: steps between validation losses; must divide steps (the last one)
    eval_windows: int = 64  #: validation windows (evenly spaced over the val split)
    probe_every: int = 50  #: steps between connection probes (and at steps 0 and last)
    probe_windows: int = 4  #: validation windows in the probe batch
    connections: tuple[str, ...] = CONNECTIONS  #: which runs: names of VARIANTS
    seeds: tuple[int, ...] = (0, 1)  #: seeds of every run (init and data order)

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layer", "n_head", "block_size", "batch_size", "steps"):
            check_count(getattr(self, name), name, "units")
        for name in ("eval_every", "eval_windows", "probe_every", "probe_windows"):
            check_count(getattr(self, name), name, "units")
        if self.steps % self.eval_every:
            raise ValueError(
                f"eval_every={self.eval_every} must divide steps={self.steps}: the last step is "
                "validated (the final validation loss)"
            )
        if not self.warmup_steps < self.steps:
            raise ValueError(f"warmup_steps={self.warmup_steps} must be below steps={self.steps}")
        unknown = [c for c in self.connections if c not in VARIANTS]
        if unknown or not self.connections:
            raise ValueError(
                f"connections must be names of VARIANTS {tuple(VARIANTS)}, got {self.connections}"
            )
        if not self.seeds:
            raise ValueError("seeds must hold at least one seed")
        self.model_config("fc", 256)  # checks d, heads, m

    @property
    def tokens(self) -> int:
        """Training tokens of every run, ``steps * batch_size * block_size``."""
        return self.steps * self.batch_size * self.block_size

    def model_config(self, name: str, vocab_size: int) -> GPTConfig:
        """The GPT of this experiment for the run ``name`` (a key of :data:`VARIANTS`)."""
        if name not in VARIANTS:
            raise ValueError(f"name must be one of {tuple(VARIANTS)}, got {name!r}")
        connection, overrides = VARIANTS[name]
        fields = dict(
            vocab_size=vocab_size,
            block_size=self.block_size,
            n_layer=self.n_layer,
            n_head=self.n_head,
            d_model=self.d_model,
            connection=connection,
            n=self.n,
            m=self.m,
            dynamic=self.dynamic,
            tie_embeddings=self.tie_embeddings,
        )
        fields.update(overrides)
        return GPTConfig(**fields)

    def replace(self, **changes: Any) -> ExperimentConfig:
        """A copy with some fields changed (e.g. ``steps=20``)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON types."""
        out = dataclasses.asdict(self)
        out["betas"], out["connections"], out["seeds"] = (
            list(self.betas),
            list(self.connections),
            list(self.seeds),
        )
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ExperimentConfig:
        """The inverse of :meth:`to_dict` (unknown keys are an error)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown ExperimentConfig keys {unknown}; valid: {sorted(known)}")
        values = dict(values)
        for key in ("betas", "connections", "seeds"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


SIZES: dict[str, ExperimentConfig] = {
    # a few steps of a 2-block model: checks that everything runs (tests, --smoke)
    "smoke": ExperimentConfig(
        size="smoke",
        corpus="shakespeare-byte",
        d_model=32,
        n_layer=2,
        n_head=2,
        block_size=16,
        batch_size=4,
        steps=6,
        lr=3e-3,
        warmup_steps=2,
        n=2,
        m=2,
        eval_every=3,
        eval_windows=4,
        probe_every=3,
        probe_windows=2,
    ),
    # the book's default: about a minute and a half on one CPU core (5 runs x 3 seeds)
    "small": ExperimentConfig(
        size="small",
        corpus="shakespeare-byte",
        d_model=64,
        n_layer=4,
        n_head=4,
        block_size=64,
        batch_size=8,
        steps=100,
        lr=3e-3,
        warmup_steps=10,
        tie_embeddings=False,  # tied, the byte model idles on a plateau for a random time
        eval_every=20,
        eval_windows=32,
        probe_every=20,
        probe_windows=4,
        connections=(*CONNECTIONS, "hc-n1"),
        seeds=(0, 1, 2),
    ),
    # 2 CPU cores, about 35 minutes (benchmarks/chapters_medium.py, two runs at a time): twice
    # the width and 1.5 times the depth of the small size, 24 times its tokens (1.2M per run,
    # about a quarter of a pass over Shakespeare), four seeds
    "medium": ExperimentConfig(
        size="medium",
        corpus="shakespeare-byte",
        d_model=128,
        n_layer=6,
        n_head=4,
        block_size=128,
        batch_size=16,
        steps=600,
        lr=2e-3,
        warmup_steps=40,
        tie_embeddings=False,  # as at the small size
        eval_every=100,
        eval_windows=64,
        probe_every=100,
        probe_windows=4,
        connections=(*CONNECTIONS, "hc-n1"),
        seeds=(0, 1, 2, 3),
    ),
    # one H100/H200, chapters 8-10 together in about three minutes
    # (benchmarks/chapters_gpu.py): 10.6M parameters in the blocks, 4.9M tokens per run (about
    # one pass over Shakespeare's 4.6M training bytes), every run three seeds; the estimate
    # of its time is that script's --dry-run
    "gpu": ExperimentConfig(
        size="gpu",
        corpus="shakespeare-byte",
        d_model=384,
        n_layer=6,
        n_head=6,
        block_size=256,
        batch_size=64,
        steps=300,
        lr=1.5e-3,
        warmup_steps=30,
        tie_embeddings=False,  # as at the small size
        eval_every=50,
        eval_windows=128,
        probe_every=100,
        probe_windows=8,
        connections=(*CONNECTIONS, "hc-n1"),
        seeds=(0, 1, 2),
    ),
    # one GPU: 50.4M parameters in the blocks (52.5M with a 4096-token output layer), 203M
    # tokens per run
    "full": ExperimentConfig(
        size="full",
        corpus="auto",
        d_model=512,
        n_layer=16,
        n_head=8,
        block_size=512,
        batch_size=64,
        steps=6200,
        lr=1e-3,
        warmup_steps=300,
        tie_embeddings=False,  # as at the small size
        eval_every=200,
        eval_windows=256,
        probe_every=250,
        probe_windows=8,
        connections=(*CONNECTIONS, "hc-n1"),
        seeds=(0, 1),
    ),
}


def experiment_config(size: str) -> ExperimentConfig:
    """The preset ``size`` of :data:`SIZES` (``"smoke"``, ``"small"``, ``"medium"``, ``"gpu"`` or
    ``"full"``)."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {tuple(SIZES)}, got {size!r}")
    return SIZES[size]


def pick_corpus(name: str, root: Path | str | None = None):
    """Load corpus ``name``; ``"auto"`` loads the first *built* corpus of :data:`AUTO_CORPORA`.

    ``"auto"`` builds nothing: the online corpora need ``datasets`` and a network
    (``python -m hclib.data build --corpus tinystories-bpe``); when none of the larger ones is
    built it falls back to the Shakespeare BPE corpus, building it if needed.
    """
    from hclib.data import CorpusCorruptError, CorpusMissingError, ensure_corpus, load_corpus

    if name != "auto":
        return ensure_corpus(name, root)
    for candidate in AUTO_CORPORA[:-1]:
        try:
            return load_corpus(candidate, root)
        except (CorpusMissingError, CorpusCorruptError):
            continue
    return ensure_corpus(AUTO_CORPORA[-1], root)


# ---------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------


class TrainedGPT(NamedTuple):
    """What :func:`train_gpt` returns: the run's record (JSON types) and the trained model."""

    record: dict[str, Any]
    model: GPT


def run_label(cfg: GPTConfig) -> str:
    """The name a figure or table gives a model's connection: ``"Pre-Norm"``, ``"HC n=4"``,
    ``"FC m=4"``, ``"mHC n=4"``.

    The names start with the keys of :data:`hclib.plotting.PALETTE`, so
    :func:`hclib.plotting.color` finds their colours.
    """
    return {
        "residual": "Pre-Norm",
        "hc": f"HC n={cfg.n}",
        "fc": f"FC m={cfg.m}",
        "mhc": f"mHC n={cfg.n}",
    }[cfg.connection]


def saved_activation_bytes(
    model: nn.Module, idx: torch.Tensor, targets: torch.Tensor | None
) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of one training forward.

    Every saved tensor is counted by its storage, once, whatever views of it are saved; the
    parameters (kept anyway) are not counted. This is the activation memory of the step, as
    HC Appendix B and mHC Section 4.3 count it, independent of the allocator and the device.
    Under autocast, the low-precision copies of the weights that the backward pass needs are
    counted too (they are memory the step holds).

    Args:
        model: called as ``model(idx, targets)``, returning ``(anything, loss)``
            (:class:`hclib.models.GPT`, :class:`hclib.training.GPTModule`).
        idx, targets: one batch, e.g. ``(B, T)`` token ids and next tokens.
    """
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _, loss = model(idx, targets)
    del loss
    return sum(storages.values())


def gpt_module(config: ExperimentConfig, connection: str, vocab_size: int):
    """The :class:`hclib.training.GPTModule` of run ``connection`` (a key of :data:`VARIANTS`):
    :meth:`ExperimentConfig.model_config`'s GPT with the experiment's optimiser settings.
    Seed first (``torch.manual_seed``) for the run's initial weights."""
    from hclib.training.module import GPTModule

    cfg = config.model_config(connection, vocab_size)
    model_fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    model_fields["moe_layers"] = list(model_fields.get("moe_layers") or [])
    return GPTModule(
        **model_fields,
        lr=config.lr,
        min_lr_ratio=config.min_lr_ratio,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        betas=config.betas,
    )


def train_gpt(
    config: ExperimentConfig,
    connection: str,
    seed: int,
    corpus: Any,
    *,
    device: str | torch.device | None = None,
    checkpoint: Path | str | None = None,
    checkpoint_every: int = 0,
    stop_at: float | None = None,
    progress: bool = False,
) -> TrainedGPT | None:
    """Train one GPT of ``config`` with connection ``connection`` from ``seed``, and measure it.

    The run is Lightning's (``pl.Trainer`` with :class:`hclib.training.GPTModule` and
    :class:`hclib.training.CorpusDataModule`, the trainer of ``python -m hclib.train``), plus
    the callbacks :class:`hclib.training.runs.RunRecord` (the measurements) and
    :class:`hclib.training.runs.StopAndResume` (checkpoints). What it computes is this loop,
    which chapter 9 writes out by hand and checks against this function::

        torch.manual_seed(seed); model = GPT(config.model_config(connection, vocab))
        AdamW(param_groups(model, weight_decay), lr, betas), LambdaLR(WarmupCosine(...))
        for step in range(steps):
            x, y = TrainWindows(train, T, B, seed).batch(step)      # (B, T) each
            loss = model(x, y); backward
            clip_grad_norm_(the optimizer's parameters, grad_clip); optimizer and schedule step

    Under one seed every connection starts from the same branch weights and sees the same
    batches, so differences between connections are paired. On CUDA the run is
    ``bf16-mixed``; on the CPU ``32-true``.

    Args:
        config: sizes and optimisation (:func:`experiment_config`).
        connection: a key of :data:`VARIANTS`: ``"residual"``, ``"hc"``, ``"fc"``, ``"mhc"``
            or ``"hc-n1"``.
        seed: seeds the initial weights and the order of the training windows.
        corpus: a :class:`hclib.data.Corpus` (its ``vocab_size``, ``train`` and ``val``).
        device: where to train (None: CUDA if available, else the CPU).
        checkpoint: a Lightning checkpoint file to resume from if it exists, and to save to
            every ``checkpoint_every`` steps and when stopped by ``stop_at``; deleted at the end.
        stop_at: a ``time.monotonic()`` deadline: past it, the run saves its checkpoint and
            returns None (run it again with the same arguments to continue, step for step).
        progress: print a line at every validation.

    Returns:
        :class:`TrainedGPT` ``(record, model)``, or None if stopped at ``stop_at``. The record
        holds ``connection`` (the run's name), ``kind`` (its connection), ``label``,
        ``seed``, the sizes (``params``: without the embedding, ``flops_per_token``,
        ``tokens``), per step ``train_loss`` and
        ``grad_norm`` (before clipping), ``val_step``/``val_loss``, per probe ``probe_step``
        and the per-layer lists ``gain_forward``, ``gain_backward``, ``composite_forward``,
        ``composite_backward``, ``cos_median`` (see :func:`hclib.training.probe_connections`),
        ``final`` (the last probe, with the connection matrix), ``tokens_per_s`` (training
        steps only, after the first few), ``activation_bytes_per_token``
        (:func:`saved_activation_bytes`), ``peak_memory_mib`` (CUDA only, else None),
        ``device``, ``trainer`` (``"lightning <version>"``) and ``seconds``.
    """
    import pytorch_lightning as pl  # the train extra

    from hclib.training.datamodule import CorpusDataModule
    from hclib.training.flops import device_name
    from hclib.training.runs import RunRecord, StopAndResume, quiet_lightning

    if connection not in VARIANTS:
        raise ValueError(f"connection must be one of {tuple(VARIANTS)}, got {connection!r}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(seed)
    module = gpt_module(config, connection, int(corpus.vocab_size))
    data = CorpusDataModule(
        corpus,
        block_size=config.block_size,
        batch_size=config.batch_size,
        val_batches=-(-config.eval_windows // config.batch_size),
        seed=seed,
    )
    cfg = module.cfg
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    resume = checkpoint is not None and checkpoint.exists()
    recorder = RunRecord(
        config.probe_every,
        config.probe_windows,
        untimed=min(5, config.steps // 4),  # first steps: allocation, kernel compilation
        label=f"{run_label(cfg)} seed {seed}",
        progress=progress,
    )
    callbacks = [recorder]
    if checkpoint is not None:
        stopper = StopAndResume(checkpoint, checkpoint_every, stop_at, val_every=config.eval_every)
        callbacks.append(stopper)
    if not resume:  # a resumed run's record, restored from the checkpoint, has it already
        module.to(device)
        x, y, _ = TrainWindows(corpus.train, config.block_size, config.batch_size, seed).batch(0)
        with _autocast(device):
            bytes_ = saved_activation_bytes(module.model, x.to(device), y.to(device))
        recorder.record["activation_bytes_per_token"] = bytes_ / x.numel()
        module.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with quiet_lightning():
        trainer = pl.Trainer(
            accelerator="gpu" if device.type == "cuda" else "cpu",
            devices=[device.index or 0] if device.type == "cuda" else 1,
            precision="bf16-mixed" if device.type == "cuda" else "32-true",
            max_steps=config.steps,
            val_check_interval=config.eval_every,
            check_val_every_n_epoch=None,
            num_sanity_val_steps=0,
            gradient_clip_val=config.grad_clip if config.grad_clip > 0 else None,
            gradient_clip_algorithm="norm",
            callbacks=callbacks,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=str(checkpoint.parent) if checkpoint is not None else None,
        )
        trainer.fit(module, data, ckpt_path=str(checkpoint) if resume else None)
    record = dict(recorder.record)
    seconds = recorder.seconds  # this call's and, after a resume, the earlier calls'
    if checkpoint is not None and stopper.stopped:  # the checkpoint holds the record and time
        return None
    timed = record.pop("timed_seconds")
    tokens = record.pop("timed_tokens")
    result = {
        "connection": connection,
        "kind": cfg.connection,
        "label": run_label(cfg),
        "seed": int(seed),
        "params": module.model.num_params(),
        "params_total": module.model.num_params(exclude_embedding=False),
        "flops_per_token": flops_per_token(module.model, config.block_size),
        "tokens": config.tokens,
        **record,
        "tokens_per_s": tokens / timed if timed else None,
        "peak_memory_mib": (
            torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        ),
        "device": device_name(device)
        or f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)",
        "trainer": f"lightning {pl.__version__}",
        "seconds": seconds,
    }
    if checkpoint is not None and checkpoint.exists():
        checkpoint.unlink()
    return TrainedGPT(result, module.model)


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


# ---------------------------------------------------------------------------------------------
# Every run, and the results folder
# ---------------------------------------------------------------------------------------------


def _run_file(folder: Path, connection: str, seed: int) -> Path:
    return folder / "runs" / f"{connection}-seed{seed}.json"


def run_experiments(
    config: ExperimentConfig,
    corpus: Any,
    *,
    connections: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    out: Path | str | None = None,
    keep_models: bool = False,
    device: str | torch.device | None = None,
    stop_at: float | None = None,
    checkpoint_every: int = 0,
    progress: bool = False,
) -> tuple[list[dict[str, Any]], dict[tuple[str, int], GPT]]:
    """Train every (connection, seed) of ``config``, seeds in the outer loop.

    Args:
        connections, seeds: override ``config.connections`` and ``config.seeds``.
        out: a results folder: each finished run is written to ``out/runs/<connection>-
            seed<k>.json`` and a run whose file exists is loaded instead of trained again;
            unfinished runs keep a checkpoint in ``out/checkpoints/``.
        keep_models: also return the trained models (runs loaded from ``out`` have none).
        stop_at: a ``time.monotonic()`` deadline; runs not finished by then are left for the
            next call (see :func:`train_gpt`).

    Returns:
        ``(records, models)``: the finished runs' records in order, and
        ``{(connection, seed): model}`` when ``keep_models``.
    """
    connections = list(connections or config.connections)
    seeds = [int(s) for s in (seeds if seeds is not None else config.seeds)]
    folder = Path(out) if out is not None else None
    records, models = [], {}
    for seed in seeds:
        for connection in connections:
            if folder is not None and _run_file(folder, connection, seed).exists():
                records.append(json.loads(_run_file(folder, connection, seed).read_text()))
                continue
            if stop_at is not None and time.monotonic() > stop_at:
                return records, models
            checkpoint = None
            if folder is not None:
                checkpoint = folder / "checkpoints" / f"{connection}-seed{seed}.ckpt"
            trained = train_gpt(
                config,
                connection,
                seed,
                corpus,
                device=device,
                checkpoint=checkpoint,
                checkpoint_every=checkpoint_every,
                stop_at=stop_at,
                progress=progress,
            )
            if trained is None:  # stopped at the deadline, checkpoint saved
                return records, models
            records.append(trained.record)
            if keep_models:
                models[(connection, seed)] = trained.model
            if folder is not None:
                path = _run_file(folder, connection, seed)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(trained.record) + "\n")
    return records, models


def corpus_settings(corpus: Any) -> dict[str, Any]:
    """What a results folder records about its corpus (a :class:`hclib.data.Corpus`): its
    ``corpus`` name, ``corpus_tokens`` per split and ``vocab_size``."""
    return {
        "corpus": corpus.name,
        "corpus_tokens": {"train": len(corpus.train), "val": len(corpus.val)},
        "vocab_size": int(corpus.vocab_size),
    }


def results_folder(root: Path | str, device_name: str, name: str, date: str | None = None) -> Path:
    """``<root>/<date>-<device slug>/<name>``, the layout of the committed GPU results."""
    return results_dir(device_name, root, date) / name


def write_results(
    folder: Path | str,
    config: ExperimentConfig,
    records: Sequence[dict[str, Any]],
    **settings: Any,
) -> Path:
    """Write a results folder: ``settings.json`` (the config and ``settings``), one
    ``runs/<connection>-seed<k>.json`` per record (if not there yet), ``summary.csv``
    (:func:`summary_rows`) and ``verdicts.md`` (:func:`judge_claims`)."""
    folder = Path(folder)
    (folder / "runs").mkdir(parents=True, exist_ok=True)
    for record in records:
        path = _run_file(folder, record["connection"], record["seed"])
        if not path.exists():
            path.write_text(json.dumps(record) + "\n")
    content = {"config": config.to_dict(), **settings}
    (folder / "settings.json").write_text(json.dumps(content, indent=1) + "\n")
    rows = summary_rows(records)
    if rows:
        with (folder / "summary.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    setting = settings.get("setting") or describe(config, settings.get("corpus"))
    table = markdown_table(judge_claims(records, setting=setting))
    (folder / "verdicts.md").write_text(table + "\n")
    return folder


def load_results(folder: Path | str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Read a folder of :func:`write_results`: ``(settings, records)``, records ordered by
    seed, then name in :data:`VARIANTS` order."""
    folder = Path(folder)
    settings_file = folder / "settings.json"
    if not settings_file.exists():
        raise FileNotFoundError(f"{folder} holds no settings.json: not a results folder")
    settings = json.loads(settings_file.read_text())
    records = [json.loads(p.read_text()) for p in sorted((folder / "runs").glob("*.json"))]
    order = {c: i for i, c in enumerate(VARIANTS)}
    records.sort(key=lambda r: (r["seed"], order.get(r["connection"], len(order))))
    return settings, records


def newest_results(
    root: Path | str, name: str, size: str | tuple[str, ...] = "full"
) -> Path | None:
    """The newest ``<root>/<date>-<device>/<name>/`` whose settings have this ``size`` (or one
    of these sizes; folders sort by their date prefix), or None."""
    sizes = (size,) if isinstance(size, str) else tuple(size)
    for settings_file in sorted(Path(root).glob(f"*/{name}/settings.json"), reverse=True):
        settings = json.loads(settings_file.read_text())
        if settings.get("config", {}).get("size") in sizes:
            return settings_file.parent
    return None


def describe(config: ExperimentConfig, corpus: str | None = None) -> str:
    """One line for "our setting": sizes, tokens, seeds."""
    tokens = config.tokens
    tokens_text = (
        f"{tokens / 1e6:.0f}M" if tokens >= 1e7 else f"{tokens / 1e6:.1f}M" if tokens >= 1e6
        else f"{tokens / 1e3:.0f}k" if tokens >= 1e4 else str(tokens)
    )  # fmt: skip
    return (
        f"GPT d={config.d_model}, {config.n_layer} blocks, T={config.block_size}, "
        f"{tokens_text} tokens, {corpus or config.corpus}"
    )


# ---------------------------------------------------------------------------------------------
# Measures and claims
# ---------------------------------------------------------------------------------------------


def lambda_contrast(matrix: Sequence | torch.Tensor) -> float:
    """How Lambda-shaped an unfolded connection matrix is (HC Section 4.5, Figure 6).

    HC's trained models weigh adjacent layers strongly (Post-Norm-like decay) and feed the
    output of the bottom layers to most later layers (Pre-Norm-like columns), with weaker
    weights in between. With ``C`` the matrix of :func:`hclib.connection_matrix` (the output
    row left out; an FC block matrix reduced to the weight of all of layer ``j``'s fractions),
    and means of ``|C[k, j]|`` over three regions:

    * adjacent: ``j = k - 1``;
    * early: sources ``j < 2`` (the embedding and the first layer), ``k - j >= 2``;
    * far: sources ``j >= 2``, ``k - j >= 2``,

    the contrast is ``min(adjacent, early) / far - 1``: 0 for Pre-Norm (all ones), above 0
    when both arms of the Lambda stand out from the middle, -1 when an arm is missing (a
    Post-Norm chain has no early column).
    """
    C = torch.as_tensor(matrix, dtype=torch.float64)
    if C.dim() == 4:  # FC blocks: weight of all of layer j's fractions, per fraction of k
        C = C.sum(dim=-1).mean(dim=-1)
    if C.dim() != 2 or C.shape[0] != C.shape[1] or C.shape[0] < 6:
        raise ValueError(f"need a square matrix of at least 4 layers, got {tuple(C.shape)}")
    A = C[:-1].abs()  # rows 0 .. L (the output row L + 1 left out)
    k, j = torch.meshgrid(torch.arange(A.shape[0]), torch.arange(A.shape[1]), indexing="ij")
    adjacent = A[(j == k - 1) & (k >= 1)].mean()
    early = A[(j < 2) & (k - j >= 2)].mean()
    far = A[(j >= 2) & (k - j >= 2)].mean()
    low = float(torch.minimum(adjacent, early))
    if far == 0:  # nothing in the middle: a Lambda if both arms are there, else none
        return math.inf if low > 0 else -1.0
    return low / float(far) - 1


def _similarity(record: dict[str, Any]) -> float:
    cos = record["final"]["cos_median"]  # (L - 1,) pairs of layers
    return float(np.mean(cos[len(cos) // 2 :]))


def _max_composite_gain(record: dict[str, Any]) -> float:
    gains = np.array(record["composite_forward"] + record["composite_backward"], dtype=float)
    return float(gains.max())


def _log_gain(record: dict[str, Any]) -> float:
    # gains multiply through depth: compare them in orders of magnitude (mHC: 3000 vs 1.6)
    return math.log10(_max_composite_gain(record))


def _grad_norm_peak(record: dict[str, Any]) -> float:
    norms = np.asarray(record["grad_norm"], dtype=float)
    skip = max(1, len(norms) // 10)  # the first tenth: warmup, where norms fall fast
    after = norms[skip:] if len(norms) > skip else norms
    return float(after.max() / np.median(after))


def _final_val_loss(record: dict[str, Any]) -> float:
    return float(record["val_loss"][-1])


def _lambda(record: dict[str, Any]) -> float:
    return lambda_contrast(record["final"]["matrix"])


#: scalar measures of one run, by name: (description, function of the record)
METRICS: dict[str, tuple[str, Callable[[dict[str, Any]], float]]] = {
    "val_loss": ("final validation loss (nats)", _final_val_loss),
    "similarity": ("adjacent-layer similarity, deeper half", _similarity),
    "lambda": ("Λ contrast of the connection matrix", _lambda),
    "max_gain": ("largest composite Amax gain over training", _max_composite_gain),
    "log_gain": ("log10 of the largest composite Amax gain over training", _log_gain),
    "grad_peak": ("largest gradient norm / median, after the first tenth", _grad_norm_peak),
}


def run_metric(record: dict[str, Any], metric: str) -> float:
    """The scalar ``metric`` (a key of :data:`METRICS`) of one run's record."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {tuple(METRICS)}, got {metric!r}")
    return METRICS[metric][1](record)


def per_seed(records: Iterable[dict[str, Any]], connection: str, metric: str) -> dict[int, float]:
    """``{seed: value}`` of ``metric`` for the runs of ``connection``."""
    return {r["seed"]: run_metric(r, metric) for r in records if r["connection"] == connection}


class Claim(NamedTuple):
    """One of the papers' claims, as a comparison of ``metric`` between two connections."""

    claim: str  #: what the paper says, in words
    paper: str  #: paper, table or figure, and its number
    metric: str  #: a key of METRICS
    a: str  #: the connection the claim is about
    b: str  #: the one it is compared with
    kind: str  #: one of hclib.stats.CLAIMS, about a minus b
    margin: float | None = None  #: equivalence margin of "not lower"/"not higher" claims


#: The equivalence margin of the GPT's "no better" and "no worse" loss claims, in nats, fixed
#: before any run: a loss difference smaller than this counts as none. It is about 0.4% of the
#: small GPT's loss (about 2.6 nats per byte after 100 steps), a third of HC Table 1's
#: relative gain of DHC×4 over the baseline (1.1%) at that loss.
LOSS_MARGIN = 0.01


GPT_CLAIMS: tuple[Claim, ...] = (
    Claim("HC beats the Pre-Norm residual", "HC Table 1: DHC×4 2.781 vs 2.811 (OLMo-1B, 500B)",
          "val_loss", "hc", "residual", "lower"),
    Claim("FC beats the Pre-Norm residual", "FC Fig. 4: DFC×4 −0.014 (OLMoE-1.3B)",
          "val_loss", "fc", "residual", "lower"),
    Claim("HC with n = 1 is no better than Pre-Norm", "HC Table 1: DHC×1 2.819 vs 2.811",
          "val_loss", "hc-n1", "residual", "not lower", LOSS_MARGIN),
    Claim("HC with n = 4 beats HC with n = 1", "HC Table 1: DHC×4 2.781 vs DHC×1 2.819",
          "val_loss", "hc", "hc-n1", "lower"),
    Claim("mHC beats the Pre-Norm residual", "mHC Fig. 5: −0.021 final loss (27B)",
          "val_loss", "mhc", "residual", "lower"),
    Claim("mHC is no worse than HC", "mHC Table 4: mHC ≥ HC on 7 of 8 benchmarks (27B)",
          "val_loss", "mhc", "hc", "not higher", LOSS_MARGIN),
    Claim("HC makes adjacent layers' inputs less alike", "HC Fig. 3 (OLMo-1B, n = 4)",
          "similarity", "hc", "residual", "lower"),
    Claim("FC makes adjacent layers' inputs less alike", "FC Fig. 2 (OLMoE-7B, m = 4)",
          "similarity", "fc", "residual", "lower"),
    Claim("HC lowers the similarity more than FC", "FC Fig. 2: HC < FC < Pre-Norm",
          "similarity", "hc", "fc", "lower"),
    Claim("HC learns a Λ-shaped connection matrix", "HC Fig. 6 (OLMo-1B-DHC×4)",
          "lambda", "hc", "residual", "higher"),
    Claim("HC's composite gain grows, mHC's stays near 1", "mHC Fig. 7: ≈3000 vs ≈1.6 (27B)",
          "log_gain", "hc", "mhc", "higher"),
    Claim("HC's gradient norm spikes, mHC's does not", "mHC Fig. 2, 5 (27B)",
          "grad_peak", "hc", "mhc", "higher"),
)  # fmt: skip


def _fmt(value: float) -> str:
    return f"{value:.3f}" if abs(value) >= 0.01 or value == 0 else f"{value:.2e}"


def judge_claims(
    records: Sequence[dict[str, Any]],
    claims: Sequence[Claim] = GPT_CLAIMS,
    setting: str = "",
    confidence: float = 0.95,
) -> list[dict[str, str]]:
    """One row per claim: claim, paper and figure, our setting, our number, verdict.

    The two sides are paired by seed (only seeds both have count); the verdict is
    :func:`hclib.stats.compare_seeds`'s (one of :data:`hclib.stats.VERDICTS`), or
    :data:`NOT_MEASURED` when fewer than two seeds pair up. "Our number" gives both means and
    the mean paired difference with its interval at ``confidence`` (95% by default; a
    family's Bonferroni level, :func:`hclib.stats.multiplicity`, judges the table as a whole);
    a claim with a margin says it in "our setting".
    """
    rows = []
    for c in claims:
        a, b = per_seed(records, c.a, c.metric), per_seed(records, c.b, c.metric)
        seeds = sorted(set(a) & set(b))
        name_a, name_b = _short_label(c.a, records), _short_label(c.b, records)
        our_setting = f"{METRICS[c.metric][0]}; {setting}".strip("; ")
        if c.margin is not None:
            our_setting += f"; equivalence margin {c.margin:g}"
        if len(seeds) < 2:
            number = f"{name_a} vs {name_b}: " + (
                f"{_fmt(a[seeds[0]])} vs {_fmt(b[seeds[0]])}, 1 seed" if seeds else "not run"
            )
            verdict = NOT_MEASURED
        else:
            va, vb = [a[s] for s in seeds], [b[s] for s in seeds]
            result = compare_seeds(va, vb, claim=c.kind, margin=c.margin, confidence=confidence)
            number = (
                f"{name_a} {_fmt(np.mean(va))} vs {name_b} {_fmt(np.mean(vb))}: "
                f"{result.mean:+.3g} [{result.low:+.3g}, {result.high:+.3g}], {len(seeds)} seeds"
            )
            verdict = result.verdict
        rows.append(
            {
                "claim": c.claim,
                "paper and figure": c.paper,
                "our setting": our_setting,
                "our number": number,
                "verdict": verdict,
            }
        )
    return rows


def verdict_records(rows: Sequence[dict[str, str]], chapter: str) -> list[VerdictRecord]:
    """The :class:`hclib.stats.VerdictRecord` of every measured row of :func:`judge_claims`
    (rows with :data:`NOT_MEASURED` are left out: they have no verdict)."""
    measured = [row for row in rows if row["verdict"] != NOT_MEASURED]
    # the seeds are the last words of the number: "..., 3 seeds"
    return records_from_rows(
        measured, chapter, lambda row: int(row["our number"].rsplit(", ", 1)[1].split()[0])
    )


def _short_label(connection: str, records: Sequence[dict[str, Any]]) -> str:
    for r in records:
        if r["connection"] == connection:
            return r["label"]
    return {"residual": "Pre-Norm", "hc": "HC", "fc": "FC", "mhc": "mHC", "hc-n1": "HC n=1"}.get(
        connection, connection
    )


def summary_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per run for ``summary.csv``: final losses, cost and the claims' measures."""
    rows = []
    for r in records:
        rows.append(
            {
                "connection": r["connection"],
                "label": r["label"],
                "seed": r["seed"],
                "params": r["params"],
                "tokens": r["tokens"],
                "final_train_loss": float(np.mean(r["train_loss"][-10:])),
                "final_val_loss": r["val_loss"][-1],
                "similarity": run_metric(r, "similarity"),
                "lambda_contrast": run_metric(r, "lambda"),
                "max_composite_gain": run_metric(r, "max_gain"),
                "grad_norm_peak": run_metric(r, "grad_peak"),
                "tokens_per_s": r["tokens_per_s"],
                "activation_bytes_per_token": r["activation_bytes_per_token"],
                "peak_memory_mib": r["peak_memory_mib"],
                "device": r["device"],
                "seconds": round(r["seconds"], 1),
            }
        )
    return rows


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def _by_label(records: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(r["label"], []).append(r)
    return groups


def _line_style(label: str) -> str:
    return "--" if label.endswith("n=1") else "-"  # the one-stream control: dashed


def plot_val_curves(ax, records: Sequence[dict[str, Any]], tokens_per_step: int) -> None:
    """Validation loss against training tokens: per connection the mean over seeds (line)
    and the range from the lowest to the highest seed (band), in the book's colours."""
    from hclib.plotting import color

    for label, runs in _by_label(records).items():
        steps = np.array(runs[0]["val_step"])
        losses = np.array([r["val_loss"] for r in runs if r["val_step"] == runs[0]["val_step"]])
        x = steps * tokens_per_step
        c, ls = color(label), _line_style(label)
        mean = losses.mean(axis=0)
        ax.plot(x, mean, color=c, ls=ls, lw=1.6, label=f"{label} ({len(losses)} seeds)")
        if len(losses) > 1:
            ax.fill_between(x, losses.min(axis=0), losses.max(axis=0), color=c, alpha=0.2, lw=0)
    ax.set_xlabel("training tokens")
    ax.set_ylabel("validation loss (nats per token)")


def plot_gain_curves(
    ax, records: Sequence[dict[str, Any]], connections: Sequence[str] = ("hc", "mhc")
) -> None:
    """The largest composite Amax gain over layers (forward and backward) against the
    training step, one line per run of ``connections`` (mHC Figure 7's measure)."""
    from hclib.plotting import color

    styles = ("-", "--", ":", "-.")
    for r in records:
        if r["connection"] not in connections:
            continue
        gains = np.maximum(
            np.array(r["composite_forward"]).max(axis=1),
            np.array(r["composite_backward"]).max(axis=1),
        )
        ax.plot(
            r["probe_step"],
            gains,
            color=color(r["label"]),
            ls=styles[r["seed"] % len(styles)],
            label=f"{r['label']}, seed {r['seed']}",
        )
    ax.axhline(1.0, color="#999999", lw=0.8)
    ax.set_xlabel("training step")
    ax.set_ylabel("largest composite Amax gain")
