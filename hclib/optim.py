"""Optimizer parameter groups with the papers' weight-decay rule.

HC Section 4 and FC Section 4.3: the static connection weights (``B``, ``A_m``, ``A_r``;
``Y``, ``A``) take **no** weight decay and the dynamic projections (the ``W``'s) **do**.
We extend the rule to whole models the usual way: norms, biases, scales and other
one-dimensional parameters take none, and every other matrix (linear and embedding
weights) does. mHC's projection ``phi`` is decayed; its biases and gates are not.

Derived in: notebooks/03_dynamic_hyper_connections.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from hclib.connection import Connection

__all__ = ["param_groups"]

_NORMS = (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, _NORMS) or type(module).__name__.endswith("Norm")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Split the trainable parameters of ``model`` into a decayed and a non-decayed group.

    Args:
        model: any module; connections anywhere inside it are recognised.
        weight_decay: the decay of the first group (``>= 0``).

    Returns:
        ``[{"params": [...], "weight_decay": weight_decay}, {"params": [...],
        "weight_decay": 0.0}]``, ready for ``torch.optim.AdamW``. Each parameter appears
        once, even if shared (tied) between modules. The groups also carry ``"names"``,
        the dotted parameter names, for inspection.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)):
        raise TypeError(f"weight_decay must be a number, got {type(weight_decay).__name__}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")

    decay: dict[str, nn.Parameter] = {}
    no_decay: dict[str, nn.Parameter] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            full = f"{module_name}.{name}" if module_name else name
            if isinstance(module, Connection):
                decayed = name in getattr(module, "decayed_parameters", ())
            elif _is_norm(module):
                decayed = False
            else:
                decayed = param.dim() >= 2
            (decay if decayed else no_decay)[full] = param
    return [
        {"params": list(decay.values()), "names": list(decay), "weight_decay": float(weight_decay)},
        {"params": list(no_decay.values()), "names": list(no_decay), "weight_decay": 0.0},
    ]
