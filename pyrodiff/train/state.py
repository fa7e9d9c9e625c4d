"""Everything a checkpoint must hold to continue a run exactly, and how it goes back in place."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pyro.infer import ELBO
from torch import nn

from ..checkpoint import restore_weights
from ..errors import CheckpointError
from .ema import EMA
from .rng import encode_rng, restore_rng
from .sampler import EpochSampler

__all__ = ["TrainState", "stateful_parts"]


def stateful_parts(loss: ELBO) -> dict[str, Any]:
    """Parts of the estimator that learn as training goes (an adaptive timestep sampler, say):
    anything with ``state_dict`` / ``load_state_dict`` is checkpointed under ``extra``."""
    parts = {}
    for name, obj in (("loss", loss), ("timesteps", getattr(loss, "timesteps", None))):
        if callable(getattr(obj, "state_dict", None)) and callable(
            getattr(obj, "load_state_dict", None)
        ):
            parts[name] = obj
    return parts


def _empty_accumulator() -> dict[str, float]:
    return {"loss_sum": 0.0, "count": 0}


@dataclass
class TrainState:
    """The mutable state of a run: parameters, optimizer, EMA, batch order, step, and the
    losses accumulated since the last training record."""

    model: nn.Module
    guide: nn.Module
    optimizer: torch.optim.Optimizer
    ema: EMA | None
    sampler: EpochSampler
    stateful: dict[str, Any]
    lr_schedule: dict[str, Any]
    model_config: dict[str, Any] | None
    config: dict[str, Any] | None
    step: int = 0
    acc: dict[str, float] = field(default_factory=_empty_accumulator)

    def accumulate(self, loss: float) -> None:
        self.acc["loss_sum"] += loss
        self.acc["count"] += 1

    def pop_mean_loss(self) -> float:
        mean = self.acc["loss_sum"] / self.acc["count"]
        self.acc = _empty_accumulator()
        return mean

    def to_checkpoint(self, rng: dict[str, Any]) -> dict[str, Any]:
        """The checkpoint entries (see :mod:`pyrodiff.checkpoint`), with ``rng`` a snapshot
        from :func:`~pyrodiff.train.rng.capture_rng` taken at this state."""
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "guide": self.guide.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_schedule": dict(self.lr_schedule, last_step=self.step),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": encode_rng(rng),
            "sampler": self.sampler.state_dict(),
            "model_config": self.model_config,
            "config": self.config,
            "extra": {
                "log_accumulator": dict(self.acc),
                **{name: obj.state_dict() for name, obj in self.stateful.items()},
            },
        }

    def restore(self, state: dict[str, Any], path: Path, streams: bool = True) -> None:
        """Put a checkpoint's state back. With ``streams=False`` the random streams and the batch
        order are left as seeded (the non-main ranks of a distributed run, whose own streams
        the checkpoint does not hold)."""
        restore_weights(self.model, self.guide, state, use_ema=False)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(
                f"checkpoint {path}: its optimizer state does not fit these parameters "
                f"({str(exc).splitlines()[0]})"
            ) from None
        if self.ema is not None:
            if state.get("ema") is None:
                raise CheckpointError(f"checkpoint {path} has no EMA, but ema_decay is set now")
            self.ema.load_state_dict(state["ema"])
        if streams:
            if "sampler" not in state or "rng" not in state:
                raise CheckpointError(f"checkpoint {path} lacks the random state needed to resume")
            self.sampler.load_state_dict(state["sampler"])
            restore_rng(state["rng"])
        extra = state.get("extra", {})
        for name, obj in self.stateful.items():
            if name in extra:
                obj.load_state_dict(extra[name])
        self.acc = dict(extra.get("log_accumulator", _empty_accumulator()))
        self.step = int(state["step"])
