"""Continuous-time log-SNR schedules γ(t) on t ∈ [0, 1] (variational diffusion models).

z_t = α_t x + σ_t ε with α_t² = sigmoid(−γ(t)), σ_t² = sigmoid(γ(t)), so SNR(t) = e^{−γ(t)};
γ increases with t (t = 0 is the least noisy latent, t = 1 the most). Every schedule answers
γ(t) and its slope γ′(t), which the T = ∞ bound weighs the denoising error by, and evaluated at
T equal steps it is an ordinary discrete :class:`~pyrodiff.schedules.NoiseSchedule`.
"""

from __future__ import annotations

import enum
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .discrete import NoiseSchedule, schedule_from_alpha_bar

__all__ = [
    "Endpoints",
    "LogSNRSchedule",
    "LinearLogSNR",
    "CosineLogSNR",
    "LearnedLogSNR",
    "discrete_times",
]

# VDM's defaults: at γ = −13.3 the noise of z_0 (σ_0 ≈ 1.3e−3) is far below one grey level of
# 8-bit data; at γ = 5, q(z_1 | x) is within ~0.01 nats per dimension of N(0, 1).
GAMMA_MIN = -13.3
GAMMA_MAX = 5.0


class Endpoints(enum.Enum):
    """Whether a learned schedule's ends are trained or held at their initial values."""

    FIXED = "fixed"
    """only the interior shape of γ is learned; in continuous time the ELBO does not depend on it
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


class LogSNRSchedule(nn.Module):
    """Base class: an increasing log-SNR γ(t) on [0, 1]; subclasses define :meth:`gamma_and_slope`."""

    name = "log_snr"

    def gamma_and_slope(self, t: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover
        """(γ(t), γ′(t)), elementwise in t."""
        raise NotImplementedError

    def gamma(self, t: Tensor) -> Tensor:
        """γ(t) = −log SNR(t)."""
        return self.gamma_and_slope(t)[0]

    def endpoints(self) -> tuple[Tensor, Tensor]:
        """(γ(0), γ(1)), the only two numbers the T = ∞ bound depends on."""
        ends = self.gamma(torch.tensor([0.0, 1.0], dtype=torch.float64))
        return ends[0], ends[1]

    def discretize(self, num_steps: int) -> NoiseSchedule:
        """The discrete schedule of x_1 … x_T at times s_t = (t − 1)/(T − 1) (see
        :func:`discrete_times`): ᾱ_t = sigmoid(−γ(s_t)), ᾱ_0 = 1 (x_0 is the data); float64,
        detached from any learned parameters."""
        s = discrete_times(num_steps)
        with torch.no_grad():
            g = self.gamma(s[1:].to(self._device())).double().cpu()
        alpha_bar = torch.cat([torch.ones(1, dtype=torch.float64), torch.sigmoid(-g)])
        sched = schedule_from_alpha_bar(alpha_bar, name=f"{self.name}@{num_steps}")
        return sched

    def _device(self) -> torch.device:
        for tensor in list(self.parameters()) + list(self.buffers()):
            return tensor.device
        return torch.device("cpu")

    def config(self) -> dict:
        g0, g1 = self.endpoints()
        return {"name": self.name, "gamma_min": g0.item(), "gamma_max": g1.item()}


def _check_ends(gamma_min: float, gamma_max: float) -> None:
    if not (math.isfinite(gamma_min) and math.isfinite(gamma_max) and gamma_min < gamma_max):
        raise ConfigError(
            f"need finite gamma_min < gamma_max (γ increases with t), got {gamma_min!r}, "
            f"{gamma_max!r}"
        )


class LinearLogSNR(LogSNRSchedule):
    """γ(t) = γ_min + (γ_max − γ_min) t: VDM's fixed schedule."""

    name = "linear_log_snr"

    def __init__(self, gamma_min: float = GAMMA_MIN, gamma_max: float = GAMMA_MAX) -> None:
        super().__init__()
        _check_ends(gamma_min, gamma_max)
        self.gamma_min, self.gamma_max = float(gamma_min), float(gamma_max)

    def gamma_and_slope(self, t: Tensor) -> tuple[Tensor, Tensor]:
        _check_time(t)
        span = self.gamma_max - self.gamma_min
        return self.gamma_min + span * t, torch.full_like(t, span)


class CosineLogSNR(LogSNRSchedule):
    """The cosine schedule's γ, truncated to [γ_min, γ_max].

    Improved DDPM's ᾱ(u) = cos²(u π/2) has γ(u) = −log(ᾱ/(1 − ᾱ)) = 2 log tan(u π/2); here
    the angle θ = u π/2 runs linearly from θ_0 = arctan(e^{γ_min/2}) to θ_1 = arctan(e^{γ_max/2}),
    so γ(0) = γ_min, γ(1) = γ_max and the shape in between is the cosine one.
    """

    name = "cosine_log_snr"

    def __init__(self, gamma_min: float = GAMMA_MIN, gamma_max: float = GAMMA_MAX) -> None:
        super().__init__()
        _check_ends(gamma_min, gamma_max)
        self.gamma_min, self.gamma_max = float(gamma_min), float(gamma_max)
        self.theta0 = math.atan(math.exp(0.5 * gamma_min))
        self.theta1 = math.atan(math.exp(0.5 * gamma_max))

    def gamma_and_slope(self, t: Tensor) -> tuple[Tensor, Tensor]:
        _check_time(t)
        dtheta = self.theta1 - self.theta0
        theta = self.theta0 + dtheta * t
        # γ = 2 log tan θ; dγ/dθ = 2 / (sin θ cos θ) = 4 / sin 2θ
        return 2.0 * torch.log(torch.tan(theta)), 4.0 * dtheta / torch.sin(2.0 * theta)

    def config(self) -> dict:
        return {"name": self.name, "gamma_min": self.gamma_min, "gamma_max": self.gamma_max}


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class LearnedLogSNR(LogSNRSchedule):
    """A learned increasing γ_η(t), built as VDM builds it.

    γ_η(t) = γ_0 + (γ_1 − γ_0) ρ(t), ρ(t) = (f(t) − f(0)) / (f(1) − f(0)), with the monotone
    network f(t) = l_1(t) + l_3(sigmoid(l_2(l_1(t)))) whose three affine maps have positive
    weights (softplus of free parameters), so f, and with it γ, increases in t. ρ fixes the
    ends at ρ(0) = 0, ρ(1) = 1: the ends γ_0 and γ_1 = γ_0 + softplus(gap) are separate
    parameters (trained or fixed, :class:`Endpoints`), and the network shapes only the
    interior, which the T = ∞ bound does not depend on. It starts (almost) linear in t.

    ``shape_hook``, if given to :meth:`gamma_and_slope`, is applied to ρ(t) and ρ′(t) before
    the ends are put on: the variance-minimising objective
    (:class:`~pyrodiff.infer.ContinuousELBO`) rescales the interior's gradient there.
    """

    name = "learned_log_snr"

    def __init__(
        self,
        gamma_min: float = GAMMA_MIN,
        gamma_max: float = GAMMA_MAX,
        hidden: int = 64,
        endpoints: Endpoints = Endpoints.LEARNED,
    ) -> None:
        super().__init__()
        _check_ends(gamma_min, gamma_max)
        if not isinstance(endpoints, Endpoints):
            raise ConfigError(f"endpoints must be an Endpoints, got {endpoints!r}")
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ConfigError(f"hidden must be an integer >= 1, got {hidden!r}")
        self.endpoints_mode = endpoints
        g0 = torch.tensor(float(gamma_min))
        gap = torch.tensor(_inverse_softplus(gamma_max - gamma_min))
        if endpoints is Endpoints.LEARNED:
            self.gamma_0 = nn.Parameter(g0)
            self.gap = nn.Parameter(gap)
        else:
            self.register_buffer("gamma_0", g0)
            self.register_buffer("gap", gap)
        # raw (pre-softplus) weights; the l_3 weights start tiny so ρ starts linear
        self.w1 = nn.Parameter(torch.tensor(_inverse_softplus(1.0)))
        self.b1 = nn.Parameter(torch.tensor(0.0))
        self.w2 = nn.Parameter(torch.randn(hidden) * 0.5 + _inverse_softplus(1.0))
        self.b2 = nn.Parameter(torch.randn(hidden) * 0.5)
        self.w3 = nn.Parameter(torch.full((hidden,), -6.0))

    def parameters_of_shape(self) -> list[nn.Parameter]:
        """The parameters of the interior shape ρ (not the ends)."""
        return [self.w1, self.b1, self.w2, self.b2, self.w3]

    def ends(self) -> tuple[Tensor, Tensor]:
        """(γ_0, γ_1) as differentiable tensors."""
        return self.gamma_0, self.gamma_0 + F.softplus(self.gap)

    def endpoints(self) -> tuple[Tensor, Tensor]:
        # the ends as parameters, not through ρ(0) = 0 and ρ(1) = 1: the interior must not
        # receive even a rounding error's worth of the endpoint terms' gradient
        return self.ends()

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

    def gamma_and_slope(self, t: Tensor, shape_hook=None) -> tuple[Tensor, Tensor]:
        _check_time(t)
        rho, drho = self.shape(t)
        if shape_hook is not None:
            rho, drho = shape_hook(rho), shape_hook(drho)
        g0, g1 = self.ends()
        g0, g1 = g0.to(t.dtype), g1.to(t.dtype)
        return g0 + (g1 - g0) * rho, (g1 - g0) * drho

    def config(self) -> dict:
        g0, g1 = self.ends()
        return {
            "name": self.name,
            "gamma_min": g0.item(),
            "gamma_max": g1.item(),
            "hidden": self.w2.numel(),
            "endpoints": self.endpoints_mode.value,
        }
