"""How much arithmetic one training token costs, and how much a GPU can do: MFU.

Model FLOPs utilisation (MFU, PaLM Appendix B) is the fraction of the accelerator's peak
that the *model's* arithmetic would use at the measured throughput::

    MFU = flops_per_token * tokens_per_second / peak_flops

Recomputed activations do not count (that would be hardware FLOPs utilisation), so a run
with ``recompute`` on shows a lower MFU for the same work done by the GPU.

FLOPs per token, forward and backward (PaLM Appendix B, Kaplan et al. 2020)::

    6 N  +  12 n_layer d T

``N`` counts the weights every token multiplies by: all matrices except the embedding
lookup, plus the output projection (once, even when it is tied to the embedding), with each
MoE layer's routed experts counted ``top_k`` out of ``n_experts`` times. The second term is
attention's scores and weighted sum over a context of ``T`` tokens (not halved for the
causal mask, as in PaLM). Each matrix product costs 2 FLOPs per weight forward and 4
backward, hence the 6. The connections' own mixing of ``n`` streams (``O(n^2 d)`` per
layer, HC Table 8: +0.04% at OLMo-1B size) is left out.

Used in: notebooks/09_small_gpt (through the training progress bar).
"""

from __future__ import annotations

import torch

from hclib.models.gpt import GPT
from hclib.traffic import device_peak

__all__ = ["active_params", "device_name", "flops_per_token", "peak_flops"]

_HALF_PRECISIONS = ("bf16", "16")


def peak_flops(device_name: str | None, precision: str | int = "bf16-mixed") -> float | None:
    """The peak FLOP/s of a device from its name (``torch.cuda.get_device_name()``).

    The numbers are the dense bfloat16 tensor-core peaks of :data:`hclib.traffic.DEVICE_PEAKS`
    (the vendors' data sheets), the one table of GPUs in hclib.

    Args:
        device_name: e.g. ``"NVIDIA H100 80GB HBM3"``; None (a CPU) gives None.
        precision: Lightning's precision string. Only 16-bit precisions (``"bf16-mixed"``,
            ``"bf16-true"``, ``"16-mixed"``, ``"16-true"``) run at the tensor-core peak, so
            only they get a number.

    Returns:
        FLOP/s, or None when the device or the precision is not covered (then MFU is
        unknown and not shown).
    """
    if device_name is None or not str(precision).startswith(_HALF_PRECISIONS):
        return None
    peak = device_peak(device_name)
    if peak is None or peak.bf16_tflops is None:
        return None
    return peak.bf16_tflops * 1e12


def active_params(model: GPT) -> int:
    """``N`` of the module docstring: the weights one token multiplies by.

    Every parameter with at least 2 dimensions except the embedding table, plus the output
    projection when it is tied to the embedding; routed MoE experts scaled by
    ``top_k / n_experts``. Norm gains, biases and gates (1-D) cost no matrix products.
    """
    if not isinstance(model, GPT):
        raise TypeError(f"model must be an hclib GPT, got {type(model).__name__}")
    experts = {}
    for moe in model.moe_modules():
        for w in (moe.w_gate, moe.w_up, moe.w_down):
            experts[id(w)] = moe.top_k / moe.n_experts
    total, seen = 0.0, set()
    for p in model.parameters():
        if id(p) in seen or p.dim() < 2 or p is model.embed.weight:
            continue
        seen.add(id(p))
        total += p.numel() * experts.get(id(p), 1.0)
    if model.head.weight is model.embed.weight:  # tied: the head's product still happens
        total += model.head.weight.numel()
    return int(round(total))


def flops_per_token(model: GPT, seq_len: int | None = None) -> float:
    """Training FLOPs per token, ``6 N + 12 n_layer d T`` (module docstring).

    Args:
        model: the GPT.
        seq_len: the context ``T`` of the training windows (default: ``block_size``).
    """
    cfg = model.cfg
    T = cfg.block_size if seq_len is None else int(seq_len)
    if T < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    return 6.0 * active_params(model) + 12.0 * cfg.n_layer * cfg.d_model * T


def device_name(device: torch.device | str) -> str | None:
    """The accelerator's marketing name, or None for a CPU."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    return None
