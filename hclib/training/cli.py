"""``python -m hclib.train``: LightningCLI over :class:`GPTModule` and :class:`CorpusDataModule`.

Usage::

    python -m hclib.train fit --config configs/gpt-tiny.yaml
    python -m hclib.train fit --config configs/gpt-tiny.yaml --model.connection hc --model.n 4
    python -m hclib.train fit --config configs/gpt-tiny.yaml --ckpt_path <run>/checkpoints/last.ckpt
    python -m hclib.train fit --help          # every key, with its meaning and default

Besides Lightning's own keys (``trainer.*``, ``seed_everything``, ``ckpt_path``), the CLI
adds four always-on callbacks with their own sections: ``throughput``
(:class:`Throughput`), ``nan_guard`` (:class:`NonFiniteLossGuard`), ``diagnostics``
(:class:`ConnectionDiagnostics`) and ``checkpoint`` (Lightning's ``ModelCheckpoint``). Two
values are linked rather than set: ``model.block_size`` is ``data.block_size`` and
``model.vocab_size`` is the corpus's vocabulary. A key that does not exist, or a value of
the wrong type, stops the run before anything is built, naming the key.
"""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from hclib.training.callbacks import ConnectionDiagnostics, NonFiniteLossGuard, Throughput
from hclib.training.datamodule import CorpusDataModule
from hclib.training.module import GPTModule

__all__ = ["TrainCLI", "align_logger_versions", "main"]


class TrainCLI(LightningCLI):
    """LightningCLI with the links and always-on callbacks of the module docstring."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.block_size", "model.block_size")
        parser.link_arguments("data.vocab_size", "model.vocab_size", apply_on="instantiate")
        parser.add_lightning_class_args(Throughput, "throughput")
        parser.add_lightning_class_args(NonFiniteLossGuard, "nan_guard")
        parser.add_lightning_class_args(ConnectionDiagnostics, "diagnostics")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")

    def before_fit(self) -> None:
        align_logger_versions(self.trainer)


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


def main(args: list[str] | None = None, run: bool = True) -> TrainCLI:
    """Run the CLI on ``args`` (None: ``sys.argv[1:]``); returns it (``cli.trainer``,
    ``cli.model``, ``cli.datamodule``). With ``run=False`` the arguments are parsed and the
    objects built, but nothing is trained (then ``args`` holds no subcommand)."""
    return TrainCLI(
        GPTModule,
        CorpusDataModule,
        args=args,
        run=run,
        auto_configure_optimizers=False,  # the module's AdamW + schedule is the one way
        save_config_kwargs={"overwrite": True},
    )
