"""The toy task of the early chapters: a teacher network to imitate, a short training
loop, and the seesaw measures.

The task: inputs ``x ~ N(0, I)`` in ``in_features`` dimensions, labelled by a fixed random
teacher (a two-layer tanh network, ``argmax`` over ``classes`` logits). It is learnable,
not trivial, deterministic given a seed, and fast on a CPU, which is all the seesaw
experiments need: the effects they show are about depth, not about data.

Used in: notebooks/01_residual_connections, 02, 05 and 08.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm  # plain text bars: no ipywidgets needed in notebooks

from hclib.analysis import adjacent_cosine_similarity, branch_grad_norms, capture_branch_inputs
from hclib.connection import Connection
from hclib.optim import param_groups
from hclib.streams import check_count

__all__ = ["ToyData", "make_toy_data", "seesaw_measures", "train_toy"]


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
    bar = tqdm(range(1, steps + 1), disable=not progress, desc="train", leave=False)
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
