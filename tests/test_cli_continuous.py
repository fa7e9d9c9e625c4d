"""`pyrodiff train --model continuous`: the T = ∞ model through the command line, and its
discrete tools (IWAE, PSIS, samplers) reading it as a chain of num_steps steps."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pyrodiff.cli import main
from pyrodiff.cli.runs import load_run
from pyrodiff.config import (
    CONTINUOUS_NUM_STEPS,
    GuideKind,
    ModelKind,
    Objective,
    RunConfig,
)
from pyrodiff.errors import ConfigError
from pyrodiff.guides import ContinuousForwardGuide, ForwardGuide
from pyrodiff.infer import ContinuousELBO, continuous_elbo_terms, iwae_bound
from pyrodiff.infer.timesteps import LowDiscrepancyTimesteps
from pyrodiff.models import ContinuousDiffusion, Diffusion
from pyrodiff.train.evaluate import CONTINUOUS_EVAL_PASSES

TINY = [
    "train", "--model", "continuous", "--data", "eight_gaussians", "--T", "8",
    "--width", "16", "--depth", "1", "--updates", "10", "--batch-size", "32",
    "--no-progress", "--threads", "1",
]  # fmt: skip


def test_a_continuous_config_chooses_the_fixed_forward_process_and_its_bound():
    config = RunConfig(model=ModelKind.CONTINUOUS)
    assert (config.guide, config.objective, config.num_steps) == (
        GuideKind.FIXED,
        Objective.ELBO,
        CONTINUOUS_NUM_STEPS,
    )
    assert {"guide", "objective", "num_steps"} <= set(config.chosen_fields)


@pytest.mark.parametrize(
    "change, field",
    [({"guide": GuideKind.LEARNED}, "guide"), ({"objective": Objective.SIMPLE}, "objective")],
)
def test_a_continuous_config_refuses_a_guide_or_objective_it_cannot_use(change, field):
    with pytest.raises(ConfigError) as err:
        RunConfig(model=ModelKind.CONTINUOUS, **change)
    assert field in err.value.fields


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "continuous"
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            assert main([*TINY, "--out", str(out)]) == 0
    finally:
        torch.set_default_dtype(old)
    return out


def test_the_run_holds_a_continuous_model_trained_on_its_t_infinity_bound(run):
    loaded = load_run(run)
    assert isinstance(loaded.model, ContinuousDiffusion)
    assert isinstance(loaded.guide, ContinuousForwardGuide)
    assert isinstance(loaded.built.loss, ContinuousELBO)
    final = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert final["estimator"] == "continuous"
    # the bound is its three terms, whatever the noise; each is a float32 mean taken on its own,
    # so they agree to float32 rounding of terms of ~20 nats: 2^-23 · 20 ≈ 2.4e-6
    terms = final["reconstruction"] - final["diffusion"] - final["prior"]
    scale = abs(final["reconstruction"]) + abs(final["diffusion"]) + abs(final["prior"])
    assert final["elbo"] == pytest.approx(terms, abs=4 * 2**-23 * scale)


def test_evaluate_reads_the_t_infinity_bound_and_the_chain_at_num_steps(run, capsys):
    argv = ["evaluate", str(run), "--num", "40", "--iwae", "4", "--threads", "1"]
    assert main(argv) == 0
    out = json.loads((run / "evaluation.json").read_text())
    assert out["estimator"] == "continuous" and out["discretized_at"] == 8
    loaded = load_run(run)
    x = loaded.built.dataset.test[:40].to(torch.float32)
    # the printed ELBO is the mean of CONTINUOUS_EVAL_PASSES one-sample estimates per datum
    gen = torch.Generator().manual_seed(out["seed"])  # the run's evaluation seed
    with torch.no_grad():
        passes = [
            continuous_elbo_terms(loaded.model, x, LowDiscrepancyTimesteps(), generator=gen).elbo
            for _ in range(CONTINUOUS_EVAL_PASSES)
        ]
    per_datum = torch.stack(passes).double().mean(0)
    assert out["elbo"] == pytest.approx(per_datum.mean().item(), abs=1e-4)
    # its SE is the spread over data of each datum's mean estimate
    assert out["elbo_se"] == pytest.approx((per_datum.std() / 40**0.5).item(), rel=1e-4)
    # IWAE-4 reads the model as the T = 8 chain it discretises to, with the forward chain over
    # that discretisation as the guide
    chain, guide = loaded.chain()
    assert isinstance(chain, Diffusion) and isinstance(guide, ForwardGuide)
    assert chain.num_steps == 8 and chain.denoiser.denoiser is loaded.model.denoiser
    torch.manual_seed(out["seed"])
    with torch.no_grad():
        direct = iwae_bound(chain, guide, x, num_samples=4)
    assert out["iwae"] == pytest.approx(direct.mean, abs=1e-4)
    assert "IWAE-4 (at T = 8)" in capsys.readouterr().out


def test_sample_draws_from_the_discretised_chain(run):
    assert main(["sample", str(run), "--num", "16", "--sampler", "ddim", "--threads", "1"]) == 0
    samples = np.load(run / "samples-ddim1-eta0.npy")
    assert samples.shape == (16, 2) and np.isfinite(samples).all()
