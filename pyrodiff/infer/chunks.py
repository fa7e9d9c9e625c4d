"""Copies of a batch in memory-bounded chunks: the one loop behind every estimator that
evaluates K importance samples, T timesteps or R repeats of the same data at once."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

from torch import Tensor

from ..errors import ConfigError

__all__ = ["RepeatedChunk", "repeated_chunks"]


class RepeatedChunk(NamedTuple):
    """Copies ``start … start + size − 1`` of a batch of N data: ``x`` has shape
    (size · N, *event_shape), row ``j · N + n`` being datum n (copy ``start + j``)."""

    start: int
    size: int
    x: Tensor


def repeated_chunks(x0: Tensor, copies: int, batch_budget: int) -> Iterator[RepeatedChunk]:
    """``copies`` copies of the batch ``x0`` (N, ...), at most ``max(1, batch_budget // N)``
    copies (so about ``batch_budget`` rows) per chunk, in order.

    Concatenating the chunks' ``x`` gives ``x0.repeat(copies, 1, …)``; a caller reshapes a
    chunk's per-row results to (size, N). A budget below N still makes progress, one copy at
    a time.
    """
    for name, value in (("copies", copies), ("batch_budget", batch_budget)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    n = x0.shape[0]
    chunk = max(1, batch_budget // max(n, 1))
    ones = (1,) * (x0.dim() - 1)
    for start in range(0, copies, chunk):
        size = min(chunk, copies - start)
        yield RepeatedChunk(start, size, x0.repeat((size, *ones)))
