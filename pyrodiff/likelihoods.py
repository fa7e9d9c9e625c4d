"""Decoders p_θ(x_0 | x_1): the density of the data given the least-noisy latent.

A likelihood turns the model's predicted mean and scale at t = 1 into a Pyro distribution
over x_0 (elementwise; the model adds the event dimensions) and checks that data lies in its
support before training starts.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.torch_distribution import TorchDistribution
from torch import Tensor, nn
from torch.distributions import constraints

from .errors import ConfigError, DataError
from .gaussian import sum_event

_EMPTY = torch.Size()

__all__ = ["Likelihood", "GaussianLikelihood", "DiscretizedGaussianLikelihood", "DiscretizedNormal"]


# The grid of quantised data: integer level k ∈ {0 … K − 1} is the value low + k Δ,
# Δ = (high − low)/(K − 1). The two maps below are its one home; DiscretizedNormal,
# DiscretizedGaussianLikelihood (to_levels / from_levels), the samplers and the data sets use them.


def _level_step(num_levels: int, low: float, high: float) -> float:
    return (high - low) / (num_levels - 1)


def _to_levels(x: Tensor, num_levels: int, low: float, high: float) -> Tensor:
    """The nearest level k of each value (outside [low, high]: the end level), a LongTensor."""
    k = torch.round((x - low) / _level_step(num_levels, low, high))
    return k.clamp(0, num_levels - 1).long()


def _from_levels(levels: Tensor, num_levels: int, low: float, high: float, dtype) -> Tensor:
    """The value low + k Δ of each level, in ``dtype``."""
    return low + levels.to(dtype) * _level_step(num_levels, low, high)


class Likelihood(nn.Module):
    """Base class: ``distribution(loc, scale)`` is p(x_0 | x_1), elementwise."""

    def distribution(self, loc: Tensor, scale: Tensor) -> TorchDistribution:  # pragma: no cover
        raise NotImplementedError

    def validate(self, x0: Tensor) -> None:
        """Raise :class:`~pyrodiff.errors.DataError` if ``x0`` is outside the support."""

    def reconstruction(self, x0: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
        """log p(x_0 | loc, scale) per datum, summed over the event dimensions of ``x0`` (shape
        (batch, *event)): the reconstruction term of every bound, discrete (at the decoder's
        mean and variance) and continuous (at z_0/α_0, σ_0/α_0).

        The distribution is built without argument validation: its arguments come from checked
        data and schedule tables, and validating them (a ``.all()`` per constraint) would read
        device values back every step. A non-finite result still surfaces in the loss.
        """
        with pyro.validation_enabled(False):
            return sum_event(self.distribution(loc, scale).log_prob(x0), x0.dim() - 1)

    def config(self) -> dict:
        return {"kind": type(self).__name__}


class GaussianLikelihood(Likelihood):
    """p(x_0 | x_1) = N(μ_θ(x_1, 1), σ_1² I): the decoder for continuous data."""

    def distribution(self, loc: Tensor, scale: Tensor) -> dist.Normal:
        return dist.Normal(loc, scale.expand_as(loc))


def _log1mexp(z: Tensor) -> Tensor:
    """log(1 − exp(z)) for z ≤ 0, accurate at both ends."""
    return torch.where(z > -math.log(2.0), torch.log(-torch.expm1(z)), torch.log1p(-torch.exp(z)))


def _log_normal_interval(a: Tensor, b: Tensor) -> Tensor:
    """log(Φ(b) − Φ(a)) for a < b, computed in whichever tail keeps it accurate."""
    upper = (a + b) > 0
    lo = torch.where(upper, -b, a)
    hi = torch.where(upper, -a, b)
    log_hi = torch.special.log_ndtr(hi)
    return log_hi + _log1mexp(torch.special.log_ndtr(lo) - log_hi)


class DiscretizedNormal(TorchDistribution):
    """A Normal(loc, scale) binned onto K equally spaced levels in [low, high].

    Level k sits at low + k·Δ with Δ = (high − low)/(K − 1); its bin is [x − Δ/2, x + Δ/2],
    with the outer bins extended to ±∞, so the K probabilities sum to one. ``log_prob`` is a
    log *probability* (a mass), which is why bits/dim computed from it are comparable with
    the literature on the original integer scale.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    has_rsample = False

    def __init__(
        self,
        loc: Tensor,
        scale: Tensor,
        num_levels: int,
        low: float = -1.0,
        high: float = 1.0,
        validate_args=None,
    ):
        self.loc, self.scale = torch.broadcast_tensors(loc, scale)
        self.num_levels, self.low, self.high = num_levels, low, high
        self.half_bin = 0.5 * _level_step(num_levels, low, high)
        super().__init__(self.loc.shape, torch.Size(), validate_args=validate_args)

    @property
    def support(self):
        return constraints.real

    def expand(self, batch_shape, _instance=None):
        shape = torch.Size(batch_shape)
        return DiscretizedNormal(
            self.loc.expand(shape), self.scale.expand(shape), self.num_levels, self.low, self.high
        )

    def log_prob(self, value: Tensor) -> Tensor:
        lower = torch.where(
            value <= self.low + self.half_bin,
            torch.full_like(value, -math.inf),
            (value - self.half_bin - self.loc) / self.scale,
        )
        upper = torch.where(
            value >= self.high - self.half_bin,
            torch.full_like(value, math.inf),
            (value + self.half_bin - self.loc) / self.scale,
        )
        return _log_normal_interval(lower, upper)

    def sample(self, sample_shape: torch.Size = _EMPTY) -> Tensor:
        with torch.no_grad():
            x = torch.normal(
                self.loc.expand(sample_shape + self.loc.shape),
                self.scale.expand(sample_shape + self.loc.shape),
            )
            levels = _to_levels(x, self.num_levels, self.low, self.high)
            return _from_levels(levels, self.num_levels, self.low, self.high, x.dtype)

    @property
    def mean(self) -> Tensor:  # pragma: no cover - rarely needed
        return self.loc


class DiscretizedGaussianLikelihood(Likelihood):
    """DDPM's decoder for data quantised to K levels, rescaled to [−1, 1].

    p(x_0 | x_1) = Π_i ∫_{bin(x_0,i)} N(u; μ_θ(x_1, 1)_i, σ_1²) du, a probability mass, so
    −log p / (D ln 2) is bits/dim on the original integer scale.
    """

    def __init__(self, num_levels: int, low: float = -1.0, high: float = 1.0) -> None:
        super().__init__()
        if isinstance(num_levels, bool) or not isinstance(num_levels, int) or num_levels < 2:
            raise ConfigError(f"num_levels must be an integer >= 2, got {num_levels!r}")
        if not low < high:
            raise ConfigError(f"need low < high, got low={low}, high={high}")
        self.num_levels, self.low, self.high = num_levels, float(low), float(high)

    def distribution(self, loc: Tensor, scale: Tensor) -> DiscretizedNormal:
        return DiscretizedNormal(loc, scale, self.num_levels, self.low, self.high)

    def to_levels(self, x: Tensor) -> Tensor:
        """The integer level 0 … K − 1 nearest to each value (rounded, clipped), a LongTensor."""
        return _to_levels(x, self.num_levels, self.low, self.high)

    def from_levels(self, levels: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """The value low + k (high − low)/(K − 1) of each level k, in ``dtype`` (the default
        dtype unless given)."""
        dtype = torch.get_default_dtype() if dtype is None else dtype
        return _from_levels(levels, self.num_levels, self.low, self.high, dtype)

    def quantize(self, x: Tensor) -> Tensor:
        """Each value moved to the nearest level's value, in ``x``'s dtype."""
        return self.from_levels(self.to_levels(x), x.dtype)

    def validate(self, x0: Tensor) -> None:
        step = _level_step(self.num_levels, self.low, self.high)
        k = (x0.detach().double() - self.low) / step
        if (k < -1e-6).any() or (k > self.num_levels - 1 + 1e-6).any():
            raise DataError(
                f"quantised data must lie in [{self.low}, {self.high}] for the discretised likelihood; "
                f"got values in [{x0.min().item():.4g}, {x0.max().item():.4g}]"
            )
        if ((k - k.round()).abs() > 1e-4).any():
            raise DataError(
                f"quantised data must sit on the {self.num_levels} levels of [{self.low}, {self.high}] "
                "(integer levels k rescaled as low + k·Δ); got values between levels"
            )

    def config(self) -> dict:
        return {
            "kind": type(self).__name__,
            "num_levels": self.num_levels,
            "low": self.low,
            "high": self.high,
        }
