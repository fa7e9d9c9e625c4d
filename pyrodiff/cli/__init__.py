"""The ``pyrodiff`` command: ``train``, ``evaluate``, ``sample``, ``compare``, ``plot``.

``main(argv)`` returns the exit status. Every error (a :class:`~pyrodiff.errors.PyrodiffError`,
a bad flag, a missing or unreadable file) is printed as one line on stderr,
``pyrodiff: error: …``, with a non-zero status and no traceback; ``--debug`` shows the
traceback. See ``docs/cli.md``.
"""

from __future__ import annotations

import re
import sys
import traceback
import warnings
from collections.abc import Sequence

from ..errors import PyrodiffError
from .parser import UsageError, build_parser, flag_for

__all__ = ["main", "UsageError"]

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _as_flags(text: str, fields: tuple[str, ...]) -> str:
    """``text`` with the configuration fields it names said as the flags that set them."""
    for name in fields:
        try:
            flag = flag_for(name)
        except KeyError:
            continue
        text = re.sub(rf"(?<![\w-]){re.escape(name)}(?![\w-])", flag, text)
    return text


def _one_line(exc: BaseException, command: str | None = None) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, PyrodiffError) and exc.fields and command == "train":
        # only train has a flag per field; an error from a file names the file and its key
        text = _as_flags(text, exc.fields)
    if isinstance(exc, PyrodiffError):
        return text or type(exc).__name__
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError):
        return f"{exc.strerror}: {exc.filename}"
    # not raised on purpose: name the type so the message still makes sense alone
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _set_threads(threads: int | None) -> None:
    if threads is None:
        return
    if threads < 1:
        raise UsageError(f"--threads must be >= 1, got {threads}")
    import torch

    torch.set_num_threads(threads)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"pyrodiff: warning: {' '.join(str(message).split())}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (``sys.argv[1:]`` by default); return the exit status.
    Warnings (data that looks quantised, a deprecated name) are one line each on stderr."""
    with warnings.catch_warnings():
        # pyrodiff's own deprecations are for the user to see (Python hides them by default)
        warnings.filterwarnings("default", category=DeprecationWarning, module=r"pyrodiff\b")
        warnings.showwarning = _show_warning
        return _main(list(sys.argv[1:] if argv is None else argv))


def _main(argv: list[str]) -> int:
    debug = "--debug" in argv
    command = None
    try:
        args = build_parser().parse_args(argv)
        if args.command is None:
            args = build_parser().parse_args(["train", *argv])
        command = args.command
        from .commands import COMMANDS

        _set_threads(getattr(args, "threads", None))

        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print("pyrodiff: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if debug:
            traceback.print_exc()
        status = EXIT_USAGE if isinstance(exc, UsageError) else EXIT_ERROR
        message = _one_line(exc, command)
        hint = "" if debug or isinstance(exc, PyrodiffError) else " (run with --debug for details)"
        print(f"pyrodiff: error: {message}{hint}", file=sys.stderr, flush=True)
        return status
