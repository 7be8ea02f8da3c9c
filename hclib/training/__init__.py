"""Training the book's GPTs with PyTorch Lightning (chapters 9-10).

* :class:`GPTModule`: the GPT as a LightningModule, one switch for the connection;
* :class:`CorpusDataModule`: windows of a corpus, in an order fixed by (seed, step);
* :class:`Throughput`, :class:`NonFiniteLossGuard`, :class:`ConnectionDiagnostics`,
  :class:`Preemption`: callbacks; :class:`RunRecord` and :class:`StopAndResume`: what the
  book's experiments keep of a run, and their checkpoints (:mod:`hclib.training.runs`);
* :func:`shard_gpt`: FSDP2 sharding under ``configs/fsdp.yaml``; :func:`read_checkpoint`,
  :func:`load_weights`, :func:`convert_checkpoint`: checkpoint files and sharded folders;
* :class:`WarmupCosine`: the learning-rate schedule; :func:`flops_per_token`, :func:`peak_flops`;
* ``python -m hclib.train fit --config configs/gpt-tiny.yaml``: the command line
  (:mod:`hclib.training.cli`).
"""

# ruff: noqa: E402  (the imports follow the check for the train extra)
from hclib.extras import require

require("pytorch_lightning", "train", "hclib.training")  # a clear error without the extra

from hclib.training.callbacks import (
    ConnectionDiagnostics,
    NonFiniteLossGuard,
    Preemption,
    Throughput,
    probe_connections,
)
from hclib.training.checkpoints import convert_checkpoint, load_weights, read_checkpoint
from hclib.training.datamodule import CorpusDataModule, TrainWindows, ValWindows
from hclib.training.flops import flops_per_token, peak_flops
from hclib.training.module import GPTModule
from hclib.training.runs import RunRecord, StopAndResume
from hclib.training.schedule import WarmupCosine
from hclib.training.sharding import shard_gpt

__all__ = [
    "ConnectionDiagnostics",
    "CorpusDataModule",
    "GPTModule",
    "NonFiniteLossGuard",
    "Preemption",
    "RunRecord",
    "StopAndResume",
    "Throughput",
    "TrainWindows",
    "ValWindows",
    "WarmupCosine",
    "convert_checkpoint",
    "flops_per_token",
    "load_weights",
    "peak_flops",
    "probe_connections",
    "read_checkpoint",
    "shard_gpt",
]
