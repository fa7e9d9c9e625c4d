"""The examples run with --quick, and what they print obeys the bounds it claims."""

import argparse
import math
import sys
from pathlib import Path

import pytest
import torch

from pyrodiff.infer import elbo_terms

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_quickstart_2d(tmp_path, capsys, load_example):
    torch.set_default_dtype(torch.float32)  # as a user runs it
    out = load_example("quickstart_2d").main(["--quick", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert f"{out['final']['elbo']:.4f}" in printed and "gap" in printed
    # E_p[ELBO] ≤ E_p[log p_θ] ≤ −H(p) (the bound, then Gibbs' inequality): the test-set gap
    # must be positive up to the standard error of the test mean
    x = out["data"].test
    with torch.no_grad():
        elbo = elbo_terms(out["model"], out["guide"], x).elbo.double()
    se = elbo.std().item() / math.sqrt(elbo.numel())
    assert -out["entropy"] - elbo.mean().item() > -4 * se
    assert out["gap"] > -4 * se
    assert out["samples"].shape == (2000, 2) and torch.isfinite(out["samples"]).all()
    for name in ("quickstart_elbo.png", "quickstart_step_terms.png", "quickstart_samples.png"):
        assert (tmp_path / name).stat().st_size > 0


@pytest.fixture
def two_threads():
    """torch at two threads, as a user's process starts on two cores; restored afterwards."""
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


def test_digits(tmp_path, capsys, load_example, two_threads):
    torch.set_default_dtype(torch.float32)
    out = load_example("digits").main(["--quick", "--out", str(tmp_path)])
    assert torch.get_num_threads() == 1  # as every example: one thread
    printed = capsys.readouterr().out
    final = out["final"]
    # bits/dim is −ELBO / (D ln 2) of the same evaluation, on the integer-level scale
    expected = -final["elbo"] / (out["num_dims"] * math.log(2))
    assert math.isclose(final["bits_per_dim"], expected, rel_tol=1e-6)
    assert f"{final['bits_per_dim']:.4f}" in printed
    # a discretised decoder gives probabilities: −log P ≥ 0, so bits/dim ≥ 0 for every datum
    assert (out["raw"].bits_per_dim() >= 0).all()
    levels = (out["samples"] + 1) * 8  # samples sit on the 17 levels of [−1, 1]
    assert torch.allclose(levels, levels.round(), atol=1e-4)
    assert (tmp_path / "digits_samples.png").stat().st_size > 0


def test_outputs_go_to_outputs_unless_docs_are_asked_for():
    sys.path.insert(0, str(EXAMPLES))
    try:
        import _outputs
    finally:
        sys.path.remove(str(EXAMPLES))
    parser = argparse.ArgumentParser()
    _outputs.add_output_arguments(parser, "study_x")
    root = EXAMPLES.parent
    default = _outputs.outputs(parser.parse_args([]), "study_x")
    assert default.figures == root / "outputs" / "study_x"
    assert default.results == root / "outputs" / "study_x" / "study_x.json"
    docs = _outputs.outputs(parser.parse_args(["--write-docs"]), "study_x")
    assert docs.figures == root / "docs" / "figures"
    assert docs.results == root / "docs" / "results" / "study_x.json"
    own = _outputs.outputs(parser.parse_args(["--out", "/tmp/x"]), "study_x")
    assert own.figures == Path("/tmp/x") and own.results == Path("/tmp/x/study_x.json")
    with pytest.raises(SystemExit):  # one or the other
        parser.parse_args(["--out", "/tmp/x", "--write-docs"])
    # outputs/ is ignored by git, so a default run leaves the tree clean
    assert "outputs/" in (root / ".gitignore").read_text().split()


def test_latent_diffusion(tmp_path, capsys, load_example):
    """The VAE with a diffusion prior and the one with N(0, I) train and report their test
    bounds; bits/dim is −ELBO / (64 ln 2) of the printed ELBO, and the gain is their paired
    difference."""
    torch.set_default_dtype(torch.float32)
    out = load_example("latent_diffusion").main(["--quick", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    for name in ("diffusion", "normal"):
        r = out[name]
        assert math.isfinite(r["test_elbo"]) and r["test_se"] > 0
        assert r["test_bits_per_dim"] == pytest.approx(-r["test_elbo"] / (64 * math.log(2)))
        assert f"{r['test_bits_per_dim']:.4f} bits/dim" in printed
    assert out["gain_nats"] == pytest.approx(
        out["diffusion"]["test_elbo"] - out["normal"]["test_elbo"], abs=1e-3
    )
    assert (tmp_path / "latent_diffusion.json").stat().st_size > 0


def test_guide_swap_adaptive_arm_scores_the_bound_of_its_own_chain(load_example):
    """The fourth arm of examples/guide_swap.py: MuLAN's q with its z-conditioned model,
    starting at the linear schedule's ends, trained as the others (Trace_ELBO, the literal
    chain). The example scores it through Pyro traces; the same T-step bound read in closed
    form at one network call per datum (continuous_elbo_terms) must agree within noise."""
    from pyrodiff.guides import AdaptiveNoiseGuide
    from pyrodiff.infer import continuous_elbo_terms, elbo_estimate
    from pyrodiff.models import AdaptiveDiffusion
    from pyrodiff.schedules import linear_schedule

    ex = load_example("guide_swap")
    train, test, lik, D = ex.load(ex.DataKind.MOONS, quick=True)
    T, hidden = 4, 16
    model, guide = ex.build_arm(ex.GuideKind.ADAPTIVE, D, T, lik, hidden, seed=0)
    assert isinstance(model, AdaptiveDiffusion) and isinstance(guide, AdaptiveNoiseGuide)
    assert guide.schedule is model.schedule and model.num_steps == T
    lam = linear_schedule(T).log_snr
    start, end = model.schedule.endpoints(torch.zeros(1, ex.ADAPTIVE_LATENT_DIM))
    assert torch.allclose(start, torch.full_like(start, lam[1].item()))
    assert torch.allclose(end, torch.full_like(end, lam[T].item()))
    ex.train_pair(model, guide, train, 15, 32, 2e-3, 0)
    torch.manual_seed(1)
    with torch.no_grad():
        traced = elbo_estimate(model, guide, test, 16)
        one_call = torch.stack(
            [continuous_elbo_terms(model, test, guide=guide, num_steps=T).elbo for _ in range(16)]
        ).double()
    # two unbiased estimates of the same mean bound over the same data, from independent draws:
    # their difference has the Monte Carlo SE of each (the data's own spread is common to both)
    n = one_call.shape[1]
    one_call_mc_se = (one_call.var(0) / one_call.shape[0]).sum().sqrt().item() / n
    se = math.hypot(traced.mc_stderr_of_mean, one_call_mc_se)
    diff = traced.mean - one_call.mean().item()
    assert abs(diff) < 4 * se, (traced.mean, one_call.mean().item(), se)
