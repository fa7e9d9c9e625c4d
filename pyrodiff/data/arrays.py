"""The user's own arrays, from .npy or .npz files, checked before any model sees them."""

from __future__ import annotations

import math
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, DataError
from ..likelihoods import DiscretizedGaussianLikelihood
from .base import Dataset

__all__ = ["load_array", "ARRAY_SUFFIXES"]

ARRAY_SUFFIXES = (".npy", ".npz")
_MAGIC = {".npy": b"\x93NUMPY", ".npz": b"PK"}
"""The first bytes of a file numpy.save / numpy.savez writes."""


def load_array(
    path: str | Path,
    num_levels: int | None = None,
    test_fraction: float = 0.1,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    validation_fraction: float = 0.1,
) -> Dataset:
    """A :class:`Dataset` from a NumPy file of shape (N, *event_shape).

    * ``.npy``: one array, split at random (``seed``) into a ``test_fraction`` test set, a
      ``validation_fraction`` validation set and the rest for training.
    * ``.npz``: either arrays named ``train`` and ``test`` (used as given; a ``validation``
      array too, else a ``validation_fraction`` of ``train`` is held out at random), or a
      single array (split as for ``.npy``).

    ``validation_fraction=0`` leaves the data set without a validation split.
    Integer-valued data given without ``num_levels`` trains as continuous data; a warning says
    that it looks quantised.

    Continuous data (``num_levels=None``) is used as is: standardise it to roughly unit
    variance, as the Gaussian prior N(0, I) expects. Quantised data (``num_levels=K``) must
    hold integers 0 … K − 1; it is rescaled to [−1, 1] (level k ↦ −1 + 2k/(K − 1)) and the
    dataset's likelihood is the discretised Gaussian, so bits/dim are on the integer scale.

    Files are read with ``allow_pickle=False``: nothing in a file is ever executed. Every
    problem (missing file, wrong suffix, object arrays, non-numeric dtype, wrong ndim, empty,
    NaN/inf, off-grid or out-of-range levels, mismatched train/test shapes) raises one
    :class:`~pyrodiff.errors.DataError` saying what is wrong and what was expected.
    """
    path = Path(path)
    if path.suffix.lower() not in ARRAY_SUFFIXES:
        raise DataError(f"{path}: expected a .npy or .npz file, got suffix {path.suffix!r}")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if num_levels is not None and (
        isinstance(num_levels, bool) or not isinstance(num_levels, int) or num_levels < 2
    ):
        raise ConfigError(f"num_levels must be None or an integer >= 2, got {num_levels!r}")
    if not (isinstance(test_fraction, float | int) and 0.0 < test_fraction < 1.0):
        raise ConfigError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction!r}")
    if not (
        isinstance(validation_fraction, float | int)
        and 0.0 <= validation_fraction < 1.0 - test_fraction
    ):
        raise ConfigError(
            f"validation_fraction must lie in [0, 1 - test_fraction = {1 - test_fraction:g}), "
            f"got {validation_fraction!r}"
        )

    train, test, validation = _read(path)
    gen = torch.Generator().manual_seed(int(seed))
    if test is None:
        train = _check(train, f"{path}", num_levels)
        train, validation, test = _split(train, (test_fraction, validation_fraction), gen, path)
    else:
        train = _check(train, f"{path}['train']", num_levels)
        test = _check(test, f"{path}['test']", num_levels)
        if validation is not None:
            validation = _check(validation, f"{path}['validation']", num_levels)
        for label, other in (("test", test), ("validation", validation)):
            if other is not None and train.shape[1:] != other.shape[1:]:
                raise DataError(
                    f"{path}: train and {label} must share a datum shape, got "
                    f"{train.shape[1:]} and {other.shape[1:]}"
                )
        if validation is None:
            train, validation = _split(train, (validation_fraction,), gen, path)
    if num_levels is None:
        _hint_quantised(train, path)
    dtype = dtype or torch.get_default_dtype()
    return Dataset(
        name=path.stem,
        train=_to_model_space(train, num_levels, dtype),
        test=_to_model_space(test, num_levels, dtype),
        validation=None if validation is None else _to_model_space(validation, num_levels, dtype),
        num_levels=num_levels,
    )


def _hint_quantised(a: np.ndarray, path: Path) -> None:
    """Warn when data given as continuous holds only non-negative integers: pixel levels
    trained as continuous values get a bound in nats of a density, not bits of the levels."""
    integral = a.dtype.kind in "iu" or bool((a == np.round(a)).all())
    lo, hi = a.min(), a.max()
    if integral and lo >= 0 and hi > lo:
        levels = int(hi) + 1
        warnings.warn(
            f"{path}: every value is an integer in [{lo:g}, {hi:g}]: the data looks quantised; "
            f"it trains as continuous data unless given num_levels (e.g. --num-levels {levels})",
            UserWarning,
            stacklevel=3,
        )


def _read(path: Path) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    magic = _MAGIC[path.suffix.lower()]
    with open(path, "rb") as f:
        head = f.read(len(magic))
    if head != magic:
        kind = "a .npy file (numpy.save)" if path.suffix.lower() == ".npy" else "a .npz archive"
        raise DataError(
            f"{path}: not {kind}: it does not start with NumPy's header; for a text file, "
            "read it with numpy.loadtxt and write it with numpy.save"
        )
    try:
        loaded = np.load(path, allow_pickle=False)
    except ValueError as err:  # object arrays need pickle, which is refused
        raise DataError(
            f"{path}: not a plain numeric NumPy file; reading it would need unpickling, "
            f"which is refused ({err})"
        ) from None
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: not a readable NumPy file ({err})") from None
    if isinstance(loaded, np.ndarray):
        return loaded, None, None
    with loaded as archive:
        try:
            keys = sorted(archive.files)
            if {"train", "test"} <= set(keys):
                validation = archive["validation"] if "validation" in keys else None
                return archive["train"], archive["test"], validation
            if len(keys) == 1:
                return archive[keys[0]], None, None
        except ValueError as err:
            raise DataError(
                f"{path}: holds an array that needs unpickling ({err}); expected plain numeric arrays"
            ) from None
    raise DataError(
        f"{path}: an .npz must hold arrays named 'train' and 'test' (and optionally "
        "'validation'), or exactly one array; "
        f"found {keys or 'no arrays'}"
    )


def _check(a: np.ndarray, label: str, num_levels: int | None) -> np.ndarray:
    if a.dtype.kind not in "iuf":
        raise DataError(
            f"{label}: dtype {a.dtype} is not supported; expected integer or floating-point numbers"
        )
    if a.ndim < 2:
        raise DataError(
            f"{label}: shape {a.shape} has no datum dimension; expected (N, *event_shape), "
            "e.g. (N, D) for vectors or (N, C, H, W) for images"
        )
    if a.shape[0] == 0 or math.prod(a.shape[1:]) == 0:
        raise DataError(f"{label}: the array of shape {a.shape} is empty")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        bad = int((~np.isfinite(a)).sum())
        raise DataError(f"{label}: {bad} value(s) are NaN or inf; expected finite numbers")
    if num_levels is not None:
        if a.dtype.kind == "f" and not (a == np.round(a)).all():
            raise DataError(
                f"{label}: quantised data (num_levels={num_levels}) must hold integer levels "
                "0 … K − 1; found non-integer values"
            )
        lo, hi = a.min(), a.max()
        if lo < 0 or hi > num_levels - 1:
            raise DataError(
                f"{label}: levels must lie in 0 … {num_levels - 1} for num_levels={num_levels}; "
                f"found values in [{lo}, {hi}]"
            )
    return a


def _split(a: np.ndarray, fractions: tuple[float, ...], gen: torch.Generator, path: Path):
    """``a`` in a random order cut into the rest and one part per fraction: (rest, *parts) in
    reverse order of ``fractions``. The first part is taken first, so the test set of a seed
    does not depend on the validation fraction. A zero fraction gives ``None``."""
    n = a.shape[0]
    sizes = [int(round(n * f)) for f in fractions]
    if any(f > 0 and k < 1 for f, k in zip(fractions, sizes, strict=True)) or sum(sizes) >= n:
        given = ", ".join(f"{f:g}" for f in fractions)
        raise DataError(
            f"{path}: {n} data cannot be split by the fraction(s) {given}: expected at least "
            "one datum in training and in each held-out split"
        )
    if not any(sizes):
        return (a, *(None for _ in sizes))  # nothing held out: the rows keep their order
    perm = torch.randperm(n, generator=gen).numpy()
    parts, start = [], 0
    for k in sizes:
        parts.append(a[perm[start : start + k]] if k else None)
        start += k
    return (a[perm[start:]], *reversed(parts))


def _to_model_space(a: np.ndarray, num_levels: int | None, dtype: torch.dtype) -> Tensor:
    x = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))
    if num_levels is not None:
        x = DiscretizedGaussianLikelihood(num_levels).from_levels(x, torch.float64)
    return x.to(dtype)
