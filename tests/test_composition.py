"""pyrodiff models and guides as sub-programs of a user's own Pyro model (issue 19).

Exact where it can be: with the Gaussian oracle as a diffusion prior on a latent z and a
linear-Gaussian decoder y | z, the user's evidence log p(y) and the ELBO of any Gaussian q(z | y)
are closed forms; the oracle's chain has log p(z, x_{1:T}) − log q(x_{1:T} | z) = log p(z) for
every draw, so Trace_ELBO through the composed program, DiffusionPrior and DiffusionELBO on the
program must all agree with those closed forms (exactly, or within 4 of their measured SEs).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Predictive, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.nn import PyroModule, PyroSample

from pyrodiff import (
    ContinuousDiffusion,
    ContinuousForwardGuide,
    DataError,
    Diffusion,
    DiffusionPrior,
    ForwardGuide,
    GuideStructure,
    HierarchicalVAE,
    HierarchicalVAEGuide,
    LearnedGuide,
    LearnedScheduleGuide,
    ModelMismatchError,
    Parameterization,
    ReverseVariance,
    gaussian_oracle,
    linear_schedule,
)
from pyrodiff.guides import GuideCovariance
from pyrodiff.infer import ContinuousELBO, DiffusionELBO, exact_elbo_terms
from pyrodiff.networks import MLPDenoiser
from tests.linear_models import random_linear_diffusion

ROOT = Path(__file__).resolve().parent.parent
D, T = 2, 4


def _mvn_logpdf(y, mean, cov):
    return dist.MultivariateNormal(mean, covariance_matrix=cov).log_prob(y)


class _LatentProblem:
    """z ~ N(m, s² I) (the oracle's data law), y | z ~ N(A z + b, σ² I); q(z | y) = N(C y + d, r² I).

    log p(y) = log N(y; A m + b, s² A Aᵀ + σ² I); the posterior p(z | y) = N(μ, P⁻¹) with
    P = I/s² + AᵀA/σ², μ = P⁻¹ (m/s² + Aᵀ(y − b)/σ²); ELBO(q) = log p(y) − KL(q ‖ p(z | y)).
    """

    def __init__(self, exact_guide: bool) -> None:
        g = torch.Generator().manual_seed(3)
        self.m = torch.tensor([0.5, -1.0])
        self.s, self.sigma = 0.8, 0.6
        self.A = torch.randn(3, D, generator=g)
        self.b = torch.randn(3, generator=g)
        prec = torch.eye(D) / self.s**2 + self.A.T @ self.A / self.sigma**2
        self.post_cov = torch.linalg.inv(prec)
        if exact_guide:
            # the exact posterior is N(C y + d, post_cov); post_cov is not isotropic, so the exact
            # guide is a full-covariance Gaussian
            self.C = self.post_cov @ self.A.T / self.sigma**2
            self.d = self.post_cov @ (self.m / self.s**2 - self.A.T @ self.b / self.sigma**2)
            self.q_tril = torch.linalg.cholesky(self.post_cov)
        else:
            self.C = 0.3 * torch.randn(D, 3, generator=g)
            self.d = torch.randn(D, generator=g)
            self.q_tril = 0.4 * torch.eye(D)
        self.y = torch.randn(16, 3, generator=g) * 1.5 + self.b

    def q(self, y):
        return dist.MultivariateNormal(y @ self.C.T + self.d, scale_tril=self.q_tril)

    def likelihood(self, z):
        return dist.Normal(z @ self.A.T + self.b, self.sigma).to_event(1)

    def evidence(self) -> torch.Tensor:
        cov = self.s**2 * self.A @ self.A.T + self.sigma**2 * torch.eye(3)
        return _mvn_logpdf(self.y, self.A @ self.m + self.b, cov)

    def elbo(self) -> torch.Tensor:
        """Per datum: log p(y) − KL(q(z | y) ‖ p(z | y))."""
        P = self.post_cov
        prec = torch.linalg.inv(P)
        mu = (self.m / self.s**2 + (self.y - self.b) @ self.A / self.sigma**2) @ P
        qm = self.y @ self.C.T + self.d
        S = self.q_tril @ self.q_tril.T
        kl = 0.5 * (
            torch.trace(prec @ S)
            + ((mu - qm) @ prec * (mu - qm)).sum(-1)
            - D
            + torch.logdet(P)
            - torch.logdet(S)
        )
        return self.evidence() - kl


def _oracle(problem, name="prior"):
    return gaussian_oracle(linear_schedule(T), problem.m, problem.s, name=name)


def _repeat(fn, reps):
    vals = torch.tensor([float(fn()) for _ in range(reps)])
    return vals.mean().item(), (vals.std() / math.sqrt(reps)).item()


# --- the composed program: a VAE whose latent has a diffusion prior ---------------------------


def _composed(problem, prior, chain_guide):
    def model(y):
        with pyro.plate("data", y.shape[0]):
            z = prior()  # x_0 is the latent z: drawn by the user's guide below
            pyro.sample("y", problem.likelihood(z), obs=y)

    def guide(y):
        with pyro.plate("data", y.shape[0]):
            z = pyro.sample("prior.x_0", problem.q(y))
            chain_guide(z)

    return model, guide


def test_literal_chain_as_a_latent_prior_gives_the_exact_evidence_with_the_exact_guide():
    """With q(z | y) the exact posterior and the oracle's chain, every draw of Trace_ELBO on the
    composed program is log p(y) exactly: the chain's sites line up with the guide's (x_0 drawn
    by the user's guide, the plate joined), and nothing else enters."""
    problem = _LatentProblem(exact_guide=True)
    prior = _oracle(problem)
    model, guide = _composed(problem, prior, ForwardGuide.for_model(prior))
    expected = problem.evidence().sum().item()
    for _ in range(3):
        assert -Trace_ELBO().loss(model, guide, problem.y) == pytest.approx(expected, abs=1e-8)
    vectorised = Trace_ELBO(num_particles=5, vectorize_particles=True)
    assert -vectorised.loss(model, guide, problem.y) == pytest.approx(expected, abs=1e-8)


def test_three_ways_to_score_a_latent_diffusion_prior_agree_with_the_closed_form_elbo():
    """A loose q(z | y): Trace_ELBO through the literal chain, Trace_ELBO with DiffusionPrior and
    DiffusionELBO on the composed program all estimate log p(y) − KL(q ‖ p(z | y)), each mean
    within 4 of its measured SE."""
    problem = _LatentProblem(exact_guide=False)
    prior = _oracle(problem)
    expected = problem.elbo().sum().item()
    assert expected < problem.evidence().sum().item() - 1.0  # the guide is really loose

    model, guide = _composed(problem, prior, ForwardGuide.for_model(prior))

    def prior_model(y):
        with pyro.plate("data", y.shape[0]):
            z = pyro.sample("z", DiffusionPrior(prior))
            pyro.sample("y", problem.likelihood(z), obs=y)

    def prior_guide(y):
        with pyro.plate("data", y.shape[0]):
            pyro.sample("z", problem.q(y))

    estimates = {
        "literal": lambda: -Trace_ELBO().loss(model, guide, problem.y),
        "DiffusionPrior": lambda: -Trace_ELBO().loss(prior_model, prior_guide, problem.y),
        "DiffusionELBO": lambda: -DiffusionELBO().loss(model, guide, problem.y),
    }
    for name, fn in estimates.items():
        mean, se = _repeat(fn, 300)
        assert se > 0
        assert abs(mean - expected) < 4 * se, (name, mean, expected, se)


def test_diffusion_prior_log_prob_is_unbiased_for_the_exact_elbo_and_sample_runs_the_chain():
    """E[DiffusionPrior(model).log_prob(x)] is the model's ELBO per datum (closed form for a
    linear model with a loose guide), and sample() draws the oracle's N(m, s² I)."""
    sched = linear_schedule(T)
    model = random_linear_diffusion(
        sched, D, Parameterization.EPSILON, ReverseVariance.BETA, torch.zeros(D), torch.ones(D)
    )
    x = torch.randn(6, D)
    exact = exact_elbo_terms(model, ForwardGuide(sched), x).elbo
    draws = torch.stack([DiffusionPrior(model).log_prob(x) for _ in range(4000)])
    mean, se = draws.mean(0), draws.std(0) / math.sqrt(draws.shape[0])
    assert (se > 0).all()
    assert ((mean - exact).abs() < 4 * se).all(), (mean, exact, se)

    problem = _LatentProblem(exact_guide=False)
    prior = DiffusionPrior(_oracle(problem)).expand((2000,))
    z = prior.sample()
    assert z.shape == (2000, D)
    z_se = problem.s / math.sqrt(2000)
    assert ((z.mean(0) - problem.m).abs() < 4 * z_se).all()
    var_se = problem.s**2 * math.sqrt(2 / 2000)
    assert ((z.var(0) - problem.s**2).abs() < 4 * var_se).all()
    assert prior.sample((3,)).shape == (3, 2000, D)
    assert not prior.has_rsample


@pytest.mark.parametrize("built", ["outside, broadcast by a plate", "in the run, no plate"])
def test_a_program_whose_only_parameters_are_the_priors_trains_them(built):
    """Trace_ELBO differentiates only when the traces hold parameter sites; the prior's network
    runs when Pyro scores the trace, after the run, so DiffusionPrior records its parameters in
    the run itself: when a plate broadcasts it, and when it is built there."""
    model, _ = _pair()
    prebuilt = DiffusionPrior(model)
    x = torch.randn(8, D)

    def program(x):
        if built.startswith("outside"):
            with pyro.plate("batch", x.shape[0]):
                pyro.sample("x", prebuilt, obs=x)
        else:
            pyro.sample("x", DiffusionPrior(model, batch_shape=(x.shape[0],)).to_event(1), obs=x)

    before = [p.detach().clone() for p in model.parameters()]
    svi = SVI(program, lambda x: None, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    svi.step(x)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


# --- plates, subsampling, names -------------------------------------------------------------


def test_unnamed_models_keep_their_site_names_and_named_ones_prefix_them():
    sched = linear_schedule(T)
    x = torch.randn(3, D)
    model = Diffusion(MLPDenoiser(D, hidden=8, depth=1, time_dim=8), sched)
    tr = poutine.trace(model).get_trace(x)
    samples = [n for n, s in tr.nodes.items() if s["type"] == "sample"]
    assert samples == ["data"] + [f"x_{t}" for t in range(T, -1, -1)]
    named = Diffusion(MLPDenoiser(D, hidden=8, depth=1, time_dim=8), sched, name="prior")
    tr = poutine.trace(named).get_trace(x)
    samples = [n for n, s in tr.nodes.items() if s["type"] == "sample"]
    assert samples == ["prior.data"] + [f"prior.x_{t}" for t in range(T, -1, -1)]
    params = [n for n, s in tr.nodes.items() if s["type"] == "param"]
    assert params and all(n.startswith("prior.") for n in params)


def test_inside_a_users_plate_of_any_name_the_model_joins_it():
    sched = linear_schedule(T)
    model = Diffusion(MLPDenoiser(D, hidden=8, depth=1, time_dim=8), sched)

    for plate_name in ("data", "batch"):  # "data", the model's own plate name, used to clash

        def program(x, plate_name=plate_name):
            with pyro.plate(plate_name, x.shape[0]):
                model(x)

        tr = poutine.trace(program).get_trace(torch.randn(5, D))
        tr.compute_log_prob()
        assert tr.nodes["x_0"]["log_prob"].shape == (5,)
        for t in range(T + 1):
            assert [f.name for f in tr.nodes[f"x_{t}"]["cond_indep_stack"]] == [plate_name]


def test_nested_plates_give_the_sites_their_shape():
    sched = linear_schedule(T)
    model = Diffusion(MLPDenoiser(D, hidden=8, depth=1, time_dim=8), sched, name="p")

    def program():
        with pyro.plate("outer", 2, dim=-2), pyro.plate("items", 5, dim=-1):
            return model()

    tr = poutine.trace(program).get_trace()
    assert tr.nodes["p.x_0"]["value"].shape == (2, 5, D)
    assert {f.name for f in tr.nodes["p.x_0"]["cond_indep_stack"]} == {"outer", "items"}


def test_subsampled_bound_is_unbiased_and_scaled_by_n_over_b():
    """On a fixed batch of N = 24, the bound through pyro.plate(subsample_size=8) has the
    scale N/B at every chain site and its mean equals the full-data ELBO (closed form) within 4 SE,
    through the literal chain (Trace_ELBO) and the fast bound (DiffusionELBO on the program)."""
    sched = linear_schedule(T)
    model = random_linear_diffusion(
        sched, D, Parameterization.X0, ReverseVariance.POSTERIOR, torch.zeros(D), torch.ones(D)
    )
    guide = ForwardGuide(sched)
    x = torch.randn(24, D)
    full = exact_elbo_terms(model, guide, x).elbo.sum().item()

    def sub_model(x):
        with pyro.plate("batch", x.shape[0], subsample_size=8) as idx:
            model(x[idx])

    def sub_guide(x):
        with pyro.plate("batch", x.shape[0], subsample_size=8) as idx:
            guide(x[idx])

    tr = poutine.trace(sub_model).get_trace(x)
    for t in range(T + 1):
        assert tr.nodes[f"x_{t}"]["scale"] == pytest.approx(24 / 8)
    for name, loss in (("Trace_ELBO", Trace_ELBO()), ("DiffusionELBO", DiffusionELBO())):
        mean, se = _repeat(lambda loss=loss: -loss.loss(sub_model, sub_guide, x), 400)
        assert abs(mean - full) < 4 * se, (name, mean, full, se)


def test_two_named_instances_have_disjoint_parameters_and_both_train():
    sched = linear_schedule(T)
    x = torch.randn(16, D)
    torch.manual_seed(1)
    a = Diffusion(MLPDenoiser(D, hidden=8, depth=1, time_dim=8), sched, name="a")
    b = Diffusion(MLPDenoiser(D, hidden=8, depth=1, time_dim=8), sched, name="b")
    ga, gb = ForwardGuide(sched, name="a"), ForwardGuide(sched, name="b")

    def model(x):
        a(x)
        b(x + 1.0)

    def guide(x):
        ga(x)
        gb(x + 1.0)

    with poutine.trace(param_only=True) as capture:
        Trace_ELBO().loss(model, guide, x)
    names = set(capture.trace.nodes)
    names_a = {n for n in names if n.startswith("a.")}
    names_b = {n for n in names if n.startswith("b.")}
    assert names_a and names_b and names == names_a | names_b
    assert len(names_a) == len(list(a.parameters())) == len(list(b.parameters()))
    before = [p.detach().clone() for p in [*a.parameters(), *b.parameters()]]
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), DiffusionELBO())
    for _ in range(3):
        svi.step(x)
    after = [*a.parameters(), *b.parameters()]
    n_a = len(list(a.parameters()))
    moved = [not torch.equal(p0, p1) for p0, p1 in zip(before, after, strict=True)]
    assert all(moved[:n_a]) and all(moved[n_a:])


# --- particle dimensions and global sites ---------------------------------------------------


def _pairs():
    sched = linear_schedule(T)
    net = MLPDenoiser(D, hidden=8, depth=1, time_dim=8)
    model = Diffusion(net, sched)
    hvae = HierarchicalVAE((D,), (3, 2), hidden=8)
    return [
        ("forward", model, ForwardGuide(sched)),
        ("learned top-down", model, LearnedGuide(model, hidden=8)),
        (
            "learned bottom-up full",
            model,
            LearnedGuide(
                model,
                GuideStructure.BOTTOM_UP_MARKOV,
                hidden=8,
                covariance=GuideCovariance.FULL,
            ),
        ),
        ("learned schedule", model, LearnedScheduleGuide.for_model(model)),
        ("hvae bottom-up", hvae, HierarchicalVAEGuide(hvae, hidden=8)),
        ("hvae top-down", hvae, HierarchicalVAEGuide(hvae, GuideStructure.TOP_DOWN, hidden=8)),
    ]


@pytest.mark.parametrize("case", range(6))
def test_particle_dimensions_score_each_particle_as_its_own_run(case):
    """Model and guide run inside a particle plate give, for particle k, the same log-densities
    as running them once on particle k's values: the particle dimension is a batch dimension."""
    _, model, guide = _pairs()[case]
    x = torch.randn(5, D)
    K = 3

    def vectorised(fn):
        def run(x):
            with pyro.plate("particles", K, dim=-2):
                return fn(x)

        return run

    g_tr = poutine.trace(vectorised(guide)).get_trace(x)
    m_tr = poutine.trace(poutine.replay(vectorised(model), trace=g_tr)).get_trace(x)
    g_tr.compute_log_prob()
    m_tr.compute_log_prob()
    latents = [n for n, s in g_tr.nodes.items() if s["type"] == "sample" and n != "particles"]
    latents = [n for n in latents if not g_tr.nodes[n]["is_observed"] and n != "data"]
    for k in range(K):
        values = {n: g_tr.nodes[n]["value"][k] for n in latents}
        one_g = poutine.trace(poutine.condition(guide, values)).get_trace(x)
        one_m = poutine.trace(poutine.condition(model, values)).get_trace(x)
        one_g.compute_log_prob()
        one_m.compute_log_prob()
        for n in latents:
            assert torch.allclose(g_tr.nodes[n]["log_prob"][k], one_g.nodes[n]["log_prob"])
            assert torch.allclose(m_tr.nodes[n]["log_prob"][k], one_m.nodes[n]["log_prob"])
        assert torch.allclose(m_tr.nodes["x_0"]["log_prob"][k], one_m.nodes["x_0"]["log_prob"])
    # and Pyro's own vectorised ELBO and Predictive take them
    assert math.isfinite(
        Trace_ELBO(num_particles=4, vectorize_particles=True).loss(model, guide, x)
    )
    draws = Predictive(model, num_samples=3, parallel=True, return_sites=["x_0"])(None, 4)
    assert draws["x_0"].shape == (3, 4, D)


def test_continuous_model_takes_particles_and_predictive():
    model = ContinuousDiffusion(MLPDenoiser(D, hidden=8, depth=1, time_dim=8), num_steps=4)
    draws = Predictive(model, num_samples=3, parallel=True, return_sites=["x_0"])(None, 4)
    assert draws["x_0"].shape == (3, 4, D)
    guide = ForwardGuide(model.discretize().schedule)
    loss = Trace_ELBO(num_particles=3, vectorize_particles=True).loss(
        model, guide, torch.randn(4, D)
    )
    assert math.isfinite(loss)


class _BayesianLinear(PyroModule):
    """x̂_0(x_t) = x_t W + c with W, c ~ N(0, 1): a denoiser with global sample sites."""

    def __init__(self) -> None:
        super().__init__()
        self.event_shape = (D,)
        self.weight = PyroSample(dist.Normal(0.0, 1.0).expand([D, D]).to_event(2))
        self.bias = PyroSample(dist.Normal(0.0, 1.0).expand([D]).to_event(1))

    def forward(self, x, t):
        return x @ self.weight + self.bias


def test_a_bayesian_denoisers_weights_are_global_sites_that_autonormal_covers():
    sched = linear_schedule(T)
    model = Diffusion(_BayesianLinear(), sched, parameterization=Parameterization.X0)
    x = torch.randn(8, D)
    tr = poutine.trace(model).get_trace(x)
    for name, shape in (("denoiser.weight", (D, D)), ("denoiser.bias", (D,))):
        assert tr.nodes[name]["value"].shape == shape
        assert tr.nodes[name]["cond_indep_stack"] == ()  # drawn once, outside the data plate
    chain = ForwardGuide(sched)
    weights = AutoNormal(poutine.block(model, expose=["denoiser.weight", "denoiser.bias"]))

    def guide(x):
        weights(x)
        chain(x)

    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    losses = [svi.step(x) for _ in range(3)]
    assert all(math.isfinite(v) for v in losses)
    assert pyro.get_param_store()["AutoNormal.locs.denoiser.weight"].shape == (D, D)
    with pytest.raises(Exception, match="PyroSample"):
        DiffusionPrior(model)


# --- the fast bounds on wrapped programs ------------------------------------------------------


def _pair():
    sched = linear_schedule(T)
    torch.manual_seed(0)
    return Diffusion(MLPDenoiser(D, hidden=8, depth=1, time_dim=8), sched), ForwardGuide(sched)


def _seeded(fn, seed=5):
    pyro.set_rng_seed(seed)
    return fn()


def test_diffusion_elbo_on_wrapped_programs_respects_scale_mask_condition_and_wrappers():
    """With the same random stream, the collapsed program draws the same t and ε as the direct
    estimator, so each wrapper's effect is exact: scale multiplies, mask drops data, condition on
    x_0 observes it, a plain function changes nothing, a blocked chain contributes nothing."""
    model, guide = _pair()
    x = torch.randn(6, D)
    bare = _seeded(lambda: DiffusionELBO().loss(model, guide, x))
    per_datum = _seeded(lambda: DiffusionELBO().per_datum_loss(model, guide, x))
    assert bare == pytest.approx(per_datum.sum().item(), rel=1e-12)

    def wrapped(m, g):
        return _seeded(lambda: DiffusionELBO().loss(m, g, x))

    assert wrapped(poutine.scale(model, 10.0), poutine.scale(guide, 10.0)) == pytest.approx(
        10 * bare, rel=1e-10
    )
    assert wrapped(lambda x: model(x), lambda x: guide(x)) == pytest.approx(bare, rel=1e-10)
    keep = torch.tensor([True, False, True, True, False, True])
    assert wrapped(poutine.mask(model, mask=keep), poutine.mask(guide, mask=keep)) == (
        pytest.approx(per_datum[keep].sum().item(), rel=1e-10)
    )

    def conditioned(x):
        return poutine.condition(model, data={"x_0": x})(None, x.shape[0])

    assert wrapped(conditioned, guide) == pytest.approx(bare, rel=1e-10)
    assert wrapped(poutine.block(model), poutine.block(guide)) == 0.0


def test_continuous_elbo_on_wrapped_programs_respects_scale():
    model = ContinuousDiffusion(MLPDenoiser(D, hidden=8, depth=1, time_dim=8), num_steps=4)
    x = torch.randn(6, D)
    bare = _seeded(lambda: ContinuousELBO().loss(model, ContinuousForwardGuide(), x))
    scaled = _seeded(
        lambda: ContinuousELBO().loss(
            poutine.scale(model, 3.0), poutine.scale(ContinuousForwardGuide(), 3.0), x
        )
    )
    assert scaled == pytest.approx(3 * bare, rel=1e-10)
    no_guide = _seeded(lambda: ContinuousELBO().loss(lambda x: model(x), None, x))
    assert no_guide == pytest.approx(bare, rel=1e-10)
    prior = _seeded(lambda: DiffusionPrior(model).log_prob(x))
    direct = _seeded(lambda: ContinuousELBO().per_datum_loss(model, None, x))
    assert torch.allclose(prior, -direct)


def test_wrappers_the_one_call_bound_cannot_honour_are_named():
    model, guide = _pair()
    x = torch.randn(4, D)
    cases = [
        (poutine.condition(model, data={"x_2": torch.zeros(4, D)}), guide, "condition on 'x_2'"),
        (poutine.do(model, data={"x_3": torch.zeros(4, D)}), guide, "do on 'x_3'"),
        (poutine.block(model, hide=["x_1"]), guide, "block hides 'x_1'"),
        (model, poutine.block(guide, hide=["x_2"]), "block hides 'x_2'"),
        (poutine.scale(model, 2.0), guide, "scale differs"),
        (poutine.mask(model, mask=torch.tensor([True, False, True, True])), guide, "mask differs"),
        (lambda x: model(x), lambda x: None, "no closed-form guide"),
        (lambda x: None, lambda x: guide(x), "ran none"),
    ]
    for m, g, message in cases:
        with pytest.raises(ModelMismatchError, match=re.escape(message)):
            DiffusionELBO().loss(m, g, x)
    learned = LearnedGuide(model, hidden=8)
    with pytest.raises(ModelMismatchError, match="closed-form"):
        DiffusionELBO().loss(lambda x: model(x), lambda x: learned(x), x)


def test_continuous_forward_guide_under_a_sampling_elbo_is_an_error_that_names_the_fix():
    """It draws no latents; under Trace_ELBO the model's T latents were left to the model
    (1.2e8 nats per datum and no error, before)."""
    model = ContinuousDiffusion(MLPDenoiser(D, hidden=8, depth=1, time_dim=8), num_steps=10)
    with pytest.raises(ModelMismatchError, match=r"ContinuousELBO.*discretize\(T\)"):
        Trace_ELBO().loss(model, ContinuousForwardGuide(), torch.randn(4, D))
    # the fix it names is a valid pair
    chain = model.discretize(10)
    assert math.isfinite(Trace_ELBO().loss(chain, ForwardGuide(chain.schedule), torch.randn(4, D)))


# --- the README's block --------------------------------------------------------------------


def test_readme_inside_your_own_model_block_runs_as_written(capsys, monkeypatch, tmp_path):
    """The README's "inside your own model" block, run as written (float32, as a user pastes
    it): it prints the VAE's ELBO per datum, which is finite."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```$", text, re.S | re.M)
    block = next(b for b in blocks if "DiffusionPrior" in b)
    monkeypatch.chdir(tmp_path)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        exec(compile(block, "README.md", "exec"), {})  # noqa: S102 (our own README)
    finally:
        torch.set_default_dtype(old)
    out = capsys.readouterr().out
    value = float(re.search(r"ELBO (-?\d+\.\d+) nats per datum", out).group(1))
    assert math.isfinite(value)


def test_held_by_a_users_module_the_sites_keep_their_names_and_the_parameters_their_path():
    """Pyro's convention for parameters (the attribute path), the built name for sites: a guide
    wrapped in a module of one's own still lines up with its model."""
    sched = linear_schedule(T)

    class Holder(PyroModule):
        def __init__(self) -> None:
            super().__init__()
            self.first = Diffusion(MLPDenoiser(D, hidden=8, depth=1, time_dim=8), sched, name="a")
            self.second = Diffusion(MLPDenoiser(D, hidden=8, depth=1, time_dim=8), sched, name="b")

        def forward(self, x):
            self.first(x)
            self.second(x)

    tr = poutine.trace(Holder()).get_trace(torch.randn(3, D))
    sites = {n for n, s in tr.nodes.items() if s["type"] == "sample"}
    assert {"a.x_0", f"a.x_{T}", "b.x_0", f"b.x_{T}"} <= sites
    params = [n for n, s in tr.nodes.items() if s["type"] == "param"]
    assert params and all(n.startswith(("first.", "second.")) for n in params)


def test_data_that_disagree_with_the_enclosing_plate_are_one_clear_error():
    """Inside pyro.plate(subsample_size=B) the model takes the subsample, not the full data."""
    model, _ = _pair()
    x = torch.randn(12, D)

    def program(x):
        with pyro.plate("batch", x.shape[0], subsample_size=4):
            model(x)  # should be model(x[idx])

    with pytest.raises(DataError, match=r"12 data inside pyro.plate\('batch'\) of size 4"):
        poutine.trace(program).get_trace(x)
