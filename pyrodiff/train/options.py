"""Training options as types: the learning-rate schedule and the numeric precision."""

from __future__ import annotations

import enum
import math

from ..errors import ConfigError

__all__ = ["LRSchedule", "Precision", "default_warmup", "learning_rate"]


class LRSchedule(enum.Enum):
    """How the learning rate moves over the run (``steps`` updates, base rate ``lr``)."""

    CONSTANT = "constant"
    """lr at every step (after an optional linear warm-up)."""
    COSINE = "cosine"
    """lr · ½(1 + cos(π s / S)) at update s of S: from lr down to 0 at the last update."""
    WARMUP_COSINE = "warmup_cosine"
    """a linear warm-up from lr / W to lr over the first W updates, then the cosine decay over
    the remaining S − W."""


class Precision(enum.Enum):
    """The arithmetic of the loss computation."""

    FP32 = "fp32"
    """The parameters' own dtype everywhere (float32, or float64 if the model is float64)."""
    BF16 = "bf16"
    """The loss is computed under ``torch.autocast(dtype=torch.bfloat16)``: matrix products run
    in bfloat16, reductions and the parameters stay in float32. Gradients and the optimizer
    stay in full precision, so no loss scaling is needed."""


def default_warmup(schedule: LRSchedule, updates: int) -> int:
    """The warm-up when none is given: updates // 20 (at least 1) for WARMUP_COSINE, leaving at
    least one update after it; none for the other schedules. ``fit`` and ``RunConfig`` share it,
    so a run of any length has a valid default."""
    if schedule is not LRSchedule.WARMUP_COSINE:
        return 0
    return max(0, min(max(1, updates // 20), updates - 1))


def learning_rate(
    schedule: LRSchedule, lr: float, step: int, total_steps: int, warmup_steps: int = 0
) -> float:
    """The learning rate for update number ``step`` (0-based) of ``total_steps``.

    A pure function of the step, so resuming needs nothing but the step to continue the schedule
    exactly. ``warmup_steps`` applies to CONSTANT and WARMUP_COSINE (COSINE ignores it unless
    set, in which case it behaves as WARMUP_COSINE).
    """
    if not isinstance(schedule, LRSchedule):
        raise ConfigError(f"lr_schedule must be an LRSchedule, got {schedule!r}")
    if warmup_steps and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule is LRSchedule.CONSTANT:
        return lr
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return lr * 0.5 * (1.0 + math.cos(math.pi * progress))
