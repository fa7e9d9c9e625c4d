"""The rules between a run configuration's fields: which model, guide, objective, timestep
sampler and variance go together. Each refusal is one line naming the fields and what fits."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ConfigError
from ..models.diffusion import ReverseVariance
from .kinds import TIMESTEP_OBJECTIVES, GuideKind, ModelKind, Objective

if TYPE_CHECKING:
    from .run import RunConfig

__all__ = ["LEARNED_VARIANCES", "check_combination"]

LEARNED_VARIANCES = (ReverseVariance.LEARNED_RANGE, ReverseVariance.PER_STEP)
"""The reverse variances with parameters. The hybrid objective trains the variance from the
bound (improved DDPM's L_vlb with the mean detached): with a fixed one (beta, posterior) that
part has no gradient and the hybrid is L_simple plus a constant."""


def check_combination(config: RunConfig) -> None:
    """Raise ConfigError unless the model, guide, objective, timesteps and variance fit."""
    from ..guides import ForwardGuide, LearnedGuide, LearnedScheduleGuide, has_closed_forms

    guide_class = {
        GuideKind.FIXED: ForwardGuide,
        GuideKind.LEARNED: LearnedGuide,
        GuideKind.LEARNED_SCHEDULE: LearnedScheduleGuide,
    }[config.guide]
    closed = has_closed_forms(guide_class)
    if config.model is ModelKind.CONTINUOUS:
        if config.guide is not GuideKind.FIXED:
            raise ConfigError(
                f"model continuous learns its schedule inside the model and needs guide "
                f"fixed (the forward process), got guide {config.guide.value}",
                fields=("guide",),
            )
        if config.objective is not Objective.ELBO:
            raise ConfigError(
                f"model continuous trains on its T = ∞ bound, objective elbo, "
                f"got {config.objective.value}",
                fields=("objective",),
            )
        if config.num_steps < 2:
            raise ConfigError(
                f"model continuous is read at T >= 2 steps, got {config.num_steps}",
                fields=("num_steps",),
            )
    if config.model is ModelKind.HVAE:
        if config.guide is not GuideKind.LEARNED:
            raise ConfigError(
                f"model hvae needs guide learned (its latents are not a noising chain), "
                f"got guide {config.guide.value}"
            )
        if config.objective not in (Objective.TRACE_ELBO, Objective.TRACE_MEAN_FIELD_ELBO):
            raise ConfigError(
                f"model hvae trains with objective trace_elbo or trace_mean_field_elbo, "
                f"got {config.objective.value}"
            )
    elif config.objective in TIMESTEP_OBJECTIVES and not closed:
        raise ConfigError(
            f"objective {config.objective.value} needs a guide with closed-form marginals "
            f"(fixed or learned_schedule), got guide {config.guide.value}; "
            "use objective trace_elbo or trace_mean_field_elbo with a learned guide"
        )
    if config.timesteps is not None and config.objective not in TIMESTEP_OBJECTIVES:
        raise ConfigError(
            f"timesteps {config.timesteps.value} applies to the objectives "
            f"{', '.join(o.value for o in TIMESTEP_OBJECTIVES)}, not {config.objective.value}"
        )
    if (
        config.objective in (Objective.SIMPLE, Objective.HYBRID)
        and config.guide is not GuideKind.FIXED
    ):
        raise ConfigError(
            f"objective {config.objective.value} weights the forward chain's own terms and "
            f"needs guide fixed, got {config.guide.value}"
        )
    if config.objective is Objective.HYBRID and config.variance not in LEARNED_VARIANCES:
        raise ConfigError(
            "objective hybrid trains the reverse variance from the bound and needs a learned "
            f"variance ({' or '.join(v.value for v in LEARNED_VARIANCES)}), "
            f"got {config.variance.value}"
        )
