"""Schedules per dimension: ᾱ_{j,t} for each dimension j of a datum, through every closed form.

Three kinds of proof:
- scalar reduction: a per-dimension schedule whose dimensions are all equal gives the scalar
  schedule's values (exactly where the arithmetic is the same, to 1e-12 where the per-dimension
  path sums D one-dimensional KLs instead of one D-dimensional isotropic one);
- closed-form identities of the forward chain at random points, with a different ᾱ per
  dimension (Bayes' rule, composition of single steps);
- the library's exact and one-sample ELBO terms, exact evidence and oracle against an
  independent reference written from the per-dimension ᾱ alone (tests/reference.py, section
  "Schedules per dimension"), and the estimators against those exact values within measured SE.

Tolerances: 1e-9 for closed forms (terms of order 1–100 nats, rounding of a T-step product of
D×D matrices is ~T · 1e-15); Monte Carlo comparisons at 4 measured standard errors.
"""

import math

import pytest
import torch
from linear_models import random_linear_diffusion
from pyro.infer import Trace_ELBO
from reference import (
    FixedVariance,
    Target,
    per_dim_elbo_terms,
    per_dim_evidence,
    per_dim_fixed_variances,
    per_dim_from_model,
    per_dim_gaussian_oracle,
    per_dim_kernels,
    per_dim_posterior_coefs,
    per_dim_step_term,
    per_dim_x0_hat_affine,
)
from torch import Tensor, nn

from pyrodiff import (
    ContinuousDiffusion,
    Diffusion,
    ForwardGuide,
    NoiseSchedule,
    Parameterization,
    ReverseVariance,
    gaussian_oracle,
    linear_schedule,
    schedule_from_alpha_bar,
)
from pyrodiff.errors import ConfigError, ModelMismatchError
from pyrodiff.gaussian import (
    coef,
    coef_rows,
    q_marginal,
    q_marginal_moments,
    q_posterior,
    q_posterior_moments,
    q_step,
)
from pyrodiff.infer import DiffusionELBO, exact_elbo_terms, exact_log_evidence
from pyrodiff.infer.elbo import elbo_terms, prior_kl, step_terms
from pyrodiff.models.continuous import Conditioning
from pyrodiff.sampling import ancestral_sample, ddim_sample, strided_sample
from pyrodiff.schedules import LogSNRSchedule, discrete_times, schedule_from_config
from pyrodiff.schedules.log_snr import signal_variance

T, D, N = 5, 3, 4
ATOL = 1e-9
FIXED = [ReverseVariance.BETA, ReverseVariance.POSTERIOR, ReverseVariance.PER_STEP]
PRIOR_LOC = torch.tensor([1.5, -2.0, 0.7])
PRIOR_SCALE = torch.tensor([0.4, 2.5, 1.7])


def _per_dim_betas(T: int = T, D: int = D, seed: int = 0) -> Tensor:
    """β_{j,t} for D dimensions that differ by a factor of up to ~8 (the chains cross)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.linspace(0.05, 0.4, T, dtype=torch.float64)
    scale = torch.exp(torch.linspace(-1.0, 1.0, D, dtype=torch.float64))[:, None]
    wiggle = 1 + 0.2 * torch.rand(D, T, generator=g, dtype=torch.float64)
    return (base * scale * wiggle).clamp(max=0.9)


def _per_dim_schedule(T: int = T, D: int = D, seed: int = 0) -> NoiseSchedule:
    return NoiseSchedule(_per_dim_betas(T, D, seed), name="per_dim")


def _equal_dims(scalar: NoiseSchedule, D: int = D) -> NoiseSchedule:
    """The scalar schedule repeated for every dimension."""
    return NoiseSchedule(scalar.betas[1:].expand(D, -1).clone(), name="equal")


class _AffineWithVariance(nn.Module):
    """W_t x_t + b_t for the mean, and a per-element fraction v = tanh(U_t x_t) ∈ (−1, 1) for
    LEARNED_RANGE (the second half of the channels); any deterministic network serves the
    reduction tests."""

    def __init__(self, D: int, T: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.event_shape = (D,)
        self.W = nn.Parameter(0.3 * torch.randn(T + 1, D, D, generator=g))
        self.b = nn.Parameter(0.3 * torch.randn(T + 1, D, generator=g))
        self.U = nn.Parameter(0.3 * torch.randn(T + 1, D, D, generator=g))

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        mean = torch.einsum("bij,bj->bi", self.W[t], x_t) + self.b[t]
        frac = torch.tanh(torch.einsum("bij,bj->bi", self.U[t], x_t))
        return torch.cat([mean, frac], -1)


class _MeanOnly(_AffineWithVariance):
    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        return super().forward(x_t, t)[..., : x_t.shape[-1]]


def _model(schedule, param, variance, seed=0):
    net = (_AffineWithVariance if variance is ReverseVariance.LEARNED_RANGE else _MeanOnly)(
        D, schedule.num_steps, seed
    )
    return Diffusion(
        net,
        schedule,
        parameterization=param,
        variance=variance,
        event_shape=(D,),
        prior_loc=PRIOR_LOC,
        prior_scale=PRIOR_SCALE,
    )


# --- the schedule itself ---------------------------------------------------------------------


def test_per_dimension_tables_are_each_dimensions_own_chain():
    """Row j of every table is the scalar schedule of β_{j,·}, exactly (same arithmetic)."""
    betas = _per_dim_betas()
    sched = NoiseSchedule(betas)
    assert sched.event_shape == (D,) and sched.num_steps == T
    for j in range(D):
        row = NoiseSchedule(betas[j])
        for name in ("betas", "alphas", "alpha_bar", "one_minus_alpha_bar", "log_snr"):
            assert torch.equal(getattr(sched, name)[j], getattr(row, name)), name
        assert torch.equal(sched.posterior_variance[j], row.posterior_variance)
    assert NoiseSchedule(betas[0]).event_shape == ()
    # a 2-D event shape keeps its layout
    sched2 = NoiseSchedule(betas.repeat(2, 1).reshape(2, D, T))
    assert sched2.alpha_bar.shape == (2, D, T + 1)
    assert torch.equal(sched2.alpha_bar[1, 2], sched.alpha_bar[2])


def test_schedule_from_alpha_bar_per_dimension_round_trips():
    sched = _per_dim_schedule()
    again = schedule_from_alpha_bar(sched.alpha_bar)
    assert again.event_shape == (D,)
    torch.testing.assert_close(again.alpha_bar, sched.alpha_bar, atol=1e-15, rtol=0)


def test_config_of_a_per_dimension_schedule_rebuilds_it_bit_for_bit():
    import json

    sched = _per_dim_schedule()
    cfg = json.loads(json.dumps(sched.config()))
    assert cfg["event_shape"] == [D]
    again = schedule_from_config(cfg)
    assert again.event_shape == (D,)
    for name in ("betas", "alpha_bar", "posterior_variance"):
        assert torch.equal(getattr(again, name), getattr(sched, name))
    # a scalar schedule's config is unchanged: no table in it
    assert "betas" not in linear_schedule(T).config()
    with pytest.raises(ConfigError, match="event_shape"):
        schedule_from_config({**cfg, "event_shape": [D + 1]})


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (
            lambda: NoiseSchedule(torch.tensor([[0.1, 0.2], [0.1, 1.5]])),
            r"dimension \(1,\), step t = 2",
        ),
        (lambda: NoiseSchedule(torch.zeros(0, 4) + 0.1), "every event dimension"),
        (lambda: NoiseSchedule(torch.zeros(3, 0)), "T >= 1"),
        (
            lambda: schedule_from_alpha_bar(torch.tensor([[1.0, 0.9, 0.8], [1.0, 0.7, 0.75]])),
            r"not monotone .*dimension \(1,\), step t = 2",
        ),
        (
            lambda: schedule_from_alpha_bar(torch.tensor([[1.0, 0.9], [0.9, 0.5]])),
            r"ᾱ_0 must be 1.*dimension \(1,\)",
        ),
        (lambda: schedule_from_alpha_bar(torch.ones(3, 1)), "T \\+ 1 >= 2"),
    ],
)
def test_bad_per_dimension_schedules_say_where(make, match):
    with pytest.raises(ConfigError, match=match) as info:
        make()
    assert "\n" not in str(info.value)


def test_a_model_needs_the_schedules_event_shape():
    sched = _per_dim_schedule(D=2)
    with pytest.raises(ConfigError, match=r"event shape \(3,\).*event shape \(2,\)"):
        _model(sched, Parameterization.EPSILON, ReverseVariance.BETA)
    with pytest.raises(ConfigError, match=r"\(\*event, T \+ 1\) = \(3, 6\)"):
        Diffusion(
            _MeanOnly(D, T),
            _per_dim_schedule(),
            variance=ReverseVariance.PER_STEP,
            fixed_log_variance=torch.zeros(T + 1),
        )


def test_a_guide_over_another_shape_of_schedule_is_refused_before_any_arithmetic():
    model = _model(linear_schedule(T), Parameterization.EPSILON, ReverseVariance.BETA)
    guide = ForwardGuide(_per_dim_schedule(D=D - 1))
    x0 = torch.randn(4, D, dtype=torch.float64)
    for estimate in (DiffusionELBO().loss, lambda m, g, x: elbo_terms(m, g, x)):
        with pytest.raises(ModelMismatchError, match=rf"event shape \({D},\).*\({D - 1},\)"):
            estimate(model, guide, x0)


# --- coef: the gather that every closed form reads through ---------------------------------


@pytest.mark.parametrize("batch", [D, 7])  # batch == D would hide a missing axis move
def test_coef_of_a_per_dimension_table_has_the_datas_shape(batch):
    table = torch.randn(D, T + 1)
    like = torch.randn(batch, D)
    t = torch.randint(1, T + 1, (batch,))
    got = coef(table, t, like, event_dim=1)
    assert got.shape == (batch, D)
    for n in range(batch):
        assert torch.equal(got[n], table[:, t[n]])
    assert torch.equal(coef(table, 2, like, event_dim=1), table[:, 2])
    rows = torch.randn(3, D, T + 1)
    for k, row in enumerate(coef_rows(rows, t, like, event_dim=1)):
        assert torch.equal(row, coef(rows[k], t, like, event_dim=1))
    # the same 3-row table read as a scalar schedule's rows: one number per datum, not per dim
    assert coef_rows(rows[:, 0], t, like)[0].shape == (batch, 1)
    # two event axes, and a batch axis of like that t lacks
    table2 = torch.randn(2, D, T + 1)
    like2 = torch.randn(batch, 5, 2, D)
    got2 = coef(table2, t, like2, event_dim=2)
    assert got2.shape == (batch, 1, 2, D)
    assert torch.equal(got2[1, 0], table2[..., t[1]])


# --- scalar reduction ----------------------------------------------------------------------


def _scalar_and_equal(T: int = T):
    scalar = linear_schedule(T, 0.05, 0.4, reference_steps=T)
    return scalar, _equal_dims(scalar)


def test_equal_dimensions_give_the_scalar_forward_chain_exactly():
    scalar, equal = _scalar_and_equal()
    x0, x_t = torch.randn(N, D), torch.randn(N, D)
    t = torch.tensor([1, 2, 5, 3])
    for step in (t, 4):
        for a, b in zip(
            q_marginal_moments(scalar, x0, step), q_marginal_moments(equal, x0, step), strict=True
        ):
            assert torch.equal(a.expand_as(x0), b.expand_as(x0))
    for step in (t.clamp(min=2), 3):
        for a, b in zip(
            q_posterior_moments(scalar, x0, x_t, step),
            q_posterior_moments(equal, x0, x_t, step),
            strict=True,
        ):
            assert torch.equal(a.expand_as(x0), b.expand_as(x0))
        assert torch.equal(q_step(scalar, x0, step).scale, q_step(equal, x0, step).scale)


@pytest.mark.parametrize("variance", list(ReverseVariance))
@pytest.mark.parametrize("param", list(Parameterization))
def test_equal_dimensions_give_the_scalar_reverse_moments_and_terms(param, variance):
    scalar, equal = _scalar_and_equal()
    ms, me = _model(scalar, param, variance), _model(equal, param, variance)
    gs, ge = ForwardGuide(scalar), ForwardGuide(equal)
    x_t, x0 = torch.randn(N, D), torch.randn(N, D)
    t = torch.tensor([1, 2, 5, 3])
    for step in (t, 3):
        mean_s, var_s = ms.reverse_moments(x_t, step)
        mean_e, var_e = me.reverse_moments(x_t, step)
        assert torch.equal(mean_s, mean_e)
        assert torch.equal(var_s.expand_as(x_t), var_e.expand_as(x_t))
    # one-sample terms with the same noise: the per-dimension path sums D one-dimensional KLs
    eps = torch.randn(N, D)
    torch.testing.assert_close(
        step_terms(me, ge, x0, t, eps), step_terms(ms, gs, x0, t, eps), atol=1e-12, rtol=0
    )
    assert torch.equal(prior_kl(me, ge, x0), prior_kl(ms, gs, x0))
    if variance is ReverseVariance.LEARNED_RANGE:
        return
    a = elbo_terms(ms, gs, x0, generator=torch.Generator().manual_seed(1))
    b = elbo_terms(me, ge, x0, generator=torch.Generator().manual_seed(1))
    for name in ("reconstruction", "diffusion", "prior"):
        torch.testing.assert_close(getattr(b, name), getattr(a, name), atol=1e-12, rtol=0)


@pytest.mark.parametrize("variance", FIXED)
def test_equal_dimensions_give_the_scalar_exact_answers(variance):
    scalar, equal = _scalar_and_equal()
    ms = random_linear_diffusion(scalar, D, Parameterization.V, variance, PRIOR_LOC, PRIOR_SCALE, 2)
    me = random_linear_diffusion(equal, D, Parameterization.V, variance, PRIOR_LOC, PRIOR_SCALE, 2)
    if variance is ReverseVariance.PER_STEP:
        with torch.no_grad():  # the same σ_t² in every dimension
            me.log_variance.copy_(ms.log_variance.expand_as(me.log_variance))
    x0 = torch.randn(N, D)
    torch.testing.assert_close(
        exact_log_evidence(me, x0), exact_log_evidence(ms, x0), atol=1e-12, rtol=0
    )
    a = exact_elbo_terms(ms, ForwardGuide(scalar), x0)
    b = exact_elbo_terms(me, ForwardGuide(equal), x0)
    for name in ("reconstruction", "diffusion", "prior"):
        torch.testing.assert_close(getattr(b, name), getattr(a, name), atol=1e-12, rtol=0)


def test_equal_dimensions_sample_the_scalar_models_draws():
    scalar, equal = _scalar_and_equal()
    ms = _model(scalar, Parameterization.EPSILON, ReverseVariance.POSTERIOR)
    me = _model(equal, Parameterization.EPSILON, ReverseVariance.POSTERIOR)
    noise = torch.randn(T + 1, N, D)
    assert torch.equal(ancestral_sample(me, N, noise=noise), ancestral_sample(ms, N, noise=noise))
    assert torch.equal(
        strided_sample(me, N, 2, noise=noise[:3]), strided_sample(ms, N, 2, noise=noise[:3])
    )
    torch.testing.assert_close(
        ddim_sample(me, N, 3, eta=0.5, noise=noise[:4]),
        ddim_sample(ms, N, 3, eta=0.5, noise=noise[:4]),
        atol=1e-12,
        rtol=0,
    )


# --- closed-form identities with a different ᾱ per dimension -------------------------------


def test_bayes_rule_links_the_three_forward_densities_per_dimension():
    """log q(x_t | x_{t−1}) + log q(x_{t−1} | x_0) = log q(x_{t−1} | x_t, x_0) + log q(x_t | x_0)
    elementwise, at random points, for every t ≥ 2."""
    sched = _per_dim_schedule(T=8, seed=3)
    x0, x_prev, x_t = torch.randn(3, 6, D).unbind(0)
    for t in range(2, 9):
        lhs = q_step(sched, x_prev, t).log_prob(x_t) + q_marginal(sched, x0, t - 1).log_prob(x_prev)
        rhs = q_posterior(sched, x0, x_t, t).log_prob(x_prev) + q_marginal(sched, x0, t).log_prob(
            x_t
        )
        torch.testing.assert_close(lhs, rhs, atol=1e-10, rtol=0)
        # the same with a per-datum t
        tt = torch.full((6,), t)
        lhs_v = q_step(sched, x_prev, tt).log_prob(x_t) + q_marginal(sched, x0, tt - 1).log_prob(
            x_prev
        )
        torch.testing.assert_close(lhs_v, lhs, atol=1e-12, rtol=0)


def test_single_steps_compose_to_the_marginal_per_dimension():
    """Running x ↦ √α_t x + √β_t ε for t = 1 … s gives mean √ᾱ_s x_0 and variance 1 − ᾱ_s in
    every dimension (the Gaussian moments of the composed steps)."""
    sched = _per_dim_schedule(T=8, seed=4)
    x0 = torch.randn(5, D)
    mean, var = x0, torch.zeros(D)
    for s in range(1, 9):
        step = q_step(sched, mean, s)
        mean = step.loc  # √α_s times the previous mean
        var = sched.alphas[:, s] * var + sched.betas[:, s]
        loc, scale = q_marginal_moments(sched, x0, s)
        torch.testing.assert_close(mean, loc, atol=1e-12, rtol=0)
        torch.testing.assert_close(var, scale**2, atol=1e-12, rtol=0)
        torch.testing.assert_close(step.scale[0] ** 2, sched.betas[:, s], atol=1e-15, rtol=0)


# --- reverse moments with a different ᾱ per dimension ---------------------------------------


@pytest.mark.parametrize("variance", list(ReverseVariance))
@pytest.mark.parametrize("param", list(Parameterization))
def test_reverse_moments_per_dimension_follow_the_reference(param, variance):
    """μ_θ = c0_t ⊙ x̂_0 + ct_t ⊙ x_t (x̂_0 = x_t at t = 1) and σ_t² per dimension: β_{j,t},
    β̃_{j,t} (β̃_{j,2} at t = 1), the PER_STEP table, or exp(v log β + (1 − v) log β̃), each
    from the reference's per-dimension formulas at every t, for a per-datum and an int t."""
    sched = _per_dim_schedule(seed=8)
    model = _model(sched, param, variance, seed=3)
    if variance is ReverseVariance.PER_STEP:
        with torch.no_grad():
            model.log_variance.add_(0.3 * torch.randn_like(model.log_variance))
    ab = sched.alpha_bar
    net = model.denoiser
    beta = per_dim_fixed_variances(ab, FixedVariance.BETA)
    post = per_dim_fixed_variances(ab, FixedVariance.POSTERIOR)
    x_t = torch.randn(N, D)
    for s in range(1, T + 1):
        t = torch.full((N,), s)
        G, h = per_dim_x0_hat_affine(ab, net.W.detach(), net.b.detach(), s, Target[param.name])
        x0_hat = x_t @ G.T + h
        if s == 1:
            want_mean = x0_hat
        else:
            c0, ct, _ = per_dim_posterior_coefs(ab, s)
            want_mean = c0 * x0_hat + ct * x_t
        if variance is ReverseVariance.BETA:
            want_var = beta[s].expand(N, D)
        elif variance is ReverseVariance.POSTERIOR:
            want_var = post[s].expand(N, D)
        elif variance is ReverseVariance.PER_STEP:
            want_var = model.log_variance.detach()[:, s].exp().expand(N, D)
        else:
            v = net(x_t, t).detach()[:, D:]
            want_var = torch.exp(v * beta[s].log() + (1 - v) * post[s].log())
        for step in (t, s):
            mean, var = model.reverse_moments(x_t, step)
            torch.testing.assert_close(mean, want_mean, atol=1e-12, rtol=0)
            torch.testing.assert_close(var.expand(N, D), want_var, atol=0, rtol=1e-12)


# --- exact answers against the independent reference ----------------------------------------


def _linear(param, variance, seed=0):
    sched = _per_dim_schedule(seed=seed)
    model = random_linear_diffusion(
        sched, D, param, variance, PRIOR_LOC, PRIOR_SCALE, seed, log_variance_spread=0.5
    )
    x0 = torch.randn(N, D) * 1.3 + 0.4
    return model, ForwardGuide(sched), x0


@pytest.mark.parametrize("variance", FIXED)
@pytest.mark.parametrize("param", list(Parameterization))
def test_exact_terms_and_evidence_match_the_per_dimension_reference(param, variance):
    model, guide, x0 = _linear(param, variance)
    lg = per_dim_from_model(model)
    ab = model.schedule.alpha_bar
    ref = per_dim_elbo_terms(lg, ab, x0)
    got = exact_elbo_terms(model, guide, x0)
    torch.testing.assert_close(got.reconstruction, ref.reconstruction, atol=ATOL, rtol=0)
    assert got.diffusion.shape == (N, T - 1)
    torch.testing.assert_close(got.diffusion, ref.diffusion, atol=ATOL, rtol=0)
    torch.testing.assert_close(got.prior, ref.prior, atol=ATOL, rtol=0)
    torch.testing.assert_close(prior_kl(model, guide, x0), ref.prior, atol=ATOL, rtol=0)
    log_p = per_dim_evidence(lg, x0)
    torch.testing.assert_close(exact_log_evidence(model, x0), log_p, atol=ATOL, rtol=0)
    assert (ref.elbo < log_p).all()


@pytest.mark.parametrize("variance", FIXED)
@pytest.mark.parametrize("param", list(Parameterization))
def test_one_sample_terms_match_the_per_dimension_reference(param, variance):
    """step_terms at a given ε, and elbo_terms with a generator, are deterministic."""
    model, guide, x0 = _linear(param, variance, seed=1)
    lg = per_dim_from_model(model)
    ab = model.schedule.alpha_bar
    eps = torch.randn(T, N, D)
    t = torch.arange(1, T + 1).repeat_interleave(N)
    got = step_terms(model, guide, x0.repeat(T, 1), t, eps.reshape(T * N, D)).reshape(T, N)
    for s in range(1, T + 1):
        ref = per_dim_step_term(lg, ab, x0, s, eps[s - 1])
        torch.testing.assert_close(got[s - 1], ref, atol=ATOL, rtol=0)
    terms = elbo_terms(model, guide, x0, generator=torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    eps = [torch.randn(x0.shape, generator=gen) for _ in range(T)]
    torch.testing.assert_close(
        terms.reconstruction, per_dim_step_term(lg, ab, x0, 1, eps[0]), atol=ATOL, rtol=0
    )
    for s in range(2, T + 1):
        ref = -per_dim_step_term(lg, ab, x0, s, eps[s - 1])
        torch.testing.assert_close(terms.diffusion[:, s - 2], ref, atol=ATOL, rtol=0)


def test_exact_gradients_per_dimension_match_the_reference():
    """Gradients of the exact ELBO reach the weights and the per-dimension log σ_t² through the
    gathered tables, and equal the reference's (autograd through its own formulas)."""
    model, guide, x0 = _linear(Parameterization.X0, ReverseVariance.PER_STEP, seed=11)
    params = [model.denoiser.weight, model.denoiser.bias, model.log_variance]
    got = torch.autograd.grad(exact_elbo_terms(model, guide, x0).elbo.sum(), params)
    lg = per_dim_from_model(model, detach=False)
    ref = per_dim_elbo_terms(lg, model.schedule.alpha_bar, x0).elbo.sum()
    want = torch.autograd.grad(ref, params)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-9, rtol=0)
    assert model.log_variance.shape == (D, T + 1)
    assert want[2][:, 1:].abs().min() > 0  # every dimension's σ_t² gets a gradient


def test_a_float32_model_keeps_float64_tables_per_dimension():
    """model.float() leaves the per-dimension tables in float64; the coefficients are cast
    once to the data's dtype, so float32 moments agree with float64 ones to float32 rounding."""
    model = _model(_per_dim_schedule(seed=12), Parameterization.EPSILON, ReverseVariance.BETA)
    x_t = torch.randn(N, D)
    t = torch.tensor([1, 2, 4, 5])
    mean64, var64 = model.reverse_moments(x_t, t)
    model.float()
    assert model.schedule.alpha_bar.dtype == torch.float64
    mean32, var32 = model.reverse_moments(x_t.float(), t)
    assert mean32.dtype == var32.dtype == torch.float32 and var32.shape == (N, D)
    torch.testing.assert_close(mean32.double(), mean64.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(var32.double(), var64, atol=0, rtol=1e-6)


def test_reference_one_sample_terms_average_to_its_exact_terms():
    """The per-dimension reference's own consistency, 4.5 SE over 2,000 draws per datum."""
    model, _, x0 = _linear(Parameterization.EPSILON, ReverseVariance.POSTERIOR, seed=2)
    lg = per_dim_from_model(model)
    ab = model.schedule.alpha_bar
    exact = per_dim_elbo_terms(lg, ab, x0)
    cols = [exact.reconstruction] + [-exact.diffusion[:, i] for i in range(T - 1)]
    K = 2000
    for s in range(1, T + 1):
        draws = per_dim_step_term(lg, ab, x0.repeat(K, 1), s, torch.randn(K * N, D)).reshape(K, N)
        se = draws.std(0) / math.sqrt(K)
        assert ((draws.mean(0) - cols[s - 1]).abs() < 4.5 * se).all(), s


def test_per_dimension_oracle_is_the_true_reverse_process():
    """With a different ᾱ per dimension the oracle's weights are diagonal and equal the
    reference's; its ELBO and evidence equal log N(x_0; m, s² I), and Trace_ELBO on the literal
    chain has zero variance."""
    sched = _per_dim_schedule(T=6, seed=5)
    mean, std = torch.tensor([2.0, -1.5, 0.5]), 2.0
    model, guide = gaussian_oracle(sched, mean, std), ForwardGuide(sched)
    W, b, var, p_loc, p_scale = per_dim_gaussian_oracle(sched.alpha_bar, mean, std)
    steps = slice(1, None)
    torch.testing.assert_close(model.denoiser.weight[steps].detach(), W[steps], atol=1e-12, rtol=0)
    torch.testing.assert_close(model.denoiser.bias[steps].detach(), b[steps], atol=1e-12, rtol=0)
    torch.testing.assert_close(
        model.log_variance.detach().exp()[:, steps], var[steps].T, rtol=1e-12, atol=0
    )
    torch.testing.assert_close(model.prior_loc, p_loc, atol=1e-12, rtol=0)
    torch.testing.assert_close(model.prior_scale, p_scale, atol=1e-12, rtol=0)
    x0 = mean + std * torch.randn(N, D)
    log_p = torch.distributions.Normal(mean, std).log_prob(x0).sum(-1)
    lg = per_dim_kernels(sched.alpha_bar, W, b, Target.X0, var, p_loc, p_scale)
    torch.testing.assert_close(per_dim_evidence(lg, x0), log_p, atol=ATOL, rtol=0)
    torch.testing.assert_close(
        per_dim_elbo_terms(lg, sched.alpha_bar, x0).elbo, log_p, atol=ATOL, rtol=0
    )
    torch.testing.assert_close(exact_elbo_terms(model, guide, x0).elbo, log_p, atol=ATOL, rtol=0)
    torch.testing.assert_close(exact_log_evidence(model, x0), log_p, atol=ATOL, rtol=0)
    draws = torch.tensor([-Trace_ELBO().loss(model, guide, x0) for _ in range(10)])
    assert draws.std() < 1e-9
    torch.testing.assert_close(draws.mean(), log_p.sum(), atol=1e-8, rtol=0)


def _agrees(draws: Tensor, truth: Tensor, k: float = 4.0) -> None:
    se = draws.std(0) / math.sqrt(draws.shape[0])
    assert ((draws.mean(0) - truth).abs() < k * se).all(), (draws.mean(0), truth, se)


def test_diffusion_elbo_and_trace_elbo_estimate_the_exact_elbo():
    """DiffusionELBO's per-datum estimate and Trace_ELBO on the literal chain average to the
    exact ELBO of a linear-Gaussian model over a per-dimension schedule, within 4 measured SE."""
    model, guide, x0 = _linear(Parameterization.EPSILON, ReverseVariance.PER_STEP, seed=6)
    truth = exact_elbo_terms(model, guide, x0).elbo
    assert (truth <= exact_log_evidence(model, x0) + 1e-12).all()
    K = 4000
    with torch.no_grad():
        loss = DiffusionELBO().per_datum_loss(model, guide, x0.repeat(K, 1)).reshape(K, N)
    _agrees(-loss, truth)
    trace = Trace_ELBO(num_particles=200, vectorize_particles=True)
    with torch.no_grad():
        draws = torch.tensor([-trace.loss(model, guide, x0) for _ in range(20)])
    _agrees(draws[:, None], truth.sum())


def test_ancestral_samples_of_the_per_dimension_oracle_have_the_datas_moments():
    """The oracle's p(x_0) is N(m, s² I): the sample mean and variance of 4,000 draws agree
    within 4 SE (var of a sample variance: 2 s⁴ / (n − 1))."""
    sched = _per_dim_schedule(T=6, seed=7)
    mean, std = torch.tensor([2.0, -1.5, 0.5]), 0.7
    model = gaussian_oracle(sched, mean, std)
    n = 4000
    x = ancestral_sample(model, n, generator=torch.Generator().manual_seed(0))
    assert (x.mean(0) - mean).abs().max() < 4 * std / math.sqrt(n)
    assert (x.var(0) - std**2).abs().max() < 4 * std**2 * math.sqrt(2 / (n - 1))


def test_strided_sampling_of_every_step_is_ancestral_sampling_per_dimension():
    """Respacing onto all of 0 … T rebuilds the per-dimension β from ᾱ[..., τ]: the same chain,
    so the same draws from the same noise (to rounding of 1 − ᾱ_t/ᾱ_{t−1})."""
    model = _model(_per_dim_schedule(seed=9), Parameterization.EPSILON, ReverseVariance.POSTERIOR)
    noise = torch.randn(T + 1, N, D)
    torch.testing.assert_close(
        strided_sample(model, N, T, noise=noise),
        ancestral_sample(model, N, noise=noise),
        atol=1e-12,
        rtol=0,
    )


def test_ddim_with_the_true_x0_follows_the_forward_marginals_per_dimension():
    """With x̂_0 = x_0 (an x_0-predictor that returns it) and x_T = √ᾱ_T ⊙ x_0 + √(1 − ᾱ_T) ⊙ z,
    deterministic DDIM visits x_s = √ᾱ_s ⊙ x_0 + √(1 − ᾱ_s) ⊙ z at every step, per dimension."""
    sched = _per_dim_schedule(T=8, seed=10)
    ab = sched.alpha_bar
    x0 = torch.tensor([0.5, -1.0, 2.0])

    class _Truth(nn.Module):
        event_shape = (D,)

        def forward(self, x_t, t):
            return x0.expand_as(x_t)

    model = Diffusion(
        _Truth(),
        sched,
        parameterization=Parameterization.X0,
        prior_loc=ab[:, -1].sqrt() * x0,
        prior_scale=(1 - ab[:, -1]).sqrt(),
    )
    noise = torch.randn(5, N, D)
    _, traj = ddim_sample(model, N, 4, eta=0.0, noise=noise, return_trajectory=True)
    z = noise[4]
    for i, s in enumerate(traj.timesteps.tolist()):
        want = ab[:, s].sqrt() * x0 + (1 - ab[:, s]).sqrt() * z
        torch.testing.assert_close(traj.states[i], want, atol=1e-12, rtol=0)


# --- continuous time: a log-SNR per dimension --------------------------------------------


class _PerDimLinearLogSNR(LogSNRSchedule):
    """λ_j(t) = a_j + (b_j − a_j) t: a straight line per dimension with its own ends."""

    name = "per_dim_linear"

    def __init__(self, start: Tensor, end: Tensor) -> None:
        super().__init__()
        self.register_buffer("start", torch.as_tensor(start, dtype=torch.float64))
        self.register_buffer("end", torch.as_tensor(end, dtype=torch.float64))

    def log_snr_and_slope(self, t: Tensor) -> tuple[Tensor, Tensor]:
        t = t[..., None]
        span = self.end - self.start
        return self.start + span * t, span.expand(t.shape[:-1] + span.shape)

    def endpoints(self) -> tuple[Tensor, Tensor]:
        return self.start, self.end


START = torch.tensor([9.0, 6.0, 12.0], dtype=torch.float64)
END = torch.tensor([-4.0, -6.0, -3.0], dtype=torch.float64)


def test_discretize_per_dimension_gives_sigmoid_of_each_dimensions_log_snr():
    cont = _PerDimLinearLogSNR(START, END)
    T = 7
    sched = cont.discretize(T)
    assert sched.event_shape == (D,) and sched.num_steps == T
    s = discrete_times(T)
    for j in range(D):
        lam = START[j] + (END[j] - START[j]) * s[1:]
        torch.testing.assert_close(sched.alpha_bar[j, 1:], torch.sigmoid(lam), atol=1e-15, rtol=0)
        assert sched.alpha_bar[j, 0] == 1.0
    torch.testing.assert_close(sched.alpha_bar[:, 1:], signal_variance(cont.log_snr(s[1:])).T)


def test_continuous_model_per_dimension_discretizes_to_a_working_diffusion():
    """ContinuousDiffusion over a per-dimension λ with TIME conditioning, at T steps: the decoder
    reads x̂ = x_1/√ᾱ_1 with variance e^{−λ_j(0)} per dimension, the reverse variances are the
    per-dimension β̃, and the exact ELBO of its (affine) network matches the reference."""
    from pyrodiff.networks import LinearDenoiser

    T = 6
    cont_sched = _PerDimLinearLogSNR(START, END)

    class _Affine(LinearDenoiser):
        is_affine = True

        # the continuous model feeds 1000 s_t; read it back as the step index for the weights
        def forward(self, x_t, c):
            t = torch.round(c / 1000 * (T - 1)).long() + 1
            return super().forward(x_t, t)

    torch.manual_seed(0)
    net = _Affine(D, T)
    with torch.no_grad():
        net.weight.normal_(0, 0.3)
        net.bias.normal_(0, 0.3)
    for param in Parameterization:
        model = ContinuousDiffusion(
            net,
            schedule=cont_sched,
            parameterization=param,
            conditioning=Conditioning.TIME,
            num_steps=T,
        ).discretize()
        sched = model.schedule
        assert sched.event_shape == (D,)
        x1 = torch.randn(N, D)
        mean, var = model.reverse_moments(x1, 1)
        torch.testing.assert_close(mean, x1 / sched.alpha_bar[:, 1].sqrt(), atol=1e-12, rtol=0)
        torch.testing.assert_close(var, torch.exp(-START), atol=1e-12, rtol=0)
        _, var3 = model.reverse_moments(x1, torch.full((N,), 3))
        torch.testing.assert_close(
            var3, sched.posterior_variance[:, 3].expand(N, D), atol=1e-15, rtol=0
        )
        x0 = torch.randn(N, D)
        guide = ForwardGuide(sched)
        # the discrete chain's network: the continuous one at steps t >= 2; at t = 1 the output
        # whose x̂_0 is x_1/√ᾱ_1 (ε̂ = 0; x̂ = x_1/√ᾱ_1; v̂ = −√(1 − ᾱ_1)/√ᾱ_1 x_1), per dimension
        W, b = net.weight.detach().clone(), net.bias.detach().clone()
        a1 = sched.alpha_bar[:, 1]
        gain = {
            Parameterization.EPSILON: torch.zeros(D),
            Parameterization.X0: a1**-0.5,
            Parameterization.V: -((1 - a1) / a1).sqrt(),
        }[param]
        W[1], b[1] = torch.diag(gain), 0.0
        var = model.log_variance.detach().exp().T
        lg = per_dim_kernels(
            sched.alpha_bar, W, b, Target[param.name], var, model.prior_loc, model.prior_scale
        )
        ref = per_dim_elbo_terms(lg, sched.alpha_bar, x0)
        # with e^{−λ(0)} down to 6e−6 a random network's terms reach ~1e5 nats: relative 1e−10
        torch.testing.assert_close(
            exact_elbo_terms(model, guide, x0).elbo, ref.elbo, atol=0, rtol=1e-10
        )
        torch.testing.assert_close(
            exact_log_evidence(model, x0), per_dim_evidence(lg, x0), atol=0, rtol=1e-10
        )
