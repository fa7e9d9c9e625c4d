"""A diffusion model in continuous time, t ∈ [0, 1], over a log-SNR schedule λ(t) (VDM).

The latents are z_t = α_t x + σ_t ε with α_t² = sigmoid(λ(t)), σ_t² = sigmoid(−λ(t)). The
model is p(z_1) (the prior), a reverse process that at every step uses the forward posterior
with the data replaced by the denoiser's estimate x̂_θ(z_t; t), and the decoder p(x | z_0). Its
T = ∞ bound is :class:`~pyrodiff.infer.ContinuousELBO`; evaluated at T steps it is an ordinary
:class:`~pyrodiff.Diffusion` (:meth:`ContinuousDiffusion.discretize`), which every discrete
tool (Trace_ELBO, elbo_terms, the samplers, IWAE) takes unchanged.
"""

from __future__ import annotations

import enum
import warnings

import torch
from pyro.nn import PyroModule
from torch import Tensor, nn

from ..errors import ConfigError
from ..gaussian import Parameterization
from ..likelihoods import GaussianLikelihood, Likelihood
from ..modules import (
    batch_size_argument,
    child,
    data_plate,
    draw_global_sites,
    fast_bound_hook,
    pyro_method,
)
from ..schedules import LinearLogSNR, LogSNRSchedule, alpha_sigma, discrete_times
from ..validation import check_data
from .diffusion import Diffusion, ReverseVariance

__all__ = ["Conditioning", "ContinuousDiffusion"]

# The network sees 1000 × a number in [0, 1], the range of DDPM's integer t, so the sinusoidal
# time embedding of pyrodiff.networks resolves it exactly as it resolves discrete steps.
TIME_SCALE = 1000.0


class Conditioning(enum.Enum):
    """What the denoiser is told about the noise level of z_t."""

    LOG_SNR = "log_snr"
    """1000 (λ_0 − λ(t))/(λ_0 − λ_1), with λ_0 = λ(0), λ_1 = λ(1) the schedule's ends at
    construction: the network is a function of the noise level alone, so the T = ∞ bound depends
    on the schedule only through λ(0) and λ(1) (VDM, eq. 17). The default."""
    TIME = "time"
    """1000 t: the network is a function of t; changing the schedule's interior then changes
    which noise level each input means, and the bound with it."""


class ContinuousDiffusion(PyroModule):
    """p_θ(x, z_{[0,1]}) in continuous time; ``discretize(T)`` is the same model at T steps.

    The decoder reads z_0 directly, as in VDM: p(x | z_0) is the likelihood at location z_0/α_0
    with scale σ_0/α_0 (a Gaussian density for continuous data, the exact binned mass of
    :class:`~pyrodiff.DiscretizedGaussianLikelihood` for quantised data). The prior is
    p(z_1) = N(prior_loc, prior_scale² I).

    Args:
        denoiser: an ``nn.Module`` with ``forward(z_t, c) -> tensor shaped like z_t``, where
            ``c`` (shape (batch,)) is the time feature chosen by ``conditioning``: the
            networks of :mod:`pyrodiff.networks` as they are.
        schedule: the log-SNR schedule λ(t); VDM's linear one from 13.3 to −5 unless given.
        likelihood: the decoder's family; Gaussian unless given.
        parameterization: what the denoiser predicts (ε, x or v).
        conditioning: what the denoiser is told about the noise level.
        event_shape: the shape of one datum; read from ``denoiser.event_shape`` if omitted.
        prior_loc, prior_scale: the prior p(z_1).
        num_steps: the T at which ``forward`` runs the model as a Pyro program.
        name: the prefix of its parameters and sites, in Pyro's convention ("" for none); as a
            Pyro program it is a sub-program like :class:`~pyrodiff.Diffusion` (plates, names,
            particles).
    """

    def __init__(
        self,
        denoiser: nn.Module,
        schedule: LogSNRSchedule | None = None,
        likelihood: Likelihood | None = None,
        parameterization: Parameterization = Parameterization.EPSILON,
        conditioning: Conditioning = Conditioning.LOG_SNR,
        event_shape: tuple[int, ...] | None = None,
        prior_loc: float = 0.0,
        prior_scale: float = 1.0,
        num_steps: int = 1000,
        name: str = "",
    ) -> None:
        super().__init__(name)
        self.name = name
        if not isinstance(parameterization, Parameterization):
            raise ConfigError(
                f"parameterization must be a Parameterization, got {parameterization!r}"
            )
        if not isinstance(conditioning, Conditioning):
            raise ConfigError(f"conditioning must be a Conditioning, got {conditioning!r}")
        schedule = LinearLogSNR() if schedule is None else schedule
        if not isinstance(schedule, LogSNRSchedule):
            raise ConfigError(
                f"schedule must be a LogSNRSchedule (λ(t) on [0, 1]), got {type(schedule).__name__}"
            )
        discrete_times(num_steps)  # checks T >= 2
        if event_shape is None:
            event_shape = getattr(denoiser, "event_shape", None)
            if event_shape is None:
                raise ConfigError(
                    "event_shape is required when the denoiser has no event_shape attribute"
                )
        if not prior_scale > 0:
            raise ConfigError(f"prior_scale must be positive, got {prior_scale!r}")
        self.event_shape = tuple(int(s) for s in event_shape)
        self.denoiser = denoiser
        self.schedule = schedule
        self.likelihood = likelihood if likelihood is not None else GaussianLikelihood()
        self.parameterization = parameterization
        self.conditioning = conditioning
        self.prior_loc = float(prior_loc)
        self.prior_scale = float(prior_scale)
        self.num_steps = int(num_steps)
        self.conditioning_range: tuple[float, float] | None = None
        if conditioning is Conditioning.LOG_SNR:
            start, end = schedule.endpoints()
            if start.numel() != 1:
                raise ConfigError(
                    "Conditioning.LOG_SNR feeds the network one noise level per datum: it needs "
                    "a scalar schedule; give a schedule per dimension Conditioning.TIME"
                )
            self.conditioning_range = (start.item(), end.item())

    @property
    def event_dim(self) -> int:
        return len(self.event_shape)

    def network_input(self, t: Tensor, log_snr: Tensor) -> Tensor:
        """The time feature the denoiser is given at times ``t`` with log-SNR ``log_snr``."""
        if self.conditioning is Conditioning.TIME:
            return TIME_SCALE * t
        start, end = self.conditioning_range
        return TIME_SCALE * (start - log_snr) / (start - end)

    @pyro_method
    def log_snr_and_slope(
        self, t: Tensor, shape_hook=None, latent: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """(λ(t), λ′(t)) of the schedule; ``shape_hook`` goes to a learned schedule's interior
        (see :class:`~pyrodiff.schedules.LearnedLogSNR`), ``latent`` to a schedule conditioned
        on a latent z (:class:`~pyrodiff.models.AdaptiveDiffusion`)."""
        sched = child(self, "schedule")
        kwargs = {} if shape_hook is None else {"shape_hook": shape_hook}
        if latent is not None:
            kwargs["latent"] = latent
        return sched.log_snr_and_slope(t, **kwargs)

    def gamma_and_slope(self, t: Tensor, shape_hook=None) -> tuple[Tensor, Tensor]:
        """Deprecated: (γ, γ′) = (−λ, −λ′); use :meth:`log_snr_and_slope`."""
        warnings.warn(
            "gamma_and_slope is deprecated (γ = −λ); use log_snr_and_slope",
            DeprecationWarning,
            stacklevel=2,
        )
        lam, slope = self.log_snr_and_slope(t, shape_hook)
        return -lam, -slope

    @pyro_method
    def schedule_endpoints(self, latent: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(λ(0), λ(1)), differentiable for a learned schedule (per datum given a latent z)."""
        sched = child(self, "schedule")
        return sched.endpoints() if latent is None else sched.endpoints(latent)

    @pyro_method
    def predict(
        self, z_t: Tensor, t: Tensor, log_snr: Tensor, latent: Tensor | None = None
    ) -> Tensor:
        """The denoiser's raw output (ε̂, x̂ or v̂) at per-datum times ``t`` (shape (batch,)),
        given the latent z when the model has one."""
        c = self.network_input(t, log_snr).to(z_t.dtype)
        if latent is None:
            return child(self, "denoiser")(z_t, c)
        return child(self, "denoiser")(z_t, c, latent=latent)

    def decoder_moments(self, z_0: Tensor, log_snr_0: Tensor) -> tuple[Tensor, Tensor]:
        """(z_0/α_0, σ_0/α_0 = e^{−λ_0/2}): the location and scale of p(x | z_0)."""
        alpha_0, _ = alpha_sigma(log_snr_0)
        scale = torch.exp(-0.5 * log_snr_0).to(z_0.dtype)
        return z_0 / alpha_0.to(z_0.dtype), scale.expand_as(z_0)

    def decoder(self, z_0: Tensor, log_snr_0: Tensor):
        """p(x | z_0): the likelihood at :meth:`decoder_moments`."""
        return self.likelihood.distribution(*self.decoder_moments(z_0, log_snr_0))

    def discretize(self, num_steps: int | None = None) -> Diffusion:
        """This model at T steps: a :class:`~pyrodiff.Diffusion` over the schedule evaluated at
        s_t = (t − 1)/(T − 1), t = 1 … T (x_1 = z_0, x_T = z_1), sharing this model's denoiser
        and its parameters (not a copy).

        Its reverse kernels are VDM's: p(x_{t−1} | x_t) = q(x_{t−1} | x_t, x = x̂_θ(x_t)), i.e.
        the posterior variance β̃_t; its decoder p(x_0 | x_1) is this model's decoder. The
        schedule's current values are frozen into float64 tables: rebuild after training a
        learned schedule. T = ``num_steps`` of the model unless given. It carries this model's
        name, so its sites are this model's.
        """
        T = self.num_steps if num_steps is None else num_steps
        s = discrete_times(T)
        sched = self.schedule.discretize(T)
        with torch.no_grad():
            lam = sched.log_snr.clone()
            lam[..., 0] = lam[..., 1]  # index 0 is the data; no step reads it
            inputs = self.network_input(s, lam.to(s)).double()
            log_var = torch.log(sched.posterior_variance.clamp(min=1e-300))
            # the decoder's variance σ_0²/α_0² = e^{−λ_0} (index 0 is unused); per dimension
            # for a schedule per dimension (time on the tables' last axis)
            log_var[..., :2] = -lam[..., 1:2]
        adapter = _DiscreteTimeDenoiser(self.denoiser, inputs, self.parameterization, sched)
        # a fixed table, not a free parameter: these are VDM's variances, not learned ones
        model = Diffusion(
            adapter,
            sched,
            likelihood=self.likelihood,
            parameterization=self.parameterization,
            variance=ReverseVariance.PER_STEP,
            event_shape=self.event_shape,
            prior_loc=self.prior_loc,
            prior_scale=self.prior_scale,
            fixed_log_variance=log_var,
            name=self.name,
        )
        # the new tables follow the shared denoiser's device (a no-op for the denoiser itself)
        device = next(self.denoiser.parameters(), torch.empty(0)).device
        return model.to(device)

    def forward(
        self,
        x0: Tensor | None = None,
        batch_size: int | None = None,
        *,
        num_samples: int | None = None,
    ) -> Tensor:
        """Run the model as a Pyro program at T = ``num_steps`` (sites ``"x_0"`` … ``"x_T"``);
        ``batch_size`` draws when ``x0`` is not given (``num_samples=`` is its deprecated name).
        Under :class:`~pyrodiff.infer.ContinuousELBO` run on a user's program, the T = ∞ bound
        stands in for the chain."""
        batch_size = batch_size_argument(batch_size, num_samples)
        if x0 is not None:
            check_data(x0, self.event_shape, self.likelihood, name="x0")
        hook = fast_bound_hook()
        if hook is None:
            return self.discretize()(x0, batch_size)
        draw_global_sites(self)
        size = x0.shape[0] if x0 is not None else batch_size
        with data_plate(self, size, "the model") as batch:
            return hook.model(self, x0, batch)

    def config(self) -> dict:
        """A JSON-able description of the structure (not the weights)."""
        return {
            "kind": "continuous",
            "num_steps": self.num_steps,
            "event_shape": list(self.event_shape),
            "parameterization": self.parameterization.value,
            "conditioning": self.conditioning.value,
            "likelihood": self.likelihood.config(),
            "schedule": self.schedule.config(),
        }


class _DiscreteTimeDenoiser(nn.Module):
    """The continuous denoiser read at integer steps: t ↦ the time feature of s_t.

    At t = 1 it returns the output that makes x̂ = x_1/√ᾱ_1 (ε̂ = 0, x̂ = x_1/√ᾱ_1,
    v̂ = −√(1 − ᾱ_1)/√ᾱ_1 · x_1), so the decoder of the discrete chain is the continuous model's
    network-free decoder.
    """

    def __init__(
        self,
        denoiser: nn.Module,
        inputs: Tensor,
        parameterization: Parameterization,
        schedule,
    ) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.event_shape = getattr(denoiser, "event_shape", None)
        self.register_buffer("inputs", inputs, persistent=False)
        ab1 = schedule.alpha_bar[..., 1]
        # one number for a scalar schedule; the data's shape for a schedule per dimension
        ab1 = ab1.item() if ab1.dim() == 0 else ab1.clone()
        if parameterization is Parameterization.EPSILON:
            self.identity_gain = 0.0
        elif parameterization is Parameterization.X0:
            self.identity_gain = ab1**-0.5
        else:
            self.identity_gain = -(((1.0 - ab1) / ab1) ** 0.5)

    @property
    def is_affine(self) -> bool:
        """True when the wrapped denoiser is affine in z_t (closed-form evidence applies)."""
        return bool(getattr(self.denoiser, "is_affine", False))

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        out = self.denoiser(x_t, self.inputs.index_select(0, t).to(x_t.dtype))
        at_one = (t == 1).reshape((-1,) + (1,) * (x_t.dim() - 1))
        gain = self.identity_gain
        if isinstance(gain, Tensor):
            gain = gain.to(device=x_t.device, dtype=x_t.dtype)
        return torch.where(at_one, gain * x_t, out)
