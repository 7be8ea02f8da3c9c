"""The learning-rate schedule of the training chapters: linear warmup, then cosine decay.

The multiplier of the base learning rate at optimizer step ``s`` (counted from 0) is::

    s < W:            (s + 1) / W                                      linear warmup
    W <= s < S:       r + (1 - r) * (1 + cos(pi * (s - W) / (S - W))) / 2   cosine decay
    s >= S:           r                                                flat at the floor

with ``W`` warmup steps, ``S`` total steps and ``r`` the floor as a fraction of the base rate
(``min_lr_ratio``). The first step already trains (multiplier ``1 / W``, not 0).

Used in: notebooks/09_small_gpt and 10_moe_llm_with_lightning (through ``hclib.training``).
"""

from __future__ import annotations

import math

__all__ = ["WarmupCosine"]


class WarmupCosine:
    """The multiplier ``step -> lr / base_lr`` above, for ``torch.optim.lr_scheduler.LambdaLR``.

    A class rather than a closure so that the scheduler's ``state_dict`` (and with it a
    checkpoint) records the schedule's numbers and a resumed run continues on the same curve.

    Args:
        warmup_steps: ``W >= 0`` (0: start at the full rate).
        total_steps: ``S > W``, where the cosine reaches the floor.
        min_lr_ratio: ``r`` in ``[0, 1]``.
    """

    def __init__(self, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.1) -> None:
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an int >= 0, got {warmup_steps!r}")
        if isinstance(total_steps, bool) or not isinstance(total_steps, int):
            raise ValueError(f"total_steps must be an int, got {total_steps!r}")
        if total_steps <= warmup_steps:
            raise ValueError(
                f"total_steps={total_steps} must exceed warmup_steps={warmup_steps} "
                "(set trainer.max_steps or model.decay_steps above the warmup)"
            )
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must lie in [0, 1], got {min_lr_ratio}")
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.min_lr_ratio = float(min_lr_ratio)

    def __call__(self, step: int) -> float:
        W, S, r = self.warmup_steps, self.total_steps, self.min_lr_ratio
        if step < W:
            return (step + 1) / W
        if step >= S:
            return r
        progress = (step - W) / (S - W)  # in [0, 1)
        return r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def __repr__(self) -> str:
        return (
            f"WarmupCosine(warmup_steps={self.warmup_steps}, total_steps={self.total_steps}, "
            f"min_lr_ratio={self.min_lr_ratio})"
        )
