"""The multivariate, input-adaptive noise process (MuLAN): its schedule, model, guide and bounds.

What is proved here:
- the schedule family is a valid one (decreasing per dimension, its slope the derivative, its
  ends the end parameters) and a scalar schedule is its special case;
- with every dimension's curve equal and a z the schedule ignores, every estimator gives the
  scalar model's bound exactly (same draws, 1e-10 in float64);
- the one-call T-step term is exactly the per-step KL of the discretised chain under the
  forward chain (VDM's identity), so DiffusionELBO on a continuous-time model is its T-step bound;
- the literal chain under Pyro's Trace_ELBO and the one-call estimators agree in expectation
  (within 4 SE of their paired difference), with a z that matters;
- the model and guide are Pyro sub-programs: under a name, in the caller's plate, with
  particle dimensions, and Predictive samples z first.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import Predictive, Trace_ELBO
from torch import nn

from pyrodiff import (
    AdaptiveDiffusion,
    AdaptiveNoiseGuide,
    Conditioning,
    ContinuousDiffusion,
    ContinuousForwardGuide,
    ForwardGuide,
    MultivariateLogSNR,
    Parameterization,
)
from pyrodiff.errors import ConfigError, ModelMismatchError
from pyrodiff.infer import (
    ContinuousELBO,
    DiffusionELBO,
    continuous_elbo_terms,
    diffusion_integrand,
    step_integrand,
    step_terms,
)
from pyrodiff.modules import parameter_count
from pyrodiff.networks import MLPDenoiser

D, K = 3, 2


def _randomise(schedule: MultivariateLogSNR, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in schedule.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def test_schedule_is_decreasing_with_its_slope_and_ends():
    sched = MultivariateLogSNR((D,), latent_dim=K, num_basis=5)
    _randomise(sched, 0)
    z = torch.randn(7, K)
    t = torch.rand(7, dtype=torch.float64)
    lam, slope = sched.log_snr_and_slope(t, latent=z)
    assert lam.shape == slope.shape == (7, D)
    assert (slope < 0).all()
    # the slope is the derivative (central differences, error O(h²) ≈ 1e-10)
    h = 1e-5
    up = sched.log_snr(t + h, latent=z)
    down = sched.log_snr(t - h, latent=z)
    assert torch.allclose((up - down) / (2 * h), slope, rtol=1e-6, atol=1e-6)
    # the ends are λ(0 | z) and λ(1 | z), read from the end parameters
    l0, l1 = sched.endpoints(z)
    assert torch.allclose(sched.log_snr(torch.zeros(7, dtype=torch.float64), latent=z), l0)
    assert torch.allclose(sched.log_snr(torch.ones(7, dtype=torch.float64), latent=z), l1)
    # and z matters once the network of z is not at its start
    assert not torch.allclose(l0[0], l0[1])


def test_fresh_schedule_ignores_z_and_scalar_is_the_special_case():
    sched = MultivariateLogSNR((D,), latent_dim=K)
    t = torch.rand(4, dtype=torch.float64)
    a = sched.log_snr(t, latent=torch.randn(4, K))
    b = sched.log_snr(t, latent=torch.randn(4, K))
    assert torch.equal(a, b)
    scalar = MultivariateLogSNR(())
    assert scalar.log_snr(t).shape == (4,)
    assert torch.equal(scalar.log_snr(t)[:, None].expand(4, D), a)


def test_schedule_errors_name_the_problem():
    with pytest.raises(ConfigError, match="latent_dim"):
        MultivariateLogSNR((D,), latent_dim=-1)
    with pytest.raises(ConfigError, match="log_snr_start > log_snr_end"):
        MultivariateLogSNR((D,), log_snr_start=-5.0, log_snr_end=3.0)
    sched = MultivariateLogSNR((D,), latent_dim=K)
    with pytest.raises(ConfigError, match="pass latent="):
        sched.log_snr(torch.rand(3, dtype=torch.float64))
    with pytest.raises(ConfigError, match=r"shape \(N, 2\)"):
        sched.log_snr(torch.rand(3, dtype=torch.float64), latent=torch.randn(3, 5))
    with pytest.raises(ConfigError, match="depends on z"):
        sched.discretize(10)


class _IgnoresLatent(nn.Module):
    """The same network, called without the latent (its latent projection is zero)."""

    def __init__(self, net: MLPDenoiser, latent_dim: int) -> None:
        super().__init__()
        self.net = net
        self.latent_dim = latent_dim
        self.event_shape = net.event_shape

    def forward(self, x, c):
        return self.net(x, c, latent=x.new_zeros(x.shape[0], self.latent_dim))


def _equal_dimensions_pair(parameterization: Parameterization):
    """(adaptive model and guide whose curves are all equal and ignore z, the scalar model)."""
    torch.manual_seed(5)
    net = MLPDenoiser(D, hidden=16, depth=1, time_dim=8, latent_dim=K)
    with torch.no_grad():
        net.latent.weight.zero_()
        net.latent.bias.zero_()
    scalar_sched = MultivariateLogSNR((), num_basis=4)
    _randomise(scalar_sched, 1)
    sched = MultivariateLogSNR((D,), latent_dim=K, num_basis=4)
    with torch.no_grad():
        sched.start.copy_(scalar_sched.start.expand(D))
        sched.gap.copy_(scalar_sched.gap.expand(D))
        sched.logits.copy_(scalar_sched.logits.expand(D, 4))
    adaptive = AdaptiveDiffusion(
        net, sched, K, parameterization=parameterization, event_shape=(D,), num_steps=6
    )
    guide = AdaptiveNoiseGuide.for_model(adaptive)
    scalar = ContinuousDiffusion(
        _IgnoresLatent(net, K),
        scalar_sched,
        parameterization=parameterization,
        conditioning=Conditioning.TIME,
        event_shape=(D,),
        num_steps=6,
    )
    return adaptive, guide, scalar


@pytest.mark.parametrize("parameterization", list(Parameterization))
@pytest.mark.parametrize("num_steps", [None, 6])
def test_equal_dimensions_and_ignored_z_give_the_scalar_bound_exactly(parameterization, num_steps):
    adaptive, guide, scalar = _equal_dimensions_pair(parameterization)
    x = torch.randn(9, D)
    terms = {}
    for name, model, g in (("adaptive", adaptive, guide), ("scalar", scalar, None)):
        gen = torch.Generator().manual_seed(3)
        if g is None:
            torch.randn((9, K), generator=gen)  # the adaptive pair draws z's noise first
        terms[name] = continuous_elbo_terms(
            model, x, num_bins=10, generator=gen, guide=g, num_steps=num_steps
        )
    a, s = terms["adaptive"], terms["scalar"]
    # a fresh encoder is the prior: the latent's KL is exactly 0
    assert torch.equal(a.latent, torch.zeros(9))
    for field in ("reconstruction", "diffusion", "prior"):
        assert torch.allclose(getattr(a, field), getattr(s, field), rtol=0, atol=1e-10), field
    assert torch.allclose(a.elbo, s.elbo, rtol=0, atol=1e-10)


@pytest.mark.parametrize("parameterization", list(Parameterization))
def test_step_integrand_is_the_discretised_chains_kl(parameterization):
    torch.manual_seed(2)
    net = MLPDenoiser(D, hidden=16, depth=1, time_dim=8)
    sched = MultivariateLogSNR((), num_basis=4)
    _randomise(sched, 4)
    T = 7
    model = ContinuousDiffusion(
        net, sched, parameterization=parameterization, conditioning=Conditioning.TIME, num_steps=T
    )
    chain = model.discretize(T)
    x = torch.randn(12, D)
    step = torch.randint(2, T + 1, (12,))
    noise = torch.randn_like(x)
    ours = step_integrand(model, x, step, T, noise)
    theirs = -step_terms(chain, ForwardGuide(chain.schedule), x, step, noise)
    assert torch.allclose(ours, theirs, rtol=1e-8, atol=1e-10)


def _adaptive(
    seed: int = 0, T: int = 3, start: float = 5.0, jitter: float = 0.3
) -> tuple[AdaptiveDiffusion, AdaptiveNoiseGuide]:
    torch.manual_seed(seed)
    net = MLPDenoiser(D, hidden=16, depth=1, time_dim=8, latent_dim=K)
    sched = MultivariateLogSNR((D,), latent_dim=K, log_snr_start=start, log_snr_end=-start)
    model = AdaptiveDiffusion(net, sched, K, event_shape=(D,), num_steps=T)
    guide = AdaptiveNoiseGuide.for_model(model, hidden=16)
    # move every start-at-zero layer off its start, so that z matters everywhere
    with torch.no_grad():
        for p in list(sched.net.parameters()) + list(guide.encoder.parameters()):
            p.add_(jitter * torch.randn_like(p))
    return model, guide


def test_the_schedule_at_z_answers_what_the_schedule_does():
    sched = MultivariateLogSNR((D,), latent_dim=K, num_basis=5)
    _randomise(sched, 4)
    z = torch.randn(6, K, dtype=torch.float64)
    t = torch.rand(6, dtype=torch.float64)
    at_z = sched.given(z)
    assert at_z.batch_size == 6
    lam, slope = sched.log_snr_and_slope(t, latent=z)
    pairs = [
        (at_z.log_snr_and_slope(t), (lam, slope)),
        (at_z.endpoints(), sched.endpoints(z)),
        (at_z.shape(t), sched.shape(t, latent=z)),
    ]
    for got, want in pairs:
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    with pytest.raises(ConfigError, match=r"shape \(6,\), one time per draw of z"):
        at_z.log_snr(torch.rand(5, dtype=torch.float64))
    # without z: the schedule's own curves, for any number of times
    free = MultivariateLogSNR((D,), num_basis=5)
    _randomise(free, 5)
    assert free.given().batch_size is None
    assert torch.equal(free.given().log_snr(t), free.log_snr(t))


def _count_calls(module: nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("num_steps", [None, 4])
def test_a_bound_runs_the_network_of_z_once(num_steps):
    # λ(t | z), its slope, both ends and, at finite T, a second step: one call of the network
    model, guide = _adaptive()
    calls = _count_calls(model.schedule.net)
    x = torch.randn(5, D)
    ContinuousELBO(num_steps=num_steps).loss_and_grads(model, guide, x)
    assert calls[0] == 1
    continuous_elbo_terms(model, x, guide=guide, num_steps=num_steps)
    assert calls[0] == 2
    # the literal chain: sampled, once per step (the kernel's two times); run as the guide,
    # once for the whole chain
    model(batch_size=3)
    guide(x)
    assert calls[0] == 2 + model.num_steps + 1


def test_a_schedule_shared_by_model_and_guide_is_counted_once():
    model, guide = _adaptive()
    assert guide.schedule is model.schedule
    each = [sum(p.numel() for p in m.parameters()) for m in (model, guide, model.schedule)]
    assert parameter_count(model, guide) == each[0] + each[1] - each[2]
    assert parameter_count(model) == each[0] and parameter_count() == 0


def test_trace_elbo_on_the_literal_chain_agrees_with_the_one_call_bound():
    # short log-SNR range: small per-step KLs, so the comparison has the power to see a wrong
    # kernel, a wrong time or the latent's KL with the wrong sign
    model, guide = _adaptive(T=3, start=2.0, jitter=0.1)
    with torch.no_grad():
        guide.encoder.net[-1].bias[:K] += 1.0  # KL(q(z | x) ‖ p(z)) of about K/2 nats
        model.denoiser.out[-1].weight.mul_(0.1)  # ε̂ small: x̂ = (x_t − σ ε̂)/α stays finite
    x = torch.randn(4, D) * 0.7
    M = 20000

    # the literal chain, as Trace_ELBO scores it: log p − log q per particle and datum, the
    # particles a plate of their own (what vectorize_particles does)
    def particles(fn):
        def run(x):
            with pyro.plate("particles", M, dim=-2):
                return fn(x)

        return run

    with torch.no_grad():
        gt = poutine.trace(particles(guide)).get_trace(x)
        mt = poutine.trace(poutine.replay(particles(model), trace=gt)).get_trace(x)
    trace = 0.0
    for tr, sign in ((mt, 1.0), (gt, -1.0)):
        for name, site in tr.nodes.items():
            if site["type"] == "sample" and name not in ("data", "particles"):
                trace = trace + sign * site["fn"].log_prob(site["value"])
    assert trace.shape == (M, 4)
    # the one-call estimator of the same T-step bound (DiffusionELBO reads it at model's T)
    with torch.no_grad():
        one = -DiffusionELBO().per_datum_loss(model, guide, x.repeat(M, 1)).reshape(M, 4)
    diff = trace.mean(0) - one.mean(0)
    se = (trace.var(0) / trace.shape[0] + one.var(0) / one.shape[0]).sqrt()
    assert (diff.abs() < 4 * se).all(), (diff, se)
    assert (se < 0.25).all(), se  # the power the mutants need (tests/mutants/run.py)


def test_continuous_elbo_num_steps_agrees_with_diffusion_elbo_in_expectation():
    model, guide = _adaptive(T=5)
    x = torch.randn(6, D)
    with torch.no_grad():
        a = torch.stack(
            [ContinuousELBO(num_steps=5).per_datum_loss(model, guide, x) for _ in range(400)]
        )
        b = torch.stack([DiffusionELBO().per_datum_loss(model, guide, x) for _ in range(400)])
    se = (a.var(0) / 400 + b.var(0) / 400).sqrt()
    assert ((a.mean(0) - b.mean(0)).abs() < 4 * se).all()


def test_t_infinity_bound_is_no_looser_than_t_steps():
    model, guide = _adaptive(T=4)
    x = torch.randn(5, D)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        inf = torch.stack(
            [continuous_elbo_terms(model, x, generator=gen, guide=guide).elbo for _ in range(600)]
        )
        four = torch.stack(
            [
                continuous_elbo_terms(model, x, generator=gen, guide=guide, num_steps=4).elbo
                for _ in range(600)
            ]
        )
    gap = inf.mean() - four.mean()
    se = (inf.mean(1).var() / 600 + four.mean(1).var() / 600).sqrt()
    assert gap > 4 * se


def test_gradients_reach_encoder_schedule_and_the_denoisers_latent_input():
    model, guide = _adaptive()
    x = torch.randn(8, D)
    for loss in (ContinuousELBO(), DiffusionELBO()):
        model.zero_grad()
        guide.zero_grad()
        loss.loss_and_grads(model, guide, x)
        for name, p in [
            ("encoder", guide.encoder.net[-1].weight),
            ("schedule net", model.schedule.net[-1].weight),
            ("schedule ends", model.schedule.start),
            ("denoiser latent", model.denoiser.latent.weight),
        ]:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_pairs_that_do_not_fit_are_refused():
    model, guide = _adaptive()
    x = torch.randn(3, D)
    with pytest.raises(ModelMismatchError, match="AdaptiveNoiseGuide"):
        ContinuousELBO().loss(model, ContinuousForwardGuide(), x)
    with pytest.raises(ModelMismatchError, match="no fixed discrete chain"):
        model.discretize(10)
    with pytest.raises(ConfigError, match="latent_dim = 2"):
        AdaptiveDiffusion(MLPDenoiser(D), MultivariateLogSNR((D,), latent_dim=3), 2)


def test_a_latent_for_a_model_without_one_is_refused():
    _, _, scalar = _equal_dimensions_pair(Parameterization.EPSILON)
    x, t = torch.randn(3, D), torch.rand(3, dtype=torch.float64)
    with pytest.raises(ModelMismatchError, match="has none"):
        diffusion_integrand(scalar, x, t, torch.randn(3, D), latent=torch.randn(3, K))


def test_sampling_draws_z_from_its_prior_first():
    model, _ = _adaptive(T=3)
    samples = Predictive(model, num_samples=5, return_sites=["z", "x_3", "x_0"])(batch_size=4)
    assert samples["z"].shape == (5, 4, K)
    assert samples["x_0"].shape == (5, 4, D)
    trace = poutine.trace(model).get_trace(batch_size=2)
    order = [n for n, s in trace.nodes.items() if s["type"] == "sample" and n != "data"]
    assert order == ["z", "x_3", "x_2", "x_1", "x_0"]
    assert model(batch_size=6).shape == (6, D)


def test_sub_program_under_a_name_in_the_callers_plate():
    torch.manual_seed(1)
    net = MLPDenoiser(D, hidden=8, depth=1, time_dim=8, latent_dim=K)
    sched = MultivariateLogSNR((D,), latent_dim=K)
    model = AdaptiveDiffusion(net, sched, K, event_shape=(D,), num_steps=3, name="prior")
    guide = AdaptiveNoiseGuide.for_model(model, hidden=8)
    x = torch.randn(10, D)

    def user_model(x):
        with pyro.plate("rows", 10, subsample_size=4) as idx:
            model(x[idx])

    def user_guide(x):
        with pyro.plate("rows", 10, subsample_size=4) as idx:
            guide(x[idx])

    tr = poutine.trace(user_model).get_trace(x)
    assert {"prior.z", "prior.x_3", "prior.x_0"} <= set(tr.nodes)
    assert tr.nodes["prior.x_0"]["fn"].batch_shape == (4,)
    # Trace_ELBO runs the pair inside the user's subsampled plate (scale N/B on every site)
    gt = poutine.trace(user_guide).get_trace(x)
    assert gt.nodes["prior.z"]["scale"] == pytest.approx(10 / 4)
    loss = Trace_ELBO().loss(user_model, user_guide, x)
    assert math.isfinite(loss)
    # poutine.scale reaches every site
    scaled = poutine.trace(poutine.scale(model, 0.5)).get_trace(x[:3])
    assert scaled.nodes["prior.x_1"]["scale"] == 0.5


def test_the_pages_example_runs():
    import re
    from pathlib import Path

    page = (Path(__file__).parents[1] / "docs" / "continuous.md").read_text()
    section = page.split("## A noise process per dimension")[1].split("\n## ")[0]
    (block,) = re.findall(r"^```python\n(.*?)^```$", section, re.S | re.M)
    scope: dict = {}
    exec(compile(block, "docs/continuous.md", "exec"), scope)
    assert scope["samples"].shape == (8, 2)


def test_a_step_of_zero_length_in_the_dtype_is_a_valid_kernel_that_q_and_p_share():
    # a learned curve nearly flat in one dimension rounds λ_s = λ_t in float32: that step adds
    # no noise there, and q(x_s | x_t, x_0) and the reverse kernel (x̂_0 for x_0) must agree
    # on it, as the step's closed-form KL (zero) says, rather than build Normal(·, 0)
    from pyrodiff.gaussian import log_snr_posterior_moments

    f32 = torch.float32
    lam_s = torch.tensor([14.4257, 3.0], dtype=f32)
    lam_t = torch.tensor([14.4257, 1.0], dtype=f32)
    x0, x0_hat, x_t = torch.randn(3, 5, 2, dtype=f32).unbind(0)
    q_mean, q_sd = log_snr_posterior_moments(lam_s, lam_t, x0, x_t)
    p_mean, p_sd = log_snr_posterior_moments(lam_s, lam_t, x0_hat, x_t)
    floor = torch.finfo(f32).tiny ** 0.5
    assert q_sd[0] == floor and torch.equal(q_mean[:, 0], x_t[:, 0])
    assert torch.equal(q_mean[:, 0], p_mean[:, 0]) and torch.equal(q_sd, p_sd)
    x_s = dist.Normal(q_mean, q_sd).sample()  # a valid distribution: no error
    ratio = dist.Normal(q_mean, q_sd).log_prob(x_s) - dist.Normal(p_mean, p_sd).log_prob(x_s)
    assert (ratio[:, 0] == 0).all() and torch.isfinite(ratio).all()
    # the other dimension is untouched by the floor
    r = -torch.expm1(lam_t[1] - lam_s[1])
    assert torch.allclose(q_sd[1], (r * torch.sigmoid(-lam_s[1])).sqrt())
