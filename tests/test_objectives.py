"""L_simple and the hybrid: exact identities with the bound's terms, unbiasedness, and training."""

import math

import pyro
import pytest
import reference
import torch
from pyro.infer import SVI

from pyrodiff import (
    Diffusion,
    ForwardGuide,
    GaussianLikelihood,
    Parameterization,
    ReverseVariance,
    linear_schedule,
)
from pyrodiff.errors import ConfigError, DataError
from pyrodiff.gaussian import v_from_x0
from pyrodiff.infer import DiffusionELBO
from pyrodiff.infer.objectives import HybridLoss, SimpleLoss, simple_weights
from pyrodiff.infer.timesteps import (
    ImportanceTimesteps,
    StratifiedTimesteps,
    TimestepSampler,
    UniformTimesteps,
)
from pyrodiff.networks import LinearDenoiser, MLPDenoiser

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


class FixedTimesteps(TimestepSampler):
    """Hands out given timesteps with weight T: lets a test control t exactly."""

    def __init__(self, t):
        self.t = t

    def sample(self, batch, num_steps, device, generator=None):
        return self.t.to(device), torch.full((batch,), float(num_steps), device=device)


def _mlp_model(parameterization, variance, T=30, D=3, seed=0):
    torch.manual_seed(seed)
    learned = variance is ReverseVariance.LEARNED_RANGE
    den = MLPDenoiser(D, hidden=16, depth=2, out_dim=2 * D if learned else None)
    sched = linear_schedule(T)
    model = Diffusion(den, sched, parameterization=parameterization, variance=variance)
    return model, ForwardGuide(sched)


def _target(model, x0, x_t, t, noise):
    p = model.parameterization
    if p is Parameterization.EPSILON:
        return noise
    if p is Parameterization.X0:
        return x0
    return v_from_x0(model.schedule, x_t, t, x0)


@pytest.mark.parametrize("parameterization", list(Parameterization))
@pytest.mark.parametrize("variance", list(ReverseVariance))
def test_simple_loss_is_the_prediction_mse(parameterization, variance):
    # λ_t (L_{t−1} − C_t) from the bound's own terms equals ‖y − ŷ‖² to rounding, at every t
    model, guide = _mlp_model(parameterization, variance)
    T, N, D = model.num_steps, 2 * model.num_steps, 3
    x0 = torch.randn(N, D)
    t = torch.arange(1, T + 1).repeat(2)
    torch.manual_seed(5)
    loss = SimpleLoss(timesteps=FixedTimesteps(t)).differentiable_loss(model, guide, x0)
    torch.manual_seed(5)
    noise = torch.randn_like(x0)
    x_t = guide.marginal(x0, t).loc + guide.marginal(x0, t).scale * noise
    out = model.denoiser(x_t, t)[:, :D]
    mse = ((_target(model, x0, x_t, t, noise) - out) ** 2).sum()
    assert torch.allclose(loss, mse, rtol=1e-9)


@pytest.mark.parametrize("variance", [ReverseVariance.BETA, ReverseVariance.POSTERIOR])
def test_simple_weights_are_ddpm_lambda_for_epsilon(variance):
    model, _ = _mlp_model(Parameterization.EPSILON, variance, T=50)
    s = model.schedule
    t = torch.arange(2, 51)
    sigma2 = s.betas[t] if variance is ReverseVariance.BETA else s.posterior_variance[t]
    lam = simple_weights(model, t, torch.zeros(len(t), 3), sigma2[:, None])
    ddpm = 2 * sigma2 * s.alphas[t] * (1 - s.alpha_bar[t]) / s.betas[t] ** 2
    assert torch.allclose(lam.flatten(), ddpm, rtol=1e-10)


def test_simple_loss_gradient_is_the_reweighted_bound_gradient():
    # with σ_t² fixed, C_t does not depend on θ: ∇ L_simple = ∇ Σ λ_t L_{t−1} for t ≥ 2
    from pyrodiff.infer import step_terms

    model, guide = _mlp_model(Parameterization.EPSILON, ReverseVariance.BETA)
    x0 = torch.randn(40, 3)
    t = torch.randint(2, model.num_steps + 1, (40,))
    torch.manual_seed(1)
    SimpleLoss(timesteps=FixedTimesteps(t)).differentiable_loss(model, guide, x0).backward()
    g_simple = [p.grad.clone() for p in model.denoiser.parameters()]
    model.denoiser.zero_grad()
    torch.manual_seed(1)
    noise = torch.randn_like(x0)
    lam = simple_weights(model, t, x0, model.schedule.betas[t][:, None]).flatten()
    (-(lam * step_terms(model, guide, x0, t, noise))).sum().backward()
    for a, p in zip(g_simple, model.denoiser.parameters(), strict=True):
        assert torch.allclose(a, p.grad, rtol=1e-8, atol=1e-12)


def _repeat(objective, model, guide, x0, repeats):
    """(mean, standard error) of ``repeats`` independent loss values."""
    v = torch.tensor([objective.loss(model, guide, x0) for _ in range(repeats)])
    return v.mean().item(), v.std().item() / math.sqrt(repeats)


def _exact(model, x):
    """(ELBO, log evidence), means over the data, from tests/reference.py (written from ᾱ_t)."""
    lg, x = reference.from_model(model), x.cpu()
    elbo = reference.elbo_terms(lg, model.schedule.alpha_bar.cpu(), x).elbo.mean().item()
    return elbo, reference.evidence(lg, x).mean().item()


def _linear_model(variance=ReverseVariance.BETA, T=10, D=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    sched = linear_schedule(T)
    den = LinearDenoiser(D, T)
    with torch.no_grad():
        den.weight.add_(0.3 * torch.randn(den.weight.shape, generator=g))
        den.bias.add_(0.3 * torch.randn(den.bias.shape, generator=g))
    model = Diffusion(den, sched, GaussianLikelihood(), variance=variance)
    return model, ForwardGuide(sched)


@pytest.mark.parametrize(
    "sampler", [StratifiedTimesteps(), ImportanceTimesteps(history=3, uniform_mix=0.1)]
)
def test_simple_loss_is_unbiased_under_other_samplers(sampler):
    # the truth: every t visited by many independent draws (an average with its own SE)
    model, guide = _linear_model()
    T = model.num_steps
    x0 = torch.randn(5, 2)
    every_t = FixedTimesteps(torch.arange(1, T + 1).repeat(40))
    truth, truth_se = _repeat(
        SimpleLoss(num_particles=40, timesteps=every_t), model, guide, x0[:1].expand(T, 2), 20
    )
    # that measured Σ_t E‖ε − ε̂(x0[0])‖² / T over the T copies; the objective sums over data
    objective = SimpleLoss(num_particles=40, timesteps=sampler)
    x1 = x0[:1].clone()
    for _ in range(10):
        objective.loss(model, guide, x1)
    mean, mean_se = _repeat(objective, model, guide, x1, 30)
    truth, truth_se = truth / T, truth_se / T
    assert abs(mean - truth) < 4 * math.sqrt(mean_se**2 + truth_se**2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("make_loss", [SimpleLoss, HybridLoss, DiffusionELBO])
def test_every_objective_trains_through_svi_and_as_a_module(make_loss, device):
    # a linear-Gaussian model on Gaussian data: the exact ELBO must improve under training
    torch.manual_seed(0)
    model, guide = _linear_model(ReverseVariance.PER_STEP, T=5)
    model.to(device)
    guide.to(device)
    x = (0.5 * torch.randn(32, 2) + 1.0).to(device)
    before, _ = _exact(model, x)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), loss=make_loss())
    for _ in range(40):
        svi.step(x)
    after_svi, evidence = _exact(model, x)
    # the bound rises (L_simple trains the mean, whose optimum is the bound's for t ≥ 2) and,
    # being a bound, stays below the trained model's exact evidence
    assert before < after_svi <= evidence + 1e-9

    model2, guide2 = _linear_model(ReverseVariance.PER_STEP, T=5)
    model2.to(device)
    guide2.to(device)
    loss_fn = make_loss()(model2, guide2)
    params = list(loss_fn.parameters())
    assert any(p is model2.denoiser.weight for p in params)
    opt = torch.optim.Adam(params, lr=0.05)
    for _ in range(40):
        opt.zero_grad()
        loss_fn(x).backward()
        opt.step()
    after, evidence = _exact(model2, x)
    assert before < after <= evidence + 1e-9


def test_hybrid_value_is_simple_plus_lambda_times_bound():
    model, guide = _mlp_model(Parameterization.EPSILON, ReverseVariance.LEARNED_RANGE)
    x0 = torch.randn(12, 3)
    t = torch.randint(1, model.num_steps + 1, (12,))
    values = {}
    for name, obj in {
        "hybrid": HybridLoss(lam=0.25, timesteps=FixedTimesteps(t)),
        "simple": SimpleLoss(timesteps=FixedTimesteps(t)),
        "bound": DiffusionELBO(timesteps=FixedTimesteps(t)),
    }.items():
        torch.manual_seed(2)
        values[name] = obj.loss(model, guide, x0)
    assert math.isclose(values["hybrid"], values["simple"] + 0.25 * values["bound"], rel_tol=1e-9)


def test_bad_arguments_raise_typed_errors():
    model, guide = _mlp_model(Parameterization.EPSILON, ReverseVariance.BETA)
    with pytest.raises(ConfigError):
        HybridLoss(lam=-1.0)
    with pytest.raises(ConfigError):
        SimpleLoss(timesteps="uniform")
    with pytest.raises(DataError):
        SimpleLoss().loss(model, guide)
    assert isinstance(SimpleLoss().timesteps, UniformTimesteps)


def test_digits_example_quick_reports_the_true_bound(load_example):
    old = torch.get_num_threads()
    try:
        out = load_example("objectives_digits").main(["--quick", "--objective", "hybrid"])
    finally:
        torch.set_num_threads(old)
    assert out["config"]["variance"] == "learned_range"
    assert math.isfinite(out["test_bits_per_dim"]) and out["test_bits_per_dim"] > 0
    # the bins partition t = 1…T: with the prior they add up to the bound
    total = sum(out["test_bin_bits_per_dim"]) + out["prior_bits_per_dim"]
    assert math.isclose(total, out["test_bits_per_dim"], rel_tol=1e-4)
    assert [p["step"] for p in out["trace"]] == [2, 4]


def test_sampler_variance_quick_is_consistent_with_the_exact_bound(load_example):
    old = torch.get_num_threads()
    try:
        rows = load_example("objectives_digits").main(["--sampler-variance", "--quick"])[
            "sampler_variance"
        ]
    finally:
        torch.set_num_threads(old)
    assert len(rows) == 5 and all(r["variance"] > 0 for r in rows)
    # z = (mean − exact) / SE over R = 10 repeats (the quick setting): Student's t with 9
    # degrees of freedom for an unbiased sampler, P(|t_9| > 6) = 2e-4 per row, 1e-3 for all
    # five; a sampler biased by even a fraction of a nat per datum gives |z| in the hundreds
    for r in rows:
        assert abs(r["z"]) < 6.0, r
