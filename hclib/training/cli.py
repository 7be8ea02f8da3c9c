"""``python -m hclib.train``: LightningCLI over :class:`GPTModule` and :class:`CorpusDataModule`.

Usage::

    python -m hclib.train fit --config configs/gpt-tiny.yaml
    python -m hclib.train fit --config configs/gpt-tiny.yaml --model.connection hc --model.n 4
    python -m hclib.train fit --config configs/gpt-tiny.yaml --ckpt_path <run>/checkpoints/last.ckpt
    python -m hclib.train fit --help          # every key, with its meaning and default

    python -m hclib.train fit --config <recipe> --model.init_from <ckpt> --model.lr 1e-4
    python -m hclib.train test --config configs/gpt-tiny.yaml --ckpt_path <ckpt>   # val split
    python -m hclib.train convert-checkpoint <sharded folder> <out.ckpt>

Besides Lightning's own keys (``trainer.*``, ``seed_everything``, ``ckpt_path``), the CLI
adds five always-on callbacks with their own sections: ``throughput``
(:class:`Throughput`), ``nan_guard`` (:class:`NonFiniteLossGuard`), ``diagnostics``
(:class:`ConnectionDiagnostics`), ``preemption`` (:class:`Preemption`: SIGTERM saves a
checkpoint and exits non-zero) and ``checkpoint`` (Lightning's ``ModelCheckpoint``). Two
values are linked rather than set: ``model.block_size`` is ``data.block_size`` and
``model.vocab_size`` is the corpus's vocabulary. A key that does not exist, or a value of
the wrong type, stops the run before anything is built, naming the key.

Runs: ``run_name`` (default ``<recipe>-<connection>``, e.g. ``gpt-tiny-hc``) is the folder
of every logger under its ``save_dir`` and of ``trainer.default_root_dir``, so a run writes
into ``runs/gpt-tiny-hc/version_N/`` (``slurm-<job id>[-requeue<k>]`` under SLURM). A run that fails
before its first step removes the folder it made.

Resuming (``--ckpt_path``) continues the checkpoint's run: a ``--model.*`` or ``--data.*``
value that differs from the checkpoint's stops with an error naming it
(:func:`hclib.training.checkpoints.check_resume`); ``--model.init_from`` starts a new run
from a checkpoint's weights instead.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from hclib.training.callbacks import (
    ConnectionDiagnostics,
    NonFiniteLossGuard,
    Preemption,
    Throughput,
)
from hclib.training.checkpoints import check_resume, convert_checkpoint, read_checkpoint
from hclib.training.datamodule import CorpusDataModule
from hclib.training.module import GPTModule

__all__ = ["TrainCLI", "align_logger_versions", "main", "name_run"]


class TrainCLI(LightningCLI):
    """LightningCLI with the links, run names, resume checks and always-on callbacks of the
    module docstring."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """``fit``, ``validate`` and ``test`` (the validation split); no ``predict``."""
        commands = LightningCLI.subcommands()
        return {k: v for k, v in commands.items() if k in ("fit", "validate", "test")}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.block_size", "model.block_size")
        parser.link_arguments("data.vocab_size", "model.vocab_size", apply_on="instantiate")
        parser.add_argument(
            "--run_name",
            type=str | None,
            default=None,
            help=(
                "the run's folder under each logger's save_dir, for every logger, and under "
                "trainer.default_root_dir (hpc checkpoints); None: <recipe>-<connection>, "
                "e.g. gpt-tiny-hc"
            ),
        )
        parser.add_lightning_class_args(Throughput, "throughput")
        parser.add_lightning_class_args(NonFiniteLossGuard, "nan_guard")
        parser.add_lightning_class_args(ConnectionDiagnostics, "diagnostics")
        parser.add_lightning_class_args(Preemption, "preemption")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        name_run(config)

    def _parse_ckpt_path(self) -> None:
        """``fit --ckpt_path``: stop when ``model.*`` or ``data.*`` differ from the checkpoint
        (:func:`check_resume`), before anything is built. Lightning would instead replace
        the model's settings with the checkpoint's, silently; ``validate`` and ``test`` keep
        that (they evaluate the checkpoint's model, whatever the recipe says)."""
        subcommand = self.config.get("subcommand")
        if subcommand != "fit":
            return super()._parse_ckpt_path()
        config = self.config[subcommand]
        ckpt_path = config.get("ckpt_path")
        if not ckpt_path or not Path(ckpt_path).exists():
            return None
        current = {"model": _as_dict(config.model), "data": _as_dict(config.data)}
        check_resume(read_checkpoint(ckpt_path, weights=False), current, str(ckpt_path))
        return None

    def before_fit(self) -> None:
        align_logger_versions(self.trainer)
        self._new_folders = _new_log_dirs(self.trainer)

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except Exception:
            # a run that failed before its first step leaves no empty version_N behind
            if subcommand == "fit" and self.trainer.global_step == 0:
                _remove(getattr(self, "_new_folders", []), self.trainer)
            raise


def _as_dict(section) -> dict:
    values = section.as_dict() if hasattr(section, "as_dict") else dict(section)
    return values.get("init_args", values) if "class_path" in values else values


def _recipe_name(config) -> str:
    """The stem of the first ``--config`` file (``gpt-tiny``), or ``gpt``."""
    files = config.get("config") or []
    for item in files:
        path = getattr(item, "relative", None) or getattr(item, "absolute", None) or str(item)
        return Path(str(path)).stem
    return "gpt"


def name_run(config) -> None:
    """Name the run's folders: every logger's, and ``default_root_dir``'s.

    The name is ``run_name`` when given, which then applies to every logger; otherwise
    ``<recipe>-<connection>`` (``gpt-tiny-hc``), given to each logger whose own ``name``
    is not set (a name set on the command line or in a file is kept). ``default_root_dir``
    becomes ``<default_root_dir>/<name>``: where a run without a logger writes and where a
    requeued SLURM job's ``hpc_ckpt_<k>.ckpt`` waits. Under SLURM a logger without a
    version gets :func:`slurm_version`: ``slurm-<job id>``, ``slurm-<job id>-requeue1``, ...
    """
    given = config.get("run_name")
    name = given or f"{_recipe_name(config)}-{config.model.connection}"
    config.run_name = name
    trainer = config.trainer
    root = Path(trainer.default_root_dir or "runs")
    trainer.default_root_dir = str(root / name)
    loggers = trainer.logger
    if isinstance(loggers, (list, tuple)):
        items = list(loggers)
    elif loggers is None or isinstance(loggers, bool):
        items = []
    else:
        items = [loggers]
    job = os.environ.get("SLURM_JOB_ID")
    for item in items:
        init_args = getattr(item, "init_args", None)
        if init_args is None or "name" not in init_args:
            continue
        if given or init_args.get("name") in _UNSET_NAMES:
            init_args.name = name
        if job and "version" in init_args and init_args.get("version") is None:
            init_args.version = slurm_version(job, os.environ.get("SLURM_RESTART_COUNT"))


_UNSET_NAMES = (None, "", "lightning_logs")  # Lightning's loggers' default names


def slurm_version(job: str, restarts: str | None = None) -> str:
    """The log folder of a SLURM job: ``slurm-<job id>``, then ``slurm-<job id>-requeue<k>``
    after the k-th requeue (SLURM's ``SLURM_RESTART_COUNT``): one folder per start, next to
    each other, each with its own ``metrics.csv`` (Lightning's CSV logger would empty an
    existing one)."""
    count = int(restarts or 0)
    return f"slurm-{job}" if count == 0 else f"slurm-{job}-requeue{count}"


def _new_log_dirs(trainer: pl.Trainer) -> list[Path]:
    """The loggers' folders (``save_dir/name/version``, then ``save_dir/name``) that do not
    exist yet, deepest first."""
    folders = []
    for logger in trainer.loggers:
        path = getattr(logger, "log_dir", None)
        if not path:
            continue
        for folder in (Path(path), Path(path).parent):
            if not folder.exists() and folder not in folders:
                folders.append(folder)
    return sorted(folders, key=lambda f: len(f.parts), reverse=True)


def _remove(folders: list[Path], trainer: pl.Trainer) -> None:
    """Remove the folders a failed run made, unless they hold a checkpoint."""
    if not trainer.is_global_zero:
        return
    for folder in folders:
        if folder.is_dir() and not any(folder.rglob("*.ckpt")):
            shutil.rmtree(folder, ignore_errors=True)


def align_logger_versions(trainer: pl.Trainer) -> None:
    """Give loggers that share a folder (``save_dir/name``) the first one's version.

    Each logger otherwise picks the next free ``version_N`` by itself, and a TensorBoard and
    a CSV logger of one run land in ``version_0`` and ``version_1``.
    """
    first: dict[tuple[str, str], int | str] = {}
    for logger in trainer.loggers:
        if not hasattr(logger, "_version") or logger.save_dir is None:
            continue
        key = (str(logger.save_dir), str(logger.name))
        if key in first:
            logger._version = first[key]
        else:
            first[key] = logger.version


def main(args: list[str] | None = None, run: bool = True) -> TrainCLI | None:
    """Run the CLI on ``args`` (None: ``sys.argv[1:]``); returns it (``cli.trainer``,
    ``cli.model``, ``cli.datamodule``). With ``run=False`` the arguments are parsed and the
    objects built, but nothing is trained (then ``args`` holds no subcommand).

    ``convert-checkpoint FOLDER OUT.ckpt`` writes a sharded checkpoint folder as one file
    (:func:`hclib.training.checkpoints.convert_checkpoint`) and returns None.
    """
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] == ["convert-checkpoint"]:
        convert_main(argv[1:])
        return None
    return TrainCLI(
        GPTModule,
        CorpusDataModule,
        args=args,
        run=run,
        auto_configure_optimizers=False,  # the module's AdamW + schedule is the one way
        save_config_kwargs={"overwrite": True},
    )


def convert_main(argv: list[str]) -> None:
    """``python -m hclib.train convert-checkpoint FOLDER OUT.ckpt``."""
    parser = argparse.ArgumentParser(
        prog="python -m hclib.train convert-checkpoint",
        description=(
            "Write a sharded checkpoint folder (configs/fsdp.yaml) as one .ckpt file that "
            "GPTModule.load_from_checkpoint reads on any machine (weights and metadata, no "
            "optimizer state)."
        ),
    )
    parser.add_argument("folder", type=Path, help="the sharded checkpoint, e.g. step=001000.ckpt/")
    parser.add_argument("output", type=Path, help="the single file to write")
    ns = parser.parse_args(argv)
    out = convert_checkpoint(ns.folder, ns.output)
    print(f"wrote {out}")
