""":class:`RunConfig`: a run's identity (its data, model, objective and training options) and
its JSON form. What each field accepts is declared once, in
:data:`~pyrodiff.config.fields.FIELDS` and :data:`pyrodiff.train.options.OPTIONS`; the
defaults that are rules live in :mod:`~pyrodiff.config.defaults`, the rules between fields in
:mod:`~pyrodiff.config.rules`, reading older files in :mod:`~pyrodiff.config.migrate`, and
the arguments of ``fit`` in :mod:`~pyrodiff.config.fit_args`."""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
import warnings
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..gaussian import Parameterization
from ..models.diffusion import ReverseVariance
from ..train.options import OPTIONS, LRSchedule, Precision, check_warmup
from ..validation import AUTO, Option
from . import defaults, fit_args, migrate, rules
from .fields import FIELDS
from .kinds import GuideKind, ModelKind, NetworkKind, Objective, ScheduleKind, TimestepKind

__all__ = ["RunConfig"]


def _declared(spec: Option) -> Any:
    """A dataclass field declared by its option: its default (None where a rule chooses it)
    and the option itself in the metadata, for the command line's flags."""
    default = spec.default_for_run
    return field(default=None if default is AUTO else default, metadata={"option": spec})


ADDED_FIELDS = frozenset({"dropout"})
"""Fields added without a new layout version: written only when set (see
:meth:`RunConfig.to_dict`); read with their defaults when absent."""


@dataclass(frozen=True)
class RunConfig:
    """The full configuration of one training run; ``config.json`` is its JSON form.

    Every field has a default: the defaults train a diffusion model on the digits in a few
    minutes on two CPU cores. Fields left unset (None) among ``guide``, ``objective``,
    ``num_steps``, ``warmup_steps``, ``eval_every`` and ``checkpoint_every`` take the values
    that fit the others (:attr:`chosen_fields` names them). Values are checked on
    construction against their declarations (strings are read as enums); anything that needs
    the data (the batch size against its size, the data shape against the network) is
    checked by :func:`~pyrodiff.config.build`. ``steps`` is the deprecated old name of
    ``updates``.
    """

    # --- data ---
    data: str = _declared(FIELDS.data)
    num_levels: int | None = _declared(FIELDS.num_levels)
    # --- model and guide ---
    model: ModelKind = _declared(FIELDS.model)
    guide: GuideKind | None = _declared(FIELDS.guide)
    num_steps: int | None = _declared(FIELDS.num_steps)
    schedule: ScheduleKind = _declared(FIELDS.schedule)
    network: NetworkKind = _declared(FIELDS.network)
    width: int | None = _declared(FIELDS.width)
    depth: int = _declared(FIELDS.depth)
    dropout: float = _declared(FIELDS.dropout)
    latent_dim: int | None = _declared(FIELDS.latent_dim)
    guide_hidden: int = _declared(FIELDS.guide_hidden)
    parameterization: Parameterization = _declared(FIELDS.parameterization)
    variance: ReverseVariance = _declared(FIELDS.variance)
    # --- objective ---
    objective: Objective | None = _declared(FIELDS.objective)
    timesteps: TimestepKind | None = _declared(FIELDS.timesteps)
    # --- optimisation ---
    updates: int = _declared(OPTIONS.updates)
    batch_size: int = _declared(OPTIONS.batch_size)
    lr: float = _declared(OPTIONS.lr)
    lr_schedule: LRSchedule = _declared(OPTIONS.lr_schedule)
    warmup_steps: int | None = _declared(OPTIONS.warmup_steps)
    weight_decay: float = _declared(OPTIONS.weight_decay)
    grad_clip: float | None = _declared(OPTIONS.grad_clip)
    ema_decay: float | None = _declared(OPTIONS.ema_decay)
    seed: int = _declared(OPTIONS.seed)
    device: str = _declared(OPTIONS.device)
    precision: Precision = _declared(OPTIONS.precision)
    eval_every: int | None = _declared(OPTIONS.eval_every)
    eval_batch_budget: int = _declared(OPTIONS.eval_batch_budget)
    checkpoint_every: int | None = _declared(OPTIONS.checkpoint_every)
    # the old name of updates, read as the command line's --steps is
    steps: InitVar[int | None] = None

    def __post_init__(self, steps: int | None) -> None:
        if steps is not None:
            object.__setattr__(self, "updates", _old_steps(steps, self.updates))
        for f in dataclasses.fields(self):
            spec: Option = f.metadata["option"]
            value = getattr(self, f.name)
            if value is None and spec.default_for_run is AUTO:
                continue  # chosen below
            object.__setattr__(self, f.name, spec.check(value, text=True))
        # which fields were chosen is remembered, so that replace() can choose them again and
        # the command line can say what it chose
        unset = tuple(name for name in defaults.AUTO_FIELDS if getattr(self, name) is None)
        object.__setattr__(self, "_auto", unset)
        for name, value in defaults.choose(self, unset).items():
            object.__setattr__(self, name, value)
        check_warmup(self.warmup_steps, self.updates, self.lr_schedule)
        rules.check_combination(self)

    @property
    def chosen_fields(self) -> tuple[str, ...]:
        """The fields that were not given and took a value fitting the others (some of
        ``guide``, ``num_steps``, ``objective``, ``warmup_steps``, ``eval_every``,
        ``checkpoint_every``)."""
        return self._auto

    def fit_options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`pyrodiff.train.fit` that this configuration fixes
        (:func:`pyrodiff.config.fit_args.fit_options`)."""
        return fit_args.fit_options(self)

    def checkpoint_options(self, run_dir: str | Path) -> dict[str, Any]:
        """``run_dir`` and ``checkpoint_every`` for :func:`pyrodiff.train.fit` (0: at the end only)."""
        return fit_args.checkpoint_options(self, run_dir)

    # --- JSON ---------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (enums by their value), plus the layout version. A field
        added since the layout's version (:data:`ADDED_FIELDS`) is written only when it differs
        from its default, so a configuration that does not use it is written as before and old
        run folders stay comparable."""
        out: dict[str, Any] = {"config_version": migrate.CONFIG_VERSION}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ADDED_FIELDS and value == f.default:
                continue
            out[f.name] = value.value if isinstance(value, enum.Enum) else value
        return out

    def to_json(self, path: str | Path | None = None) -> str:
        """The configuration as JSON text; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        """Rebuild from :meth:`to_dict` (of this or an older layout); unknown keys and newer
        layouts raise ConfigError. Keys left out take their defaults."""
        return cls(**migrate.upgrade(values, (f.name for f in dataclasses.fields(cls))))

    @classmethod
    def from_json(cls, source: str | Path) -> RunConfig:
        """Read a configuration from JSON text or from a file (a path, or a run folder).

        An error in a file names the file: ``runs/x/config.json: num_steps must be an
        integer >= 1, got 'abc'``, or where its JSON breaks (line and column)."""
        values, path = migrate.read_json(source)
        try:
            config = cls.from_dict(values)
        except ConfigError as exc:
            if path is None:
                raise
            # a key of this file, not a flag: said as the file and the key
            raise ConfigError(f"{path}: {exc}") from None
        object.__setattr__(config, "_source", path)
        return config

    @property
    def source(self) -> Path | None:
        """The file this configuration was read from (:meth:`from_json`), so that
        :func:`~pyrodiff.config.build` can name it in an error about one of its keys; None
        for one built in Python or changed by :meth:`replace`. It is not part of its value."""
        return getattr(self, "_source", None)

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with some fields changed (validated like a new one). Fields that were not
        given are chosen again to fit the changes: ``RunConfig().replace(model="hvae")``
        has a learned guide, and ``replace(updates=20)`` a warm-up of one update."""
        kept = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in self._auto
        }
        changed = type(self)(**{**kept, **changes})
        if not changes:
            object.__setattr__(changed, "_source", self.source)  # the same values, the same file
        return changed


def _old_steps(steps: int, updates: int) -> int:
    if updates != OPTIONS.updates.default_for_run:
        raise ConfigError(
            "RunConfig gives both steps and updates; keep updates (steps is its old name)",
            fields=("updates",),
        )
    warnings.warn(
        "RunConfig(steps=...) is deprecated; the number of optimizer updates is now updates=",
        DeprecationWarning,
        stacklevel=4,  # the caller of RunConfig(...)
    )
    return steps


def _check_declarations() -> None:
    """Each field's annotation says what its declaration does (a type checker reads the one,
    the checks the other): the same kind, and None allowed exactly where it is valid or chosen."""
    hints = typing.get_type_hints(RunConfig)
    for f in dataclasses.fields(RunConfig):
        spec: Option = f.metadata["option"]
        hint, optional = hints[f.name], False
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            hint, optional = args[0], True
        if hint is not spec.kind or optional != (spec.nullable or spec.default_for_run is AUTO):
            raise TypeError(f"RunConfig.{f.name} is annotated {hints[f.name]} against {spec}")


_check_declarations()
