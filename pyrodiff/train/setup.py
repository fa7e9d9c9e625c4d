"""fit's boundary: options and data are checked, once, before anything is trained or written."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..data import Dataset
from ..errors import ConfigError, DataError
from ..validation import check_data
from .options import LRSchedule, Precision
from .rng import capture_rng, restore_rng

__all__ = ["TrainData", "check_options", "resolve_data", "create_lazy_params"]


@dataclass(frozen=True)
class TrainData:
    """The tensors fit works on, on the training device and in the parameters' dtype:
    ``validation`` is evaluated during training, ``test`` once at the end."""

    train: Tensor
    validation: Tensor | None
    test: Tensor | None
    num_levels: int | None


def _positive_int(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_options(
    *,
    updates: Any,
    batch_size: Any,
    lr: Any,
    lr_schedule: Any,
    warmup_steps: Any,
    weight_decay: Any,
    grad_clip: Any,
    ema_decay: Any,
    seed: Any,
    precision: Any,
    eval_every: Any,
    eval_batch_budget: Any,
    log_every: Any,
    run_dir: Any,
    checkpoint_every: Any,
    resume: Any,
    config: Any,
) -> None:
    """Raise :class:`ConfigError` (one line: what is wrong, what was expected) for a bad option."""
    for name, value in (
        ("updates", updates),
        ("batch_size", batch_size),
        ("log_every", log_every),
        ("eval_batch_budget", eval_batch_budget),
    ):
        _positive_int(name, value)
    _positive_int("eval_every", eval_every, allow_none=True)
    _positive_int("checkpoint_every", checkpoint_every, allow_none=True)
    if not _number(lr) or lr <= 0:
        raise ConfigError(f"lr must be a positive finite number, got {lr!r}")
    if not _number(weight_decay) or weight_decay < 0:
        raise ConfigError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    if grad_clip is not None and (not _number(grad_clip) or grad_clip <= 0):
        raise ConfigError(f"grad_clip must be None or a positive number, got {grad_clip!r}")
    if ema_decay is not None and (not _number(ema_decay) or not 0.0 < ema_decay < 1.0):
        raise ConfigError(f"ema_decay must be None or a number in (0, 1), got {ema_decay!r}")
    if not isinstance(lr_schedule, LRSchedule):
        names = ", ".join(f"LRSchedule.{s.name}" for s in LRSchedule)
        raise ConfigError(f"lr_schedule must be an LRSchedule ({names}), got {lr_schedule!r}")
    if not isinstance(precision, Precision):
        names = ", ".join(f"Precision.{p.name}" for p in Precision)
        raise ConfigError(f"precision must be a Precision ({names}), got {precision!r}")
    if warmup_steps is not None and (
        isinstance(warmup_steps, bool)
        or not isinstance(warmup_steps, int)
        or not 0 <= warmup_steps <= updates
    ):
        raise ConfigError(
            f"warmup_steps must be an integer in [0, updates={updates}], got {warmup_steps!r}"
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    if run_dir is None and (resume or checkpoint_every is not None):
        what = "resume" if resume else "checkpoint_every"
        raise ConfigError(f"{what} needs a run_dir to hold the checkpoint")
    if config is not None:
        if not isinstance(config, dict):
            raise ConfigError(f"config must be a dict, got {type(config).__name__}")
        try:
            json.dumps(config, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"config must be JSON-able (plain values only): {exc}") from None


def resolve_data(
    model: nn.Module,
    data: Dataset | Tensor,
    eval_data: Tensor | None,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype,
    shard: Tensor | None = None,
) -> TrainData:
    """Check the data against the model and move it; ``shard`` selects this rank's indices.
    ``eval_data`` replaces the validation split."""
    if isinstance(data, Dataset):
        train, validation, test = data.train, data.validation, data.test
        levels = data.num_levels
    elif isinstance(data, Tensor):
        train, validation, test, levels = data, None, None, None
    else:
        raise DataError(
            f"data must be a pyrodiff.data.Dataset or a torch.Tensor, got {type(data).__name__}"
        )
    if eval_data is not None:
        validation = eval_data
    event_shape = getattr(model, "event_shape", None) or tuple(train.shape[1:])
    likelihood = getattr(model, "likelihood", None)
    check_data(train, tuple(event_shape), likelihood, name="training data")
    for name, held_out in (("validation data", validation), ("test data", test)):
        if held_out is not None:
            check_data(held_out, tuple(event_shape), likelihood, name=name)
    if shard is not None:
        train = train[shard]
    if batch_size > train.shape[0]:
        where = "this rank's shard of the" if shard is not None else "the"
        raise DataError(
            f"batch_size {batch_size} is larger than {where} {train.shape[0]} training data; "
            f"expected at most {train.shape[0]}"
        )
    to = {"device": device, "dtype": dtype}
    return TrainData(
        train.to(**to),
        validation.to(**to) if validation is not None else None,
        test.to(**to) if test is not None else None,
        levels,
    )


def create_lazy_params(
    loss_module: nn.Module, x: Tensor, stateful: dict[str, Any] | None = None
) -> None:
    """Run the loss once so that guides creating parameters on their first call (autoguides)
    have them before the optimizer is built. The random state, and the state of the estimator's
    learning parts (``stateful``: an adaptive timestep sampler's history), are left exactly as
    they were: this call is not a training step."""
    snap = capture_rng()
    saved = {name: copy.deepcopy(obj.state_dict()) for name, obj in (stateful or {}).items()}
    try:
        with torch.no_grad():
            loss_module(x)
    finally:
        restore_rng(snap)
        for name, obj in (stateful or {}).items():
            obj.load_state_dict(saved[name])
