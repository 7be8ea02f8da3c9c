"""What a reader watches while a model trains: throughput and MFU, a guard against NaN
losses, and the connections' own diagnostics.

* :class:`Throughput` puts tokens per second and MFU (:mod:`hclib.training.flops`) in the
  progress bar and the logs.
* :class:`NonFiniteLossGuard` stops the run, with a message that says what to do, the
  moment the loss becomes NaN or infinite, before the bad gradients reach the weights.
* :class:`ConnectionDiagnostics` runs a fixed probe batch every ``every_n_steps`` steps and
  records, layer by layer, the connections' mappings (token-averaged ``pre``, ``post``,
  ``res``), the unfolded connection matrix (HC Eq. 27), the Amax gains of each ``res`` and
  of their products through depth (mHC Section 3.1, Figures 3 and 7), and the cosine
  similarity of consecutive layers' inputs (HC Figure 3). It logs the numbers, saves them
  (``.pt``) and a figure (``.png``) into the logger's folder.

Used in: notebooks/09_small_gpt and 10_moe_llm_with_lightning.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import FSDPStrategy

from hclib.analysis import (
    adjacent_cosine_similarity,
    amax_gain,
    capture_branch_inputs,
    connection_matrix,
)
from hclib.connection import Connection, Mappings
from hclib.training.flops import device_name, flops_per_token, peak_flops
from hclib.training.sharding import full_parameters, is_sharded

__all__ = [
    "ConnectionDiagnostics",
    "NonFiniteLossGuard",
    "Preemption",
    "Throughput",
    "plot_diagnostics",
    "probe_connections",
    "unwrap_connection",
]


class Throughput(pl.Callback):
    """Tokens per second and MFU over the last ``window`` micro-batches.

    Logged (and shown in the progress bar): ``tokens_per_s``, the tokens of all devices per
    second of wall time between consecutive micro-batches (data loading included), and
    ``mfu`` when the device's peak is known (:func:`hclib.training.flops.peak_flops`: a
    known GPU and a 16-bit precision); otherwise MFU is not shown.

    Args:
        window: micro-batches the rates are averaged over.
    """

    def __init__(self, window: int = 10) -> None:
        super().__init__()
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be an int >= 1, got {window!r}")
        self.window = window
        self.flops_per_token: float | None = None
        self.peak: float | None = None
        self._marks: deque[tuple[float, int]] = deque(maxlen=window + 1)
        self._tokens = 0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        model = getattr(pl_module, "model", None)
        cfg = getattr(model, "cfg", None)
        dm = getattr(trainer, "datamodule", None)
        seq_len = getattr(dm, "block_size", None)
        if cfg is not None:
            self.flops_per_token = flops_per_token(model, seq_len)
        self.peak = peak_flops(device_name(pl_module.device), trainer.precision)
        self._marks.clear()
        self._tokens = 0

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        self._tokens += x.numel() * trainer.world_size  # this micro-batch, all devices
        self._marks.append((time.perf_counter(), self._tokens))
        if len(self._marks) < 2:
            return
        (t0, n0), (t1, n1) = self._marks[0], self._marks[-1]
        if t1 <= t0:
            return
        rate = (n1 - n0) / (t1 - t0)  # tokens per second, all devices
        pl_module.log("tokens_per_s", rate, prog_bar=True, on_step=True, on_epoch=False)
        if self.flops_per_token is not None and self.peak is not None:
            mfu = self.flops_per_token * rate / (self.peak * trainer.world_size)
            pl_module.log("mfu", mfu, prog_bar=True, on_step=True, on_epoch=False)


class NonFiniteLossGuard(pl.Callback):
    """Stop training when the loss is NaN or infinite on any device.

    It checks the loss before the backward pass, so the weights stay those of the last good
    step, and raises :class:`FloatingPointError` on every rank (on several devices the ranks
    agree first, so none is left waiting). The message names the step and suggests what to
    do next.
    """

    def __init__(self) -> None:
        super().__init__()
        self.last_finite: float | None = None

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor
    ) -> None:
        bad = not bool(torch.isfinite(loss.detach()).all())
        bad = trainer.strategy.reduce_boolean_decision(bad, all=False)  # any rank
        if not bad:
            self.last_finite = float(loss.detach().float())
            return
        value = loss.detach().float().item()
        last = "none yet" if self.last_finite is None else f"{self.last_finite:.4f}"
        raise FloatingPointError(
            f"the training loss became {value} at step {trainer.global_step} (last finite "
            f"micro-batch loss: {last}); training stopped before this step's update. Start "
            "again from the last good checkpoint's weights with a lower learning rate, a "
            "fresh optimizer and schedule: --model.init_from <run>/checkpoints/last.ckpt "
            "--model.lr <lower>, and keep trainer.gradient_clip_val set (a longer "
            "model.warmup_steps helps too). Resuming with --ckpt_path would replay the same "
            "steps into the same NaN"
        )


class Preemption(pl.Callback):
    """SIGTERM or SIGUSR1 (what SLURM sends before the time limit or on preemption): save a
    checkpoint, ask SLURM to requeue the job, and exit with status ``exit_code``.

    The signal handler only raises a flag; the ranks agree on it after each training step
    (one all-reduce of a boolean) and then all of them save ``hpc_ckpt_<k>.ckpt`` into
    ``trainer.default_root_dir`` together (sharded checkpoints need every rank), at a step
    boundary, never in the middle of a collective. Under SLURM (``SLURM_JOB_ID`` set and
    ``requeue`` on) rank 0 runs ``scontrol requeue <job id>``; when the same command starts
    again under SLURM, Lightning resumes from the newest ``hpc_ckpt_<k>.ckpt`` by itself.
    Elsewhere, resume with ``--ckpt_path <that file>``. The process then exits with
    ``exit_code`` (not 0), so a scheduler or a script sees that the run did not finish.

    This replaces Lightning's own handlers for the two signals during training (Lightning
    saves and requeues from inside the signal handler, and exits 0 on SIGTERM).

    Args:
        exit_code: the exit status after such a signal (143 = 128 + SIGTERM).
        requeue: under SLURM, requeue the job after saving.
    """

    SIGNALS = ("SIGTERM", "SIGUSR1")

    def __init__(self, exit_code: int = 143, requeue: bool = True) -> None:
        super().__init__()
        if isinstance(exit_code, bool) or not isinstance(exit_code, int) or exit_code == 0:
            raise ValueError(f"exit_code must be a non-zero int, got {exit_code!r}")
        self.exit_code = exit_code
        self.requeue = bool(requeue)
        self.received: str | None = None
        self.saved: str | None = None
        self._previous: dict[int, Any] = {}

    def _flag(self, signum: int, frame: Any) -> None:
        self.received = signal.Signals(signum).name

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for name in self.SIGNALS:
            number = getattr(signal, name, None)
            if number is not None:
                self._previous[number] = signal.signal(number, self._flag)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore()

    def _restore(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        stop = trainer.strategy.reduce_boolean_decision(self.received is not None, all=False)
        if not stop:
            return
        connector = trainer._checkpoint_connector
        path = trainer.strategy.broadcast(connector.hpc_save_path(trainer.default_root_dir))
        trainer.save_checkpoint(path)
        self.saved = path
        job = os.environ.get("SLURM_JOB_ID")
        requeued = ""
        if trainer.is_global_zero and self.requeue and job:
            result = subprocess.run(["scontrol", "requeue", job], check=False)
            requeued = f"; scontrol requeue {job}: exit status {result.returncode}"
        if trainer.is_global_zero:
            print(
                f"{self.received or 'a signal on another rank'} at step {trainer.global_step}: "
                f"saved {path}{requeued}; exiting with status {self.exit_code}. Resume: the "
                f"same command (under SLURM), or --ckpt_path {path}",
                flush=True,
            )
        self._restore()
        raise SystemExit(self.exit_code)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._restore()


def unwrap_connection(layer: torch.nn.Module) -> Connection:
    """The hclib connection inside FSDP or activation-checkpointing wrappers."""
    while not isinstance(layer, Connection):
        for attribute in ("_fsdp_wrapped_module", "_checkpoint_wrapped_module", "module"):
            inner = getattr(layer, attribute, None)
            if isinstance(inner, torch.nn.Module):
                layer = inner
                break
        else:
            raise TypeError(f"expected an hclib connection, got {type(layer).__name__}")
    return layer


def _token_mean(maps: Mappings) -> Mappings:
    """Average per-token mappings over every batch dimension: pre ``(k,)`` or ``(m, m)``,
    post ``(k,)``, res ``(k, k)``."""
    k = maps.post.shape[-1]
    pre_shape = maps.pre.shape[-2:] if maps.pre.dim() >= 2 and maps.res.dim() >= 2 else None
    if pre_shape is not None and tuple(pre_shape) == (k, k):
        pre = maps.pre.reshape(-1, k, k).mean(dim=0)
    else:
        pre = maps.pre.reshape(-1, k).mean(dim=0)
    return Mappings(
        pre=pre, post=maps.post.reshape(-1, k).mean(dim=0), res=maps.res.reshape(-1, k, k).mean(0)
    )


@torch.no_grad()
def probe_connections(model: torch.nn.Module, idx: torch.Tensor) -> dict[str, Any]:
    """Everything :class:`ConnectionDiagnostics` records, for a GPT and token ids ``(B, T)``.

    Returns a dict of CPU float32 tensors, ``L`` the number of connections:

    * ``pre`` ``(L, k)`` (``(L, m, m)`` for FC), ``post`` ``(L, k)``, ``res`` ``(L, k, k)``:
      each layer's token-averaged mappings (``k = 1`` residual, ``n`` HC/mHC, ``m`` FC);
    * ``matrix``: :func:`hclib.connection_matrix`, ``(L+2, L+2)`` (``(L+2, L+2, m, m)`` FC);
    * ``gain_forward``, ``gain_backward`` ``(L,)``: Amax gains of each layer's ``res``;
    * ``composite_forward`` ``(L,)``: forward gain of ``res_l ... res_1`` (from the
      embedding up to layer ``l``); ``composite_backward`` ``(L,)``: backward gain of
      ``res_L ... res_l`` (from the top down to layer ``l``), mHC Figure 3b's two curves;
    * ``cos_median``, ``cos_p05``, ``cos_p95`` ``(L-1,)``: quantiles over tokens of the
      cosine similarity between the inputs of layers ``l`` and ``l+1``.
    """
    layers = [unwrap_connection(layer) for layer in model.connections()]
    was_training = model.training
    model.eval()
    try:
        H0 = model.state(idx)  # the state entering layer 1
        H, maps = H0, []
        with capture_branch_inputs(layers) as inputs:
            for layer in layers:
                maps.append(_token_mean(layer.mappings(H)))
                H = layer(H)
        matrix = connection_matrix(layers, H0)
    finally:
        model.train(was_training)
    res = torch.stack([m.res.float() for m in maps])  # (L, k, k)
    single = amax_gain(res)
    eye = torch.eye(res.shape[-1], dtype=res.dtype, device=res.device)
    prefix, forward = eye, []
    for r in res:  # res_l ... res_1
        prefix = r @ prefix
        forward.append(amax_gain(prefix).forward)
    suffix, backward = eye, []
    for r in reversed(res):  # res_L ... res_l
        suffix = suffix @ r
        backward.append(amax_gain(suffix).backward)
    cos = adjacent_cosine_similarity(inputs).float()  # (L-1, tokens)
    q = torch.quantile(cos, torch.tensor([0.05, 0.5, 0.95], device=cos.device), dim=1)
    out = {
        "pre": torch.stack([m.pre.float() for m in maps]),
        "post": torch.stack([m.post.float() for m in maps]),
        "res": res,
        "matrix": matrix.float(),
        "gain_forward": single.forward,
        "gain_backward": single.backward,
        "composite_forward": torch.stack(forward),
        "composite_backward": torch.stack(backward[::-1]),
        "cos_p05": q[0],
        "cos_median": q[1],
        "cos_p95": q[2],
    }
    return {k: v.detach().float().cpu() for k, v in out.items()}


class ConnectionDiagnostics(pl.Callback):
    """Every ``every_n_steps`` optimizer steps, probe the connections (:func:`probe_connections`).

    The probe batch is the first ``probe_windows`` validation windows of the data module,
    the same at every step. Logged per layer ``l`` (two per transformer block: attention,
    then feed-forward): ``diag/gain_fwd/layer{l}``, ``diag/gain_bwd/layer{l}``,
    ``diag/composite_fwd/layer{l}``, ``diag/composite_bwd/layer{l}`` and
    ``diag/cos/layer{l}`` (median similarity of layers ``l`` and ``l+1``). Saved under
    ``<log dir>/diagnostics/``: ``step{N}.pt`` (the whole dict) and ``step{N}.png``.

    Costs one forward pass of the probe batch (two for dynamic connections) and, with
    ``plot``, about a second of matplotlib; nothing between probes.

    Args:
        every_n_steps: probe period in optimizer steps (0 turns the callback off).
        probe_windows: validation windows in the probe batch.
        plot: save a figure at every probe.
    """

    def __init__(self, every_n_steps: int = 500, probe_windows: int = 4, plot: bool = True) -> None:
        super().__init__()
        for name, value in (("every_n_steps", every_n_steps), ("probe_windows", probe_windows)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if probe_windows == 0:
            raise ValueError("probe_windows must be >= 1")
        self.every_n_steps = every_n_steps
        self.probe_windows = probe_windows
        self.plot = bool(plot)
        self._last_step = -1
        self._probe: torch.Tensor | None = None

    def _probe_batch(self, trainer: pl.Trainer) -> torch.Tensor:
        if self._probe is None:
            dm = trainer.datamodule
            if dm is None or not hasattr(dm, "val_dataset"):
                raise ValueError("ConnectionDiagnostics needs a data module with a val_dataset")
            data = dm.val_dataset
            count = min(self.probe_windows, len(data))
            self._probe = torch.stack([data[j][0] for j in range(count)])  # (B, T)
        return self._probe

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step = trainer.global_step
        if self.every_n_steps == 0 or step == self._last_step or step % self.every_n_steps:
            return
        self._last_step = step
        self.run(trainer, pl_module)

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        """Probe now, log, save; returns the :func:`probe_connections` dict.

        Every rank runs the probe (sharded weights need all of them); rank 0 writes.
        """
        model = pl_module.model
        idx = self._probe_batch(trainer).to(pl_module.device)
        with _full_parameters(trainer):
            result = probe_connections(model, idx)
        step = trainer.global_step
        folder = _log_dir(trainer) / "diagnostics"  # every rank: trainer.log_dir broadcasts
        if not trainer.is_global_zero:
            return result
        metrics = {}
        L = result["res"].shape[0]
        for layer in range(L):
            metrics[f"diag/gain_fwd/layer{layer}"] = result["gain_forward"][layer].item()
            metrics[f"diag/gain_bwd/layer{layer}"] = result["gain_backward"][layer].item()
            metrics[f"diag/composite_fwd/layer{layer}"] = result["composite_forward"][layer].item()
            metrics[f"diag/composite_bwd/layer{layer}"] = result["composite_backward"][layer].item()
            if layer < L - 1:
                metrics[f"diag/cos/layer{layer}"] = result["cos_median"][layer].item()
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(
            {"step": step, "connection": model.cfg.connection, **result},
            folder / f"step{step:06d}.pt",
        )
        if self.plot:
            fig = plot_diagnostics(result, model.cfg.connection, step)
            fig.savefig(folder / f"step{step:06d}.png", bbox_inches="tight")
            for logger in trainer.loggers:
                add_figure = getattr(getattr(logger, "experiment", None), "add_figure", None)
                if callable(add_figure) and isinstance(logger, pl.loggers.TensorBoardLogger):
                    add_figure("diagnostics", fig, global_step=step, close=False)
        return result


def _full_parameters(trainer: pl.Trainer) -> contextlib.AbstractContextManager:
    """Under FSDP (FSDP1 or FSDP2), gather every parameter for the probe (all ranks take
    part)."""
    if is_sharded(trainer.lightning_module):
        return full_parameters(trainer.lightning_module)
    if isinstance(trainer.strategy, FSDPStrategy):
        from torch.distributed.fsdp import FullyShardedDataParallel

        return FullyShardedDataParallel.summon_full_params(trainer.strategy.model, writeback=False)
    return contextlib.nullcontext()


def _log_dir(trainer: pl.Trainer) -> Path:
    path = trainer.log_dir if trainer.loggers else None
    return Path(path or trainer.default_root_dir)


def plot_diagnostics(result: dict[str, Any], connection: str, step: int):
    """Three panels: the connection matrix, the Amax gains through depth, and the adjacent
    layers' input similarity, in the book's colour of ``connection``.

    Returns a ``matplotlib.figure.Figure`` made without pyplot (safe in any backend).
    """
    from matplotlib.figure import Figure  # no pyplot: no backend, no global figure list
    from matplotlib.ticker import MaxNLocator

    from hclib.plotting import PALETTE, color

    name = "pre-norm" if connection == "residual" else connection
    main = color(name)
    fig = Figure(figsize=(14, 3.8))
    axes = fig.subplots(1, 3)
    matrix = result["matrix"]
    if matrix.dim() == 4:  # FC blocks: weight of all of layer j's fractions, per fraction of k
        matrix = matrix.sum(dim=-1).mean(dim=-1)
    L = matrix.shape[0] - 2
    limit = max(float(matrix.abs().max()), 1e-12)
    im = axes[0].imshow(matrix.numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit)
    axes[0].set_title(f"connection matrix (HC Eq. 27), step {step}")
    axes[0].set_xlabel("source layer j (0: embedding)")
    axes[0].set_ylabel(f"target layer k ({L + 1}: output)")
    fig.colorbar(im, ax=axes[0], fraction=0.046)

    layers = torch.arange(1, L + 1)
    ax = axes[1]
    ax.plot(layers, result["gain_forward"], color=main, lw=1, label="single res, forward")
    ax.plot(layers, result["gain_backward"], color=main, lw=1, ls=":", label="single, backward")
    ax.plot(layers, result["composite_forward"], color=main, lw=2, label="composite, forward")
    ax.plot(layers, result["composite_backward"], color=main, lw=2, ls="--", label="composite, bwd")
    ax.axhline(1.0, color=PALETTE["reference"], lw=0.8)
    ax.set_yscale("log")
    gains = torch.cat(
        [
            result[k]
            for k in ("gain_forward", "gain_backward", "composite_forward", "composite_backward")
        ]
    )
    ax.set_ylim(min(0.5, float(gains.min()) / 1.5), max(2.0, float(gains.max()) * 1.5))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer l")
    ax.set_ylabel("Amax gain (log)")
    ax.set_title("Amax gain of res (mHC Section 3.1)")
    ax.legend(fontsize=7)

    ax = axes[2]
    pairs = torch.arange(1, L)
    if L > 1:
        ax.fill_between(pairs, result["cos_p05"], result["cos_p95"], color=main, alpha=0.2)
        ax.plot(pairs, result["cos_median"], color=main, label="median over tokens")
    ax.set_ylim(min(0.0, float(result["cos_p05"].min()) if L > 1 else 0.0), 1.02)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer pair (l, l+1)")
    ax.set_ylabel("cosine similarity")
    ax.set_title("adjacent layers' inputs (HC Figure 3)")
    ax.legend(fontsize=7)
    fig.suptitle(f"{connection}: connection diagnostics at step {step}")
    fig.tight_layout()
    return fig
