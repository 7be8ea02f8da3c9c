"""Reading the training stack's checkpoints: one file or a sharded folder, resume checks,
weights for a new run, and the conversion of a sharded checkpoint into one file.

A run under ``configs/fsdp.yaml`` saves each checkpoint as a folder (``step=001000.ckpt/``)
holding one shard per rank (``torch.distributed.checkpoint``) and ``meta.pt`` (step, epoch,
hyperparameters, callbacks' states). ``python -m hclib.train convert-checkpoint FOLDER
OUT.ckpt`` writes the whole model into one file that loads on a laptop without any process
group: ``GPTModule.load_from_checkpoint("OUT.ckpt")``.

Used in: :mod:`hclib.training.cli` (``--ckpt_path``, ``--model.init_from``,
``convert-checkpoint``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "IGNORED_ON_RESUME",
    "check_resume",
    "convert_checkpoint",
    "load_weights",
    "read_checkpoint",
]

META = "meta.pt"  # Lightning's metadata file inside a sharded checkpoint folder

#: keys that may differ between a checkpoint and the resumed run: how it is computed or
#: loaded, not what is trained.
IGNORED_ON_RESUME = {
    # vocab_size and block_size are linked from data.corpus and data.block_size
    "model": {"impl", "compile", "recompute", "init_from", "vocab_size", "block_size"},
    "data": {"root", "num_workers"},
}


def _load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False, mmap=True)


def read_checkpoint(path: str | Path, weights: bool = True) -> dict[str, Any]:
    """The checkpoint at ``path`` as one dict, from a ``.ckpt`` file or a sharded folder.

    With ``weights=False`` only the metadata of a sharded folder is read (``meta.pt``:
    step, hyperparameters, ...), not its shards. A sharded folder's ``state_dict`` comes
    back whole (every shard gathered, on the CPU); its optimizer states are left out.
    """
    path = Path(path)
    if path.is_file():
        return _load(path)
    if not (path / META).is_file():
        raise FileNotFoundError(
            f"{path} is neither a checkpoint file nor a sharded checkpoint folder (no {META})"
        )
    checkpoint = _load(path / META)
    if weights:
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        with tempfile.TemporaryDirectory() as tmp:
            whole = Path(tmp) / "whole.pt"
            dcp_to_torch_save(path, whole)  # no process group needed
            state = torch.load(whole, map_location="cpu", weights_only=False)
        checkpoint["state_dict"] = state["state_dict"]
    return checkpoint


def convert_checkpoint(source: str | Path, target: str | Path) -> Path:
    """Write the sharded checkpoint folder ``source`` as one file ``target``.

    The file holds the whole ``state_dict`` and the metadata (step, hyperparameters of the
    model and the data), not the optimizer states: it is for reading the model
    (``GPTModule.load_from_checkpoint``) and for starting a new run from its weights
    (``--model.init_from``); to resume the sharded run itself, give ``--ckpt_path`` the
    folder.
    """
    source, target = Path(source), Path(target)
    if source.is_file():
        raise ValueError(f"{source} is already a single-file checkpoint")
    checkpoint = read_checkpoint(source)
    checkpoint.pop("optimizer_states", None)
    checkpoint.pop("lr_schedulers", None)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, target)
    return target


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load the GPT weights of the checkpoint at ``path`` into ``model`` (a GPT).

    The checkpoint is a Lightning checkpoint of :class:`GPTModule` (file or sharded folder):
    its ``state_dict`` keys start with ``model.``. The architectures must match; the error
    names the keys or shapes that do not.
    """
    state = read_checkpoint(path)["state_dict"]
    prefix = "model."
    weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not weights:
        raise ValueError(f"{path} holds no GPTModule weights (no 'model.*' keys)")
    own = model.state_dict()
    wrong = [
        f"{k}: checkpoint {tuple(v.shape)}, model {tuple(own[k].shape)}"
        for k, v in weights.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    if wrong or missing or unexpected:
        raise ValueError(
            f"the weights in {path} do not fit this model (model.* must describe the "
            f"checkpoint's architecture): shapes {wrong[:3]}, missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    with torch.no_grad():
        model.load_state_dict(weights)


def _flag(section: str, key: str, value: Any) -> str:
    return f"--{section}.{key} {value}"


def check_resume(checkpoint: dict[str, Any], current: dict[str, dict[str, Any]], path: str) -> None:
    """Stop a resume whose ``model.*`` or ``data.*`` settings differ from the checkpoint's.

    A resumed run (``--ckpt_path``) continues the checkpoint's run: its weights, optimizer,
    schedule and data order. A differing setting would otherwise be silently replaced by the
    checkpoint's (Lightning restores the module from it) or would break the run's meaning.

    Args:
        checkpoint: the checkpoint's dict (``hyper_parameters``,
            ``datamodule_hyper_parameters``).
        current: ``{"model": {...}, "data": {...}}``, the run's values.
        path: the checkpoint path, for the message.

    Raises:
        ValueError: naming every differing key with both values, and the two ways to do
            what was probably meant.
    """
    saved = {
        "model": dict(checkpoint.get("hyper_parameters") or {}),
        "data": dict(checkpoint.get("datamodule_hyper_parameters") or {}),
    }
    differences = []
    for section, values in current.items():
        for key, value in values.items():
            if key in IGNORED_ON_RESUME.get(section, set()) or key not in saved[section]:
                continue
            old = saved[section][key]
            if _normalise(old) != _normalise(value):
                differences.append((section, key, old, value))
    if not differences:
        return
    listed = "; ".join(
        f"{section}.{key}: checkpoint {old!r}, this run {new!r}"
        for section, key, old, new in differences
    )
    keep = " ".join(_flag(s, k, old) for s, k, old, _ in differences)
    raise ValueError(
        f"resuming from {path} with settings that differ from the checkpoint's: {listed}. "
        "A resume continues the checkpoint's run unchanged. To continue it, drop these "
        f"overrides (or pass {keep}). To start a new run from its weights with these settings "
        f"and a fresh optimizer and schedule, replace --ckpt_path with --model.init_from {path}."
    )


def _normalise(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return value
