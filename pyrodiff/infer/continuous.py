"""The T = ∞ bound of a continuous-time diffusion model (variational diffusion models).

For :class:`~pyrodiff.ContinuousDiffusion` with log-SNR λ(t) on [0, 1] (decreasing),

    −log p(x) ≤ KL(q(z_1 | x) ‖ p(z_1)) − E_q[log p(x | z_0)] + L_∞(x),
    L_∞(x) = ½ E_{t∼U(0,1), ε∼N(0,I)} [−λ′(t) e^{λ(t)} ‖x − x̂_θ(z_t; t)‖²],

with z_t = α_t x + σ_t ε. Written for the ε- and v-predictions the integrand is
½ (−λ′) ‖ε − ε̂‖² and ½ (−λ′) α_t² ‖v − v̂‖² (the same number; each form avoids the
cancellation of the others in floating point). The prior KL and the reconstruction are the
discrete bound's own (:func:`pyrodiff.gaussian.prior_kl`,
:meth:`pyrodiff.likelihoods.Likelihood.reconstruction`), at λ(1) and λ(0). The bound is the limit of the T-step bounds of
``model.discretize(T)`` as T → ∞, and never below them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ConfigError, ModelMismatchError
from ..gaussian import Parameterization, log_snr_marginal_moments, prior_kl
from ..gaussian import sum_event as _sum_event
from ..guides import ContinuousForwardGuide
from ..schedules import alpha_sigma
from ..validation import check_data
from .elbo import TimestepObjective, bits_per_dim
from .objectives import ScaleGradient, ScheduleObjective
from .timesteps import TimestepSampler, UniformTimesteps

__all__ = [
    "ContinuousELBO",
    "ContinuousTerms",
    "continuous_elbo_terms",
    "diffusion_integrand",
    "sample_times",
]


def _check_model(model) -> None:
    for attr in ("log_snr_and_slope", "schedule_endpoints", "predict", "decoder_moments"):
        if not hasattr(model, attr):
            raise ModelMismatchError(
                "this estimator needs a pyrodiff.ContinuousDiffusion model "
                f"(missing .{attr}); got {type(model).__name__}. For a discrete Diffusion use "
                "DiffusionELBO."
            )


def _per_datum(x: Tensor, like: Tensor) -> Tensor:
    return x.reshape(x.shape + (1,) * (like.dim() - x.dim()))


def diffusion_integrand(
    model,
    x0: Tensor,
    t: Tensor,
    noise: Tensor,
    shape_hook=None,
) -> Tensor:
    """½ (−λ′(t)) e^{λ(t)} ‖x − x̂_θ(z_t; t)‖² per datum, at per-datum times ``t`` (shape (N,),
    in [0, 1]) and z_t = α_t x + σ_t ε with ε = ``noise``: one network call per datum.

    Its mean over t ~ U(0, 1) and ε ~ N(0, I) is the diffusion loss L_∞(x). λ(t) may carry
    the data's event shape (a schedule per dimension); the weight is then per dimension.
    """
    lam, slope = model.log_snr_and_slope(t.to(x0.dtype), shape_hook)
    lam_n, fall = _per_datum(lam, x0), -_per_datum(slope, x0)
    # α and σ once: the v-form reads them again, and one graph keeps its gradient exact
    alpha, sigma = alpha_sigma(lam_n)
    z_t = alpha * x0 + sigma * noise
    out = model.predict(z_t, t, lam)
    event_dim = x0.dim() - 1
    p = model.parameterization
    if p is Parameterization.EPSILON:
        err = (noise - out) ** 2
        weight = fall
    elif p is Parameterization.X0:
        err = (x0 - out) ** 2
        weight = fall * torch.exp(lam_n)
    else:
        err = (alpha * noise - sigma * x0 - out) ** 2
        weight = fall * alpha**2
    return 0.5 * _sum_event(weight * err, event_dim)


def sample_times(
    sampler: TimestepSampler,
    batch: int,
    num_bins: int,
    device,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(t, weight, bin) with t ∈ [0, 1) and E[weight · f(t)] = ∫_0^1 f(t) dt for every f.

    The discrete ``sampler`` picks bin k ∈ {1 … K} with its weight w_k (E[w_k g(k)] = Σ_k g(k))
    and t is uniform inside the bin, t = (k − 1 + u)/K; weight w_k / K. Uniform and
    low-discrepancy samplers give uniform t; :class:`~pyrodiff.infer.ImportanceTimesteps` gives
    a piecewise-constant density learned from the integrand's recent values per bin.
    """
    k, w = sampler.sample(batch, num_bins, device, generator)
    u = torch.rand(batch, device=device, dtype=torch.float64, generator=generator)
    t = (k.to(torch.float64) - 1.0 + u) / num_bins
    return t, w.to(torch.float64) / num_bins, k


@dataclass(frozen=True)
class ContinuousTerms:
    """The T = ∞ bound per datum, term by term (nats), each an unbiased one-sample estimate.

    Attributes:
        reconstruction: log p(x | z_0), z_0 ~ q(z_0 | x), shape (N,).
        diffusion: the diffusion loss L_∞(x) (one t and one ε per datum), shape (N,).
        prior: KL(q(z_1 | x) ‖ p(z_1)) in closed form, shape (N,).
        num_dims: D, the number of dimensions of one datum.
    """

    reconstruction: Tensor
    diffusion: Tensor
    prior: Tensor
    num_dims: int

    @property
    def elbo(self) -> Tensor:
        """The bound per datum, shape (N,)."""
        return self.reconstruction - self.diffusion - self.prior

    def bits_per_dim(self) -> Tensor:
        """−ELBO / (D ln 2) per datum."""
        return bits_per_dim(self.elbo, self.num_dims)

    def mean(self) -> dict[str, float]:
        """Means over the data, as plain numbers (for logs and JSON)."""
        return {
            "elbo": self.elbo.mean().item(),
            "reconstruction": self.reconstruction.mean().item(),
            "diffusion": self.diffusion.mean().item(),
            "prior": self.prior.mean().item(),
        }


def _prior_kl(model, x0: Tensor, log_snr_1: Tensor) -> Tensor:
    """KL(q(z_1 | x) ‖ p(z_1)) per datum at λ(1)."""
    loc, scale = log_snr_marginal_moments(log_snr_1, x0)
    p_loc = torch.tensor(model.prior_loc, dtype=x0.dtype, device=x0.device)
    p_scale = torch.tensor(model.prior_scale, dtype=x0.dtype, device=x0.device)
    return prior_kl(loc, scale, p_loc, p_scale)


def _reconstruction(model, x0: Tensor, log_snr_0: Tensor, noise: Tensor) -> Tensor:
    """log p(x | z_0) per datum at one draw z_0 ~ q(z_0 | x), λ(0) = ``log_snr_0``."""
    loc, scale = log_snr_marginal_moments(log_snr_0, x0)
    z_0 = loc + scale * noise
    return model.likelihood.reconstruction(x0, *model.decoder_moments(z_0, log_snr_0))


def _ends(model, x0: Tensor) -> tuple[Tensor, Tensor]:
    l0, l1 = model.schedule_endpoints()
    return l0.to(device=x0.device, dtype=x0.dtype), l1.to(device=x0.device, dtype=x0.dtype)


def continuous_elbo_terms(
    model,
    x0: Tensor,
    timesteps: TimestepSampler | None = None,
    num_bins: int = 1000,
    generator: torch.Generator | None = None,
) -> ContinuousTerms:
    """One-sample estimates of the T = ∞ bound's terms for each datum (see
    :class:`ContinuousTerms`); t from ``timesteps`` (uniform by default, see
    :func:`sample_times`). Unbiased for each term; average several calls for a tighter value."""
    _check_model(model)
    check_data(x0, model.event_shape, model.likelihood, name="x0")
    sampler = timesteps if timesteps is not None else UniformTimesteps()
    N = x0.shape[0]
    t, w, _ = sample_times(sampler, N, num_bins, x0.device, generator)

    def draw() -> Tensor:
        return torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)

    l0, l1 = _ends(model, x0)
    diff = w.to(x0.dtype) * diffusion_integrand(model, x0, t, draw())
    return ContinuousTerms(
        reconstruction=_reconstruction(model, x0, l0, draw()),
        diffusion=diff,
        prior=_prior_kl(model, x0, l1),
        num_dims=math.prod(model.event_shape),
    )


class ContinuousELBO(TimestepObjective):
    """An unbiased one-sample estimator of −(the T = ∞ bound), as a Pyro ELBO.

    Per datum: the prior KL in closed form, −log p(x | z_0) at one draw of z_0 (the decoder
    reads z_0 directly, no network call) and w(t) · ½ γ′(t) e^{−γ(t)} ‖x − x̂_θ(z_t; t)‖² at one
    t and one ε: one network call per datum. t comes from ``timesteps`` through
    :func:`sample_times` (uniform; :class:`~pyrodiff.infer.LowDiscrepancyTimesteps` for VDM's
    evenly spread batch; :class:`~pyrodiff.infer.ImportanceTimesteps` for a density learned
    per bin of ``num_bins``). Its expectation is exactly −bound whatever the sampler.

    Correct for a :class:`~pyrodiff.ContinuousDiffusion` with the fixed forward process
    q(z_t | x) of its own schedule as the guide (:class:`~pyrodiff.ContinuousForwardGuide`,
    which has nothing to evaluate: the estimator reads the model's schedule). Use it as
    ``loss=`` in :class:`pyro.infer.SVI`, or ``ContinuousELBO()(model, ContinuousForwardGuide())``
    as an ``nn.Module``.

    ``schedule_objective`` chooses what a learned schedule's interior is trained on
    (:class:`ScheduleObjective`); the value of the loss is the bound either way.

    Like :class:`~pyrodiff.infer.DiffusionELBO` it takes programs that call the model
    (``poutine`` wrappers, plain functions, a user's model with the ContinuousDiffusion as a
    sub-program): :func:`pyrodiff.infer.programs.program_loss`. There the guide program may run
    ``ContinuousForwardGuide(name=...)`` or nothing for the chain.
    """

    takes_programs = True

    def __init__(
        self,
        num_particles: int = 1,
        timesteps: TimestepSampler | None = None,
        num_bins: int = 1000,
        schedule_objective: ScheduleObjective = ScheduleObjective.BOUND,
    ) -> None:
        super().__init__(num_particles=num_particles, timesteps=timesteps)
        if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 1:
            raise ConfigError(f"num_bins must be an integer >= 1, got {num_bins!r}")
        if not isinstance(schedule_objective, ScheduleObjective):
            raise ConfigError(
                f"schedule_objective must be a ScheduleObjective, got {schedule_objective!r}"
            )
        self.num_bins = num_bins
        self.schedule_objective = schedule_objective

    def _check_pair(self, model, guide) -> None:
        _check_model(model)
        self._check_guide(guide)

    def _check_model(self, model) -> None:
        _check_model(model)

    def _check_guide(self, guide) -> None:
        if guide is not None and not isinstance(guide, ContinuousForwardGuide):
            raise ModelMismatchError(
                "ContinuousELBO's guide is the fixed forward process: pass "
                f"pyrodiff.ContinuousForwardGuide() (or None), got {type(guide).__name__}"
            )

    def per_datum_loss(self, model, guide, x0: Tensor) -> Tensor:
        """ℓ_n = KL_prior − log p(x | z_0) + w(t_n) · integrand, unbiased for −bound(x_n)."""
        N = x0.shape[0]
        t, w, k = sample_times(self.timesteps, N, self.num_bins, x0.device)
        hook, holder = None, []
        if self.schedule_objective is ScheduleObjective.VARIANCE:
            if not hasattr(model.schedule, "parameters_of_shape"):
                raise ConfigError(
                    "ScheduleObjective.VARIANCE needs a learned schedule with a separable "
                    f"interior (LearnedLogSNR); got {type(model.schedule).__name__}"
                )

            def hook(x: Tensor) -> Tensor:
                return ScaleGradient.apply(x, holder)

        integrand = diffusion_integrand(model, x0, t, torch.randn_like(x0), hook)
        self.timesteps.update(k, integrand.detach())
        diff = w.to(x0.dtype) * integrand
        if hook is not None:
            # d(Σ_n L̂_n²)/dη = Σ_n 2 L̂_n dL̂_n/dη: the interior's gradient scaled per datum
            holder.append(2.0 * diff.detach())
        l0, l1 = _ends(model, x0)
        rec = _reconstruction(model, x0, l0, torch.randn_like(x0))
        return _prior_kl(model, x0, l1) - rec + diff

    def terms(self, model, x0: Tensor) -> ContinuousTerms:
        """The per-datum terms of one estimate, with this objective's sampler (no gradient)."""
        with torch.no_grad():
            return continuous_elbo_terms(model, x0, self.timesteps, self.num_bins)
