"""The vectorised log-weights of closed-form guides against Pyro's traces of the same chain."""

import math

import pytest
import torch
from pyro import poutine

from pyrodiff import (
    ChainOrder,
    Diffusion,
    ForwardGuide,
    LearnedScheduleGuide,
    ModelMismatchError,
    Parameterization,
    ReverseVariance,
)
from pyrodiff.guides import HierarchicalVAEGuide, LearnedGuide, has_closed_forms
from pyrodiff.infer import iwae_bound, psis_diagnostic
from pyrodiff.infer.bounds import log_weights
from pyrodiff.infer.chain import chain_log_weights, closed_form_log_weights
from pyrodiff.likelihoods import DiscretizedGaussianLikelihood
from pyrodiff.models import HierarchicalVAE
from pyrodiff.networks import MLPDenoiser
from pyrodiff.schedules import cosine_schedule, linear_schedule
from pyrodiff.train import evaluate_split


def mlp_model(T, variance, likelihood=None, seed=0, D=2):
    torch.manual_seed(seed)
    out_dim = 2 * D if variance is ReverseVariance.LEARNED_RANGE else D
    den = MLPDenoiser(D, hidden=16, depth=2, time_dim=8, out_dim=out_dim)
    return Diffusion(
        den,
        cosine_schedule(T) if seed % 2 else linear_schedule(T, reference_steps=20 * T),
        likelihood=likelihood,
        parameterization=Parameterization.EPSILON,
        variance=variance,
    )


def data(N=5, D=2, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return (0.6 * torch.randn(N, D, generator=gen)).clamp(-1, 1)


def pyro_log_weight_and_chain(model, guide, x0):
    """log p(x_{0:T}) − log q(x_{1:T} | x_0) per datum read off Pyro's traces, and the chain."""
    guide_tr = poutine.trace(guide).get_trace(x0)
    model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(x0)
    model_tr.compute_log_prob()
    guide_tr.compute_log_prob()
    lp = sum(s["log_prob"] for s in model_tr.nodes.values() if s["type"] == "sample")
    lq = sum(
        s["log_prob"]
        for s in guide_tr.nodes.values()
        if s["type"] == "sample" and not s["is_observed"]
    )
    T = model.num_steps
    chain = torch.stack([guide_tr.nodes[f"x_{t}"]["value"] for t in range(1, T + 1)])
    return lp - lq, chain


CASES = [
    (1, ReverseVariance.BETA, None),
    (6, ReverseVariance.BETA, None),
    (6, ReverseVariance.POSTERIOR, None),
    (5, ReverseVariance.PER_STEP, None),
    (7, ReverseVariance.LEARNED_RANGE, None),
    (6, ReverseVariance.BETA, DiscretizedGaussianLikelihood(17)),
]


@pytest.mark.parametrize("T,variance,likelihood", CASES)
@pytest.mark.parametrize("order", list(ChainOrder))
@pytest.mark.parametrize("learned_schedule", [False, True])
def test_same_chain_same_log_weight(T, variance, likelihood, order, learned_schedule):
    # the joint q(x_{1:T} | x_0) is one density whichever order the guide draws it in, so the
    # vectorised top-down evaluation must equal Pyro's site-by-site one on the very same draw,
    # to float64 round-off (sums of ~10 terms of size ~10: 1e-10 is far above round-off)
    model = mlp_model(T, variance, likelihood, seed=T)
    if learned_schedule:
        guide = LearnedScheduleGuide(model.schedule)
        with torch.no_grad():  # move the schedule off its start so φ matters
            for p in guide.parameters():
                p.add_(0.1 * torch.randn_like(p))
    else:
        guide = ForwardGuide(model.schedule, order=order)
    x0 = data()
    if likelihood is not None:  # on the quantised grid the decoder is a mass
        x0 = _grid(x0, 17)
    with torch.no_grad():
        want, chain = pyro_log_weight_and_chain(model, guide, x0)
        got = chain_log_weights(model, guide, x0, chain)
    assert torch.allclose(got, want, rtol=0, atol=1e-10), (got - want).abs().max()


def _grid(x, levels):
    step = 2.0 / (levels - 1)
    return torch.round((x + 1) / step) * step - 1


@pytest.mark.parametrize("order", list(ChainOrder))
def test_both_paths_draw_from_the_same_distribution(order):
    # noise cannot be shared between Pyro's sampler and the vectorised one, so compare their
    # log-weights in distribution: per datum the means of K = 1500 draws differ by z =
    # Δ / √(se_a² + se_b²) ~ N(0, 1) under equality; 4 data, |z| < 4 fails with p < 3e-4.
    # The spread is compared too: var of the sample variance ≈ 2σ⁴/(K−1) for near-normal
    # log-weights, so their log-ratio has SE ≈ √(2 · 2/(K−1)) ≈ 0.052; 0.3 is ~6 SE.
    model = mlp_model(8, ReverseVariance.BETA, seed=2)
    guide = ForwardGuide(model.schedule, order=order)
    x0, K = data(4), 1500
    a = log_weights(model, guide, x0, K, vectorised=True)
    b = log_weights(model, guide, x0, K, vectorised=False)
    se = (a.var(0) / K + b.var(0) / K).sqrt()
    z = (a.mean(0) - b.mean(0)) / se
    assert z.abs().max() < 4.0, z
    assert (a.var(0) / b.var(0)).log().abs().max() < 0.3


def test_chunking_keeps_rows_in_draw_major_order():
    # row k·N + n is datum n's k-th draw whatever the chunk: per-datum means from one row per
    # chunk must match the unchunked ones in distribution (z < 4 as above); the data are far
    # apart, so a datum-mixing bug moves a mean by many SE (checked by the last assertion)
    model = mlp_model(5, ReverseVariance.BETA, seed=4)
    guide = ForwardGuide(model.schedule)
    x0 = torch.tensor([[-4.0, 4.0], [0.0, 0.0], [4.0, 4.0]])
    K = 800
    small = closed_form_log_weights(model, guide, x0, K, batch_budget=7)  # 1 row per chunk
    large = closed_form_log_weights(model, guide, x0, K, batch_budget=10**6)
    se = (small.var(0) / K + large.var(0) / K).sqrt()
    assert ((small.mean(0) - large.mean(0)) / se).abs().max() < 4.0
    # and the data really differ, so the check above could fail
    spread = large.mean(0).max() - large.mean(0).min()
    assert spread > 20 * se.max()


def test_iwae_and_psis_take_the_vectorised_path_and_agree_with_traces():
    # IWAE-4 from either path is an unbiased draw of the same L_4; 300 repeats each give its
    # per-datum SE, and the 3 per-datum differences are checked at 4 SE
    model = mlp_model(6, ReverseVariance.POSTERIOR, seed=6)
    guide = ForwardGuide(model.schedule)
    x0 = data(3)
    fast = iwae_bound(model, guide, x0, 4, num_repeats=300)
    torch.manual_seed(1)
    lw = log_weights(model, guide, x0, 4 * 300, vectorised=False).reshape(300, 4, -1)
    draws = torch.logsumexp(lw, 1) - math.log(4)
    se = (fast.mc_stderr**2 + draws.var(0) / 300).sqrt()
    assert ((fast.values - draws.mean(0)) / se).abs().max() < 4.0
    diag = psis_diagnostic(model, guide, x0, num_samples=200)
    assert diag.khat.shape == (3,) and torch.isfinite(diag.khat).all()


def test_guides_without_closed_forms_use_the_traces():
    model = mlp_model(4, ReverseVariance.BETA, seed=8)
    guide = LearnedGuide(model, hidden=8)
    x0 = data(3)
    assert log_weights(model, guide, x0, 2).shape == (2, 3)
    with pytest.raises(ModelMismatchError, match="closed-form"):
        log_weights(model, guide, x0, 2, vectorised=True)


def test_has_closed_forms_names_the_closed_form_guides():
    model = mlp_model(4, ReverseVariance.BETA, seed=8)
    assert has_closed_forms(ForwardGuide(model.schedule))
    assert has_closed_forms(LearnedScheduleGuide(model.schedule))
    assert has_closed_forms(ForwardGuide) and has_closed_forms(LearnedScheduleGuide)
    assert not has_closed_forms(LearnedGuide(model, hidden=8))
    hvae = HierarchicalVAE(event_shape=(2,), latent_dims=(2, 2), hidden=8)
    assert not has_closed_forms(HierarchicalVAEGuide(hvae))
    assert not has_closed_forms(object())


def test_progress_bar_goes_to_stderr(capsys):
    model = mlp_model(3, ReverseVariance.BETA, seed=8)
    guide = ForwardGuide(model.schedule)
    log_weights(model, guide, data(2), 3, progress=True)
    assert "log-weights" in capsys.readouterr().err
    log_weights(model, guide, data(2), 3)
    assert capsys.readouterr().err == ""
    evaluate_split(model, guide, data(2), num_levels=None, progress=True)
    assert "ELBO terms" in capsys.readouterr().err
    iwae_bound(model, guide, data(2), 2, progress=True)
    psis_diagnostic(model, guide, data(2), 20, progress=True)
    assert capsys.readouterr().err.count("log-weights") >= 2


def test_the_config_accepts_timestep_objectives_exactly_for_closed_form_guides():
    # RunConfig decides with the same predicate: objective elbo is accepted for a guide kind
    # exactly when the guide that kind builds has closed forms
    from pyrodiff.config import GuideKind, Objective, RunConfig, build_guide
    from pyrodiff.errors import ConfigError

    model = mlp_model(4, ReverseVariance.BETA, seed=8)
    # guide adaptive comes with its own model, whose bound reads the closed forms of the
    # model's schedule (tests/test_cli_adaptive.py)
    for kind in set(GuideKind) - {GuideKind.ADAPTIVE}:
        guide = build_guide(RunConfig(guide=kind, objective=Objective.TRACE_ELBO), model)
        try:
            RunConfig(guide=kind, objective=Objective.ELBO)
            accepted = True
        except ConfigError:
            accepted = False
        assert accepted == has_closed_forms(guide), kind
