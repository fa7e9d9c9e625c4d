"""Continuous-time log-SNR schedules λ(t) on t ∈ [0, 1] (variational diffusion models).

z_t = α_t x + σ_t ε with α_t² = sigmoid(λ(t)), σ_t² = sigmoid(−λ(t)) (the package's one
convention, :mod:`pyrodiff.schedules`); λ decreases with t (t = 0 is the least noisy latent,
t = 1 the most). Every schedule answers λ(t) and its slope λ′(t), which the T = ∞ bound weighs
the denoising error by, and evaluated at T equal steps it is an ordinary discrete
:class:`~pyrodiff.schedules.NoiseSchedule`.

VDM writes γ = −λ; the names ``gamma``, ``gamma_and_slope``, ``gamma_min`` and ``gamma_max``
are kept as deprecated aliases in that convention.
"""

from __future__ import annotations

import enum
import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .discrete import NoiseSchedule, schedule_from_alpha_bar
from .log_snr import signal_variance

__all__ = [
    "Endpoints",
    "LogSNRSchedule",
    "LinearLogSNR",
    "CosineLogSNR",
    "LearnedLogSNR",
    "discrete_times",
]

# VDM's defaults: at λ = 13.3 the noise of z_0 (σ_0 ≈ 1.3e−3) is far below one grey level of
# 8-bit data; at λ = −5, q(z_1 | x) is within ~0.01 nats per dimension of N(0, 1).
LOG_SNR_START = 13.3
LOG_SNR_END = -5.0


class Endpoints(enum.Enum):
    """Whether a learned schedule's ends are trained or held at their initial values."""

    FIXED = "fixed"
    """only the interior shape of λ is learned; in continuous time the ELBO does not depend on it
    (VDM, eq. 17), so this is the setting in which the interior can be spent on variance."""
    LEARNED = "learned"
    """the two ends are trained too: the least and the most noise of the chain, the two numbers
    the continuous-time ELBO depends on."""


def discrete_times(num_steps: int) -> Tensor:
    """The continuous time of x_t in a T-step discretisation: s_t = (t − 1)/(T − 1) for
    t = 1 … T (x_1 = z_0, x_T = z_1), float64, length T + 1 (index 0, the data, holds 0)."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 2:
        raise ConfigError(
            f"a continuous schedule is discretised at T >= 2 steps (z_0 and z_1), got {num_steps!r}"
        )
    s = torch.arange(num_steps + 1, dtype=torch.float64).sub_(1).div_(num_steps - 1)
    s[0] = 0.0
    return s


def _check_time(t: Tensor) -> None:
    if not isinstance(t, Tensor) or not t.is_floating_point():
        raise ConfigError(f"continuous time t must be a floating-point tensor, got {t!r}")


def _deprecated(old: str, new: str) -> None:
    warnings.warn(
        f"{old} is deprecated (γ = −λ); use {new} (λ = +log SNR)", DeprecationWarning, stacklevel=3
    )


class LogSNRSchedule(nn.Module):
    """Base class: a decreasing log-SNR λ(t) on [0, 1]; subclasses define
    :meth:`log_snr_and_slope`."""

    name = "log_snr"

    def log_snr_and_slope(self, t: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover
        """(λ(t), λ′(t)), elementwise in t."""
        raise NotImplementedError

    def log_snr(self, t: Tensor) -> Tensor:
        """λ(t) = log SNR(t)."""
        return self.log_snr_and_slope(t)[0]

    def endpoints(self) -> tuple[Tensor, Tensor]:
        """(λ(0), λ(1)), the only two numbers the T = ∞ bound depends on."""
        ends = self.log_snr(torch.tensor([0.0, 1.0], dtype=torch.float64))
        return ends[0], ends[1]

    def gamma(self, t: Tensor) -> Tensor:
        """Deprecated: γ(t) = −λ(t)."""
        _deprecated("gamma(t)", "log_snr(t)")
        return -self.log_snr(t)

    def gamma_and_slope(self, t: Tensor, **kwargs) -> tuple[Tensor, Tensor]:
        """Deprecated: (γ(t), γ′(t)) = (−λ(t), −λ′(t))."""
        _deprecated("gamma_and_slope(t)", "log_snr_and_slope(t)")
        lam, slope = self.log_snr_and_slope(t, **kwargs)
        return -lam, -slope

    def discretize(self, num_steps: int) -> NoiseSchedule:
        """The discrete schedule of x_1 … x_T at times s_t = (t − 1)/(T − 1) (see
        :func:`discrete_times`): ᾱ_t = sigmoid(λ(s_t)), ᾱ_0 = 1 (x_0 is the data); float64,
        detached from any learned parameters.

        A schedule per dimension, whose λ(t) has shape t.shape + event_shape, gives a
        :class:`NoiseSchedule` per dimension: ᾱ_{j,t} = sigmoid(λ_j(s_t)), tables of shape
        (*event_shape, T + 1)."""
        s = discrete_times(num_steps)
        with torch.no_grad():
            lam = self.log_snr(s[1:].to(self._device())).double().cpu()
        # time is the first axis of λ and the last of a table
        lam = lam.movedim(0, -1)
        one = torch.ones(lam.shape[:-1] + (1,), dtype=torch.float64)
        alpha_bar = torch.cat([one, signal_variance(lam)], -1)
        sched = schedule_from_alpha_bar(alpha_bar, name=f"{self.name}@{num_steps}")
        return sched

    def _device(self) -> torch.device:
        for tensor in list(self.parameters()) + list(self.buffers()):
            return tensor.device
        return torch.device("cpu")

    def config(self) -> dict:
        l0, l1 = self.endpoints()
        return {"name": self.name, "log_snr_start": l0.item(), "log_snr_end": l1.item()}


def _ends(
    args: tuple, log_snr_start: float | None, log_snr_end: float | None, gamma_min, gamma_max
) -> tuple[float, float]:
    """(λ(0), λ(1)) from the new keywords, or from the deprecated γ pair (γ_min, γ_max) =
    (−λ(0), −λ(1)) given positionally or by name; checked: finite and decreasing."""
    legacy = list(args) + [None] * (2 - len(args))
    if len(args) > 2:
        raise ConfigError(f"a log-SNR schedule takes two ends, got {len(args)} positional values")
    gamma_min = legacy[0] if gamma_min is None else gamma_min
    gamma_max = legacy[1] if gamma_max is None else gamma_max
    if gamma_min is not None or gamma_max is not None:
        if log_snr_start is not None or log_snr_end is not None:
            raise ConfigError("give the ends as log_snr_start/log_snr_end or as γ, not both")
        _deprecated("giving the ends as γ (gamma_min, gamma_max)", "log_snr_start, log_snr_end")
        g0 = -LOG_SNR_START if gamma_min is None else float(gamma_min)
        g1 = -LOG_SNR_END if gamma_max is None else float(gamma_max)
        if not (math.isfinite(g0) and math.isfinite(g1) and g0 < g1):
            raise ConfigError(
                f"need finite gamma_min < gamma_max (γ = −λ increases with t), got {g0!r}, {g1!r}"
            )
        return -g0, -g1
    start = LOG_SNR_START if log_snr_start is None else float(log_snr_start)
    end = LOG_SNR_END if log_snr_end is None else float(log_snr_end)
    if not (math.isfinite(start) and math.isfinite(end) and start > end):
        raise ConfigError(
            f"need finite log_snr_start > log_snr_end (λ decreases with t), got {start!r}, {end!r}"
        )
    return start, end


class LinearLogSNR(LogSNRSchedule):
    """λ(t) = λ(0) + (λ(1) − λ(0)) t: VDM's fixed schedule.

    Args:
        log_snr_start: λ(0), the least noise (13.3 by default).
        log_snr_end: λ(1), the most noise (−5 by default).
    """

    name = "linear_log_snr"

    def __init__(
        self,
        *args: float,
        log_snr_start: float | None = None,
        log_snr_end: float | None = None,
        gamma_min: float | None = None,
        gamma_max: float | None = None,
    ) -> None:
        super().__init__()
        self.log_snr_start, self.log_snr_end = _ends(
            args, log_snr_start, log_snr_end, gamma_min, gamma_max
        )

    def log_snr_and_slope(self, t: Tensor) -> tuple[Tensor, Tensor]:
        _check_time(t)
        span = self.log_snr_end - self.log_snr_start
        return self.log_snr_start + span * t, torch.full_like(t, span)


class CosineLogSNR(LogSNRSchedule):
    """The cosine schedule's λ, truncated to [λ(1), λ(0)].

    Improved DDPM's ᾱ(u) = cos²(u π/2) has λ(u) = log(ᾱ/(1 − ᾱ)) = −2 log tan(u π/2); here
    the angle θ = u π/2 runs linearly from θ_0 = arctan(e^{−λ(0)/2}) to θ_1 = arctan(e^{−λ(1)/2}),
    so the ends are λ(0) and λ(1) and the shape in between is the cosine one.
    """

    name = "cosine_log_snr"

    def __init__(
        self,
        *args: float,
        log_snr_start: float | None = None,
        log_snr_end: float | None = None,
        gamma_min: float | None = None,
        gamma_max: float | None = None,
    ) -> None:
        super().__init__()
        self.log_snr_start, self.log_snr_end = _ends(
            args, log_snr_start, log_snr_end, gamma_min, gamma_max
        )
        self.theta0 = math.atan(math.exp(0.5 * -self.log_snr_start))
        self.theta1 = math.atan(math.exp(0.5 * -self.log_snr_end))

    def log_snr_and_slope(self, t: Tensor) -> tuple[Tensor, Tensor]:
        _check_time(t)
        dtheta = self.theta1 - self.theta0
        theta = self.theta0 + dtheta * t
        # λ = −2 log tan θ; dλ/dθ = −2 / (sin θ cos θ) = −4 / sin 2θ
        return -(2.0 * torch.log(torch.tan(theta))), -(4.0 * dtheta / torch.sin(2.0 * theta))

    def config(self) -> dict:
        return {
            "name": self.name,
            "log_snr_start": self.log_snr_start,
            "log_snr_end": self.log_snr_end,
        }


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class LearnedLogSNR(LogSNRSchedule):
    """A learned decreasing λ_η(t), built as VDM builds it.

    λ_η(t) = λ_0 + (λ_1 − λ_0) ρ(t), ρ(t) = (f(t) − f(0)) / (f(1) − f(0)), with the monotone
    network f(t) = l_1(t) + l_3(sigmoid(l_2(l_1(t)))) whose three affine maps have positive
    weights (softplus of free parameters), so f increases in t and λ decreases. ρ fixes the
    ends at ρ(0) = 0, ρ(1) = 1: the ends λ_0 = ``start`` and λ_1 = λ_0 − softplus(``gap``) are
    separate parameters (trained or fixed, :class:`Endpoints`), as in the discrete
    :class:`~pyrodiff.guides.LearnedSchedule`, and the network shapes only the interior, which
    the T = ∞ bound does not depend on. It starts (almost) linear in t.

    ``shape_hook``, if given to :meth:`log_snr_and_slope`, is applied to ρ(t) and ρ′(t) before
    the ends are put on: the variance-minimising objective
    (:class:`~pyrodiff.infer.ContinuousELBO`) rescales the interior's gradient there.
    """

    name = "learned_log_snr"

    def __init__(
        self,
        *args: float,
        log_snr_start: float | None = None,
        log_snr_end: float | None = None,
        hidden: int = 64,
        endpoints: Endpoints = Endpoints.LEARNED,
        gamma_min: float | None = None,
        gamma_max: float | None = None,
    ) -> None:
        super().__init__()
        first, last = _ends(args, log_snr_start, log_snr_end, gamma_min, gamma_max)
        if not isinstance(endpoints, Endpoints):
            raise ConfigError(f"endpoints must be an Endpoints, got {endpoints!r}")
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ConfigError(f"hidden must be an integer >= 1, got {hidden!r}")
        self.endpoints_mode = endpoints
        start = torch.tensor(first)
        gap = torch.tensor(_inverse_softplus(first - last))
        if endpoints is Endpoints.LEARNED:
            self.start = nn.Parameter(start)
            self.gap = nn.Parameter(gap)
        else:
            self.register_buffer("start", start)
            self.register_buffer("gap", gap)
        # raw (pre-softplus) weights; the l_3 weights start tiny so ρ starts linear
        self.w1 = nn.Parameter(torch.tensor(_inverse_softplus(1.0)))
        self.b1 = nn.Parameter(torch.tensor(0.0))
        self.w2 = nn.Parameter(torch.randn(hidden) * 0.5 + _inverse_softplus(1.0))
        self.b2 = nn.Parameter(torch.randn(hidden) * 0.5)
        self.w3 = nn.Parameter(torch.full((hidden,), -6.0))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # state saved before the λ convention holds γ_0 = −λ_0 under "gamma_0"
        old = state_dict.pop(prefix + "gamma_0", None)
        if old is not None and prefix + "start" not in state_dict:
            state_dict[prefix + "start"] = -old
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def gamma_0(self) -> Tensor:
        """Deprecated: γ_0 = −λ_0, the start parameter in VDM's sign."""
        _deprecated("gamma_0", "start (λ_0)")
        return -self.start

    def parameters_of_shape(self) -> list[nn.Parameter]:
        """The parameters of the interior shape ρ (not the ends)."""
        return [self.w1, self.b1, self.w2, self.b2, self.w3]

    def endpoints(self) -> tuple[Tensor, Tensor]:
        """(λ_0, λ_1) as differentiable tensors.

        Read from the end parameters, not through ρ(0) = 0 and ρ(1) = 1: the interior must not
        receive even a rounding error's worth of the endpoint terms' gradient.
        """
        return self.start, self.start - F.softplus(self.gap)

    def ends(self) -> tuple[Tensor, Tensor]:
        """Deprecated: :meth:`endpoints`."""
        warnings.warn("ends() is deprecated; use endpoints()", DeprecationWarning, stacklevel=2)
        return self.endpoints()

    def _net(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(f(t), f′(t)), both shaped like t."""
        w1, w2, w3 = F.softplus(self.w1), F.softplus(self.w2), F.softplus(self.w3)
        h1 = w1 * t + self.b1
        s = torch.sigmoid(h1[..., None] * w2 + self.b2)
        f = h1 + (s * w3).sum(-1)
        slope = w1 * (1.0 + (s * (1.0 - s) * w2 * w3).sum(-1))
        return f, slope

    def shape(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(ρ(t), ρ′(t)), ρ increasing from 0 at t = 0 to 1 at t = 1."""
        ends, _ = self._net(torch.tensor([0.0, 1.0], dtype=t.dtype, device=t.device))
        f, slope = self._net(t)
        span = ends[1] - ends[0]
        return (f - ends[0]) / span, slope / span

    def log_snr_and_slope(self, t: Tensor, shape_hook=None) -> tuple[Tensor, Tensor]:
        _check_time(t)
        rho, drho = self.shape(t)
        if shape_hook is not None:
            rho, drho = shape_hook(rho), shape_hook(drho)
        l0, l1 = self.endpoints()
        l0, l1 = l0.to(t.dtype), l1.to(t.dtype)
        return l0 + (l1 - l0) * rho, (l1 - l0) * drho

    def config(self) -> dict:
        l0, l1 = self.endpoints()
        return {
            "name": self.name,
            "log_snr_start": l0.item(),
            "log_snr_end": l1.item(),
            "hidden": self.w2.numel(),
            "endpoints": self.endpoints_mode.value,
        }
