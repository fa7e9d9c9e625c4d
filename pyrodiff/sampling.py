"""Samplers for a :class:`~pyrodiff.Diffusion`: ancestral (full or strided), Predictive, DDIM.

Every sampler runs under ``torch.no_grad``, on the model's device, and takes its randomness
from an optional ``torch.Generator`` (on that device) or from injected standard-normal
``noise``, so runs are reproducible and testable. The noise convention is the same for all of
them: on a timestep sequence 0 = τ_0 < τ_1 < … < τ_S = T,

    noise[i] (shape ``(num_samples, *event_shape)``) is the standard normal behind x_{τ_i},

so ``noise`` has shape ``(S + 1, num_samples, *event_shape)``; x_{τ_S} = prior_loc +
prior_scale · noise[S]. With the full sequence (S = T), ``noise[t]`` drives x_t.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pyro.infer import Predictive
from torch import Tensor, nn

from .devices import param_dtype
from .errors import ConfigError
from .gaussian import eps_from_x0
from .likelihoods import DiscretizedGaussianLikelihood, GaussianLikelihood, Likelihood
from .models.diffusion import Diffusion, ReverseVariance
from .schedules import schedule_from_alpha_bar

__all__ = [
    "Trajectory",
    "ancestral_sample",
    "predictive_sample",
    "strided_sample",
    "ddim_sample",
    "respace",
    "strided_timesteps",
]


@dataclass(frozen=True)
class Trajectory:
    """The states of one reverse run: ``states[i]`` is x at timestep ``timesteps[i]``.

    ``timesteps`` is increasing from 0 to T (the chain runs from the last entry to the first).
    """

    timesteps: Tensor
    states: Tensor


def strided_timesteps(num_steps_model: int, num_steps: int) -> Tensor:
    """τ_0 = 0 < τ_1 < … < τ_S = T: S = ``num_steps`` roughly evenly spaced steps of a T-chain.

    τ_i = round(i · T / S), which always contains T and, for S = T, is every step.
    """
    T = int(num_steps_model)
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or not 1 <= num_steps <= T:
        raise ConfigError(f"num_steps must be an integer in 1 … T = {T}, got {num_steps!r}")
    tau = torch.round(torch.arange(num_steps + 1, dtype=torch.float64) * (T / num_steps)).long()
    return tau


def _check_timesteps(model: Diffusion, timesteps: Tensor) -> Tensor:
    tau = torch.as_tensor(timesteps, dtype=torch.long).flatten().cpu()
    T = model.num_steps
    if tau.numel() < 2 or tau[0] != 0 or tau[-1] != T or not (tau[1:] > tau[:-1]).all():
        raise ConfigError(
            f"timesteps must increase strictly from 0 to T = {T}, got {tau.tolist()[:8]}…"
        )
    return tau


def _device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    return model.schedule.alpha_bar.device, param_dtype(model)


def _noise_source(
    model: Diffusion,
    num_samples: int,
    num_states: int,
    generator: torch.Generator | None,
    noise: Tensor | None,
):
    """A function i ↦ the standard normal behind the i-th state, from ``noise`` or ``generator``."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ConfigError(f"num_samples must be an integer >= 1, got {num_samples!r}")
    device, dtype = _device_dtype(model)
    shape = (num_samples, *model.event_shape)
    if noise is not None:
        expected = (num_states, *shape)
        if tuple(noise.shape) != expected:
            raise ConfigError(
                f"noise must have shape (states, num_samples, *event_shape) = {expected}, "
                f"got {tuple(noise.shape)}"
            )
        noise = noise.to(device=device, dtype=dtype)
        return lambda i: noise[i]
    return lambda i: torch.randn(shape, generator=generator, device=device, dtype=dtype)


def _decode(likelihood: Likelihood, mean: Tensor, std: Tensor, z: Tensor | None) -> Tensor:
    """A draw from p(x_0 | x_1) as mean + std · z; on the grid for a discretised likelihood.

    Rounding a Gaussian draw to the nearest level (outer bins open) is exactly a draw from
    :class:`~pyrodiff.likelihoods.DiscretizedNormal`. With ``z=None`` the mean is rounded.
    Any other decoder is sampled through its own distribution (torch's global generator).
    """
    if not isinstance(likelihood, GaussianLikelihood | DiscretizedGaussianLikelihood):
        if z is None:
            return mean
        return likelihood.distribution(mean, std.expand_as(mean)).sample()
    x = mean if z is None else mean + std * z
    if isinstance(likelihood, DiscretizedGaussianLikelihood):
        x = likelihood.quantize(x)
    return x


def _prior_draw(model: Diffusion, z: Tensor) -> Tensor:
    return model.prior_loc.to(z) + model.prior_scale.to(z) * z


def _run_chain(
    model: Diffusion, tau: Tensor, draw, return_trajectory: bool
) -> Tensor | tuple[Tensor, Trajectory]:
    """Ancestral sampling of ``model`` along ``tau`` (the model's own timestep indices)."""
    S = tau.numel() - 1
    x = _prior_draw(model, draw(S))
    states = [x] if return_trajectory else None
    steps = tau.tolist()
    moments = model.step_moments(x)
    for i in range(S, 0, -1):
        mean, var = moments(x, steps[i])
        std = var.sqrt()
        if i == 1:
            x = _decode(model.likelihood, mean, std, draw(0))
        else:
            x = mean + std * draw(i - 1)
        if states is not None:
            states.append(x)
    if states is None:
        return x
    return x, Trajectory(tau.clone(), torch.stack(states[::-1]))


@torch.no_grad()
def ancestral_sample(
    model: Diffusion,
    num_samples: int,
    *,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    return_trajectory: bool = False,
) -> Tensor | tuple[Tensor, Trajectory]:
    """x_T ~ p(x_T), x_{t−1} ~ p_θ(x_{t−1} | x_t) for t = T … 2, x_0 ~ p_θ(x_0 | x_1).

    An exact draw from the model p_θ(x_0) (the same law as running the Pyro model, see
    :func:`predictive_sample`), at T network calls. For a discretised likelihood x_0 lies on
    the grid. ``noise`` has shape (T + 1, num_samples, *event_shape) (see the module doc).
    Returns x_0, or (x_0, :class:`Trajectory`) with all T + 1 states.
    """
    tau = torch.arange(model.num_steps + 1)
    draw = _noise_source(model, num_samples, tau.numel(), generator, noise)
    return _run_chain(model, tau, draw, return_trajectory)


@torch.no_grad()
def predictive_sample(
    model: Diffusion, num_samples: int, *, seed: int | None = None, return_sites: bool = False
) -> Tensor | dict[str, Tensor]:
    """The Pyro program itself, run by ``pyro.infer.Predictive``: x_0 ~ p_θ(x_0).

    Slower than :func:`ancestral_sample` (a Pyro site per step) but it *is* the model, which
    makes it the reference the fast samplers are tested against. ``seed`` fixes the draw
    without disturbing the global random state. With ``return_sites`` every site "x_0" …
    "x_T" is returned in a dict, each of shape (num_samples, *event_shape).
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ConfigError(f"num_samples must be an integer >= 1, got {num_samples!r}")
    T = model.num_steps
    sites = [f"x_{t}" for t in range(T + 1)] if return_sites else ["x_0"]
    device = model.schedule.alpha_bar.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if seed is not None:
            # torch's generator only (Pyro draws through it); numpy and random stay untouched
            torch.manual_seed(int(seed))
        predictive = Predictive(model, num_samples=1, return_sites=sites, parallel=False)
        out = predictive(None, num_samples)
    out = {k: v.squeeze(0) for k, v in out.items()}
    return out if return_sites else out["x_0"]


def respace(model: Diffusion, timesteps: Tensor) -> Diffusion:
    """The model restricted to a subsequence τ of its timesteps (improved DDPM's respacing).

    The respaced chain keeps ᾱ on τ (per dimension for a schedule per dimension), so its β's
    are β'_i = 1 − ᾱ_{τ_i} / ᾱ_{τ_{i−1}}; its
    reverse kernels call the *same* denoiser with the original t = τ_i, and fixed variances
    (β or β̃) are recomputed from β'. The result is a :class:`~pyrodiff.Diffusion` with S steps
    sharing the original's parameters, usable with every sampler and ELBO in pyrodiff.
    Per-step learned variances belong to the full chain and have no respaced counterpart.
    """
    tau = _check_timesteps(model, timesteps)
    if model.variance is ReverseVariance.PER_STEP:
        raise ConfigError(
            "a model with ReverseVariance.PER_STEP cannot be respaced: its learned σ_t² belong "
            "to the full chain; sample it with ancestral_sample or ddim_sample"
        )
    ab = model.schedule.alpha_bar.detach().cpu()[..., tau]
    sched = schedule_from_alpha_bar(ab, name=f"respaced_{model.schedule.name}")
    return Diffusion(
        _Respaced(model.denoiser, tau.to(model.schedule.alpha_bar.device)),
        sched.to(model.schedule.alpha_bar.device),
        likelihood=model.likelihood,
        parameterization=model.parameterization,
        variance=model.variance,
        event_shape=model.event_shape,
        prior_loc=model.prior_loc,
        prior_scale=model.prior_scale,
    )


class _Respaced(nn.Module):
    """Calls the wrapped denoiser with τ_i for the respaced step i."""

    def __init__(self, denoiser: nn.Module, tau: Tensor) -> None:
        super().__init__()
        self.inner = denoiser
        self.register_buffer("tau", tau, persistent=False)

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        return self.inner(x_t, self.tau[t])


@torch.no_grad()
def strided_sample(
    model: Diffusion,
    num_samples: int,
    num_steps: int,
    *,
    timesteps: Tensor | None = None,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    return_trajectory: bool = False,
) -> Tensor | tuple[Tensor, Trajectory]:
    """Ancestral sampling of :func:`respace` (model, τ) with S = ``num_steps`` network calls.

    τ is :func:`strided_timesteps` unless ``timesteps`` (0 = τ_0 < … < τ_S = T) is given. With
    S = T this is :func:`ancestral_sample` exactly. The last step decodes x_0 from x_{τ_1}
    through the likelihood with the respaced variance. ``noise`` has shape
    (S + 1, num_samples, *event_shape); the trajectory's timesteps are the original τ.
    """
    tau = strided_timesteps(model.num_steps, num_steps) if timesteps is None else timesteps
    tau = _check_timesteps(model, tau)
    spaced = respace(model, tau)
    draw = _noise_source(model, num_samples, tau.numel(), generator, noise)
    out = _run_chain(spaced, torch.arange(tau.numel()), draw, return_trajectory)
    if return_trajectory:
        x0, traj = out
        return x0, Trajectory(tau.clone(), traj.states)
    return out


@torch.no_grad()
def ddim_sample(
    model: Diffusion,
    num_samples: int,
    num_steps: int,
    eta: float = 0.0,
    *,
    timesteps: Tensor | None = None,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    return_trajectory: bool = False,
) -> Tensor | tuple[Tensor, Trajectory]:
    """DDIM (Song et al., 2021) on τ with stochasticity η.

    From x_t (t = τ_i) to x_s (s = τ_{i−1}), with x̂_0 and ε̂ the denoiser's predictions:

        σ² = η² (1 − ᾱ_s)/(1 − ᾱ_t) · (1 − ᾱ_t/ᾱ_s),
        x_s = √ᾱ_s x̂_0 + √(1 − ᾱ_s − σ²) ε̂ + σ z.

    Whatever η, if x̂_0 were the true x_0 every x_{τ_i} would have the forward marginal
    q(x_{τ_i} | x_0). η = 0 is deterministic given x_T (an ODE discretisation); η = 1 on the
    full sequence is ancestral sampling with σ_t² = β̃_t. The last step has σ = 0 (ᾱ_0 = 1),
    so x_0 = x̂_0(x_{τ_1}, τ_1), put on the grid for a discretised likelihood. The model's own
    reverse variance is not used. ``noise`` has shape (S + 1, num_samples, *event_shape).
    """
    if not (isinstance(eta, float | int) and eta >= 0):
        raise ConfigError(f"eta must be a number >= 0, got {eta!r}")
    tau = strided_timesteps(model.num_steps, num_steps) if timesteps is None else timesteps
    tau = _check_timesteps(model, tau)
    S = tau.numel() - 1
    draw = _noise_source(model, num_samples, S + 1, generator, noise)
    ab = model.schedule.alpha_bar
    x = _prior_draw(model, draw(S))
    states = [x] if return_trajectory else None
    for i in range(S, 0, -1):
        t, s = int(tau[i]), int(tau[i - 1])
        t_vec = torch.full((num_samples,), t, dtype=torch.long, device=x.device)
        x0_hat = model.predict_x0(x, t_vec)
        if i == 1:  # s = 0: σ = 0 and √ᾱ_0 = 1, so x_0 = x̂_0
            x = _decode(model.likelihood, x0_hat, x0_hat, None)
        else:
            eps_hat = eps_from_x0(model.schedule, x, t, x0_hat)
            ab_t, ab_s = ab[..., t], ab[..., s]
            if ab_t.dim() == 0:
                ab_t, ab_s = ab_t.item(), ab_s.item()
            var = eta**2 * (1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)
            if isinstance(var, Tensor):
                # a schedule per dimension: every coefficient has the data's event shape
                dir_coef = (1 - ab_s - var).clamp(min=0.0).sqrt().to(x.dtype)
                x = ab_s.sqrt().to(x.dtype) * x0_hat + dir_coef * eps_hat
                if bool((var > 0).any()):
                    x = x + var.sqrt().to(x.dtype) * draw(i - 1)
            else:
                dir_coef = max(1 - ab_s - var, 0.0) ** 0.5
                x = ab_s**0.5 * x0_hat + dir_coef * eps_hat
                if var > 0:
                    x = x + var**0.5 * draw(i - 1)
        if states is not None:
            states.append(x)
    if states is None:
        return x
    return x, Trajectory(tau.clone(), torch.stack(states[::-1]))
