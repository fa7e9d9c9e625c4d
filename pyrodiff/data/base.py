"""The dataset container shared by every loader."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from ..likelihoods import DiscretizedGaussianLikelihood, GaussianLikelihood, Likelihood

__all__ = ["Dataset"]


@dataclass(frozen=True)
class Dataset:
    """A train/test split in the model's space.

    Quantised data (``num_levels`` set) is stored rescaled to [−1, 1]: integer level k becomes
    −1 + 2k/(K − 1), and :meth:`likelihood` returns the matching discretised decoder.
    """

    name: str
    train: Tensor
    test: Tensor
    num_levels: int | None = None

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
        """Map model-space values back to integer levels 0 … K − 1 (rounded and clipped)."""
        if self.num_levels is None:
            raise ValueError(f"dataset {self.name!r} is continuous: it has no integer levels")
        k = (x + 1) * (self.num_levels - 1) / 2
        return k.round().clamp(0, self.num_levels - 1).long()
