"""Reference models for quantised data with exact likelihoods: what a diffusion bound must beat.

Both models work on integer levels 0 … K − 1 (``Dataset.to_levels``), flattened to D pixels,
and give the exact log-probability mass of each datum, so ``bits_per_dim`` is a true
negative log-likelihood on the original integer scale, comparable with a diffusion model's
ELBO under :class:`~pyrodiff.DiscretizedGaussianLikelihood` (which bounds the same mass).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ConfigError, DataError
from .likelihoods import DiscretizedGaussianLikelihood

__all__ = ["PixelCategorical", "AutoregressiveCategorical", "check_levels"]


def check_levels(levels: object, num_levels: int, num_dims: int | None = None) -> Tensor:
    """Return ``levels`` as a (N, D) LongTensor, or raise :class:`DataError` saying why not."""
    if not isinstance(levels, Tensor):
        raise DataError(f"levels must be a torch.Tensor, got {type(levels).__name__}")
    if levels.is_floating_point() or levels.is_complex() or levels.dtype is torch.bool:
        raise DataError(
            f"levels must be an integer tensor (use Dataset.to_levels), got dtype {levels.dtype}"
        )
    if levels.dim() < 2 or levels.shape[0] == 0:
        raise DataError(
            f"levels must have shape (N, *pixels) with N >= 1, got {tuple(levels.shape)}"
        )
    flat = levels.reshape(levels.shape[0], -1).long()
    if num_dims is not None and flat.shape[1] != num_dims:
        raise DataError(f"expected {num_dims} pixels per datum, got {flat.shape[1]}")
    if (flat < 0).any() or (flat >= num_levels).any():
        raise DataError(
            f"levels must lie in 0 … {num_levels - 1}, got values in "
            f"[{int(flat.min())}, {int(flat.max())}]"
        )
    return flat


def _check_num_levels(num_levels: int) -> None:
    if isinstance(num_levels, bool) or not isinstance(num_levels, int) or num_levels < 2:
        raise ConfigError(f"num_levels must be an integer >= 2, got {num_levels!r}")


class PixelCategorical:
    """p(x) = Π_d Cat(x_d; π_d): every pixel independent, π_d its smoothed level frequencies.

    :meth:`fit` sets π_{d,k} = (n_{d,k} + a) / (N + K a) from the training counts n_{d,k}
    (``pseudocount`` a = 1: add-one smoothing, so unseen levels keep a finite probability).
    The log mass is exact; it is the best any model ignoring the pixels' dependence can do, up
    to the smoothing.
    """

    def __init__(self, log_probs: Tensor) -> None:
        if log_probs.dim() != 2:
            raise ConfigError(f"log_probs must have shape (D, K), got {tuple(log_probs.shape)}")
        self.log_probs = log_probs.double()

    @property
    def num_dims(self) -> int:
        return self.log_probs.shape[0]

    @property
    def num_levels(self) -> int:
        return self.log_probs.shape[1]

    @classmethod
    def fit(cls, levels: Tensor, num_levels: int, pseudocount: float = 1.0) -> PixelCategorical:
        """Count the levels of each pixel in ``levels`` (N, *pixels) and smooth the counts."""
        _check_num_levels(num_levels)
        if not pseudocount > 0:
            raise ConfigError(f"pseudocount must be positive, got {pseudocount!r}")
        flat = check_levels(levels, num_levels)
        counts = F.one_hot(flat, num_levels).sum(0).double()  # (D, K)
        probs = (counts + pseudocount) / (flat.shape[0] + num_levels * pseudocount)
        return cls(probs.log())

    def log_prob(self, levels: Tensor) -> Tensor:
        """log p(x) in nats per datum, shape (N,)."""
        flat = check_levels(levels, self.num_levels, self.num_dims)
        return self.log_probs.gather(1, flat.T).sum(0)

    def bits_per_dim(self, levels: Tensor) -> Tensor:
        """−log₂ p(x) / D per datum."""
        return -self.log_prob(levels) / (self.num_dims * math.log(2.0))


class _MaskedLinear(nn.Linear):
    def __init__(self, n_in: int, n_out: int, mask: Tensor) -> None:
        super().__init__(n_in, n_out)
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class AutoregressiveCategorical(nn.Module):
    """p(x) = Π_{d=1}^{D} Cat(x_d; softmax(f_d(x_{<d}))), pixels in raster order.

    f is a one-hidden-layer masked network (MADE, Germain et al. 2015) on the levels scaled to [−1, 1],
    plus a masked linear skip from the inputs: the logits of pixel d see only pixels 1 … d − 1,
    so the product is a normalised distribution and :meth:`log_prob` is its exact log mass
    from one network call. Train it by maximum likelihood (:meth:`fit`).

    Args:
        num_dims: D, pixels per datum.
        num_levels: K, levels per pixel.
        hidden: width of the hidden layer (0: the masked linear part alone).
    """

    def __init__(self, num_dims: int, num_levels: int, hidden: int = 256) -> None:
        super().__init__()
        _check_num_levels(num_levels)
        if isinstance(num_dims, bool) or not isinstance(num_dims, int) or num_dims < 1:
            raise ConfigError(f"num_dims must be an integer >= 1, got {num_dims!r}")
        if hidden < 0:
            raise ConfigError(f"hidden must be >= 0, got {hidden!r}")
        self.num_dims, self.num_levels, self.hidden = num_dims, num_levels, hidden
        D, K = num_dims, num_levels
        # each pixel enters as its level rescaled to [−1, 1] (one input of degree d for pixel d);
        # one-hot inputs would give the skip D²K² weights, which 1,500 images cannot pin down
        deg_in = torch.arange(1, D + 1)
        deg_out = deg_in.repeat_interleave(K)  # the K logits of pixel d need degree < d
        self.skip = _MaskedLinear(D, D * K, deg_out[:, None] > deg_in[None, :])
        if hidden:
            # hidden unit degrees cycle through 1 … D − 1: unit m sees pixels ≤ m(h), feeds > m(h)
            deg_h = torch.arange(hidden) % max(D - 1, 1) + 1
            self.inp = _MaskedLinear(D, hidden, deg_h[:, None] >= deg_in[None, :])
            self.out = _MaskedLinear(hidden, D * K, deg_out[:, None] > deg_h[None, :])
            nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.skip.weight)

    def logits(self, levels: Tensor) -> Tensor:
        """Logits of every pixel given the previous ones, shape (N, D, K)."""
        flat = check_levels(levels, self.num_levels, self.num_dims)
        grid = DiscretizedGaussianLikelihood(self.num_levels)  # levels as values in [−1, 1]
        x = grid.from_levels(flat, self.skip.weight.dtype)
        h = self.skip(x)
        if self.hidden:
            h = h + self.out(F.relu(self.inp(x)))
        return h.reshape(-1, self.num_dims, self.num_levels)

    def log_prob(self, levels: Tensor) -> Tensor:
        """log p(x) in nats per datum, shape (N,): exact."""
        flat = check_levels(levels, self.num_levels, self.num_dims)
        logp = torch.log_softmax(self.logits(flat), -1)
        return logp.gather(2, flat[..., None]).squeeze(-1).sum(-1)

    def bits_per_dim(self, levels: Tensor) -> Tensor:
        """−log₂ p(x) / D per datum."""
        return -self.log_prob(levels) / (self.num_dims * math.log(2.0))

    def fit(
        self,
        levels: Tensor,
        steps: int = 2000,
        batch_size: int = 128,
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        seed: int = 0,
    ) -> list[float]:
        """Maximum likelihood by AdamW on minibatches of ``levels`` with a cosine learning rate.

        Returns the training loss (nats per datum) of every step.
        """
        flat = check_levels(levels, self.num_levels, self.num_dims)
        if steps < 1 or batch_size < 1:
            raise ConfigError(f"steps and batch_size must be >= 1, got {steps}, {batch_size}")
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.AdamW(self.parameters(), lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        losses = []
        for _ in range(steps):
            idx = torch.randint(0, flat.shape[0], (min(batch_size, flat.shape[0]),), generator=gen)
            loss = -self.log_prob(flat[idx]).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        return losses
