"""Interruption: Ctrl-C (a real SIGINT) and SIGKILL during a checkpoint write lose nothing."""

import os
import select
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from pyrodiff import Diffusion, ForwardGuide, linear_schedule
from pyrodiff.checkpoint import load_checkpoint
from pyrodiff.infer import DiffusionELBO
from pyrodiff.networks import MLPDenoiser
from pyrodiff.train import fit

STEPS = 8


def make_run():
    """The model, guide and data of every run here (also imported by the killed process)."""
    torch.manual_seed(0)
    s = linear_schedule(4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2, generator=g) * 0.5 + 1.0
    return Diffusion(MLPDenoiser(2, 16, 1, 8), s), ForwardGuide(s), x


def _fit(run, **kw):
    model, guide, x = make_run()
    options = {"updates": STEPS, "batch_size": 16, "seed": 3, "progress": False}
    options.update(kw)
    return model, fit(model, guide, x, run_dir=run, **options)


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    # module-scoped fixtures run before conftest's per-test float64 setting: set it here too
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return _fit(tmp_path_factory.mktemp("ref") / "run")
    finally:
        torch.set_default_dtype(old)


@pytest.mark.parametrize("presses", [1, 2])
def test_sigint_saves_a_checkpoint_and_returns(tmp_path, reference, presses):
    """One Ctrl-C stops after the current update; a second one stops at once. Either way the
    checkpoint holds update 5 and resuming reproduces the uninterrupted run."""

    def press(step, loss):
        if step == 5:
            for _ in range(presses):
                os.kill(os.getpid(), signal.SIGINT)

    handler = signal.getsignal(signal.SIGINT)
    run = tmp_path / "run"
    _, h = _fit(run, callback=press)
    assert signal.getsignal(signal.SIGINT) is handler, "fit must put the SIGINT handler back"
    assert h.interrupted and h.final_step == 5
    assert [r["step"] for r in h.train] == [1, 2, 3, 4, 5]
    assert load_checkpoint(run)["step"] == 5
    model, h2 = _fit(run, resume=True)
    assert _same(model, reference[0])
    assert h2.records == reference[1].records


class _InterruptingELBO(DiffusionELBO):
    """Raises KeyboardInterrupt inside the loss of update ``at`` (after drawing its noise)."""

    def __init__(self, at):
        super().__init__()
        self.calls, self.at = 0, at

    def differentiable_loss(self, model, guide, *args, **kwargs):
        loss = super().differentiable_loss(model, guide, *args, **kwargs)
        self.calls += 1
        if self.calls == self.at + 1:  # +1: fit calls the loss once before training
            raise KeyboardInterrupt
        return loss


def test_interrupt_inside_an_update_rolls_back_to_the_last_whole_one(tmp_path, reference):
    """Ctrl-C in the middle of update 6 (its batch and noise already drawn): the checkpoint must
    describe the state after update 5, random streams included, or the resume would diverge."""
    run = tmp_path / "run"
    _, h = _fit(run, loss=_InterruptingELBO(at=6))
    assert h.interrupted and h.final_step == 5
    assert load_checkpoint(run)["step"] == 5
    model, h2 = _fit(run, resume=True)
    assert _same(model, reference[0])
    assert h2.records == reference[1].records


_KILLED = textwrap.dedent(
    """
    import io, sys, time
    import torch

    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(int(sys.argv[3]))
    sys.path.insert(0, sys.argv[2])
    from test_interrupt import _fit

    real_save = torch.save
    saves = []

    def slow_save(obj, f, *args, **kwargs):
        saves.append(obj["step"])
        if len(saves) == 2:
            # write half of the second checkpoint, then hang: the parent kills us here
            buf = io.BytesIO()
            real_save(obj, buf, *args, **kwargs)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            f.flush()
            print("WRITING", obj["step"], flush=True)
            time.sleep(600)
        return real_save(obj, f, *args, **kwargs)

    torch.save = slow_save
    _fit(__import__("pathlib").Path(sys.argv[1]), checkpoint_every=2)
    """
)


def test_sigkill_during_a_checkpoint_write_loses_only_the_current_step(tmp_path, reference):
    run = tmp_path / "run"
    tests_dir = str(Path(__file__).parent)
    repo = str(Path(__file__).parent.parent)
    env = dict(os.environ, PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED, str(run), tests_dir, str(torch.get_num_threads())],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        # wait (boundedly) until the child is inside the write
        ready, _, _ = select.select([proc.stdout], [], [], 300)
        assert ready, "the training process never reached its second checkpoint"
        line = proc.stdout.readline()
        assert line.split() == ["WRITING", "4"], (line, proc.stderr.read())
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # the half-written file is there, and the checkpoint is the previous one, intact
    assert (run / ".checkpoint.pt.tmp").stat().st_size > 0
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 2
    model, h = _fit(run, resume=True, checkpoint_every=2)
    assert _same(model, reference[0])
    assert h.records == reference[1].records
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt", "metrics.jsonl"]
