"""Reading ``config.json``: its layout version, the keys of older layouts, and errors that name
the file. Old files keep loading: a renamed key is read under its new name with a
DeprecationWarning."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..checkpoint import CONFIG_NAME
from ..errors import ConfigError

__all__ = ["CONFIG_VERSION", "RENAMED_KEYS", "read_json", "upgrade"]

CONFIG_VERSION = 1
"""The version of the JSON layout this code writes; newer files are refused."""

RENAMED_KEYS = {"steps": "updates"}
"""Old key → its name now. ``steps`` became ``updates`` when a timestep was no longer also
called a step; ``RunConfig(steps=…)`` and ``fit(steps=…)`` read it the same way."""


def _renamed(old: str, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with the old key ``old`` under its new name, with a DeprecationWarning."""
    new = RENAMED_KEYS[old]
    if old not in values:
        return values
    if new in values:
        raise ConfigError(
            f"the configuration gives both '{old}' and '{new}'; keep '{new}' "
            f"('{old}' is its old name)"
        )
    warnings.warn(
        f"the configuration key '{old}' is deprecated; it is now '{new}'",
        DeprecationWarning,
        stacklevel=4,  # the caller of RunConfig.from_dict
    )
    values = dict(values)
    values[new] = values.pop(old)
    return values


def upgrade(values: Any, known: Iterable[str]) -> dict[str, Any]:
    """The keyword arguments of a RunConfig from a ``config.json`` object of any version this
    code reads: the version checked, old keys renamed, unknown keys refused."""
    if not isinstance(values, dict):
        raise ConfigError(f"a configuration must be a JSON object, got {type(values).__name__}")
    values = dict(values)
    version = values.pop("config_version", CONFIG_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ConfigError(f"config_version must be an integer >= 1, got {version!r}")
    if version > CONFIG_VERSION:
        raise ConfigError(
            f"the configuration has config_version {version}, newer than the "
            f"{CONFIG_VERSION} this pyrodiff reads: upgrade pyrodiff"
        )
    for old in RENAMED_KEYS:
        values = _renamed(old, values)
    known = set(known)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"unknown configuration key(s) {', '.join(map(repr, unknown))}; "
            f"expected some of {', '.join(sorted(known))}"
        )
    return values


def read_json(source: str | Path) -> tuple[Any, Path | None]:
    """The JSON value of ``source`` (JSON text, a file, or a run folder holding config.json)
    and the file it came from (None for text). Errors name the file, and the line and column
    of invalid JSON."""
    text, path = source, None
    if isinstance(source, Path) or not str(source).lstrip().startswith("{"):
        path = Path(source)
        if path.is_dir():
            path = path / CONFIG_NAME
        if not path.is_file():
            raise ConfigError(f"no configuration at {path}: expected a {CONFIG_NAME} file")
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot be read as text: {exc}") from None
    try:
        return json.loads(text), path
    except json.JSONDecodeError as exc:
        what = f"{path} is" if path is not None else "the configuration is"
        raise ConfigError(
            f"{what} not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        ) from None
