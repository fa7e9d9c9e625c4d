"""Checks at the boundaries: one clear error naming what is wrong and what is expected."""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .errors import ConfigError, DataError, ModelMismatchError

__all__ = [
    "AUTO",
    "UNSET",
    "Option",
    "OptionSet",
    "check_batch_size",
    "check_data",
    "check_pair",
    "parse_enum",
]


def check_data(
    x0: object,
    event_shape: tuple[int, ...],
    likelihood=None,
    name: str = "data",
    values: bool = True,
) -> None:
    """Raise :class:`DataError` unless ``x0`` is a finite float tensor of shape (N, *event_shape).

    With ``values=False`` only the type, dtype and shape are checked: nothing is read back from
    the tensor's device (finiteness and the likelihood's support are not checked).
    """
    if not isinstance(x0, Tensor):
        raise DataError(f"{name} must be a torch.Tensor, got {type(x0).__name__}")
    if not x0.is_floating_point():
        raise DataError(f"{name} must be a floating-point tensor, got dtype {x0.dtype}")
    if x0.dim() != len(event_shape) + 1 or tuple(x0.shape[1:]) != tuple(event_shape):
        raise DataError(
            f"{name} must have shape (batch, {', '.join(map(str, event_shape))}), got {tuple(x0.shape)}"
        )
    if x0.shape[0] == 0:
        raise DataError(f"{name} is empty: expected at least one datum")
    if not values:
        return
    if not torch.isfinite(x0).all():
        raise DataError(f"{name} contains NaN or inf values; expected finite numbers")
    if likelihood is not None:
        likelihood.validate(x0)


def check_batch_size(
    batch_size: int, num_train: int, dataset: str | None = None, shard: bool = False
) -> None:
    """Raise :class:`DataError` when a batch would need more data than training has (of the
    named ``dataset``; of this rank's ``shard`` in a distributed run): fit and
    :func:`pyrodiff.config.build` check it alike."""
    if batch_size <= num_train:
        return
    where = "this rank's shard of the" if shard else "the"
    of = f" of {dataset!r}" if dataset is not None else ""
    raise DataError(
        f"batch_size {batch_size} is larger than {where} {num_train} training data{of}; "
        f"expected batch_size <= {num_train}",
        fields=("batch_size",),
    )


def check_schedule_shape(schedule, event_shape: tuple[int, ...], error=ConfigError) -> None:
    """Raise ``error`` unless ``schedule`` is scalar or a schedule per dimension of exactly the
    data's ``event_shape``."""
    schedule_shape = tuple(getattr(schedule, "event_shape", ()))
    if schedule_shape and schedule_shape != tuple(event_shape):
        raise error(
            f"a schedule per dimension must have the data's event shape {tuple(event_shape)}, "
            f"got a schedule with event shape {schedule_shape}"
        )


def check_pair(model, guide) -> None:
    """Raise :class:`ModelMismatchError` unless the guide's T and data shape match the model's
    (its schedule's shape too, when it is a schedule per dimension)."""
    m_steps = getattr(model, "num_steps", None)
    g_steps = getattr(guide, "num_steps", None)
    if m_steps is not None and g_steps is not None and m_steps != g_steps:
        raise ModelMismatchError(
            f"the guide has T = {g_steps} steps but the model has T = {m_steps}"
        )
    m_shape = getattr(model, "event_shape", None)
    g_shape = getattr(guide, "event_shape", None)
    if m_shape is not None and g_shape is not None and tuple(m_shape) != tuple(g_shape):
        raise ModelMismatchError(
            f"the guide's data shape {tuple(g_shape)} does not match the model's {tuple(m_shape)}"
        )
    if m_shape is not None:
        check_schedule_shape(getattr(guide, "schedule", None), m_shape, ModelMismatchError)


# --- options: each declared once, checked the same way wherever it enters ----------------------


def parse_enum(enum_cls: type[enum.Enum], value: Any, what: str = "") -> enum.Enum:
    """``value`` as a member of ``enum_cls``: a member, its value or its name (any case, '-' or
    '_'). Anything else raises ConfigError listing the valid values."""
    if isinstance(value, enum_cls):
        return value
    if isinstance(value, str):
        key = value.strip().lower().replace("-", "_")
        for member in enum_cls:
            if key in (str(member.value).lower(), member.name.lower()):
                return member
    valid = ", ".join(str(m.value) for m in enum_cls)
    raise ConfigError(f"unknown {what or enum_cls.__name__} {value!r}; expected one of {valid}")


class _Unset(enum.Enum):
    UNSET = "unset"

    def __repr__(self) -> str:
        return "UNSET"


UNSET = _Unset.UNSET
"""An :class:`Option` attribute left unset (no "off" value, a run default equal to the default)."""


class AutoDefault(enum.Enum):
    """A default that is a rule rather than a value: it is chosen to fit the other options."""

    AUTO = "auto"

    def __repr__(self) -> str:
        return "AUTO"


AUTO = AutoDefault.AUTO


@dataclass(frozen=True)
class Option:
    """One option, declared once: its type, its range, its default and its help.

    Every place an option enters (a keyword of :func:`pyrodiff.train.fit`, a field of
    :class:`pyrodiff.config.RunConfig`, a key of ``config.json``, a ``pyrodiff train`` flag)
    checks it with :meth:`check`, so a value refused in one is refused in all, with the same
    one-line message naming the option and what it expects.

    Attributes:
        name: the keyword, field and JSON key (the flag is ``--`` + name with '-' for '_').
        kind: ``int``, ``float``, ``str`` or an ``enum.Enum`` class.
        help: what it means, in one phrase.
        default: the value when it is not given (``fit``'s default for a training option).
        run_default: a run configuration's default, where it differs (``UNSET``: the same;
            ``AUTO``: chosen by a rule to fit the other fields).
        low, high, low_open, high_open: the closed or open range of a number.
        nullable: ``None`` is a valid value (its meaning is said in ``help``).
        off: what the word ``off`` means for it on the command line (``UNSET``: it has none).
        parse: a custom check replacing the type and range check: ``parse(value, text)``
            returns the value or raises ConfigError.
    """

    name: str
    kind: type
    help: str
    default: Any = None
    run_default: Any = UNSET
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    nullable: bool = False
    off: Any = UNSET
    parse: Callable[[Any, bool], Any] | None = field(default=None, compare=False)

    @property
    def default_for_run(self) -> Any:
        """The default of a run configuration (``AUTO`` when a rule chooses it)."""
        return self.default if self.run_default is UNSET else self.run_default

    @property
    def expected(self) -> str:
        """What a valid value is, in words: "an integer >= 1", "a number in (0, 1)"…"""
        if isinstance(self.kind, type) and issubclass(self.kind, enum.Enum):
            return "one of " + ", ".join(str(m.value) for m in self.kind)
        if self.kind is int:
            what = "an integer"
        elif self.kind is float:
            what = "a finite number" if self.low is None or self.high is None else "a number"
        else:
            return "a string"
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"{what} in {left}{_num(self.low)}, {_num(self.high)}{right}"
        if self.low is not None:
            return f"{what} {'>' if self.low_open else '>='} {_num(self.low)}"
        if self.high is not None:
            return f"{what} {'<' if self.high_open else '<='} {_num(self.high)}"
        return what

    def error(self, value: Any) -> ConfigError:
        """The one-line error for a value outside the option's type or range."""
        return ConfigError(
            f"{self.name} must be {self.expected}, got {value!r}", fields=(self.name,)
        )

    def check(self, value: Any, text: bool = False) -> Any:
        """``value`` checked (and converted) or ConfigError naming the option.

        ``text=True`` reads a value from outside Python (a JSON file, the command line): an
        enum may be given by its value or name. From Python an enum option takes its members
        only (types, not strings). Integral floats are integers (JSON writes 5 as 5.0 at times).
        """
        if value is None:
            if self.nullable:
                return None
            raise self.error(value)
        if self.parse is not None:
            return self.parse(value, text)
        kind = self.kind
        if isinstance(kind, type) and issubclass(kind, enum.Enum):
            if text:
                try:
                    return parse_enum(kind, value, self.name)
                except ConfigError as exc:
                    raise ConfigError(str(exc), fields=(self.name,)) from None
            if not isinstance(value, kind):
                members = ", ".join(f"{kind.__name__}.{m.name}" for m in kind)
                raise ConfigError(
                    f"{self.name} must be {_article(kind.__name__)} {kind.__name__} ({members}), "
                    f"got {value!r}",
                    fields=(self.name,),
                )
            return value
        if kind is str:
            if not isinstance(value, str):
                raise self.error(value)
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(value)
        if kind is int:
            if isinstance(value, float):
                if not value.is_integer():
                    raise self.error(value)
                value = int(value)
        else:
            value = float(value)
            if not math.isfinite(value):
                raise self.error(value)
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            raise self.error(value)
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            raise self.error(value)
        return value


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def _article(name: str) -> str:
    # "an LRSchedule", "a Precision": an initialism is read letter by letter
    spoken_vowel = name[:1] in "AEIOU" or (name[:2].isupper() and name[:1] in "AEFHILMNORSX")
    return "an" if spoken_vowel else "a"


class OptionSet(Mapping[str, Option]):
    """Options by name (``options["lr"]`` or ``options.lr``), in declaration order."""

    def __init__(self, *options: Option) -> None:
        self._by_name = {o.name: o for o in options}

    def __getitem__(self, name: str) -> Option:
        return self._by_name[name]

    def __getattr__(self, name: str) -> Option:
        try:
            return self.__dict__["_by_name"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)
