"""What stops training safely: non-finite numbers and Ctrl-C."""

from __future__ import annotations

import math
import signal
import threading
from pathlib import Path
from types import FrameType

from ..errors import NonFiniteError

__all__ = ["InterruptFlag", "is_refused_non_finite", "non_finite_error"]


class InterruptFlag:
    """While active, the first SIGINT (Ctrl-C) only sets :attr:`requested`.

    The loop checks the flag between updates, so it stops on a consistent state, writes a
    checkpoint and returns. A second SIGINT raises KeyboardInterrupt at once, for a run that
    must stop now. Outside the main thread (where Python cannot install handlers) it does
    nothing and a KeyboardInterrupt is handled by the loop directly.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous = None
        self._installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> InterruptFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False


def non_finite_error(
    what: str,
    value: float,
    step: int,
    lr: float,
    data_range: tuple[float, float],
    checkpoint: str | None,
    run_dir: Path | None = None,
    next_checkpoint: int | None = None,
) -> NonFiniteError:
    """The error for a NaN/inf ``what`` (loss, gradient norm) during update number ``step``;
    it says which checkpoint is kept, or why there is none."""
    if checkpoint:
        kept = f"the last good checkpoint {checkpoint} is kept"
    elif run_dir is None:
        kept = "no checkpoint was written (pass run_dir and checkpoint_every to keep one)"
    elif next_checkpoint is not None:
        kept = (
            f"no checkpoint was written to {run_dir}: the first was due after update "
            f"{next_checkpoint}"
        )
    else:
        kept = f"no checkpoint was written to {run_dir}: one is written only at the end"

    shown = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return NonFiniteError(
        f"non-finite {what} ({shown}) at step {step}: the parameters or the data hold NaN/inf "
        f"or the updates overflowed; try a lower learning rate (now {lr:.3g}) "
        f"or grad_clip, and check the data range (the training data spans "
        f"[{data_range[0]:.4g}, {data_range[1]:.4g}]); {kept}"
    )


def is_refused_non_finite(exc: ValueError) -> bool:
    """True for torch.distributions refusing NaN/inf arguments: with validation on (Pyro's
    default) that is how NaN parameters first show, before any loss value exists."""
    return "found invalid values" in str(exc)
