"""Bad input, tried as a new user would: through the command line (one line on stderr, a
non-zero exit, no traceback, no run folder left behind) and through the Python API (one typed
exception from pyrodiff.errors)."""

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pyrodiff import (
    CheckpointError,
    ConfigError,
    DataError,
    DeviceError,
    Diffusion,
    ForwardGuide,
    ModelMismatchError,
    NoiseSchedule,
    PyrodiffError,
    linear_schedule,
    schedule_from_alpha_bar,
)
from pyrodiff.checkpoint import FORMAT_VERSION, load_checkpoint
from pyrodiff.cli import main
from pyrodiff.config import RunConfig, build
from pyrodiff.devices import resolve_device
from pyrodiff.infer import elbo_terms
from pyrodiff.likelihoods import DiscretizedGaussianLikelihood
from pyrodiff.networks import MLPDenoiser

TINY = [
    "--data", "eight_gaussians", "--T", "3", "--width", "8", "--depth", "1", "--updates", "2",
    "--batch-size", "8", "--warmup-steps", "0", "--no-progress", "--threads", "1",
]  # fmt: skip


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


def assert_one_line_error(argv: list[str], *words: str) -> str:
    status, _, err = run_cli(argv)
    assert status != 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("pyrodiff: error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bad") / "run"
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        status, _, err = run_cli(["train", *TINY, "--out", str(out)])
    finally:
        torch.set_default_dtype(old)
    assert status == 0, err
    return out


@pytest.fixture
def run_copy(trained, tmp_path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(trained, dst)
    return dst


def _npy(tmp_path: Path, array, name="data.npy") -> str:
    path = tmp_path / name
    np.save(path, array)
    return str(path)


# --- the command line: training options ---------------------------------------------------------

TRAIN_CASES = [
    (["--frobnicate", "1"], ["unrecognized arguments", "--frobnicate"]),
    (["--objective", "adam"], ["unknown --objective 'adam'", "trace_elbo"]),
    (["--schedule", "quadratic"], ["linear, cosine"]),
    (["--T", "ten"], ["--T expects an integer", "'ten'"]),
    # errors name the flag the user typed, not the field behind it (num_steps)
    (["--T", "0"], ["--T must be an integer >= 1"]),
    (["--T", "off"], ["--T expects an integer or 'auto', got 'off'"]),
    (["--depth", "0"], ["--depth must be an integer >= 1"]),
    (["--updates", "5", "--warmup-steps", "9"], ["--warmup-steps (9)", "--updates (5)"]),
    (["--eval-every", "-1"], ["--eval-every must be an integer >= 0"]),
    (["--lr", "-1"], ["lr must be a finite number > 0"]),
    (["--lr", "nan"], ["lr must be a finite number > 0"]),
    (["--ema-decay", "1.5"], ["--ema-decay must be a number in (0, 1), got 1.5"]),
    (["--batch-size", "0"], ["--batch-size must be an integer >= 1"]),
    (["--data", "mnist"], ["unknown data set 'mnist'", "digits"]),
    (["--data", "/nonexistent/x.npy"], ["x.npy"]),
    (["--guide", "learned", "--objective", "elbo"], ["objective elbo needs a guide with closed"]),
    (["--model", "hvae", "--guide", "fixed"], ["model hvae needs guide learned"]),
    (["--model", "hvae", "--objective", "elbo"], ["model hvae trains with objective trace_elbo"]),
    (["--objective", "hybrid", "--variance", "beta"], ["learned_range"]),
    (["--device", "tpu"], ["unknown --device 'tpu'"]),
    (["--parameterization", "score"], ["epsilon, x0, v"]),
]


@pytest.mark.parametrize("flags, words", TRAIN_CASES, ids=[" ".join(c[0]) for c in TRAIN_CASES])
def test_bad_training_options(tmp_path, flags, words):
    out = tmp_path / "run"
    assert_one_line_error(["train", *TINY, *flags, "--out", str(out)], *words)
    assert not out.exists()  # validated before the run folder is created


def test_cuda_where_there_is_none(tmp_path):
    out = tmp_path / "run"
    device = "cuda:99" if torch.cuda.is_available() else "cuda"
    assert_one_line_error(["train", *TINY, "--device", device, "--out", str(out)], "CUDA")
    assert not out.exists()
    with pytest.raises(DeviceError, match="CUDA"):
        resolve_device(device)


@pytest.mark.parametrize(
    "array, extra, words",
    [
        (np.array([[0.0, np.nan]] * 20), [], ["NaN"]),
        (np.array([[0.0, np.inf]] * 20), [], ["inf"]),
        (np.zeros((0, 2)), [], ["empty"]),
        (np.zeros(20), [], ["shape"]),
        (np.full((20, 2), 7), ["--num-levels", "4"], ["0", "3"]),
        (np.full((20, 2), 1.5), ["--num-levels", "4"], ["integer"]),
        (np.array([["a", "b"]] * 20), [], ["dtype"]),
        (np.zeros((20, 2)), ["--batch-size", "64"], ["--batch-size 64"]),
    ],
    ids="nan inf empty 1-d levels-out-of-range levels-not-integer strings batch-too-large".split(),
)
def test_bad_data_files(tmp_path, array, extra, words):
    out = tmp_path / "run"
    flags = list(TINY)
    i = flags.index("--data")
    flags[i + 1] = _npy(tmp_path, array)
    if "--batch-size" in extra:
        j = flags.index("--batch-size")
        del flags[j : j + 2]
    assert_one_line_error(["train", *flags, *extra, "--out", str(out)], *words)
    assert not out.exists()


def test_a_text_file_named_npy_is_called_a_text_file(tmp_path):
    path = tmp_path / "points.npy"
    np.savetxt(path, np.random.default_rng(0).normal(size=(20, 2)))
    line = assert_one_line_error(
        ["train", *TINY, "--data", str(path), "--out", str(tmp_path / "r")], "numpy.loadtxt"
    )
    assert "pickl" not in line


def test_integer_data_without_num_levels_gets_a_hint(tmp_path):
    path = _npy(tmp_path, np.arange(600).reshape(300, 2) % 300)
    status, _, err = run_cli(["train", *TINY, "--data", path, "--dry-run"])
    assert status == 0 and "looks quantised" in err and "--num-levels 300" in err
    # with --num-levels the data is what it says: no hint
    status, _, err = run_cli(["train", *TINY, "--data", path, "--num-levels", "300", "--dry-run"])
    assert status == 0 and "quantised" not in err


def test_errors_name_the_flag_not_the_field_behind_it(tmp_path):
    line = assert_one_line_error(["train", *TINY, "--T", "0", "--out", str(tmp_path / "r")])
    assert "--T must be" in line and "num_steps" not in line
    line = assert_one_line_error(["train", *TINY, "--num-steps", "0"], "--T must be")
    line = assert_one_line_error(["train", "--resume", "x", "--T", "3"], "--T")
    assert "--num-steps" not in line and "num_steps" not in line


def test_an_object_array_is_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.npy"
    np.save(path, np.array([_Payload(marker)], dtype=object), allow_pickle=True)
    assert_one_line_error(["train", *TINY, "--data", str(path), "--out", str(tmp_path / "r")])
    assert not marker.exists()


def test_out_folder_that_is_not_empty(trained, tmp_path):
    assert_one_line_error(["train", *TINY, "--out", str(trained)], "already exists", "--resume")


def test_resume_with_other_options(trained):
    assert_one_line_error(["train", "--resume", str(trained), "--lr", "1"], "--lr", "resume")


def test_resume_of_a_folder_that_is_not_a_run(tmp_path):
    assert_one_line_error(["train", "--resume", str(tmp_path)], "config.json")


def test_failure_in_training_leaves_no_half_written_folder(tmp_path):
    """An lr so large that the first updates blow up: the NaN guard stops training; with no
    checkpoint written yet, the run folder is removed."""
    out = tmp_path / "run"
    line = assert_one_line_error(
        [
            "train",
            *TINY,
            *"--lr 1e30 --grad-clip off --updates 50 --checkpoint-every off".split(),
            "--out",
            str(out),
        ],
        "step",
    )
    assert "learning rate" in line or "lr" in line
    assert not out.exists()
    # --out was given: the message says why there is no checkpoint, not to pass a run_dir
    assert "pass run_dir" not in line and f"no checkpoint was written to {out}" in line
    assert "only at the end" in line


def test_divergence_before_the_first_checkpoint_says_when_it_was_due(tmp_path):
    out = tmp_path / "run"
    flags = "--lr 1e30 --grad-clip off --updates 50 --checkpoint-every 40".split()
    line = assert_one_line_error(["train", *TINY, *flags, "--out", str(out)], "non-finite")
    assert "pass run_dir" not in line and "the first was due after update 40" in line


def test_no_subcommand_with_an_unknown_flag():
    assert_one_line_error(["--flag-that-does-not-exist"], "unrecognized")


def test_debug_shows_the_traceback(tmp_path):
    status, _, err = run_cli(["train", *TINY, "--T", "0", "--debug", "--out", str(tmp_path / "r")])
    assert status != 0 and "Traceback" in err and "ConfigError" in err


# --- the command line: run folders and checkpoints ---------------------------------------------


def test_evaluate_a_missing_run(tmp_path):
    assert_one_line_error(["evaluate", str(tmp_path / "nope")], "does not exist")


def test_evaluate_without_a_checkpoint(run_copy):
    (run_copy / "checkpoint.pt").unlink()
    assert_one_line_error(["evaluate", str(run_copy)], "no checkpoint")


def test_truncated_checkpoint(run_copy):
    path = run_copy / "checkpoint.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert_one_line_error(["evaluate", str(run_copy)], "truncated or corrupt")


def test_corrupt_checkpoint(run_copy):
    (run_copy / "checkpoint.pt").write_bytes(b"\x00garbage" * 1000)
    assert_one_line_error(["sample", str(run_copy)], "corrupt")


def test_empty_checkpoint(run_copy):
    (run_copy / "checkpoint.pt").write_bytes(b"")
    assert_one_line_error(["evaluate", str(run_copy)], "empty")


def test_checkpoint_from_another_configuration(run_copy):
    cfg = RunConfig.from_json(run_copy).replace(num_steps=5)
    cfg.to_json(run_copy / "config.json")
    assert_one_line_error(["evaluate", str(run_copy)], "another model configuration", "5")


def test_checkpoint_from_another_network_size(run_copy):
    cfg = RunConfig.from_json(run_copy).replace(width=12)
    cfg.to_json(run_copy / "config.json")
    assert_one_line_error(["sample", str(run_copy)], "does not fit the model")


def test_checkpoint_of_a_newer_format(run_copy):
    path = run_copy / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    state["format_version"] = FORMAT_VERSION + 1
    torch.save(state, path)
    assert_one_line_error(["evaluate", str(run_copy)], "newer", "upgrade")


class _Payload:
    """Unpickling this runs ``open(marker, "w")``: a real payload that leaves a trace."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_checkpoint_with_a_pickle_payload_is_refused_and_never_run(run_copy, tmp_path):
    marker = tmp_path / "payload-ran"
    path = run_copy / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    state["extra"] = {"hook": _Payload(marker)}
    torch.save(state, path)
    assert_one_line_error(["evaluate", str(run_copy)], "refused")
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    assert not marker.exists()


def test_corrupt_config_json(run_copy):
    path = run_copy / "config.json"
    path.write_text('{"data": "digits", ')
    # the file, and where its JSON breaks
    line = assert_one_line_error(["evaluate", str(run_copy)], "not valid JSON")
    assert line.startswith(f"pyrodiff: error: {path} is not valid JSON: ")
    assert line.endswith("at line 1, column 20")
    path.write_text('{\n  "data": "digits",\n  "num_steps": 3,\n}\n')
    line = assert_one_line_error(["sample", str(run_copy)], str(path), "line 4, column 1")


@pytest.mark.parametrize("command", ["evaluate", "sample", "plot", "resume", "config"])
@pytest.mark.parametrize(
    "key, value, message",
    [
        ("num_steps", "abc", "num_steps must be an integer >= 1, got 'abc'"),
        ("ema_decay", 1.0, "ema_decay must be a number in (0, 1), got 1.0"),
        ("objective", "adam", "unknown objective 'adam'; expected one of elbo"),
    ],
)
def test_a_bad_value_in_config_json_names_the_file_and_the_key(
    run_copy, command, key, value, message
):
    """Not the flag that sets it (``--T``): the user typed no flag, the file holds the key."""
    path = run_copy / "config.json"
    values = json.loads(path.read_text())
    values[key] = value
    path.write_text(json.dumps(values))
    argv = {
        "resume": ["train", "--resume", str(run_copy)],
        "config": ["train", "--config", str(path), "--out", str(run_copy / "new")],
    }.get(command, [command, str(run_copy)])
    line = assert_one_line_error(argv)
    assert line.startswith(f"pyrodiff: error: {path}: {message}")
    assert "--" not in line.removeprefix(f"pyrodiff: error: {path}")
    assert not (run_copy / "new").exists()


def test_config_json_with_an_unknown_key(run_copy):
    values = json.loads((run_copy / "config.json").read_text())
    values["hidden_size"] = 3
    (run_copy / "config.json").write_text(json.dumps(values))
    assert_one_line_error(["plot", str(run_copy)], "unknown configuration key", "hidden_size")


@pytest.mark.parametrize("command", ["evaluate", "sample", "config"])
def test_a_key_of_config_json_that_does_not_fit_the_data_names_the_file(run_copy, command):
    """Checked only against the data (by build): still the file and the key, not --batch-size."""
    path = run_copy / "config.json"
    values = json.loads(path.read_text())
    values["batch_size"] = 50_000
    path.write_text(json.dumps(values))
    argv = {"config": ["train", "--config", str(path), "--out", str(run_copy / "new")]}.get(
        command, [command, str(run_copy)]
    )
    line = assert_one_line_error(argv)
    assert line == (
        f"pyrodiff: error: {path}: batch_size 50000 is larger than the 10000 training data of "
        "'eight_gaussians'; expected batch_size <= 10000"
    )
    assert not (run_copy / "new").exists()


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--sampler", "euler"], ["unknown sampler 'euler'", "ancestral, strided, ddim"]),
        (
            ["--sampler", "ddim", "--sampler-steps", "99"],
            ["--sampler-steps must be an integer in 1..T = 3"],
        ),
        (["--num", "0"], ["--num must be >= 1"]),
        (["--eta", "-1"], ["--eta"]),
        (["--out", "samples.txt"], [".npy"]),
    ],
)
def test_bad_sampling_options(trained, argv, words):
    assert_one_line_error(["sample", str(trained), *argv], *words)


def test_evaluate_unknown_split(trained):
    assert_one_line_error(["evaluate", str(trained), "--split", "valid"], "train, validation, test")


def test_compare_something_that_is_not_a_run(trained, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    assert_one_line_error(["compare", str(trained), str(tmp_path / "notes.txt")], "not a run")
    assert_one_line_error(["compare", str(trained), str(trained)], "twice")


# --- the Python API: typed exceptions -----------------------------------------------------------


def test_api_schedules():
    with pytest.raises(ConfigError, match="T >= 1|integer >= 1"):
        linear_schedule(0)
    with pytest.raises(ConfigError, match=r"\(0, 1\)"):
        NoiseSchedule([0.1, 1.2])
    with pytest.raises(ConfigError, match=r"\(0, 1\)"):
        NoiseSchedule([0.0, 0.1])
    with pytest.raises(ConfigError, match="not monotone"):
        schedule_from_alpha_bar(torch.tensor([1.0, 0.5, 0.7]))


def _model(T=3, data_dim=2):
    sched = linear_schedule(T)
    return Diffusion(MLPDenoiser(data_dim, hidden=8, depth=1), sched), ForwardGuide(sched)


@pytest.mark.parametrize(
    "x, words",
    [
        (torch.tensor([[0.0, float("nan")]]), "NaN"),
        (torch.tensor([[0.0, float("inf")]]), "inf"),
        (torch.zeros(4, 3), "shape"),
        (torch.zeros(0, 2), "empty"),
        (torch.zeros(4, 2, dtype=torch.long), "floating-point"),
        (np.zeros((4, 2)), "torch.Tensor"),
    ],
)
def test_api_bad_data(x, words):
    model, guide = _model()
    with pytest.raises(DataError, match=words):
        elbo_terms(model, guide, x)


def test_api_quantised_data_off_the_grid():
    lik = DiscretizedGaussianLikelihood(17)
    with pytest.raises(DataError, match=r"\[-1.0, 1.0\]"):
        lik.validate(torch.tensor([[1.5]]))
    with pytest.raises(DataError, match="levels"):
        lik.validate(torch.tensor([[0.01]]))


def test_api_guide_for_another_model():
    model, _ = _model(T=3)
    _, guide = _model(T=4)
    with pytest.raises(ModelMismatchError, match="T = 4"):
        elbo_terms(model, guide, torch.zeros(2, 2))


def test_api_config_and_build():
    with pytest.raises(ConfigError):
        RunConfig(num_steps=0)
    with pytest.raises(DataError, match="batch_size"):
        build(RunConfig(data="eight_gaussians", batch_size=10**6, num_steps=2))
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint("/nonexistent/checkpoint.pt")


def test_every_error_is_a_pyrodiff_error():
    for cls in (ConfigError, DataError, DeviceError, ModelMismatchError, CheckpointError):
        assert issubclass(cls, PyrodiffError)
