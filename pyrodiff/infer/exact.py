"""Exact answers for linear-Gaussian diffusion models.

With a :class:`~pyrodiff.networks.LinearDenoiser` (or any denoiser that is affine in x_t and
says so with ``is_affine = True``), a reverse variance that does not depend on
x_t (BETA, POSTERIOR or PER_STEP) and a Gaussian likelihood, every reverse kernel is
p_θ(x_{t−1} | x_t) = N(A_t x_t + c_t, σ_t² I), so the chain can be marginalised in closed form
and every expectation in the ELBO is a Gaussian moment. Over a schedule per dimension the
variances are diagonal, N(A_t x_t + c_t, diag(σ_t²)), and the forward chain's coefficients
diagonal matrices; the same moments hold dimension by dimension.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import NotLinearGaussianError
from ..gaussian import (
    isotropic_gaussian_kl,
    prior_kl,
    q_posterior_mean_coefs,
    schedule_event_dim,
)
from ..likelihoods import GaussianLikelihood
from ..models.diffusion import Diffusion, ReverseVariance
from ..networks import LinearDenoiser
from ..validation import check_data
from .elbo import ELBOTerms, _check_closed_form_pair

__all__ = ["affine_reverse_kernels", "exact_log_evidence", "exact_elbo_terms"]


def _check_linear_gaussian(model) -> None:
    if not isinstance(model, Diffusion):
        raise NotLinearGaussianError(
            f"exact evidence needs a pyrodiff.Diffusion, got {type(model).__name__}"
        )
    if not (
        isinstance(model.denoiser, LinearDenoiser) or getattr(model.denoiser, "is_affine", False)
    ):
        raise NotLinearGaussianError(
            "exact evidence needs a linear-Gaussian model: the denoiser must be a LinearDenoiser "
            f"(or declare is_affine), got {type(model.denoiser).__name__}"
        )
    if model.variance is ReverseVariance.LEARNED_RANGE:
        raise NotLinearGaussianError(
            "exact evidence needs a reverse variance that does not depend on x_t; "
            "LEARNED_RANGE makes the model non-Gaussian"
        )
    if type(model.likelihood) is not GaussianLikelihood:
        raise NotLinearGaussianError(
            f"exact evidence needs a GaussianLikelihood, got {type(model.likelihood).__name__}"
        )
    if len(model.event_shape) != 1:
        raise NotLinearGaussianError(
            f"exact evidence needs vector data, got event shape {model.event_shape}"
        )


def affine_reverse_kernels(model: Diffusion) -> tuple[Tensor, Tensor, Tensor]:
    """(A, c, σ²) with p_θ(x_{t−1} | x_t) = N(A[t] x_t + c[t], σ²[t] I) for t = 1 … T (index 0 unused).

    Read off the model itself by evaluating its reverse mean at 0 and at the unit vectors, so
    it holds for every parameterisation. Shapes (T+1, D, D), (T+1, D), (T+1,); float64. Over a
    schedule per dimension σ² has shape (T+1, D): p_θ(x_{t−1} | x_t) = N(A[t] x_t + c[t],
    diag(σ²[t])).
    """
    _check_linear_gaussian(model)
    (D,), T = model.event_shape, model.num_steps
    like = next(model.denoiser.parameters(), None)
    like = model.prior_loc.to(torch.get_default_dtype()) if like is None else like
    dtype, device = like.dtype, like.device
    probes = torch.cat([torch.zeros(1, D), torch.eye(D)]).to(device=device, dtype=dtype)
    t = torch.arange(1, T + 1, device=device).repeat_interleave(D + 1)
    mean, var = model.reverse_moments(probes.repeat(T, 1), t)
    mean = mean.double().reshape(T, D + 1, D)
    c = mean[:, 0]
    A = (mean[:, 1:] - c[:, None, :]).transpose(1, 2)
    var = var.double().reshape(T, D + 1, -1)[:, 0]
    var = var[:, 0] if schedule_event_dim(model.schedule) == 0 else var
    pad = lambda x: torch.cat([torch.zeros_like(x[:1]), x])  # noqa: E731
    return pad(A), pad(c), pad(var)


def exact_log_evidence(model: Diffusion, x0: Tensor) -> Tensor:
    """log p_θ(x_0) per datum, the chain marginalised in closed form (float64).

    Exact for linear-Gaussian models only; anything else raises
    :class:`~pyrodiff.errors.NotLinearGaussianError`.
    """
    _check_linear_gaussian(model)
    check_data(x0, model.event_shape, name="x0")
    A, c, var = affine_reverse_kernels(model)
    (D,) = model.event_shape
    eye = torch.eye(D, dtype=torch.float64, device=A.device)
    m = model.prior_loc.double().to(A.device).expand(D).clone()
    S = eye * model.prior_scale.double().to(A.device) ** 2
    for t in range(model.num_steps, 0, -1):
        m = A[t] @ m + c[t]
        # σ_t² I, or diag(σ_t²) per dimension (a (D,) vector scales eye's columns)
        S = A[t] @ S @ A[t].T + var[t] * eye
    S = 0.5 * (S + S.T)
    marginal = torch.distributions.MultivariateNormal(m, covariance_matrix=S)
    return marginal.log_prob(x0.double().to(A.device))


def exact_elbo_terms(model: Diffusion, guide, x0: Tensor) -> ELBOTerms:
    """Every ELBO term in closed form (no sampling) for a linear-Gaussian model and a guide with
    Gaussian marginals q(x_t | x_0) = N(m_t, v_t I) and posteriors with mean c_0 x_0 + c_t x_t.

    Over a schedule per dimension (the model's or the guide's), v_t, c_0, c_t, β̃_t and σ_t²
    are vectors over the dimensions and every term a sum of one-dimensional ones:
    E(M x_t + r)_j² = (M m_t + r)_j² + Σ_k M_jk² v_k for x_t ~ N(m_t, diag(v_t)).
    """
    _check_linear_gaussian(model)
    _check_closed_form_pair(model, guide)
    check_data(x0, model.event_shape, name="x0")
    A, c, var = affine_reverse_kernels(model)
    x = x0.double().to(A.device)
    (D,), T = model.event_shape, model.num_steps
    eye = torch.eye(D, dtype=torch.float64, device=A.device)
    sched = guide.schedule
    if var.dim() == 2 or schedule_event_dim(sched):
        return _exact_elbo_terms_diagonal(model, guide, x, A, c, var)
    diffusion = []
    rec = None
    for t in range(1, T + 1):
        q_t = guide.marginal(x, t)
        m_t, v_t = q_t.loc, q_t.scale[..., 0] ** 2  # (N, D), (N,)
        if t == 1:
            d_mean = x - m_t @ A[1].T - c[1]
            e_sq = (d_mean**2).sum(-1) + v_t * (A[1] ** 2).sum()
            rec = -0.5 * D * torch.log(2 * math.pi * var[1]) - e_sq / (2 * var[1])
            continue
        c0, ct = q_posterior_mean_coefs(sched, t, x)
        M = ct * eye - A[t]
        r = c0 * x - c[t]
        e_sq = ((m_t @ M.T + r) ** 2).sum(-1) + v_t * (M**2).sum()
        post_var = sched.posterior_variance[t].double()
        kl = isotropic_gaussian_kl(e_sq, post_var, var[t], D)
        diffusion.append(kl)
    q_T = guide.marginal(x, T)
    p_loc = model.prior_loc.double().to(A.device).expand(D)
    p_scale = model.prior_scale.double().to(A.device).expand(D)
    prior = prior_kl(q_T.loc, q_T.scale, p_loc, p_scale)
    diff = torch.stack(diffusion, 1) if diffusion else x.new_zeros(x.shape[0], 0)
    return ELBOTerms(reconstruction=rec, diffusion=diff, prior=prior, num_dims=D)


def _exact_elbo_terms_diagonal(
    model: Diffusion, guide, x: Tensor, A: Tensor, c: Tensor, var: Tensor
) -> ELBOTerms:
    """:func:`exact_elbo_terms` with diagonal variances: a schedule per dimension (the guide's
    q or the model's σ_t²). Each term is summed over dimensions of one-dimensional ones."""
    (D,), T = model.event_shape, model.num_steps
    sched = guide.schedule
    eye = torch.eye(D, dtype=torch.float64, device=x.device)
    var = var[:, None].expand(T + 1, D) if var.dim() == 1 else var

    def expected_sq(M: Tensor, r: Tensor, m_t: Tensor, v_t: Tensor) -> Tensor:
        # E (M x_t + r)_j² for x_t ~ N(m_t, diag(v_t)), per datum and dimension j: (N, D)
        return (m_t @ M.T + r) ** 2 + v_t @ (M**2).T

    diffusion = []
    rec = None
    for t in range(1, T + 1):
        q_t = guide.marginal(x, t)
        m_t, v_t = q_t.loc, q_t.scale.expand_as(x) ** 2  # (N, D), (N, D)
        if t == 1:
            e_sq = expected_sq(-A[1], x - c[1], m_t, v_t)
            rec = (-0.5 * torch.log(2 * math.pi * var[1]) - e_sq / (2 * var[1])).sum(-1)
            continue
        c0, ct = q_posterior_mean_coefs(sched, t, x)
        # ct is one number, or a (D,) vector (then ct * eye = diag(ct))
        e_sq = expected_sq(ct * eye - A[t], c0 * x - c[t], m_t, v_t)
        post_var = sched.posterior_variance[..., t].double().to(x.device)
        # one-dimensional KLs from the expected squared distance, summed over dimensions
        diffusion.append(isotropic_gaussian_kl(e_sq, post_var, var[t], 1).sum(-1))
    q_T = guide.marginal(x, T)
    p_loc = model.prior_loc.double().to(A.device).expand(D)
    p_scale = model.prior_scale.double().to(A.device).expand(D)
    prior = prior_kl(q_T.loc, q_T.scale, p_loc, p_scale)
    diff = torch.stack(diffusion, 1) if diffusion else x.new_zeros(x.shape[0], 0)
    return ELBOTerms(reconstruction=rec, diffusion=diff, prior=prior, num_dims=D)
