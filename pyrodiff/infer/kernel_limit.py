"""The best bound any Gaussian reverse kernel can reach on Gaussian-mixture data.

For data p(x_0) = Σ_k w_k N(m_k, diag s²) the forward chain's posterior q(x_0 | x_t) is again a
mixture of Gaussians, in closed form. Every term of the ELBO with the fixed q,

    L_{t−1} = E_q KL(q(x_{t−1} | x_t, x_0) ‖ p(x_{t−1} | x_t))     (t ≥ 2),

is minimised over reverse kernels p(x_{t−1} | x_t) = N(μ(x_t), diag σ²(x_t)) — any mean and
any diagonal variance as functions of x_t, the family of a denoiser that predicts ε and a
variance per coordinate (improved DDPM's learned range is a part of it) — by
μ* = E[μ̃_t(x_t, x_0) | x_t] and σ*_j² = β̃_t + c_t² Var(x_{0,j} | x_t), where
μ̃_t = c_t x_0 + c'_t x_t is the forward posterior's mean; the minimum is

    L*_{t−1} = ½ Σ_j E_{q(x_t)} log(1 + c_t² Var(x_{0,j} | x_t) / β̃_t).

Likewise the best Gaussian decoder N(E[x_0 | x_1], diag Var(x_0 | x_1)) gives
−E log p*(x_0 | x_1) = ½ Σ_j E log(2π e Var(x_{0,j} | x_1)), and the prior term
E KL(q(x_T | x_0) ‖ N(0, I)) is closed form. Their negative sum is the largest ELBO a model of
this family can have at this schedule; −H minus it is the part of the gap that belongs to the
bound and the kernel family, not to a network's training. Each expectation over x_t is a Monte
Carlo mean over draws from the marginal q(x_t), reported with its standard error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ConfigError
from ..schedules import NoiseSchedule

__all__ = ["KernelLimit", "best_gaussian_kernel_bound", "mixture_parameters"]


@dataclass(frozen=True)
class KernelLimit:
    """The terms of the best Gaussian-kernel ELBO, in nats per datum.

    ``per_step[0]`` is −E log p*(x_0 | x_1) and ``per_step[t − 1]`` is L*_{t−1} for t ≥ 2
    (the layout of :class:`~pyrodiff.infer.ELBOTerms`' ``per_step_loss``); ``per_step_se``
    their Monte-Carlo standard errors; ``prior`` is exact."""

    per_step: Tensor
    per_step_se: Tensor
    prior: float

    @property
    def elbo(self) -> float:
        return -(self.per_step.sum().item() + self.prior)

    @property
    def elbo_se(self) -> float:
        """Terms at different t are drawn independently: their variances add."""
        return self.per_step_se.pow(2).sum().sqrt().item()


def mixture_parameters(density) -> tuple[Tensor, Tensor, Tensor]:
    """(weights (K,), means (K, d), component standard deviations (d,)) of a Gaussian mixture
    with one diagonal covariance shared by its components, in the space the data live in:
    a :class:`~pyrodiff.data.GaussianMixture2D`, or one standardised by
    :class:`~pyrodiff.data.Standardized` (an affine map keeps it a mixture)."""
    from ..data.toy2d import GaussianMixture2D, Standardized

    if isinstance(density, Standardized) and isinstance(density.base, GaussianMixture2D):
        base = density.base
        loc, scale = density.loc.double(), density.scale.double()
        means = (base.means.double() - loc) / scale
        return base.weights.double(), means, base.std / scale
    if isinstance(density, GaussianMixture2D):
        d = density.means.shape[1]
        return density.weights.double(), density.means.double(), torch.full((d,), density.std)
    raise ConfigError(
        f"the best Gaussian-kernel bound needs a Gaussian-mixture density, got "
        f"{type(density).__name__}"
    )


def _posterior_moments(
    x_t: Tensor, a: float, log_w: Tensor, means: Tensor, var0: Tensor
) -> tuple[Tensor, Tensor]:
    """E[x_0 | x_t] and the variance of each coordinate of x_0 given x_t, both (N, d), when
    x_t = √a x_0 + √(1 − a) ε."""
    v = a * var0 + (1.0 - a)  # (d,) per-dimension variance of x_t given the component
    diff = x_t[:, None, :] - math.sqrt(a) * means[None]  # (N, K, d)
    log_r = log_w - 0.5 * (diff.pow(2) / v).sum(-1)
    r = torch.softmax(log_r, dim=1)  # responsibilities (N, K)
    gain = math.sqrt(a) * var0 / v
    m_k = means[None] + gain * diff  # E[x_0 | x_t, k]
    within = var0 * (1.0 - a) / v  # Var(x_0 | x_t, k), the same for every k
    mean = torch.einsum("nk,nkd->nd", r, m_k)
    between = torch.einsum("nk,nkd->nd", r, m_k.pow(2)) - mean.pow(2)
    return mean, within + between.clamp_min(0.0)


def best_gaussian_kernel_bound(
    density,
    schedule: NoiseSchedule,
    num_samples: int = 4096,
    generator: torch.Generator | None = None,
) -> KernelLimit:
    """The largest ELBO (with the fixed forward chain of ``schedule``) of any model whose
    reverse kernels and decoder are Gaussian with a diagonal covariance, on Gaussian-mixture
    data (see the module's docstring); ``num_samples`` draws of x_t per step."""
    if not isinstance(num_samples, int) or num_samples < 2:
        raise ConfigError(f"num_samples must be an integer >= 2, got {num_samples!r}")
    weights, means, std = mixture_parameters(density)
    var0 = std.double().pow(2)
    d = means.shape[1]
    log_w = weights.log()
    alpha_bar = schedule.alpha_bar.double().cpu()  # index t holds ᾱ_t, with ᾱ_0 = 1
    betas = schedule.betas.double().cpu()
    T = schedule.num_steps
    terms, ses = [], []
    for t in range(1, T + 1):
        a = alpha_bar[t].item()
        k = torch.multinomial(weights, num_samples, replacement=True, generator=generator)
        eps = torch.randn(num_samples, d, dtype=torch.float64, generator=generator)
        x_t = math.sqrt(a) * means[k] + (a * var0 + 1.0 - a).sqrt() * eps
        _, var = _posterior_moments(x_t, a, log_w, means, var0)
        if t == 1:
            values = 0.5 * torch.log(2 * math.pi * math.e * var).sum(-1)
        else:
            a_prev = alpha_bar[t - 1].item()
            beta = betas[t].item()
            beta_tilde = (1.0 - a_prev) * beta / (1.0 - a)
            c = math.sqrt(a_prev) * beta / (1.0 - a)
            values = 0.5 * torch.log1p(c * c * var / beta_tilde).sum(-1)
        terms.append(values.mean())
        ses.append(values.std() / math.sqrt(num_samples))
    a_T = alpha_bar[T].item()
    second = weights @ (means.pow(2) + var0).sum(-1)  # E ‖x_0‖²
    prior = 0.5 * (a_T * second.item() + d * (1.0 - a_T) - d - d * math.log(1.0 - a_T))
    return KernelLimit(torch.stack(terms), torch.stack(ses), prior)
