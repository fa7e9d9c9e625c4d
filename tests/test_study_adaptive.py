"""Study (g): the script runs with --quick and writes what it returns; its precise estimator (closed-
form ends, stratified t, a control variate) is unbiased for the bound the library estimates; the
paired convergence rule sees gains that the unpaired rule cannot."""

import json
import math

import pytest
import torch

from pyrodiff.infer.continuous import continuous_elbo_terms


@pytest.fixture
def study(load_example):
    return load_example("study_adaptive")


def test_quick_run_writes_what_it_returns_and_its_rows_obey_the_bound(study, tmp_path, capsys):
    result = study.main(["--quick", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    written = json.loads((tmp_path / "study_adaptive.json").read_text())
    assert written == json.loads(json.dumps(result))
    rows = result["table"]
    arms = [a.value for a in study.Arm]
    # every arm read at T = ∞ first, then at each T of the quick configuration
    assert [r["label"] for r in rows] == [a for a in arms for _ in range(3)]
    assert [r["T"] for r in rows] == [None, 20, 4] * 4
    assert all(r["configuration"]["trained_at"] == "T = ∞" for r in rows)
    # a quick run checks no convergence, and says so in every row and table
    assert all(r["converged"] is None for r in rows)
    assert all(c["converged"] is None for c in result["convergence"])
    assert "| yes |" not in out and "| no |" not in out
    by = {(r["configuration"]["arm"], r["T"]): r for r in rows}
    for r in rows:
        gap, gap_se = r["extra"]["gap to log p_data"]
        assert gap > -4 * gap_se  # no bound above log p_data beyond its noise
        assert r["elbo_se"] > 0
    fixed_kl = [by[("fixed", T)]["extra"]["latent KL"][0] for T in (None, 20, 4)]
    assert fixed_kl == [0.0, 0.0, 0.0]  # only MuLAN pays for a z
    assert by[("mulan", None)]["extra"]["latent KL"][0] > 0
    # the shares: discretisation is 0 at T = ∞, and at T the difference of the rows' own
    # T-step minus T = ∞ bounds (arm minus fixed q); the three shares add up to the gain
    for s in result["shares"]:
        gain, ends, disc, net = (s[k][0] for k in ("gain", "ends", "discretisation", "network"))
        assert gain == pytest.approx(ends + disc + net, abs=1e-12)
        arm, T = s["arm"], s["T"]
        if T is None:
            assert disc == 0.0
            continue
        own = by[(arm, T)]["elbo"] - by[(arm, None)]["elbo"]
        base = by[("fixed", T)]["elbo"] - by[("fixed", None)]["elbo"]
        assert disc == pytest.approx(own - base, abs=1e-9)
        assert gain == pytest.approx(by[(arm, T)]["elbo"] - by[("fixed", T)]["elbo"], abs=1e-9)
    assert set(result["tables"]) == {"shares", "convergence"}


def _trained_arm(study, arm, steps: int = 30):
    torch.manual_seed(0)
    cfg = study.AdaptiveStudyConfig.quick(0)
    data = study._load(cfg)
    built = study.build_arm(arm, cfg, data.event_shape, data.likelihood())
    study.train(built, data.train, cfg, steps)  # far from converged: any network will do
    return cfg, data, built


@pytest.mark.parametrize("arm_name", ["SCALAR", "MULAN"])
def test_closed_form_ends_are_the_mean_of_the_bounds_own_draws(study, arm_name):
    """reconstruction − prior KL in closed form equals the mean of the library's one-draw
    reconstruction minus its prior KL (over z too, for MuLAN), within 4 SE."""
    _, data, built = _trained_arm(study, study.Arm[arm_name])
    model, guide = built.model, built.guide
    x = data.test[:50]
    torch.manual_seed(1)
    draws = 400
    with torch.no_grad():
        mc = torch.stack(
            [
                (lambda t: t.reconstruction - t.prior)(continuous_elbo_terms(model, x, guide=guide))
                for _ in range(draws)
            ]
        )
        gen = torch.Generator().manual_seed(2)
        closed = torch.stack(
            [
                study.closed_form_ends(model, x, study._draw_latent(model, guide, x, gen)[0])
                for _ in range(draws)
            ]
        )
    diff = (mc - closed).flatten()
    se = diff.std() / math.sqrt(diff.numel())
    assert abs(diff.mean()) < 4 * se
    # the closed form has no ε noise: without z its spread over draws is exactly 0
    if arm_name == "SCALAR":
        assert closed.std(0).max() == 0


@pytest.mark.parametrize("arm_name", ["FIXED", "PER_DIMENSION", "MULAN"])
@pytest.mark.parametrize("num_steps", [None, 5, 40])
def test_stratified_bound_with_control_variate_is_unbiased(study, arm_name, num_steps):
    """The study's estimator (closed-form ends, t stratified per datum, the control variate with
    coefficients from other data) against the library's one-sample bound, per datum: the mean
    difference is within 4 SE of 0, at T = ∞, at T = 5 (every step its own stratum) and at
    T = 40 (strata of several steps)."""
    cfg, data, built = _trained_arm(study, study.Arm[arm_name])
    model, guide = built.model, built.guide
    x = data.test[:40]
    coeffs = study.pilot_coefficients(model, guide, data.validation, num_steps, cfg)
    assert torch.isfinite(coeffs).all() and coeffs.abs().sum() > 0
    terms = study.bound_terms(
        model, guide, x, num_steps=num_steps, strata=4, seed=3, coefficients=coeffs, passes=20
    )
    assert terms.passes == 20
    gen = torch.Generator().manual_seed(4)
    torch.manual_seed(5)
    with torch.no_grad():
        plain = torch.stack(
            [
                continuous_elbo_terms(
                    model, x, generator=gen, guide=guide, num_steps=num_steps
                ).elbo
                for _ in range(200)
            ]
        )
    # per datum: the study's mean of 20 passes and the library's mean of 200 draws, independent;
    # the study's per-datum variance is read from a second, independent run of it
    again = study.bound_terms(
        model, guide, x, num_steps=num_steps, strata=4, seed=6, coefficients=coeffs, passes=20
    )
    study_var = (terms.elbo - again.elbo).pow(2) / 2
    var = study_var + plain.var(0) / plain.shape[0]
    diff = terms.elbo - plain.mean(0)
    se = var.sum().sqrt() / x.shape[0]
    assert abs(diff.mean()) < 4 * se
    # and the variance reduction is real: the study's per-datum spread of one 20-pass average
    # is below that of 20 of the library's one-sample draws
    assert study_var.mean() < plain.var(0).mean() / 20


def test_strata_cover_the_steps_once(study):
    assert study._strata(None, 4) == [(0, 4), (1, 4), (2, 4), (3, 4)]
    assert study._strata(5, 64) == [(0, 1), (1, 2), (2, 3), (3, 4)]  # every step its own
    parts = study._strata(1000, 64)
    assert parts[0][0] == 0 and parts[-1][1] == 999
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:], strict=False))
    assert {hi - lo for lo, hi in parts} <= {15, 16}


def test_control_coefficients_are_the_regression_slope_per_stratum(study):
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(3, 20_000, generator=gen, dtype=torch.float64)
    f = torch.tensor([[0.0], [1.0], [3.0]], dtype=torch.float64) * g
    f = f + 0.1 * torch.randn(3, 20_000, generator=gen, dtype=torch.float64)
    c = study.control_coefficients(f, g)
    assert torch.allclose(c, torch.tensor([0.0, 1.0, 3.0], dtype=torch.float64), atol=5e-3)
    # a stratum whose control variate is identically 0 gets coefficient 0
    assert study.control_coefficients(f, torch.zeros_like(g)).abs().max() == 0


# --- the paired convergence rule --------------------------------------------------------------


def _validation_with_shared_noise(n: int = 400):
    """Per-datum bounds b_N(x) = noise(x) − 1/N: the noise (SD 1, shared between budgets as
    common random numbers share it) dwarfs each doubling's gain 1/(2N)."""
    noise = torch.randn(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return lambda updates: noise - 1.0 / updates


def test_paired_rule_sees_a_gain_the_unpaired_rule_calls_noise(load_example):
    converge = load_example("_converge")
    bound = _validation_with_shared_noise()
    # unpaired: the SE over the data (0.05) exceeds half the first doubling's gain, 0.05 … 0.006
    _, kept, verdict = converge.doubling(
        lambda n: n,
        lambda n: (bound(n).mean().item(), bound(n).std().item() / 20),
        first_updates=10,
        max_updates=80,
    )
    assert verdict is True and kept == 20
    # paired: the difference has no noise, every doubling gains more than 2 SE: not converged
    runs, kept, verdict, gains = converge.paired_doubling(
        lambda n: n, bound, first_updates=10, max_updates=80
    )
    assert runs == [10, 20, 40, 80] and kept == 80 and verdict is False
    assert [g.gain for g in gains] == pytest.approx([1 / 20, 1 / 40, 1 / 80])
    assert all(g.se < 1e-12 for g in gains)


def test_paired_rule_stops_when_the_gain_is_within_its_noise_and_keeps_the_better(load_example):
    converge = load_example("_converge")
    gen = torch.Generator().manual_seed(1)
    shared = torch.randn(400, generator=gen, dtype=torch.float64)
    own = {n: 0.1 * torch.randn(400, generator=gen, dtype=torch.float64) for n in (10, 20, 40)}
    # the second doubling loses 0.001, far inside its paired SE (≈ 0.1 √2 / 20 = 0.007)
    means = {10: -1.0, 20: -0.5, 40: -0.501}
    runs, kept, verdict, gains = converge.paired_doubling(
        lambda n: n,
        lambda n: shared + own[n] - own[n].mean() + means[n],
        first_updates=10,
        max_updates=40,
    )
    assert runs == [10, 20, 40] and verdict is True
    assert kept == 20  # the doubling lost: the shorter run of the pair is kept
    assert gains[0].gain == pytest.approx(0.5) and gains[1].gain == pytest.approx(-0.001)
    assert 0.004 < gains[1].se < 0.01
    with pytest.raises(ValueError, match="at least 2 data"):
        converge.paired_gain(torch.zeros(1), torch.zeros(1), 1, 2)
    # without check, the same budgets and the same run, but no verdict
    assert converge.paired_doubling(
        lambda n: n,
        lambda n: shared + own[n] - own[n].mean() + means[n],
        first_updates=10,
        max_updates=40,
        check=False,
    )[1:3] == (20, None)


def test_a_bad_choice_is_named_with_the_choices(study, load_example, capsys):
    with pytest.raises(SystemExit):
        study.main(["--dataset", "mnist"])
    assert "choose from eight_gaussians, digits; got 'mnist'" in capsys.readouterr().err
    guides = load_example("study_guides")
    with pytest.raises(SystemExit):
        guides.main(["--quick", "--arms", "vae"])
    err = capsys.readouterr().err
    assert "choose from fixed, learned, learned_schedule, adaptive; got 'vae'" in err
    assert "Traceback" not in err
