"""A diffusion model whose noise process is multivariate and input-adaptive (MuLAN).

The model draws an auxiliary latent z ~ p(z) = N(0, I) and then the reverse chain of a
:class:`~pyrodiff.models.ContinuousDiffusion` whose log-SNR schedule λ(t | z) has one curve per
dimension of the data and depends on z (:class:`~pyrodiff.schedules.MultivariateLogSNR`), and
whose denoiser sees z. Its guide, :class:`~pyrodiff.guides.AdaptiveNoiseGuide`, draws z from an
amortised q_φ(z | x_0) and then runs the forward process under the same λ(· | z), so
q(x_t | x_0, z) = N(α_t(z) x_0, σ_t(z)²) stays Gaussian in closed form and the bounds keep one
network call per datum, at any T and at T = ∞:

    ELBO(x_0) = E_{q(z | x_0)}[ELBO(x_0 | z)] − KL(q(z | x_0) ‖ p(z)),

with ELBO(x_0 | z) the bound of the z-conditioned model (:class:`~pyrodiff.infer.ContinuousELBO`
at T = ∞, :class:`~pyrodiff.infer.DiffusionELBO` at the model's T).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn

from ..errors import ConfigError, ModelMismatchError
from ..gaussian import Parameterization, log_snr_posterior_moments, x0_from_output
from ..likelihoods import Likelihood
from ..modules import (
    batch_size_argument,
    child,
    data_plate,
    draw_global_sites,
    fast_bound_hook,
    pyro_method,
    site_name,
)
from ..schedules import alpha_sigma, discrete_times
from ..schedules.multivariate import LatentLogSNR, MultivariateLogSNR
from ..validation import check_data
from .continuous import Conditioning, ContinuousDiffusion

__all__ = ["AdaptiveDiffusion"]


class AdaptiveDiffusion(ContinuousDiffusion):
    """p_θ(z) p_θ(x, x_{1:T} | z): a diffusion model over a noise process conditioned on z.

    As a Pyro program (Trace_ELBO, Predictive) it is the literal chain at T = ``num_steps``:
    site ``"z"`` from p(z) = N(0, I_K), ``"x_T"`` from the prior N(prior_loc, prior_scale² I),
    ``"x_{t−1}"`` from VDM's reverse kernel q(x_{t−1} | x_t, x_0 = x̂_θ(x_t; t, z), z) for
    t = T … 2 at the times s_t = (t − 1)/(T − 1), and ``"x_0"`` from the decoder p(x | z_0)
    (all sites under ``name``, in the caller's plate, with particle dimensions as any Pyro
    program). The fast bounds read the same model in closed form.

    Args:
        denoiser: an ``nn.Module`` with ``forward(z_t, c, latent=z)``, ``c`` = 1000 t (the
            networks of :mod:`pyrodiff.networks` built with ``latent_dim``).
        schedule: a :class:`~pyrodiff.schedules.MultivariateLogSNR` with the same
            ``latent_dim``; its event shape is the data's or () (one curve for all dimensions).
        latent_dim: K, the size of z (>= 1).
        likelihood, parameterization, event_shape, prior_loc, prior_scale, num_steps, name: as
            :class:`~pyrodiff.models.ContinuousDiffusion`.

    The denoiser is told t (:attr:`Conditioning.TIME`): with one curve per dimension there is
    no single noise level to tell it.
    """

    def __init__(
        self,
        denoiser: nn.Module,
        schedule: MultivariateLogSNR,
        latent_dim: int,
        likelihood: Likelihood | None = None,
        parameterization: Parameterization = Parameterization.EPSILON,
        event_shape: tuple[int, ...] | None = None,
        prior_loc: float = 0.0,
        prior_scale: float = 1.0,
        num_steps: int = 1000,
        name: str = "",
    ) -> None:
        if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 1:
            raise ConfigError(f"latent_dim must be an integer >= 1, got {latent_dim!r}")
        if not isinstance(schedule, MultivariateLogSNR) or schedule.latent_dim != latent_dim:
            got = getattr(schedule, "latent_dim", None)
            raise ConfigError(
                f"schedule must be a MultivariateLogSNR with latent_dim = {latent_dim}, got "
                f"{type(schedule).__name__} with latent_dim = {got}"
            )
        super().__init__(
            denoiser,
            schedule,
            likelihood=likelihood,
            parameterization=parameterization,
            conditioning=Conditioning.TIME,
            event_shape=event_shape,
            prior_loc=prior_loc,
            prior_scale=prior_scale,
            num_steps=num_steps,
            name=name,
        )
        if schedule.event_shape not in ((), self.event_shape):
            raise ConfigError(
                f"the schedule's event shape {schedule.event_shape} must be () or the data's "
                f"{self.event_shape}"
            )
        self.latent_dim = latent_dim

    def latent_prior(self, batch_size: int, like: Tensor) -> dist.Distribution:
        """p(z) = N(0, I_K), batch shape (batch_size,), in ``like``'s dtype and device."""
        zeros = like.new_zeros((batch_size, self.latent_dim))
        return dist.Normal(zeros, torch.ones_like(zeros)).to_event(1)

    def latent_prior_moments(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, variance) of p(z), 0 and 1, in ``like``'s dtype (for the analytic KL)."""
        one = torch.ones((), dtype=like.dtype, device=like.device)
        return one * 0.0, one

    @pyro_method
    def log_snr_given(self, latent: Tensor, like: Tensor | None = None) -> LatentLogSNR:
        """λ(· | z) at the draws ``latent`` (shape (N, latent_dim)), in ``like``'s dtype: the
        schedule's network of z runs once, however many times are read from the result
        (:meth:`~pyrodiff.schedules.MultivariateLogSNR.given`)."""
        return child(self, "schedule").given(latent, like)

    def discretize(self, num_steps: int | None = None):
        raise ModelMismatchError(
            "an AdaptiveDiffusion has no fixed discrete chain: its schedule depends on z. Its "
            "T-step bound is DiffusionELBO (or ContinuousELBO(num_steps=T)), its literal chain "
            "the model itself under Trace_ELBO, and model(batch_size=n) samples it"
        )

    @pyro_method
    def reverse_kernel_moments(
        self, x_t: Tensor, latent: Tensor, step: int, num_steps: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """(mean, standard deviation) of p_θ(x_{t−1} | x_t, z) at step ``step`` ∈ {2 … T} of the
        T-step chain (T = ``num_steps`` of the model unless given): VDM's kernel, the forward
        posterior between λ(s_{t−1} | z) and λ(s_t | z) with x̂_θ in place of x_0. Leading
        dimensions of ``x_t`` beyond one batch dimension (particles) are flattened for the
        network and restored."""
        T = self.num_steps if num_steps is None else num_steps
        times = discrete_times(T)
        shape = x_t.shape
        x = x_t.reshape((-1,) + self.event_shape)
        z = latent.reshape(-1, self.latent_dim)
        n = x.shape[0]
        s_prev = torch.full((n,), times[step - 1].item(), dtype=x.dtype, device=x.device)
        s_now = torch.full((n,), times[step].item(), dtype=x.dtype, device=x.device)
        noise_process = self.log_snr_given(z, x)
        lam_prev = self._per_datum(noise_process.log_snr(s_prev), x)
        lam_now = self._per_datum(noise_process.log_snr(s_now), x)
        out = self.predict(x, s_now, lam_now, latent=z)
        alpha, sigma = alpha_sigma(lam_now)
        x0_hat = x0_from_output(self.parameterization, alpha, sigma, x, out)
        mean, std = log_snr_posterior_moments(lam_prev, lam_now, x0_hat, x)
        return mean.reshape(shape), std.expand_as(x).reshape(shape)

    def _per_datum(self, lam: Tensor, like: Tensor) -> Tensor:
        return lam.reshape(lam.shape + (1,) * (like.dim() - lam.dim()))

    def forward(
        self,
        x0: Tensor | None = None,
        batch_size: int | None = None,
        *,
        num_samples: int | None = None,
    ) -> Tensor:
        """Run p_θ(z, x_{0:T}) as a Pyro program (the literal chain at T = ``num_steps``);
        returns x_0, ``batch_size`` draws when ``x0`` is not given."""
        batch_size = batch_size_argument(batch_size, num_samples)
        if x0 is not None:
            check_data(x0, self.event_shape, self.likelihood, name="x0")
        if fast_bound_hook() is not None:
            raise ModelMismatchError(
                "the fast bounds of a user's program do not take an AdaptiveDiffusion: evaluate "
                "the model and its AdaptiveNoiseGuide themselves, or the program with Trace_ELBO"
            )
        draw_global_sites(self)
        size = x0.shape[0] if x0 is not None else batch_size
        # a scalar in the data's dtype and device (the default dtype when sampling)
        like = x0.new_zeros(()) if x0 is not None else torch.zeros(())
        T, E = self.num_steps, self.event_dim
        with data_plate(self, size, "the model") as batch:
            z = pyro.sample(site_name(self, "z"), self.latent_prior(batch, like))
            loc = like.new_full((batch, *self.event_shape), self.prior_loc)
            scale = torch.full_like(loc, self.prior_scale)
            x = pyro.sample(site_name(self, f"x_{T}"), dist.Normal(loc, scale).to_event(E))
            for t in range(T, 1, -1):
                mean, std = self.reverse_kernel_moments(x, z, t)
                x = pyro.sample(site_name(self, f"x_{t - 1}"), dist.Normal(mean, std).to_event(E))
            lam_0 = self._ends_per_datum(x, z)[0]
            dec_loc, dec_scale = self.decoder_moments(x, lam_0)
            decoder = child(self, "likelihood").distribution(dec_loc, dec_scale).to_event(E)
            return pyro.sample(site_name(self, "x_0"), decoder, obs=x0)

    def _ends_per_datum(self, like: Tensor, latent: Tensor) -> tuple[Tensor, Tensor]:
        """(λ(0 | z), λ(1 | z)) shaped to broadcast over ``like`` (any leading dimensions)."""
        z = latent.reshape(-1, self.latent_dim)
        l0, l1 = self.schedule_endpoints(latent=z)
        lead = like.shape[: like.dim() - self.event_dim]
        sched_shape = self.schedule.event_shape
        out = []
        for lam in (l0, l1):
            lam = lam.to(like.dtype).reshape(lead + sched_shape)
            out.append(lam.reshape(lam.shape + (1,) * (like.dim() - lam.dim())))
        return out[0], out[1]

    def config(self) -> dict:
        out = super().config()
        out["kind"] = "adaptive"
        out["latent_dim"] = self.latent_dim
        return out
