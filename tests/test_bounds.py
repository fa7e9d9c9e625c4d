"""Bounds for any model/guide pair, checked against exact answers of linear-Gaussian models."""

import math

import pyro
import pytest
import reference
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyrodiff import Diffusion, ForwardGuide, ModelMismatchError, Parameterization, ReverseVariance
from pyrodiff.guides import LearnedGuide
from pyrodiff.infer import (
    DiffusionELBO,
    bounds_report,
    elbo_estimate,
    estimator_spread,
    iwae_bound,
    pareto_khat,
    sitewise_elbo_terms,
)
from pyrodiff.models import gaussian_oracle
from pyrodiff.networks import LinearDenoiser
from pyrodiff.schedules import linear_schedule


def linear_gaussian_model(T: int = 4, D: int = 2, seed: int = 0, spread: float = 0.3) -> Diffusion:
    """A linear-Gaussian Diffusion with random affine reverse means (so ForwardGuide is loose)."""
    gen = torch.Generator().manual_seed(seed)
    den = LinearDenoiser(D, T)
    with torch.no_grad():
        den.weight.copy_(spread * torch.randn(den.weight.shape, generator=gen))
        den.bias.copy_(spread * torch.randn(den.bias.shape, generator=gen))
    schedule = linear_schedule(T, reference_steps=25 * T)
    return Diffusion(
        den, schedule, parameterization=Parameterization.X0, variance=ReverseVariance.PER_STEP
    )


def exact(model, x0: torch.Tensor) -> "reference.Terms":
    """The closed-form ELBO terms under the forward chain, from tests/reference.py (written from
    ᾱ_t and the model's weights, nothing of pyrodiff's)."""
    return reference.elbo_terms(reference.from_model(model), model.schedule.alpha_bar, x0)


def evidence(model, x0: torch.Tensor) -> torch.Tensor:
    """log p_θ(x_0), exactly, from tests/reference.py."""
    return reference.evidence(reference.from_model(model), x0)


def data(N: int = 16, D: int = 2, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 0.8 * torch.randn(N, D, generator=gen) + 0.3


def test_elbo_estimate_agrees_with_the_closed_form_elbo():
    model, x0 = linear_gaussian_model(), data()
    guide = ForwardGuide(model.schedule)
    est = elbo_estimate(model, guide, x0, num_samples=400)
    truth = exact(model, x0).elbo
    z = (est.values - truth) / est.mc_stderr
    assert z.abs().max() < 4.5  # 16 data, each a 4-SE check at ~1e-4 level
    assert abs(est.mean - truth.mean().item()) < 4 * est.mc_stderr_of_mean


def test_iwae_rises_with_k_and_stays_below_the_exact_evidence():
    model, x0 = linear_gaussian_model(), data()
    guide = ForwardGuide(model.schedule)
    log_p = evidence(model, x0)
    bounds = [iwae_bound(model, guide, x0, k, num_repeats=20) for k in (1, 4, 32)]
    for b in bounds:
        # per datum, L_K <= log p up to Monte Carlo error (one-sided: the claim is the bound;
        # how far below it is, the rise with K checks next)
        assert ((b.values - log_p) / b.mc_stderr).max() < 4.0
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        diff = hi.mean - lo.mean
        se = math.hypot(lo.mc_stderr_of_mean, hi.mc_stderr_of_mean)
        assert diff > -4 * se
    # and it rises for real on a loose guide: the gap closes by more than the noise
    assert bounds[2].mean - bounds[0].mean > 10 * math.hypot(
        bounds[0].mc_stderr_of_mean, bounds[2].mc_stderr_of_mean
    )
    assert bounds[2].mean < log_p.mean().item()


def test_every_bound_is_exact_for_the_exact_posterior():
    # with the oracle, p(x_{1:T} | x_0) = q(x_{1:T} | x_0): every log-weight equals log p(x_0)
    schedule = linear_schedule(5, reference_steps=100)
    model = gaussian_oracle(schedule, torch.tensor([0.5, -1.0]), 0.7)
    x0 = data(8)
    guide = ForwardGuide(schedule)
    log_p = evidence(model, x0)
    for b in (elbo_estimate(model, guide, x0, 3), iwae_bound(model, guide, x0, 7)):
        torch.testing.assert_close(b.values, log_p, atol=1e-9, rtol=0)


def test_sitewise_terms_equal_the_closed_form_terms_for_a_top_down_guide():
    model, x0 = linear_gaussian_model(T=4), data(6)
    guide = ForwardGuide(model.schedule)
    # 20 independent estimates: their mean is the estimate, their spread gives its SE
    reps = [sitewise_elbo_terms(model, guide, x0, num_samples=40) for _ in range(20)]
    ref = exact(model, x0)
    cols = torch.stack([torch.cat([r.prior[:, None], r.per_step_loss], 1).sum(0) for r in reps])
    # per_step_loss column 0 is −E log p(x_0 | x_1); columns 1… are L_1 … L_{T−1}
    truth = torch.cat([ref.prior[:, None], -ref.reconstruction[:, None], ref.diffusion], 1).sum(0)
    se = cols.std(0) / math.sqrt(len(reps))
    assert ((cols.mean(0) - truth).abs() < 4 * se).all()


def test_pareto_khat_calls_a_light_tail_light():
    # Gaussian log-weights of scale 0.1 (a lognormal tail, index 0). One side is enough here:
    # the diagnostic is read as "k̂ < 0.5: reliable", and a lognormal tail's finite-sample k̂ has
    # no closed form (measured: −0.06 ± 0.06 per fit at S = 2000, 0.5 is 9 of those SDs away).
    # Both sides are bounded where the tail index is known: tests/test_psis_known_tail.py.
    gen = torch.Generator().manual_seed(3)
    assert pareto_khat(0.1 * torch.randn(2000, generator=gen, dtype=torch.float64)) < 0.5


def test_estimator_spread_zero_for_trace_elbo_on_the_exact_posterior():
    # DESIGN: analytic KL is not automatically lower variance
    schedule = linear_schedule(4, reference_steps=100)
    model = gaussian_oracle(schedule, torch.tensor([0.2, 0.1]), 1.3)
    x0 = data(32)
    guide = ForwardGuide(schedule)
    rows = {r.estimator: r for r in estimator_spread(model, guide, x0, num_repeats=20)}
    assert set(rows) == {"Trace_ELBO", "TraceMeanField_ELBO", "DiffusionELBO"}
    log_p = evidence(model, x0).mean().item()
    assert rows["Trace_ELBO"].std < 1e-9
    assert abs(rows["Trace_ELBO"].mean - log_p) < 1e-9
    for name in ("TraceMeanField_ELBO", "DiffusionELBO"):
        r = rows[name]
        assert r.std > 10 * rows["Trace_ELBO"].std + 1e-6
        assert abs(r.mean - log_p) < 4 * r.mean_stderr


def test_estimators_agree_in_expectation_on_a_loose_guide():
    model, x0 = linear_gaussian_model(), data(16)
    guide = ForwardGuide(model.schedule)
    truth = exact(model, x0).elbo.mean().item()
    rows = estimator_spread(
        model, guide, x0, [Trace_ELBO(), TraceMeanField_ELBO(), DiffusionELBO()], num_repeats=40
    )
    for r in rows:
        assert abs(r.mean - truth) < 4 * r.mean_stderr, r


def test_bounds_report_orders_the_bounds():
    model, x0 = linear_gaussian_model(), data(8)
    rep = bounds_report(model, ForwardGuide(model.schedule), x0, (1, 50), 200, 200)
    s = rep.summary()
    assert rep.exact is not None
    assert s["elbo"] < s["iwae_50"] < s["log_evidence"]
    assert s["elbo_gap"] > 0
    # one finite k̂ per datum (200 draws: a tail of 40); its values are checked against
    # known tails in tests/test_psis_known_tail.py
    assert rep.psis.khat.shape == (8,) and torch.isfinite(rep.psis.khat).all()


def test_a_guide_for_another_model_is_refused():
    model4, model5 = linear_gaussian_model(T=4), linear_gaussian_model(T=5)
    guide = LearnedGuide(model4, hidden=0)
    with pytest.raises(ModelMismatchError, match="T = 4"):
        iwae_bound(model5, guide, data(), 2)
    # a guide without num_steps is still caught by its sites
    with pytest.raises(ModelMismatchError, match="same latent sites"):
        elbo_estimate(model5, lambda x0: ForwardGuide(model4.schedule)(x0), data(), 2)
    pyro.clear_param_store()
