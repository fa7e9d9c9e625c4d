"""Every sampler pinned, path by path, to a plain loop written from ᾱ_t and the weights.

The model is linear-Gaussian with random weights, a prior far from N(0, I) and a reverse
variance that matters: its marginals change with σ_t², so a wrong variance, a wrong η factor
or an off-by-one noise index changes every path. With the noise injected the samplers are
deterministic, so the comparison is exact up to float64 rounding (1e-10 on values of order 1;
a T-step loop of 3×3 products rounds at ~1e-14).
"""

import math

import pytest
import torch
from linear_models import random_linear_diffusion
from reference import FixedVariance, Target, fixed_variances, kernels, x0_hat_affine

from pyrodiff import Parameterization, ReverseVariance, linear_schedule
from pyrodiff.sampling import ancestral_sample, ddim_sample, strided_sample, strided_timesteps

T, D, N = 8, 3, 5
ATOL = 1e-10
PRIOR_LOC = torch.tensor([1.0, -0.5, 2.0])
PRIOR_SCALE = torch.tensor([1.8, 0.6, 1.2])


def _model(variance, param=Parameterization.EPSILON, seed=0):
    schedule = linear_schedule(T, 0.02, 0.3, reference_steps=T)
    return random_linear_diffusion(schedule, D, param, variance, PRIOR_LOC, PRIOR_SCALE, seed)


def _weights(model):
    return model.denoiser.weight.detach(), model.denoiser.bias.detach()


def _plain_ancestral(lg, noise):
    """x_S = m + s ⊙ z_S; x_{i−1} = A_i x_i + a_i + σ_i z_{i−1}, i = S … 1 (the decoder last)."""
    S = lg.num_steps
    x = lg.prior_loc + lg.prior_var.sqrt() * noise[S]
    for i in range(S, 0, -1):
        x = x @ lg.A[i].T + lg.a[i] + lg.var[i].sqrt() * noise[i - 1]
    return x


@pytest.mark.parametrize("param", list(Parameterization))
@pytest.mark.parametrize("variance", [ReverseVariance.BETA, ReverseVariance.POSTERIOR])
def test_ancestral_sample_is_the_plain_loop(variance, param):
    model = _model(variance, param)
    ab = model.schedule.alpha_bar
    var = fixed_variances(ab, FixedVariance[variance.name])
    lg = kernels(ab, *_weights(model), Target[param.name], var, PRIOR_LOC, PRIOR_SCALE)
    noise = torch.randn(T + 1, N, D)
    got = ancestral_sample(model, N, noise=noise)
    torch.testing.assert_close(got, _plain_ancestral(lg, noise), atol=ATOL, rtol=0)


@pytest.mark.parametrize("S", [1, 3, 5])
@pytest.mark.parametrize("variance", [ReverseVariance.BETA, ReverseVariance.POSTERIOR])
def test_strided_sample_is_the_plain_loop_on_the_subsequence(variance, S):
    """Respacing keeps ᾱ on τ, so β'_i = 1 − ᾱ_{τ_i}/ᾱ_{τ_{i−1}}; the denoiser is called with the
    original τ_i, whose weights are W[τ_i]."""
    model = _model(variance, seed=1)
    tau = strided_timesteps(T, S)
    assert tau[0] == 0 and tau[-1] == T and len(tau) == S + 1
    ab = model.schedule.alpha_bar[tau]
    var = fixed_variances(ab, FixedVariance[variance.name])
    W, b = _weights(model)
    lg = kernels(ab, W[tau], b[tau], Target.EPSILON, var, PRIOR_LOC, PRIOR_SCALE)
    noise = torch.randn(S + 1, N, D)
    got = strided_sample(model, N, S, noise=noise)
    torch.testing.assert_close(got, _plain_ancestral(lg, noise), atol=ATOL, rtol=0)


def _plain_ddim(model, tau, eta, noise):
    """Song et al. (2021), eq. 12 with σ_τi(η) = η √((1 − ᾱ_s)/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_s)."""
    ab = model.schedule.alpha_bar.double()
    W, b = _weights(model)
    target = Target[model.parameterization.name]
    S = len(tau) - 1
    x = PRIOR_LOC + PRIOR_SCALE * noise[S]
    for i in range(S, 0, -1):
        t, s = int(tau[i]), int(tau[i - 1])
        G, h = x0_hat_affine(ab, W, b, t, target)
        x0_hat = x @ G.T + h
        if s == 0:
            return x0_hat
        a_t, a_s = float(ab[t]), float(ab[s])
        eps_hat = (x - math.sqrt(a_t) * x0_hat) / math.sqrt(1 - a_t)
        sigma = eta * math.sqrt((1 - a_s) / (1 - a_t)) * math.sqrt(1 - a_t / a_s)
        x = math.sqrt(a_s) * x0_hat + math.sqrt(1 - a_s - sigma**2) * eps_hat + sigma * noise[i - 1]
    raise AssertionError("τ must start at 0")


@pytest.mark.parametrize("param", list(Parameterization))
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("S", [T, 3])
def test_ddim_is_the_published_update(eta, S, param):
    """At η = 0.5 the stochastic part is σ = 0.5 · σ_DDPM: η, not η², scales the standard
    deviation, so a variance computed with η changes every path."""
    model = _model(ReverseVariance.BETA, param, seed=2)
    tau = strided_timesteps(T, S)
    noise = torch.randn(S + 1, N, D)
    got = ddim_sample(model, N, S, eta=eta, noise=noise)
    torch.testing.assert_close(got, _plain_ddim(model, tau, eta, noise), atol=ATOL, rtol=0)


def test_ddim_paths_differ_between_eta_values():
    """The pinned update is not blind to η in (0, 1): the paths at η = 0.25, 0.5, 0.75 differ
    by far more than rounding."""
    model = _model(ReverseVariance.BETA, seed=3)
    noise = torch.randn(T + 1, N, D)
    outs = [ddim_sample(model, N, T, eta=e, noise=noise) for e in (0.25, 0.5, 0.75)]
    assert (outs[0] - outs[1]).abs().max() > 1e-3 and (outs[1] - outs[2]).abs().max() > 1e-3
