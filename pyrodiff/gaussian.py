"""Closed-form densities of the forward chain and conversions between predictions.

All functions take a :class:`~pyrodiff.schedules.NoiseSchedule` and a timestep ``t`` that is
either an ``int`` or a LongTensor of shape ``(batch,)``; schedule coefficients are gathered
in float64 and cast to the data's dtype, broadcast over the event dimensions.
"""

from __future__ import annotations

import enum

import pyro.distributions as dist
import torch
from torch import Tensor

from .schedules import NoiseSchedule

__all__ = [
    "Parameterization",
    "coef",
    "q_sample",
    "q_marginal",
    "q_step",
    "q_posterior",
    "q_posterior_mean_coefs",
    "predict_x0",
    "eps_from_x0",
    "x0_from_eps",
    "v_from_x0",
    "x0_from_v",
    "gaussian_kl",
]


class Parameterization(enum.Enum):
    """What the denoiser's output means."""

    EPSILON = "epsilon"
    """the noise ε in x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε (DDPM)"""
    X0 = "x0"
    """the clean data x_0 itself"""
    V = "v"
    """v = √ᾱ_t ε − √(1 − ᾱ_t) x_0 (progressive distillation)"""


def coef(table: Tensor, t: int | Tensor, like: Tensor) -> Tensor:
    """``table[t]`` cast to ``like``'s dtype/device, shaped to broadcast over its event dims.

    ``like`` has shape ``(batch, *event)``; with a tensor ``t`` of shape ``(batch,)`` the
    result has shape ``(batch, 1, …, 1)``, with an int ``t`` it is a 0-d tensor.
    """
    if isinstance(t, int):
        return table[t].to(dtype=like.dtype, device=like.device)
    value = table.to(like.device)[t].to(like.dtype)
    return value.reshape(value.shape + (1,) * (like.dim() - value.dim()))


def q_marginal(schedule: NoiseSchedule, x0: Tensor, t: int | Tensor) -> dist.Normal:
    """q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I), elementwise (no event dims)."""
    ab = coef(schedule.alpha_bar, t, x0)
    om = coef(schedule.one_minus_alpha_bar, t, x0)
    return dist.Normal(ab.sqrt() * x0, om.sqrt().expand_as(x0))


def q_sample(schedule: NoiseSchedule, x0: Tensor, t: int | Tensor, noise: Tensor) -> Tensor:
    """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, a reparameterised draw from q(x_t | x_0)."""
    return (
        coef(schedule.alpha_bar, t, x0).sqrt() * x0
        + coef(schedule.one_minus_alpha_bar, t, x0).sqrt() * noise
    )


def q_step(schedule: NoiseSchedule, x_prev: Tensor, t: int | Tensor) -> dist.Normal:
    """One forward step q(x_t | x_{t−1}) = N(√α_t x_{t−1}, β_t I)."""
    a = coef(schedule.alphas, t, x_prev)
    b = coef(schedule.betas, t, x_prev)
    return dist.Normal(a.sqrt() * x_prev, b.sqrt().expand_as(x_prev))


def q_posterior_mean_coefs(
    schedule: NoiseSchedule, t: int | Tensor, like: Tensor
) -> tuple[Tensor, Tensor]:
    """(c_0, c_t) with μ̃_t(x_t, x_0) = c_0 x_0 + c_t x_t.

    c_0 = √ᾱ_{t−1} β_t / (1 − ᾱ_t) and c_t = √α_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t); at t = 1 they are
    (1, 0): the posterior mean is x_0 itself.
    """
    s = schedule
    c0 = s.alpha_bar.sqrt().roll(1) * s.betas / s.one_minus_alpha_bar
    ct = s.alphas.sqrt() * s.one_minus_alpha_bar.roll(1) / s.one_minus_alpha_bar
    # roll(1) puts index T at 0; t = 0 is never a valid step, so that entry is unused.
    return coef(c0, t, like), coef(ct, t, like)


def q_posterior(schedule: NoiseSchedule, x0: Tensor, x_t: Tensor, t: int | Tensor) -> dist.Normal:
    """q(x_{t−1} | x_t, x_0) = N(μ̃_t, β̃_t I), for t ≥ 2 (at t = 1 it is a point mass at x_0)."""
    if isinstance(t, int) and t < 2:
        raise ValueError(f"q(x_(t-1) | x_t, x_0) is a proper density only for t >= 2, got t = {t}")
    c0, ct = q_posterior_mean_coefs(schedule, t, x0)
    var = coef(schedule.posterior_variance, t, x0)
    return dist.Normal(c0 * x0 + ct * x_t, var.sqrt().expand_as(x0))


def x0_from_eps(schedule: NoiseSchedule, x_t: Tensor, t: int | Tensor, eps: Tensor) -> Tensor:
    """x_0 = (x_t − √(1 − ᾱ_t) ε) / √ᾱ_t."""
    ab = coef(schedule.alpha_bar, t, x_t)
    om = coef(schedule.one_minus_alpha_bar, t, x_t)
    return (x_t - om.sqrt() * eps) / ab.sqrt()


def eps_from_x0(schedule: NoiseSchedule, x_t: Tensor, t: int | Tensor, x0: Tensor) -> Tensor:
    """ε = (x_t − √ᾱ_t x_0) / √(1 − ᾱ_t)."""
    ab = coef(schedule.alpha_bar, t, x_t)
    om = coef(schedule.one_minus_alpha_bar, t, x_t)
    return (x_t - ab.sqrt() * x0) / om.sqrt()


def x0_from_v(schedule: NoiseSchedule, x_t: Tensor, t: int | Tensor, v: Tensor) -> Tensor:
    """x_0 = √ᾱ_t x_t − √(1 − ᾱ_t) v (variance-preserving chain)."""
    ab = coef(schedule.alpha_bar, t, x_t)
    om = coef(schedule.one_minus_alpha_bar, t, x_t)
    return ab.sqrt() * x_t - om.sqrt() * v


def v_from_x0(schedule: NoiseSchedule, x_t: Tensor, t: int | Tensor, x0: Tensor) -> Tensor:
    """v = √ᾱ_t ε − √(1 − ᾱ_t) x_0, with ε recovered from (x_t, x_0)."""
    ab = coef(schedule.alpha_bar, t, x_t)
    om = coef(schedule.one_minus_alpha_bar, t, x_t)
    eps = (x_t - ab.sqrt() * x0) / om.sqrt()
    return ab.sqrt() * eps - om.sqrt() * x0


def predict_x0(
    parameterization: Parameterization,
    schedule: NoiseSchedule,
    x_t: Tensor,
    t: int | Tensor,
    output: Tensor,
) -> Tensor:
    """The x_0 implied by a denoiser's ``output`` under ``parameterization``."""
    if parameterization is Parameterization.X0:
        return output
    if parameterization is Parameterization.EPSILON:
        return x0_from_eps(schedule, x_t, t, output)
    if parameterization is Parameterization.V:
        return x0_from_v(schedule, x_t, t, output)
    raise TypeError(f"parameterization must be a Parameterization, got {parameterization!r}")


def gaussian_kl(loc_q: Tensor, var_q: Tensor, loc_p: Tensor, var_p: Tensor) -> Tensor:
    """KL(N(loc_q, var_q) ‖ N(loc_p, var_p)) elementwise, in nats."""
    return 0.5 * (
        torch.log(var_p) - torch.log(var_q) + (var_q + (loc_q - loc_p) ** 2) / var_p - 1.0
    )
