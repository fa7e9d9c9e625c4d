"""One SVI update: the learning rate, the loss, the gradient, the guards and the optimizer step."""

from __future__ import annotations

import contextlib
import enum
import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .guards import is_refused_non_finite
from .options import LRSchedule, Precision, learning_rate
from .state import TrainState

__all__ = ["Divergence", "Phase", "StepResult", "take_step"]


class Phase(enum.Enum):
    """Where an update stands, which decides what a KeyboardInterrupt may checkpoint."""

    BEFORE = "before"
    """Parameters untouched: roll the random streams back to the update's start and save."""
    DURING = "during"
    """The optimizer may have changed some parameters: save nothing, keep the last checkpoint."""
    AFTER = "after"
    """Everything is consistent with the step count: save as is."""


class Divergence(Exception):
    """Raised by :func:`take_step` when the loss or the gradient is not finite; ``fit`` turns it
    into a :class:`~pyrodiff.errors.NonFiniteError` that says which checkpoint is kept."""

    def __init__(self, what: str, value: float, lr: float) -> None:
        super().__init__(what)
        self.what, self.value, self.lr = what, value, lr


class StepResult(NamedTuple):
    """One update's summed negative ELBO of the batch and the learning rate it used."""

    loss: float
    lr: float


def take_step(
    ts: TrainState,
    train_module: nn.Module,
    clip_groups: list[list[nn.Parameter]],
    batch: Tensor,
    *,
    lr: float,
    lr_schedule: LRSchedule,
    updates: int,
    warmup_steps: int,
    grad_clip: float | None,
    precision: Precision,
    phase: list[Phase],
) -> StepResult:
    """One update of ``ts`` on ``batch``; ``phase[0]`` follows it (see :class:`Phase`).

    ``grad_clip`` clips the gradient norm of each group of ``clip_groups`` separately (one
    group: the global norm). Raises :class:`Divergence` before the optimizer moves when the loss
    or the gradient norm is NaN/inf (or a distribution refused NaN parameters).
    """
    lr_now = learning_rate(lr_schedule, lr, ts.step, updates, warmup_steps)
    for group in ts.optimizer.param_groups:
        group["lr"] = lr_now
    ts.optimizer.zero_grad(set_to_none=True)
    try:
        with _autocast(precision, batch.device):
            loss_value = train_module(batch)
    except ValueError as exc:
        if not is_refused_non_finite(exc):
            raise
        what = "distribution parameter: " + str(exc).splitlines()[0][:120]
        raise Divergence(what, math.nan, lr_now) from exc
    # backward before any check: in a distributed run it is where the ranks meet, so every
    # rank reaches the checks below with the same (all-reduced) gradients
    loss_value.backward()
    # one read-back per update, for the loss and the gradient norm together
    norm_t = _grad_norm(clip_groups, grad_clip, like=loss_value)
    loss_float, norm = torch.stack([loss_value.detach(), norm_t]).tolist()
    if not math.isfinite(loss_float):
        raise Divergence("loss", loss_float, lr_now)
    if not math.isfinite(norm):
        raise Divergence("gradient norm", norm, lr_now)
    phase[0] = Phase.DURING
    ts.optimizer.step()
    if ts.ema is not None:
        ts.ema.update()
    ts.step += 1
    phase[0] = Phase.AFTER
    return StepResult(loss_float, lr_now)


def _grad_norm(groups: list[list[nn.Parameter]], clip: float | None, like: Tensor) -> Tensor:
    """The global gradient norm (before clipping) as a tensor like the loss, each group clipped
    to ``clip`` first if asked; NaN/inf when any gradient is."""
    norms = []
    for params in groups:
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            continue
        if clip is not None:
            norms.append(torch.nn.utils.clip_grad_norm_(params, clip))
        else:
            norms.append(torch.nn.utils.get_total_norm(grads))
    if not norms:
        return torch.zeros((), dtype=like.dtype, device=like.device)
    norm = norms[0] if len(norms) == 1 else torch.stack(norms).norm()
    return norm.detach().to(device=like.device, dtype=like.dtype)


def _autocast(precision: Precision, dev: torch.device):
    if precision is Precision.BF16:
        return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
