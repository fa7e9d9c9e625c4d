"""Samplers: exact laws on models whose reverse process is known, identities, reproducibility."""

import math

import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyrodiff import (
    ConfigError,
    Diffusion,
    DiscretizedGaussianLikelihood,
    Parameterization,
    ReverseVariance,
    gaussian_oracle,
    linear_schedule,
)
from pyrodiff.likelihoods import DiscretizedNormal, Likelihood
from pyrodiff.networks import MLPDenoiser
from pyrodiff.sampling import (
    _decode,
    ancestral_sample,
    ddim_sample,
    predictive_sample,
    respace,
    strided_sample,
    strided_timesteps,
)


def _mean_se(x):
    return x.mean(0), x.std(0) / math.sqrt(x.shape[0])


def _var_se(x):
    d2 = (x - x.mean(0)) ** 2
    return d2.mean(0), d2.std(0) / math.sqrt(x.shape[0])


def assert_moments(x, mean, var):
    """Sample mean and variance within 4 measured standard errors of the truth."""
    m, se_m = _mean_se(x)
    v, se_v = _var_se(x)
    assert ((m - mean).abs() < 4 * se_m).all(), (m, mean, se_m)
    assert ((v - var).abs() < 4 * se_v).all(), (v, var, se_v)


class PointMass(nn.Module):
    """x̂_0 = c whatever x_t: the denoiser of data that is a point mass at c."""

    def __init__(self, c):
        super().__init__()
        self.register_buffer("c", c)

    def forward(self, x_t, t):
        return self.c.expand_as(x_t)


def point_mass_model(schedule, c, variance=ReverseVariance.POSTERIOR, likelihood=None):
    """With σ_t² = β̃_t its reverse kernels are q(x_{t−1} | x_t, x_0 = c) exactly."""
    ab_T = schedule.alpha_bar[-1]
    return Diffusion(
        PointMass(c),
        schedule,
        likelihood=likelihood,
        parameterization=Parameterization.X0,
        variance=variance,
        event_shape=tuple(c.shape),
        prior_loc=ab_T.sqrt() * c,
        prior_scale=float((1 - ab_T).sqrt()),
    )


@pytest.fixture
def oracle():
    sched = linear_schedule(20)
    return gaussian_oracle(sched, torch.tensor([1.5, -0.5]), 0.7)


def test_ancestral_sampling_of_the_oracle_reproduces_the_data(oracle):
    g = torch.Generator().manual_seed(1)
    x = ancestral_sample(oracle, 6000, generator=g)
    assert_moments(x, torch.tensor([1.5, -0.5]), torch.full((2,), 0.49))


def test_predictive_and_ancestral_agree_in_distribution(oracle):
    a = ancestral_sample(oracle, 3000, generator=torch.Generator().manual_seed(2))
    p = predictive_sample(oracle, 3000, seed=3)
    (ma, sa), (mp, sp) = _mean_se(a), _mean_se(p)
    assert ((ma - mp).abs() < 4 * (sa**2 + sp**2).sqrt()).all()
    (va, sva), (vp, svp) = _var_se(a), _var_se(p)
    assert ((va - vp).abs() < 4 * (sva**2 + svp**2).sqrt()).all()
    assert_moments(p, torch.tensor([1.5, -0.5]), torch.full((2,), 0.49))


def test_predictive_returns_every_site_and_is_seeded(oracle):
    sites = predictive_sample(oracle, 4, seed=5, return_sites=True)
    assert set(sites) == {f"x_{t}" for t in range(21)}
    assert all(v.shape == (4, 2) for v in sites.values())
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    again = predictive_sample(oracle, 4, seed=5)
    assert torch.equal(again, sites["x_0"])
    assert torch.equal(torch.rand(3), expected)  # the caller's random stream is untouched


@pytest.mark.parametrize(
    "sampler",
    [
        lambda m, **kw: ancestral_sample(m, 3, **kw),
        lambda m, **kw: strided_sample(m, 3, 4, **kw),
        lambda m, **kw: ddim_sample(m, 3, 4, eta=0.5, **kw),
    ],
    ids=["ancestral", "strided", "ddim"],
)
def test_injected_noise_and_generators_reproduce_the_output(sampler):
    torch.manual_seed(0)
    model = Diffusion(MLPDenoiser(2, 16, 1), linear_schedule(8), variance=ReverseVariance.BETA)
    x1 = sampler(model, generator=torch.Generator().manual_seed(7))
    x2 = sampler(model, generator=torch.Generator().manual_seed(7))
    assert torch.equal(x1, x2)
    x3 = sampler(model, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(x1, x3)


def test_injected_noise_drives_every_state(oracle):
    noise = torch.randn(21, 5, 2)
    x1, tr1 = ancestral_sample(oracle, 5, noise=noise, return_trajectory=True)
    x2 = ancestral_sample(oracle, 5, noise=noise)
    assert torch.equal(x1, x2)
    # x_T = prior_loc + prior_scale · noise[T]
    assert torch.allclose(tr1.states[-1], oracle.prior_loc + oracle.prior_scale * noise[20])
    # one step by hand: x_{T−1} = μ_θ(x_T, T) + σ_T · noise[T − 1]
    mean, var = oracle.reverse_moments(tr1.states[-1], torch.full((5,), 20))
    assert torch.allclose(tr1.states[-2], mean + var.sqrt() * noise[19])
    assert torch.equal(tr1.timesteps, torch.arange(21))


def test_ddim_with_eta_one_on_the_full_sequence_is_ancestral_with_posterior_variance():
    torch.manual_seed(0)
    T = 12
    model = Diffusion(MLPDenoiser(2, 16, 2), linear_schedule(T), variance=ReverseVariance.POSTERIOR)
    noise = torch.randn(T + 1, 6, 2)
    _, anc = ancestral_sample(model, 6, noise=noise, return_trajectory=True)
    x0, ddim = ddim_sample(model, 6, T, eta=1.0, noise=noise, return_trajectory=True)
    # every latent x_T … x_1 agrees; at t = 1 DDIM has σ = 0 and returns the decoder's mean
    assert torch.allclose(ddim.states[1:], anc.states[1:], rtol=1e-9, atol=1e-10)
    mean_1, _ = model.reverse_moments(anc.states[1], torch.ones(6, dtype=torch.long))
    assert torch.allclose(x0, mean_1, rtol=1e-9, atol=1e-10)


def test_ddim_with_eta_zero_is_deterministic_given_x_T():
    torch.manual_seed(0)
    model = Diffusion(MLPDenoiser(2, 16, 1), linear_schedule(30))
    a, b = torch.randn(6, 4, 2), torch.randn(6, 4, 2)
    b[-1] = a[-1]
    assert torch.equal(ddim_sample(model, 4, 5, noise=a), ddim_sample(model, 4, 5, noise=b))
    b[-1] += 0.1
    assert not torch.equal(ddim_sample(model, 4, 5, noise=a), ddim_sample(model, 4, 5, noise=b))


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_keeps_the_forward_marginals_when_x0_is_known(eta):
    """DDIM's defining property: q_σ(x_{τ_i} | x_0) = N(√ᾱ x_0, (1 − ᾱ) I) for every η."""
    sched = linear_schedule(50)
    c = torch.tensor([0.8, -1.2])
    model = point_mass_model(sched, c)
    _, tr = ddim_sample(
        model, 4000, 5, eta=eta, generator=torch.Generator().manual_seed(3), return_trajectory=True
    )
    for i in range(1, tr.timesteps.numel() - 1):
        ab = sched.alpha_bar[tr.timesteps[i]]
        assert_moments(tr.states[i], ab.sqrt() * c, (1 - ab).expand(2))
    assert torch.allclose(tr.states[0], c.expand(4000, 2))


def test_strided_sampling_keeps_the_forward_marginals_of_a_point_mass():
    sched = linear_schedule(60)
    c = torch.tensor([0.3, 1.1])
    model = point_mass_model(sched, c)
    _, tr = strided_sample(
        model, 4000, 6, generator=torch.Generator().manual_seed(4), return_trajectory=True
    )
    assert torch.equal(tr.timesteps, strided_timesteps(60, 6))
    for i in range(1, 6):
        ab = sched.alpha_bar[tr.timesteps[i]]
        assert_moments(tr.states[i], ab.sqrt() * c, (1 - ab).expand(2))


def test_strided_on_every_step_is_ancestral():
    torch.manual_seed(0)
    for variance in (
        ReverseVariance.BETA,
        ReverseVariance.POSTERIOR,
        ReverseVariance.LEARNED_RANGE,
    ):
        out_dim = 4 if variance is ReverseVariance.LEARNED_RANGE else None
        net = MLPDenoiser(2, 16, 1, out_dim=out_dim)
        # x_0-prediction keeps an untrained network's samples bounded (ε-prediction explodes)
        model = Diffusion(
            net,
            linear_schedule(10),
            parameterization=Parameterization.X0,
            variance=variance,
            event_shape=(2,),
        )
        noise = torch.randn(11, 5, 2)
        a = ancestral_sample(model, 5, noise=noise)
        s = strided_sample(model, 5, 10, noise=noise)
        assert torch.isfinite(a).all()
        assert torch.allclose(a, s, rtol=1e-9, atol=1e-9)


def test_respaced_model_uses_the_beta_of_the_subsequence():
    sched = linear_schedule(40)
    model = Diffusion(MLPDenoiser(2, 8, 1), sched, variance=ReverseVariance.BETA)
    tau = strided_timesteps(40, 4)
    spaced = respace(model, tau)
    ab = sched.alpha_bar[tau]
    assert torch.allclose(spaced.schedule.betas[1:], 1 - ab[1:] / ab[:-1])
    x = torch.randn(3, 2)
    for i in range(1, 5):
        # the same denoiser, called with the original timestep
        out_spaced = spaced.denoiser(x, torch.full((3,), i))
        out_model = model.denoiser(x, torch.full((3,), int(tau[i])))
        assert torch.equal(out_spaced, out_model)


def test_discretised_likelihood_gives_samples_on_the_grid():
    torch.manual_seed(0)
    K = 5
    model = Diffusion(
        MLPDenoiser(3, 8, 1), linear_schedule(6), likelihood=DiscretizedGaussianLikelihood(K)
    )
    for x in (
        ancestral_sample(model, 50),
        strided_sample(model, 50, 3),
        ddim_sample(model, 50, 3),
    ):
        k = (x + 1) * (K - 1) / 2
        assert torch.allclose(k, k.round(), atol=1e-12)
        assert x.min() >= -1 and x.max() <= 1


def test_rounding_a_gaussian_draw_is_a_draw_from_the_discretised_normal():
    K, n = 5, 40000
    lik = DiscretizedGaussianLikelihood(K)
    loc, scale = torch.tensor(0.2), torch.tensor(0.6)
    z = torch.randn(n, generator=torch.Generator().manual_seed(0))
    x = _decode(lik, loc.expand(n), scale, z)
    levels = torch.linspace(-1, 1, K)
    p = DiscretizedNormal(loc, scale, K).log_prob(levels).exp()
    assert torch.allclose(p.sum(), torch.tensor(1.0))
    freq = (x[:, None] == levels).double().mean(0)
    se = (p * (1 - p) / n).sqrt()
    assert ((freq - p).abs() < 4 * se + 1e-12).all()


def test_bad_arguments_raise_config_errors(oracle):
    with pytest.raises(ConfigError, match="noise must have shape"):
        ancestral_sample(oracle, 3, noise=torch.randn(5, 3, 2))
    with pytest.raises(ConfigError, match="num_steps"):
        strided_sample(Diffusion(MLPDenoiser(2, 8, 1), linear_schedule(5)), 2, 6)
    with pytest.raises(ConfigError, match="PER_STEP"):
        strided_sample(oracle, 2, 4)
    with pytest.raises(ConfigError, match="eta"):
        ddim_sample(oracle, 2, 4, eta=-1.0)
    with pytest.raises(ConfigError, match="timesteps"):
        ddim_sample(oracle, 2, 2, timesteps=torch.tensor([0, 7, 5, 20]))
    with pytest.raises(ConfigError, match="num_samples"):
        ancestral_sample(oracle, 0)


def test_samples_follow_the_model_dtype():
    model = Diffusion(MLPDenoiser(2, 8, 1).float(), linear_schedule(6))
    for x in (ancestral_sample(model, 3), strided_sample(model, 3, 2), ddim_sample(model, 3, 2)):
        assert x.dtype == torch.float32 and x.shape == (3, 2)


class LaplaceLikelihood(Likelihood):
    def distribution(self, loc, scale):
        return dist.Laplace(loc, scale)


def test_another_decoder_is_sampled_through_its_own_distribution():
    sched = linear_schedule(10)
    c = torch.tensor([0.5, -0.5])
    model = point_mass_model(sched, c, likelihood=LaplaceLikelihood())
    torch.manual_seed(0)
    x = ancestral_sample(model, 8000)
    # x_0 | x_1 ~ Laplace(c, b) with b² = β̃_2 (the t = 1 variance): variance 2 b²
    b2 = sched.posterior_variance[2]
    assert_moments(x, c, (2 * b2).expand(2))
