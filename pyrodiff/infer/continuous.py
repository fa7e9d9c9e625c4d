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
from typing import NamedTuple

import torch
from torch import Tensor

from ..errors import ConfigError, ModelMismatchError
from ..gaussian import Parameterization, log_snr_marginal_moments, prior_kl
from ..gaussian import sum_event as _sum_event
from ..guides import ContinuousForwardGuide
from ..guides.adaptive import AdaptiveNoiseGuide
from ..schedules import alpha_sigma, discrete_times
from ..schedules.multivariate import LatentLogSNR
from ..validation import check_data
from .elbo import TimestepObjective, bits_per_dim
from .objectives import ScheduleObjective, ScheduleVariance
from .timesteps import TimestepSampler, UniformTimesteps

__all__ = [
    "ContinuousELBO",
    "ContinuousTerms",
    "check_pair",
    "continuous_elbo_terms",
    "diffusion_integrand",
    "one_call_loss",
    "sample_times",
    "step_integrand",
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


class _Latent(NamedTuple):
    """One draw of z per datum as a bound reads it: z for the denoiser and λ(· | z), whose
    network of z has run once for every time the bound reads (t, both ends, two steps)."""

    z: Tensor
    log_snr: LatentLogSNR


def _read_latent(model, latent: Tensor | None, like: Tensor) -> _Latent | None:
    if latent is None:
        return None
    if not hasattr(model, "log_snr_given"):
        raise ModelMismatchError(
            f"latent= is the z of a model conditioned on one (AdaptiveDiffusion); "
            f"{type(model).__name__} has none"
        )
    return _Latent(latent, model.log_snr_given(latent, like))


def _log_snr_and_slope(model, t: Tensor, latent: _Latent | None, shape_hook=None):
    if latent is None:
        return model.log_snr_and_slope(t, shape_hook)
    return latent.log_snr.log_snr_and_slope(t, shape_hook)


def diffusion_integrand(
    model,
    x0: Tensor,
    t: Tensor,
    noise: Tensor,
    shape_hook=None,
    latent: Tensor | None = None,
) -> Tensor:
    """½ (−λ′(t)) e^{λ(t)} ‖x − x̂_θ(z_t; t)‖² per datum, at per-datum times ``t`` (shape (N,),
    in [0, 1]) and z_t = α_t x + σ_t ε with ε = ``noise``: one network call per datum.

    Its mean over t ~ U(0, 1) and ε ~ N(0, I) is the diffusion loss L_∞(x). λ(t) may carry
    the data's event shape (a schedule per dimension); the weight is then per dimension.
    ``latent`` is the z of a model whose schedule and denoiser are conditioned on one.
    """
    return _diffusion_integrand(model, x0, t, noise, shape_hook, _read_latent(model, latent, x0))


def _diffusion_integrand(model, x0, t, noise, shape_hook, latent: _Latent | None) -> Tensor:
    lam, slope = _log_snr_and_slope(model, t.to(x0.dtype), latent, shape_hook)
    lam_n, fall = _per_datum(lam, x0), -_per_datum(slope, x0)
    return _weighted_error(model, x0, t, noise, lam, lam_n, fall, latent)


def step_integrand(
    model,
    x0: Tensor,
    step: Tensor,
    num_steps: int,
    noise: Tensor,
    latent: Tensor | None = None,
) -> Tensor:
    """L_{t−1}(x) = KL(q(x_{t−1} | x_t, x) ‖ p_θ(x_{t−1} | x_t)) per datum at one draw of x_t,
    for the T-step chain of a continuous-time model (x_t at s_t = (t − 1)/(T − 1), per-datum
    steps ``step`` ∈ {2 … T}):

        ½ (e^{λ(s_{t−1})} − e^{λ(s_t)}) ‖x − x̂_θ(x_t; s_t)‖²  = ½ e^{λ_t} expm1(λ_{t−1} − λ_t) ‖x − x̂‖²

    (VDM, eq. 13: p_θ is the forward posterior at x̂, so only the means differ). The T-step
    counterpart of :func:`diffusion_integrand`, with −λ′ dt replaced by the finite difference;
    exactly the per-step KL of ``model.discretize(T)`` under the forward chain.
    """
    return _step_integrand(model, x0, step, num_steps, noise, _read_latent(model, latent, x0))


def _step_integrand(model, x0, step, num_steps, noise, latent: _Latent | None) -> Tensor:
    times = _step_times(num_steps, x0)
    s_now = times.index_select(0, step)
    s_prev = times.index_select(0, step - 1)
    lam, _ = _log_snr_and_slope(model, s_now, latent)
    lam_prev, _ = _log_snr_and_slope(model, s_prev, latent)
    lam_n = _per_datum(lam, x0)
    rate = torch.expm1(_per_datum(lam_prev, x0) - lam_n)
    return _weighted_error(model, x0, s_now, noise, lam, lam_n, rate, latent)


def _step_times(num_steps: int, like: Tensor) -> Tensor:
    return discrete_times(num_steps).to(device=like.device, dtype=like.dtype)


def _weighted_error(model, x0, t, noise, lam, lam_n, rate, latent) -> Tensor:
    """½ rate · e^{λ} ‖x − x̂‖² per datum at z_t = α x + σ ε, written in the error of what the
    denoiser predicts: ½ rate ‖ε − ε̂‖², ½ rate e^{λ} ‖x − x̂‖² or ½ rate α² ‖v − v̂‖² (the same
    number; each form avoids the cancellation of the others in floating point)."""
    # α and σ once: the v-form reads them again, and one graph keeps its gradient exact
    alpha, sigma = alpha_sigma(lam_n)
    z_t = alpha * x0 + sigma * noise
    out = model.predict(z_t, t, lam, latent=None if latent is None else latent.z)
    event_dim = x0.dim() - 1
    p = model.parameterization
    if p is Parameterization.EPSILON:
        err = (noise - out) ** 2
        weight = rate
    elif p is Parameterization.X0:
        err = (x0 - out) ** 2
        weight = rate * torch.exp(lam_n)
    else:
        err = (alpha * noise - sigma * x0 - out) ** 2
        weight = rate * alpha**2
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
    """The bound of a continuous-time model per datum, term by term (nats), each an unbiased
    one-sample estimate: at T = ∞ or, with ``num_steps``, of its T-step chain.

    Attributes:
        reconstruction: log p(x | z_0), z_0 ~ q(z_0 | x), shape (N,).
        diffusion: the diffusion loss L_∞(x) (or Σ_t L_{t−1} at T steps), one t and one ε per
            datum, shape (N,).
        prior: KL(q(z_1 | x) ‖ p(z_1)) in closed form, shape (N,).
        num_dims: D, the number of dimensions of one datum.
        latent: KL(q(z | x) ‖ p(z)) in closed form for a model with a latent z
            (:class:`~pyrodiff.models.AdaptiveDiffusion`), else None; the other terms are then
            at one draw of z.
    """

    reconstruction: Tensor
    diffusion: Tensor
    prior: Tensor
    num_dims: int
    latent: Tensor | None = None

    @property
    def elbo(self) -> Tensor:
        """The bound per datum, shape (N,)."""
        bound = self.reconstruction - self.diffusion - self.prior
        return bound if self.latent is None else bound - self.latent

    def bits_per_dim(self) -> Tensor:
        """−ELBO / (D ln 2) per datum."""
        return bits_per_dim(self.elbo, self.num_dims)

    def mean(self) -> dict[str, float]:
        """Means over the data, as plain numbers (for logs and JSON)."""
        out = {
            "elbo": self.elbo.mean().item(),
            "reconstruction": self.reconstruction.mean().item(),
            "diffusion": self.diffusion.mean().item(),
            "prior": self.prior.mean().item(),
        }
        if self.latent is not None:
            out["latent"] = self.latent.mean().item()
        return out


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


def _ends(model, x0: Tensor, latent: _Latent | None = None) -> tuple[Tensor, Tensor]:
    l0, l1 = model.schedule_endpoints() if latent is None else latent.log_snr.endpoints()
    ends = []
    for lam in (l0, l1):
        lam = lam.to(device=x0.device, dtype=x0.dtype)
        if latent is not None:  # one per datum: (N,) or (N, *event)
            lam = _per_datum(lam, x0)
        ends.append(lam)
    return ends[0], ends[1]


def _latent(
    model, guide, x0: Tensor, generator: torch.Generator | None = None
) -> tuple[_Latent | None, Tensor | None]:
    """(z read by the model's schedule, KL(q(z | x) ‖ p(z))) for a model with a latent z, drawn
    from its guide; else None's."""
    if not getattr(model, "latent_dim", 0):
        return None, None
    if not hasattr(guide, "latent"):
        raise ModelMismatchError(
            f"{type(model).__name__} has a latent z: its guide must draw it "
            f"(pyrodiff.AdaptiveNoiseGuide.for_model(model)), got {type(guide).__name__}"
        )
    z, kl = guide.latent(x0, *model.latent_prior_moments(x0), generator=generator)
    return _read_latent(model, z, x0), kl


def _check_steps(num_steps: int | None) -> None:
    if num_steps is not None:
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 2:
            raise ConfigError(
                f"num_steps must be None (T = ∞) or an integer T >= 2, got {num_steps!r}"
            )


def _diffusion_draw(
    model,
    x0: Tensor,
    sampler: TimestepSampler,
    num_bins: int,
    num_steps: int | None,
    latent: _Latent | None,
    shape_hook=None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(weight, integrand, bin) of one draw of the diffusion term per datum: t from ``sampler``
    (:func:`sample_times`) at T = ∞, or a step t ∈ {2 … T} (bin t − 1) for the T-step chain."""
    N = x0.shape[0]
    # t before ε: the order of the draws is part of what a seed reproduces
    if num_steps is None:
        t, w, k = sample_times(sampler, N, num_bins, x0.device, generator)
    else:
        k, w = sampler.sample(N, num_steps - 1, x0.device, generator)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    if num_steps is None:
        integrand = _diffusion_integrand(model, x0, t, noise, shape_hook, latent)
    else:
        integrand = _step_integrand(model, x0, k + 1, num_steps, noise, latent)
    return w.to(x0.dtype), integrand, k


def continuous_elbo_terms(
    model,
    x0: Tensor,
    timesteps: TimestepSampler | None = None,
    num_bins: int = 1000,
    generator: torch.Generator | None = None,
    guide=None,
    num_steps: int | None = None,
) -> ContinuousTerms:
    """One-sample estimates of the bound's terms for each datum (see :class:`ContinuousTerms`):
    at T = ∞, or of the T-step chain when ``num_steps`` = T is given. t from ``timesteps``
    (uniform by default, see :func:`sample_times`); a model with a latent z needs its
    ``guide``, which draws z (the latent's KL is then in closed form, the other terms at that
    z). Unbiased for each term; average several calls for a tighter value."""
    _check_model(model)
    _check_steps(num_steps)
    check_data(x0, model.event_shape, model.likelihood, name="x0")
    sampler = timesteps if timesteps is not None else UniformTimesteps()
    latent, latent_kl = _latent(model, guide, x0, generator)
    w, integrand, _ = _diffusion_draw(
        model, x0, sampler, num_bins, num_steps, latent, generator=generator
    )
    l0, l1 = _ends(model, x0, latent)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    return ContinuousTerms(
        reconstruction=_reconstruction(model, x0, l0, noise),
        diffusion=w * integrand,
        prior=_prior_kl(model, x0, l1),
        num_dims=math.prod(model.event_shape),
        latent=latent_kl,
    )


def one_call_loss(
    objective: TimestepObjective,
    model,
    guide,
    x0: Tensor,
    num_steps: int | None,
    schedule_objective: ScheduleObjective = ScheduleObjective.BOUND,
    num_bins: int = 1000,
) -> Tensor:
    """ℓ_n = KL_latent + KL_prior − log p(x | z_0) + w(t_n) · integrand per datum, unbiased for
    −bound(x_n) of a continuous-time model (T = ∞ when ``num_steps`` is None, else its T-step
    chain): one network call per datum, plus one encoder call for a latent z. Shared by
    :class:`ContinuousELBO` and, for such models, :class:`~pyrodiff.infer.DiffusionELBO`."""
    reroute = ScheduleVariance.of(schedule_objective, model, guide)
    hook = None if reroute is None else reroute.entry
    latent, latent_kl = _latent(model, guide, x0)
    w, integrand, k = _diffusion_draw(
        model, x0, objective.timesteps, num_bins, num_steps, latent, hook
    )
    objective.timesteps.update(k, integrand.detach())
    diff = w * integrand
    l0, l1 = _ends(model, x0, latent)
    rec = _reconstruction(model, x0, l0, torch.randn_like(x0))
    loss = _prior_kl(model, x0, l1) - rec + diff
    loss = loss if latent_kl is None else loss + latent_kl
    return loss if reroute is None else reroute.reroute(loss, diff)


def check_pair(model, guide) -> None:
    """Raise :class:`~pyrodiff.errors.ModelMismatchError` unless (model, guide) is a
    continuous-time model with the guide its bound reads: the fixed forward process (or None)
    for a model without a latent, an :class:`~pyrodiff.guides.AdaptiveNoiseGuide` for one with."""
    _check_model(model)
    if getattr(model, "latent_dim", 0):
        if not isinstance(guide, AdaptiveNoiseGuide) or guide.latent_dim != model.latent_dim:
            raise ModelMismatchError(
                f"{type(model).__name__} has a latent z of size {model.latent_dim}: its guide is "
                "pyrodiff.AdaptiveNoiseGuide.for_model(model), got "
                f"{type(guide).__name__}"
            )
        return
    _check_forward_guide(guide)


def _check_forward_guide(guide) -> None:
    if guide is not None and not isinstance(guide, ContinuousForwardGuide):
        raise ModelMismatchError(
            "ContinuousELBO's guide is the fixed forward process: pass "
            f"pyrodiff.ContinuousForwardGuide() (or None), got {type(guide).__name__}"
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

    ``num_steps`` = T estimates the bound of the same model's T-step chain instead (the bound of
    ``model.discretize(T)`` under the forward chain, :func:`step_integrand`), still at one
    network call per datum; None (the default) is T = ∞.

    With an :class:`~pyrodiff.models.AdaptiveDiffusion` (a noise process per dimension,
    conditioned on a latent z) the guide is its :class:`~pyrodiff.guides.AdaptiveNoiseGuide`:
    the estimate is then at one draw z ~ q_φ(z | x), plus KL(q_φ(z | x) ‖ p(z)) in closed form
    and one encoder call.

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
        num_steps: int | None = None,
    ) -> None:
        super().__init__(num_particles=num_particles, timesteps=timesteps)
        if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 1:
            raise ConfigError(f"num_bins must be an integer >= 1, got {num_bins!r}")
        if not isinstance(schedule_objective, ScheduleObjective):
            raise ConfigError(
                f"schedule_objective must be a ScheduleObjective, got {schedule_objective!r}"
            )
        _check_steps(num_steps)
        self.num_bins = num_bins
        self.schedule_objective = schedule_objective
        self.num_steps = num_steps

    def _check_pair(self, model, guide) -> None:
        check_pair(model, guide)

    def _check_model(self, model) -> None:
        _check_model(model)

    def _check_guide(self, guide) -> None:
        _check_forward_guide(guide)

    def per_datum_loss(self, model, guide, x0: Tensor) -> Tensor:
        """ℓ_n = KL_prior − log p(x | z_0) + w(t_n) · integrand (+ KL_latent), unbiased for
        −bound(x_n) (:func:`one_call_loss`)."""
        return one_call_loss(
            self, model, guide, x0, self.num_steps, self.schedule_objective, self.num_bins
        )

    def terms(self, model, x0: Tensor, guide=None) -> ContinuousTerms:
        """The per-datum terms of one estimate, with this objective's sampler (no gradient)."""
        with torch.no_grad():
            return continuous_elbo_terms(
                model, x0, self.timesteps, self.num_bins, guide=guide, num_steps=self.num_steps
            )
