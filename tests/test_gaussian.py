"""Closed-form identities of the forward process, at random points."""

import pytest
import reference
import torch

from pyrodiff import Parameterization, linear_schedule
from pyrodiff.gaussian import (
    coef,
    coef_rows,
    eps_from_x0,
    gaussian_kl,
    predict_x0,
    q_marginal,
    q_posterior,
    q_sample,
    q_step,
    reverse_mean_coefs,
    v_from_x0,
    x0_from_eps,
    x0_from_v,
)


@pytest.fixture
def sched():
    return linear_schedule(20)


def test_bayes_rule_links_the_three_densities(sched):
    """log q(x_{t-1}|x_t,x_0) = log q(x_t|x_{t-1}) + log q(x_{t-1}|x_0) − log q(x_t|x_0)."""
    torch.manual_seed(1)
    x0, x_prev, x_t = torch.randn(3, 64, 5)
    t = torch.randint(2, 21, (64,))
    lhs = q_posterior(sched, x0, x_t, t).log_prob(x_prev)
    rhs = (
        q_step(sched, x_prev, t).log_prob(x_t)
        + q_marginal(sched, x0, t - 1).log_prob(x_prev)
        - q_marginal(sched, x0, t).log_prob(x_t)
    )
    assert torch.allclose(lhs, rhs, atol=1e-9)


def test_single_steps_compose_to_the_marginal(sched):
    """Pushing N(x_0, 0) through t steps gives mean √ᾱ_t x_0 and variance 1 − ᾱ_t."""
    x0 = torch.randn(8, 3)
    mean, var = x0.clone(), torch.zeros(())
    for t in range(1, sched.num_steps + 1):
        step = q_step(sched, mean, t)  # affine: mean maps through, variance α_t var + β_t
        mean, var = step.loc, sched.alphas[t] * var + sched.betas[t]
        q = q_marginal(sched, x0, t)
        assert torch.allclose(mean, q.loc, atol=1e-12)
        assert torch.allclose(var.sqrt().expand_as(q.scale), q.scale, atol=1e-12)


def test_q_sample_matches_marginal_moments(sched):
    torch.manual_seed(2)
    x0 = torch.full((200_000, 1), 0.7)
    t = 9
    xs = q_sample(sched, x0, t, torch.randn_like(x0))
    q = q_marginal(sched, x0[:1], t)
    se_mean = q.scale.item() / (x0.shape[0] ** 0.5)
    assert abs(xs.mean().item() - q.loc.item()) < 5 * se_mean
    assert abs(xs.var().item() / q.scale.item() ** 2 - 1) < 5 * (2 / x0.shape[0]) ** 0.5


def test_prediction_conversions_round_trip(sched):
    x0, eps = torch.randn(2, 16, 4)
    t = torch.randint(1, 21, (16,))
    x_t = q_sample(sched, x0, t, eps)
    assert torch.allclose(eps_from_x0(sched, x_t, t, x0), eps, atol=1e-9)
    assert torch.allclose(x0_from_eps(sched, x_t, t, eps), x0, atol=1e-9)
    v = v_from_x0(sched, x_t, t, x0)
    # v = √ᾱ_t ε − √(1 − ᾱ_t) x_0 by definition, written here from ᾱ_t
    ab = sched.alpha_bar[t][:, None]
    assert torch.allclose(v, ab.sqrt() * eps - (1 - ab).sqrt() * x0, atol=1e-9)
    assert torch.allclose(x0_from_v(sched, x_t, t, v), x0, atol=1e-9)
    for p, out in (
        (Parameterization.EPSILON, eps),
        (Parameterization.X0, x0),
        (Parameterization.V, v),
    ):
        assert torch.allclose(predict_x0(p, sched, x_t, t, out), x0, atol=1e-9)


@pytest.mark.parametrize("p", list(Parameterization))
def test_reverse_mean_coefs_fold_the_x0_prediction_into_the_posterior_mean(sched, p):
    """a_t x_t + b_t y = μ̃_t(x_t, x̂_0(x_t, y)) for t ≥ 2, and = x̂_0 at t = 1, per datum and
    for one int step; for ε they are DDPM's 1/√α_t and −β_t/(√α_t √(1 − ᾱ_t))."""
    torch.manual_seed(3)
    x_t, y = torch.randn(2, 40, 3)
    t = torch.arange(1, 21).repeat(2)
    a, b = reverse_mean_coefs(p, sched, t, x_t)
    # x̂_0 and the posterior-mean coefficients written from ᾱ_t alone (tests/reference.py)
    ab = sched.alpha_bar[t][:, None]
    x0_hat = {
        Parameterization.EPSILON: (x_t - (1 - ab).sqrt() * y) / ab.sqrt(),
        Parameterization.X0: y,
        Parameterization.V: ab.sqrt() * x_t - (1 - ab).sqrt() * y,
    }[p]
    c0, ct, _ = torch.tensor([reference.posterior_coefs(sched.alpha_bar, s) for s in t.tolist()]).T
    expected = torch.where((t == 1)[:, None], x0_hat, c0[:, None] * x0_hat + ct[:, None] * x_t)
    assert torch.allclose(a * x_t + b * y, expected, atol=1e-9, rtol=1e-9)
    a7, b7 = reverse_mean_coefs(p, sched, 7, x_t)
    at7 = t == 7
    assert a7.dim() == 0
    assert torch.allclose(a7 * x_t[at7] + b7 * y[at7], (a * x_t + b * y)[at7], rtol=1e-12)
    if p is Parameterization.EPSILON:
        al, be, om = sched.alphas[t], sched.betas[t], sched.one_minus_alpha_bar[t]
        assert torch.allclose(a.flatten(), al.rsqrt(), rtol=1e-12)
        assert torch.allclose(b.flatten(), -be / (al * om).sqrt(), rtol=1e-12)


def test_coef_and_coef_rows_read_the_table_at_t():
    """Against plain indexing: row k at a per-datum t is table[k, t] shaped (batch, 1, 1); at an
    int t it is the 0-d table[k, t]."""
    table = torch.randn(3, 21)
    like = torch.zeros(5, 2, 4)
    t = torch.tensor([1, 7, 7, 20, 3])
    rows = coef_rows(table, t, like)
    assert len(rows) == 3
    for k, row in enumerate(rows):
        assert row.shape == (5, 1, 1)
        assert torch.equal(row.flatten(), torch.stack([table[k, s] for s in t.tolist()]))
        assert torch.equal(coef(table[k], t, like), row)
        assert torch.equal(coef_rows(table, 7, like)[k], table[k, 7])
        assert coef(table[k], 7, like).dim() == 0


def test_posterior_at_t1_is_refused(sched):
    with pytest.raises(ValueError, match="t >= 2"):
        q_posterior(sched, torch.zeros(1, 2), torch.zeros(1, 2), 1)


def test_gaussian_kl_matches_torch(sched):
    a, b, c, d = torch.randn(4, 10)
    va, vb = c.exp(), d.exp()
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(a, va.sqrt()), torch.distributions.Normal(b, vb.sqrt())
    )
    assert torch.allclose(gaussian_kl(a, va, b, vb), expected, atol=1e-12)
