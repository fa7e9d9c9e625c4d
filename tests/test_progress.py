"""Progress bars: an ETA that evaluations do not disturb, and plain lines off a terminal."""

import contextlib
import io

import torch

from pyrodiff import Diffusion, ForwardGuide, linear_schedule
from pyrodiff.data import Dataset
from pyrodiff.networks import MLPDenoiser
from pyrodiff.progress import TrainingProgress, interactive, progress_bar
from pyrodiff.train import fit

ESC = "\x1b"


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def simulate(bar, clock, total, every, per_update, per_eval, on_update=None):
    """The training loop's calls: each update takes ``per_update`` seconds, and after every
    ``every``-th one an evaluation of ``per_eval`` seconds runs inside ``bar.paused()``."""
    for n in range(bar.n + 1, total + 1):
        clock.now += per_update
        bar.update(f"elbo/datum {-n}")
        if on_update is not None:
            on_update(n)
        with bar.paused():
            if n % every == 0:
                clock.now += per_eval


def test_eta_is_the_exact_time_left_once_an_evaluation_has_been_timed():
    total, every, per_update, per_eval = 100, 10, 0.1, 5.0
    clock = FakeClock()
    bar = TrainingProgress(total, eval_every=every, stream=io.StringIO(), clock=clock)
    etas = {}

    def check(n):
        etas[n] = bar.eta()
        assert abs(bar.seconds_per_update() - per_update) < 1e-9  # evaluations excluded
        if n > every:
            # what is left: the updates after n, and the evaluations at n (it runs after update
            # n) and at every later multiple of `every`
            left = (total - n) * per_update + (total // every - (n - 1) // every) * per_eval
            assert abs(etas[n] - left) < 1e-9, n

    simulate(bar, clock, total, every, per_update, per_eval, check)
    # once the first evaluation has been timed, the estimate only falls: no jump at evaluations
    later = [etas[n] for n in range(every + 1, total + 1)]
    assert all(b <= a for a, b in zip(later, later[1:], strict=False))
    assert etas[every - 1] == (total - every + 1) * per_update  # nothing timed yet: updates only


def test_a_resumed_bar_times_only_its_own_updates():
    clock = FakeClock()
    bar = TrainingProgress(100, 60, eval_every=20, stream=io.StringIO(), clock=clock)
    assert bar.eta() is None
    simulate(bar, clock, 81, 20, 0.5, 3.0)
    assert abs(bar.eta() - (19 * 0.5 + 1 * 3.0)) < 1e-9  # the evaluation at 100 is still due


def test_off_a_terminal_training_prints_plain_lines():
    out, clock = io.StringIO(), FakeClock()
    bar = TrainingProgress(100, eval_every=10, stream=out, clock=clock)
    simulate(bar, clock, 100, 10, 0.1, 5.0)
    bar.close()
    text = out.getvalue()
    assert ESC not in text and "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 20  # one line per 5 % of the run
    assert lines[-1].startswith("train: 100/100 updates (100%), 0:55 elapsed")
    assert "elbo/datum -100" in lines[-1]
    # at update 50 (before its evaluation): 5 s of updates and 6 evaluations of 5 s are left
    assert lines[9].startswith("train: 50/100 updates (50%)") and "eta 0:35" in lines[9]


def test_off_a_terminal_a_line_at_least_every_interval():
    out, clock = io.StringIO(), FakeClock()
    bar = TrainingProgress(1000, stream=out, clock=clock, interval=60.0)
    for _ in range(3):
        clock.now += 61.0
        bar.update()
    assert len(out.getvalue().splitlines()) == 3


def test_on_a_terminal_the_bar_shows_the_evaluation_free_eta():
    out, clock = Terminal(), FakeClock()
    assert interactive(out) and not interactive(io.StringIO())
    bar = TrainingProgress(100, eval_every=10, stream=out, clock=clock)
    simulate(bar, clock, 50, 10, 0.1, 5.0)
    bar._bar.refresh()
    assert "eta 0:35" in out.getvalue().rsplit("\r", 1)[-1]
    bar.close()


def test_evaluation_bar_off_a_terminal_is_one_summary_line():
    out, clock = io.StringIO(), FakeClock()
    with progress_bar(7, "ELBO terms", "step", True, stream=out, clock=clock) as bar:
        for _ in range(7):
            clock.now += 1.0
            bar.update(1)
    assert out.getvalue() == "ELBO terms: 7/7 steps in 0:07\n"
    silent = io.StringIO()
    with progress_bar(7, "ELBO terms", "step", False, stream=silent) as bar:
        bar.update(7)
    assert silent.getvalue() == ""


def test_training_with_stderr_in_a_file_writes_no_escape_codes():
    T = 4
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2, generator=g) * 0.5 + 1.0
    data = Dataset("g", train=x[:40], validation=x[40:52], test=x[52:])
    torch.manual_seed(0)
    s = linear_schedule(T)
    model, guide = Diffusion(MLPDenoiser(2, 16, 1, 8), s), ForwardGuide(s)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        fit(model, guide, data, updates=6, batch_size=16, eval_every=2, progress=True)
    text = err.getvalue()
    assert ESC not in text and "\r" not in text
    lines = text.splitlines()
    assert sum(ln.startswith("train: ") for ln in lines) == 6  # each update is 1/6 > 5 %
    # validation at 2, 4 and 6, the test split at 6: one summary line each
    assert sum(ln.startswith("ELBO terms: 4/4 steps") for ln in lines) == 4
