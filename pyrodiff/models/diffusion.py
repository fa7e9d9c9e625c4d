"""The generative model p_θ(x_{0:T}) of a denoising diffusion model, as a Pyro program."""

from __future__ import annotations

import enum
from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import Tensor, nn

from ..errors import ConfigError
from ..gaussian import (
    Parameterization,
    coef,
    coef_rows,
    predict_x0,
    reverse_mean_table,
    schedule_event_dim,
    schedule_table,
)
from ..likelihoods import GaussianLikelihood, Likelihood
from ..modules import (
    batch_size_argument,
    child,
    data_plate,
    draw_global_sites,
    fast_bound_hook,
    pyro_method,
    site_name,
)
from ..schedules import NoiseSchedule
from ..validation import check_data, check_schedule_shape

__all__ = ["Diffusion", "ReverseVariance"]


class ReverseVariance(enum.Enum):
    """The variance σ_t² of the reverse kernel p_θ(x_{t−1} | x_t) = N(μ_θ, σ_t² I)."""

    BETA = "beta"
    """σ_t² = β_t: DDPM's "large" choice, the right one when x_0 ~ N(0, I)."""
    POSTERIOR = "posterior"
    """σ_t² = β̃_t: DDPM's "small" choice, right when x_0 is a point mass. At t = 1, where β̃_1 = 0,
    the decoder uses β̃_2 (β_1 when T = 1)."""
    PER_STEP = "per_step"
    """a free parameter log σ_t² for every t, initialised at log β_t; it keeps the model
    linear-Gaussian with a :class:`~pyrodiff.networks.LinearDenoiser`, and lets that family contain
    the exact reverse process of isotropic Gaussian data."""
    LEARNED_RANGE = "learned_range"
    """improved DDPM: the denoiser returns twice the channels, the second half v ∈ R per element,
    and log σ_t² = v log β_t + (1 − v) log β̃_t (with β̃_1 replaced as for POSTERIOR)."""


class Diffusion(PyroModule):
    """p_θ(x_{0:T}) = p(x_T) Π_{t=2}^T p_θ(x_{t−1} | x_t) · p_θ(x_0 | x_1).

    Calling the module runs the Pyro model: site ``"x_T"`` (the real number, e.g. ``"x_100"``)
    from the prior N(prior_loc, prior_scale² I), then ``"x_{t-1}"`` from the reverse kernel for
    t = T … 2, then ``"x_0"`` from the likelihood, observed when ``x0`` is given.

    It is a sub-program the way Pyro's own modules are. A ``name`` prefixes its sites
    (``"prior.x_0"``; unnamed, ``"x_0"`` … ``"x_T"``) and its parameters (which, in Pyro's
    convention, take the attribute path instead once a :class:`~pyro.nn.PyroModule` holds it;
    the sites keep the name). Called inside a
    ``pyro.plate`` at the rightmost batch dimension it joins that plate (any name; subsampled,
    the plate scales it by N/B); outside one, data lives in its own ``pyro.plate("data")`` over
    the first dimension. Particle and ``Predictive`` plates broadcast it. ``PyroSample``
    attributes of its submodules (a Bayesian denoiser's weights) are drawn once per run,
    outside the data plate.

    The reverse mean is the forward posterior mean with the data replaced by the denoiser's
    estimate, μ_θ(x_t, t) = μ̃_t(x_t, x̂_0(x_t, t)); the denoiser's output is read as ε, x_0 or v
    according to ``parameterization``.

    Args:
        denoiser: any ``nn.Module`` with ``forward(x_t, t) -> tensor shaped like x_t``.
        schedule: the forward chain's schedule; the model uses the same ᾱ_t. A schedule per
            dimension (``schedule.event_shape`` equal to ``event_shape``) makes every σ_t² and
            every mean coefficient a vector over the data's dimensions: p_θ(x_{t−1} | x_t) =
            N(μ_θ, diag(σ_t²)).
        likelihood: the decoder p(x_0 | x_1); Gaussian unless given.
        parameterization: what the denoiser predicts.
        variance: the reverse variance σ_t².
        event_shape: the shape of one datum; read from ``denoiser.event_shape`` if omitted.
        prior_loc, prior_scale: p(x_T) = N(prior_loc, prior_scale² I); DDPM's N(0, I) by default.
        fixed_log_variance: with ``variance=PER_STEP``, a table of log σ_t² (shape
            (*schedule.event_shape, T + 1), the schedule's tables' shape) held fixed as a buffer
            instead of learned (a continuous model's discretisation uses it).
        name: the prefix of its parameters and sites, in Pyro's convention ("" for none).
    """

    def __init__(
        self,
        denoiser: nn.Module,
        schedule: NoiseSchedule,
        likelihood: Likelihood | None = None,
        parameterization: Parameterization = Parameterization.EPSILON,
        variance: ReverseVariance = ReverseVariance.BETA,
        event_shape: tuple[int, ...] | None = None,
        prior_loc: float | Tensor = 0.0,
        prior_scale: float | Tensor = 1.0,
        fixed_log_variance: Tensor | None = None,
        name: str = "",
    ) -> None:
        super().__init__(name)
        self.name = name
        if not isinstance(parameterization, Parameterization):
            raise ConfigError(
                f"parameterization must be a Parameterization, got {parameterization!r}"
            )
        if not isinstance(variance, ReverseVariance):
            raise ConfigError(f"variance must be a ReverseVariance, got {variance!r}")
        if not isinstance(schedule, nn.Module) or not hasattr(schedule, "alpha_bar"):
            raise ConfigError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
        if event_shape is None:
            event_shape = getattr(denoiser, "event_shape", None)
            if event_shape is None:
                raise ConfigError(
                    "event_shape is required when the denoiser has no event_shape attribute"
                )
        self.event_shape = tuple(int(s) for s in event_shape)
        check_schedule_shape(schedule, self.event_shape)
        # how many axes of the schedule's tables are the data's (see gaussian.coef)
        self._table_event_dim = schedule_event_dim(schedule)
        self.denoiser = denoiser
        self.schedule = schedule
        self.likelihood = likelihood if likelihood is not None else GaussianLikelihood()
        self.parameterization = parameterization
        self.variance = variance
        self.register_buffer("prior_loc", torch.as_tensor(prior_loc, dtype=torch.float64))
        self.register_buffer("prior_scale", torch.as_tensor(prior_scale, dtype=torch.float64))
        if (self.prior_scale <= 0).any():
            raise ConfigError(f"prior_scale must be positive, got {prior_scale!r}")
        if fixed_log_variance is not None:
            if variance is not ReverseVariance.PER_STEP:
                raise ConfigError(
                    f"fixed_log_variance is a PER_STEP table; got variance={variance.name}"
                )
            table_shape = tuple(getattr(schedule, "event_shape", ())) + (schedule.num_steps + 1,)
            if tuple(fixed_log_variance.shape) != table_shape:
                raise ConfigError(
                    f"fixed_log_variance must have the schedule's table shape "
                    f"(*event, T + 1) = {table_shape}, got {tuple(fixed_log_variance.shape)}"
                )
            self.register_buffer("log_variance", fixed_log_variance)
        elif variance is ReverseVariance.PER_STEP:
            self.log_variance = nn.Parameter(
                torch.log(schedule.betas.detach().clamp(min=1e-20)).to(torch.get_default_dtype())
            )

    @property
    def num_steps(self) -> int:
        """T."""
        return self._modules["schedule"].num_steps

    @property
    def event_dim(self) -> int:
        return len(self.event_shape)

    # --- the pieces, vectorised over a per-datum timestep tensor t --------------------------

    @pyro_method
    def reverse_moments(self, x_t: Tensor, t: int | Tensor) -> tuple[Tensor, Tensor]:
        """(μ_θ(x_t, t), σ_t²) of p_θ(x_{t−1} | x_t), for a LongTensor ``t`` of shape (batch,)
        or one step ``t`` (an int) for the whole batch.

        At t = 1 these are the decoder's location x̂_0(x_1, 1) and variance. σ_t² has shape
        ``(batch, 1, …)`` for fixed variances and a per-datum ``t`` (0-d for an int ``t``),
        and x_t's shape for LEARNED_RANGE; over a schedule per dimension, fixed variances have
        shape ``(batch, *event)`` (``event`` for an int ``t``).
        """
        sched = child(self, "schedule")
        batch_shape = x_t.shape[: x_t.dim() - self.event_dim]
        at = None
        if not isinstance(t, Tensor):
            at = int(t)
            t = torch.full((), at, dtype=torch.long, device=x_t.device)
        if len(batch_shape) != 1:
            # extra leading dims (vectorised particles, Predictive): the denoiser sees one batch
            t = t.expand(batch_shape).reshape(-1)
            x_t = x_t.reshape((-1,) + self.event_shape)
        elif t.shape != batch_shape:
            t = t.expand(batch_shape)
        mean, var = self._moments(x_t, t, at, self._reverse_tables(sched, x_t))
        if len(batch_shape) != 1:
            mean = mean.reshape(batch_shape + mean.shape[1:])
            # one σ² for every datum (an int t): 0-d, or the event's shape per dimension
            if var.dim() > self._table_event_dim:
                var = var.reshape(batch_shape + var.shape[1:])
        return mean, var

    def step_moments(self, like: Tensor) -> Callable[[Tensor, int], tuple[Tensor, Tensor]]:
        """``(x_t, t) ↦ reverse_moments(x_t, t)`` for an int step ``t``, with the coefficient
        tables fetched once, in ``like``'s dtype and device, for a loop over t (the samplers).

        Outside a Pyro handler (where the samplers run) it gives exactly what
        :meth:`reverse_moments` gives; the model's parameters are read as plain tensors.
        """
        tables = self._reverse_tables(self._modules["schedule"], like)

        def moments(x_t: Tensor, t: int) -> tuple[Tensor, Tensor]:
            t_vec = torch.full((x_t.shape[0],), t, dtype=torch.long, device=x_t.device)
            return self._moments(x_t, t_vec, t, tables)

        return moments

    def _reverse_tables(self, sched: NoiseSchedule, like: Tensor) -> tuple[Tensor, Tensor]:
        """(the (2, [*event,] T + 1) reverse-mean table, the variance table) in ``like``'s
        dtype; for LEARNED_RANGE the variance table has the rows (log β̃_t, log β_t), for
        PER_STEP it is log σ_t² (the parameter itself, so gradients reach it)."""
        mean = reverse_mean_table(self.parameterization, sched, like)
        if self.variance is ReverseVariance.LEARNED_RANGE:
            var = schedule_table(sched, _log_variance_range, like)
        elif self.variance is ReverseVariance.PER_STEP:
            var = self.log_variance
        elif self.variance is ReverseVariance.BETA:
            var = schedule_table(sched, _beta, like)
        else:
            var = schedule_table(sched, _posterior_variance, like)
        return mean, var

    def _moments(
        self, x_t: Tensor, t: Tensor, at: int | None, tables: tuple[Tensor, Tensor]
    ) -> tuple[Tensor, Tensor]:
        """(μ_θ, σ_t²) at per-datum timesteps ``t``; ``at``, when every datum is at the same
        step, lets the coefficients be read as one number each instead of a gather."""
        step = t if at is None else at
        e = self._table_event_dim
        mean_table, var_table = tables
        out, frac = self._split_output(child(self, "denoiser")(x_t, t))
        if self.variance is ReverseVariance.LEARNED_RANGE:
            lo, hi = coef_rows(var_table, step, x_t, e)
            var = torch.exp(frac * hi + (1 - frac) * lo)
        elif self.variance is ReverseVariance.PER_STEP:
            var = coef(var_table, step, x_t, e).exp()
        else:
            var = coef(var_table, step, x_t, e)
        a, b = coef_rows(mean_table, step, x_t, e)
        return a * x_t + b * out, var

    def _split_output(self, out: Tensor) -> tuple[Tensor, Tensor | None]:
        """(the output the mean reads, the variance fraction v or None): for LEARNED_RANGE the
        denoiser returns twice the channels, the second half parameterising the variance."""
        if self.variance is ReverseVariance.LEARNED_RANGE:
            mean_out, frac = out.chunk(2, dim=1)
            return mean_out, frac
        return out, None

    @pyro_method
    def predict_x0(self, x_t: Tensor, t: int | Tensor) -> Tensor:
        """x̂_0(x_t, t), the data the denoiser's output implies under the parameterisation, for
        a LongTensor ``t`` of shape (batch,): what DDIM and other samplers step towards."""
        out, _ = self._split_output(child(self, "denoiser")(x_t, t))
        return predict_x0(self.parameterization, child(self, "schedule"), x_t, t, out)

    def prior(self, batch_size: int, like: Tensor | None = None) -> dist.Distribution:
        """p(x_T) = N(prior_loc, prior_scale² I) with batch shape (batch_size,)."""
        dtype = like.dtype if like is not None else torch.get_default_dtype()
        loc = self.prior_loc.to(dtype)
        scale = self.prior_scale.to(dtype)
        shape = (batch_size, *self.event_shape)
        return dist.Normal(loc.expand(shape), scale.expand(shape)).to_event(self.event_dim)

    def reverse_kernel(self, x_t: Tensor, t: int | Tensor) -> dist.Distribution:
        """p_θ(x_{t−1} | x_t) for t ≥ 2 (a Normal), or the likelihood p_θ(x_0 | x_1) at t = 1."""
        mean, var = self.reverse_moments(x_t, t)
        is_one = bool((t == 1).all()) if isinstance(t, Tensor) else t == 1
        if is_one:
            base = child(self, "likelihood").distribution(mean, var.sqrt())
        else:
            base = dist.Normal(mean, var.sqrt().expand_as(mean))
        return base.to_event(self.event_dim)

    # --- the Pyro model ---------------------------------------------------------------------

    def forward(
        self,
        x0: Tensor | None = None,
        batch_size: int | None = None,
        *,
        num_samples: int | None = None,
    ) -> Tensor:
        """Run p_θ(x_{0:T}); returns x_0 (the observed data when ``x0`` is given, else
        ``batch_size`` draws, one by default, or one per datum of the enclosing plate).
        ``num_samples=`` is the deprecated name of ``batch_size``."""
        batch_size = batch_size_argument(batch_size, num_samples)
        if x0 is not None:
            check_data(x0, self.event_shape, self.likelihood, name="x0")
            batch_size, like = x0.shape[0], x0
        else:
            batch_size = None if batch_size is None else int(batch_size)
            like = self.prior_loc.to(torch.get_default_dtype())
        T = self.num_steps
        hook = fast_bound_hook()
        draw_global_sites(self)
        with data_plate(self, batch_size, "the model") as batch:
            if hook is not None:
                return hook.model(self, x0, batch)
            x = pyro.sample(site_name(self, f"x_{T}"), self.prior(batch, like))
            for t in range(T, 1, -1):
                x = pyro.sample(site_name(self, f"x_{t - 1}"), self.reverse_kernel(x, t))
            return pyro.sample(site_name(self, "x_0"), self.reverse_kernel(x, 1), obs=x0)

    def config(self) -> dict:
        """A JSON-able description of the structure (not the weights)."""
        return {
            "num_steps": self.num_steps,
            "event_shape": list(self.event_shape),
            "parameterization": self.parameterization.value,
            "variance": self.variance.value,
            "likelihood": self.likelihood.config(),
            "schedule": self.schedule.config() if hasattr(self.schedule, "config") else None,
        }


# The two fixed reverse variances as float64 tables over t = 0 … T, time on the last axis
# (built once per schedule by schedule_table). POSTERIOR replaces β̃_1 = 0 by β̃_2 (β_1 when
# T = 1) so the decoder has a proper scale; the clamp keeps the logs finite at t = 0, which no
# step uses.


def _beta(s: nn.Module) -> Tensor:
    return s.betas.clamp(min=1e-300)


def _posterior_variance(s: nn.Module) -> Tensor:
    post = s.posterior_variance.clone()
    post[..., 1] = post[..., 2] if s.num_steps >= 2 else s.betas[..., 1]
    return post.clamp(min=1e-300)


def _log_variance_range(s: nn.Module) -> Tensor:
    # LEARNED_RANGE interpolates log σ_t² between these two rows: (log β̃_t, log β_t)
    return torch.stack([_posterior_variance(s).log(), _beta(s).log()])
