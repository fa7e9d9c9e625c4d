"""The rules between a run configuration's fields: which model, guide, objective, timestep
sampler and variance go together. Each refusal is one line naming the fields and what fits."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ConfigError
from ..models.diffusion import ReverseVariance
from .kinds import TIMESTEP_OBJECTIVES, GuideKind, ModelKind, Objective

if TYPE_CHECKING:
    from .run import RunConfig

__all__ = ["ADAPTIVE_OBJECTIVES", "ADAPTIVE_VARIANCES", "LEARNED_VARIANCES", "check_combination"]

LEARNED_VARIANCES = (ReverseVariance.LEARNED_RANGE, ReverseVariance.PER_STEP)
"""The reverse variances with parameters. The hybrid objective trains the variance from the
bound (improved DDPM's L_vlb with the mean detached): with a fixed one (beta, posterior) that
part has no gradient and the hybrid is L_simple plus a constant."""


ADAPTIVE_OBJECTIVES = (Objective.ELBO, Objective.TRACE_ELBO)
"""What guide adaptive trains on: its bound at one network call per datum (elbo), or, with a
latent z and model diffusion, Trace_ELBO on its literal T-step chain. The others weight the
fixed chain's own terms (simple, hybrid) or need the discrete reverse kernels of a Diffusion."""

ADAPTIVE_VARIANCES = (ReverseVariance.LEARNED_RANGE, ReverseVariance.POSTERIOR)
"""The variance values guide adaptive accepts: its reverse kernels are the forward posterior
at x̂ (VDM's), so there is no variance to choose; the default (learned_range, which a
continuous-time model does not read) and posterior (what the kernels are) are let through."""


def check_combination(config: RunConfig) -> None:
    """Raise ConfigError unless the model, guide, objective, timesteps and variance fit."""
    if config.guide is GuideKind.ADAPTIVE:
        _check_adaptive(config)
        return
    from ..guides import ForwardGuide, LearnedGuide, LearnedScheduleGuide, has_closed_forms

    guide_class = {
        GuideKind.FIXED: ForwardGuide,
        GuideKind.LEARNED: LearnedGuide,
        GuideKind.LEARNED_SCHEDULE: LearnedScheduleGuide,
    }[config.guide]
    closed = has_closed_forms(guide_class)
    if config.model is ModelKind.HVAE and config.latent_dim == 0:
        raise ConfigError(
            "model hvae needs latent_dim >= 1 (left out: the data's dimension), got 0",
            fields=("model", "latent_dim"),
        )
    if config.model is ModelKind.CONTINUOUS:
        if config.guide is not GuideKind.FIXED:
            raise ConfigError(
                f"model continuous learns its schedule inside the model and needs guide "
                f"fixed (the forward process) or adaptive, got guide {config.guide.value}",
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


def _check_adaptive(config: RunConfig) -> None:
    """guide adaptive: a diffusion model (T steps) or a continuous one (T = ∞), its own
    objectives and variance."""
    if config.model is ModelKind.HVAE:
        raise ConfigError(
            "guide adaptive needs model diffusion (its T-step bound) or model continuous "
            "(T = ∞), got model hvae",
            fields=("guide", "model"),
        )
    if config.objective not in ADAPTIVE_OBJECTIVES:
        raise ConfigError(
            "guide adaptive trains with objective elbo (one network call per datum) or "
            f"trace_elbo (its literal chain), got {config.objective.value}",
            fields=("guide", "objective"),
        )
    if config.objective is Objective.TRACE_ELBO:
        if config.model is not ModelKind.DIFFUSION:
            raise ConfigError(
                "objective trace_elbo with guide adaptive runs the literal T-step chain of "
                "model diffusion; model continuous trains on its T = ∞ bound (objective elbo)",
                fields=("objective", "guide", "model"),
            )
        if config.latent_dim == 0:
            raise ConfigError(
                "objective trace_elbo with guide adaptive needs a latent z (latent_dim >= 1); "
                "without z the schedule per dimension trains on objective elbo",
                fields=("objective", "guide", "latent_dim"),
            )
    if config.timesteps is not None and config.objective not in TIMESTEP_OBJECTIVES:
        raise ConfigError(
            f"timesteps {config.timesteps.value} applies to the objectives "
            f"{', '.join(o.value for o in TIMESTEP_OBJECTIVES)}, not {config.objective.value}"
        )
    if config.variance not in ADAPTIVE_VARIANCES:
        raise ConfigError(
            "guide adaptive's reverse kernels are the forward posterior at the denoiser's "
            f"prediction, so variance {config.variance.value} does not apply; leave variance "
            "out or give posterior",
            fields=("guide", "variance"),
        )
    if config.num_steps < 2:
        raise ConfigError(
            f"guide adaptive runs a chain of num_steps >= 2, got {config.num_steps}",
            fields=("guide", "num_steps"),
        )
