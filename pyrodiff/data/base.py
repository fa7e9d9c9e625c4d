"""The dataset container shared by every loader."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from ..likelihoods import DiscretizedGaussianLikelihood, GaussianLikelihood, Likelihood

__all__ = ["Dataset", "Density", "Split"]


class Split(enum.Enum):
    """A part of a :class:`Dataset`. Choices (configurations, early stopping) are made on
    VALIDATION; TEST is read once, for the number a run reports."""

    TRAIN = "train"
    VALIDATION = "validation"
    TEST = "test"


@runtime_checkable
class Density(Protocol):
    """A data distribution whose log density is known exactly, in the model's space.

    ``log_prob(x)`` is log p(x) in nats for x of shape (N, *event_shape), returning (N,).
    ``entropy`` is H = −E_p[log p(x)] in nats: −H is the best expected log-likelihood (per
    datum) any model can reach, so −H − E_p[ELBO] ≥ 0 is what a bound leaves on the table.
    ``entropy_se`` is its standard error: 0 for a closed form, otherwise the Monte-Carlo error.
    """

    @property
    def entropy(self) -> float: ...

    @property
    def entropy_se(self) -> float: ...

    def log_prob(self, x: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class Dataset:
    """Train, validation and test splits in the model's space.

    ``validation`` is held out from training like ``test``, and is what training looks at
    (``fit``'s evaluations every ``eval_every`` updates); ``test`` is for the reported number.
    Every built-in set has one; a Dataset built by hand may leave it ``None``.

    Quantised data (``num_levels`` set) is stored rescaled to [−1, 1]: integer level k becomes
    −1 + 2k/(K − 1), and :meth:`likelihood` returns the matching discretised decoder.
    """

    name: str
    train: Tensor
    test: Tensor
    num_levels: int | None = None
    density: Density | None = None
    """the exact data density, when known (the 2-D toy sets); ``None`` otherwise."""
    validation: Tensor | None = None
    """the validation split (same datum shape as ``train``), or ``None`` when there is none."""

    def split(self, which: Split) -> Tensor:
        """The tensor of one split; DataError when the data set has no validation split."""
        if which is Split.TRAIN:
            return self.train
        if which is Split.TEST:
            return self.test
        if self.validation is None:
            from ..errors import DataError

            raise DataError(f"data set {self.name!r} has no validation split")
        return self.validation

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.train.shape[1:])

    @property
    def num_dims(self) -> int:
        return math.prod(self.event_shape)

    def likelihood(self) -> Likelihood:
        """The decoder that fits this data: discretised for quantised data, Gaussian otherwise."""
        if self.num_levels is None:
            return GaussianLikelihood()
        return DiscretizedGaussianLikelihood(self.num_levels)

    def to_levels(self, x: Tensor) -> Tensor:
        """Map model-space values back to integer levels 0 … K − 1 (rounded and clipped):
        :meth:`~pyrodiff.likelihoods.DiscretizedGaussianLikelihood.to_levels`."""
        return self._quantised_likelihood().to_levels(x)

    def from_levels(self, levels: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """Integer levels 0 … K − 1 as model-space values −1 + 2k/(K − 1):
        :meth:`~pyrodiff.likelihoods.DiscretizedGaussianLikelihood.from_levels`."""
        return self._quantised_likelihood().from_levels(levels, dtype)

    def _quantised_likelihood(self) -> DiscretizedGaussianLikelihood:
        if self.num_levels is None:
            raise ValueError(f"dataset {self.name!r} is continuous: it has no integer levels")
        return DiscretizedGaussianLikelihood(self.num_levels)
