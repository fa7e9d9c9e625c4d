"""The learned log-SNR schedule and its guide: equal to the forward chain when frozen, valid when
moved, trainable by DiffusionELBO, and its variance option routes the right gradients."""

import pyro
import pytest
import reference
import torch
from pyro import poutine
from test_bounds import data, linear_gaussian_model

from pyrodiff import ConfigError, Diffusion, ForwardGuide, Parameterization, ReverseVariance
from pyrodiff.guides import Endpoints, LearnedSchedule, LearnedScheduleGuide
from pyrodiff.infer import (
    DiffusionELBO,
    ScheduleObjective,
    ScheduleVarianceELBO,
    elbo_estimate,
    elbo_terms,
    exact_elbo_terms,
    exact_log_evidence,
    prior_kl,
    step_terms,
)
from pyrodiff.infer.objectives import variance_trained_parameters
from pyrodiff.networks import MLPDenoiser
from pyrodiff.schedules import cosine_schedule, linear_schedule

TABLES = ("betas", "alphas", "alpha_bar", "one_minus_alpha_bar", "log_snr", "posterior_variance")


@pytest.mark.parametrize(
    "schedule", [linear_schedule(1000), linear_schedule(7), cosine_schedule(20)]
)
def test_frozen_schedule_has_the_tables_of_the_fixed_one(schedule):
    learned = LearnedSchedule.from_schedule(schedule)
    assert learned.num_steps == schedule.num_steps
    for name in TABLES:
        a, b = getattr(schedule, name), getattr(learned, name)
        assert a.dtype == b.dtype == torch.float64 and a.shape == b.shape
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12, msg=name)


def test_frozen_copy_holds_the_current_tables_and_no_parameters():
    """LearnedSchedule.frozen() is what a LearnedGuide starts its factors from when the model's
    schedule is learned: the tables of the moved schedule, as buffers the guide cannot train."""
    from pyrodiff.guides.learned import LearnedGuide
    from pyrodiff.schedules import NoiseSchedule

    learned = LearnedSchedule.from_schedule(linear_schedule(7))
    with torch.no_grad():
        learned.shape_logits.add_(0.3 * torch.randn_like(learned.shape_logits))
    frozen = learned.frozen()
    assert isinstance(frozen, NoiseSchedule) and not list(frozen.parameters())
    for name in TABLES:
        torch.testing.assert_close(getattr(frozen, name), getattr(learned, name), msg=name)
    model = Diffusion(MLPDenoiser(2, 8, 1), learned, event_shape=(2,))
    guide = LearnedGuide(model, hidden=4)
    assert isinstance(guide.schedule, NoiseSchedule)
    torch.testing.assert_close(guide.schedule.alpha_bar, learned.alpha_bar)


def test_frozen_guide_equals_forward_guide_trace_by_trace():
    model, x0 = linear_gaussian_model(T=6), data(5)
    fixed = ForwardGuide(model.schedule)
    learned = LearnedScheduleGuide.for_model(model)
    tr_fixed = poutine.trace(fixed).get_trace(x0)
    tr_learned = poutine.trace(poutine.replay(learned, trace=tr_fixed)).get_trace(x0)
    for tr in (tr_fixed, tr_learned):
        tr.compute_log_prob()
    names = [n for n, s in tr_fixed.nodes.items() if s["type"] == "sample" and n.startswith("x_")]
    assert names == [
        n for n, s in tr_learned.nodes.items() if s["type"] == "sample" and n.startswith("x_")
    ]
    for n in names:
        torch.testing.assert_close(
            tr_learned.nodes[n]["log_prob"], tr_fixed.nodes[n]["log_prob"], rtol=1e-11, atol=1e-11
        )
    # and every ELBO term, in closed form and by the sampled estimator with the same noise
    for a, b in zip(
        (
            exact_elbo_terms(model, fixed, x0),
            elbo_terms(model, fixed, x0, generator=torch.Generator().manual_seed(2)),
        ),
        (
            exact_elbo_terms(model, learned, x0),
            elbo_terms(model, learned, x0, generator=torch.Generator().manual_seed(2)),
        ),
        strict=True,
    ):
        torch.testing.assert_close(b.per_step_loss, a.per_step_loss, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(b.prior, a.prior, rtol=1e-10, atol=1e-12)


def _random_schedule(T: int, endpoints=Endpoints.LEARNED) -> LearnedSchedule:
    s = LearnedSchedule.from_schedule(linear_schedule(T, reference_steps=20 * T), endpoints)
    with torch.no_grad():
        for p in s.parameters():
            p.add_(0.7 * torch.randn_like(p))
    return s


def test_any_parameter_value_is_a_valid_forward_chain():
    s = _random_schedule(9)
    g = s.log_snr
    assert torch.isinf(g[0]) and (g[2:] < g[1:-1]).all()
    ab, a, b = s.alpha_bar, s.alphas, s.betas
    assert ((b[1:] > 0) & (b[1:] < 1)).all()
    # the identities the gaussian module relies on
    torch.testing.assert_close(torch.cumprod(a, 0), ab, rtol=1e-12, atol=0)
    torch.testing.assert_close(s.one_minus_alpha_bar, 1 - ab, rtol=1e-10, atol=1e-15)
    post = b[2:] * (1 - ab[1:-1]) / (1 - ab[2:])
    torch.testing.assert_close(s.posterior_variance[2:], post, rtol=1e-12, atol=0)
    torch.testing.assert_close(g[1:], torch.log(ab[1:] / (1 - ab[1:])), rtol=1e-10, atol=1e-10)


def test_fixed_endpoints_keep_the_ends():
    s = _random_schedule(6, Endpoints.FIXED)
    before = s.log_snr[[1, 6]].detach().clone()
    assert [n for n, _ in s.named_parameters()] == ["shape_logits"]
    with torch.no_grad():
        s.shape_logits.add_(1.0)
    torch.testing.assert_close(s.log_snr[[1, 6]], before, rtol=1e-14, atol=1e-14)


def test_bad_schedules_are_refused():
    with pytest.raises(ConfigError, match="decrease"):
        LearnedSchedule(5, log_snr_start=-1.0, log_snr_end=2.0)
    with pytest.raises(ConfigError, match="integer >= 1"):
        LearnedSchedule(0)
    with pytest.raises(ConfigError, match="LearnedSchedule"):
        LearnedScheduleGuide("linear")


def test_moved_schedule_elbo_matches_the_literal_chain_in_expectation():
    # q over a perturbed schedule: the closed-form ELBO (through the guide's marginal/posterior)
    # equals Trace_ELBO's average over the literal chain
    model, x0 = linear_gaussian_model(T=5), data(8)
    guide = LearnedScheduleGuide(_random_schedule(5))
    exact = exact_elbo_terms(model, guide, x0)
    # the library's closed form against the reference written from the two ᾱ tables alone
    ab_q = guide.schedule.alpha_bar.detach()
    ref = reference.elbo_terms(reference.from_model(model), ab_q, x0)
    torch.testing.assert_close(exact.per_step_loss[:, 1:], ref.diffusion, atol=1e-9, rtol=0)
    torch.testing.assert_close(exact.reconstruction, ref.reconstruction, atol=1e-9, rtol=0)
    torch.testing.assert_close(exact.prior, ref.prior, atol=1e-9, rtol=0)
    exact = exact.elbo
    est = elbo_estimate(model, guide, x0, num_samples=400)  # traces of the literal chain
    assert ((est.values - exact).abs() < 4.5 * est.mc_stderr).all()


def test_diffusion_elbo_trains_the_schedule_and_leaves_a_fixed_model_alone():
    model, x0 = linear_gaussian_model(T=5), data(32)
    guide = LearnedScheduleGuide.for_model(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss_fn = DiffusionELBO()(model, guide)
    opt = torch.optim.Adam(guide.parameters(), lr=0.05)
    first = exact_elbo_terms(model, guide, x0).elbo.mean().item()
    for _ in range(60):
        opt.zero_grad()
        loss_fn(x0).backward()
        opt.step()
    after = exact_elbo_terms(model, guide, x0).elbo.mean().item()
    # a moved q tightens the bound of this (loose) model. Both values are exact (no Monte
    # Carlo noise), so any rise is real and no margin is needed; the evidence bounds it above
    evidence = exact_log_evidence(model, x0).mean().item()
    assert first < after <= evidence
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n


def test_shared_schedule_model_is_a_valid_vdm_pair():
    # VDM's setting: the model's reverse mean uses the guide's schedule; the gradient of the
    # estimator reaches the schedule through both
    schedule = _random_schedule(6)
    den = MLPDenoiser(2, hidden=16, depth=1, time_dim=8)
    model = Diffusion(
        den, schedule, parameterization=Parameterization.EPSILON, variance=ReverseVariance.BETA
    )
    guide = LearnedScheduleGuide(schedule)
    loss = DiffusionELBO()(model, guide)(data(16))
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in schedule.parameters())
    assert schedule.shape_logits.grad.abs().sum() > 0


def test_variance_objective_routes_the_sampled_parts_second_moment_to_the_shape_only():
    schedule = _random_schedule(6)
    den = MLPDenoiser(2, hidden=16, depth=1, time_dim=8)
    model = Diffusion(den, schedule, parameterization=Parameterization.EPSILON)
    guide = LearnedScheduleGuide(schedule)
    x0 = data(16)
    objective = DiffusionELBO(num_particles=2, schedule_objective=ScheduleObjective.VARIANCE)

    def grads(loss_value):
        params = list(den.parameters()) + [schedule.shape_logits, schedule.start]
        return torch.autograd.grad(loss_value, params, allow_unused=True, retain_graph=True)

    pyro.set_rng_seed(5)
    g_var = grads(objective.differentiable_loss(model, guide, x0))
    pyro.set_rng_seed(5)
    value = objective.loss(model, guide, x0)
    pyro.set_rng_seed(5)
    # the same draws by hand: per-datum losses ℓ_n = KL_prior,n + L̂_n over two particles,
    # L̂_n = −w(t_n) term_n the timestep-sampled part
    x = x0.repeat(2, 1)
    t = torch.randint(1, 7, (32,))
    sampled = -6.0 * step_terms(model, guide, x, t)
    ell = prior_kl(model, guide, x) + sampled
    g_plain = grads(ell.sum() / 2)
    g_second = grads((sampled**2).sum() / 2)
    assert value == pytest.approx(ell.sum().item() / 2, rel=1e-12)
    n_den = len(list(den.parameters()))
    for a, b in zip(g_var[:n_den], g_plain[:n_den], strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(g_var[n_den], g_second[n_den])  # shape: second moment
    torch.testing.assert_close(g_var[n_den + 1], g_plain[n_den + 1])  # endpoint: the ELBO
    assert not torch.allclose(g_var[n_den], g_plain[n_den], rtol=1e-2)


def test_the_old_schedule_variance_class_is_the_option_under_a_deprecated_name():
    schedule = _random_schedule(6)
    model = Diffusion(MLPDenoiser(2, hidden=16, depth=1, time_dim=8), schedule)
    guide, x0 = LearnedScheduleGuide(schedule), data(16)
    with pytest.warns(DeprecationWarning, match="schedule_objective=ScheduleObjective.VARIANCE"):
        old = ScheduleVarianceELBO()
    new = DiffusionELBO(schedule_objective=ScheduleObjective.VARIANCE)
    got = []
    for objective in (old, new):
        pyro.set_rng_seed(2)
        got.append(
            torch.autograd.grad(
                objective.differentiable_loss(model, guide, x0), schedule.shape_logits
            )
        )
    torch.testing.assert_close(got[0], got[1], rtol=0, atol=0)
    assert variance_trained_parameters(new, model, guide) == [schedule.shape_logits]
    assert variance_trained_parameters(DiffusionELBO(), model, guide) == []


def test_the_variance_objective_without_a_learned_schedule_or_with_a_string_is_refused():
    model = linear_gaussian_model(T=5)
    with pytest.raises(ConfigError, match="LearnedScheduleGuide"):
        DiffusionELBO(schedule_objective=ScheduleObjective.VARIANCE).loss(
            model, ForwardGuide(model.schedule), data(4)
        )
    with pytest.raises(ConfigError, match="must be a ScheduleObjective"):
        DiffusionELBO(schedule_objective="variance")
