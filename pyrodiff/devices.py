"""Device selection (``"auto"`` picks CUDA when it is present, the CPU otherwise) and the
number of CPU threads torch uses for training."""

from __future__ import annotations

import contextlib
import enum
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .errors import ConfigError, DeviceError

__all__ = [
    "ThreadChoice",
    "Threads",
    "check_threads",
    "choose_threads",
    "thread_count",
    "param_dtype",
    "resolve_device",
]

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
"""Environment variables through which a user sets torch's CPU thread count."""

_THREADS_AT_IMPORT = torch.get_num_threads()
"""torch's CPU thread count when pyrodiff was imported: a different count at the time of a fit
was set by the user (pyrodiff itself restores any count it changes)."""


class Threads(enum.Enum):
    """How many CPU threads torch may use while pyrodiff trains (``fit(threads=...)``; an
    ``int`` asks for exactly that many)."""

    AUTO = "auto"
    """One thread on the CPU unless the user has already chosen a count (see
    :func:`choose_threads`). torch starts one thread per core; for the small networks of
    diffusion studies the second thread gains little, and threads that share cores with other
    work wait for each other, which made a fit several times slower on a busy machine."""
    KEEP = "keep"
    """Leave torch's thread count as it is."""


@dataclass(frozen=True)
class ThreadChoice:
    """What :func:`choose_threads` decided: the count to use, torch's count before, and why."""

    threads: int
    before: int
    reason: str

    @property
    def changes(self) -> bool:
        return self.threads != self.before

    def message(self) -> str:
        """One line for the user: the choice, the reason and how to choose otherwise."""
        return (
            f"pyrodiff: training on {self.threads} CPU thread{'s' if self.threads > 1 else ''} "
            f"(torch had {self.before}; {self.reason}); pass threads=N to fit, or call "
            "torch.set_num_threads(N) after importing pyrodiff, to choose another count"
        )


def choose_threads(
    threads: int | Threads = Threads.AUTO, device: torch.device | str = "cpu"
) -> ThreadChoice:
    """The CPU thread count for training on ``device``.

    An ``int`` is used as given; :attr:`Threads.KEEP` keeps torch's count; :attr:`Threads.AUTO`
    keeps it too when the user has chosen one — on a CUDA device (the GPU does the work), when
    ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` is set, or when ``torch.set_num_threads`` was
    called after pyrodiff was imported — and otherwise chooses one thread.
    """
    check_threads(threads)
    before = torch.get_num_threads()
    if isinstance(threads, int):
        return ThreadChoice(threads, before, "asked for")
    if threads is Threads.KEEP:
        return ThreadChoice(before, before, "Threads.KEEP")
    if torch.device(device).type == "cuda":
        return ThreadChoice(before, before, "training on CUDA")
    named = [v for v in THREAD_VARIABLES if os.environ.get(v)]
    if named:
        return ThreadChoice(before, before, f"{named[0]} is set")
    if before != _THREADS_AT_IMPORT:
        return ThreadChoice(before, before, "torch.set_num_threads was called")
    return ThreadChoice(
        1, before, "more threads gain little for small networks and slow down on shared cores"
    )


def check_threads(threads: object) -> None:
    """Raise :class:`~pyrodiff.errors.ConfigError` unless ``threads`` is a positive ``int`` or
    a :class:`Threads`."""
    if isinstance(threads, bool) or not isinstance(threads, int | Threads):
        raise ConfigError(
            f"threads must be a positive integer, Threads.AUTO or Threads.KEEP, got {threads!r}"
        )
    if isinstance(threads, int) and threads < 1:
        raise ConfigError(f"threads must be >= 1, got {threads}")


@contextlib.contextmanager
def thread_count(choice: ThreadChoice) -> Iterator[None]:
    """Run the block with ``choice.threads`` CPU threads and restore torch's count after it."""
    torch.set_num_threads(choice.threads)
    try:
        yield
    finally:
        torch.set_num_threads(choice.before)


def param_dtype(*modules: torch.nn.Module) -> torch.dtype:
    """The floating dtype of the first floating parameter of ``modules`` (the default dtype if
    there is none): the dtype data and noise must have to meet the model's weights."""
    for module in modules:
        for p in module.parameters():
            if p.is_floating_point():
                return p.dtype
    return torch.get_default_dtype()


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` (or a torch.device) into a device.

    Asking for CUDA where there is none raises :class:`~pyrodiff.errors.DeviceError`.
    """
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(
            f"unknown device {device!r}; expected 'auto', 'cpu', 'cuda' or 'cuda:N'"
        ) from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {device!r} was requested but CUDA is not available on this machine"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(
                f"device {device!r} was requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    elif dev.type != "cpu":
        raise ConfigError(f"unsupported device {device!r}; expected 'auto', 'cpu' or 'cuda'")
    return dev
