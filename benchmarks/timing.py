"""Interleaved timing and peak-memory measurement for the benchmarks.

The machine these run on is usually shared, so its load drifts during a run. Baseline and
candidate are therefore timed in alternating rounds, the order flipping every round, and a
ratio is the median over rounds of (candidate time / baseline time) within the round: a slow
spell that hits one round hits both sides of its ratio.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Timings:
    """Per-call seconds of each case, one entry per round."""

    rounds: dict[str, list[float]]

    def median(self, name: str) -> float:
        return statistics.median(self.rounds[name])

    def ratio(self, candidate: str, baseline: str) -> float:
        """Median over rounds of candidate / baseline time within the same round."""
        pairs = zip(self.rounds[candidate], self.rounds[baseline], strict=True)
        return statistics.median(c / b for c, b in pairs)

    def spread(self, candidate: str, baseline: str) -> tuple[float, float]:
        """(min, max) over rounds of the within-round ratio."""
        r = [c / b for c, b in zip(self.rounds[candidate], self.rounds[baseline], strict=True)]
        return min(r), max(r)


def interleaved(
    cases: dict[str, Callable[[], object]],
    rounds: int,
    calls: int,
    warmup: int,
    device: torch.device,
) -> Timings:
    """Time every case ``calls`` times per round for ``rounds`` rounds, after ``warmup`` calls
    each; the order of the cases reverses every round."""
    names = list(cases)
    for name in names:
        for _ in range(warmup):
            cases[name]()
    _sync(device)
    out: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            fn = cases[name]
            _sync(device)
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            _sync(device)
            out[name].append((time.perf_counter() - start) / calls)
    return Timings(out)
