"""A learned, multivariate and input-adaptive forward process as a Pyro guide (MuLAN).

q_φ(z, x_{1:T} | x_0) = q_φ(z | x_0) q(x_{1:T} | x_0, z): an amortised Gaussian over an auxiliary
latent z, then the forward process under the model's log-SNR schedule λ(t | z), one curve per
dimension (:class:`~pyrodiff.schedules.MultivariateLogSNR`). Its marginals
q(x_t | x_0, z) = N(α_t(z) x_0, σ_t(z)²) are closed forms, so the model's bounds
(:class:`~pyrodiff.infer.ContinuousELBO`, :class:`~pyrodiff.infer.DiffusionELBO`) cost one
encoder call, one network call per datum and the analytic KL(q(z | x_0) ‖ p(z)).
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.nn import PyroModule
from torch import Tensor, nn

from ..errors import ConfigError, DataError, ModelMismatchError
from ..gaussian import gaussian_kl, log_snr_marginal_moments, log_snr_posterior_moments
from ..modules import batch_size_argument, child, data_plate, fast_bound_hook, site_name
from ..schedules import discrete_times
from ..schedules.multivariate import LatentLogSNR, MultivariateLogSNR

__all__ = ["AdaptiveNoiseGuide", "GaussianEncoder"]


class GaussianEncoder(nn.Module):
    """q_φ(z | x_0) = N(μ_φ(x_0), diag σ_φ(x_0)²): a two-layer MLP of the flattened datum.

    Its last layer starts at zero, so a fresh encoder is p(z) = N(0, I) for every x_0 and the
    KL term starts at 0.
    """

    def __init__(self, event_shape: tuple[int, ...], latent_dim: int, hidden: int = 128) -> None:
        super().__init__()
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ConfigError(f"hidden must be an integer >= 1, got {hidden!r}")
        self.event_shape = tuple(int(s) for s in event_shape)
        self.latent_dim = latent_dim
        last = nn.Linear(hidden, 2 * latent_dim)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(
            nn.Linear(math.prod(self.event_shape), hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            last,
        )

    def forward(self, x0: Tensor) -> tuple[Tensor, Tensor]:
        """(μ, σ) of q(z | x_0), shape (N, latent_dim) for x0 of shape (N, *event_shape)."""
        flat = x0.reshape(x0.shape[0], -1).to(self.net[0].weight.dtype)
        loc, raw = self.net(flat).to(x0.dtype).chunk(2, dim=-1)
        # softplus(raw + log(e − 1)) = 1 at raw = 0: the fresh encoder's scale is the prior's
        return loc, F.softplus(raw + math.log(math.e - 1.0))


class AdaptiveNoiseGuide(PyroModule):
    """q_φ(z | x_0) q(x_{1:T} | x_0, z) of an :class:`~pyrodiff.models.AdaptiveDiffusion`.

    Build it with :meth:`for_model`: it shares the model's schedule (the noise process is one
    module, trained by both terms of the bound) and takes the model's name, event shape and T.
    As a Pyro program it draws ``"z"`` and then the forward process top-down (``"x_T"``, then
    ``"x_{t−1}"`` from q(x_{t−1} | x_t, x_0, z)), the order whose sites match the model's; the
    fast bounds call :meth:`latent` and the closed forms instead.
    """

    def __init__(
        self,
        schedule: MultivariateLogSNR,
        event_shape: tuple[int, ...],
        num_steps: int = 1000,
        hidden: int = 128,
        name: str = "",
    ) -> None:
        super().__init__(name)
        if not isinstance(schedule, MultivariateLogSNR) or schedule.latent_dim < 1:
            raise ConfigError(
                "AdaptiveNoiseGuide needs a MultivariateLogSNR conditioned on a latent "
                f"(latent_dim >= 1), got {type(schedule).__name__}"
            )
        discrete_times(num_steps)  # checks T >= 2
        self.name = name
        self.event_shape = tuple(int(s) for s in event_shape)
        self.latent_dim = schedule.latent_dim
        self.num_steps = int(num_steps)
        self.schedule = schedule
        self.encoder = GaussianEncoder(self.event_shape, self.latent_dim, hidden)

    @classmethod
    def for_model(cls, model, hidden: int = 128) -> AdaptiveNoiseGuide:
        """The guide of ``model`` (an AdaptiveDiffusion): its schedule, name, shape and T."""
        if not hasattr(model, "latent_dim") or not isinstance(model.schedule, MultivariateLogSNR):
            raise ModelMismatchError(
                f"AdaptiveNoiseGuide serves an AdaptiveDiffusion, got {type(model).__name__}"
            )
        return cls(
            model.schedule,
            model.event_shape,
            num_steps=model.num_steps,
            hidden=hidden,
            name=model.name,
        )

    def latent_moments(self, x0: Tensor) -> tuple[Tensor, Tensor]:
        """(μ, σ) of q_φ(z | x_0), shape (N, latent_dim)."""
        return child(self, "encoder")(x0)

    def latent(
        self,
        x0: Tensor,
        prior_loc: Tensor,
        prior_var: Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """(z, KL): a reparameterised draw z ~ q_φ(z | x_0) (its noise from ``generator`` when
        given) and KL(q_φ(z | x_0) ‖ p(z)) per datum in closed form, for
        p(z) = N(prior_loc, prior_var I)."""
        loc, scale = self.latent_moments(x0)
        noise = torch.randn(loc.shape, generator=generator, dtype=loc.dtype, device=loc.device)
        z = loc + scale * noise
        kl = gaussian_kl(loc, scale**2, prior_loc, prior_var).sum(-1)
        return z, kl

    def _log_snr(self, s: float, z: Tensor, noise_process: LatentLogSNR, like: Tensor) -> Tensor:
        """λ(s | z) shaped to broadcast over ``like`` (z may carry particle dimensions), read
        from ``noise_process``, λ(· | z) at the flattened draws."""
        t = torch.full((z[..., 0].numel(),), s, dtype=like.dtype, device=like.device)
        lam = noise_process.log_snr(t).to(like.dtype)
        lam = lam.reshape(z.shape[:-1] + self.schedule.event_shape)
        return lam.reshape(lam.shape + (1,) * (like.dim() - lam.dim()))

    def forward(
        self,
        x0: Tensor | None = None,
        batch_size: int | None = None,
        *,
        num_samples: int | None = None,
    ) -> None:
        batch_size_argument(batch_size, num_samples)
        if x0 is None:
            raise DataError("the adaptive guide needs the data x0: it is q(z, x_{1:T} | x_0)")
        if fast_bound_hook() is not None:
            raise ModelMismatchError(
                "the fast bounds of a user's program do not take an AdaptiveNoiseGuide: evaluate "
                "the model and the guide themselves, or the program with Trace_ELBO"
            )
        event_dim = len(self.event_shape)
        size = x0.shape[x0.dim() - event_dim - 1]
        T = self.num_steps
        times = discrete_times(T).tolist()
        with data_plate(self, size, "the guide's x0"):
            loc, scale = self.latent_moments(x0.reshape((-1,) + self.event_shape))
            lead = x0.shape[: x0.dim() - event_dim]
            q_z = dist.Normal(loc.reshape(lead + (-1,)), scale.reshape(lead + (-1,)))
            z = pyro.sample(site_name(self, "z"), q_z.to_event(1))
            like = x0.expand(z.shape[:-1] + self.event_shape)
            # the network of z once for the whole chain, not twice per step
            noise_process = child(self, "schedule").given(z.reshape(-1, self.latent_dim), like)
            m, sd = log_snr_marginal_moments(self._log_snr(1.0, z, noise_process, like), like)
            x = pyro.sample(
                site_name(self, f"x_{T}"), dist.Normal(m, sd.expand_as(m)).to_event(event_dim)
            )
            for t in range(T, 1, -1):
                lam_prev = self._log_snr(times[t - 1], z, noise_process, like)
                lam_now = self._log_snr(times[t], z, noise_process, like)
                m, sd = log_snr_posterior_moments(lam_prev, lam_now, like, x)
                q = dist.Normal(m, sd.expand_as(m)).to_event(event_dim)
                x = pyro.sample(site_name(self, f"x_{t - 1}"), q)
