"""The one place that turns a run configuration into ``(model, guide, dataset, loss)``."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import nn

from ..errors import ConfigError, PyrodiffError
from ..models.diffusion import ReverseVariance
from ..validation import check_batch_size
from .fields import ADAPTIVE_LATENT_DIM
from .kinds import GuideKind, ModelKind, NetworkKind, Objective, ScheduleKind, TimestepKind
from .run import RunConfig

__all__ = [
    "CONTINUOUS_GAMMA_ENDS",
    "CONTINUOUS_LOG_SNR_ENDS",
    "FOURIER_EXPONENTS",
    "Built",
    "adaptive_latent_dim",
    "build",
    "build_denoiser",
    "build_guide",
    "build_loss",
    "build_model",
    "build_schedule",
    "build_timesteps",
    "load_data",
]

CONTINUOUS_LOG_SNR_ENDS = (13.3, -5.0)
"""λ(0), λ(1) where a continuous model's learned log-SNR schedule starts (VDM's ends): at a
log-SNR of 13.3 the noise is far below one grey level of 8-bit data, at −5 the prior KL is
negligible."""

CONTINUOUS_GAMMA_ENDS = tuple(-v for v in CONTINUOUS_LOG_SNR_ENDS)
"""Deprecated: the same ends as γ = −λ (:data:`CONTINUOUS_LOG_SNR_ENDS`)."""

FOURIER_EXPONENTS = (3, 4, 5)
"""Fourier features sin/cos(2^n π x) of quantised data for a continuous model: they resolve
the spacing of 17 grey levels on [−1, 1] (docs/continuous.md)."""


class Built(NamedTuple):
    """What :func:`build` returns; unpacks as ``model, guide, dataset, loss``."""

    model: nn.Module
    guide: nn.Module
    dataset: Any
    loss: Any


def load_data(config: RunConfig, dtype=None):
    """The data set named by ``config.data`` (:func:`pyrodiff.data.get_dataset`)."""
    from ..data import get_dataset

    kwargs: dict[str, Any] = {}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if config.num_levels is not None:
        if not config.data.lower().endswith((".npy", ".npz")):
            raise ConfigError(
                f"num_levels applies to a .npy/.npz file, not the built-in data set {config.data!r}",
                fields=("num_levels",),
            )
        kwargs["num_levels"] = config.num_levels
    return get_dataset(config.data, **kwargs)


def build_schedule(config: RunConfig):
    """The forward chain's :class:`~pyrodiff.NoiseSchedule` with T = ``config.num_steps``."""
    from ..schedules import cosine_schedule, linear_schedule

    if config.schedule is ScheduleKind.COSINE:
        return cosine_schedule(config.num_steps)
    return linear_schedule(config.num_steps)


def build_denoiser(
    config: RunConfig,
    event_shape: tuple[int, ...],
    fourier_exponents: tuple[int, ...] = (),
    latent_dim: int = 0,
) -> nn.Module:
    """The denoiser for data of shape ``event_shape``; twice the outputs for a learned variance
    (discrete models only); ``fourier_exponents`` adds Fourier features of its input;
    ``latent_dim`` > 0 gives it a latent input z (the adaptive guide's)."""
    from ..networks import MLPDenoiser, UNetDenoiser

    kind = config.network
    if kind is NetworkKind.AUTO:
        kind = NetworkKind.UNET if len(event_shape) == 3 else NetworkKind.MLP
    doubled = (
        config.variance is ReverseVariance.LEARNED_RANGE
        and config.model is not ModelKind.CONTINUOUS
        and config.guide is not GuideKind.ADAPTIVE
    )
    if kind is NetworkKind.UNET:
        if len(event_shape) != 3:
            raise ConfigError(
                f"network unet needs image data shaped (C, H, W), got data of shape {event_shape}"
            )
        c, h, w = event_shape
        return UNetDenoiser(
            channels=c,
            image_size=(h, w),
            base=config.width or 32,
            out_channels=2 * c if doubled else c,
            fourier_exponents=fourier_exponents,
            latent_dim=latent_dim,
            dropout=config.dropout,
        )
    if len(event_shape) != 1:
        raise ConfigError(
            f"network mlp needs vector data shaped (D,), got data of shape {event_shape}; "
            "use network unet for images"
        )
    (d,) = event_shape
    return MLPDenoiser(
        d,
        hidden=config.width or 128,
        depth=config.depth,
        out_dim=2 * d if doubled else None,
        fourier_exponents=fourier_exponents,
        latent_dim=latent_dim,
        dropout=config.dropout,
    )


def build_model(config: RunConfig, dataset) -> nn.Module:
    """The generative model for ``dataset`` (its shape and its likelihood)."""
    if config.model is ModelKind.HVAE:
        from ..models import HierarchicalVAE

        size = config.latent_dim or math.prod(dataset.event_shape)
        return HierarchicalVAE(
            dataset.event_shape,
            latent_dims=(size,) * config.num_steps,
            likelihood=dataset.likelihood(),
            hidden=config.width or 128,
        )
    if config.guide is GuideKind.ADAPTIVE:
        return _adaptive_model(config, dataset)
    if config.model is ModelKind.CONTINUOUS:
        from ..models import ContinuousDiffusion
        from ..schedules import Endpoints, LearnedLogSNR

        quantised = dataset.num_levels is not None
        return ContinuousDiffusion(
            build_denoiser(config, dataset.event_shape, FOURIER_EXPONENTS if quantised else ()),
            LearnedLogSNR(
                log_snr_start=CONTINUOUS_LOG_SNR_ENDS[0],
                log_snr_end=CONTINUOUS_LOG_SNR_ENDS[1],
                endpoints=Endpoints.LEARNED,
            ),
            likelihood=dataset.likelihood(),
            parameterization=config.parameterization,
            event_shape=dataset.event_shape,
            num_steps=config.num_steps,
        )
    from ..models import Diffusion

    return Diffusion(
        build_denoiser(config, dataset.event_shape),
        build_schedule(config),
        likelihood=dataset.likelihood(),
        parameterization=config.parameterization,
        variance=config.variance,
        event_shape=dataset.event_shape,
    )


def adaptive_latent_dim(config: RunConfig) -> int:
    """The size of guide adaptive's latent z: ``latent_dim``, or
    :data:`~pyrodiff.config.fields.ADAPTIVE_LATENT_DIM` when it is not given (0: no z)."""
    return ADAPTIVE_LATENT_DIM if config.latent_dim is None else config.latent_dim


def _adaptive_model(config: RunConfig, dataset) -> nn.Module:
    """guide adaptive's model: an :class:`~pyrodiff.models.AdaptiveDiffusion` over a
    :class:`~pyrodiff.schedules.MultivariateLogSNR` with one curve per dimension of the data
    and a latent z of ``latent_dim`` (VDM's ends, learned), or, for ``latent_dim`` = 0, a
    :class:`~pyrodiff.models.ContinuousDiffusion` over the same schedule without z. The
    denoiser is the continuous model's (Fourier features for quantised data) with z as an
    input, and is told t: with a curve per dimension there is no single noise level to tell
    it. T = ``num_steps`` is the chain the model samples, and the bound of model diffusion."""
    from ..models import AdaptiveDiffusion, Conditioning, ContinuousDiffusion
    from ..schedules import Endpoints, MultivariateLogSNR

    shape = tuple(dataset.event_shape)
    latent_dim = adaptive_latent_dim(config)
    fourier = FOURIER_EXPONENTS if dataset.num_levels is not None else ()
    schedule = MultivariateLogSNR(
        shape,
        latent_dim,
        log_snr_start=CONTINUOUS_LOG_SNR_ENDS[0],
        log_snr_end=CONTINUOUS_LOG_SNR_ENDS[1],
        endpoints=Endpoints.LEARNED,
    )
    denoiser = build_denoiser(config, shape, fourier, latent_dim=latent_dim)
    common = {
        "likelihood": dataset.likelihood(),
        "parameterization": config.parameterization,
        "event_shape": shape,
        "num_steps": config.num_steps,
    }
    if latent_dim:
        return AdaptiveDiffusion(denoiser, schedule, latent_dim, **common)
    return ContinuousDiffusion(denoiser, schedule, conditioning=Conditioning.TIME, **common)


def build_guide(config: RunConfig, model: nn.Module) -> nn.Module:
    """The guide for ``model``: the forward chain over the model's own schedule, a learned
    schedule starting from it, or an amortised learned guide."""
    from ..guides import ForwardGuide

    if config.model is ModelKind.HVAE:
        from ..guides import HierarchicalVAEGuide

        return HierarchicalVAEGuide(model, hidden=config.guide_hidden)
    if config.guide is GuideKind.ADAPTIVE and adaptive_latent_dim(config):
        from ..guides import AdaptiveNoiseGuide

        return AdaptiveNoiseGuide.for_model(model, hidden=config.guide_hidden)
    if config.model is ModelKind.CONTINUOUS or config.guide is GuideKind.ADAPTIVE:
        from ..guides import ContinuousForwardGuide

        return ContinuousForwardGuide()
    if config.guide is GuideKind.FIXED:
        return ForwardGuide(model.schedule)
    if config.guide is GuideKind.LEARNED_SCHEDULE:
        from ..guides.schedule import LearnedScheduleGuide

        return LearnedScheduleGuide(model.schedule)
    from ..guides.learned import LearnedGuide

    return LearnedGuide(model, hidden=config.guide_hidden)


def build_timesteps(config: RunConfig):
    """The timestep sampler of a timestep-sampled objective."""
    from ..infer import timesteps as ts

    classes = {
        TimestepKind.UNIFORM: ts.UniformTimesteps,
        TimestepKind.STRATIFIED: ts.StratifiedTimesteps,
        TimestepKind.LOW_DISCREPANCY: ts.LowDiscrepancyTimesteps,
        TimestepKind.ANTITHETIC: ts.AntitheticTimesteps,
        TimestepKind.IMPORTANCE: ts.ImportanceTimesteps,
    }
    # importance-sampled t measured best on the digits (docs/objectives.md)
    return classes[config.timesteps or TimestepKind.IMPORTANCE]()


def build_loss(config: RunConfig):
    """The Pyro objective named by ``config.objective``."""
    from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

    if config.objective is Objective.TRACE_ELBO:
        return Trace_ELBO()
    if config.objective is Objective.TRACE_MEAN_FIELD_ELBO:
        return TraceMeanField_ELBO()
    if config.guide is GuideKind.ADAPTIVE:
        from ..infer import ContinuousELBO, DiffusionELBO
        from ..infer.timesteps import LowDiscrepancyTimesteps

        if config.model is ModelKind.DIFFUSION:
            # a continuous-time model's T-step bound at T = num_steps, one network call per datum
            return DiffusionELBO(timesteps=build_timesteps(config))
        # T = ∞; a schedule per dimension moves the bound with its interior, so the whole
        # schedule trains on the bound (ScheduleObjective.BOUND), as MuLAN's does
        sampler = build_timesteps(config) if config.timesteps else LowDiscrepancyTimesteps()
        return ContinuousELBO(timesteps=sampler)
    if config.model is ModelKind.CONTINUOUS:
        from ..infer import ContinuousELBO, ScheduleObjective
        from ..infer.timesteps import LowDiscrepancyTimesteps

        # low-discrepancy t as VDM; the schedule's interior minimises the estimator's variance
        sampler = build_timesteps(config) if config.timesteps else LowDiscrepancyTimesteps()
        return ContinuousELBO(timesteps=sampler, schedule_objective=ScheduleObjective.VARIANCE)
    timesteps = build_timesteps(config)
    if config.objective is Objective.ELBO:
        from ..infer import DiffusionELBO

        return DiffusionELBO(timesteps=timesteps)
    from ..infer.objectives import HybridLoss, SimpleLoss

    if config.objective is Objective.SIMPLE:
        return SimpleLoss(timesteps=timesteps)
    return HybridLoss(timesteps=timesteps)


def build(config: RunConfig, dataset=None, dtype=None) -> Built:
    """Construct ``(model, guide, dataset, loss)`` from ``config``.

    Loads the data (unless ``dataset`` is given), checks it against the configuration (the
    batch size must not exceed the training set) and builds the model on the data's shape and
    likelihood. Raises ConfigError / DataError, before anything is trained or written; for a
    configuration read from a file, an error about one of its keys names the file.
    """
    if not isinstance(config, RunConfig):
        raise ConfigError(f"build needs a RunConfig, got {type(config).__name__}")
    try:
        return _build(config, dataset, dtype)
    except PyrodiffError as exc:
        if config.source is None or not exc.fields:
            raise
        raise type(exc)(f"{config.source}: {exc}") from None


def _build(config: RunConfig, dataset, dtype) -> Built:
    if dataset is None:
        dataset = load_data(config, dtype=dtype)
    check_batch_size(config.batch_size, dataset.train.shape[0], dataset.name)
    # the initial weights are a function of the configuration (its seed), so config.json is
    # enough to rerun a run; the caller's random stream is left as it was
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = build_model(config, dataset)
        guide = build_guide(config, model)
    return Built(model, guide, dataset, build_loss(config))
