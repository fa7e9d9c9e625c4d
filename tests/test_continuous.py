"""The T = ∞ bound: its discretisations converge to it, it is exact for Gaussian data with the
Bayes-optimal denoiser (I-MMSE), its estimators are unbiased, and it depends on the schedule
only through the schedule's ends."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from pyrodiff import (
    Conditioning,
    ContinuousDiffusion,
    ContinuousForwardGuide,
    CosineLogSNR,
    Diffusion,
    ForwardGuide,
    LearnedLogSNR,
    LinearLogSNR,
    Parameterization,
)
from pyrodiff.errors import ConfigError, ModelMismatchError
from pyrodiff.infer import (
    ContinuousELBO,
    DiffusionELBO,
    ImportanceTimesteps,
    LowDiscrepancyTimesteps,
    ScheduleObjective,
    UniformTimesteps,
    continuous_elbo_terms,
    diffusion_integrand,
    elbo_terms,
    exact_elbo_terms,
    sample_times,
)
from pyrodiff.infer.continuous import one_call_loss
from pyrodiff.infer.objectives import ScheduleVariance
from pyrodiff.networks import FourierFeatures, MLPDenoiser
from pyrodiff.schedules import Endpoints

D = 2


class GaussianPosteriorMean(nn.Module):
    """x̂(z_γ) = E[x | z_γ] for x ~ N(m, s² I): m + κ(γ)(z − α m), κ = α s² / (α² s² + σ²).

    Bayes-optimal for that Gaussian, affine in z; it reads γ back from the model's LOG_SNR
    feature c = 1000 (γ − lo)/(hi − lo) and answers in the requested parameterisation.
    """

    is_affine = True

    def __init__(self, m, s, lo, hi, parameterization=Parameterization.X0):
        super().__init__()
        self.m, self.s, self.lo, self.hi = m, s, lo, hi
        self.parameterization = parameterization
        self.event_shape = (D,)

    def forward(self, z, c):
        g = (self.lo + c * (self.hi - self.lo) / 1000.0)[:, None]
        a, sig = torch.sigmoid(-g).sqrt(), torch.sigmoid(g).sqrt()
        k = a * self.s**2 / (a**2 * self.s**2 + sig**2)
        x_hat = self.m + k * (z - a * self.m)
        if self.parameterization is Parameterization.X0:
            return x_hat
        eps_hat = (z - a * x_hat) / sig
        if self.parameterization is Parameterization.EPSILON:
            return eps_hat
        return a * eps_hat - sig * x_hat


def gauss_legendre(lo: float, hi: float, panels: int, order: int = 32):
    """Composite Gauss–Legendre nodes and weights on [lo, hi] (float64)."""
    nodes, weights = (torch.as_tensor(a) for a in np.polynomial.legendre.leggauss(order))
    edges = torch.linspace(lo, hi, panels + 1)
    a, b = edges[:-1, None], edges[1:, None]
    return (0.5 * (b - a) * nodes + 0.5 * (a + b)).flatten(), (0.5 * (b - a) * weights).flatten()


def closed_form_bound(x, m, s, g0, g1):
    """The T = ∞ bound of the Gaussian decoder, N(0, I) prior and GaussianPosteriorMean(m, s),
    at data x (N, D): the diffusion loss by change of variable to γ, where with
    x − x̂ = (1 − κα)(x − m) − κσε it is ½ ∫_{γ0}^{γ1} e^{−γ} [(1 − κα)² ‖x − m‖² + κ² σ² D] dγ,
    evaluated by 32-point Gauss–Legendre on 400 panels (error far below 1e-10 here)."""
    g, w = gauss_legendre(g0, g1, 400)
    a2, v = torch.sigmoid(-g), torch.sigmoid(g)
    a = a2.sqrt()
    k = a * s**2 / (a2 * s**2 + v)
    e2 = (1 - k * a)[:, None] ** 2 * ((x - m) ** 2).sum(-1) + (k**2 * v * D)[:, None]
    diffusion = 0.5 * (w[:, None] * torch.exp(-g)[:, None] * e2).sum(0)
    # E log N(x; z_0/α_0, e^{γ0}) with z_0/α_0 = x + e^{γ0/2} ε
    rec = -0.5 * D * (math.log(2 * math.pi) + g0) - 0.5 * D
    a1sq, v1 = 1 / (1 + math.exp(g1)), 1 / (1 + math.exp(-g1))
    prior = 0.5 * (a1sq * x**2 + v1 - 1 - math.log(v1)).sum(-1)
    return rec - diffusion - prior


def model_for(m, s, schedule, parameterization=Parameterization.X0, conditioning=None):
    # the network reads γ = −λ, from γ(0) = −λ(0) to γ(1) = −λ(1)
    lo, hi = (-lam.item() for lam in schedule.endpoints())
    net = GaussianPosteriorMean(m, s, lo, hi, parameterization)
    kw = {} if conditioning is None else {"conditioning": conditioning}
    return ContinuousDiffusion(net, schedule, parameterization=parameterization, **kw)


def mean_and_se(model, x, repeats, timesteps=None, seed=0):
    """The bound per datum averaged over ``repeats`` independent one-sample estimates, and the
    standard error of that average (sample std / √repeats)."""
    gen = torch.Generator().manual_seed(seed)
    xs = x.repeat(repeats, 1)
    with torch.no_grad():
        elbo = continuous_elbo_terms(model, xs, timesteps, generator=gen).elbo
    elbo = elbo.reshape(repeats, x.shape[0])
    return elbo.mean(0), elbo.std(0) / math.sqrt(repeats)


X = torch.tensor([[0.3, -1.2], [2.0, 0.5], [-0.7, 0.1]], dtype=torch.float64)


# --- convergence of the discretisations -------------------------------------------------------


def test_discrete_bounds_converge_to_the_continuous_one_at_least_as_fast_as_one_over_T():
    g0, g1 = -13.3, 5.0
    model = model_for(0.5, 1.5, LinearLogSNR(g0, g1))  # not the data's density: a loose bound
    limit = closed_form_bound(X, 0.5, 1.5, g0, g1)
    errors = []
    # T = 2^k + 1 latents are 2^k equal intervals of [0, 1]
    for k in range(3, 11):
        d = model.discretize(2**k + 1)
        exact = exact_elbo_terms(d, ForwardGuide(d.schedule), X).elbo
        errors.append(limit - exact)
    errors = torch.stack(errors)
    # never tighter than T = ∞ (the continuous bound is the supremum over discretisations)
    assert (errors > 0).all()
    # each halving of the interval at least halves the error: O(1/T) or faster
    assert (errors[1:] / errors[:-1] <= 0.5 + 1e-9).all()
    # and the limit is ContinuousELBO's value: its estimate agrees within 4 standard errors
    est, se = mean_and_se(model, X, 20_000)
    assert ((est - limit).abs() < 4 * se).all(), (est, limit, se)


def test_discretize_shares_the_denoiser_and_gives_a_diffusion_every_tool_takes():
    torch.manual_seed(0)
    net = MLPDenoiser(D, hidden=16, depth=1, time_dim=8)
    model = ContinuousDiffusion(net, LinearLogSNR())
    d = model.discretize(6)
    assert isinstance(d, Diffusion) and d.num_steps == 6
    assert d.denoiser.denoiser is net  # the same module, not a copy
    x = torch.randn(5, D)
    guide = ForwardGuide(d.schedule)
    loss = DiffusionELBO()(d, guide)(x)
    loss.backward()
    assert net.inp.weight.grad is not None and net.inp.weight.grad.abs().sum() > 0
    assert elbo_terms(d, guide, x).elbo.shape == (5,)
    # the chain's ends are the schedule's ends: ᾱ_1 = sigmoid(λ(0)), ᾱ_T = sigmoid(λ(1))
    l0, l1 = model.schedule.endpoints()
    assert torch.allclose(d.schedule.alpha_bar[1], torch.sigmoid(l0))
    assert torch.allclose(d.schedule.alpha_bar[-1], torch.sigmoid(l1))


# --- the Gaussian case is exact (I-MMSE) ---------------------------------------------------------


@pytest.mark.parametrize("param", list(Parameterization))
def test_gaussian_data_with_the_bayes_optimal_denoiser_gives_log_p(param):
    m, s, g0, g1 = 0.2, 0.8, -12.0, 12.0
    model = model_for(m, s, LinearLogSNR(g0, g1), param)
    log_p = torch.distributions.Normal(m, s).log_prob(X).sum(-1)
    est, se = mean_and_se(model, X, 40_000, LowDiscrepancyTimesteps(), seed=1)
    # The bound equals log p(x) but for the two endpoint terms: the decoder ignores the prior
    # on x (relative error σ_0²/(α_0² s²) = e^{γ0}/s²) and q(z_1 | x) differs from p(z_1) by
    # O(α_1²) = O(e^{−γ1}); each is bounded by e^{±12}·(D + ‖x‖² + ‖x − m‖²/s²) < 2e-4 here.
    endpoint = math.exp(-12) * (D + (X**2).sum(-1) + ((X - m) ** 2).sum(-1) / s**2)
    assert ((est - log_p).abs() < 4 * se + endpoint).all(), (est - log_p, se)
    # and without sampling noise, the closed form lies within the endpoint bound of log p
    assert ((closed_form_bound(X, m, s, g0, g1) - log_p).abs() < endpoint).all()


def test_the_three_parameterisations_give_the_same_integrand():
    # the same Bayes-optimal x̂ expressed as ε̂, x̂ and v̂: ½γ′‖ε−ε̂‖² = ½γ′e^{−γ}‖x−x̂‖² = ½γ′α²‖v−v̂‖²
    t = torch.rand(X.shape[0], dtype=torch.float64)
    noise = torch.randn_like(X)
    values = [
        diffusion_integrand(model_for(0.1, 1.3, CosineLogSNR(-10.0, 8.0), p), X, t, noise)
        for p in Parameterization
    ]
    for v in values[1:]:
        assert torch.allclose(v, values[0], rtol=1e-9, atol=1e-12)


# --- unbiasedness of every time sampler ----------------------------------------------------------


def fixed_noise_integral(model, x, noise):
    """∫_0^1 (integrand at fixed ε) dt by 16-point Gauss–Legendre on 256 panels."""
    nodes, weights = gauss_legendre(0.0, 1.0, 256, 16)
    n = x.shape[0]
    with torch.no_grad():
        f = diffusion_integrand(
            model, x.repeat(len(nodes), 1), nodes.repeat_interleave(n), noise.repeat(len(nodes), 1)
        ).reshape(len(nodes), n)
    return (weights[:, None] * f).sum(0)


def _warm_importance(sampler, model, x, noise, bins):
    # fill every bin's history with values of the same integrand
    for _ in range(30):
        t, _, k = sample_times(sampler, 200 * x.shape[0], bins, x.device)
        xs, ns = x.repeat(200, 1), noise.repeat(200, 1)
        sampler.update(k, diffusion_integrand(model, xs, t, ns).detach())


@pytest.mark.parametrize(
    "sampler", ["uniform", "low_discrepancy", "importance"], ids=lambda s: str(s)
)
def test_each_time_sampler_is_unbiased_for_the_integral_with_fixed_noise(sampler):
    torch.manual_seed(1)
    net = MLPDenoiser(D, hidden=16, depth=1, time_dim=8)
    model = ContinuousDiffusion(net, CosineLogSNR())
    noise = torch.randn_like(X)
    integral = fixed_noise_integral(model, X, noise)
    bins = 50
    timesteps = {
        "uniform": UniformTimesteps(),
        "low_discrepancy": LowDiscrepancyTimesteps(),
        "importance": ImportanceTimesteps(),
    }[sampler]
    with torch.no_grad():
        if sampler == "importance":
            _warm_importance(timesteps, model, X, noise, bins)
        # R independent batches of B copies of each datum; a batch's mean is one estimate, so
        # the samplers that couple the copies within a batch (low discrepancy) are measured
        # by the spread between batches
        R, B = 200, 64
        estimates = []
        for _ in range(R):
            t, w, _ = sample_times(timesteps, B * X.shape[0], bins, X.device)
            vals = w * diffusion_integrand(model, X.repeat(B, 1), t, noise.repeat(B, 1))
            estimates.append(vals.reshape(B, X.shape[0]).mean(0))
        estimates = torch.stack(estimates)
    mean, se = estimates.mean(0), estimates.std(0) / math.sqrt(R)
    assert ((mean - integral).abs() < 4 * se).all(), (mean, integral, se)


# --- endpoint invariance -------------------------------------------------------------------------


def _schedules_with_ends(g0, g1):
    learned = LearnedLogSNR(g0, g1, endpoints=Endpoints.FIXED)
    with torch.no_grad():  # a visibly non-linear interior
        learned.w3.fill_(1.0)
    schedules = [LinearLogSNR(g0, g1), CosineLogSNR(g0, g1), learned]
    ts = torch.linspace(0.05, 0.95, 7)
    for other in schedules[1:]:
        assert not torch.allclose(schedules[0].log_snr(ts), other.log_snr(ts), atol=0.1)
    return schedules


def test_schedules_with_the_same_ends_give_the_same_bound():
    g0, g1 = -11.0, 6.0
    torch.manual_seed(2)
    schedules = _schedules_with_ends(g0, g1)
    # the estimates, each against the first: independent, so their difference has SE
    # √(se0² + se1²)
    results = [mean_and_se(model_for(0.5, 1.5, s), X, 20_000, seed=3) for s in schedules]
    (m0, se0) = results[0]
    for m1, se1 in results[1:]:
        assert ((m1 - m0).abs() < 4 * (se0**2 + se1**2).sqrt()).all(), (m0, m1)
    # and sharply, without sampling t: at fixed ε the integrand is γ′(t) h(γ(t), ε), so its
    # integral over t is ∫ h(γ, ε) dγ over [γ0, γ1] whatever the interior; equal to the
    # quadrature's accuracy (the cosine schedule's steep ends limit it to ~1e-9 here)
    noise = torch.randn_like(X)
    integrals = [fixed_noise_integral(model_for(0.5, 1.5, s), X, noise) for s in schedules]
    for other in integrals[1:]:
        assert torch.allclose(other, integrals[0], rtol=1e-7)


def test_time_conditioning_breaks_endpoint_invariance():
    # the same network told t instead of γ: under another interior each input then means
    # another noise level, and the integral moves (the check above would fail)
    g0, g1 = -11.0, 6.0
    noise = torch.randn_like(X)
    net = GaussianPosteriorMean(0.5, 1.5, g0, g1)
    integrals = [
        fixed_noise_integral(
            ContinuousDiffusion(
                net, s, parameterization=Parameterization.X0, conditioning=Conditioning.TIME
            ),  # fmt: skip
            X,
            noise,
        )
        for s in (LinearLogSNR(g0, g1), CosineLogSNR(g0, g1))
    ]
    assert ((integrals[1] - integrals[0]).abs() > 1e-3 * integrals[0].abs()).all()


# --- the estimator as a Pyro ELBO and the variance-minimising schedule objective -----------------


def test_variance_objective_gives_the_interior_the_gradient_of_the_squared_loss():
    torch.manual_seed(3)
    net = MLPDenoiser(D, hidden=16, depth=1, time_dim=8)
    model = ContinuousDiffusion(net, LearnedLogSNR(hidden=8))
    x = torch.randn(6, D)

    def grads(objective):
        model.zero_grad()
        torch.manual_seed(11)
        ContinuousELBO(num_bins=10, schedule_objective=objective).loss_and_grads(
            model, ContinuousForwardGuide(), x
        )
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    bound, variance = grads(ScheduleObjective.BOUND), grads(ScheduleObjective.VARIANCE)
    # the same draws by hand: the interior's gradient of Σ_n L̂_n² (L̂ the diffusion estimate)
    model.zero_grad()
    torch.manual_seed(11)
    t, w, _ = sample_times(UniformTimesteps(), x.shape[0], 10, x.device)
    diff = w * diffusion_integrand(model, x, t, torch.randn_like(x))
    shape = model.schedule.parameters_of_shape()
    by_hand = torch.autograd.grad((diff**2).sum(), shape)
    names = {id(p): n for n, p in model.named_parameters()}
    # the time embedding computes in float32, where scaling the gradient before or after the
    # network's backward pass rounds differently: agreement to float32 precision (~1e-7)
    for p, g in zip(shape, by_hand, strict=True):
        assert torch.allclose(variance[names[id(p)]], g, rtol=1e-6, atol=1e-9)
    assert not torch.allclose(bound["schedule.w3"], variance["schedule.w3"], rtol=1e-2)
    # the ends and the network get the bound's gradient in both modes
    for n in bound:
        if not n.startswith("schedule.w") and not n.startswith("schedule.b"):
            assert torch.allclose(bound[n], variance[n], rtol=1e-8, atol=1e-12), n


def test_the_schedule_variance_objectives_two_routes_give_one_gradient():
    # where the interior enters per datum the factor 2 L̂_n is applied there (ContinuousELBO);
    # the route a discrete table takes (one vector-Jacobian product over the batch) must give
    # the same gradient to every parameter on the same draws
    torch.manual_seed(3)
    model = ContinuousDiffusion(
        MLPDenoiser(D, hidden=16, depth=1, time_dim=8), LearnedLogSNR(hidden=8)
    )
    x = torch.randn(6, D)
    objective = ContinuousELBO(num_bins=10, schedule_objective=ScheduleObjective.VARIANCE)
    names = [n for n, _ in model.named_parameters()]

    def grads(loss_value):
        return dict(
            zip(names, torch.autograd.grad(loss_value, list(model.parameters())), strict=True)
        )

    torch.manual_seed(11)
    entry = grads(objective.differentiable_loss(model, ContinuousForwardGuide(), x))
    torch.manual_seed(11)
    ell = one_call_loss(ContinuousELBO(), model, None, x, None, num_bins=10)
    torch.manual_seed(11)
    t, w, _ = sample_times(UniformTimesteps(), x.shape[0], 10, x.device)
    sampled = w * diffusion_integrand(model, x, t, torch.randn_like(x))
    reroute = ScheduleVariance(model.schedule.parameters_of_shape())
    table = grads(reroute.reroute(ell, sampled).sum())
    for n in names:
        # float32 time embedding: the two routes round differently (see the test above)
        assert torch.allclose(entry[n], table[n], rtol=1e-6, atol=1e-9), n


def test_svi_and_module_use():
    import pyro
    from pyro.infer import SVI

    torch.manual_seed(4)
    net = MLPDenoiser(D, hidden=16, depth=1, time_dim=8)
    model = ContinuousDiffusion(net, LearnedLogSNR(hidden=4), num_steps=5)
    x = torch.randn(8, D)
    svi = SVI(model, ContinuousForwardGuide(), pyro.optim.Adam({"lr": 1e-2}), loss=ContinuousELBO())
    before = model.schedule.start.item()
    for _ in range(2):
        assert math.isfinite(svi.step(x))
    assert model.schedule.start.item() != before  # SVI found the schedule's parameters
    loss = ContinuousELBO()(model, ContinuousForwardGuide())(x)
    assert loss.shape == () and loss.requires_grad
    samples = pyro.infer.Predictive(model, num_samples=2)(num_samples=3)["x_0"]
    assert samples.shape == (2, 3, D)
    terms = ContinuousELBO().terms(model, x)
    assert torch.allclose(terms.elbo, terms.reconstruction - terms.diffusion - terms.prior)


def test_bad_inputs_raise_one_clear_error():
    net = MLPDenoiser(D, hidden=8, depth=1, time_dim=8)
    with pytest.raises(ConfigError, match="gamma_min < gamma_max"):
        LinearLogSNR(3.0, -3.0)
    with pytest.raises(ConfigError, match="LogSNRSchedule"):
        ContinuousDiffusion(net, schedule="linear")
    with pytest.raises(ConfigError, match="T >= 2"):
        ContinuousDiffusion(net).discretize(1)
    d = ContinuousDiffusion(net).discretize(4)
    with pytest.raises(ModelMismatchError, match="ContinuousDiffusion"):
        ContinuousELBO().loss(d, ForwardGuide(d.schedule), torch.zeros(2, D))
    with pytest.raises(ConfigError, match="LearnedLogSNR"):
        ContinuousELBO(schedule_objective=ScheduleObjective.VARIANCE).loss(
            ContinuousDiffusion(net), ContinuousForwardGuide(), torch.zeros(2, D)
        )


def test_fourier_features_see_the_position_between_levels():
    feats = FourierFeatures((3, 4))
    levels = torch.linspace(-1, 1, 17).reshape(17, 1)  # spacing 1/8
    out = feats(levels)
    assert out.shape == (17, 1 + 2 * 2)
    # sin(16π x) vanishes on every level: the feature measures the offset from the grid
    assert out[:, 2].abs().max() < 1e-12
    assert torch.allclose(out[:, 4], torch.ones(17))  # cos(16π x) = 1 on the grid
    net = MLPDenoiser(3, hidden=8, depth=1, time_dim=8, fourier_exponents=(3, 4))
    assert net(torch.randn(4, 3), torch.rand(4)).shape == (4, 3)


def test_fit_trains_a_continuous_model_with_its_guide():
    from pyrodiff.train import fit

    torch.manual_seed(5)
    model = ContinuousDiffusion(MLPDenoiser(D, hidden=8, depth=1, time_dim=8), LinearLogSNR())
    before = model.denoiser.inp.weight.detach().clone()
    fit(model, ContinuousForwardGuide(), torch.randn(64, D), loss=ContinuousELBO(), updates=3,
        batch_size=16, device="cpu", progress=False)  # fmt: skip
    assert not torch.equal(before, model.denoiser.inp.weight.detach())


@pytest.mark.parametrize("kind", ["linear", "cosine", "learned"])
def test_schedule_slopes_are_the_derivatives_of_log_snr_and_the_ends_are_the_ends(kind):
    torch.manual_seed(6)
    ends_kw = {"log_snr_start": 9.0, "log_snr_end": -4.0}
    sched = {
        "linear": LinearLogSNR(**ends_kw),
        "cosine": CosineLogSNR(**ends_kw),
        "learned": LearnedLogSNR(**ends_kw, hidden=8),
    }[kind]
    if kind == "learned":
        with torch.no_grad():
            sched.w3.fill_(0.5)
    t = torch.linspace(0.02, 0.98, 25, dtype=torch.float64)
    h = 1e-5
    with torch.no_grad():
        lam, slope = sched.log_snr_and_slope(t)
        numeric = (sched.log_snr(t + h) - sched.log_snr(t - h)) / (2 * h)
        # central differences err by h² λ‴/6; λ‴ is below 1e4 on these schedules
        assert torch.allclose(slope, numeric, rtol=1e-6, atol=1e-5)
        assert (slope < 0).all()
        l0, l1 = sched.endpoints()
        ends = sched.log_snr(torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert torch.allclose(ends, torch.stack([l0, l1]).to(ends), atol=1e-6)
    assert abs(l0.item() - 9.0) < 1e-6 and abs(l1.item() + 4.0) < 1e-5
    if kind == "cosine":
        # ᾱ(t) = cos²(θ(t)) with θ linear in t: improved DDPM's form
        theta = sched.theta0 + (sched.theta1 - sched.theta0) * t
        assert torch.allclose(torch.sigmoid(lam), torch.cos(theta) ** 2, rtol=1e-12)
    d = sched.discretize(9)
    s = (torch.arange(1, 10, dtype=torch.float64) - 1) / 8
    with torch.no_grad():
        expected = torch.sigmoid(sched.log_snr(s)).double()
    assert torch.allclose(d.alpha_bar[1:], expected, rtol=1e-6)
