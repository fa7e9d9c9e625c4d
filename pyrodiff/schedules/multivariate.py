"""A learned log-SNR schedule per dimension, optionally conditioned on a latent z (MuLAN).

λ_j(t | z) = λ0_j(z) + (λ1_j(z) − λ0_j(z)) ρ_j(t | z) for every dimension j of the data, with

    ρ_j(t | z) = Σ_k w_jk(z) B_k(t) / Σ_k w_jk(z),   w_jk = softplus(u_jk + h_jk(z)) > 0,

a convex combination of fixed increasing functions B_k with B_k(0) = 0 and B_k(1) = 1 (the
identity and K − 1 logistic steps spread over [0, 1]). Every parameter value therefore gives a
strictly decreasing λ_j from λ0_j to λ1_j, with its slope in closed form: the T = ∞ bound weighs
the denoising error by −λ′. The ends are λ0_j = start_j + a_j(z) and λ1_j = λ0_j − softplus(gap_j +
b_j(z)), free per dimension (or fixed, :class:`Endpoints`). With ``latent_dim = 0`` there is no z
and the schedule is a learned schedule per dimension; with ``event_shape = ()`` it is a scalar
schedule, the special case of both.

The offsets h, a, b come from one small network of z whose last layer starts at zero, so a
fresh schedule ignores z, and one whose ``u`` puts almost all weight on the identity starts
(almost) linear in t, as :class:`~pyrodiff.schedules.LearnedLogSNR` does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .continuous import (
    LOG_SNR_END,
    LOG_SNR_START,
    Endpoints,
    LogSNRSchedule,
    _check_time,
    _inverse_softplus,
)

__all__ = ["LatentLogSNR", "MultivariateLogSNR"]


def _logistic(x: float) -> float:
    return 0.5 * (1.0 + math.tanh(0.5 * x))


def _basis(t: Tensor, num_basis: int) -> tuple[Tensor, Tensor]:
    """(B_k(t), B_k′(t)) for k = 0 … K − 1, shape t.shape + (K,): B_0(t) = t and, for k ≥ 1, a
    logistic step of sharpness s = 4(K − 1) centred at c_k = (k − ½)/(K − 1), rescaled so that
    B_k(0) = 0 and B_k(1) = 1."""
    t = t.unsqueeze(-1)
    if num_basis == 1:
        return t, torch.ones_like(t)
    sharp = 4.0 * (num_basis - 1)
    # formed in Python floats and moved as one tensor: some eight fewer tensor operations per
    # call, which the step of a small network notices
    centres = [(k - 0.5) / (num_basis - 1) for k in range(1, num_basis)]
    lows = [_logistic(-sharp * c) for c in centres]
    spans = [_logistic(sharp * (1.0 - c)) - lo for c, lo in zip(centres, lows, strict=True)]
    table = torch.tensor([centres, lows, spans], dtype=t.dtype, device=t.device)
    centres, lo, span = table.unbind(0)
    s = torch.sigmoid(sharp * (t - centres))
    steps = (s - lo) / span
    slopes = sharp * s * (1.0 - s) / span
    return torch.cat([t, steps], -1), torch.cat([torch.ones_like(t), slopes], -1)


class LatentLogSNR:
    """λ(· | z) of a :class:`MultivariateLogSNR` at fixed draws of z, one per datum (or the
    schedule's own curves, without z): its parameters with the network's offsets added, so that
    a bound reading λ at t, at both ends and, at finite T, at two steps pays for one call of the
    network of z (:meth:`MultivariateLogSNR.given`).

    ``start``, ``gap``: shape (N, *event_shape) with z, event_shape without; ``logits``: the same
    with a last dimension of size K. The fall λ(0) − λ(1) is formed here and the mixture's
    weights at the first time read, each once for every time read after.
    """

    __slots__ = ("start", "fall", "_logits", "_weights", "event_shape", "num_basis")

    def __init__(
        self,
        start: Tensor,
        gap: Tensor,
        logits: Tensor,
        event_shape: tuple[int, ...],
        num_basis: int,
    ) -> None:
        self.start = start
        self.fall = F.softplus(gap)
        self._logits = logits
        self._weights: Tensor | None = None  # not needed by a caller that reads only the ends
        self.event_shape = event_shape
        self.num_basis = num_basis

    @property
    def batch_size(self) -> int | None:
        """N, the number of draws of z (None without z: one curve per dimension for all)."""
        extra = self.start.dim() - len(self.event_shape)
        return self.start.shape[0] if extra else None

    def _times(self, t: Tensor) -> None:
        _check_time(t)
        n = self.batch_size
        if t.dim() != 1 or (n is not None and t.shape[0] != n):
            want = "(N,)" if n is None else f"({n},), one time per draw of z"
            raise ConfigError(f"t must have shape {want}, got {tuple(t.shape)}")

    def shape(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(ρ(t), ρ′(t)), shape (N, *event_shape) for t of shape (N,)."""
        self._times(t)
        return self._mix(t)

    @property
    def weights(self) -> Tensor:
        """w_jk / Σ_k w_jk, the mixture's weights, shape ``logits``'s."""
        if self._weights is None:
            weights = F.softplus(self._logits)
            self._weights = weights / weights.sum(-1, keepdim=True)
        return self._weights

    def _mix(self, t: Tensor) -> tuple[Tensor, Tensor]:
        weights = self.weights
        basis, slopes = _basis(t.to(weights.dtype), self.num_basis)  # (N, K)
        lead = (t.shape[0],) + (1,) * len(self.event_shape) + (self.num_basis,)
        basis, slopes = basis.reshape(lead), slopes.reshape(lead)
        return (weights * basis).sum(-1), (weights * slopes).sum(-1)

    def log_snr_and_slope(self, t: Tensor, shape_hook=None) -> tuple[Tensor, Tensor]:
        """(λ(t), λ′(t)), shape (N, *event_shape) for t of shape (N,); ``shape_hook`` is applied
        to ρ and ρ′ (:class:`~pyrodiff.infer.ScheduleObjective`)."""
        self._times(t)
        rho, drho = self._mix(t)
        if shape_hook is not None:
            rho, drho = shape_hook(rho), shape_hook(drho)
        return self.start - self.fall * rho, -(self.fall * drho)

    def log_snr(self, t: Tensor) -> Tensor:
        return self.log_snr_and_slope(t)[0]

    def endpoints(self) -> tuple[Tensor, Tensor]:
        """(λ(0), λ(1)), from the end parameters."""
        return self.start, self.start - self.fall


class MultivariateLogSNR(LogSNRSchedule):
    """A decreasing log-SNR λ(t) ∈ R^{event_shape} on t ∈ [0, 1], learned per dimension and,
    with ``latent_dim`` > 0, a function of a latent z (see the module's docstring).

    Args:
        event_shape: the shape of one datum; ``()`` for one schedule shared by all dimensions.
        latent_dim: the size of z (0: no z).
        log_snr_start, log_snr_end: λ(0) and λ(1) at initialisation, every dimension alike
            (13.3 and −5 by default, VDM's).
        num_basis: K, the number of increasing functions ρ is mixed from.
        hidden: the width of the network of z (unused without z).
        endpoints: whether the ends are trained (:class:`Endpoints`).

    ``log_snr_and_slope(t, latent=z)`` takes t of shape (N,) and, when ``latent_dim`` > 0, z of
    shape (N, latent_dim); it returns λ and λ′ of shape (N, *event_shape).
    """

    name = "multivariate_log_snr"

    def __init__(
        self,
        event_shape: tuple[int, ...] = (),
        latent_dim: int = 0,
        *,
        log_snr_start: float = LOG_SNR_START,
        log_snr_end: float = LOG_SNR_END,
        num_basis: int = 8,
        hidden: int = 64,
        endpoints: Endpoints = Endpoints.LEARNED,
    ) -> None:
        super().__init__()
        shape = tuple(int(s) for s in event_shape)
        if any(s < 1 for s in shape):
            raise ConfigError(f"event_shape must hold positive sizes, got {event_shape!r}")
        for what, value, least in (
            ("latent_dim", latent_dim, 0),
            ("num_basis", num_basis, 1),
            ("hidden", hidden, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"{what} must be an integer >= {least}, got {value!r}")
        if not isinstance(endpoints, Endpoints):
            raise ConfigError(f"endpoints must be an Endpoints, got {endpoints!r}")
        start, end = float(log_snr_start), float(log_snr_end)
        if not (math.isfinite(start) and math.isfinite(end) and start > end):
            raise ConfigError(
                f"need finite log_snr_start > log_snr_end (λ decreases with t), got {start!r}, "
                f"{end!r}"
            )
        self.event_shape = shape
        self.latent_dim = latent_dim
        self.num_basis = num_basis
        self.hidden = hidden
        self.endpoints_mode = endpoints
        self._init_ends = (start, end)
        f64 = torch.float64
        start_t = torch.full(shape, start, dtype=f64)
        gap_t = torch.full(shape, _inverse_softplus(start - end), dtype=f64)
        if endpoints is Endpoints.LEARNED:
            self.start = nn.Parameter(start_t)
            self.gap = nn.Parameter(gap_t)
        else:
            self.register_buffer("start", start_t)
            self.register_buffer("gap", gap_t)
        # almost all weight on the identity: the schedule starts (almost) linear in t
        logits = torch.full(shape + (num_basis,), -6.0, dtype=f64)
        logits[..., 0] = _inverse_softplus(1.0)
        self.logits = nn.Parameter(logits)
        self.net: nn.Module | None = None
        if latent_dim:
            size = math.prod(shape)
            outputs = size * (num_basis + (2 if endpoints is Endpoints.LEARNED else 0))
            last = nn.Linear(hidden, outputs)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.SiLU(), last)

    @property
    def num_dims(self) -> int:
        """The number of separate schedules, prod(event_shape)."""
        return math.prod(self.event_shape)

    def _parts(self, latent: Tensor | None, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(start, gap, logits), shaped (*event) and (*event, K) without z, with a leading
        batch dimension with z; in ``like``'s dtype and device."""
        start, gap, logits = (
            p.to(device=like.device, dtype=like.dtype) for p in (self.start, self.gap, self.logits)
        )
        if self.net is None:
            if latent is not None:
                raise ConfigError(
                    "this schedule has no latent (latent_dim = 0); call it without latent="
                )
            return start, gap, logits
        if latent is None:
            raise ConfigError(
                f"this schedule is conditioned on a latent z of size {self.latent_dim}: pass "
                "latent= (shape (N, latent_dim))"
            )
        if latent.dim() != 2 or latent.shape[-1] != self.latent_dim:
            raise ConfigError(
                f"latent must have shape (N, {self.latent_dim}), got {tuple(latent.shape)}"
            )
        out = self.net(latent.to(next(self.net.parameters()).dtype)).to(like.dtype)
        n, K = latent.shape[0], self.num_basis
        per_dim = out.reshape(n, self.num_dims, -1)
        logits = logits + per_dim[..., :K].reshape((n,) + self.event_shape + (K,))
        if self.endpoints_mode is Endpoints.LEARNED:
            start = start + per_dim[..., K].reshape((n,) + self.event_shape)
            gap = gap + per_dim[..., K + 1].reshape((n,) + self.event_shape)
        return start, gap, logits

    def given(self, latent: Tensor | None = None, like: Tensor | None = None) -> LatentLogSNR:
        """λ(· | z) at the draws ``latent`` (shape (N, latent_dim)), or the schedule itself
        without z: the network of z runs once here, and the result answers λ(t), λ′(t) and the
        ends at any number of times. In ``like``'s dtype and device (``latent``'s, else the
        parameters', by default); differentiable in the parameters and in z."""
        if like is None:
            like = latent if latent is not None else self.start
        start, gap, logits = self._parts(latent, like)
        return LatentLogSNR(start, gap, logits, self.event_shape, self.num_basis)

    def endpoints(self, latent: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(λ(0), λ(1)) per dimension, shape event_shape (or (N, *event_shape) given z), in
        float64, differentiable; read from the end parameters, never through ρ(0) = 0 and
        ρ(1) = 1."""
        like = latent if latent is not None else self.start
        return self.given(latent, like.to(self.start.dtype)).endpoints()

    def shape(self, t: Tensor, latent: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(ρ(t), ρ′(t)), shape (N, *event_shape) for t of shape (N,)."""
        return self.given(latent, t).shape(t)

    def log_snr_and_slope(
        self, t: Tensor, shape_hook=None, latent: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """(λ(t), λ′(t)), shape (N, *event_shape) for t of shape (N,) (z of shape (N, latent_dim)
        when the schedule has a latent)."""
        _check_time(t)
        return self.given(latent, t).log_snr_and_slope(t, shape_hook)

    def log_snr(self, t: Tensor, latent: Tensor | None = None) -> Tensor:
        return self.log_snr_and_slope(t, latent=latent)[0]

    def discretize(self, num_steps: int):
        if self.latent_dim:
            raise ConfigError(
                "a schedule conditioned on a latent z has no fixed discrete table: its λ_t "
                "depends on z (evaluate the model's own T-step chain instead)"
            )
        return super().discretize(num_steps)

    def config(self) -> dict:
        return {
            "name": self.name,
            "event_shape": list(self.event_shape),
            "latent_dim": self.latent_dim,
            "log_snr_start": self._init_ends[0],
            "log_snr_end": self._init_ends[1],
            "num_basis": self.num_basis,
            "hidden": self.hidden,
            "endpoints": self.endpoints_mode.value,
        }

    def extra_repr(self) -> str:
        return (
            f"event_shape={self.event_shape}, latent_dim={self.latent_dim}, "
            f"num_basis={self.num_basis}, endpoints={self.endpoints_mode.value}"
        )
