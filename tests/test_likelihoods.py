"""The discretised Gaussian decoder: a proper probability mass, accurate in the tails."""

import math

import pytest
import torch

from pyrodiff import DataError, DiscretizedGaussianLikelihood
from pyrodiff.likelihoods import DiscretizedNormal

K = 17


def _levels():
    return torch.linspace(-1, 1, K)  # built per test, in the float64 default of conftest


@pytest.mark.parametrize("scale", [1e-4, 1e-2, 0.3, 5.0])
def test_masses_sum_to_one(scale):
    loc = torch.tensor([-3.0, -1.0, -0.37, 0.0, 0.8, 1.0, 4.0])
    d = DiscretizedNormal(loc[:, None].expand(-1, K), torch.tensor(scale), K)
    lp = d.log_prob(_levels().expand(len(loc), K))
    assert torch.allclose(lp.logsumexp(-1), torch.zeros(len(loc)), atol=1e-9)


def test_matches_cdf_differences_in_the_body():
    normal = torch.distributions.Normal(torch.tensor(0.1), torch.tensor(0.2))
    d = DiscretizedNormal(torch.tensor(0.1).expand(K), torch.tensor(0.2), K)
    half = 1.0 / (K - 1)
    edges_hi = torch.where(_levels() >= 1 - half, torch.tensor(math.inf), _levels() + half)
    edges_lo = torch.where(_levels() <= -1 + half, torch.tensor(-math.inf), _levels() - half)
    expected = (normal.cdf(edges_hi) - normal.cdf(edges_lo)).log()
    assert torch.allclose(d.log_prob(_levels()), expected, atol=1e-10)


def test_far_tail_is_finite_and_matches_the_gaussian_tail():
    """Deep in a tail the bin mass is ≈ width · density; the naive CDF difference gives -inf."""
    loc, scale = torch.tensor(0.0), torch.tensor(0.01)
    x = _levels()[12]  # 0.5, i.e. 50 standard deviations away
    lp = DiscretizedNormal(loc, scale, K).log_prob(x)
    assert torch.isfinite(lp)
    lower = (x - 1 / 16 - loc) / scale  # z = 43.75; the bin's upper edge is 12.5 SD further out
    # the asymptotic series of the Mills ratio: log Φ̄(z) = log φ(z) − log z
    # + log(1 − 1/z² + 3/z⁴ − …); the first omitted term is 15/z⁶ ≈ 2e-9 here, and the mass
    # beyond the upper edge is below e^(−1500) of the bin's, so 1e-8 covers the truncation
    log_tail = (
        torch.distributions.Normal(0.0, 1.0).log_prob(lower)
        - torch.log(lower)
        + torch.log1p(-1 / lower**2 + 3 / lower**4)
    )
    assert abs(lp.item() - log_tail.item()) < 1e-8


def test_samples_lie_on_the_grid_with_the_right_frequencies():
    torch.manual_seed(0)
    d = DiscretizedNormal(torch.tensor(0.3), torch.tensor(0.25), K)
    n = 100_000
    xs = d.sample((n,))
    k = (xs + 1) * (K - 1) / 2
    assert torch.allclose(k, k.round(), atol=1e-9)
    freq = torch.bincount(k.round().long(), minlength=K).double() / n
    p = d.log_prob(_levels()).exp()
    se = (p * (1 - p) / n).sqrt().clamp(min=1e-6)
    assert ((freq - p).abs() <= 5 * se + 1e-6).all()


def test_validation_refuses_off_grid_and_out_of_range_data():
    lik = DiscretizedGaussianLikelihood(K)
    lik.validate(_levels()[None])
    with pytest.raises(DataError, match="levels"):
        lik.validate(torch.tensor([[0.01]]))
    with pytest.raises(DataError, match="lie in"):
        lik.validate(torch.tensor([[1.5]]))


@pytest.mark.parametrize("bad", [1, 0, 2.0, True])
def test_bad_number_of_levels(bad):
    with pytest.raises(ValueError, match="num_levels"):
        DiscretizedGaussianLikelihood(bad)
