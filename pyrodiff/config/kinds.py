"""The kinds a run configuration chooses between: model, guide, schedule, network, objective and
timestep sampler. Enums, not strings; a string from a file or a flag is read by
:func:`~pyrodiff.validation.parse_enum`."""

from __future__ import annotations

import enum

__all__ = [
    "TIMESTEP_OBJECTIVES",
    "GuideKind",
    "ModelKind",
    "NetworkKind",
    "Objective",
    "ScheduleKind",
    "TimestepKind",
]


class ModelKind(enum.Enum):
    """The generative model p_θ."""

    DIFFUSION = "diffusion"
    """:class:`~pyrodiff.Diffusion`: T Gaussian reverse kernels sharing one denoiser."""
    HVAE = "hvae"
    """:class:`~pyrodiff.models.HierarchicalVAE`: a Markovian hierarchical VAE with T latent
    layers of size ``latent_dim`` and its own learned guide
    (:class:`~pyrodiff.guides.HierarchicalVAEGuide`; ``guide`` must be LEARNED)."""
    CONTINUOUS = "continuous"
    """:class:`~pyrodiff.models.ContinuousDiffusion`: the T → ∞ limit, trained on its own bound
    (:class:`~pyrodiff.infer.ContinuousELBO`, one network call per datum) with a learned log-SNR
    schedule (ends on the bound, interior on the estimator's variance) and, for quantised data,
    Fourier features of the input; ``guide`` is the fixed forward process and ``objective``
    elbo. Its discrete tools (IWAE, PSIS, samplers) read it discretised at T = ``num_steps``."""


class GuideKind(enum.Enum):
    """The approximate posterior q(x_{1:T} | x_0)."""

    FIXED = "fixed"
    """the forward noising chain (:class:`~pyrodiff.ForwardGuide`), no parameters."""
    LEARNED = "learned"
    """an amortised Gaussian guide (:class:`~pyrodiff.guides.LearnedGuide`), trained with the
    model; needs a trace-based objective (Trace_ELBO or TraceMeanField_ELBO)."""
    LEARNED_SCHEDULE = "learned_schedule"
    """the forward chain over a learnable noise schedule
    (:class:`~pyrodiff.guides.LearnedScheduleGuide`)."""
    ADAPTIVE = "adaptive"
    """a learned noise process per dimension, conditioned on a latent z drawn from an amortised
    q(z | x_0) (MuLAN: :class:`~pyrodiff.guides.AdaptiveNoiseGuide` over
    :class:`~pyrodiff.models.AdaptiveDiffusion`); ``latent_dim`` sizes z, 0 keeps the per-dimension
    schedule without z. With ``model`` diffusion it trains the T-step bound at
    T = ``num_steps``, with ``model`` continuous the T = ∞ bound; one network call per datum
    either way (objective elbo; trace_elbo runs the literal chain)."""


class ScheduleKind(enum.Enum):
    """The forward chain's noise schedule."""

    LINEAR = "linear"
    """DDPM's linear β (:func:`~pyrodiff.linear_schedule`)."""
    COSINE = "cosine"
    """improved DDPM's cosine ᾱ (:func:`~pyrodiff.cosine_schedule`)."""


class NetworkKind(enum.Enum):
    """The denoiser architecture."""

    AUTO = "auto"
    """a U-Net for images (C, H, W), an MLP for vectors (D,)."""
    MLP = "mlp"
    """:class:`~pyrodiff.networks.MLPDenoiser` (vector data)."""
    UNET = "unet"
    """:class:`~pyrodiff.networks.UNetDenoiser` (image data with even H and W)."""


class Objective(enum.Enum):
    """What training minimises. The reported ELBO is always the true bound, whatever this is."""

    ELBO = "elbo"
    """the full bound, timestep-sampled (:class:`~pyrodiff.infer.DiffusionELBO`): one network
    call per datum; needs a guide with closed forms (FIXED or LEARNED_SCHEDULE)."""
    TRACE_ELBO = "trace_elbo"
    """Pyro's Trace_ELBO on the literal chain: the same bound at T network calls per datum;
    works with every guide."""
    TRACE_MEAN_FIELD_ELBO = "trace_mean_field_elbo"
    """Pyro's TraceMeanField_ELBO: analytic KL per site (valid for top-down guides)."""
    SIMPLE = "simple"
    """DDPM's L_simple (:class:`~pyrodiff.infer.objectives.SimpleLoss`): not a bound."""
    HYBRID = "hybrid"
    """improved DDPM's L_simple + λ L_vlb (:class:`~pyrodiff.infer.objectives.HybridLoss`)."""


class TimestepKind(enum.Enum):
    """How timestep-sampled objectives draw t (all unbiased for the bound)."""

    UNIFORM = "uniform"
    STRATIFIED = "stratified"
    LOW_DISCREPANCY = "low_discrepancy"
    ANTITHETIC = "antithetic"
    IMPORTANCE = "importance"
    """π(t) ∝ √E[L_t²], improved DDPM's loss-aware sampler."""


TIMESTEP_OBJECTIVES = (Objective.ELBO, Objective.SIMPLE, Objective.HYBRID)
"""The objectives that sample timesteps (and so take a ``timesteps`` sampler)."""
