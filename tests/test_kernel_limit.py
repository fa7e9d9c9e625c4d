"""The best Gaussian-kernel bound on Gaussian-mixture data (pyrodiff.infer.kernel_limit), held
to answers computed here without it: the chain identity on Gaussian data, where the reverse
kernels are exactly Gaussian, and the posterior moments by quadrature on a grid."""

import math

import pytest
import torch

from pyrodiff import NoiseSchedule, linear_schedule
from pyrodiff.data import GaussianMixture2D, get_dataset
from pyrodiff.errors import ConfigError
from pyrodiff.infer import best_gaussian_kernel_bound
from pyrodiff.infer.kernel_limit import _posterior_moments, mixture_parameters


def _schedules():
    gen = torch.Generator().manual_seed(3)
    random_betas = (0.02 + 0.5 * torch.rand(6, generator=gen, dtype=torch.float64)).tolist()
    return [linear_schedule(10), linear_schedule(3), NoiseSchedule(random_betas)]


@pytest.mark.parametrize("schedule", _schedules(), ids=["linear-10", "linear-3", "random-6"])
def test_gaussian_data_gap_is_the_prior_mismatch_alone(schedule):
    """For N(m, s² I) data q(x_{t−1} | x_t) and q(x_0 | x_1) are Gaussian with diagonal
    covariance, so the best kernels are exact and, by the chain rule of KL,
    E log p_data − ELBO* = KL(q(x_T) ‖ N(0, I)) with q(x_T) = N(√ᾱ_T m, (ᾱ_T s² + 1 − ᾱ_T) I)."""
    m, s = torch.tensor([[0.3, -0.2]], dtype=torch.float64), 0.6
    limit = best_gaussian_kernel_bound(GaussianMixture2D(m, s), schedule, num_samples=64)
    a = 1.0
    for beta in schedule.betas.tolist()[1:]:
        a *= 1.0 - beta
    v = a * s * s + 1.0 - a
    kl_prior = 0.5 * sum(v + a * mj * mj - 1.0 - math.log(v) for mj in m[0].tolist())
    minus_H = -math.log(2 * math.pi * math.e * s * s)
    assert minus_H - limit.elbo == pytest.approx(kl_prior, abs=1e-10)
    # the posterior covariance does not depend on x_t: no Monte-Carlo error at all
    assert limit.elbo_se < 1e-12


def _grid_moments(x_t, a, weights, means, std, half_width=4.0, n=801):
    """E[x_0 | x_t] and Var(x_{0,j} | x_t) by a 2-D Riemann sum of p(x_0) q(x_t | x_0)."""
    g = torch.linspace(-half_width, half_width, n, dtype=torch.float64)
    x0 = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    comp = -0.5 * ((x0[:, None, :] - means[None]) / std).pow(2).sum(-1)
    log_p0 = torch.logsumexp(weights.log() + comp, 1)
    out = []
    for x in x_t:
        log_lik = -0.5 * (x - math.sqrt(a) * x0).pow(2).sum(-1) / (1 - a)
        w = torch.softmax(log_p0 + log_lik, 0)
        mean = w @ x0
        out.append((mean, w @ x0.pow(2) - mean.pow(2)))
    return out


@pytest.mark.parametrize("a", [0.95, 0.5, 0.05])
def test_posterior_moments_match_quadrature(a):
    density = get_dataset("eight_gaussians").density
    weights, means, std = mixture_parameters(density)
    x_t = torch.tensor([[0.0, 0.0], [1.2, 0.3], [-0.4, 0.9]], dtype=torch.float64)
    mean, var = _posterior_moments(x_t, a, weights.log(), means, std.pow(2))
    for i, (grid_mean, grid_var) in enumerate(_grid_moments(x_t, a, weights, means, std)):
        assert mean[i] == pytest.approx(grid_mean, abs=1e-6)
        assert var[i] == pytest.approx(grid_var, abs=1e-6)


def test_mixture_bound_is_below_the_entropy_bound():
    """The best kernels form one model; its ELBO is ≤ E log p_data = −H (within 4 SE)."""
    density = get_dataset("eight_gaussians").density
    for T in (2, 10, 100):
        gen = torch.Generator().manual_seed(T)
        limit = best_gaussian_kernel_bound(density, linear_schedule(T), 2048, gen)
        assert limit.elbo <= -density.entropy + 4 * (limit.elbo_se + density.entropy_se)
        assert limit.per_step.numel() == T and (limit.per_step[1:] >= 0).all()


def test_other_densities_are_refused():
    with pytest.raises(ConfigError, match="Gaussian-mixture density"):
        best_gaussian_kernel_bound(get_dataset("checkerboard").density, linear_schedule(4))
    with pytest.raises(ConfigError, match="num_samples"):
        best_gaussian_kernel_bound(get_dataset("eight_gaussians").density, linear_schedule(4), 1)
