"""How a timestep-sampled estimator picks t: a distribution π over {1, …, T} and weights 1/π(t).

Any sampler whose ``sample`` returns (t, w) with E[w(t_n) f(t_n)] = Σ_t f(t) for every datum
n keeps the estimator unbiased for the full bound, whatever f (each datum's own terms). The
samplers here differ only in how they spend the batch:

- :class:`UniformTimesteps`: independent uniform t, weight T (DDPM).
- :class:`ImportanceTimesteps`: π(t) ∝ √E[term_t²] from each step's recent values, weight
  1/π(t) (improved DDPM); lower variance once the history is representative.
- :class:`StratifiedTimesteps`: one t from each of N equal strata of (0, 1], strata assigned
  to the data at random; each t_n is still uniform, weight T.
- :class:`AntitheticTimesteps`: pairs (t, T + 1 − t), weight T.
- :class:`LowDiscrepancyTimesteps`: VDM's u_n = (u_0 + n / N) mod 1 with one shared u_0.

All keep their state on the device and never read a device value back to the host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ConfigError, DataError

__all__ = [
    "AntitheticTimesteps",
    "ImportanceTimesteps",
    "LowDiscrepancyTimesteps",
    "StepBins",
    "StratifiedTimesteps",
    "TimestepSampler",
    "UniformTimesteps",
    "bin_steps",
    "log_spaced_bins",
]


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


def _uniform_from_unit(u: Tensor, num_steps: int) -> Tensor:
    """t = ⌊u T⌋ + 1 for u ∈ [0, 1): uniform on {1…T} whenever u is uniform on [0, 1)."""
    return (u * num_steps).long().clamp(0, num_steps - 1) + 1


def _unit(batch: int, device, generator) -> Tensor:
    # float64 so that ⌊u T⌋ is exactly uniform for any realistic T
    return torch.rand(batch, device=device, generator=generator, dtype=torch.float64)


class UniformTimesteps(TimestepSampler):
    """t ~ Uniform{1, …, T}, weight T: DDPM's sampler, unbiased for the bound."""

    def sample(self, batch, num_steps, device, generator=None):
        t = torch.randint(1, num_steps + 1, (batch,), device=device, generator=generator)
        return t, torch.full((batch,), float(num_steps), device=device)


class StratifiedTimesteps(TimestepSampler):
    """Stratified t: u_n = (s_n + U_n) / N with s a random permutation of 0…N−1 and U_n ~ U[0, 1).

    Each u_n is uniform on [0, 1) (a uniform stratum, then uniform within it), so each t_n is
    uniform on {1…T} and weight T keeps every datum's estimate unbiased; the batch as a whole
    covers {1…T} evenly, which lowers the variance of the batch sum when the terms vary
    smoothly with t. The random assignment of strata to data matters: without it datum n
    would only ever see stratum n.
    """

    def sample(self, batch, num_steps, device, generator=None):
        strata = torch.randperm(batch, device=device, generator=generator).to(torch.float64)
        u = (strata + _unit(batch, device, generator)) / batch
        t = _uniform_from_unit(u, num_steps)
        return t, torch.full((batch,), float(num_steps), device=device)


class LowDiscrepancyTimesteps(TimestepSampler):
    """VDM's low-discrepancy times: u_n = (u_0 + n / N) mod 1 with a single u_0 ~ U[0, 1).

    Each u_n is uniform, so each t_n is uniform on {1…T} (weight T, unbiased per datum); the
    batch is an evenly spaced grid with a random shift.
    """

    def sample(self, batch, num_steps, device, generator=None):
        u0 = _unit(1, device, generator)
        u = torch.remainder(
            u0 + torch.arange(batch, device=device, dtype=torch.float64) / batch, 1.0
        )
        t = _uniform_from_unit(u, num_steps)
        return t, torch.full((batch,), float(num_steps), device=device)


class AntitheticTimesteps(TimestepSampler):
    """Antithetic pairs: the first ⌈N/2⌉ data draw t uniformly, datum n + ⌈N/2⌉ gets T + 1 − t_n.

    T + 1 − t is uniform when t is, so each t_n is uniform (weight T, unbiased per datum). The
    terms fall steeply with t, so a pair's sum varies less than two independent draws.
    """

    def sample(self, batch, num_steps, device, generator=None):
        half = (batch + 1) // 2
        t = torch.randint(1, num_steps + 1, (half,), device=device, generator=generator)
        t = torch.cat([t, num_steps + 1 - t[: batch - half]])
        return t, torch.full((batch,), float(num_steps), device=device)


class ImportanceTimesteps(TimestepSampler):
    """Importance-sampled t, π(t) ∝ √E[term_t²] (improved DDPM's loss-aware sampler).

    Keeps the last ``history`` values of each step's per-datum term in a (T + 1, k) ring
    buffer on the device. Until every t has ``history`` values it samples uniformly; then
    π(t) = (1 − ε) √m_t / Σ_s √m_s + ε / T, with m_t the mean of the stored squares and
    ε = ``uniform_mix`` so that no weight exceeds T / ε. The weight 1/π(t) makes each draw
    unbiased for Σ_t term_t given the history, so the estimator stays unbiased while π adapts.
    √E[term_t²] is the variance-minimising π when the per-t terms have little spread around
    their mean; it ignores the noise from x_t, so it is a good choice, not the optimal one.

    One instance belongs to one model (its history is that model's terms). ``update`` takes
    the unweighted one-sample terms, as :class:`~pyrodiff.infer.DiffusionELBO` passes them.
    """

    def __init__(self, history: int = 10, uniform_mix: float = 1e-3) -> None:
        if history < 1:
            raise ConfigError(f"ImportanceTimesteps needs history >= 1, got {history}")
        if not 0.0 < uniform_mix <= 1.0:
            raise ConfigError(f"uniform_mix must be in (0, 1], got {uniform_mix}")
        self.history = int(history)
        self.uniform_mix = float(uniform_mix)
        self._values: Tensor | None = None  # (T + 1, k); row 0 collects dropped duplicates
        self._counts: Tensor | None = None  # (T + 1,) values ever seen per t

    def _state(self, num_steps: int, device) -> tuple[Tensor, Tensor]:
        if self._values is None or self._values.shape[0] != num_steps + 1:
            self._values = torch.zeros(
                num_steps + 1, self.history, dtype=torch.float64, device=device
            )
            self._counts = torch.zeros(num_steps + 1, dtype=torch.long, device=device)
        elif self._values.device != torch.device(device):
            self._values = self._values.to(device)
            self._counts = self._counts.to(device)
        return self._values, self._counts

    def probabilities(self, num_steps: int, device=None) -> Tensor:
        """π(1…T) as a (T,) float64 tensor: uniform while warming up, then the mixture above."""
        device = (
            device
            if device is not None
            else (self._values.device if self._values is not None else "cpu")
        )
        values, counts = self._state(num_steps, device)
        uniform = torch.full((num_steps,), 1.0 / num_steps, dtype=torch.float64, device=device)
        rms = values[1:].square().mean(-1).sqrt()
        total = rms.sum()
        # a history of exact zeros (e.g. a perfect model) carries no information: stay uniform
        shaped = torch.where(total > 0, rms / total.clamp(min=1e-300), uniform)
        adaptive = (1.0 - self.uniform_mix) * shaped + self.uniform_mix * uniform
        warm = (counts[1:] >= self.history).all()
        return torch.where(warm, adaptive, uniform)

    @property
    def warm(self) -> bool:
        """Whether every t has a full history (reads one value back from the device)."""
        return self._counts is not None and bool((self._counts[1:] >= self.history).all())

    def state_dict(self) -> dict[str, Tensor | None]:
        """The history, for checkpoints: a resumed run samples exactly as the original."""
        return {"values": self._values, "counts": self._counts}

    def load_state_dict(self, state: dict[str, Tensor | None]) -> None:
        values, counts = state.get("values"), state.get("counts")
        if (values is None) != (counts is None) or (
            values is not None
            and (values.shape[1] != self.history or counts.shape != values.shape[:1])
        ):
            raise ConfigError(
                f"ImportanceTimesteps state does not match history={self.history}: got values "
                f"{None if values is None else tuple(values.shape)}"
            )
        self._values = None if values is None else values.clone()
        self._counts = None if counts is None else counts.clone()

    def sample(self, batch, num_steps, device, generator=None):
        probs = self.probabilities(num_steps, device)
        t = torch.multinomial(probs, batch, replacement=True, generator=generator) + 1
        return t, (1.0 / probs[t - 1]).to(torch.get_default_dtype())

    def update(self, t: Tensor, terms: Tensor) -> None:
        if t.shape != terms.shape or t.dim() != 1:
            raise DataError(
                f"update needs per-datum t and terms of equal shape (batch,), got "
                f"{tuple(t.shape)} and {tuple(terms.shape)}"
            )
        if self._values is None:
            raise ConfigError("ImportanceTimesteps.update before any sample: T is not known yet")
        values, counts = self._state(self._values.shape[0] - 1, t.device)
        k = self.history
        ts, order = torch.sort(t, stable=True)
        first = torch.searchsorted(ts, ts, right=False)
        size = torch.searchsorted(ts, ts, right=True) - first
        rank = torch.arange(len(ts), device=t.device) - first
        # of more than k draws of one t in a batch only the last k are kept; the rest go to
        # the unused row 0 so the scatter needs no host-side mask
        keep = rank >= size - k
        row = torch.where(keep, ts, torch.zeros_like(ts))
        col = (counts[ts] + rank) % k
        values[row, col] = terms.detach()[order].to(values.dtype)
        counts.index_add_(0, t, torch.ones_like(t))


@dataclass(frozen=True)
class StepBins:
    """Per-step terms summed within log-spaced bins of t.

    Attributes:
        edges: (B + 1,) integer bin edges; bin b holds t ∈ [edges[b], edges[b + 1]).
        totals: (..., B) the terms summed over each bin (their sum is the sum over all t).
    """

    edges: Tensor
    totals: Tensor

    def labels(self) -> list[str]:
        """Readable ranges, e.g. ``"t=1"``, ``"t=2-3"``."""
        out = []
        for lo, hi in zip(self.edges[:-1].tolist(), self.edges[1:].tolist(), strict=True):
            out.append(f"t={lo}" if hi - lo == 1 else f"t={lo}-{hi - 1}")
        return out


def log_spaced_bins(num_steps: int, num_bins: int) -> Tensor:
    """Integer edges 1 = e_0 < e_1 < … < e_B = T + 1, roughly geometric in t (≤ ``num_bins`` bins).

    Small t get narrow bins: on quantised data the bound is decided there.
    """
    if num_steps < 1 or num_bins < 1:
        raise ConfigError(f"need num_steps >= 1 and num_bins >= 1, got {num_steps}, {num_bins}")
    raw = torch.logspace(0.0, math.log10(num_steps + 1), num_bins + 1, dtype=torch.float64)
    edges = raw.round().long().clamp(1, num_steps + 1)
    edges[0], edges[-1] = 1, num_steps + 1
    return torch.unique(edges)


def bin_steps(per_step: Tensor | list, num_bins: int = 12) -> StepBins:
    """Sum per-step terms over log-spaced bins of t.

    ``per_step`` has t along its last axis, column t − 1 for step t (the layout of
    :attr:`~pyrodiff.infer.ELBOTerms.per_step_loss` and of ``per_step_loss`` in training
    records); leading axes (e.g. evaluations over training) are kept.
    """
    x = torch.as_tensor(per_step, dtype=torch.float64)
    if x.dim() < 1 or x.shape[-1] < 1:
        raise DataError(f"per_step needs a last axis over t = 1…T, got shape {tuple(x.shape)}")
    edges = log_spaced_bins(x.shape[-1], num_bins)
    index = torch.bucketize(torch.arange(1, x.shape[-1] + 1), edges, right=True) - 1
    totals = torch.zeros(x.shape[:-1] + (len(edges) - 1,), dtype=torch.float64)
    totals.index_add_(x.dim() - 1, index, x)
    return StepBins(edges=edges, totals=totals)
