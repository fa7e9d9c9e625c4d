"""`pyrodiff train --guide adaptive`: the multivariate, input-adaptive noise process (MuLAN) as
a run of the command line, at T steps (--model diffusion) and at T = ∞ (--model continuous),
and every command that reads a run folder on it."""

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
    ADAPTIVE_LATENT_DIM,
    CONTINUOUS_NUM_STEPS,
    DIFFUSION_NUM_STEPS,
    FOURIER_EXPONENTS,
    GuideKind,
    ModelKind,
    Objective,
    RunConfig,
    adaptive_latent_dim,
    build,
)
from pyrodiff.errors import ConfigError
from pyrodiff.guides import AdaptiveNoiseGuide, ContinuousForwardGuide
from pyrodiff.infer import ContinuousELBO, DiffusionELBO, continuous_elbo_terms, iwae_bound
from pyrodiff.infer.timesteps import LowDiscrepancyTimesteps
from pyrodiff.models import AdaptiveDiffusion, Conditioning, ContinuousDiffusion
from pyrodiff.sampling import ancestral_sample
from pyrodiff.schedules import MultivariateLogSNR
from pyrodiff.train import evaluation_report, fit
from pyrodiff.train.evaluate import CONTINUOUS_EVAL_PASSES, as_chain, bound_steps

T = 4
LATENT = 2
TINY = [
    "--guide", "adaptive", "--latent-dim", str(LATENT), "--data", "eight_gaussians",
    "--T", str(T), "--width", "16", "--depth", "1", "--updates", "10", "--batch-size", "32",
    "--checkpoint-every", "4", "--no-progress", "--threads", "1",
]  # fmt: skip
TINY_CONFIG = dict(
    guide="adaptive",
    latent_dim=LATENT,
    data="eight_gaussians",
    num_steps=T,
    width=16,
    depth=1,
    updates=10,
    batch_size=32,
    checkpoint_every=4,
)


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


@contextlib.contextmanager
def float32():
    """The command line runs in torch's default float32 (the suite's default is float64)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


# --- the configuration ------------------------------------------------------------------------


def test_an_adaptive_config_chooses_the_bound_and_the_t_of_its_model():
    steps = RunConfig(guide=GuideKind.ADAPTIVE)
    infinite = RunConfig(model=ModelKind.CONTINUOUS, guide=GuideKind.ADAPTIVE)
    assert (steps.objective, steps.num_steps) == (Objective.ELBO, DIFFUSION_NUM_STEPS)
    assert (infinite.objective, infinite.num_steps) == (Objective.ELBO, CONTINUOUS_NUM_STEPS)
    # latent_dim left out stays None in the file and means ADAPTIVE_LATENT_DIM
    assert steps.latent_dim is None and adaptive_latent_dim(steps) == ADAPTIVE_LATENT_DIM == 8
    assert adaptive_latent_dim(steps.replace(latent_dim=0)) == 0


@pytest.mark.parametrize(
    "values",
    [
        {"guide": "adaptive"},
        {"guide": "adaptive", "model": "continuous", "latent_dim": 0},
        {"guide": "adaptive", "objective": "trace_elbo", "latent_dim": 3, "variance": "posterior"},
    ],
)
def test_an_adaptive_config_round_trips_through_json(values):
    config = RunConfig(**values)
    back = RunConfig.from_json(config.to_json())
    assert back == config
    assert back.guide is GuideKind.ADAPTIVE and back.latent_dim == values.get("latent_dim")


def test_model_diffusion_builds_the_adaptive_model_on_its_t_step_bound():
    model, guide, data, loss = build(RunConfig(**TINY_CONFIG))
    assert isinstance(model, AdaptiveDiffusion) and model.num_steps == T
    assert model.latent_dim == LATENT and model.conditioning is Conditioning.TIME
    schedule = model.schedule
    assert isinstance(schedule, MultivariateLogSNR)
    assert schedule.event_shape == data.event_shape and schedule.latent_dim == LATENT
    # VDM's ends, learned, one curve per dimension
    l0, l1 = schedule.endpoints(torch.zeros(1, LATENT, dtype=torch.float64))
    assert torch.allclose(l0, torch.full_like(l0, 13.3)) and torch.allclose(l1, -5.0 + 0 * l1)
    assert schedule.start.requires_grad and schedule.gap.requires_grad
    # the guide shares the model's schedule: one noise process, trained by both terms
    assert isinstance(guide, AdaptiveNoiseGuide) and guide.schedule is schedule
    assert guide.encoder.net[0].out_features == RunConfig().guide_hidden  # --guide-hidden
    assert model.denoiser.latent.in_features == LATENT
    assert type(loss) is DiffusionELBO and bound_steps(model, loss) == T


def test_model_continuous_builds_the_same_model_on_its_t_infinity_bound():
    model, guide, _, loss = build(RunConfig(**TINY_CONFIG, model="continuous"))
    assert isinstance(model, AdaptiveDiffusion) and isinstance(guide, AdaptiveNoiseGuide)
    assert isinstance(loss, ContinuousELBO) and loss.num_steps is None
    assert bound_steps(model, loss) is None


def test_latent_dim_0_is_a_schedule_per_dimension_without_z():
    model, guide, data, loss = build(RunConfig(**{**TINY_CONFIG, "latent_dim": 0}))
    assert type(model) is ContinuousDiffusion and model.conditioning is Conditioning.TIME
    assert isinstance(model.schedule, MultivariateLogSNR) and model.schedule.latent_dim == 0
    assert model.schedule.event_shape == data.event_shape
    assert isinstance(guide, ContinuousForwardGuide) and bound_steps(model, loss) == T


def test_quantised_data_give_the_adaptive_denoiser_fourier_features():
    config = RunConfig(guide="adaptive", width=4, num_steps=T)
    model = build(config).model
    assert model.denoiser.features.exponents == FOURIER_EXPONENTS
    assert model.denoiser.latent.in_features == ADAPTIVE_LATENT_DIM


# (values, the flags that say it, the fields the error names)
BAD = [
    ({"model": "hvae"}, ["--model", "hvae"], {"guide", "model"}),
    ({"objective": "simple"}, ["--objective", "simple"], {"objective"}),
    ({"objective": "hybrid"}, ["--objective", "hybrid"], {"objective"}),
    (
        {"objective": "trace_mean_field_elbo"},
        ["--objective", "trace_mean_field_elbo"],
        {"objective"},
    ),
    (
        {"model": "continuous", "objective": "trace_elbo"},
        ["--model", "continuous", "--objective", "trace_elbo"],
        {"objective", "model"},
    ),
    (
        {"latent_dim": 0, "objective": "trace_elbo"},
        ["--latent-dim", "0", "--objective", "trace_elbo"],
        {"objective", "latent_dim"},
    ),
    ({"variance": "per_step"}, ["--variance", "per_step"], {"variance"}),
    ({"variance": "beta"}, ["--variance", "beta"], {"variance"}),
    ({"num_steps": 1}, ["--T", "1"], {"num_steps"}),
]


@pytest.mark.parametrize("values, flags, fields", BAD, ids=[" ".join(b[1]) for b in BAD])
def test_what_does_not_combine_with_guide_adaptive_is_one_clear_line(
    tmp_path, values, flags, fields
):
    with pytest.raises(ConfigError) as err:
        RunConfig(guide="adaptive", data="eight_gaussians", **values)
    assert fields <= set(err.value.fields)
    out = tmp_path / "run"
    status, _, stderr = run_cli(["train", "--guide", "adaptive", "--data", "eight_gaussians",
                                 *flags, "--out", str(out)])  # fmt: skip
    lines = stderr.strip().splitlines()
    assert status == 1 and len(lines) == 1 and "Traceback" not in stderr
    assert lines[0].startswith("pyrodiff: error: ") and "--guide adaptive" in lines[0]
    assert not out.exists()


def test_hvae_refuses_latent_dim_0_which_only_the_adaptive_guide_reads():
    with pytest.raises(ConfigError, match="latent_dim >= 1"):
        RunConfig(model="hvae", latent_dim=0)


def test_the_latent_dim_bound_is_the_same_from_python_and_the_command_line(tmp_path):
    message = "latent_dim must be an integer >= 0, got -1"
    with pytest.raises(ConfigError) as err:
        RunConfig(guide="adaptive", latent_dim=-1)
    assert str(err.value) == message
    status, _, stderr = run_cli(["train", *TINY, "--latent-dim", "-1", "--out", str(tmp_path)])
    assert status == 1
    assert stderr.strip().splitlines() == [f"pyrodiff: error: --{message.replace('_', '-')}"]


# --- runs -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adaptive")
    out = {}
    for model in ("diffusion", "continuous"):
        out[model] = root / model
        printed = io.StringIO()
        with float32(), contextlib.redirect_stdout(printed):
            assert main(["train", "--model", model, *TINY, "--out", str(out[model])]) == 0
        (root / f"{model}.out").write_text(printed.getvalue())
    return out


@pytest.mark.parametrize("kind", ["diffusion", "continuous"])
def test_train_says_what_it_chose_and_trains(runs, kind):
    printed = (runs[kind].parent / f"{kind}.out").read_text().splitlines()
    assert printed[0] == (
        f"chose --objective elbo: what fits --model {kind} --guide adaptive "
        "(give the flag to choose otherwise)"
    )
    assert printed[1].startswith(f"training {kind} with an adaptive guide on eight_gaussians")


def _final_eval(run: Path) -> dict:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["kind"] == "eval"][-1]


@pytest.mark.parametrize("kind, steps", [("diffusion", T), ("continuous", None)])
def test_a_run_records_the_bound_it_trains_with_its_latent_term(runs, kind, steps):
    loaded = load_run(runs[kind])
    assert isinstance(loaded.model, AdaptiveDiffusion) and loaded.model.num_steps == T
    record = _final_eval(runs[kind])
    assert record["estimator"] == "continuous" and record.get("bound_steps") == steps
    # the bound is its four terms: each a float32 mean of its own, so they agree to float32
    # rounding of terms of up to a few thousand nats
    parts = ("reconstruction", "diffusion", "prior", "latent")
    terms = record["reconstruction"] - record["diffusion"] - record["prior"] - record["latent"]
    scale = sum(abs(record[p]) for p in parts)
    assert record["elbo"] == pytest.approx(terms, abs=8 * 2**-23 * scale)
    assert record["latent"] >= 0.0  # a KL


def _elbo_passes(loaded, x, seed, num_steps):
    """What evaluate computes, written out: CONTINUOUS_EVAL_PASSES one-sample estimates per
    datum, t from a low-discrepancy sampler on a generator seeded with the evaluation seed and
    z from the guide on torch's stream seeded likewise."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        passes = [
            continuous_elbo_terms(
                loaded.model, x, LowDiscrepancyTimesteps(), generator=gen,
                guide=loaded.guide, num_steps=num_steps,
            ).elbo
            for _ in range(CONTINUOUS_EVAL_PASSES)
        ]  # fmt: skip
    return torch.stack(passes).double().mean(0)


@pytest.mark.parametrize("kind, steps", [("diffusion", T), ("continuous", None)])
def test_evaluate_reads_the_bound_and_iwae_through_the_literal_chain(runs, kind, steps, capsys):
    run = runs[kind]
    assert main(["evaluate", str(run), "--num", "40", "--iwae", "4", "--threads", "1"]) == 0
    out = json.loads((run / "evaluation.json").read_text())
    assert out.get("bound_steps") == steps and "latent" in out
    loaded = load_run(run)
    x = loaded.built.dataset.test[:40].to(torch.float32)
    per_datum = _elbo_passes(loaded, x, out["seed"], steps)
    assert out["elbo"] == pytest.approx(per_datum.mean().item(), abs=1e-4)
    assert out["elbo_se"] == pytest.approx((per_datum.std() / 40**0.5).item(), rel=1e-4)
    # a model with a latent z has no fixed tables: IWAE reads its own T-step chain
    chain, guide = as_chain(loaded.model, loaded.guide)
    assert chain is loaded.model and guide is loaded.guide
    torch.manual_seed(out["seed"])
    with torch.no_grad():
        direct = iwae_bound(chain, guide, x, num_samples=4)
    assert out["iwae"] == pytest.approx(direct.mean, abs=1e-4)
    # against the T = ∞ bound the table says which T the chain is at
    printed = capsys.readouterr().out
    label = "IWAE-4 (at T = 4)" if steps is None else "IWAE-4 "
    assert label in printed and out.get("discretized_at") == (T if steps is None else None)
    at = "∞" if steps is None else str(steps)
    assert f"diffusion loss (T = {at})" in printed
    assert f"latent KL(q(z|x) || p(z))    {out['latent']:.4f} nats" in printed


def test_an_iwae_too_costly_through_the_literal_chain_is_one_line_not_a_failure(runs, capsys):
    run = runs["diffusion"]
    k = 2**24  # T · K · N = 4 · 2^24 · 1 network inputs, over the budget
    assert main(["evaluate", str(run), "--num", "1", "--iwae", str(k), "--threads", "1"]) == 0
    out = json.loads((run / "evaluation.json").read_text())
    assert "iwae" not in out and out["iwae_note"].startswith("not computed: IWAE-")
    assert f"{T} · {k} · 1 = {T * k:,} network inputs" in out["iwae_note"]
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("IWAE")]
    assert len(rows) == 1 and "not computed" in rows[0]


def test_a_schedule_per_dimension_without_z_is_read_through_its_discrete_tables():
    model, guide, data, loss = build(RunConfig(**{**TINY_CONFIG, "latent_dim": 0}))
    chain, chain_guide = as_chain(model, guide)
    assert chain.schedule.event_shape == model.event_shape  # one chain per dimension
    report = evaluation_report(model, guide, data.test[:8], iwae=2, num_steps=T)
    assert report.iwae is not None and report.iwae_note is None
    assert np.isfinite(report.elbo.elbo) and report.elbo.bound_steps == T
    assert report.iwae.num_samples == 2 and np.isfinite(report.iwae.mean)
    # and the samplers walk the same tables
    draws = ancestral_sample(chain, 16, generator=torch.Generator().manual_seed(0))
    assert draws.shape == (16, 2) and torch.isfinite(draws).all()


@pytest.mark.parametrize("kind", ["diffusion", "continuous"])
def test_sample_draws_z_and_the_models_own_chain(runs, kind):
    run = runs[kind]
    assert main(["sample", str(run), "--num", "16", "--seed", "3", "--threads", "1"]) == 0
    first = np.load(run / "samples-ancestral.npy")
    assert main(["sample", str(run), "--num", "16", "--seed", "3", "--threads", "1"]) == 0
    assert first.shape == (16, 2) and np.isfinite(first).all()
    np.testing.assert_array_equal(first, np.load(run / "samples-ancestral.npy"))
    argv = ["sample", str(run), "--num", "8", "--sampler", "strided", "--sampler-steps", "2"]
    assert main([*argv, "--threads", "1"]) == 0
    assert np.load(run / "samples-strided2.npy").shape == (8, 2)
    assert (run / "figures" / "samples-strided2.png").is_file()


def test_the_sampler_runs_the_reverse_kernels_on_the_s_step_grid(runs, monkeypatch):
    loaded = load_run(runs["diffusion"])
    seen = []
    kernel = AdaptiveDiffusion.reverse_kernel_moments

    def spy(self, x, z, step, num_steps=None):
        seen.append((step, num_steps))
        return kernel(self, x, z, step, num_steps=num_steps)

    monkeypatch.setattr(AdaptiveDiffusion, "reverse_kernel_moments", spy)
    argv = ["sample", str(loaded.path), "--num", "4", "--sampler", "strided", "--sampler-steps"]
    assert main([*argv, "3", "--threads", "1"]) == 0
    assert seen == [(3, 3), (2, 3)]
    seen.clear()
    assert main(["sample", str(loaded.path), "--num", "4", "--threads", "1"]) == 0
    assert seen == [(t, T) for t in range(T, 1, -1)]


def test_ddim_and_bad_sampler_steps_are_one_line(runs):
    run = str(runs["diffusion"])
    for argv, says in (
        (["--sampler", "ddim"], "--sampler ddim needs a fixed noise schedule"),
        (["--sampler", "strided", "--sampler-steps", "1"], "--sampler-steps must be"),
    ):
        status, _, err = run_cli(["sample", run, *argv, "--threads", "1"])
        assert status == 1 and err.strip().splitlines() == [f"pyrodiff: error: {err[17:].strip()}"]
        assert says in err and "Traceback" not in err


def test_compare_and_plot_read_adaptive_runs(runs):
    status, out, _ = run_cli(["compare", str(runs["diffusion"]), str(runs["continuous"])])
    assert status == 0
    assert "diffusion" in out and "continuous" in out and "-H (data)" in out
    status, out, _ = run_cli(["plot", str(runs["continuous"])])
    assert status == 0 and (runs["continuous"] / "figures" / "elbo.png").is_file()


def test_an_interrupted_adaptive_run_resumes_bit_identically(tmp_path):
    """Stopped by a crash after update 7 (last checkpoint at 4) and resumed by the command line,
    a run ends with the parameters, EMA and optimizer state of one never stopped."""
    argv = ["train", "--model", "continuous", *TINY]
    with float32(), contextlib.redirect_stdout(io.StringIO()):
        assert main([*argv, "--out", str(tmp_path / "ref")]) == 0
        config = RunConfig(**TINY_CONFIG, model="continuous")
        assert config == RunConfig.from_json(tmp_path / "ref")
        built = build(config)
        run = tmp_path / "run"

        class Crash(Exception):
            pass

        def crash_at_7(step, loss):
            if step == 7:
                raise Crash

        with pytest.raises(Crash):
            fit(built.model, built.guide, built.dataset, loss=built.loss,
                **config.fit_options(), **config.checkpoint_options(run), config=config,
                progress=False, callback=crash_at_7)  # fmt: skip
        assert main(["train", "--resume", str(run), "--no-progress", "--threads", "1"]) == 0
    ref = torch.load(tmp_path / "ref" / "checkpoint.pt", weights_only=True)
    got = torch.load(run / "checkpoint.pt", weights_only=True)
    assert got["step"] == ref["step"] == 10
    for part in ("model", "guide"):
        assert ref[part].keys() == got[part].keys()
        for name in ref[part]:
            assert torch.equal(ref[part][name], got[part][name]), (part, name)
    assert torch.equal(
        torch.cat([v.flatten() for v in ref["ema"]["shadow"].values()]),
        torch.cat([v.flatten() for v in got["ema"]["shadow"].values()]),
    )


def test_a_continuous_time_model_is_evaluated_on_the_bound_its_loss_trains():
    from pyro.infer import Trace_ELBO

    from pyrodiff import ContinuousDiffusion, Diffusion, LinearLogSNR, linear_schedule
    from pyrodiff.networks import MLPDenoiser

    scalar = ContinuousDiffusion(MLPDenoiser(2, 8, 1), LinearLogSNR(), num_steps=7)
    assert bound_steps(scalar, ContinuousELBO()) is None  # T = ∞
    assert bound_steps(scalar, ContinuousELBO(num_steps=5)) == 5
    assert bound_steps(scalar, DiffusionELBO()) == bound_steps(scalar, Trace_ELBO()) == 7
    discrete = Diffusion(MLPDenoiser(2, 8, 1), linear_schedule(3))
    assert bound_steps(discrete, DiffusionELBO()) is None  # its bound has its own T


def test_the_guides_page_builds_the_adaptive_pair_as_written():
    """docs/guides.md's block, run as written: a pair whose guide shares the model's schedule
    and whose T = ∞ loss is one estimate of −bound, a finite number."""
    import re

    page = (Path(__file__).resolve().parents[1] / "docs" / "guides.md").read_text()
    section = page.split("## An adaptive noise process (MuLAN)", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"^```python\n(.*?)^```$", section, re.S | re.M)
    scope: dict = {}
    exec(compile(block, "docs/guides.md", "exec"), scope)  # noqa: S102 (our own page)
    assert scope["guide"].schedule is scope["model"].schedule
    loss = scope["loss_fn"](torch.randn(16, 2))
    assert torch.isfinite(loss)
