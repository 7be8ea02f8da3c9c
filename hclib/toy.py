"""The toy task of the early chapters: a teacher network to imitate, a short training
loop, and the seesaw measures.

The task: inputs ``x ~ N(0, I)`` in ``in_features`` dimensions, labelled by a fixed random
teacher (a two-layer tanh network, ``argmax`` over ``classes`` logits). It is learnable,
not trivial, deterministic given a seed, and fast on a CPU, which is all the seesaw
experiments need: the effects they show are about depth, not about data.

For chapter 8's sweeps over connections and seeds:

* :func:`sweep_configs` names the chapter's 14 configurations and :data:`SWEEP_SIZES` holds
  its sizes (``small``, the book's default; ``medium``, about 35 minutes of 2 CPU cores; ``full``;
  ``gpu``, run on a GPU machine's CPU cores; ``smoke`` for tests);
* :func:`run_toy_sweep` trains one :class:`hclib.models.DeepMLP` per (configuration, seed) and
  measures it (validation loss and accuracy, :func:`seesaw_measures`), optionally in
  parallel processes, and resumes from the runs it already finished when given ``runs_dir``;
  :func:`save_toy_sweep` and :func:`load_toy_sweep` keep its rows as JSON.

The paired-seed statistics that judge the sweep's claims live in :mod:`hclib.stats`.

Used in: notebooks/01_residual_connections, 02, 05 and 08.
Derived in: notebooks/08_toy_models (sweeps over seeds).
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hclib.analysis import adjacent_cosine_similarity, branch_grad_norms, capture_branch_inputs
from hclib.connection import Connection
from hclib.extras import require
from hclib.models.mlp import DeepMLP
from hclib.optim import param_groups
from hclib.streams import check_count

__all__ = [
    "SWEEP_SIZES",
    "SweepSize",
    "ToyData",
    "load_toy_sweep",
    "make_toy_data",
    "run_toy_sweep",
    "save_toy_sweep",
    "seesaw_measures",
    "sweep_configs",
    "train_toy",
]


@dataclass
class ToyData:
    """Train and validation splits: ``x`` ``(N, in_features)`` float32, ``y`` ``(N,)`` int64."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor

    @property
    def in_features(self) -> int:
        return self.x_train.shape[-1]

    @property
    def classes(self) -> int:
        return int(max(self.y_train.max(), self.y_val.max()).item()) + 1


def make_toy_data(
    n_train: int = 8192,
    n_val: int = 2048,
    in_features: int = 16,
    classes: int = 8,
    hidden: int = 64,
    seed: int = 0,
) -> ToyData:
    """Sample the teacher task (deterministic in ``seed``)."""
    for name, value in (("n_train", n_train), ("n_val", n_val), ("in_features", in_features)):
        check_count(value, name, "items")
    if classes < 2:
        raise ValueError(f"classes must be >= 2, got {classes}")
    g = torch.Generator().manual_seed(seed)
    W1 = torch.randn(in_features, hidden, generator=g) / in_features**0.5
    W2 = torch.randn(hidden, classes, generator=g) / hidden**0.5
    x = torch.randn(n_train + n_val, in_features, generator=g)
    y = (torch.tanh(2.0 * x @ W1) @ W2).argmax(dim=-1)  # the teacher's labels
    return ToyData(x[:n_train], y[:n_train], x[n_train:], y[n_train:])


def train_toy(
    model: nn.Module,
    data: ToyData,
    steps: int = 500,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    eval_every: int = 50,
    seed: int = 0,
    progress: bool | None = None,
    connection_lr: float | None = None,
) -> dict[str, list[float]]:
    """Train ``model`` on ``data`` with AdamW (:func:`hclib.param_groups`) and cross-entropy.

    Args:
        connection_lr: if given, the learning rate of the connections' own parameters (the
            HC/FC/mHC weights, not the branches they wrap); everything else uses ``lr``.

    ``progress=None`` shows a progress bar only in a terminal (not in a notebook, where the
    bar would land in the saved outputs); ``True`` or ``False`` forces it on or off.

    Returns:
        ``{"step", "loss", "val_step", "val_loss", "val_acc"}``: the training loss at every
        step and the validation loss and accuracy every ``eval_every`` steps and at the end.
    """
    check_count(steps, "steps", "steps")
    check_count(batch_size, "batch_size", "samples")
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(_optimizer_groups(model, weight_decay, connection_lr), lr=lr)
    history: dict[str, list[float]] = {
        k: [] for k in ("step", "loss", "val_step", "val_loss", "val_acc")
    }
    if progress is None:
        progress = sys.stderr.isatty()
    bar = range(1, steps + 1)
    if progress:  # plain text bars (no ipywidgets needed in notebooks); tqdm is optional
        tqdm = require("tqdm", "notebooks", "train_toy(progress=True)").tqdm
        bar = tqdm(bar, desc="train", leave=False)
    for step in bar:
        model.train()
        idx = torch.randint(0, data.x_train.shape[0], (batch_size,), generator=g)
        loss = nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the training loss became {loss.item()} at step {step}")
        history["step"].append(step)
        history["loss"].append(loss.item())
        if step % eval_every == 0 or step == steps:
            model.eval()
            with torch.no_grad():
                logits = model(data.x_val)
                history["val_step"].append(step)
                history["val_loss"].append(nn.functional.cross_entropy(logits, data.y_val).item())
                history["val_acc"].append((logits.argmax(-1) == data.y_val).float().mean().item())
            if progress:
                bar.set_postfix(loss=f"{loss.item():.3f}", val_acc=f"{history['val_acc'][-1]:.3f}")
    return history


def _optimizer_groups(
    model: nn.Module, weight_decay: float, connection_lr: float | None
) -> list[dict]:
    """:func:`hclib.param_groups`, with the connections' own parameters split off at
    ``connection_lr`` when it is given."""
    groups = param_groups(model, weight_decay)
    if connection_lr is None:
        return groups
    if connection_lr <= 0:
        raise ValueError(f"connection_lr must be > 0, got {connection_lr}")
    own = {
        id(p)
        for module in model.modules()
        if isinstance(module, Connection)
        for p in module.parameters(recurse=False)
    }
    out = []
    for group in groups:
        for is_own in (False, True):
            params = [p for p in group["params"] if (id(p) in own) == is_own]
            if params:
                extra = {"lr": connection_lr} if is_own else {}
                out.append({"params": params, "weight_decay": group["weight_decay"], **extra})
    return out


def seesaw_measures(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Both sides of the seesaw on one batch, for a model with a ``layers`` list of connections.

    Returns:
        ``grad_norm`` ``(L,)``: gradient norm of each block's branch parameters for the
        cross-entropy loss on ``(x, y)``; ``cos_median``, ``cos_p05``, ``cos_p95`` ``(L-1,)``:
        median and 5th/95th percentiles over tokens of the cosine similarity between
        consecutive layers' inputs (HC Figure 3's curve and band).
    """
    model.zero_grad(set_to_none=True)
    model.eval()
    with capture_branch_inputs(model.layers) as inputs:
        loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    grad_norm = branch_grad_norms(model.layers)
    model.zero_grad(set_to_none=True)
    cos = adjacent_cosine_similarity(inputs)  # (L-1, tokens)
    q = torch.quantile(cos, torch.tensor([0.05, 0.5, 0.95]), dim=1)
    return {"grad_norm": grad_norm, "cos_p05": q[0], "cos_median": q[1], "cos_p95": q[2]}


# ---------------------------------------------------------------------------------------------
# Sweeps over connections and seeds (chapter 8)
# ---------------------------------------------------------------------------------------------

_PER_LAYER = ("cos_median", "cos_p05", "cos_p95", "grad_norm")


@dataclass(frozen=True)
class SweepSize:
    """One size of chapter 8's sweep: the model, the training, the seeds.

    ``workers`` is the number of processes the sweep is meant to run in (each one torch
    thread); the learning rate is :func:`train_toy`'s default, the chapter's.
    """

    dim: int
    depth: int
    steps: int
    batch_size: int
    n_train: int
    seeds: tuple[int, ...]
    workers: int
    lr: float = 1e-3

    def __post_init__(self) -> None:
        for name, what in (
            ("dim", "features"),
            ("depth", "blocks"),
            ("steps", "steps"),
            ("batch_size", "examples"),
            ("n_train", "examples"),
            ("workers", "processes"),
        ):
            check_count(getattr(self, name), name, what)
        if not self.seeds:
            raise ValueError("a sweep size needs at least one seed")

    @property
    def runs(self) -> int:
        """Runs in the sweep: every configuration of :func:`sweep_configs` once per seed."""
        return len(sweep_configs()) * len(self.seeds)

    def run_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`run_toy_sweep` at this size (the model and its
        training, evaluated once at the end)."""
        return dict(
            dim=self.dim,
            depth=self.depth,
            steps=self.steps,
            batch_size=self.batch_size,
            eval_every=self.steps,
            lr=self.lr,
        )

    def settings(self) -> dict[str, Any]:
        """What a saved sweep records of this size (:func:`save_toy_sweep`'s settings)."""
        return dict(
            dim=self.dim,
            depth=self.depth,
            steps=self.steps,
            batch_size=self.batch_size,
            n_train=self.n_train,
            lr=self.lr,
        )


#: chapter 8's sizes. ``small`` is the book's default (a minute of one core); ``medium`` the
#: committed CPU size (about 35 minutes of 2 cores: twice as deep, eight times the training
#: steps with twice the batch on eight times the data, ten seeds); ``full`` the same model and
#: training with sixteen seeds, for a many-core machine; ``gpu`` the sweep that
#: ``benchmarks/chapters_gpu.py`` runs on a GPU machine's CPU cores beside chapters 9-10;
#: ``smoke`` checks the plumbing in tests.
SWEEP_SIZES: dict[str, SweepSize] = {
    "smoke": SweepSize(16, 4, 8, 32, 512, (0, 1, 2), 2),
    "small": SweepSize(64, 16, 120, 128, 8192, (0, 1, 2), 1),
    "medium": SweepSize(64, 32, 1000, 256, 65_536, tuple(range(10)), 2),
    "full": SweepSize(64, 32, 1000, 256, 65_536, tuple(range(16)), 16),
    "gpu": SweepSize(64, 32, 500, 256, 65_536, tuple(range(6)), 12),
}


def sweep_configs() -> dict[str, dict[str, Any]]:
    """Chapter 8's 14 configurations, by name, as :class:`~hclib.models.DeepMLP` keyword
    arguments: Pre-Norm and Post-Norm, then static ("S") and dynamic ("D") HC with
    ``n`` in 1, 2, 4, 8 and FC with ``m`` in 2, 4."""
    configs: dict[str, dict[str, Any]] = {
        "Pre-Norm": dict(norm="pre"),
        "Post-Norm": dict(norm="post"),
    }
    for dynamic, kind in ((False, "S"), (True, "D")):
        for n in (1, 2, 4, 8):
            configs[f"{kind}HC n={n}"] = dict(connection="hc", n=n, dynamic=dynamic)
        for m in (2, 4):
            configs[f"{kind}FC m={m}"] = dict(connection="fc", m=m, dynamic=dynamic)
    return configs


def _run_file(runs_dir: Path, name: str, seed: int) -> Path:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()
    return runs_dir / f"{slug}-seed{seed}.json"


def run_toy_sweep(
    configs: Mapping[str, Mapping[str, Any]],
    data: ToyData,
    seeds: Sequence[int],
    *,
    dim: int = 64,
    depth: int = 32,
    probe: int = 256,
    workers: int = 1,
    runs_dir: str | Path | None = None,
    progress: bool = False,
    **train_kwargs: Any,
) -> list[dict[str, Any]]:
    """Train and measure one :class:`~hclib.models.DeepMLP` per configuration and seed.

    Run ``(name, seed)`` seeds the model's initialisation with ``torch.manual_seed(seed)``
    and its batches with ``train_toy(..., seed=seed)``: two configurations under the same
    seed see the same batches, and HC or FC start from the Pre-Norm network's weights (their
    own weights start at the Pre-Norm equivalent), so differences between them are paired.

    Args:
        configs: ``{name: DeepMLP keyword arguments}``, e.g.
            ``{"HC n=4": {"connection": "hc", "n": 4}}``.
        data: the task; ``data.x_val[:probe]`` is the batch the seesaw is measured on.
        seeds: one run per seed and configuration.
        dim, depth: the model width ``d`` and number of blocks of every model.
        workers: processes to run in parallel (each uses one torch thread); ``1`` runs in
            this process, in order.
        runs_dir: where each finished run is kept as ``<name>-seed<s>.json`` the moment it
            ends; a run already there (same name, seed and configuration) is read back, not
            trained again, so an interrupted sweep continues where it stopped. The caller
            keeps one folder per set of sizes: the file does not record them.
        progress: print a line to stderr as each run ends (``[k/N] name seed s: val loss,
            seconds``), for long sweeps run in the background.
        **train_kwargs: passed to :func:`train_toy` (``steps``, ``batch_size``, ``lr``, ...);
            ``seed`` is set here, and the runs train without their own progress bars.

    Returns:
        One dict per run, in the order of ``seeds`` then ``configs``: ``name``, ``seed``,
        ``val_loss`` and ``val_acc`` (at the end of training), ``seconds`` (wall time of the
        run), and the lists of :func:`seesaw_measures`: ``grad_norm`` (``depth`` values),
        ``cos_median``, ``cos_p05``, ``cos_p95`` (``depth - 1`` values). Plain Python types,
        ready for :func:`save_toy_sweep`.
    """
    check_count(dim, "dim", "features")
    check_count(depth, "depth", "blocks")
    check_count(probe, "probe", "examples")
    check_count(workers, "workers", "processes")
    seeds = [int(s) for s in seeds]
    if not seeds or not configs:
        raise ValueError(f"need at least one seed and one config, got {seeds} and {list(configs)}")
    if "seed" in train_kwargs:
        raise ValueError(f"run_toy_sweep sets 'seed' itself; got seed={train_kwargs['seed']!r}")
    jobs = [(name, dict(configs[name]), seed) for seed in seeds for name in configs]
    done: dict[tuple[str, int], dict[str, Any]] = {}
    if runs_dir is not None:
        runs_dir = Path(runs_dir)
        runs_dir.mkdir(parents=True, exist_ok=True)
        for name, config, seed in jobs:
            path = _run_file(runs_dir, name, seed)
            if path.exists():
                row = json.loads(path.read_text())
                if row.get("config") != config:
                    raise ValueError(
                        f"{path} was run with {row.get('config')}, not {config}: use another "
                        "runs_dir for another sweep"
                    )
                done[name, seed] = {k: v for k, v in row.items() if k != "config"}
    todo = [job for job in jobs if (job[0], job[2]) not in done]
    shared = (data, dim, depth, probe, train_kwargs, runs_dir)

    def finished(job: tuple[str, dict, int], row: dict[str, Any]) -> None:
        done[job[0], job[2]] = row
        if progress:
            print(
                f"[{len(done)}/{len(jobs)}] {job[0]} seed {job[2]}: val loss "
                f"{row['val_loss']:.4f} ({row['seconds']:.0f} s)",
                file=sys.stderr,
                flush=True,
            )

    if workers == 1 or len(todo) <= 1:
        for job in todo:
            finished(job, _sweep_run(job, *shared))
        return [done[name, seed] for name, _, seed in jobs]
    # fork on Linux, as DataLoader workers do (torch resets its thread pool in the child, and
    # nothing is re-imported); spawn elsewhere. Each worker then uses one thread.
    context = get_context("fork" if sys.platform == "linux" else "spawn")
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_sweep_init, initargs=shared
    ) as pool:
        for job, row in zip(todo, pool.map(_sweep_worker, todo), strict=True):
            finished(job, row)
    return [done[name, seed] for name, _, seed in jobs]


_WORKER_STATE: tuple = ()


def _sweep_init(*shared: Any) -> None:
    global _WORKER_STATE
    torch.set_num_threads(1)
    _WORKER_STATE = shared


def _sweep_worker(job: tuple[str, dict, int]) -> dict[str, Any]:
    return _sweep_run(job, *_WORKER_STATE)


def _sweep_run(
    job: tuple[str, dict, int],
    data: ToyData,
    dim: int,
    depth: int,
    probe: int,
    train_kwargs: dict[str, Any],
    runs_dir: Path | None = None,
) -> dict[str, Any]:
    name, config, seed = job
    start = time.perf_counter()
    torch.manual_seed(seed)
    model = DeepMLP(data.in_features, data.classes, dim=dim, depth=depth, **config)
    history = train_toy(model, data, seed=seed, progress=False, **train_kwargs)
    measures = seesaw_measures(model, data.x_val[:probe], data.y_val[:probe])
    row: dict[str, Any] = {
        "name": name,
        "seed": seed,
        "val_loss": history["val_loss"][-1],
        "val_acc": history["val_acc"][-1],
    }
    row.update({key: measures[key].tolist() for key in _PER_LAYER})
    row["seconds"] = time.perf_counter() - start
    if runs_dir is not None:  # written whole, then renamed: a killed sweep leaves no half file
        row_with_config = {**row, "config": config}
        path = _run_file(runs_dir, name, seed)
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(row_with_config) + "\n")
        partial.replace(path)
    return row


def save_toy_sweep(path: str | Path, rows: Sequence[Mapping[str, Any]], **settings: Any) -> Path:
    """Write the rows of :func:`run_toy_sweep` and the settings that produced them as JSON.

    ``settings`` (sizes, seeds, device, versions, ...) must be JSON-serialisable; the file
    holds ``{"settings": ..., "rows": ...}``. Missing parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"settings": settings, "rows": list(rows)}, indent=1) + "\n")
    return path


def load_toy_sweep(path: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Read a file written by :func:`save_toy_sweep`: ``(settings, rows)``."""
    content = json.loads(Path(path).read_text())
    if not isinstance(content, dict) or not {"settings", "rows"} <= content.keys():
        raise ValueError(f"{path} is not a toy sweep: expected keys 'settings' and 'rows'")
    return content["settings"], content["rows"]
