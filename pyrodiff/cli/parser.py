"""The argparse parser of the ``pyrodiff`` command: every RunConfig field is a ``train`` flag.

A flag's help, default and "off" value come from the field's one declaration
(:data:`pyrodiff.config.fields.FIELDS`, :data:`pyrodiff.train.options.OPTIONS`); its value is
checked by RunConfig against that declaration, so the command line refuses exactly what the
Python API refuses. Parsing errors raise :class:`UsageError` instead of printing usage and
exiting, so that :func:`pyrodiff.cli.main` reports them, like every other error, as one line.
Flags are never abbreviated: ``--update 5`` is an unknown flag, not ``--updates``.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import sys
import typing
from typing import Any

from ..config import RunConfig
from ..data import Split, dataset_names
from ..errors import PyrodiffError
from ..validation import AUTO, UNSET, Option

__all__ = [
    "UsageError",
    "build_parser",
    "config_overrides",
    "enum_metavar",
    "flag_for",
    "NONE_WORDS",
]

PSIS_NUM_DATA = 32
"""Data that ``evaluate --psis`` reads by default: k̂ is read per datum, so a few dozen show
whether q's importance weights have a heavy tail, at a cost like IWAE-16 over 500 data."""

PSIS_SAMPLES = 256
"""Importance samples per datum for k̂ (the Pareto fit reads the largest min(S/5, 3√S))."""

NONE_WORDS = ("none", "off")
"""What an optional numeric flag accepts to mean "not set" (``--ema-decay off``)."""
AUTO_WORD = "auto"
"""What a flag whose default fits the rest of the run accepts to ask for that default."""


class UsageError(PyrodiffError, ValueError):
    """The command line itself is wrong: an unknown flag, a missing argument, a bad value."""


FLAG_NAMES = {"num_steps": ("--T", "--num-steps")}
"""The flags of the fields not spelt ``--`` + the field's name with '-' for '_': the first is
the one errors name."""


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # a prefix of a flag is not that flag: --update would be --updates today and an error
        # the day another flag starting so is added
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> typing.NoReturn:
        raise UsageError(self._where(message))

    def _where(self, message: str) -> str:
        command = self.prog.removeprefix("pyrodiff").strip()
        return f"{command}: {message}" if command else message


def _flag_names(name: str) -> tuple[str, ...]:
    return FLAG_NAMES.get(name, ("--" + name.replace("_", "-"),))


def flag_for(name: str) -> str:
    """The ``train`` flag that sets the RunConfig field ``name`` (``num_steps`` → ``--T``)."""
    if name not in {f.name for f in dataclasses.fields(RunConfig)}:
        raise KeyError(name)
    return _flag_names(name)[0]


class _DeprecatedAlias(argparse.Action):
    """An old flag name: stores into the new flag's destination and warns once on stderr."""

    def __init__(self, *args: Any, new: str, **kwargs: Any) -> None:
        self.new = new
        super().__init__(*args, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(
            f"pyrodiff: warning: {option_string} is deprecated; use {self.new}",
            file=sys.stderr,
            flush=True,
        )
        setattr(namespace, self.dest, values)


class _RemovedFlag(argparse.Action):
    """A flag name that meant something else in an older version: refused, naming the flag
    that does what it did."""

    def __init__(self, *args: Any, use: str, **kwargs: Any) -> None:
        self.use = use
        super().__init__(*args, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        raise UsageError(
            parser._where(f"{option_string} is not a flag of this command; use {self.use}")
        )


def _number(kind: type, optional: bool, name: str, auto: bool = False, off: Any = None):
    """An argparse ``type`` that reads int/float (and none/off when optional: ``off``'s value;
    ``auto`` for a default that fits the run: None); its errors name the flag and what was
    expected."""

    def convert(text: str):
        word = text.strip().lower()
        if auto and word == AUTO_WORD:
            return None
        if optional and word in NONE_WORDS:
            return off
        try:
            return kind(text)
        except ValueError:
            expected = "an integer" if kind is int else "a number"
            also = " or 'off'" if optional and (off is not None or not auto) else ""
            also += " or 'auto'" if auto else ""
            raise argparse.ArgumentTypeError(
                f"{name} expects {expected}{also}, got {text!r}"
            ) from None

    convert.__name__ = kind.__name__
    return convert


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per RunConfig field, from the field's declaration. Defaults are suppressed:
    only flags the user gave reach the namespace, so they can override a loaded configuration."""
    group = parser.add_argument_group("run configuration (defaults train the digits)")
    for f in dataclasses.fields(RunConfig):
        spec: Option = f.metadata["option"]
        names = _flag_names(f.name)
        auto = spec.default_for_run is AUTO
        shown = spec.default_for_run
        shown = shown.value if isinstance(shown, enum.Enum) else shown
        # a default that fits the rest of the run is described in the help text itself
        help_text = spec.help + ("" if auto else f" (default: {shown})")
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        if isinstance(spec.kind, type) and issubclass(spec.kind, enum.Enum):
            # values are checked by RunConfig, whose error lists the valid ones
            kwargs["metavar"] = enum_metavar(spec.kind)
            if auto:
                kwargs["type"] = _auto_word
        elif spec.kind in (int, float):
            # off/none only where the option has an "off" value (eval_every 0: at the end
            # only; ema_decay None: no EMA); auto where its default is a rule
            offable = spec.off is not UNSET
            off = None if spec.off is UNSET else spec.off
            kwargs["type"] = _number(spec.kind, offable, names[0], auto, off)
            kwargs["metavar"] = "N" if spec.kind is int else "X"
        group.add_argument(*names, **kwargs)
        if f.name == "updates":
            group.add_argument(
                "--steps",
                dest="updates",
                default=argparse.SUPPRESS,
                type=_number(int, False, "--steps"),
                action=_DeprecatedAlias,
                new="--updates",
                metavar="N",
                help="deprecated name of --updates",
            )


def enum_metavar(kind: type[enum.Enum]) -> str:
    """``{value,value,…}``: how --help shows a flag whose values are an enum's."""
    return "{" + ",".join(str(member.value) for member in kind) + "}"


def _auto_word(text: str) -> str | None:
    return None if text.strip().lower() == AUTO_WORD else text


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The RunConfig fields given on the command line."""
    return {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(RunConfig)
        if hasattr(args, f.name)
    }


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=_number(int, False, "--threads"),
        default=1,
        metavar="N",
        help=(
            "CPU threads for torch (default 1: the small default networks gain little from "
            "more, and threads that share busy cores run several times slower)"
        ),
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show the full traceback of an error",
    )


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = _Parser(
        prog="pyrodiff",
        description="Train, evaluate, sample and compare diffusion models written as Pyro programs.",
    )
    parser.add_argument("--version", action="version", version=f"pyrodiff {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser(
        "train",
        help="train a model (no arguments: the digits default)",
        description="Train a model and write a run folder (config.json, metrics.jsonl, "
        "checkpoint.pt, figures/). Flags override the defaults, or the file given by --config. "
        "Built-in data sets: " + ", ".join(dataset_names()) + "; or a .npy/.npz file.",
    )
    p.add_argument(
        "--out", metavar="RUN_DIR", help="the run folder to create (default: runs/<time>)"
    )
    p.add_argument("--resume", metavar="RUN", help="continue the run in RUN from its checkpoint")
    p.add_argument("--config", metavar="FILE", help="start from this config.json (or run folder)")
    p.add_argument("--distributed", action="store_true", help="train under torchrun (DDP)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--dry-run", action="store_true", help="check the configuration and data, print it, stop"
    )
    add_config_flags(p)
    _common(p)

    p = sub.add_parser(
        "evaluate",
        help="ELBO terms, bits/dim, IWAE-K and PSIS k-hat of a run",
        description="Evaluate a run's checkpoint on a split; prints a table and writes "
        "RUN/evaluation.json.",
    )
    p.add_argument("run", metavar="RUN")
    p.add_argument(
        "--split",
        default=Split.TEST.value,
        metavar="{" + ",".join(s.value for s in Split) + "}",
        help="which split (default: test, the one a run reports; choose on validation)",
    )
    p.add_argument(
        "--num",
        type=_number(int, False, "--num"),
        default=None,
        metavar="N",
        help="evaluate the first N data of the split only (default: all)",
    )
    p.add_argument(
        "--iwae",
        type=_number(int, False, "--iwae"),
        default=None,
        metavar="K",
        help="also the importance-weighted bound with K samples",
    )
    p.add_argument(
        "--psis",
        action="store_true",
        help="also the PSIS k-hat diagnostic, on the first --psis-num data of those evaluated",
    )
    p.add_argument(
        "--psis-num",
        type=_number(int, False, "--psis-num"),
        default=PSIS_NUM_DATA,
        metavar="N",
        help=f"data the k-hat diagnostic reads (default: {PSIS_NUM_DATA}; k-hat is a per-datum "
        "diagnostic, and each datum costs --psis-samples full chains)",
    )
    p.add_argument(
        "--psis-samples",
        type=_number(int, False, "--psis-samples"),
        default=PSIS_SAMPLES,
        metavar="S",
        help=f"importance samples per datum for k-hat (default: {PSIS_SAMPLES})",
    )
    p.add_argument(
        "--seed",
        type=_number(int, False, "--seed"),
        default=None,
        metavar="N",
        help="seed of the evaluation noise: the same seed prints the same numbers (default: "
        "the seed training evaluates the run with, so that it prints training's numbers)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--no-ema", action="store_true", help="use the raw parameters, not the EMA")
    _common(p)

    p = sub.add_parser(
        "sample",
        help="draw samples from a run's model (PNG + .npy)",
        description="Draw samples; writes RUN/samples-<sampler>.npy and "
        "RUN/figures/samples-<sampler>.png (a digit grid, or a scatter over the true density).",
    )
    p.add_argument("run", metavar="RUN")
    p.add_argument(
        "--num",
        type=_number(int, False, "--num"),
        default=None,
        metavar="N",
        help="number of samples (default: 64 for images, a grid; 1000 for points, a scatter)",
    )
    p.add_argument(
        "--sampler",
        default="ancestral",
        metavar="{ancestral,strided,ddim}",
        help="sampler (default: ancestral)",
    )
    p.add_argument(
        "--sampler-steps",
        type=_number(int, False, "--sampler-steps"),
        default=None,
        metavar="S",
        help="network calls for strided/ddim (default: T/10)",
    )
    p.add_argument(
        # --steps names one thing, train's updates (deprecated); here it meant --sampler-steps
        "--steps",
        dest="sampler_steps",
        action=_RemovedFlag,
        use="--sampler-steps for the network calls of strided/ddim (--steps is the old name of "
        "train's --updates)",
        metavar="S",
        help=argparse.SUPPRESS,
    )
    p.add_argument(
        "--eta",
        type=_number(float, False, "--eta"),
        default=0.0,
        metavar="E",
        help="DDIM's eta (0: deterministic, 1: ancestral-like)",
    )
    p.add_argument(
        "--seed",
        type=_number(int, False, "--seed"),
        default=0,
        metavar="N",
        help="seed of the sampler's noise: the same seed draws the same samples (default: 0)",
    )
    p.add_argument("--out", metavar="FILE", help="the .npy file to write (default: in RUN)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--no-ema", action="store_true", help="use the raw parameters, not the EMA")
    _common(p)

    p = sub.add_parser(
        "compare",
        help="ELBO traces and per-step terms of several runs in one figure",
        description="Draw the ELBO traces and final per-step terms of several runs in one "
        "figure and print a table of their final numbers.",
    )
    p.add_argument("runs", metavar="RUN", nargs="+")
    p.add_argument(
        "--out",
        default=None,
        metavar="FILE",
        help="the figure to write (default: comparison.png in the first run's figures/)",
    )
    _common(p)

    p = sub.add_parser(
        "plot",
        help="redraw a run's figures into RUN/figures/",
        description="Redraw a run's training figures (elbo.png, step_terms.png) and the figures "
        "of its saved samples (samples-*.npy) into RUN/figures/, from metrics.jsonl alone.",
    )
    p.add_argument("run", metavar="RUN")
    _common(p)
    return parser
