"""Training objectives for diffusion models beside the bound: L_simple, the hybrid, and the
schedule-variance objective.

With the forward chain as guide the negative ELBO is L = L_0 + Σ_{t=2}^T L_{t−1} + L_T
(:mod:`pyrodiff.infer.elbo`). For t ≥ 2 each KL with a fixed variance is a constant plus a
weighted squared error of the mean (:func:`pyrodiff.gaussian.isotropic_gaussian_kl`):

    L_{t−1} = C_t(σ_t²) + ‖μ̃_t − μ_θ‖² / (2σ_t²),
    C_t(σ²) = Σ_d KL(N(0, β̃_t) ‖ N(0, σ²)) = (D/2)(log(σ²/β̃_t) + β̃_t/σ² − 1),

and μ̃_t − μ_θ = c_0(t) (x_0 − x̂_0) = c_0(t) g_t (y − ŷ), where c_0(t) = √ᾱ_{t−1} β_t/(1 − ᾱ_t)
is the posterior mean's coefficient on x_0, y is what the denoiser predicts (ε, x_0 or v)
and g_t = ∂x̂_0/∂ŷ: −√(1 − ᾱ_t)/√ᾱ_t for ε, 1 for x_0, −√(1 − ᾱ_t) for v. Hence

    ‖y − ŷ‖² = λ_t (L_{t−1} − C_t),     λ_t = 2σ_t² / (c_0(t)² g_t²),

which for ε and σ_t² fixed is DDPM's λ_t = 2σ_t² α_t (1 − ᾱ_t) / β_t². :class:`SimpleLoss`
computes the squared error itself, ‖y − ŷ‖² = ‖μ̃_t − μ_θ‖² / b_t² with b_t = c_0(t) g_t, at the
draw the bound's one-sample terms use (EDM's form: a weight times a squared error);
:class:`HybridLoss` adds λ times the bound with the mean detached, which trains a learned
variance.

Objectives here are ``pyro.infer.ELBO`` subclasses so SVI takes them as ``loss=``, and
``Objective()(model, guide)`` is an ``nn.Module``; but only :class:`~pyrodiff.infer.DiffusionELBO`
(the full bound) estimates an ELBO. Whatever trains the model, report the bound with
:func:`~pyrodiff.infer.elbo_terms`.
"""

from __future__ import annotations

import enum
import warnings

import torch
from torch import Tensor

from ..errors import ConfigError
from ..gaussian import reverse_mean_coefs, sum_event
from .elbo import DiffusionELBO, TimestepObjective, prior_kl, step_terms
from .timesteps import TimestepSampler

__all__ = [
    "HybridLoss",
    "ScheduleObjective",
    "ScheduleVariance",
    "ScheduleVarianceELBO",
    "SimpleLoss",
    "simple_weights",
    "variance_trained_parameters",
]


def simple_weights(model, t: Tensor, like: Tensor, variance: Tensor) -> Tensor:
    """λ_t = 2σ_t² / b_t², turning the mean part of L_{t−1} into ‖y − ŷ‖².

    b_t is the slope of the reverse mean in the denoiser's output
    (:func:`~pyrodiff.gaussian.reverse_mean_coefs`): against the forward posterior mean the
    difference is b_t (y − ŷ), so the squared-error part of the KL is ‖y − ŷ‖² b_t² / (2σ_t²).
    ``variance`` is a per-step σ_t² shaped (batch, 1, …); ``like`` has the data's shape.
    Correct when the model and the guide share the schedule (the forward chain); at t = 1 the
    same formula converts the Gaussian density's quadratic.
    """
    _, b = reverse_mean_coefs(model.parameterization, model.schedule, t, like)
    return 2.0 * variance / b**2


class _SimpleLossTerm(TimestepObjective):
    """Shared by the reweighted objectives: the L_simple part of one draw of (t, x_t)."""

    def _simple(self, model, guide, x0, t, x_t, mean) -> Tensor:
        """Per-datum ‖y − ŷ‖² = ‖μ̃_t − μ_θ‖² / b_t², a squared error with the weight 1/b_t²
        (the mean trained, the variance untouched).

        μ̃_t is the forward posterior mean (x_0 itself at t = 1, where the decoder's Gaussian
        quadratic is used in place of its NLL, as in DDPM) and b_t the reverse mean's slope in
        the denoiser's output (:func:`~pyrodiff.gaussian.reverse_mean_coefs`), so that
        μ̃_t − μ_θ = b_t (y − ŷ).
        """
        target = x0
        if model.num_steps >= 2:
            post_loc, _ = guide.posterior_moments(x0, x_t, t.clamp(min=2))
            at_one = (t == 1).reshape((-1,) + (1,) * (x0.dim() - 1))
            target = torch.where(at_one, x0, post_loc)
        _, b = reverse_mean_coefs(model.parameterization, model.schedule, t, x0)
        return sum_event(((target - mean) / b) ** 2, x0.dim() - 1)


class SimpleLoss(_SimpleLossTerm):
    """DDPM's L_simple, E_{t~U{1…T}} E_ε ‖y − ŷ_θ(x_t, t)‖², summed over the batch.

    y is the denoiser's target (ε, x_0 or v, following the model's parameterisation), so for
    ε-prediction this is Ho et al.'s loss (summed over dimensions, not averaged). It is
    computed as ‖μ̃_t − μ_θ‖² / b_t², which equals λ_t (L_{t−1} − C_t) of the bound's own terms
    (see the module docstring); at t = 1 the decoder term is replaced by the Gaussian density's
    quadratic, as in DDPM, so on quantised data L_simple ignores the discretisation. With a
    non-uniform timestep sampler the draws are weighted by w(t)/T, so the estimate stays
    unbiased for the uniform-t objective.

    Not an ELBO: it weights small t far less than the bound (λ_t ∝ 1/β_t for σ_t² = β_t) and
    trains only the mean (a learned variance is left untouched). For t ≥ 2 (and at t = 1 with a
    Gaussian decoder) an unrestricted denoiser minimises both at the same prediction, E[y | x_t];
    a finite network trades errors across t differently under the two weightings.
    """

    def per_datum_loss(self, model, guide, x0: Tensor) -> Tensor:
        T = model.num_steps
        t, weight = self.timesteps.sample(x0.shape[0], T, x0.device)
        noise = torch.randn_like(x0)
        loc, scale = guide.marginal_moments(x0, t)
        x_t = loc + scale * noise
        mean, _ = model.reverse_moments(x_t, t)
        simple = self._simple(model, guide, x0, t, x_t, mean)
        self.timesteps.update(t, simple.detach())
        return weight.to(simple.dtype) / T * simple


class HybridLoss(_SimpleLossTerm):
    """Improved DDPM's L_hybrid = L_simple + λ L_vlb, with the mean detached in L_vlb.

    Per datum and one draw of (t, x_t): (w(t)/T) ‖y − ŷ‖² + λ (w(t) L_{t−1}(sg[μ_θ], σ_θ) + L_T),
    where sg stops the gradient: the mean learns only from L_simple, the variance only from
    the bound. λ = 0.001 is the paper's value (the paper's terms are per-dimension means in
    bits; here both parts are sums over dimensions in nats, which keeps their ratio but for a
    factor ln 2). Meant for ReverseVariance.LEARNED_RANGE or PER_STEP; with a fixed variance
    the bound part carries no gradient and this is L_simple plus a constant-in-θ offset.

    The value is not an ELBO; report the bound with :func:`~pyrodiff.infer.elbo_terms`.
    ``update`` of the timestep sampler receives the bound's terms, so ImportanceTimesteps
    adapts to the bound's variance (improved DDPM's L_vlb sampler).
    """

    def __init__(
        self,
        lam: float = 1e-3,
        num_particles: int = 1,
        timesteps: TimestepSampler | None = None,
    ) -> None:
        super().__init__(num_particles=num_particles, timesteps=timesteps)
        if not lam >= 0.0:
            raise ConfigError(f"lam must be >= 0, got {lam}")
        self.lam = float(lam)

    def per_datum_loss(self, model, guide, x0: Tensor) -> Tensor:
        T = model.num_steps
        t, weight = self.timesteps.sample(x0.shape[0], T, x0.device)
        weight = weight.to(x0.dtype)
        noise = torch.randn_like(x0)
        loc, scale = guide.marginal_moments(x0, t)
        x_t = loc + scale * noise
        mean, var = model.reverse_moments(x_t, t)
        simple = self._simple(model, guide, x0, t, x_t, mean)
        bound = step_terms(model, guide, x0, t, noise, moments=(mean.detach(), var))
        self.timesteps.update(t, bound.detach())
        vlb = -(weight * bound) + prior_kl(model, guide, x0)
        return weight / T * simple + self.lam * vlb


# --- training a learned schedule's interior for low variance (discrete and continuous time) ----
#
# One idea, VDM's (Kingma et al. 2021, §5): the bound depends on a learned schedule's interior
# shape η weakly (T steps) or not at all (T = ∞), so η can follow the second moment of the
# estimator's timestep-sampled part L̂ instead of the bound; where E[L̂] does not depend on η,
# ∇_η E[L̂²] = ∇_η Var(L̂). The loss keeps its value; only η's gradient is re-routed, to
# Σ_n 2 L̂_n ∇_η L̂_n (:class:`ScheduleVariance`, used by DiffusionELBO and ContinuousELBO alike).


class ScheduleObjective(enum.Enum):
    """What a learned schedule's interior is trained on, by
    :class:`~pyrodiff.infer.DiffusionELBO` (T steps) and
    :class:`~pyrodiff.infer.ContinuousELBO` (T = ∞) alike."""

    BOUND = "bound"
    """the gradient of the bound, like every other parameter. In continuous time the bound does
    not depend on the interior (only on λ(0), λ(1)), so this gradient is zero in expectation:
    the interior only drifts with the noise."""
    VARIANCE = "variance"
    """VDM's variance-minimising objective (:class:`ScheduleVariance`): the interior η gets
    ∇_η Σ_n L̂_n² of the timestep-sampled part L̂_n of each datum's loss, which is ∇_η of the
    estimator's variance where E[L̂] does not depend on η (exactly so at T = ∞); the ends and
    the network get the gradient of the bound. Needs a learned schedule with a separable
    interior: the guide's :class:`~pyrodiff.guides.LearnedSchedule` for a discrete
    :class:`~pyrodiff.Diffusion`, the model's :class:`~pyrodiff.schedules.LearnedLogSNR` for a
    :class:`~pyrodiff.ContinuousDiffusion`."""


def _trained_schedule(model, guide):
    """The learned schedule whose interior a bound of (model, guide) re-routes: the model's own
    for a continuous-time model (its forward process reads it), the guide's for a discrete one
    (the model may share it)."""
    if hasattr(model, "log_snr_and_slope"):
        return getattr(model, "schedule", None)
    return getattr(guide, "schedule", None)


def variance_trained_parameters(loss, model, guide) -> list[torch.nn.Parameter]:
    """The parameters ``loss`` trains on the estimator's second moment rather than the bound
    (a learned schedule's interior under :attr:`ScheduleObjective.VARIANCE`), empty for every
    other objective.

    Their gradient is that of Σ_n L̂_n², which grows with the loss itself: a training step clips
    their norm apart from the rest, or that gradient shrinks the network's steps to nothing
    whenever a global norm is clipped."""
    if getattr(loss, "schedule_objective", None) is not ScheduleObjective.VARIANCE:
        return []
    shape = getattr(_trained_schedule(model, guide), "parameters_of_shape", None)
    return [p for p in shape() if p.requires_grad] if callable(shape) else []


class ScaleGradient(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by a per-datum factor that is only
    known after the forward pass has finished (it is the loss itself)."""

    @staticmethod
    def forward(ctx, x: Tensor, holder: list) -> Tensor:
        ctx.holder = holder
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.holder[0].to(grad.dtype), None


class ScheduleVariance:
    """VDM's variance-minimising gradient for a learned schedule's interior η, for one
    evaluation of a timestep-sampled bound (discrete or continuous time).

    With per-datum losses ℓ_n = R_n + L̂_n, L̂_n the timestep-sampled part (w(t_n) times the
    sampled term) and R_n the rest (prior KL, and in continuous time the reconstruction and a
    latent's KL, none of which read η), the loss Σ_n ℓ_n / P keeps its value and its gradient
    for every parameter but η, which gets Σ_n 2 L̂_n ∇_η L̂_n / P instead: the gradient of the
    second moment E[L̂²], equal to that of Var(L̂) where E[L̂] does not depend on η (at T = ∞
    exactly, VDM's eq. 17; with T steps approximately).

    Two routes give the same gradient (``tests/test_continuous.py`` checks they agree):
    where η enters each datum's computation through a per-datum value (continuous time, ρ(t_n)),
    :meth:`entry` marks that value and the factor 2 L̂_n is applied there during the one
    backward pass; where η enters through a table the whole batch shares (discrete time),
    :meth:`reroute` adds a surrogate of value zero whose gradient is the difference, one
    vector-Jacobian product over the batch.
    """

    def __init__(self, interior: list[Tensor]) -> None:
        self.interior = interior
        self._factor: list[Tensor] = []
        self._entered = False

    @classmethod
    def of(cls, objective: ScheduleObjective, model, guide) -> ScheduleVariance | None:
        """The re-routing ``objective`` asks for on (model, guide), or None for
        :attr:`ScheduleObjective.BOUND`; raises :class:`~pyrodiff.errors.ConfigError` when
        there is no learned schedule interior to re-route."""
        if objective is not ScheduleObjective.VARIANCE:
            return None
        schedule = _trained_schedule(model, guide)
        if not hasattr(schedule, "parameters_of_shape"):
            where = (
                "the model's schedule (a LearnedLogSNR)"
                if hasattr(model, "log_snr_and_slope")
                else "the guide's schedule (a LearnedScheduleGuide over a LearnedSchedule)"
            )
            raise ConfigError(
                "ScheduleObjective.VARIANCE trains a learned schedule's interior: it needs "
                f"{where} with a separable interior; got {type(schedule).__name__}"
            )
        return cls(list(schedule.parameters_of_shape()))

    def entry(self, x: Tensor) -> Tensor:
        """``x`` (one value per datum through which η enters), unchanged; its gradient is
        scaled by 2 L̂_n once :meth:`reroute` has seen L̂."""
        self._entered = True
        return ScaleGradient.apply(x, self._factor)

    def reroute(self, loss: Tensor, sampled: Tensor) -> Tensor:
        """The per-datum ``loss`` ℓ_n with η's gradient re-routed to Σ_n 2 L̂_n ∇_η L̂_n;
        ``sampled`` is L̂_n, the timestep-sampled part of ℓ_n."""
        if self._entered:
            self._factor.append(2.0 * sampled.detach())
            return loss
        params = [p for p in self.interior if p.requires_grad]
        if not params or not loss.requires_grad:
            return loss
        # one VJP: ∇_η Σ_n (2 L̂_n L̂_n − ℓ_n), the gradient to add to the loss's own
        grads = torch.autograd.grad(
            [sampled, loss],
            params,
            grad_outputs=[2.0 * sampled.detach(), -torch.ones_like(loss)],
            retain_graph=True,
            allow_unused=True,
        )
        moved = [(p, g) for p, g in zip(params, grads, strict=True) if g is not None]
        if not moved:
            return loss
        surrogate = sum((g.detach() * p).sum() for p, g in moved)
        return loss + (surrogate - surrogate.detach()) / loss.shape[0]


class ScheduleVarianceELBO(DiffusionELBO):
    """Deprecated: ``DiffusionELBO(schedule_objective=ScheduleObjective.VARIANCE)``, the one
    schedule-variance objective (:class:`ScheduleVariance`) for discrete and continuous time."""

    def __init__(self, num_particles: int = 1, timesteps: TimestepSampler | None = None) -> None:
        warnings.warn(
            "ScheduleVarianceELBO is deprecated: use "
            "DiffusionELBO(schedule_objective=ScheduleObjective.VARIANCE)",
            DeprecationWarning,
            stacklevel=2,
        )
        super().__init__(num_particles, timesteps, schedule_objective=ScheduleObjective.VARIANCE)
