"""Every subcommand on a run of every --model × --guide that ``train`` accepts: it works, with
real output, or refuses in one line that says why. No internal error text reaches the user."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import pyrodiff.train
from pyrodiff.cli import main
from pyrodiff.config import GuideKind, ModelKind, RunConfig
from pyrodiff.errors import ConfigError

TINY = [
    "--data", "two_moons", "--T", "3", "--width", "16", "--depth", "1", "--updates", "4",
    "--batch-size", "16", "--warmup-steps", "1", "--checkpoint-every", "2", "--no-progress",
    "--threads", "1",
]  # fmt: skip
INTERRUPT_AT = 2

GRID = list(itertools.product([m.value for m in ModelKind], [g.value for g in GuideKind]))


def _accepted(model: str, guide: str) -> bool:
    try:
        RunConfig(model=model, guide=guide)
    except ConfigError:
        return False
    return True


COMMANDS = {
    "evaluate": ["evaluate", "{run}", "--num", "64", "--iwae", "2", "--psis", "--psis-num", "3",
                 "--psis-samples", "50"],
    "sample": ["sample", "{run}", "--num", "16"],
    "sample-strided": ["sample", "{run}", "--num", "16", "--sampler", "strided",
                       "--sampler-steps", "2"],
    "sample-ddim": ["sample", "{run}", "--num", "16", "--sampler", "ddim", "--sampler-steps", "2"],
    "compare": ["compare", "{run}", "{partial}"],
    "plot": ["plot", "{partial}"],  # (the finished run's sample scatters are slow to redraw)
    "resume": ["train", "--resume", "{partial}", "--no-progress"],
    "resume-finished": ["train", "--resume", "{run}", "--no-progress"],
}  # fmt: skip

REFUSED = {
    ("hvae", "sample-strided"): "needs a diffusion's noise schedule",
    ("hvae", "sample-ddim"): "needs a diffusion's noise schedule",
    ("adaptive", "sample-ddim"): "needs a fixed noise schedule",
}
"""The only refusals allowed, keyed by model or guide, with the reason each must give: an hvae
has no noise schedule; guide adaptive's depends on its latent z, so DDIM has no fixed one."""

INTERNAL = re.compile(r"Traceback|\b[A-Z]\w*(Error|Exception)\b:|--debug")
"""What must never reach stderr: a traceback, an exception's type name, the --debug hint."""


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """For each accepted model: a run stopped by Ctrl-C at update 2 (``partial``) and the same
    run resumed to its end (``run``), trained in float32 as the command line trains."""
    root = tmp_path_factory.mktemp("grid")
    original_fit = pyrodiff.train.fit

    def interrupted_fit(*args, **kwargs):
        def stop(step, loss):
            if step == INTERRUPT_AT:
                raise KeyboardInterrupt

        return original_fit(*args, **kwargs, callback=stop)

    out: dict[str, tuple[Path, Path]] = {}
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        for model, guide in GRID:
            if not _accepted(model, guide):
                continue
            run, partial = root / f"{model}-{guide}", root / f"{model}-{guide}-partial"
            argv = ["train", "--model", model, "--guide", guide, *TINY, "--out", str(run)]
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(pyrodiff.train, "fit", interrupted_fit)
                assert _run(argv)[0] == 130
            shutil.copytree(run, partial)
            code, _, err = _run(["train", "--resume", str(run), "--no-progress"])
            assert code == 0, err
            out[f"{model}-{guide}"] = (run, partial)
    finally:
        torch.set_default_dtype(old)
    return out


def _check_output(command: str, run: Path, partial: Path, printed: str) -> None:
    """What each command must have done: real numbers and files, not just exit 0."""
    if command == "evaluate":
        result = json.loads((run / "evaluation.json").read_text())
        assert math.isfinite(result["elbo"]) and math.isfinite(result["iwae"])
        assert result["gap_to_data"] == pytest.approx(result["log_p_data"] - result["elbo"])
        assert result["psis_num_data"] == 3
        assert re.search(r"^ELBO +-?\d+\.\d{4} ± \d+\.\d{4} nats/datum$", printed, re.M)
    elif command.startswith("sample"):
        npy = Path(printed.splitlines()[1].removeprefix("wrote "))
        samples = np.load(npy)
        assert samples.shape == (16, 2) and np.isfinite(samples).all()
        assert Path(printed.splitlines()[2].removeprefix("wrote ")).stat().st_size > 0
    elif command == "compare":
        figure = run / "figures" / "comparison.png"
        assert figure.stat().st_size > 0 and printed.splitlines()[-1] == f"wrote {figure}"
        rows = printed.splitlines()[1:3]
        assert [r.split()[0] for r in rows] == [run.name, partial.name]
        assert "-1.8" in rows[0].split("  ")[-1]  # −H of two moons (about −1.845)
    elif command == "plot":
        (figure,) = [line.removeprefix("wrote ") for line in printed.splitlines()[:1]]
        assert figure == str(partial / "figures" / "elbo.png") and Path(figure).stat().st_size > 0
    elif command == "resume":
        assert f"from update {INTERRUPT_AT} of 4 updates" in printed.splitlines()[0]
        assert torch.load(partial / "checkpoint.pt", weights_only=True)["step"] == 4
        assert "test ELBO" in printed
    elif command == "resume-finished":
        assert printed.splitlines()[0] == f"{run} is already complete: 4 of 4 updates"
        assert "test ELBO" in printed and "--updates 8" in printed.splitlines()[-1]
    else:
        raise AssertionError(f"no check for {command}")


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("model, guide", GRID, ids=[f"{m}-{g}" for m, g in GRID])
def test_every_command_works_on_every_run_train_accepts_or_says_why_not(
    runs, model, guide, command, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # nothing may be written where the command is run from
    torch.set_default_dtype(torch.float32)  # as the command line runs (conftest restores it)
    if not _accepted(model, guide):
        # the grid's other corners: train itself refuses, in one line naming the guide
        code, printed, err = _run(["train", "--model", model, "--guide", guide, *TINY])
        assert code != 0 and printed == ""
        assert len(err.splitlines()) == 1 and "guide" in err and not INTERNAL.search(err)
        assert not any(tmp_path.iterdir())
        return
    run, partial = runs[f"{model}-{guide}"]
    argv = [a.format(run=run, partial=partial) for a in COMMANDS[command]]
    code, printed, err = _run(argv)
    assert not INTERNAL.search(err), err
    assert not any(tmp_path.iterdir()), list(tmp_path.iterdir())
    reason = REFUSED.get((model, command), REFUSED.get((guide, command)))
    if reason is not None:
        assert code == 1 and printed == ""
        (line,) = err.strip().splitlines()
        assert line.startswith("pyrodiff: error: ") and reason in line
        return
    assert code == 0, err
    _check_output(command, run, partial, printed)
