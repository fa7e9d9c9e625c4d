"""What the study scripts share: their command line, markdown tables, mean ± standard error.

Each ``examples/study_*.py`` takes ``--quick`` (seconds; what ``tests/test_study.py`` runs),
``--out DIR`` (its PNG and its results JSON; ``outputs/<script>/`` by default) or
``--write-docs`` (the PNG into docs/figures, the JSON into docs/results: what docs/study.md
shows), and prints its table in markdown. The JSON holds every number the script prints; its
``"table"`` rows are the study's table as data (see ``_tables.py``).
"""

from __future__ import annotations

import argparse
import enum
import math
import time
from collections.abc import Sequence

import torch
from _outputs import add_output_arguments, outputs
from torch import Tensor


def parse_args(description: str, argv: Sequence[str] | None, name: str) -> argparse.Namespace:
    """The study's command line; ``args.outputs`` is where it writes (:mod:`_outputs`)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="tiny settings (seconds)")
    add_output_arguments(parser, name)
    parser.add_argument("--seed", type=int, default=0, help="seed of data, training and noise")
    args = parser.parse_args(argv)
    args.outputs = outputs(args, name)
    # one thread: the numbers do not depend on how many cores are free, and runs stay polite
    torch.set_num_threads(1)
    return args


def enum_argument(kind: type[enum.Enum]):
    """An argparse ``type`` for a string-valued enum: its members by value, and a bad value named
    with the values it may take (argparse's own message names only the enum's class). Shown in
    --help with ``metavar=pyrodiff.cli.parser.enum_metavar(kind)``."""
    values = [member.value for member in kind]

    def parse(text: str):
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"choose from {', '.join(values)}; got {text!r}"
            ) from None

    return parse


def mean_se(x: Tensor) -> tuple[float, float]:
    """The mean of per-datum values and its standard error over the data."""
    x = x.detach().double().flatten()
    se = x.std().item() / math.sqrt(x.numel()) if x.numel() > 1 else float("nan")
    return x.mean().item(), se


def pm(mean: float, se: float | None = None, digits: int = 3) -> str:
    """Mean ± standard error as text, e.g. 1.234 ± 0.005 (the bare mean when there is no error)."""
    if se is None or not math.isfinite(se):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {se:.{digits}f}"


def cpu_time(seconds: float) -> str:
    """A CPU time in the unit that reads best: seconds, minutes or hours, two significant
    figures or more (so a few seconds is never "0.0 CPU-hours")."""
    if seconds < 90:
        return f"{seconds:.2g} CPU-seconds" if seconds < 10 else f"{seconds:.0f} CPU-seconds"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} CPU-minutes"
    return f"{seconds / 3600:.1f} CPU-hours"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


class Stopwatch:
    """Seconds of a block, ``with Stopwatch() as w: …``: ``w.seconds`` on the wall clock and
    ``w.cpu_seconds`` of this process's CPU (steadier than the wall on a shared machine)."""

    def __enter__(self) -> Stopwatch:
        self._start, self._cpu = time.perf_counter(), time.process_time()
        self.seconds = self.cpu_seconds = float("nan")
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._start
        self.cpu_seconds = time.process_time() - self._cpu


def timed_fit(
    model, guide, train, loss, *, steps: int, batch_size: int, lr: float, seed: int
) -> Stopwatch:
    """Train with the study's fixed recipe (warm-up + cosine learning rate, gradient clipping at 1,
    CPU, no bar, one training record) and return how long it took."""
    from pyrodiff.train import LRSchedule, fit

    with Stopwatch() as clock:
        fit(
            model,
            guide,
            train,
            loss=loss,
            updates=steps,
            batch_size=batch_size,
            lr=lr,
            lr_schedule=LRSchedule.WARMUP_COSINE,
            grad_clip=1.0,
            seed=seed,
            device="cpu",
            progress=False,
            log_every=steps,
        )
    return clock
