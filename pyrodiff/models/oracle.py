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

    Over a schedule per dimension (``schedule.event_shape == (D,)``) the same holds dimension
    by dimension: k_t, V_t and the reverse variances become vectors, the denoiser's weights
    diagonal matrices and the prior N(√ᾱ_T m, diag(ᾱ_T s² + 1 − ᾱ_T)).
    """
    mean = torch.as_tensor(mean, dtype=torch.float64).flatten()
    D, T = mean.numel(), schedule.num_steps
    # time first: (T + 1,) for a scalar schedule, (T + 1, D) for one per dimension
    ab = schedule.alpha_bar.double().movedim(-1, 0)
    s2 = float(std) ** 2
    k = ab.sqrt() * s2 / (ab * s2 + 1 - ab)
    V = s2 * (1 - ab) / (ab * s2 + 1 - ab)
    c0, _ = q_posterior_mean_coefs(schedule, torch.arange(T + 1), ab)
    var = schedule.posterior_variance.double().movedim(-1, 0) + c0**2 * V
    var[1] = V[1]
    var[0] = 1.0
    denoiser = LinearDenoiser(D, T)
    with torch.no_grad():
        # (T + 1, 1, 1) or (T + 1, D, 1) against the identity: k_t I, or diag(k_t)
        denoiser.weight.copy_(k.reshape(T + 1, -1, 1) * torch.eye(D, dtype=torch.float64))
        denoiser.bias.copy_(mean * (1 - k * ab.sqrt()).reshape(T + 1, -1))
    prior_var = ab[T] * s2 + 1 - ab[T]
    model = Diffusion(
        denoiser,
        schedule,
        parameterization=Parameterization.X0,
        variance=ReverseVariance.PER_STEP,
        prior_loc=ab[T].sqrt() * mean,
        prior_scale=float(prior_var.sqrt()) if prior_var.dim() == 0 else prior_var.sqrt(),
        name=name,
    )
    with torch.no_grad():
        model.log_variance.copy_(torch.log(var).movedim(0, -1))
    return model
