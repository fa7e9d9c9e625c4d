"""A linear-Gaussian diffusion model: exact evidence, exact ELBO, and every estimator agreeing.

Tolerances come from standard errors measured in the test itself: an estimator passes when its
mean is within 4.5 standard errors of the closed form (a false failure rate below 1e-5 each).
"""

import math

import pyro
import pytest
import reference
import torch
from pyro.infer import RenyiELBO, Trace_ELBO, TraceMeanField_ELBO

from pyrodiff import ChainOrder, Diffusion, ForwardGuide, linear_schedule
from pyrodiff.infer import DiffusionELBO, elbo_terms, exact_elbo_terms, exact_log_evidence
from pyrodiff.networks import LinearDenoiser

T, D, N = 4, 3, 5
Z = 4.5


def _model(seed=0, scale=0.3):
    torch.manual_seed(seed)
    schedule = linear_schedule(T)
    model = Diffusion(LinearDenoiser(D, T), schedule)
    with torch.no_grad():
        model.denoiser.weight.normal_(0, scale)
        model.denoiser.bias.normal_(0, scale)
    return model, ForwardGuide(schedule), torch.randn(N, D) * 0.8 + 0.3


def _near_oracle(seed=0):
    """The exact reverse process of N(m, s² I) data, perturbed: a model whose ELBO is close to,
    but not equal to, its evidence, so estimator variances stay small."""
    from pyrodiff import gaussian_oracle

    torch.manual_seed(seed)
    schedule = linear_schedule(T)
    mean = torch.tensor([0.5, -0.3, 0.8])
    model = gaussian_oracle(schedule, mean, 0.6)
    with torch.no_grad():
        for p in model.denoiser.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model, ForwardGuide(schedule), mean + 0.6 * torch.randn(N, D)


def _exact(model, x0, detach=True):
    """The exact ELBO terms under the forward chain, from tests/reference.py (written from ᾱ_t
    and the weights alone, not from the library's exact_elbo_terms)."""
    lg = reference.from_model(model, detach=detach)
    return reference.elbo_terms(lg, model.schedule.alpha_bar, x0)


def _repeat(estimate, times: int) -> torch.Tensor:
    return torch.tensor([estimate() for _ in range(times)])


def _agrees(samples: torch.Tensor, truth: float) -> None:
    mean = samples.mean().item()
    se = samples.std().item() / math.sqrt(len(samples))
    assert abs(mean - truth) < Z * se + 1e-9, f"mean {mean:.5f} vs {truth:.5f} (SE {se:.2g})"


def _independent_evidence(model, x0):
    """log p(x_0) from the joint Gaussian of (x_T, …, x_0), written as a linear structural
    equation model from the schedule and the LinearDenoiser weights (ε-parameterisation, σ² = β)."""
    s = model.schedule
    W, b = model.denoiser.weight.detach(), model.denoiser.bias.detach()
    eye = torch.eye(D)
    n = (T + 1) * D
    B = torch.zeros(n, n)  # z = B z + c + noise, z blocks ordered x_T, x_{T-1}, …, x_0
    c = torch.zeros(n)
    noise_var = torch.zeros(n)
    noise_var[:D] = 1.0
    for t in range(T, 0, -1):
        ab, ab_prev = s.alpha_bar[t], s.alpha_bar[t - 1]
        k_x0 = torch.sqrt(ab_prev) * s.betas[t] / (1 - ab) if t > 1 else torch.tensor(1.0)
        k_xt = torch.sqrt(s.alphas[t]) * (1 - ab_prev) / (1 - ab) if t > 1 else torch.tensor(0.0)
        # x̂_0 = (x_t − √(1−ᾱ)(W x_t + b)) / √ᾱ
        A = k_x0 * (eye - torch.sqrt(1 - ab) * W[t]) / torch.sqrt(ab) + k_xt * eye
        shift = -k_x0 * torch.sqrt(1 - ab) * b[t] / torch.sqrt(ab)
        row = (T - t + 1) * D
        col = (T - t) * D
        B[row : row + D, col : col + D] = A
        c[row : row + D] = shift
        noise_var[row : row + D] = s.betas[t]
    M = torch.linalg.inv(torch.eye(n) - B)
    mean = M @ c
    cov = M @ torch.diag(noise_var) @ M.T
    m0, S0 = mean[-D:], cov[-D:, -D:]
    return torch.distributions.MultivariateNormal(m0, S0).log_prob(x0)


def test_exact_evidence_matches_an_independent_marginalisation():
    for seed in range(3):
        model, _, x0 = _model(seed)
        got = exact_log_evidence(model, x0)
        assert torch.allclose(got, _independent_evidence(model, x0), atol=1e-6, rtol=0)


def test_exact_elbo_is_below_the_evidence():
    for seed in range(5):
        model, guide, x0 = _model(seed)
        assert (
            exact_elbo_terms(model, guide, x0).elbo <= exact_log_evidence(model, x0) + 1e-9
        ).all()


def test_oracle_elbo_equals_evidence_with_zero_variance():
    from pyrodiff import gaussian_oracle

    schedule = linear_schedule(6)
    mean = torch.tensor([0.5, -1.0, 2.0])
    model, guide = gaussian_oracle(schedule, mean, 0.7), ForwardGuide(schedule)
    x0 = mean + 0.7 * torch.randn(N, D)
    log_p = torch.distributions.Normal(mean, 0.7).log_prob(x0).sum(-1)
    assert torch.allclose(exact_log_evidence(model, x0), log_p, atol=1e-9)
    assert torch.allclose(exact_elbo_terms(model, guide, x0).elbo, log_p, atol=1e-9)
    draws = torch.tensor([-Trace_ELBO().loss(model, guide, x0) for _ in range(20)])
    assert draws.std() < 1e-9 and abs(draws.mean() - log_p.sum()) < 1e-8
    # analytic KLs are not automatically better: the mean-field estimate has variance here
    mf = torch.tensor([-TraceMeanField_ELBO().loss(model, guide, x0) for _ in range(200)])
    assert mf.std() > 1e-3
    _agrees(mf, log_p.sum().item())


@pytest.mark.parametrize("order", list(ChainOrder))
def test_trace_elbo_matches_the_analytic_elbo_in_both_orders(order):
    model, _, x0 = _near_oracle(1)
    guide = ForwardGuide(model.schedule, order=order)
    truth = _exact(model, x0).elbo.sum().item()
    trace = Trace_ELBO(num_particles=500, vectorize_particles=True)
    _agrees(_repeat(lambda: -trace.loss(model, guide, x0), 10), truth)


def test_mean_field_elbo_is_right_top_down_and_wrong_bottom_up():
    model, guide, x0 = _near_oracle(2)
    truth = _exact(model, x0).elbo.sum().item()
    mf = TraceMeanField_ELBO(num_particles=500, vectorize_particles=True)
    _agrees(_repeat(lambda: -mf.loss(model, guide, x0), 10), truth)
    bottom_up = ForwardGuide(model.schedule, order=ChainOrder.BOTTOM_UP)
    with pytest.warns(UserWarning, match="mean field"):
        wrong = _repeat(lambda: -mf.loss(model, bottom_up, x0), 10)
    se = wrong.std().item() / math.sqrt(len(wrong))
    assert abs(wrong.mean().item() - truth) > 20 * se


@pytest.mark.slow
def test_diffusion_elbo_is_unbiased_for_the_elbo():
    model, guide, x0 = _near_oracle(3)
    truth = _exact(model, x0).elbo.sum().item()
    loss = DiffusionELBO(num_particles=20)
    _agrees(_repeat(lambda: -loss.loss(model, guide, x0), 100), truth)
    assert truth <= reference.evidence(reference.from_model(model), x0).sum().item()


@pytest.mark.slow
def test_diffusion_elbo_gradient_is_unbiased():
    model, guide, x0 = _near_oracle(4)
    params = list(model.parameters())
    exact = _exact(model, x0, detach=False).elbo.sum()
    true_grads = torch.autograd.grad(-exact, params)
    loss_fn = DiffusionELBO(num_particles=10)(model, guide)
    draws = []
    for _ in range(300):
        grads = torch.autograd.grad(loss_fn(x0), params)
        draws.append(torch.cat([g.flatten() for g in grads]))
    draws = torch.stack(draws)
    truth = torch.cat([g.flatten() for g in true_grads])
    se = draws.std(0) / math.sqrt(len(draws))
    live = se > 1e-12  # W_0, b_0 are never used: their gradient is exactly zero
    assert torch.all(truth[~live].abs() < 1e-12)
    z = (draws.mean(0) - truth)[live] / se[live]
    assert z.abs().max() < 5.0, z.abs().max()  # ~60 coordinates; P(max |z| > 5) < 1e-4
    # the whole vector at once: for an unbiased estimator ‖mean − truth‖² / Σ SE² is about
    # χ²_k / k with k ≈ 60 (≈ 1 ± 0.18); it exceeds 4 with probability below 1e-20
    assert (draws.mean(0) - truth).norm() < 2 * se.norm()


@pytest.mark.slow
def test_elbo_terms_are_unbiased_term_by_term():
    model, guide, x0 = _near_oracle(5)
    exact = _exact(model, x0)
    draws = [elbo_terms(model, guide, x0) for _ in range(300)]
    for name in ("reconstruction", "diffusion", "prior"):
        got = torch.stack([getattr(d, name) for d in draws])
        se = got.std(0) / math.sqrt(len(draws))
        assert ((got.mean(0) - getattr(exact, name)).abs() <= Z * se + 1e-9).all(), name


def test_elbo_terms_chunking_does_not_change_the_terms():
    model, guide, x0 = _model(6)
    gen = lambda: torch.Generator().manual_seed(11)  # noqa: E731
    a = elbo_terms(model, guide, x0, batch_budget=N, generator=gen())
    b = elbo_terms(model, guide, x0, batch_budget=10_000, generator=gen())
    assert torch.allclose(a.elbo, b.elbo, atol=1e-12)


@pytest.mark.slow
def test_iwae_rises_towards_the_evidence():
    model, guide, x0 = _near_oracle(7)
    evidence = exact_log_evidence(model, x0).sum().item()
    means = []
    for k in (1, 10, 100):
        renyi = RenyiELBO(alpha=0, num_particles=k, vectorize_particles=True)
        draws = _repeat(lambda: -renyi.loss(model, guide, x0), 40)  # noqa: B023
        se = draws.std().item() / math.sqrt(len(draws))
        assert draws.mean().item() <= evidence + Z * se
        means.append((draws.mean().item(), se))
    for (lo, se_lo), (hi, se_hi) in zip(means, means[1:], strict=False):
        assert hi > lo - Z * math.hypot(se_lo, se_hi)
    assert means[-1][0] > means[0][0]
    pyro.clear_param_store()
