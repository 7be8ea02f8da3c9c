"""One measured run under Lightning: the callbacks behind the book's experiments.

Chapter 9's experiments (:func:`hclib.experiments.train_gpt`) train every run with the same
``pl.Trainer`` as ``python -m hclib.train``; these two callbacks add what a reproduction
needs and a plain log does not keep:

* :class:`RunRecord`: the training loss and gradient norm of every step, the validation loss
  of every validation, the connections' probes over training
  (:func:`hclib.training.probe_connections`) and the time of the training steps, in a dict of
  JSON types that travels inside the run's checkpoint;
* :class:`StopAndResume`: a checkpoint every ``every`` steps, and at a deadline a last one
  and a clean stop; ``trainer.fit(..., ckpt_path=that file)`` continues the run step for step;
* :func:`quiet_lightning`: Lightning without its start-up lines and advice, for runs inside
  a script or a notebook cell.

Used in: notebooks/09_small_gpt (through hclib.experiments), benchmarks/chapters_medium.py.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from hclib.training.callbacks import probe_connections

__all__ = ["PROBE_CURVES", "RunRecord", "StopAndResume", "quiet_lightning"]

#: the per-layer probe values :class:`RunRecord` keeps at every probe
PROBE_CURVES = (
    "gain_forward",
    "gain_backward",
    "composite_forward",
    "composite_backward",
    "cos_median",
)


def _optimizer_parameters(trainer: pl.Trainer) -> list[torch.Tensor]:
    """The parameters in the optimizer's order: the order Lightning clips them in."""
    return [p for group in trainer.optimizers[0].param_groups for p in group["params"]]


class RunRecord(pl.Callback):
    """Keep a run's measurements, step by step, as JSON types.

    ``record`` holds ``train_loss`` and ``grad_norm`` (the global norm before clipping, over
    the optimizer's parameters in their order) of every optimizer step; ``val_step`` and
    ``val_loss`` at every validation (``val/loss``); ``probe_step`` and the lists of
    :data:`PROBE_CURVES` at step 0, every ``probe_every`` steps and at the last step, on the
    first ``probe_windows`` validation windows; ``final``, the last probe whole (with the
    connection matrix); ``timed_tokens`` and ``timed_seconds``, the training steps' tokens and
    wall time after the first ``untimed`` steps (allocation, compilation). Its state is saved in
    Lightning's checkpoints, so a resumed run continues the same record.

    Args:
        probe_every: steps between probes (``>= 1``).
        probe_windows: validation windows in the probe batch (the same batch at every probe).
        untimed: first steps left out of the timing.
        label: the run's name in progress lines.
        progress: print a line at every validation (to stderr).

    Raises:
        FloatingPointError: when the training loss is not finite (the step is named).
    """

    def __init__(
        self,
        probe_every: int,
        probe_windows: int = 4,
        untimed: int = 5,
        label: str = "run",
        progress: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (("probe_every", probe_every), ("probe_windows", probe_windows)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.probe_every, self.probe_windows = probe_every, probe_windows
        self.untimed, self.label, self.progress = int(untimed), label, bool(progress)
        self.record: dict[str, Any] = {
            "train_loss": [],
            "grad_norm": [],
            "val_step": [],
            "val_loss": [],
            "probe_step": [],
            **{key: [] for key in PROBE_CURVES},
            "timed_tokens": 0,
            "timed_seconds": 0.0,
        }
        self._probe: torch.Tensor | None = None
        self._norm = math.nan
        self._tick = 0.0
        self._start = time.perf_counter()
        self._carried = 0.0  # seconds of the calls before a resume

    @property
    def seconds(self) -> float:
        """Wall time of the run since this callback was made, plus that of the calls before
        a resume (kept in the checkpoint)."""
        return self._carried + time.perf_counter() - self._start

    # the probe ----------------------------------------------------------------------------

    def probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        """:func:`probe_connections` on the probe batch, as lists."""
        if self._probe is None:
            data = trainer.datamodule.val_dataset
            count = min(self.probe_windows, len(data))
            self._probe = torch.stack([data[j][0] for j in range(count)])  # (B, T)
        result = probe_connections(pl_module.model, self._probe.to(pl_module.device))
        return {k: v.tolist() for k, v in result.items()}

    def _add_probe(self, step: int, result: dict[str, Any]) -> None:
        self.record["probe_step"].append(step)
        for key in PROBE_CURVES:
            self.record[key].append(result[key])

    # the hooks ----------------------------------------------------------------------------

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step == 0 and not self.record["probe_step"]:
            self._add_probe(0, self.probe(trainer, pl_module))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._tick = time.perf_counter()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = [p.grad for p in _optimizer_parameters(trainer) if p.grad is not None]
        self._norm = float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        value = float(loss)  # waits for the device: the step's time ends here
        step = trainer.global_step  # steps done, this one included
        if step > self.untimed:
            self.record["timed_seconds"] += time.perf_counter() - self._tick
            self.record["timed_tokens"] += batch[0].numel() * trainer.world_size
        if not math.isfinite(value):
            raise FloatingPointError(
                f"{self.label}: the training loss became {value} at step {step - 1}"
            )
        self.record["train_loss"].append(value)
        self.record["grad_norm"].append(self._norm)
        if step % self.probe_every == 0 or step == trainer.max_steps:
            result = self.probe(trainer, pl_module)
            self._add_probe(step, result)
            if step == trainer.max_steps:
                self.record["final"] = result

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or "val/loss" not in trainer.callback_metrics:
            return
        step = trainer.global_step
        if self.record["val_step"] and self.record["val_step"][-1] == step:
            return  # validated again at the same step (a resumed run)
        self.record["val_step"].append(step)
        self.record["val_loss"].append(float(trainer.callback_metrics["val/loss"]))
        if self.progress:
            print(
                f"{self.label}: step {step}/{trainer.max_steps}, "
                f"val loss {self.record['val_loss'][-1]:.4f}",
                file=sys.stderr,
                flush=True,
            )

    def state_dict(self) -> dict[str, Any]:
        return {"record": self.record, "seconds": self.seconds}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.record = state_dict["record"]
        self._carried = float(state_dict.get("seconds", 0.0))
        self._start = time.perf_counter()


class StopAndResume(pl.Callback):
    """Save a checkpoint every ``every`` steps and stop cleanly at a deadline.

    The checkpoint is one file, ``path``, replaced at each save (written beside it, then
    renamed). Saves happen after a training step that is not a validation step
    (``val_every``), so that a resumed run validates exactly where the uninterrupted one did.
    At the deadline (a ``time.monotonic()`` value) the run saves and sets
    ``trainer.should_stop``; ``stopped`` then is true, and ``trainer.fit(..., ckpt_path=path)``
    continues from there.

    Args:
        path: the checkpoint file.
        every: steps between saves (0: only at the deadline).
        stop_at: the deadline, or None.
        val_every: the trainer's validation period in steps (0: no validation).
    """

    def __init__(
        self, path: str | Path, every: int = 0, stop_at: float | None = None, val_every: int = 0
    ) -> None:
        super().__init__()
        for name, value in (("every", every), ("val_every", val_every)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        self.path, self.every, self.stop_at, self.val_every = Path(path), every, stop_at, val_every
        self.stopped = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step >= trainer.max_steps or (self.val_every and step % self.val_every == 0):
            return
        late = self.stop_at is not None and time.monotonic() > self.stop_at
        if late or (self.every and step % self.every == 0):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.path.with_suffix(".partial")
            trainer.save_checkpoint(partial)
            if trainer.is_global_zero:
                partial.replace(self.path)
        if late:
            self.stopped = True
            trainer.should_stop = True


_LIGHTNING_LOGGERS = (
    "pytorch_lightning",
    "lightning.pytorch",
    "lightning_fabric",
    "lightning.fabric",
)


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Within the block, Lightning's start-up lines (devices, "max_steps reached") and its
    advice for small runs (few DataLoader workers, a small validation set) are not shown:
    they say nothing about an experiment. Its errors still are."""
    loggers = [logging.getLogger(name) for name in _LIGHTNING_LOGGERS]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            for module in ("pytorch_lightning", "lightning", "lightning_fabric"):
                warnings.filterwarnings("ignore", module=module)
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
