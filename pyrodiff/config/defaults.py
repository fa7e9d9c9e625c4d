"""The defaults that are rules: a run configuration's fields left unset take the values that fit
the fields that were given (an hvae's guide is learned; the warm-up follows ``updates``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..train.options import MIN_EVAL_EVERY, OPTIONS, default_warmup
from ..validation import AUTO
from .fields import CONTINUOUS_NUM_STEPS, DIFFUSION_NUM_STEPS, FIELDS, HVAE_NUM_STEPS
from .kinds import GuideKind, ModelKind, Objective

if TYPE_CHECKING:
    from .run import RunConfig

__all__ = ["AUTO_FIELDS", "choose"]

AUTO_FIELDS = tuple(
    name for name, spec in {**FIELDS, **OPTIONS}.items() if spec.default_for_run is AUTO
)
"""The fields whose default is chosen to fit the others: ``guide``, ``num_steps``,
``objective``, ``warmup_steps``, ``eval_every``, ``checkpoint_every``."""


def choose(config: RunConfig, unset: tuple[str, ...]) -> dict[str, Any]:
    """The values of the ``unset`` fields of ``config``, each seeing the ones it depends on."""
    chosen: dict[str, Any] = {}
    hvae = config.model is ModelKind.HVAE
    continuous = config.model is ModelKind.CONTINUOUS
    if "guide" in unset:
        chosen["guide"] = GuideKind.LEARNED if hvae else GuideKind.FIXED
    guide = chosen.get("guide", config.guide)
    if "objective" in unset:
        # the amortised guides have no closed forms: they need the literal chain
        traced = hvae or guide is GuideKind.LEARNED
        chosen["objective"] = Objective.TRACE_ELBO if traced else Objective.ELBO
    if "num_steps" in unset:
        chosen["num_steps"] = (
            HVAE_NUM_STEPS if hvae else CONTINUOUS_NUM_STEPS if continuous else DIFFUSION_NUM_STEPS
        )
    if "warmup_steps" in unset:
        chosen["warmup_steps"] = default_warmup(config.lr_schedule, config.updates)
    if "eval_every" in unset:
        chosen["eval_every"] = max(MIN_EVAL_EVERY, config.updates // 5)
    if "checkpoint_every" in unset:
        chosen["checkpoint_every"] = max(1, config.updates // 10)
    return chosen
