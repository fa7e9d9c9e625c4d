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

import torch
from torch import Tensor

from ..errors import ConfigError
from ..gaussian import reverse_mean_coefs, sum_event
from .elbo import TimestepObjective, prior_kl, step_terms
from .timesteps import TimestepSampler

__all__ = ["HybridLoss", "SimpleLoss", "simple_weights"]


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
