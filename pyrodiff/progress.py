"""Progress on stderr: tqdm bars where a person watches (a terminal or a notebook), plain lines
where the output goes to a file or a pipe.

tqdm redraws a bar in place with carriage returns and, for a bar nested under another, cursor
movements (``ESC[A``); in a log file those are noise. Off a terminal the same calls therefore
write whole lines of plain text instead, and nothing else.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterator
from typing import IO

from tqdm.auto import tqdm as _auto_tqdm
from tqdm.std import tqdm

__all__ = ["progress_bar", "TrainingProgress", "interactive"]

Clock = Callable[[], float]
# tqdm.auto is a notebook bar under Jupyter (its widget needs no terminal), else a text bar
_NOTEBOOK = any(c.__module__ == "tqdm.notebook" for c in _auto_tqdm.__mro__)


def interactive(stream: IO[str]) -> bool:
    """True when ``stream`` is a terminal, or when tqdm draws notebook widgets (Jupyter), where
    a bar redrawn in place is what the reader sees; False for files, pipes and captured output."""
    if _NOTEBOOK:
        return True
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if isatty is not None else False
    except ValueError:  # a closed stream
        return False


def _duration(seconds: float) -> str:
    """``m:ss`` or ``h:mm:ss``."""
    s = max(0, int(round(seconds)))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class _Summary:
    """The off-terminal stand-in for a nested tqdm bar: one plain line when it closes
    (``desc: n/total unit in 12 s``), so a log shows each evaluation without redraw codes."""

    def __init__(self, total: int, desc: str, unit: str, stream: IO[str], clock: Clock) -> None:
        self.total, self.desc, self.unit, self.stream = total, desc, unit, stream
        self.clock, self.start, self.n, self.closed = clock, clock(), 0, False

    def update(self, n: int = 1) -> None:
        self.n += n

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        took = self.clock() - self.start
        self.stream.write(f"{self.desc}: {self.n}/{self.total} {self.unit}s in {_duration(took)}\n")
        self.stream.flush()

    def __enter__(self) -> _Summary:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress_bar(
    total: int,
    desc: str,
    unit: str,
    enabled: bool,
    *,
    stream: IO[str] | None = None,
    clock: Clock = time.monotonic,
):
    """A bar over ``total`` units on ``stream`` (stderr): a tqdm bar that disappears when done
    on a terminal, one plain summary line when it closes elsewhere, a silent no-op when
    ``enabled`` is false, so callers update it unconditionally. The caller decides whether to
    show progress at all (the CLI turns it on, library calls default to off)."""
    stream = sys.stderr if stream is None else stream
    if not enabled:
        return tqdm(total=total, disable=True)
    if not interactive(stream):
        return _Summary(total, desc, unit, stream, clock)
    return _auto_tqdm(
        total=total, desc=desc, unit=unit, file=stream, dynamic_ncols=True, leave=False
    )


class TrainingProgress:
    """The training bar: updates done, the running ELBO, elapsed time and an ETA.

    The ETA is (updates left) × (seconds per update, evaluation time excluded) + (periodic
    evaluations left) × (mean seconds per evaluation so far). Time spent inside
    :meth:`paused` (the loop wraps each evaluation in it) is never part of the time per update:
    tqdm's own estimate divides recent wall time by recent updates, so every evaluation looked
    like a sudden slowdown and the ETA jumped to many minutes until the rate recovered. With
    ``eval_every`` None the pauses are not forecast, only excluded.

    On a terminal (or notebook) it is a tqdm bar; elsewhere it writes a plain line at every
    5 % of the run, at most ``interval`` seconds apart, and at the end.
    """

    def __init__(
        self,
        total: int,
        initial: int = 0,
        *,
        eval_every: int | None = None,
        desc: str = "train",
        unit: str = "update",
        stream: IO[str] | None = None,
        clock: Clock = time.monotonic,
        interval: float = 60.0,
    ) -> None:
        self.total, self.initial, self.n = total, initial, initial
        self.eval_every = eval_every if eval_every is not None and eval_every >= 1 else None
        self.desc, self.unit = desc, unit
        self.stream = sys.stderr if stream is None else stream
        self.clock, self.interval = clock, interval
        self.start = self.last_line = clock()
        self.paused_seconds = 0.0
        self._paused_through = initial
        self.postfix = ""
        self._every_line = max(1, math.ceil((total - initial) / 20))
        self._next_line = initial + self._every_line
        self._printed_at = None if initial < total else initial
        self._bar = None
        if interactive(self.stream):
            self._bar = _auto_tqdm(
                total=total,
                initial=initial,
                desc=self._status(),
                file=self.stream,
                dynamic_ncols=True,
                bar_format=desc + ": {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{desc}]",
            )

    # --- the estimate -------------------------------------------------------------------------

    def _evaluations_done(self) -> int:
        if self.eval_every is None:
            return 0
        return self._paused_through // self.eval_every - self.initial // self.eval_every

    def _evaluations_left(self) -> int:
        # the evaluation of update n runs after update n: until its pause ends it is still due
        if self.eval_every is None:
            return 0
        return self.total // self.eval_every - self._paused_through // self.eval_every

    def seconds_per_update(self) -> float | None:
        """Wall time per update since the bar started, time in :meth:`paused` excluded."""
        done = self.n - self.initial
        if done < 1:
            return None
        return (self.clock() - self.start - self.paused_seconds) / done

    def eta(self) -> float | None:
        """Seconds until the last update, periodic evaluations included; None before the first."""
        per_update = self.seconds_per_update()
        if per_update is None:
            return None
        evals = self._evaluations_done()
        per_eval = self.paused_seconds / evals if evals else 0.0
        return (self.total - self.n) * per_update + self._evaluations_left() * per_eval

    def _status(self) -> str:
        parts = [f"{_duration(self.clock() - self.start)} elapsed"]
        eta, per_update = self.eta(), self.seconds_per_update()
        if eta is not None:
            parts.append(f"eta {_duration(eta)}")
        if per_update:
            parts.append(f"{1.0 / per_update:.3g} {self.unit}s/s")
        if self.postfix:
            parts.append(self.postfix)
        return ", ".join(parts)

    # --- what the loop calls ------------------------------------------------------------------

    def update(self, postfix: str = "") -> None:
        """One update done; ``postfix`` (e.g. the running ELBO) is shown after the times."""
        self.n += 1
        self.postfix = postfix
        if self._bar is not None:
            self._bar.set_description_str(self._status(), refresh=False)
            self._bar.update(1)
            return
        now = self.clock()
        if (
            self.n >= self._next_line
            or self.n >= self.total
            or now - self.last_line >= self.interval
        ):
            self._line(now)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Time spent inside is excluded from the time per update (wrap evaluations in it)."""
        began = self.clock()
        try:
            yield
        finally:
            self.paused_seconds += self.clock() - began
            self._paused_through = self.n
            if self._bar is not None:
                self._bar.unpause()

    def _line(self, now: float) -> None:
        self.last_line, self._printed_at = now, self.n
        while self._next_line <= self.n:
            self._next_line += self._every_line
        pct = 100.0 * self.n / self.total if self.total else 100.0
        self.stream.write(
            f"{self.desc}: {self.n}/{self.total} {self.unit}s ({pct:.0f}%), {self._status()}\n"
        )
        self.stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._printed_at != self.n:
            self._line(self.clock())
