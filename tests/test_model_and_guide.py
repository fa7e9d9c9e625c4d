"""The model and the fixed guide as Pyro programs: sites, generation, and Pyro's own inference."""

import math

import pyro
import pyro.poutine as poutine
import pytest
import reference
import torch
from pyro.infer import SVI, Predictive, Trace_ELBO, TraceMeanField_ELBO

from pyrodiff import (
    ConfigError,
    DataError,
    Diffusion,
    ForwardGuide,
    LearnedScheduleGuide,
    ModelMismatchError,
    NotLinearGaussianError,
    Parameterization,
    ReverseVariance,
    gaussian_oracle,
    linear_schedule,
)
from pyrodiff.infer import DiffusionELBO, elbo_terms, exact_log_evidence
from pyrodiff.infer.timesteps import StratifiedTimesteps
from pyrodiff.networks import LinearDenoiser, MLPDenoiser, UNetDenoiser


def _linear_pair(T=5, D=2):
    schedule = linear_schedule(T)
    return Diffusion(LinearDenoiser(D, T), schedule), ForwardGuide(schedule)


def test_sites_are_named_by_the_real_t_and_data_is_plated():
    model, guide = _linear_pair(T=5)
    x0 = torch.randn(3, 2)
    tr = poutine.trace(model).get_trace(x0)
    names = [n for n, s in tr.nodes.items() if s["type"] == "sample" and not n.startswith("data")]
    assert names == ["x_5", "x_4", "x_3", "x_2", "x_1", "x_0"]
    assert tr.nodes["x_0"]["is_observed"] and torch.equal(tr.nodes["x_0"]["value"], x0)
    assert tr.nodes["data"]["value"].shape == (3,)
    gtr = poutine.trace(guide).get_trace(x0)
    gnames = [n for n, s in gtr.nodes.items() if s["type"] == "sample" and not n.startswith("data")]
    assert gnames == ["x_5", "x_4", "x_3", "x_2", "x_1"]
    assert len(list(guide.parameters())) == 0


def test_predictive_generates_from_the_model():
    schedule = linear_schedule(8)
    mean = torch.tensor([2.0, -1.0])
    model = gaussian_oracle(schedule, mean, 0.5)
    samples = Predictive(model, num_samples=400, return_sites=["x_0"])(None, 5)["x_0"]
    assert samples.shape == (400, 5, 2)
    flat = samples.reshape(-1, 2)
    se = 0.5 / flat.shape[0] ** 0.5
    assert ((flat.mean(0) - mean).abs() < 5 * se).all()
    assert ((flat.std(0) / 0.5 - 1).abs() < 5 * (0.5 / flat.shape[0]) ** 0.5).all()


def _trained_elbo(make_loss, module_path=False, steps=60):
    torch.manual_seed(0)
    model, guide = _linear_pair(T=4, D=2)
    x0 = torch.randn(64, 2) * 0.5 + torch.tensor([1.0, -0.5])
    ab = model.schedule.alpha_bar

    def exact_elbo():
        return reference.elbo_terms(reference.from_model(model), ab, x0).elbo.mean().item()

    before = exact_elbo()
    if module_path:
        loss_fn = make_loss()(model, guide)
        opt = torch.optim.Adam(loss_fn.parameters(), lr=0.1)
        for _ in range(steps):
            opt.zero_grad()
            loss_fn(x0).backward()
            opt.step()
    else:
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.1}), make_loss())
        for _ in range(steps):
            svi.step(x0)
    after = exact_elbo()
    evidence = reference.evidence(reference.from_model(model), x0).mean().item()
    return before, after, evidence, _gaussian_mle_log_likelihood(x0)


def _gaussian_mle_log_likelihood(x0):
    """max over Gaussians N(m, S) of the mean log-likelihood of x0: −½ log det(2π S_ml) − D/2.
    A linear-Gaussian model's marginal p(x_0) is Gaussian, so its mean log evidence cannot exceed
    this."""
    centred = x0 - x0.mean(0)
    cov = centred.T @ centred / x0.shape[0]
    return (-0.5 * torch.logdet(2 * math.pi * cov) - 0.5 * x0.shape[1]).item()


@pytest.mark.parametrize("make_loss", [Trace_ELBO, TraceMeanField_ELBO, DiffusionELBO])
@pytest.mark.parametrize("module_path", [False, True])
def test_pyro_inference_trains_the_model(make_loss, module_path):
    before, after, evidence, best = _trained_elbo(make_loss, module_path)
    # bounded on both sides: ELBO ≤ log-evidence ≤ the Gaussian MLE (exact inequalities), and
    # training from the zero network (≈ 100 nats below) must close at least half of the gap to
    # that ceiling, which a no-op or a step in the wrong direction cannot
    assert after <= evidence + 1e-9 <= best + 2e-9
    assert after - before > 0.5 * (best - before)


def test_module_local_params_mode_trains_too():
    """With Pyro's local-parameter mode (no global store) the ELBO-as-nn.Module path works."""
    with pyro.settings.context(module_local_params=True):
        before, after, evidence, _ = _trained_elbo(DiffusionELBO, module_path=True)
    assert after <= evidence + 1e-9
    assert after - before > 0.5 * (evidence - before)  # most of the gap closed, as above


def test_model_parameters_are_reached_by_svi_param_capture():
    model, guide = _linear_pair()
    x0 = torch.randn(4, 2)
    with poutine.trace(param_only=True) as capture:
        DiffusionELBO().loss_and_grads(model, guide, x0)
    captured = {id(s["value"].unconstrained()) for s in capture.trace.nodes.values()}
    assert {id(p) for p in model.parameters()} <= captured


def test_svi_sees_every_parameter_of_a_per_step_model_and_a_learned_schedule():
    """The closed-form estimator reads the model's σ_t² and the guide's schedule outside any
    model run; under a Pyro handler both must still be announced, or SVI would not move them."""
    schedule = linear_schedule(5)
    model = Diffusion(LinearDenoiser(2, 5), schedule, variance=ReverseVariance.PER_STEP)
    guide = LearnedScheduleGuide(schedule)
    guide.event_shape = (2,)
    with poutine.trace(param_only=True) as capture:
        DiffusionELBO().loss_and_grads(model, guide, torch.randn(4, 2))
    captured = {id(s["value"].unconstrained()) for s in capture.trace.nodes.values()}
    expected = {id(p) for p in [*model.parameters(), *guide.parameters()]}
    assert any(p is model.log_variance for p in model.parameters())
    assert len(list(guide.parameters())) > 0 and expected <= captured
    # and without a handler nothing is announced, yet gradients reach the same tensors
    pyro.clear_param_store()
    DiffusionELBO()(model, guide)(torch.randn(4, 2)).backward()
    assert len(pyro.get_param_store()) == 0
    assert model.log_variance.grad is not None
    assert all(p.grad is not None for p in guide.parameters())


@pytest.mark.parametrize("param", list(Parameterization))
@pytest.mark.parametrize(
    "variance", [ReverseVariance.BETA, ReverseVariance.POSTERIOR, ReverseVariance.PER_STEP]
)
def test_every_configuration_has_matching_trace_and_closed_form_elbo(param, variance):
    torch.manual_seed(1)
    schedule = linear_schedule(3)
    # a prior far from N(0, I), so that L_T is far from zero and tested too
    model = Diffusion(
        LinearDenoiser(2, 3),
        schedule,
        parameterization=param,
        variance=variance,
        prior_loc=torch.tensor([1.0, -1.5]),
        prior_scale=torch.tensor([2.0, 0.5]),
    )
    with torch.no_grad():
        for p in model.denoiser.parameters():
            p.normal_(0, 0.2)
    guide = ForwardGuide(schedule)
    x0 = torch.randn(4, 2)
    exact = (
        reference.elbo_terms(reference.from_model(model), schedule.alpha_bar, x0).elbo.sum().item()
    )
    draws = torch.tensor(
        [
            -Trace_ELBO(num_particles=400, vectorize_particles=True).loss(model, guide, x0)
            for _ in range(8)
        ]
    )
    se = draws.std().item() / 8**0.5
    assert abs(draws.mean().item() - exact) < 5 * se + 1e-9


def test_networks_honour_the_contract():
    t = torch.tensor([1, 5, 9])
    assert MLPDenoiser(3)(torch.randn(3, 3), t).shape == (3, 3)
    assert MLPDenoiser(3, out_dim=6)(torch.randn(3, 3), t).shape == (3, 6)
    assert UNetDenoiser()(torch.randn(3, 1, 8, 8), t).shape == (3, 1, 8, 8)
    assert LinearDenoiser(4, 9)(torch.randn(3, 4), t).shape == (3, 4)
    unet = UNetDenoiser(base=32)
    assert sum(p.numel() for p in unet.parameters()) < 500_000


@pytest.mark.slow
def test_image_model_fast_estimator_matches_the_literal_chain():
    """On a tiny U-Net, DiffusionELBO (one network call per datum and particle) and Trace_ELBO
    on the literal chain (T calls) estimate the same ELBO. Both are averaged over repeats and
    compared within 4.5 standard errors of the difference, measured here (≈ 1.5 nats, against
    an ELBO of ≈ −270 nats and an L_T of ≈ 12 nats); stratified t keeps DiffusionELBO's spread
    over the six steps small."""
    schedule = linear_schedule(6, 0.02, 0.3, reference_steps=6)
    model = Diffusion(UNetDenoiser(base=8, time_dim=16), schedule)
    guide = ForwardGuide(schedule)
    x0 = torch.rand(2, 1, 8, 8) * 2 - 1
    assert elbo_terms(model, guide, x0).per_step_loss.shape == (2, 6)
    trace = Trace_ELBO(num_particles=16, vectorize_particles=True)
    fast = DiffusionELBO(num_particles=48, timesteps=StratifiedTimesteps())
    with torch.no_grad():
        slow = torch.tensor([-trace.loss(model, guide, x0) for _ in range(8)])
        quick = torch.tensor([-fast.loss(model, guide, x0) for _ in range(16)])
    se = math.hypot(slow.std() / math.sqrt(len(slow)), quick.std() / math.sqrt(len(quick)))
    assert abs(slow.mean() - quick.mean()) < 4.5 * se, (slow.mean(), quick.mean(), se)


# --- bad input -------------------------------------------------------------------------------


def test_bad_data_is_refused_with_a_clear_error():
    model, guide = _linear_pair(D=2)
    loss = DiffusionELBO()
    with pytest.raises(DataError, match="shape"):
        loss.loss(model, guide, torch.randn(4, 3))
    with pytest.raises(DataError, match="NaN or inf"):
        loss.loss(model, guide, torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(DataError, match="NaN or inf"):
        elbo_terms(model, guide, torch.tensor([[float("inf"), 0.0]]))
    with pytest.raises(DataError, match="empty"):
        loss.loss(model, guide, torch.zeros(0, 2))
    with pytest.raises(DataError, match="floating-point"):
        loss.loss(model, guide, torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(DataError, match="shape"):
        model(torch.randn(2, 2, 2))


def test_mismatched_guide_and_model_are_refused():
    model, _ = _linear_pair(T=5)
    wrong = ForwardGuide(linear_schedule(7))
    x0 = torch.randn(3, 2)
    with pytest.raises(ModelMismatchError, match="T = 7"):
        DiffusionELBO().loss(model, wrong, x0)
    with pytest.raises(ModelMismatchError, match="T = 7"):
        elbo_terms(model, wrong, x0)
    with pytest.raises(ModelMismatchError, match="closed-form"):
        DiffusionELBO().loss(model, lambda x0: None, x0)


def test_exact_evidence_refuses_models_that_are_not_linear_gaussian():
    schedule = linear_schedule(3)
    with pytest.raises(NotLinearGaussianError, match="LinearDenoiser"):
        exact_log_evidence(Diffusion(MLPDenoiser(2), schedule), torch.zeros(1, 2))


def test_options_must_be_typed():
    with pytest.raises(ConfigError, match="Parameterization"):
        Diffusion(MLPDenoiser(2), linear_schedule(3), parameterization="eps")
    with pytest.raises(ConfigError, match="ReverseVariance"):
        Diffusion(MLPDenoiser(2), linear_schedule(3), variance="fixed")
    with pytest.raises(ConfigError, match="event_shape"):
        Diffusion(torch.nn.Identity(), linear_schedule(3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_svi_runs_on_cuda():
    schedule = linear_schedule(10)
    model = Diffusion(MLPDenoiser(2), schedule).cuda()
    guide = ForwardGuide(schedule).cuda()
    x0 = torch.randn(16, 2, device="cuda")
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), DiffusionELBO())
    assert torch.isfinite(torch.tensor(svi.step(x0)))
    assert torch.isfinite(torch.tensor(Trace_ELBO().loss(model, guide, x0)))


@pytest.mark.parametrize("variance", list(ReverseVariance))
@pytest.mark.parametrize("parameterization", list(Parameterization))
def test_reverse_moments_follow_the_formula(variance, parameterization):
    """Both paths to the reverse moments (per-datum t, and the samplers' one-step loop) against
    μ = c0_t x̂_0 + ct_t x_t (x̂_0 at t = 1) and σ_t² written from ᾱ_t (tests/reference.py),
    for every variance and parameterisation, on an MLP whose output is read here directly."""
    torch.manual_seed(0)
    T, D = 6, 3
    out_dim = 2 * D if variance is ReverseVariance.LEARNED_RANGE else None
    den = MLPDenoiser(D, hidden=8, depth=1, time_dim=4, out_dim=out_dim)
    sched = linear_schedule(T, 0.02, 0.3, reference_steps=T)
    model = Diffusion(den, sched, parameterization=parameterization, variance=variance)
    if variance is ReverseVariance.PER_STEP:
        with torch.no_grad():
            model.log_variance.add_(torch.randn(T + 1))
    ab = sched.alpha_bar
    x = torch.randn(5, D)
    step = model.step_moments(x)
    for t in range(1, T + 1):
        out = den(x, torch.full((5,), t)).detach()
        if variance is ReverseVariance.LEARNED_RANGE:
            out, frac = out.chunk(2, dim=1)
        a = float(ab[t])
        x0_hat = {
            Parameterization.EPSILON: (x - math.sqrt(1 - a) * out) / math.sqrt(a),
            Parameterization.X0: out,
            Parameterization.V: math.sqrt(a) * x - math.sqrt(1 - a) * out,
        }[parameterization]
        c0, ct, _ = reference.posterior_coefs(ab, t)
        mean = x0_hat if t == 1 else c0 * x0_hat + ct * x
        beta = reference.fixed_variances(ab, reference.FixedVariance.BETA)[t]
        small = reference.fixed_variances(ab, reference.FixedVariance.POSTERIOR)[t]
        if variance is ReverseVariance.BETA:
            var = beta
        elif variance is ReverseVariance.POSTERIOR:
            var = small
        elif variance is ReverseVariance.PER_STEP:
            var = model.log_variance[t].detach().exp()
        else:
            var = torch.exp(frac * beta.log() + (1 - frac) * small.log())
        for got_mean, got_var in (model.reverse_moments(x, torch.full((5,), t)), step(x, t)):
            torch.testing.assert_close(got_mean.detach(), mean, atol=1e-12, rtol=1e-12)
            torch.testing.assert_close(
                got_var.detach().expand_as(x), var.expand_as(x), atol=0, rtol=1e-12
            )
