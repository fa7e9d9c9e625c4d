"""The library's exact ELBO, exact evidence and one-sample terms against references written from
ᾱ_t alone (tests/reference.py), column by column, for every parameterisation and reverse
variance, with priors far from N(0, I).

All comparisons are deterministic closed forms in float64; the tolerance 1e-9 (relative to
terms of order 1–100 nats) leaves room for rounding in a T-step product of 3×3 matrices
(~T · 1e-15) and nothing for a wrong factor.
"""

import math

import pytest
import torch
from linear_models import random_linear_diffusion
from reference import (
    Target,
    elbo_terms,
    evidence,
    from_model,
    isotropic_gaussian_oracle,
    kernels,
    step_term,
)

from pyrodiff import (
    Diffusion,
    ForwardGuide,
    Parameterization,
    ReverseVariance,
    cosine_schedule,
    gaussian_oracle,
    linear_schedule,
)
from pyrodiff.infer import exact_elbo_terms, exact_log_evidence
from pyrodiff.infer.elbo import elbo_terms as lib_elbo_terms
from pyrodiff.infer.elbo import prior_kl, step_terms
from pyrodiff.networks import LinearDenoiser

T, D, N = 5, 3, 4
ATOL = 1e-9
FIXED = [ReverseVariance.BETA, ReverseVariance.POSTERIOR, ReverseVariance.PER_STEP]
# far from N(0, I): a shifted mean, per-dimension scales from 0.4 to 2.5
PRIOR_LOC = torch.tensor([1.5, -2.0, 0.7])
PRIOR_SCALE = torch.tensor([0.4, 2.5, 1.7])


def _model(param, variance, seed=0, schedule=None, prior_scale=PRIOR_SCALE):
    schedule = (
        schedule if schedule is not None else linear_schedule(T, 0.05, 0.4, reference_steps=T)
    )
    model = random_linear_diffusion(
        schedule, D, param, variance, PRIOR_LOC, prior_scale, seed, log_variance_spread=0.5
    )
    x0 = torch.randn(N, D) * 1.3 + 0.4
    return model, ForwardGuide(schedule), x0


@pytest.mark.parametrize("variance", FIXED)
@pytest.mark.parametrize("param", list(Parameterization))
def test_exact_terms_and_evidence_match_the_reference(param, variance):
    model, guide, x0 = _model(param, variance)
    lg = from_model(model)
    ref = elbo_terms(lg, model.schedule.alpha_bar, x0)
    got = exact_elbo_terms(model, guide, x0)
    torch.testing.assert_close(got.reconstruction, ref.reconstruction, atol=ATOL, rtol=0)
    assert got.diffusion.shape == (N, T - 1)
    torch.testing.assert_close(got.diffusion, ref.diffusion, atol=ATOL, rtol=0)
    torch.testing.assert_close(got.prior, ref.prior, atol=ATOL, rtol=0)
    torch.testing.assert_close(prior_kl(model, guide, x0), ref.prior, atol=ATOL, rtol=0)
    log_p = evidence(lg, x0)
    torch.testing.assert_close(exact_log_evidence(model, x0), log_p, atol=ATOL, rtol=0)
    # Jensen's gap is KL(q(x_{1:T}|x_0) ‖ p(x_{1:T}|x_0)) > 0 for a model that is not the
    # true reverse process, so the reference ELBO must lie strictly below its own evidence
    assert (ref.elbo < log_p).all()


@pytest.mark.parametrize("variance", FIXED)
@pytest.mark.parametrize("param", list(Parameterization))
def test_one_sample_terms_match_the_reference_at_fixed_noise(param, variance):
    """step_terms and elbo_terms at a given ε are deterministic: every column, exactly."""
    model, guide, x0 = _model(param, variance, seed=1)
    lg = from_model(model)
    ab = model.schedule.alpha_bar
    eps = torch.randn(T, N, D)
    t = torch.arange(1, T + 1).repeat_interleave(N)
    got = step_terms(model, guide, x0.repeat(T, 1), t, eps.reshape(T * N, D)).reshape(T, N)
    for s in range(1, T + 1):
        torch.testing.assert_close(
            got[s - 1], step_term(lg, ab, x0, s, eps[s - 1]), atol=ATOL, rtol=0
        )
    # elbo_terms draws one ε per t, in t order, from its generator
    terms = lib_elbo_terms(model, guide, x0, generator=torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    eps = [torch.randn(x0.shape, generator=gen) for _ in range(T)]
    torch.testing.assert_close(
        terms.reconstruction, step_term(lg, ab, x0, 1, eps[0]), atol=ATOL, rtol=0
    )
    for s in range(2, T + 1):
        ref = -step_term(lg, ab, x0, s, eps[s - 1])
        torch.testing.assert_close(terms.diffusion[:, s - 2], ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(terms.prior, elbo_terms(lg, ab, x0).prior, atol=ATOL, rtol=0)


def test_one_sample_terms_average_to_the_exact_terms():
    """The reference's own consistency: its closed-form expectation is the mean of its
    one-sample terms. Tolerance: 4.5 SE of the mean over 2,000 draws per datum, measured here."""
    model, _, x0 = _model(Parameterization.V, ReverseVariance.POSTERIOR, seed=2)
    lg = from_model(model)
    ab = model.schedule.alpha_bar
    exact = elbo_terms(lg, ab, x0)
    cols = [exact.reconstruction] + [-exact.diffusion[:, i] for i in range(T - 1)]
    K = 2000
    for s in range(1, T + 1):
        draws = step_term(lg, ab, x0.repeat(K, 1), s, torch.randn(K * N, D)).reshape(K, N)
        se = draws.std(0) / math.sqrt(len(draws))
        assert ((draws.mean(0) - cols[s - 1]).abs() < 4.5 * se).all(), s


@pytest.mark.parametrize(
    "schedule",
    [linear_schedule(6, 0.02, 0.3, reference_steps=6), cosine_schedule(8)],
    ids=["linear", "cosine"],
)
def test_gaussian_oracle_is_the_true_reverse_process(schedule):
    """Built independently, the oracle has the library's weights, and its ELBO and evidence both
    equal log N(x_0; m, s² I) written out by hand. s = 2 puts the prior far from N(0, I)."""
    mean, std = torch.tensor([2.0, -1.5, 0.5]), 2.0
    model, guide = gaussian_oracle(schedule, mean, std), ForwardGuide(schedule)
    W, b, var, p_loc, p_scale = isotropic_gaussian_oracle(schedule.alpha_bar, mean, std)
    steps = slice(1, None)  # index 0 is no step
    torch.testing.assert_close(model.denoiser.weight[steps].detach(), W[steps], atol=1e-12, rtol=0)
    torch.testing.assert_close(model.denoiser.bias[steps].detach(), b[steps], atol=1e-12, rtol=0)
    torch.testing.assert_close(
        model.log_variance[steps].detach().exp(), var[steps], rtol=1e-12, atol=0
    )
    torch.testing.assert_close(model.prior_loc.expand(D), p_loc, atol=1e-12, rtol=0)
    torch.testing.assert_close(float(model.prior_scale), p_scale, atol=1e-12, rtol=0)
    x0 = mean + std * torch.randn(N, D)
    log_p = (
        -0.5 * ((x0 - mean) ** 2).sum(-1) / std**2
        - D * math.log(std)
        - 0.5 * D * math.log(2 * math.pi)
    )
    lg = kernels(schedule.alpha_bar, W, b, Target.X0, var, p_loc, p_scale)
    ref = elbo_terms(lg, schedule.alpha_bar, x0)
    torch.testing.assert_close(evidence(lg, x0), log_p, atol=ATOL, rtol=0)
    torch.testing.assert_close(ref.elbo, log_p, atol=ATOL, rtol=0)
    got = exact_elbo_terms(model, guide, x0)
    torch.testing.assert_close(got.prior, ref.prior, atol=ATOL, rtol=0)
    torch.testing.assert_close(got.elbo, log_p, atol=ATOL, rtol=0)
    torch.testing.assert_close(exact_log_evidence(model, x0), log_p, atol=ATOL, rtol=0)


@pytest.mark.parametrize("param", list(Parameterization))
def test_reference_parameterisations_describe_one_model(param):
    """The three readings of a linear denoiser give the same reverse kernels when the weights
    are converted by hand (ε → x_0 → v through x_t = √ᾱ x_0 + √(1−ᾱ) ε); the library, given the
    converted weights, gives the same exact ELBO."""
    base, guide, x0 = _model(Parameterization.X0, ReverseVariance.BETA, seed=4)
    ab = base.schedule.alpha_bar
    Wx, bx = base.denoiser.weight.detach(), base.denoiser.bias.detach()
    sa, so = ab.sqrt()[:, None, None], (1 - ab).sqrt()[:, None, None]
    eye = torch.eye(D)
    if param is Parameterization.X0:
        W, b = Wx, bx
    elif param is Parameterization.EPSILON:  # ε̂ = (x_t − √ᾱ x̂_0)/√(1−ᾱ)
        W, b = (eye - sa * Wx) / so, -sa[..., 0] * bx / so[..., 0]
    else:  # v̂ = (√ᾱ x_t − x̂_0)/√(1−ᾱ)
        W, b = (sa * eye - Wx) / so, -bx / so[..., 0]
    W[0], b[0] = 0.0, 0.0  # t = 0 is no step (√(1−ᾱ_0) = 0)
    model = Diffusion(
        LinearDenoiser(D, T),
        base.schedule,
        parameterization=param,
        prior_loc=PRIOR_LOC,
        prior_scale=PRIOR_SCALE,
    )
    with torch.no_grad():
        model.denoiser.weight.copy_(W)
        model.denoiser.bias.copy_(b)
    ref = elbo_terms(from_model(base), ab, x0)
    torch.testing.assert_close(from_model(model).A, from_model(base).A, atol=1e-12, rtol=0)
    torch.testing.assert_close(exact_elbo_terms(model, guide, x0).elbo, ref.elbo, atol=ATOL, rtol=0)
