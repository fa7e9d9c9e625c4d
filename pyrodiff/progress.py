"""The progress bar of long evaluations (tqdm on stderr)."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm

__all__ = ["progress_bar"]


def progress_bar(total: int, desc: str, unit: str, enabled: bool) -> tqdm:
    """A tqdm bar over ``total`` units on stderr; a silent no-op bar when ``enabled`` is false,
    so callers update it unconditionally. Shown even when stderr is not a terminal: the caller
    decides (the CLI turns it on, library calls default to off)."""
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        disable=not enabled,
        file=sys.stderr,
        dynamic_ncols=True,
        leave=False,
    )
