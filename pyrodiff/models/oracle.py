"""The exact reverse process of isotropic Gaussian data, written as a linear-Gaussian Diffusion."""

from __future__ import annotations

import torch
from torch import Tensor

from ..gaussian import Parameterization, q_posterior_mean_coefs
from ..networks import LinearDenoiser
from ..schedules import NoiseSchedule
from .diffusion import Diffusion, ReverseVariance

__all__ = ["gaussian_oracle"]


def gaussian_oracle(schedule: NoiseSchedule, mean: Tensor, std: float, name: str = "") -> Diffusion:
    """The model whose reverse kernels are the true q(x_{t−1} | x_t) for x_0 ~ N(mean, std² I).

    With x_t | x_0 Gaussian, q(x_0 | x_t) = N(E[x_0 | x_t], V_t I) with
    E[x_0 | x_t] = m + k_t (x_t − √ᾱ_t m), k_t = √ᾱ_t s² / (ᾱ_t s² + 1 − ᾱ_t) and
    V_t = s² (1 − ᾱ_t) / (ᾱ_t s² + 1 − ᾱ_t); averaging q(x_{t−1} | x_t, x_0) over it gives
    q(x_{t−1} | x_t) = N(μ̃_t(x_t, E[x_0 | x_t]), (β̃_t + c_0² V_t) I). The prior is the exact
    q(x_T). With this model p_θ(x_{1:T} | x_0) = q(x_{1:T} | x_0), so the ELBO equals
    log p(x_0) = log N(x_0; mean, std² I) for every draw from the guide. ``name`` is the
    model's (:class:`~pyrodiff.Diffusion`).
    """
    mean = torch.as_tensor(mean, dtype=torch.float64).flatten()
    D, T = mean.numel(), schedule.num_steps
    ab = schedule.alpha_bar.double()
    s2 = float(std) ** 2
    k = ab.sqrt() * s2 / (ab * s2 + 1 - ab)
    V = s2 * (1 - ab) / (ab * s2 + 1 - ab)
    c0, _ = q_posterior_mean_coefs(schedule, torch.arange(T + 1), ab)
    var = schedule.posterior_variance.double() + c0**2 * V
    var[1] = V[1]
    var[0] = 1.0
    denoiser = LinearDenoiser(D, T)
    with torch.no_grad():
        denoiser.weight.copy_(k[:, None, None] * torch.eye(D, dtype=torch.float64))
        denoiser.bias.copy_(mean[None, :] * (1 - k * ab.sqrt())[:, None])
    model = Diffusion(
        denoiser,
        schedule,
        parameterization=Parameterization.X0,
        variance=ReverseVariance.PER_STEP,
        prior_loc=ab[T].sqrt() * mean,
        prior_scale=float((ab[T] * s2 + 1 - ab[T]).sqrt()),
        name=name,
    )
    with torch.no_grad():
        model.log_variance.copy_(torch.log(var))
    return model
