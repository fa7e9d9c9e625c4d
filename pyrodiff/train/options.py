"""The training options, each declared once (:data:`OPTIONS`), and their types: the
learning-rate schedule and the numeric precision.

:func:`pyrodiff.train.fit`, :class:`pyrodiff.config.RunConfig` (and so ``config.json``) and the
``pyrodiff train`` flags all check a training option against its :class:`~pyrodiff.validation.Option`
here, so each is accepted or refused identically everywhere, with the same message.
``fit``'s defaults are plain (a constant learning rate, no clipping, no EMA); a run
configuration's defaults (``run_default``) are the tuned digits run of ``pyrodiff train``.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from typing import Any

import torch

from ..errors import ConfigError
from ..validation import AUTO, Option, OptionSet

__all__ = [
    "MIN_EVAL_EVERY",
    "OPTIONS",
    "LRSchedule",
    "Precision",
    "check_options",
    "check_warmup",
    "default_warmup",
    "learning_rate",
]


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


# --- the schema ---------------------------------------------------------------------------------

MIN_EVAL_EVERY = 100
"""A run configuration's default evaluation interval is never shorter: one evaluation of the
digits' validation split at T = 100 costs about as much as 50 updates, so a short run
evaluates only at its end."""

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def _device(value: Any, text: bool) -> Any:
    # from Python a torch.device is a device too; a file or a flag holds its name
    if isinstance(value, torch.device) and not text:
        return value
    if not isinstance(value, str) or not _DEVICE_RE.match(value):
        raise ConfigError(
            f"unknown device {value!r}; expected auto, cpu, cuda or cuda:N", fields=("device",)
        )
    return value


OPTIONS = OptionSet(
    Option("updates", int, "optimizer updates", default=1000, run_default=1500, low=1),
    Option("batch_size", int, "data per update", default=128, low=1),
    Option("lr", float, "peak learning rate", default=1e-3, run_default=2e-3, low=0, low_open=True),
    Option(
        "lr_schedule",
        LRSchedule,
        "learning-rate schedule",
        default=LRSchedule.CONSTANT,
        run_default=LRSchedule.WARMUP_COSINE,
    ),
    Option(
        "warmup_steps",
        int,
        "linear warm-up updates (default: updates // 20 for warmup_cosine, else none; 0: none)",
        default=None,
        run_default=AUTO,
        low=0,
        nullable=True,
        off=0,
    ),
    Option("weight_decay", float, "AdamW weight decay", default=0.0, low=0),
    Option(
        "grad_clip",
        float,
        "clip the gradient norm at this value (None: no clipping)",
        default=None,
        run_default=1.0,
        low=0,
        low_open=True,
        nullable=True,
        off=None,
    ),
    Option(
        "ema_decay",
        float,
        "EMA decay of the parameters, used for evaluation (None: no EMA)",
        default=None,
        run_default=0.995,
        low=0,
        high=1,
        low_open=True,
        high_open=True,
        nullable=True,
        off=None,
    ),
    Option("seed", int, "random seed", default=0, low=0),
    Option("device", str, "auto, cpu, cuda or cuda:N", default="auto", parse=_device),
    Option("precision", Precision, "loss arithmetic", default=Precision.FP32),
    Option(
        "eval_every",
        int,
        f"validation-split evaluation every N updates (default: updates // 5, at least "
        f"{MIN_EVAL_EVERY}; 0: only at the end); the test split is evaluated once, at the end",
        default=None,
        run_default=AUTO,
        low=0,
        nullable=True,
        off=0,
    ),
    Option(
        "eval_batch_budget",
        int,
        "network inputs alive at once during evaluation",
        default=4096,
        low=1,
    ),
    Option(
        "checkpoint_every",
        int,
        "checkpoint every N updates (default: updates // 10; 0: only at the end)",
        default=None,
        run_default=AUTO,
        low=0,
        nullable=True,
        off=0,
    ),
    Option(
        "log_every",
        int,
        "a training record every N updates, holding their mean loss",
        default=1,
        low=1,
    ),
)
"""Every training option. ``log_every`` is ``fit``'s alone (a run folder records every update);
the others are also fields of :class:`~pyrodiff.config.RunConfig` and ``pyrodiff train`` flags.
For ``eval_every`` and ``checkpoint_every``, 0 means "only at the end" everywhere; ``None``
means the same to ``fit`` and "choose from ``updates``" to a run configuration."""


def check_warmup(warmup_steps: int | None, updates: int, lr_schedule: LRSchedule) -> None:
    """The warm-up fits in the run: at most ``updates``, and for WARMUP_COSINE fewer, so that
    the cosine has an update to decay over."""
    if warmup_steps is None:
        return
    fields = ("warmup_steps", "updates")
    if lr_schedule is LRSchedule.WARMUP_COSINE and warmup_steps >= updates:
        raise ConfigError(
            f"warmup_steps ({warmup_steps}) must be smaller than updates ({updates}) for the "
            "warmup_cosine schedule",
            fields=fields,
        )
    if warmup_steps > updates:
        raise ConfigError(
            f"warmup_steps must be an integer in [0, updates = {updates}], got {warmup_steps}",
            fields=fields,
        )


def check_options(values: Mapping[str, Any], text: bool = False) -> dict[str, Any]:
    """The training options in ``values`` checked against :data:`OPTIONS` (converted where
    ``text`` allows it: enums by name from a file or a flag), then the rules between them.
    Raises ConfigError, one line naming the option and what it expects."""
    checked = {name: OPTIONS[name].check(value, text) for name, value in values.items()}
    if {"warmup_steps", "updates", "lr_schedule"} <= checked.keys():
        check_warmup(checked["warmup_steps"], checked["updates"], checked["lr_schedule"])
    return checked
