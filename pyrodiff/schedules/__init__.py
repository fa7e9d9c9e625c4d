"""The noise process: every schedule answers one question, its log-SNR λ.

One sign convention across the package: λ = +log SNR = log(ᾱ / (1 − ᾱ)), so

    ᾱ = α² = sigmoid(λ),   1 − ᾱ = σ² = sigmoid(−λ),   x_λ = α x_0 + σ ε,

and λ falls as the noise grows. Discrete chains give λ_t at steps t = 0 … T
(:attr:`NoiseSchedule.log_snr`, the learned :class:`~pyrodiff.guides.LearnedSchedule`); the
continuous families give λ(t) on t ∈ [0, 1] (:meth:`LogSNRSchedule.log_snr`, with λ(0) the
least noise); :class:`MultivariateLogSNR` gives one λ(t) per dimension of the data, optionally
conditioned on a latent z. The learned schedules answer ``endpoints()`` = (λ at the least noise, λ at the
most) and hold whether those are trained in ``endpoints_mode`` (:class:`Endpoints`). ᾱ, 1 − ᾱ,
α and σ are computed from λ in one place, :mod:`pyrodiff.schedules.log_snr`. (Variational
diffusion models write γ = −λ; pyrodiff does not.)

A continuous schedule evaluated at T equal steps (``discretize(T)``) is a discrete
:class:`NoiseSchedule`, so every tool written for discrete chains takes it.
"""

from .continuous import (
    CosineLogSNR,
    Endpoints,
    LearnedLogSNR,
    LinearLogSNR,
    LogSNRSchedule,
    discrete_times,
)
from .discrete import (
    NoiseSchedule,
    cosine_schedule,
    linear_schedule,
    schedule_from_alpha_bar,
    schedule_from_config,
)
from .log_snr import alpha_sigma, noise_variance, signal_variance
from .multivariate import LatentLogSNR, MultivariateLogSNR

__all__ = [
    "CosineLogSNR",
    "Endpoints",
    "LatentLogSNR",
    "LearnedLogSNR",
    "LinearLogSNR",
    "LogSNRSchedule",
    "MultivariateLogSNR",
    "NoiseSchedule",
    "alpha_sigma",
    "noise_variance",
    "signal_variance",
    "cosine_schedule",
    "discrete_times",
    "linear_schedule",
    "schedule_from_alpha_bar",
    "schedule_from_config",
]
