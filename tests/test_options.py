"""One schema for the training options: RunConfig, fit and ``pyrodiff train`` accept and refuse
the same values with the same one-line message; the rules between fields hold everywhere; flags
have one meaning and are never abbreviated."""

import argparse
import contextlib
import dataclasses
import inspect
import io
import math

import pytest
import torch

from pyrodiff import ConfigError, Diffusion, ForwardGuide, ReverseVariance, linear_schedule
from pyrodiff.cli import main
from pyrodiff.cli.parser import build_parser, flag_for
from pyrodiff.config import RunConfig, build
from pyrodiff.infer.objectives import HybridLoss, SimpleLoss
from pyrodiff.networks import MLPDenoiser
from pyrodiff.train import LRSchedule, fit
from pyrodiff.train.options import OPTIONS
from pyrodiff.validation import AUTO

TINY = [
    "--data", "eight_gaussians", "--T", "3", "--width", "8", "--depth", "1", "--updates", "2",
    "--batch-size", "8", "--warmup-steps", "0", "--no-progress", "--threads", "1",
]  # fmt: skip


def run_cli(argv):
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


def _pair():
    torch.manual_seed(0)
    s = linear_schedule(3)
    return Diffusion(MLPDenoiser(2, 8, 1, 4), s), ForwardGuide(s)


def _data(n=32):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(0))


def _as_flag(message: str, name: str) -> str:
    return message.replace(name, flag_for(name))


# (option, value from Python, the same value as typed on the command line, what the message says)
BOUNDS = [
    ("updates", 0, "0", "updates must be an integer >= 1, got 0"),
    ("updates", -3, "-3", "updates must be an integer >= 1, got -3"),
    ("batch_size", 0, "0", "batch_size must be an integer >= 1, got 0"),
    ("lr", 0.0, "0", "lr must be a finite number > 0, got 0.0"),
    ("lr", -1.0, "-1", "lr must be a finite number > 0, got -1.0"),
    ("lr", math.nan, "nan", "lr must be a finite number > 0, got nan"),
    ("lr", math.inf, "inf", "lr must be a finite number > 0, got inf"),
    ("weight_decay", -0.5, "-0.5", "weight_decay must be a finite number >= 0, got -0.5"),
    ("grad_clip", 0.0, "0", "grad_clip must be a finite number > 0, got 0.0"),
    ("ema_decay", 0.0, "0", "ema_decay must be a number in (0, 1), got 0.0"),
    ("ema_decay", 1.0, "1", "ema_decay must be a number in (0, 1), got 1.0"),
    ("ema_decay", -0.1, "-0.1", "ema_decay must be a number in (0, 1), got -0.1"),
    ("seed", -1, "-1", "seed must be an integer >= 0, got -1"),
    ("warmup_steps", -1, "-1", "warmup_steps must be an integer >= 0, got -1"),
    ("eval_every", -1, "-1", "eval_every must be an integer >= 0, got -1"),
    ("checkpoint_every", -5, "-5", "checkpoint_every must be an integer >= 0, got -5"),
    ("eval_batch_budget", 0, "0", "eval_batch_budget must be an integer >= 1, got 0"),
    ("device", "tpu", "tpu", "unknown device 'tpu'; expected auto, cpu, cuda or cuda:N"),
]


@pytest.mark.parametrize(
    "name, value, typed, message", BOUNDS, ids=[f"{c[0]}={c[2]}" for c in BOUNDS]
)
def test_each_bound_is_enforced_identically_by_runconfig_fit_and_the_cli(
    tmp_path, name, value, typed, message
):
    with pytest.raises(ConfigError) as from_config:
        RunConfig(data="eight_gaussians", **{name: value})
    assert str(from_config.value) == message
    with pytest.raises(ConfigError) as from_fit:
        fit(*_pair(), _data(), **{"updates": 2, "batch_size": 8, name: value, "progress": False})
    assert str(from_fit.value) == message
    out = tmp_path / "run"
    flag = flag_for(name)
    status, _, err = run_cli(["train", *TINY, flag, typed, "--out", str(out)])
    assert status == 1 and "Traceback" not in err
    assert err.strip().splitlines() == [f"pyrodiff: error: {_as_flag(message, name)}"]
    assert not out.exists()


def test_every_option_with_a_range_is_covered_by_the_bounds_test():
    ranged = {n for n, o in OPTIONS.items() if o.low is not None or o.parse is not None}
    assert ranged - {"log_every"} == {case[0] for case in BOUNDS}


# values at the edge of each range, valid everywhere (0 for an interval: only at the end)
EDGES = {
    "warmup_steps": 0,
    "eval_every": 0,
    "checkpoint_every": 0,
    "seed": 0,
    "weight_decay": 0.0,
    "ema_decay": 1e-6,
    "grad_clip": 1e-6,
}


@pytest.mark.parametrize("name, value", EDGES.items(), ids=list(EDGES))
def test_the_valid_edge_of_each_range_is_valid_everywhere(tmp_path, name, value):
    assert getattr(RunConfig(**{name: value}), name) == value
    history = fit(*_pair(), _data(), updates=2, batch_size=8, progress=False, **{name: value})
    assert history.final_step == 2
    status, out, err = run_cli(["train", *TINY, flag_for(name), str(value), "--dry-run"])
    assert status == 0, err
    assert f'"{name}": {value}' in out


def test_an_interval_of_zero_means_only_at_the_end_for_fit_as_for_runconfig(tmp_path):
    # fit refused eval_every=0 while RunConfig (and the flag) read it as "only at the end"
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    run = tmp_path / "run"
    h = fit(*_pair(), x, updates=4, batch_size=8, eval_every=0, eval_data=x[:16],
            checkpoint_every=0, run_dir=run, progress=False)  # fmt: skip
    assert [r["step"] for r in h.evals] == [4]
    assert (run / "checkpoint.pt").is_file()
    assert RunConfig(updates=4, eval_every=0).fit_options()["eval_every"] is None


def test_the_warmup_rule_is_one_rule_everywhere(tmp_path):
    message = "warmup_steps (9) must be smaller than updates (5) for the warmup_cosine schedule"
    with pytest.raises(ConfigError) as from_config:
        RunConfig(updates=5, warmup_steps=9)
    assert str(from_config.value) == message
    with pytest.raises(ConfigError) as from_fit:
        fit(*_pair(), _data(), updates=5, warmup_steps=9, batch_size=8,
            lr_schedule=LRSchedule.WARMUP_COSINE, progress=False)  # fmt: skip
    assert str(from_fit.value) == message
    # the warm-up may fill a run whose schedule has no cosine after it, in both
    assert RunConfig(updates=5, warmup_steps=5, lr_schedule="constant").warmup_steps == 5
    assert fit(*_pair(), _data(), updates=5, warmup_steps=5, batch_size=8,
               progress=False).final_step == 5  # fmt: skip
    with pytest.raises(ConfigError, match=r"warmup_steps must be an integer in \[0, updates = 5\]"):
        RunConfig(updates=5, warmup_steps=6, lr_schedule="constant")


def test_defaults_are_declared_once():
    params = inspect.signature(fit).parameters
    fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    for name, option in OPTIONS.items():
        assert params[name].default == option.default, name
        if name in fields:
            run_default = None if option.default_for_run is AUTO else option.default_for_run
            assert fields[name].default == run_default, name
    # the CLI's help shows each option's own help text
    with pytest.raises(SystemExit), contextlib.redirect_stdout(io.StringIO()) as out:
        main(["train", "--help"])
    text = " ".join(out.getvalue().split())
    for name in fields:
        option = fields[name].metadata["option"]
        assert " ".join(option.help.split()) in text, name


def test_an_enum_option_from_python_must_be_a_member_from_a_file_its_name():
    # types, not strings, in Python's fit; a file or a flag holds the value's name
    with pytest.raises(ConfigError, match="lr_schedule must be an LRSchedule"):
        fit(*_pair(), _data(), updates=2, batch_size=8, lr_schedule="cosine", progress=False)
    assert RunConfig.from_dict({"lr_schedule": "cosine"}).lr_schedule is LRSchedule.COSINE
    with pytest.raises(ConfigError, match="unknown lr_schedule 'cosh'; expected one of constant"):
        RunConfig.from_dict({"lr_schedule": "cosh"})


# --- the hybrid objective and the reverse variance ----------------------------------------------


@pytest.mark.parametrize("variance", ["beta", "posterior"])
def test_the_hybrid_objective_needs_a_learned_variance(variance):
    with pytest.raises(ConfigError) as info:
        RunConfig(objective="hybrid", variance=variance)
    line = str(info.value)
    assert "learned_range or per_step" in line and f"got {variance}" in line


def test_the_hybrid_objective_trains_a_per_step_variance_from_the_bound():
    """PER_STEP is a learned variance: the hybrid's bound part moves it, L_simple does not. So
    RunConfig accepts it, as HybridLoss always did."""
    cfg = RunConfig(data="eight_gaussians", objective="hybrid", variance="per_step",
                    num_steps=4, width=8, depth=1, updates=2, batch_size=16)  # fmt: skip
    model, guide, data, loss = build(cfg)
    assert isinstance(loss, HybridLoss) and model.variance is ReverseVariance.PER_STEP
    x = data.train[:64].to(torch.get_default_dtype())
    grads = {}
    for objective in (loss, SimpleLoss(timesteps=loss.timesteps)):
        model.zero_grad()
        torch.manual_seed(0)
        objective.differentiable_loss(model, guide, x).backward()
        grads[type(objective)] = model.log_variance.grad
    assert grads[SimpleLoss] is None or torch.count_nonzero(grads[SimpleLoss]) == 0
    assert torch.count_nonzero(grads[HybridLoss]) > 0
    history = fit(model, guide, data, loss=loss, **cfg.fit_options(), progress=False)
    assert history.final_step == 2


# --- RunConfig(steps=...) reads as the command line's old --steps does -------------------------


def test_runconfig_steps_is_the_deprecated_name_of_updates():
    with pytest.warns(DeprecationWarning, match="updates="):
        cfg = RunConfig(steps=40)
    assert cfg.updates == 40 and cfg == RunConfig(updates=40)
    assert cfg.warmup_steps == RunConfig(updates=40).warmup_steps  # chosen from the updates
    with pytest.raises(ConfigError, match="both steps and updates"):
        RunConfig(steps=40, updates=30)
    assert "steps" not in cfg.to_dict()


# --- flags: one meaning each, never abbreviated --------------------------------------------------


def _subparsers(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def test_no_parser_abbreviates_flags():
    parser = build_parser()
    assert parser.allow_abbrev is False
    names = dict(_subparsers(parser))
    assert set(names) == {"train", "evaluate", "sample", "compare", "plot"}
    assert all(p.allow_abbrev is False for p in names.values())


@pytest.mark.parametrize(
    "argv, prefix",
    [
        (["train", "--update", "5", "--dry-run"], "--update"),
        (["train", "--ema", "off", "--dry-run"], "--ema"),
        (["evaluate", "RUN", "--spl", "test"], "--spl"),
        (["sample", "RUN", "--sampler-step", "3"], "--sampler-step"),
        (["compare", "RUN", "--ou", "x.png"], "--ou"),
        (["plot", "RUN", "--thread", "1"], "--thread"),
        (["--vers"], "--vers"),
    ],
)
def test_a_prefix_of_a_flag_is_an_unknown_flag(argv, prefix):
    status, out, err = run_cli(argv)
    assert status == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "unrecognized arguments" in lines[0] and prefix in lines[0]
