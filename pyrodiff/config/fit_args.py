"""A run configuration as the keyword arguments of :func:`pyrodiff.train.fit`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..train.options import OPTIONS

if TYPE_CHECKING:
    from .run import RunConfig

__all__ = ["checkpoint_options", "fit_options"]

_FIT_ONLY = ("checkpoint_every", "log_every")
"""Training options a run configuration does not pass by itself: ``checkpoint_every`` needs
the caller's ``run_dir``, and a run records every update (``log_every`` 1, fit's default)."""


def fit_options(config: RunConfig) -> dict[str, Any]:
    """The keyword arguments of ``fit`` that ``config`` fixes: every training option but
    ``checkpoint_every`` (see :func:`checkpoint_options`). An evaluation interval of 0 (only
    at the end) is passed as None, which means the same to ``fit``."""
    options = {name: getattr(config, name) for name in OPTIONS if name not in _FIT_ONLY}
    options["eval_every"] = options["eval_every"] or None
    return options


def checkpoint_options(config: RunConfig, run_dir: str | Path) -> dict[str, Any]:
    """``run_dir`` and ``checkpoint_every`` for ``fit`` (0: at the end only, passed as None)."""
    return {"run_dir": run_dir, "checkpoint_every": config.checkpoint_every or None}
