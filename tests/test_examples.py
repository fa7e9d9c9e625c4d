"""The examples run with --quick, and what they print obeys the bounds it claims."""

import importlib.util
import math
from pathlib import Path

import torch

from pyrodiff.infer import elbo_terms

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quickstart_2d(tmp_path, capsys):
    torch.set_default_dtype(torch.float32)  # as a user runs it
    out = _load("quickstart_2d").main(["--quick", "--out", str(tmp_path)])
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
    for name in ("elbo.png", "step_terms.png", "samples.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_digits(tmp_path, capsys):
    torch.set_default_dtype(torch.float32)
    out = _load("digits").main(["--quick", "--out", str(tmp_path)])
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
    assert (tmp_path / "samples.png").stat().st_size > 0
