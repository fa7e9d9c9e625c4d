"""Closed-form densities of the forward chain and conversions between predictions.

All functions take a :class:`~pyrodiff.schedules.NoiseSchedule` and a timestep ``t`` that is
either an ``int`` or a LongTensor of shape ``(batch,)``; schedule coefficients are computed
in float64 and cast to the data's dtype, broadcast over the event dimensions. A schedule per
dimension (tables of shape (*event_shape, T + 1)) gives coefficients with the data's event
shape, so every closed form below holds elementwise, dimension by dimension.

These functions sit inside every training step and every sampling step, so the tables they
read are derived and cast once, not per call (:func:`schedule_table`, :func:`coef`).
"""

from __future__ import annotations

import enum
import functools
import weakref
from collections.abc import Callable

import pyro.distributions as dist
import torch
from torch import Tensor, nn

from .schedules import NoiseSchedule, alpha_sigma

__all__ = [
    "Parameterization",
    "coef",
    "coef_rows",
    "schedule_event_dim",
    "schedule_table",
    "q_sample",
    "q_marginal",
    "q_marginal_moments",
    "q_step",
    "q_posterior",
    "q_posterior_moments",
    "q_posterior_mean_coefs",
    "predict_x0",
    "reverse_mean_coefs",
    "reverse_mean_table",
    "eps_from_x0",
    "x0_from_eps",
    "v_from_x0",
    "x0_from_v",
    "gaussian_kl",
    "isotropic_gaussian_kl",
    "log_snr_marginal_moments",
    "log_snr_posterior_moments",
    "x0_from_output",
    "prior_kl",
    "sum_event",
]


class Parameterization(enum.Enum):
    """What the denoiser's output means."""

    EPSILON = "epsilon"
    """the noise ε in x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε (DDPM)"""
    X0 = "x0"
    """the clean data x_0 itself"""
    V = "v"
    """v = √ᾱ_t ε − √(1 − ᾱ_t) x_0 (progressive distillation)"""


def coef(table: Tensor, t: int | Tensor, like: Tensor, event_dim: int = 0) -> Tensor:
    """``table[..., t]`` cast to ``like``'s dtype/device, shaped to broadcast over ``like``.

    ``like`` has shape ``(batch, *event)``. ``event_dim`` says how many axes before the time
    axis are the data's event axes: 0 for a scalar schedule's table (length T + 1), the length
    of ``schedule.event_shape`` for a schedule per dimension (shape (*event, T + 1); see
    :func:`schedule_event_dim`). It is an argument, never guessed from shapes: a table of 3
    stacked rows and a schedule per dimension of 3-dimensional data look alike.

    With a tensor ``t`` of shape ``(batch,)`` a scalar table gives shape ``(batch, 1, …, 1)``
    and a per-dimension table ``(batch, *event)``; with an int ``t`` a 0-d tensor, or
    ``(*event)``. Leading table dimensions (stacked rows) are kept in front. A table that
    already has ``like``'s dtype and device (as :func:`schedule_table` gives) is not copied.
    """
    table = table.to(device=like.device, dtype=like.dtype)
    if isinstance(t, int):
        return table[..., t]
    # index_select is the cheaper call for the usual 1-D t; it has the same gradient
    value = table.index_select(-1, t) if t.dim() == 1 else table[..., t]
    if event_dim:
        return _time_before_event(value, t.dim(), event_dim, like.dim())
    return value.reshape(value.shape + (1,) * (like.dim() - t.dim()))


def _time_before_event(value: Tensor, t_dim: int, event_dim: int, like_dim: int) -> Tensor:
    """(*rows, *event, *t) → (*rows, *t, 1…, *event): the gathered timesteps move in front of
    the event axes (with ones between them for batch axes of ``like`` that ``t`` lacks)."""
    rows = value.dim() - event_dim - t_dim
    order = (
        list(range(rows))
        + list(range(rows + event_dim, value.dim()))
        + list(range(rows, rows + event_dim))
    )
    value = value.permute(order)
    pad = like_dim - t_dim - event_dim
    if pad > 0:
        shape = value.shape
        value = value.reshape(shape[: rows + t_dim] + (1,) * pad + shape[rows + t_dim :])
    return value


def coef_rows(
    table: Tensor, t: int | Tensor, like: Tensor, event_dim: int = 0
) -> tuple[Tensor, ...]:
    """:func:`coef` for each row of a (k, T + 1) table, or a (k, *event, T + 1) one with
    ``event_dim`` = len(event), with one gather for all k rows."""
    return coef(table, t, like, event_dim).unbind(0)


def schedule_event_dim(schedule: nn.Module) -> int:
    """The number of event axes in a schedule's tables: 0 for a scalar schedule, the length of
    ``schedule.event_shape`` for a schedule per dimension (the ``event_dim`` of :func:`coef`)."""
    return len(getattr(schedule, "event_shape", ()))


class _Tables:
    """The tables derived from one state of a schedule's buffers, per (builder, dtype, device)."""

    __slots__ = ("buffers", "stamp", "tables")

    def __init__(self, buffers: tuple[Tensor, ...], stamp: tuple[int, ...]) -> None:
        self.buffers = buffers  # held so that the ids in the stamp cannot be reused
        self.stamp = stamp
        self.tables: dict = {}


# Keyed weakly by the schedule module. The stamp (ids and version counters of its buffers)
# changes on .to(), which makes new tensors, and on any in-place edit.
_DERIVED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def schedule_table(
    schedule: nn.Module, build: Callable[[nn.Module], Tensor], like: Tensor | None = None
) -> Tensor:
    """``build(schedule)``, a float64 table of length T + 1 on its last axis derived from the
    schedule's tables, cast to ``like``'s dtype and device when ``like`` is given.

    Built and cast once, then reused while the schedule's buffers are the same tensors at the
    same version, so ``.to(device)`` and in-place edits rebuild it. A schedule with parameters
    or submodules (a learned one) is rebuilt on every call, so gradients reach its parameters.
    """
    if schedule._parameters or schedule._modules:
        table = build(schedule)
        return table if like is None else table.to(device=like.device, dtype=like.dtype)
    buffers = tuple(b for b in schedule._buffers.values() if b is not None)
    stamp = tuple(id(b) for b in buffers) + tuple(b._version for b in buffers)
    entry = _DERIVED.get(schedule)
    if entry is None or entry.stamp != stamp:
        entry = _DERIVED[schedule] = _Tables(buffers, stamp)
    key = (build, None, None) if like is None else (build, like.dtype, like.device)
    table = entry.tables.get(key)
    if table is None:
        with torch.inference_mode(False), torch.no_grad():
            table = entry.tables.get((build, None, None))
            if table is None:
                table = entry.tables[(build, None, None)] = build(schedule)
            if like is not None:
                table = entry.tables[key] = table.to(device=like.device, dtype=like.dtype)
    return table


def _marginal_table(s: nn.Module) -> Tensor:
    # rows √ᾱ_t, √(1 − ᾱ_t): the coefficients of q(x_t | x_0), read together
    return torch.stack([s.alpha_bar.sqrt(), s.one_minus_alpha_bar.sqrt()])


def _sqrt_alphas(s: nn.Module) -> Tensor:
    return s.alphas.sqrt()


def _sqrt_betas(s: nn.Module) -> Tensor:
    return s.betas.sqrt()


def _posterior_coef_x0(s: nn.Module) -> Tensor:
    # roll along time (the last axis) reads index t − 1 at t; it puts index T at 0, but t = 0
    # is never a valid step, so that entry is unused.
    return s.alpha_bar.sqrt().roll(1, -1) * s.betas / s.one_minus_alpha_bar


def _posterior_coef_xt(s: nn.Module) -> Tensor:
    return s.alphas.sqrt() * s.one_minus_alpha_bar.roll(1, -1) / s.one_minus_alpha_bar


def _posterior_table(s: nn.Module) -> Tensor:
    # rows c_0, c_t, √β̃_t: the coefficients of q(x_{t−1} | x_t, x_0), read together
    return torch.stack([_posterior_coef_x0(s), _posterior_coef_xt(s), s.posterior_variance.sqrt()])


def _sqrt_coefs(schedule: nn.Module, t: int | Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    """(√ᾱ_t, √(1 − ᾱ_t)), square roots taken in float64."""
    table = schedule_table(schedule, _marginal_table, like)
    return coef_rows(table, t, like, schedule_event_dim(schedule))


def q_marginal_moments(
    schedule: NoiseSchedule, x0: Tensor, t: int | Tensor
) -> tuple[Tensor, Tensor]:
    """(√ᾱ_t x_0, √(1 − ᾱ_t)): the mean and standard deviation of q(x_t | x_0); the standard
    deviation is shaped to broadcast over ``x0`` (see :func:`coef`): one per datum for a scalar
    schedule, the data's shape for a schedule per dimension."""
    sa, so = _sqrt_coefs(schedule, t, x0)
    return sa * x0, so


def log_snr_marginal_moments(log_snr: Tensor, x0: Tensor) -> tuple[Tensor, Tensor]:
    """(α x_0, σ) with α² = sigmoid(λ), σ² = sigmoid(−λ): the mean and standard deviation of
    q(x_λ | x_0) at log-SNR ``log_snr``, which broadcasts against ``x0`` (a number, one λ per
    datum shaped (batch, 1, …), or λ with the data's event shape for a schedule per dimension).

    The continuous-time counterpart of :func:`q_marginal_moments`, which reads the discrete
    chain's float64 ᾱ table instead of λ.
    """
    alpha, sigma = alpha_sigma(log_snr)
    return alpha * x0, sigma


def log_snr_posterior_moments(
    log_snr_s: Tensor, log_snr_t: Tensor, x0: Tensor, x_t: Tensor
) -> tuple[Tensor, Tensor]:
    """(mean, standard deviation) of q(x_s | x_t, x_0) between log-SNRs λ_s > λ_t (x_s the less
    noisy), elementwise, so λ may be per datum or per dimension as in
    :func:`log_snr_marginal_moments`:

        mean = (α_t / α_s)(σ_s² / σ_t²) x_t + α_s r x_0,   variance = r σ_s²,
        r = σ²_{t|s} / σ_t² = 1 − e^{λ_t − λ_s},

    the λ-keyed counterpart of :func:`q_posterior_moments` (which reads the discrete chain's
    tables at s = t − 1). With x̂_0 in place of x_0 it is VDM's reverse kernel.

    The standard deviation is at least √(the dtype's smallest normal number), so that its
    square, which a density divides by, is still a normal number: a step that rounds
    to zero length (λ_s = λ_t in the dtype, as a learned curve that is nearly flat in one
    dimension gives in float32) has r = 0 and the mean x_t's, for q and for the reverse kernel
    alike, so their log-ratio over it is 0, the step's closed-form KL, instead of an invalid
    distribution.
    """
    alpha_s, sigma_s = alpha_sigma(log_snr_s)
    alpha_t, sigma_t = alpha_sigma(log_snr_t)
    r = -torch.expm1(log_snr_t - log_snr_s)
    mean = (alpha_t / alpha_s) * (sigma_s / sigma_t) ** 2 * x_t + alpha_s * r * x0
    sd = r.sqrt() * sigma_s
    return mean, sd.clamp_min(torch.finfo(sd.dtype).tiny ** 0.5)


def x0_from_output(
    parameterization: Parameterization, alpha: Tensor, sigma: Tensor, x_t: Tensor, output: Tensor
) -> Tensor:
    """The x̂_0 a denoiser's ``output`` implies at x_t = α x_0 + σ ε (α, σ broadcastable, per
    datum or per dimension): ε̂ gives (x_t − σ ε̂)/α, v̂ gives α x_t − σ v̂, x̂ is itself. The
    λ-keyed counterpart of :func:`predict_x0`."""
    if parameterization is Parameterization.X0:
        return output
    if parameterization is Parameterization.EPSILON:
        return (x_t - sigma * output) / alpha
    if parameterization is Parameterization.V:
        return alpha * x_t - sigma * output
    raise TypeError(f"parameterization must be a Parameterization, got {parameterization!r}")


def q_marginal(schedule: NoiseSchedule, x0: Tensor, t: int | Tensor) -> dist.Normal:
    """q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I), elementwise (no event dims)."""
    loc, scale = q_marginal_moments(schedule, x0, t)
    return dist.Normal(loc, scale.expand_as(x0))


def q_sample(schedule: NoiseSchedule, x0: Tensor, t: int | Tensor, noise: Tensor) -> Tensor:
    """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, a reparameterised draw from q(x_t | x_0)."""
    sa, so = _sqrt_coefs(schedule, t, x0)
    return sa * x0 + so * noise


def q_step(schedule: NoiseSchedule, x_prev: Tensor, t: int | Tensor) -> dist.Normal:
    """One forward step q(x_t | x_{t−1}) = N(√α_t x_{t−1}, β_t I)."""
    e = schedule_event_dim(schedule)
    a = coef(schedule_table(schedule, _sqrt_alphas, x_prev), t, x_prev, e)
    b = coef(schedule_table(schedule, _sqrt_betas, x_prev), t, x_prev, e)
    return dist.Normal(a * x_prev, b.expand_as(x_prev))


def q_posterior_mean_coefs(
    schedule: NoiseSchedule, t: int | Tensor, like: Tensor
) -> tuple[Tensor, Tensor]:
    """(c_0, c_t) with μ̃_t(x_t, x_0) = c_0 x_0 + c_t x_t.

    c_0 = √ᾱ_{t−1} β_t / (1 − ᾱ_t) and c_t = √α_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t); at t = 1 they are
    (1, 0): the posterior mean is x_0 itself.
    """
    table = schedule_table(schedule, _posterior_table, like)
    c0, ct, _ = coef_rows(table, t, like, schedule_event_dim(schedule))
    return c0, ct


def q_posterior_moments(
    schedule: NoiseSchedule, x0: Tensor, x_t: Tensor, t: int | Tensor
) -> tuple[Tensor, Tensor]:
    """(μ̃_t(x_t, x_0), √β̃_t): the mean and standard deviation of q(x_{t−1} | x_t, x_0), for
    t ≥ 2; the standard deviation is shaped to broadcast over ``x0``."""
    if isinstance(t, int) and t < 2:
        raise ValueError(f"q(x_(t-1) | x_t, x_0) is a proper density only for t >= 2, got t = {t}")
    table = schedule_table(schedule, _posterior_table, x0)
    c0, ct, std = coef_rows(table, t, x0, schedule_event_dim(schedule))
    return c0 * x0 + ct * x_t, std


def q_posterior(schedule: NoiseSchedule, x0: Tensor, x_t: Tensor, t: int | Tensor) -> dist.Normal:
    """q(x_{t−1} | x_t, x_0) = N(μ̃_t, β̃_t I), for t ≥ 2 (at t = 1 it is a point mass at x_0)."""
    loc, scale = q_posterior_moments(schedule, x0, x_t, t)
    return dist.Normal(loc, scale.expand_as(x0))


def x0_from_eps(schedule: NoiseSchedule, x_t: Tensor, t: int | Tensor, eps: Tensor) -> Tensor:
    """x_0 = (x_t − √(1 − ᾱ_t) ε) / √ᾱ_t."""
    sa, so = _sqrt_coefs(schedule, t, x_t)
    return (x_t - so * eps) / sa


def eps_from_x0(schedule: NoiseSchedule, x_t: Tensor, t: int | Tensor, x0: Tensor) -> Tensor:
    """ε = (x_t − √ᾱ_t x_0) / √(1 − ᾱ_t)."""
    sa, so = _sqrt_coefs(schedule, t, x_t)
    return (x_t - sa * x0) / so


def x0_from_v(schedule: NoiseSchedule, x_t: Tensor, t: int | Tensor, v: Tensor) -> Tensor:
    """x_0 = √ᾱ_t x_t − √(1 − ᾱ_t) v (variance-preserving chain)."""
    sa, so = _sqrt_coefs(schedule, t, x_t)
    return sa * x_t - so * v


def v_from_x0(schedule: NoiseSchedule, x_t: Tensor, t: int | Tensor, x0: Tensor) -> Tensor:
    """v = √ᾱ_t ε − √(1 − ᾱ_t) x_0, with ε recovered from (x_t, x_0)."""
    sa, so = _sqrt_coefs(schedule, t, x_t)
    eps = (x_t - sa * x0) / so
    return sa * eps - so * x0


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


def _reverse_mean_table(s: nn.Module, parameterization: Parameterization) -> Tensor:
    """Rows (a_t, b_t), t = 0 … T, of μ̃_t(x_t, x̂_0) = a_t x_t + b_t · output (see below)."""
    sa, so = s.alpha_bar.sqrt(), s.one_minus_alpha_bar.sqrt()
    # x̂_0 = g_x x_t + g_o · output for each reading of the output
    if parameterization is Parameterization.EPSILON:
        g_x, g_o = 1.0 / sa, -so / sa
    elif parameterization is Parameterization.X0:
        g_x, g_o = torch.zeros_like(sa), torch.ones_like(sa)
    elif parameterization is Parameterization.V:
        g_x, g_o = sa, -so
    else:
        raise TypeError(f"parameterization must be a Parameterization, got {parameterization!r}")
    c0, ct = _posterior_coef_x0(s), _posterior_coef_xt(s)
    table = torch.stack([c0 * g_x + ct, c0 * g_o])
    # at t = 1 the posterior mean is x_0 itself; (c0, ct) = (1, 0) only up to rounding
    table[..., 1] = torch.stack([g_x[..., 1], g_o[..., 1]])
    table[..., 0] = 0.0  # t = 0 is no step
    return table


# one builder per parameterization, so that schedule_table caches each under a stable key
_REVERSE_MEAN = {
    p: functools.partial(_reverse_mean_table, parameterization=p) for p in Parameterization
}


def reverse_mean_coefs(
    parameterization: Parameterization, schedule: NoiseSchedule, t: int | Tensor, like: Tensor
) -> tuple[Tensor, Tensor]:
    """(a_t, b_t) with μ̃_t(x_t, x̂_0(x_t, t, output)) = a_t x_t + b_t · output.

    The reverse mean of a denoiser whose ``output`` is read under ``parameterization`` is
    affine in (x_t, output); folding the x̂_0 conversion into the posterior mean coefficients
    gives two float64-derived coefficients instead of four cast ones, and avoids dividing by
    √ᾱ_t ≈ 0 in the data's dtype at large t. For ε: a_t = 1/√α_t, b_t = −β_t/(√α_t √(1 − ᾱ_t)),
    DDPM's sampling formula. At t = 1 the mean is x̂_0 itself.
    """
    table = reverse_mean_table(parameterization, schedule, like)
    a, b = coef_rows(table, t, like, schedule_event_dim(schedule))
    return a, b


def reverse_mean_table(
    parameterization: Parameterization, schedule: NoiseSchedule, like: Tensor | None = None
) -> Tensor:
    """The (2, T + 1) table of :func:`reverse_mean_coefs` (rows a_t, b_t), cast to ``like``;
    (2, *event, T + 1) for a schedule per dimension."""
    return schedule_table(schedule, _REVERSE_MEAN[parameterization], like)


def gaussian_kl(loc_q: Tensor, var_q: Tensor, loc_p: Tensor, var_p: Tensor) -> Tensor:
    """KL(N(loc_q, var_q) ‖ N(loc_p, var_p)) elementwise, in nats."""
    return 0.5 * (
        torch.log(var_p) - torch.log(var_q) + (var_q + (loc_q - loc_p) ** 2) / var_p - 1.0
    )


def isotropic_gaussian_kl(sq_dist: Tensor, var_q: Tensor, var_p: Tensor, num_dims: int) -> Tensor:
    """KL(N(m_q, var_q I) ‖ N(m_p, var_p I)) over D = ``num_dims`` dimensions, from the squared
    distance ``sq_dist`` = ‖m_q − m_p‖² (or its expectation, for Gaussian-distributed means):

        ½ [D (log var_p − log var_q + var_q/var_p − 1) + ‖m_q − m_p‖² / var_p],

    a constant in the means plus a weighted squared error. Shapes broadcast (one variance per
    datum); use :func:`gaussian_kl` when a variance differs between dimensions.
    """
    return 0.5 * (
        num_dims * (torch.log(var_p) - torch.log(var_q) + var_q / var_p - 1) + sq_dist / var_p
    )


def sum_event(x: Tensor, event_dim: int) -> Tensor:
    """``x`` summed over its last ``event_dim`` dimensions (one value per datum)."""
    return x.flatten(start_dim=x.dim() - event_dim).sum(-1) if event_dim else x


def prior_kl(loc: Tensor, scale: Tensor, prior_loc: Tensor, prior_scale: Tensor) -> Tensor:
    """KL(N(loc, scale²) ‖ N(prior_loc, prior_scale²)) per datum, summed over the event
    dimensions of ``loc`` (shape (batch, *event)): the prior term KL(q(x_T | x_0) ‖ p(x_T)) of
    every bound, discrete (DDPM's L_T) and continuous (at λ(1)). Scales broadcast."""
    kl = gaussian_kl(loc, scale**2, prior_loc, prior_scale**2)
    return sum_event(kl.expand_as(loc), loc.dim() - 1)
