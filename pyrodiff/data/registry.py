"""Every data set by name: the built-in ones, or a path to the user's own .npy/.npz file."""

from __future__ import annotations

import enum
import inspect
from collections.abc import Callable
from pathlib import Path

from ..errors import ConfigError
from .arrays import ARRAY_SUFFIXES, load_array
from .base import Dataset
from .digits import load_digits
from .toy2d import Toy2D, load_toy2d

__all__ = ["DatasetName", "get_dataset", "dataset_names"]


class DatasetName(enum.Enum):
    """The built-in data sets."""

    DIGITS = "digits"
    """scikit-learn's 8×8 digits, 17 grey levels (see :func:`~pyrodiff.data.load_digits`)."""
    EIGHT_GAUSSIANS = Toy2D.EIGHT_GAUSSIANS.value
    CHECKERBOARD = Toy2D.CHECKERBOARD.value
    TWO_MOONS = Toy2D.TWO_MOONS.value


def _toy(kind: Toy2D) -> Callable[..., Dataset]:
    def load(
        num_train: int = 10_000,
        num_test: int = 2_000,
        seed: int = 0,
        dtype=None,
        num_validation: int = 2_000,
    ):
        return load_toy2d(
            kind,
            num_train=num_train,
            num_test=num_test,
            seed=seed,
            dtype=dtype,
            num_validation=num_validation,
        )

    return load


_LOADERS: dict[DatasetName, Callable[..., Dataset]] = {
    DatasetName.DIGITS: load_digits,
    DatasetName.EIGHT_GAUSSIANS: _toy(Toy2D.EIGHT_GAUSSIANS),
    DatasetName.CHECKERBOARD: _toy(Toy2D.CHECKERBOARD),
    DatasetName.TWO_MOONS: _toy(Toy2D.TWO_MOONS),
}


def dataset_names() -> list[str]:
    """The names :func:`get_dataset` accepts besides a file path."""
    return [n.value for n in DatasetName]


def get_dataset(name_or_path: DatasetName | str | Path, **kwargs) -> Dataset:
    """Load a built-in data set by :class:`DatasetName` (or its value), or a .npy/.npz file.

    ``kwargs`` go to the loader: ``num_train``, ``num_validation``, ``num_test``, ``seed``,
    ``dtype`` for the 2-D sets; ``dtype`` for digits; those of :func:`~pyrodiff.data.load_array` for a file.
    An unknown name or keyword raises :class:`~pyrodiff.errors.ConfigError` listing the valid
    ones.
    """
    if isinstance(name_or_path, DatasetName):
        loader = _LOADERS[name_or_path]
        label = name_or_path.value
    elif isinstance(name_or_path, Path) or str(name_or_path).lower().endswith(ARRAY_SUFFIXES):
        loader = load_array
        label = str(name_or_path)
        kwargs = {"path": name_or_path, **kwargs}
    elif isinstance(name_or_path, str):
        key = name_or_path.strip().lower().replace("-", "_")
        try:
            name = DatasetName(key)
        except ValueError:
            raise ConfigError(
                f"unknown data set {name_or_path!r}; expected one of "
                f"{', '.join(dataset_names())}, or a path ending in .npy or .npz"
            ) from None
        loader, label = _LOADERS[name], name.value
    else:
        raise ConfigError(
            f"a data set is named by a DatasetName, a string or a path, got {type(name_or_path).__name__}"
        )
    try:
        inspect.signature(loader).bind(**kwargs)
    except TypeError:
        params = [p for p in inspect.signature(loader).parameters if p != "path"]
        given = sorted(k for k in kwargs if k != "path")
        raise ConfigError(
            f"data set {label!r} takes the options {', '.join(params) or 'none'}; got {', '.join(given)}"
        ) from None
    return loader(**kwargs)
