"""How a timestep-sampled estimator picks t: a distribution π over {1, …, T} and weights 1/π(t).

Any sampler whose ``sample`` returns (t, w) with E_π[w(t) f(t)] = Σ_t f(t) keeps the
estimator unbiased for the full bound.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["TimestepSampler", "UniformTimesteps"]


class TimestepSampler:
    """Base class: ``sample(batch, T, device, generator)`` returns (t, weight), both (batch,)."""

    def sample(
        self,
        batch: int,
        num_steps: int,
        device: torch.device,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:  # pragma: no cover
        raise NotImplementedError

    def update(self, t: Tensor, terms: Tensor) -> None:
        """Observe per-datum terms at the drawn t (for adaptive samplers); a no-op by default."""


class UniformTimesteps(TimestepSampler):
    """t ~ Uniform{1, …, T}, weight T: DDPM's sampler, unbiased for the bound."""

    def sample(self, batch, num_steps, device, generator=None):
        t = torch.randint(1, num_steps + 1, (batch,), device=device, generator=generator)
        return t, torch.full((batch,), float(num_steps), device=device)
