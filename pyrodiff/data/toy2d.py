"""Two-dimensional data sets whose log density is exact: the place to measure an ELBO's gap.

Each set is a *raw* density (a Gaussian mixture or a uniform checkerboard) standardised by an
affine map y = (x − m) / s with the raw density's exact per-coordinate mean m and standard
deviation s, so every coordinate has mean 0 and variance 1, as diffusion models expect. The
change of variables is carried through exactly: log p_y(y) = log p_x(m + s ⊙ y) + Σ_d log s_d
and H_y = H_x − Σ_d log s_d.

The sets:

* **eight Gaussians**: eight equal-weight isotropic Gaussians on a ring (raw radius 2, std 0.2).
* **checkerboard**: the uniform density on the eight dark squares of a 4 × 4 board of unit
  cells centred at 0; its log density is piecewise constant (−log 6 on the support after
  standardising, −inf off it) and its entropy is closed form.
* **two moons**: scikit-learn's two half-circle arcs, made exact by replacing "uniform on the
  arc plus Gaussian noise" (which has no closed-form density) with an equal-weight mixture of
  Gaussians (std 0.1) centred at 50 equally spaced points along each arc. Its spacing
  (π/49 ≈ 0.064) is below the noise, so the ridge is smooth.

Mixture entropies have no closed form: they are estimated once per process, on first use, by
stratified Monte Carlo from a fixed seed (2^18 draws, split evenly over the components), and
reported with that estimate's standard error (the closed-form entropy of each component is
used as a control variate, which makes the error tiny when the components barely overlap).
"""

from __future__ import annotations

import enum
import functools
import math

import torch
from torch import Tensor

from ..errors import ConfigError, DataError
from .base import Dataset

__all__ = [
    "Toy2D",
    "GaussianMixture2D",
    "Checkerboard",
    "Standardized",
    "toy_density",
    "load_toy2d",
    "ENTROPY_SAMPLES",
]

ENTROPY_SAMPLES = 2**18
"""Draws behind every Monte-Carlo entropy (fixed, with a fixed seed: the estimate is stable)."""

_ENTROPY_SEED = 20_240_601


class Toy2D(enum.Enum):
    """The 2-D densities with exact log density."""

    EIGHT_GAUSSIANS = "eight_gaussians"
    CHECKERBOARD = "checkerboard"
    TWO_MOONS = "two_moons"


def _check_points(x: Tensor) -> Tensor:
    if not isinstance(x, Tensor):
        raise DataError(f"points must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2 or x.shape[1] != 2:
        raise DataError(f"points must have shape (N, 2), got {tuple(x.shape)}")
    return x.double()


class GaussianMixture2D:
    """p(x) = Σ_k w_k N(x; μ_k, σ² I) in R²: exact log density by log-sum-exp."""

    def __init__(self, means: Tensor, std: float, weights: Tensor | None = None) -> None:
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.dim() != 2 or means.shape[1] != 2 or means.shape[0] < 1:
            raise ConfigError(f"means must have shape (K, 2) with K >= 1, got {tuple(means.shape)}")
        if not std > 0:
            raise ConfigError(f"std must be positive, got {std!r}")
        if weights is None:
            weights = torch.full((means.shape[0],), 1.0 / means.shape[0], dtype=torch.float64)
        weights = torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != means.shape[:1] or (weights < 0).any():
            raise ConfigError("weights must be K non-negative numbers")
        self.means = means
        self.std = float(std)
        self.weights = weights / weights.sum()

    @property
    def mean(self) -> Tensor:
        return self.weights @ self.means

    @property
    def variance(self) -> Tensor:
        """Per-coordinate variance: the spread of the centres plus σ²."""
        return self.weights @ (self.means - self.mean) ** 2 + self.std**2

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log p(x) in nats, shape (N,)."""
        x64 = _check_points(x)
        log_w = self.weights.log() - math.log(2 * math.pi * self.std**2)
        mu_sq = (self.means**2).sum(-1)
        out = []
        for c in x64.split(16384):  # bounds the (chunk, K) intermediate
            # |x − μ|² = |x|² − 2 x·μ + |μ|² as one matrix product; float64 keeps it accurate
            sq = ((c**2).sum(-1, keepdim=True) - 2 * c @ self.means.T + mu_sq).clamp(min=0)
            out.append(torch.logsumexp(log_w - 0.5 * sq / self.std**2, dim=1))
        return torch.cat(out).to(x.dtype)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, 2, generator=generator, dtype=torch.float64)
        return self.means[k] + self.std * eps

    @functools.cached_property
    def _entropy_estimate(self) -> tuple[float, float]:
        # Stratified over components, H = Σ_k w_k E_{N_k}[−log p], with the closed-form
        # entropy of N_k as control variate: H = Σ_k w_k (H(N_k) + E_{N_k}[log N_k − log p]).
        # The bracket is nearly constant where components barely overlap, so the error is small.
        gen = torch.Generator().manual_seed(_ENTROPY_SEED)
        K = self.means.shape[0]
        per = max(2, ENTROPY_SAMPLES // K)
        eps = torch.randn(K, per, 2, generator=gen, dtype=torch.float64)
        x = (self.means[:, None, :] + self.std * eps).reshape(-1, 2)
        h_comp = math.log(2 * math.pi * math.e * self.std**2)
        log_own = -0.5 * (eps**2).sum(-1) - math.log(2 * math.pi * self.std**2)
        diff = log_own - self.log_prob(x).reshape(K, per)
        h = h_comp + float(self.weights @ diff.mean(1))
        se = float(((self.weights**2) * diff.var(1) / per).sum().sqrt())
        return h, se

    @property
    def entropy(self) -> float:
        """H = −E[log p] (nats), stratified Monte Carlo; see :attr:`entropy_se`."""
        return self._entropy_estimate[0]

    @property
    def entropy_se(self) -> float:
        return self._entropy_estimate[1]

    def entropy_bounds(self) -> tuple[float, float]:
        """Σ_k w_k H(N_k) ≤ H ≤ Σ_k w_k H(N_k) + H(w): closed-form bounds on the entropy."""
        h_comp = math.log(2 * math.pi * math.e * self.std**2)
        w = self.weights[self.weights > 0]
        return h_comp, h_comp - float((w * w.log()).sum())


class Checkerboard:
    """The uniform density on the dark cells of an n × n board of side ``cell``, centred at 0.

    A cell (i, j), i, j = 0 … n − 1, is dark when i + j is even; there are n²/2 of them, so
    p(x) = 2 / (n² cell²) on them and 0 elsewhere, and H = log(n² cell² / 2) exactly.
    """

    def __init__(self, num_cells: int = 4, cell: float = 1.0) -> None:
        if isinstance(num_cells, bool) or not isinstance(num_cells, int) or num_cells < 2:
            raise ConfigError(f"num_cells must be an integer >= 2, got {num_cells!r}")
        if num_cells % 2:
            # with n even every row and column holds n/2 dark cells: uniform marginals
            raise ConfigError(f"num_cells must be even, got {num_cells}")
        if not cell > 0:
            raise ConfigError(f"cell must be positive, got {cell!r}")
        self.num_cells, self.cell = num_cells, float(cell)
        self.half_width = 0.5 * num_cells * self.cell
        ij = torch.cartesian_prod(torch.arange(num_cells), torch.arange(num_cells))
        self._dark = ij[(ij.sum(1) % 2) == 0]
        self.area = self._dark.shape[0] * self.cell**2

    @property
    def mean(self) -> Tensor:
        return torch.zeros(2, dtype=torch.float64)

    @property
    def variance(self) -> Tensor:
        """Each marginal is uniform on [−n·cell/2, n·cell/2]."""
        return torch.full((2,), (2 * self.half_width) ** 2 / 12, dtype=torch.float64)

    def log_prob(self, x: Tensor) -> Tensor:
        x64 = _check_points(x)
        u = (x64 + self.half_width) / self.cell
        ij = torch.floor(u)
        inside = ((u >= 0) & (u < self.num_cells)).all(1)
        dark = (ij.sum(1).remainder(2) == 0) & inside
        out = torch.full((x64.shape[0],), -math.inf, dtype=torch.float64)
        out[dark] = -math.log(self.area)
        return out.to(x.dtype)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        k = torch.randint(self._dark.shape[0], (n,), generator=generator)
        u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
        return (self._dark[k].double() + u) * self.cell - self.half_width

    @property
    def entropy(self) -> float:
        """H = log(area of the dark cells), exact."""
        return math.log(self.area)

    @property
    def entropy_se(self) -> float:
        return 0.0


class Standardized:
    """y = (x − loc) / scale of a raw density, with the Jacobian carried exactly.

    log p_y(y) = log p_x(loc + scale ⊙ y) + Σ_d log scale_d, H_y = H_x − Σ_d log scale_d.
    With ``loc``/``scale`` the raw mean and standard deviation, y has mean 0 and unit variance.
    """

    def __init__(self, base, loc: Tensor | None = None, scale: Tensor | None = None) -> None:
        self.base = base
        self.loc = (base.mean if loc is None else torch.as_tensor(loc)).double()
        self.scale = (base.variance.sqrt() if scale is None else torch.as_tensor(scale)).double()
        if (self.scale <= 0).any():
            raise ConfigError("scale must be positive")
        self.log_det = float(self.scale.log().sum())

    @property
    def mean(self) -> Tensor:
        return (self.base.mean - self.loc) / self.scale

    @property
    def variance(self) -> Tensor:
        return self.base.variance / self.scale**2

    def forward_map(self, x: Tensor) -> Tensor:
        """Raw coordinates → model coordinates."""
        return (x - self.loc.to(x)) / self.scale.to(x)

    def inverse_map(self, y: Tensor) -> Tensor:
        """Model coordinates → raw coordinates."""
        return self.loc.to(y) + self.scale.to(y) * y

    def log_prob(self, y: Tensor) -> Tensor:
        """Exact log p(y) in nats, shape (N,); −inf off the support."""
        y64 = _check_points(y)
        return (self.base.log_prob(self.inverse_map(y64)) + self.log_det).to(y.dtype)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.forward_map(self.base.sample(n, generator))

    @property
    def entropy(self) -> float:
        """H(y) = H(x) − log |det scale| (nats)."""
        return self.base.entropy - self.log_det

    @property
    def entropy_se(self) -> float:
        return self.base.entropy_se


def _eight_gaussians() -> GaussianMixture2D:
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    return GaussianMixture2D(2.0 * torch.stack([angles.cos(), angles.sin()], 1), std=0.2)


def _two_moons(points_per_arc: int = 50, std: float = 0.1) -> GaussianMixture2D:
    theta = torch.linspace(0, math.pi, points_per_arc, dtype=torch.float64)
    outer = torch.stack([theta.cos(), theta.sin()], 1)
    inner = torch.stack([1 - theta.cos(), 0.5 - theta.sin()], 1)  # scikit-learn's make_moons
    return GaussianMixture2D(torch.cat([outer, inner]), std=std)


@functools.cache
def toy_density(kind: Toy2D) -> Standardized:
    """The standardised density of a :class:`Toy2D` set (one shared instance per kind)."""
    kind = _as_kind(kind)
    if kind is Toy2D.EIGHT_GAUSSIANS:
        return Standardized(_eight_gaussians())
    if kind is Toy2D.CHECKERBOARD:
        return Standardized(Checkerboard())
    return Standardized(_two_moons())


def _as_kind(kind: Toy2D | str) -> Toy2D:
    if isinstance(kind, Toy2D):
        return kind
    try:
        return Toy2D(str(kind).lower().replace("-", "_"))
    except ValueError:
        valid = ", ".join(k.value for k in Toy2D)
        raise ConfigError(f"unknown 2-D data set {kind!r}; expected one of {valid}") from None


def load_toy2d(
    kind: Toy2D | str,
    num_train: int = 10_000,
    num_test: int = 2_000,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    num_validation: int = 2_000,
) -> Dataset:
    """Independent train, test and validation draws from a :class:`Toy2D` density, (N, 2).

    Train and test are drawn first and validation after them from the same stream, so adding
    the validation split left the train and test draws of a seed as they were.

    The same ``seed`` gives the same data; ``dataset.density`` holds the exact density
    (``log_prob``, ``entropy``, ``entropy_se``) in the same standardised coordinates.
    """
    kind = _as_kind(kind)
    for label, n in (
        ("num_train", num_train),
        ("num_test", num_test),
        ("num_validation", num_validation),
    ):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"{label} must be an integer >= 1, got {n!r}")
    density = toy_density(kind)
    gen = torch.Generator().manual_seed(int(seed))
    dtype = dtype or torch.get_default_dtype()
    x = density.sample(num_train + num_test, gen).to(dtype)
    validation = density.sample(num_validation, gen).to(dtype)
    return Dataset(
        name=kind.value,
        train=x[:num_train],
        test=x[num_train:],
        validation=validation,
        num_levels=None,
        density=density,
    )
