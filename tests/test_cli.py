"""The pyrodiff command end to end on a tiny 2-D run: what each subcommand writes, and that
what it reports is the model's own numbers (the checkpoint and its EMA loaded faithfully)."""

import contextlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import pyrodiff.train
from pyrodiff.cli import main
from pyrodiff.cli.runs import load_run
from pyrodiff.config import RunConfig
from pyrodiff.infer import elbo_terms, psis_diagnostic
from pyrodiff.train.evaluate import EVAL_SEED_OFFSET
from pyrodiff.train.history import History

TINY = [
    "--data", "eight_gaussians", "--T", "4", "--width", "16", "--depth", "1",
    "--updates", "12", "--batch-size", "32", "--warmup-steps", "2", "--ema-decay", "0.8",
    "--checkpoint-every", "6", "--no-progress", "--threads", "1",
]  # fmt: skip


def _train(out: Path, *extra: str) -> int:
    return main(["train", *TINY, "--out", str(out), *extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, str]:
    """One tiny run shared by the tests (float32, as the command line trains)."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    printed = io.StringIO()
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        with contextlib.redirect_stdout(printed):
            assert _train(out) == 0
    finally:
        torch.set_default_dtype(old)
    return out, printed.getvalue()


@pytest.fixture
def run(trained) -> Path:
    return trained[0]


def test_train_writes_a_complete_run_folder(run, capsys):
    assert {p.name for p in run.iterdir()} >= {
        "config.json",
        "metrics.jsonl",
        "checkpoint.pt",
        "figures",
    }
    cfg = RunConfig.from_json(run)
    assert (cfg.data, cfg.num_steps, cfg.width, cfg.updates, cfg.ema_decay) == (
        "eight_gaussians",
        4,
        16,
        12,
        0.8,
    )
    history = History.load(run / "metrics.jsonl")
    assert [r["step"] for r in history.train] == list(range(1, 13))
    final = history.final_eval
    assert final["step"] == 12 and len(final["per_step_loss"]) == 4
    assert (run / "figures" / "elbo.png").stat().st_size > 0
    assert (run / "figures" / "step_terms.png").stat().st_size > 0


def test_train_prints_the_final_validation_and_test_elbo(trained):
    run, printed = trained
    history = History.load(run / "metrics.jsonl")
    # the test split is evaluated once, at the end; validation is what training looks at
    assert [r["split"] for r in history.evals].count("test") == 1
    for split in ("validation", "test"):
        final = history.final_eval_on(split)
        assert final["step"] == 12
        line = f"{split} ELBO {final['elbo']:.4f} ± {final['elbo_se']:.4f} nats/datum"
        assert line in printed.splitlines()
    assert f"run folder: {run}" in printed


@pytest.mark.parametrize("split", [[], ["--split", "test"], ["--split", "validation"]])
def test_evaluate_prints_the_numbers_training_printed(trained, capsys, split):
    """By default evaluate draws the noise of fit's own evaluation of the split (seed + the
    evaluation offset) on the same parameters (the EMA ones, from the checkpoint): the same
    numbers, exactly, and the same printed ELBO ± SE. A checkpoint or EMA loaded wrongly, or
    other noise, would not give them. The default split is test."""
    run, printed_by_train = trained
    assert main(["evaluate", str(run), "--threads", "1", *split]) == 0
    result = json.loads((run / "evaluation.json").read_text())
    name = split[-1] if split else "test"
    final = History.load(run / "metrics.jsonl").final_eval_on(name)
    assert result["ema"] is True and result["step"] == 12 and result["num_data"] == 2000
    assert result["split"] == name
    assert result["seed"] == RunConfig.from_json(run).seed + EVAL_SEED_OFFSET
    for key in ("elbo", "elbo_se", "per_step_loss", "reconstruction", "prior"):
        assert result[key] == final[key], key
    trained_line = next(ln for ln in printed_by_train.splitlines() if ln.startswith(f"{name} ELBO"))
    number = trained_line.removeprefix(f"{name} ELBO ")
    out = capsys.readouterr().out
    assert any(
        ln.startswith("ELBO ") and ln.split(None, 1)[1] == number for ln in out.splitlines()
    ), (number, out)
    assert "the same noise" in out


def test_evaluate_with_other_noise_says_so_and_agrees_within_the_se(run, capsys):
    """Another seed draws new evaluation noise: the output says so, and the ELBO moves by
    noise only (the same parameters and data): within 4 SEs of the paired difference."""
    final = History.load(run / "metrics.jsonl").final_eval_on("test")
    assert main(["evaluate", str(run), "--seed", "0", "--threads", "1"]) == 0
    result = json.loads((run / "evaluation.json").read_text())
    assert result["seed"] == 0 and result["elbo"] != final["elbo"]
    assert abs(result["elbo"] - final["elbo"]) < 4 * (result["elbo_se"] + final["elbo_se"])
    assert "new evaluation noise" in capsys.readouterr().out
    # a subset draws other noise for its data too
    assert main(["evaluate", str(run), "--num", "50", "--threads", "1"]) == 0
    assert "new evaluation noise" in capsys.readouterr().out


def test_evaluate_prints_the_gap_to_the_data_density_with_its_paired_se(run, capsys):
    """On data with an exact density the headline number is log p_data − ELBO per datum: its
    mean and the SE of the per-datum differences (paired), not the two SEs combined."""
    from pyrodiff.train import evaluate_elbo

    assert main(["evaluate", str(run), "--num", "300", "--threads", "1"]) == 0
    result = json.loads((run / "evaluation.json").read_text())
    loaded = load_run(run)
    dataset = loaded.built.dataset
    x = dataset.test[:300].to(torch.float32)
    with torch.no_grad():
        elbo = evaluate_elbo(
            loaded.model, loaded.guide, x, num_levels=None, seed=result["seed"]
        ).per_datum
    log_p = dataset.density.log_prob(x).double()
    diff = log_p - elbo
    assert elbo.mean().item() == pytest.approx(result["elbo"], rel=1e-6)
    assert result["gap_to_data"] == pytest.approx(diff.mean().item(), rel=1e-12)
    assert result["gap_to_data_se"] == pytest.approx(diff.std().item() / 300**0.5, rel=1e-12)
    assert result["log_p_data"] == pytest.approx(log_p.mean().item(), rel=1e-12)
    out = capsys.readouterr().out
    gap = f"{result['gap_to_data']:.4f} ± {result['gap_to_data_se']:.4f} nats/datum"
    assert any(ln.startswith("gap log p_data - ELBO") and gap in ln for ln in out.splitlines())


def test_evaluate_raw_parameters_differ_from_the_ema(run):
    ema = load_run(run)
    raw = load_run(run, use_ema=False)
    assert ema.used_ema and not raw.used_ema
    w = "denoiser.inp.weight"
    assert not torch.equal(ema.model.state_dict()[w], raw.model.state_dict()[w])


def test_evaluate_iwae_is_at_least_the_elbo_in_expectation(run):
    """IWAE-K ≥ ELBO for every datum in expectation (Burda et al.); with 64 data the mean gap
    must not be negative beyond 4 standard errors of its own estimate."""
    assert main(["evaluate", str(run), "--num", "64", "--iwae", "16", "--threads", "1"]) == 0
    result = json.loads((run / "evaluation.json").read_text())
    loaded = load_run(run)
    x = loaded.built.dataset.test[:64]
    torch.manual_seed(1)
    elbo = elbo_terms(loaded.model, loaded.guide, x).elbo
    se = (elbo.var() / 64).sqrt().item() + result["iwae_se"]
    assert result["iwae"] - elbo.mean().item() > -4 * se
    assert result["iwae_k"] == 16
    # seeded: the same command gives the same numbers
    assert main(["evaluate", str(run), "--num", "64", "--iwae", "16", "--threads", "1"]) == 0
    assert json.loads((run / "evaluation.json").read_text())["iwae"] == result["iwae"]


def test_evaluate_psis_reads_the_first_psis_num_data_with_psis_samples_draws(run):
    """k̂ is per datum: the command fits it on the first --psis-num data evaluated, from
    --psis-samples chains each, and says so; the values are psis_diagnostic's on that subset
    with the command's seed."""
    argv = ["evaluate", str(run), "--psis", "--psis-num", "5", "--psis-samples", "60"]
    assert main([*argv, "--threads", "1"]) == 0
    result = json.loads((run / "evaluation.json").read_text())
    assert (result["psis_num_data"], result["psis_num_samples"]) == (5, 60)
    loaded = load_run(run)
    assert result["num_data"] == loaded.built.dataset.test.shape[0]  # the ELBO reads it all
    x = loaded.built.dataset.test[:5]
    torch.manual_seed(result["seed"])
    with torch.no_grad():
        khat = psis_diagnostic(loaded.model, loaded.guide, x, num_samples=60).khat
    assert result["psis_khat_max"] == pytest.approx(float(khat.max()), abs=1e-6)
    assert result["psis_khat_mean"] == pytest.approx(float(khat.mean()), abs=1e-6)


def test_evaluate_says_what_the_second_half_of_the_chain_costs(run, capsys):
    """The table's "-ELBO at t > T/2" is the sum of the per-step losses L_{t-1} for t > T/2
    from evaluation.json (T = 4 here: L_2 + L_3, the terms at t = 3 and 4)."""
    assert main(["evaluate", str(run), "--threads", "1"]) == 0
    per_step = json.loads((run / "evaluation.json").read_text())["per_step_loss"]
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "-ELBO at t > 2" in ln)
    assert float(line.split()[-2]) == pytest.approx(per_step[2] + per_step[3], abs=1e-4)


@pytest.mark.parametrize("flag, value", [("--psis-num", "0"), ("--psis-samples", "49")])
def test_evaluate_refuses_a_psis_subset_it_cannot_fit(run, capsys, flag, value):
    assert main(["evaluate", str(run), "--psis", flag, value]) != 0
    assert flag in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, name",
    [
        ([], "samples-ancestral.npy"),
        (["--sampler", "strided", "--sampler-steps", "2"], "samples-strided2.npy"),
        (["--sampler", "ddim", "--sampler-steps", "3", "--eta", "0"], "samples-ddim3-eta0.npy"),
    ],
)
def test_sample_writes_npy_and_png_and_is_reproducible(run, args, name):
    argv = ["sample", str(run), "--num", "20", "--seed", "3", "--threads", "1", *args]
    assert main(argv) == 0
    first = np.load(run / name)
    assert first.shape == (20, 2) and np.isfinite(first).all()
    assert (run / "figures" / name.replace(".npy", ".png")).stat().st_size > 0
    assert main(argv) == 0
    np.testing.assert_array_equal(np.load(run / name), first)
    other = run.parent / f"other-{name}"
    assert main([*argv, "--seed", "4", "--out", str(other)]) == 0  # the last --seed wins
    assert not np.array_equal(np.load(other), first)


def test_sample_digits_writes_integer_levels(tmp_path):
    out = tmp_path / "d"
    argv = ["train", "--T", "2", "--width", "8", "--updates", "1", "--batch-size", "4",
            "--warmup-steps", "0", "--no-progress", "--threads", "1", "--out", str(out),
            "--eval-batch-budget", "4096"]  # fmt: skip
    assert main(argv) == 0
    assert main(["sample", str(out), "--num", "6", "--threads", "1"]) == 0
    levels = np.load(out / "samples-ancestral.npy")
    assert levels.shape == (6, 1, 8, 8) and levels.dtype.kind == "i"
    assert levels.min() >= 0 and levels.max() <= 16
    # images: a grid of 64 by default
    assert main(["sample", str(out), "--threads", "1"]) == 0
    assert np.load(out / "samples-ancestral.npy").shape == (64, 1, 8, 8)


def test_compare_and_plot(run, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(run, other)
    figure = tmp_path / "cmp.png"
    assert main(["compare", str(run), str(other), "--out", str(figure)]) == 0
    table = capsys.readouterr().out
    assert figure.stat().st_size > 0
    final = History.load(run / "metrics.jsonl").final_eval
    lines = [line for line in table.splitlines() if line.startswith(("tiny ", "other "))]
    assert len(lines) == 2 and all(f"{final['elbo']:.4f}" in line for line in lines)
    # the columns to choose on: the last validation ELBO, and the best one with its update
    history = History.load(run / "metrics.jsonl")
    val = [r for r in history.evals if r["split"] == "validation"]
    best = max(val, key=lambda r: r["elbo"])
    assert all(f"{val[-1]['elbo']:.4f}" in line for line in lines)
    assert all(f"{best['elbo']:.4f} ({best['step']})" in line for line in lines)
    (other / "figures" / "elbo.png").unlink()
    assert main(["plot", str(other)]) == 0
    assert (other / "figures" / "elbo.png").stat().st_size > 0
    assert (other / "figures" / "step_terms.png").stat().st_size > 0


def test_resume_after_ctrl_c_gives_the_uninterrupted_parameters(run, tmp_path, monkeypatch, capsys):
    torch.set_default_dtype(torch.float32)  # as the shared run was trained
    original_fit = pyrodiff.train.fit

    def interrupted_fit(*args, **kwargs):
        def stop(step, loss):
            if step == 5:
                raise KeyboardInterrupt

        return original_fit(*args, **kwargs, callback=stop)

    resumed = tmp_path / "resumed"
    monkeypatch.setattr(pyrodiff.train, "fit", interrupted_fit)
    assert _train(resumed) == 130
    assert "--resume" in capsys.readouterr().out
    monkeypatch.setattr(pyrodiff.train, "fit", original_fit)
    assert main(["train", "--resume", str(resumed), "--no-progress", "--threads", "1"]) == 0
    a = torch.load(run / "checkpoint.pt", weights_only=True)
    b = torch.load(resumed / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 12
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


def test_dry_run_checks_the_default_configuration_without_writing(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["train", "--dry-run", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert RunConfig.from_json(printed[: printed.rindex("}") + 1]) == RunConfig()
    assert not out.exists()


def test_config_file_with_overrides(run, tmp_path, capsys):
    out = tmp_path / "again"
    argv = ["train", "--config", str(run / "config.json"), "--seed", "5", "--dry-run"]
    assert main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    cfg = RunConfig.from_json(printed[: printed.rindex("}") + 1])
    assert cfg == RunConfig.from_json(run).replace(seed=5)


def _dry_run(capsys, *flags: str) -> tuple[str, RunConfig]:
    assert main(["train", "--dry-run", *flags]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    start = printed.index("{")
    return printed[:start], RunConfig.from_json(printed[start : printed.rindex("}") + 1])


def test_twenty_updates_with_every_other_flag_at_its_default(tmp_path, capsys):
    """The defaults that depend on the run's length (warm-up, evaluation and checkpoint
    intervals) follow --updates: the digits default is a valid run at 20 updates, and a 20-update
    run with every other flag at its default trains (on 2-D data, to keep the suite fast)."""
    _, cfg = _dry_run(capsys, "--updates", "20", "--out", str(tmp_path / "never"))
    assert cfg == RunConfig(updates=20) and cfg.warmup_steps == 1
    out = tmp_path / "run"
    assert main(["train", "--updates", "20", "--data", "eight_gaussians", "--no-progress",
                 "--out", str(out)]) == 0  # fmt: skip
    history = History.load(out / "metrics.jsonl")
    assert history.final_step == 20 and history.final_eval_on("test") is not None


def test_a_learned_guide_gets_the_objective_that_fits_and_says_so(tmp_path, capsys):
    said, cfg = _dry_run(capsys, "--guide", "learned", "--out", str(tmp_path / "n"))
    assert cfg.objective.value == "trace_elbo"
    assert said.strip().splitlines() == [
        "chose --objective trace_elbo: what fits --model diffusion --guide learned "
        "(give the flag to choose otherwise)"
    ]


def test_an_hvae_gets_its_guide_objective_and_depth_and_says_so(tmp_path, capsys):
    from pyrodiff.config import HVAE_NUM_STEPS

    said, cfg = _dry_run(capsys, "--model", "hvae", "--out", str(tmp_path / "n"))
    assert (cfg.guide.value, cfg.objective.value, cfg.num_steps) == (
        "learned", "trace_elbo", HVAE_NUM_STEPS
    )  # fmt: skip
    assert said.strip().splitlines() == [
        f"chose --guide learned, --objective trace_elbo, --T {HVAE_NUM_STEPS}: what fits "
        "--model hvae (give the flag to choose otherwise)"
    ]
    # the plain default says nothing: its choices are the documented defaults
    said, _ = _dry_run(capsys, "--out", str(tmp_path / "n"))
    assert "chose" not in said


def test_auto_asks_for_the_fitting_default_and_off_means_none_or_at_the_end(tmp_path, capsys):
    _, cfg = _dry_run(
        capsys, "--model", "hvae", "--T", "auto", "--guide", "auto", "--warmup-steps", "off",
        "--eval-every", "off", "--checkpoint-every", "none", "--out", str(tmp_path / "n"),
    )  # fmt: skip
    assert cfg == RunConfig(model="hvae", warmup_steps=0, eval_every=0, checkpoint_every=0)
    # 0 reaches fit as "at the end only"
    assert cfg.fit_options()["eval_every"] is None
    assert cfg.checkpoint_options(tmp_path)["checkpoint_every"] is None


def test_the_old_flag_name_steps_means_updates_and_warns(tmp_path, capsys, run):
    assert main(["train", "--dry-run", "--steps", "30", "--out", str(tmp_path / "n")]) == 0
    captured = capsys.readouterr()
    assert "--steps is deprecated; use --updates" in captured.err
    start = captured.out.index("{")
    assert RunConfig.from_json(captured.out[start : captured.out.rindex("}") + 1]).updates == 30
    # --steps has one meaning, train's updates: under sample (where it once meant
    # --sampler-steps) it is refused with the flag to use, and nothing is drawn
    out = tmp_path / "s.npy"
    argv = ["sample", str(run), "--sampler", "strided", "--steps", "2", "--num", "2"]
    assert main([*argv, "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert "sample: --steps is not a flag of this command; use --sampler-steps" in captured.err
    assert not out.exists()
    argv[argv.index("--steps")] = "--sampler-steps"
    assert main([*argv, "--out", str(out)]) == 0
    assert "2 sampler steps" in capsys.readouterr().out


def test_help_names_the_data_sets_the_seeds_and_what_plot_does(capsys):
    from pyrodiff.data import dataset_names

    def help_of(*argv: str) -> str:
        with pytest.raises(SystemExit):
            main([*argv, "--help"])
        return " ".join(capsys.readouterr().out.split())

    train = help_of("train")
    assert all(name in train for name in dataset_names())
    for command in ("evaluate", "sample"):
        text = help_of(command)
        assert "--seed N seed of" in text
    assert "Redraw a run's training figures" in help_of("plot")


def test_python_dash_m_runs_the_command():
    proc = subprocess.run(
        [sys.executable, "-m", "pyrodiff", "evaluate", "--help"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=120,
    )
    assert proc.returncode == 0 and "--iwae" in proc.stdout


def test_resume_of_a_finished_run_says_it_is_complete_and_trains_nothing(run, capsys):
    """Nothing to do: the command says so, with the run's final numbers and how to train
    longer, and leaves the checkpoint and the metrics as they were."""
    checkpoint = (run / "checkpoint.pt").read_bytes()
    metrics = (run / "metrics.jsonl").read_text()
    assert main(["train", "--resume", str(run), "--no-progress", "--threads", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    history = History.load(run / "metrics.jsonl")
    test = history.final_eval_on("test")
    assert lines[0] == f"{run} is already complete: 12 of 12 updates"
    assert f"test ELBO {test['elbo']:.4f} ± {test['elbo_se']:.4f} nats/datum" in lines
    assert lines[-1].startswith(
        f"To train longer, start a new run from its configuration: pyrodiff train --config "
        f"{run / 'config.json'} --updates 24"
    )
    assert not any(line.startswith(("resuming", "done in")) for line in lines)
    assert (run / "checkpoint.pt").read_bytes() == checkpoint
    assert (run / "metrics.jsonl").read_text() == metrics


@pytest.mark.parametrize("damage", [b"", b"not a checkpoint at all"], ids=["empty", "garbage"])
def test_resume_of_a_corrupt_checkpoint_prints_the_error_only(run, tmp_path, capsys, damage):
    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    (broken / "checkpoint.pt").write_bytes(damage)
    assert main(["train", "--resume", str(broken), "--no-progress", "--threads", "1"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith(f"pyrodiff: error: checkpoint {broken / 'checkpoint.pt'} is ")


def test_compare_writes_its_figure_beside_the_first_run_not_in_the_working_folder(
    run, tmp_path, monkeypatch, capsys
):
    other = tmp_path / "runs" / "other"
    shutil.copytree(run, other)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert main(["compare", str(other), str(run)]) == 0
    assert list(cwd.iterdir()) == []
    figure = other / "figures" / "comparison.png"
    assert figure.stat().st_size > 0
    assert capsys.readouterr().out.splitlines()[-1] == f"wrote {figure}"


def test_compare_labels_the_training_estimate_and_gives_minus_h(run, tmp_path, capsys):
    from pyrodiff.config import load_data

    assert main(["compare", str(run), "--out", str(tmp_path / "c.png")]) == 0
    header, row = capsys.readouterr().out.splitlines()[:2]
    assert "last batch ELBO (noisy)" in header and "train ELBO" not in header
    density = load_data(RunConfig.from_json(run)).density
    assert row.endswith(f"{-density.entropy:.4f} ± {density.entropy_se:.4f}")


def test_sample_draws_enough_points_for_a_scatter_by_default(run, capsys):
    from pyrodiff.cli.commands import SCATTER_SAMPLES

    assert main(["sample", str(run), "--threads", "1", "--out", str(run.parent / "s.npy")]) == 0
    assert np.load(run.parent / "s.npy").shape == (SCATTER_SAMPLES, 2)
    assert capsys.readouterr().out.startswith(f"{SCATTER_SAMPLES} samples (ancestral)")
