"""A partly learned q: the forward chain over a learnable monotone log-SNR schedule (VDM).

The forward chain q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I) is fixed by one function, the
log signal-to-noise ratio λ_t = log(ᾱ_t / (1 − ᾱ_t)), strictly decreasing in t. Learning λ
keeps every factor of q in closed form (ᾱ_t = sigmoid(λ_t)), so the timestep-sampled
:class:`~pyrodiff.infer.DiffusionELBO` trains it at one network call per datum, exactly as it
trains a model under the fixed :class:`~pyrodiff.ForwardGuide`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..schedules import (
    Endpoints,
    NoiseSchedule,
    linear_schedule,
    noise_variance,
    signal_variance,
)
from .forward import ChainOrder, ForwardGuide

__all__ = ["Endpoints", "LearnedSchedule", "LearnedScheduleGuide"]


def _inverse_softplus(y: Tensor) -> Tensor:
    # softplus⁻¹(y) = y + log(−expm1(−y)), accurate for small and large y
    return y + torch.log(-torch.expm1(-y))


class LearnedSchedule(nn.Module):
    """A learnable, strictly decreasing log-SNR λ_1 > λ_2 > … > λ_T on the grid t = 1 … T.

    Parameterisation: λ_t = λ_1 − (λ_1 − λ_T) · S_t / S_T with S_t = Σ_{s=2}^{t} softplus(u_s)
    (S_1 = 0), λ_1 = ``start`` and λ_T = λ_1 − softplus(``gap``). Every parameter value gives a
    valid schedule, and the ends can be frozen (``endpoints_mode``, :class:`Endpoints`)
    independently of the shape; :meth:`endpoints` gives (λ_1, λ_T), as
    :meth:`~pyrodiff.schedules.LearnedLogSNR.endpoints` gives (λ(0), λ(1)).

    It exposes the attributes of :class:`~pyrodiff.schedules.NoiseSchedule` (``betas``,
    ``alphas``, ``alpha_bar``, ``one_minus_alpha_bar``, ``log_snr``, ``posterior_variance``,
    ``num_steps``), float64, length T + 1, indexed by t, computed differentiably from the
    parameters on every access; so :mod:`pyrodiff.gaussian`, :class:`~pyrodiff.Diffusion` and
    :class:`~pyrodiff.infer.DiffusionELBO` take it unchanged.
    """

    def __init__(
        self,
        num_steps: int,
        log_snr_start: float = 9.2,
        log_snr_end: float = -10.0,
        endpoints: Endpoints = Endpoints.LEARNED,
        increments: Tensor | None = None,
    ) -> None:
        super().__init__()
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ConfigError(f"the number of steps T must be an integer >= 1, got {num_steps!r}")
        if not isinstance(endpoints, Endpoints):
            raise ConfigError(f"endpoints must be an Endpoints, got {endpoints!r}")
        if num_steps >= 2 and not log_snr_start > log_snr_end:
            raise ConfigError(
                "the log-SNR must decrease from t = 1 to t = T: need log_snr_start > log_snr_end, "
                f"got {log_snr_start!r} and {log_snr_end!r}"
            )
        f64 = torch.float64
        start = torch.tensor(float(log_snr_start if num_steps >= 2 else log_snr_end), dtype=f64)
        gap = _inverse_softplus(torch.tensor(max(log_snr_start - log_snr_end, 1e-12), dtype=f64))
        if increments is None:
            u = _inverse_softplus(torch.ones(max(num_steps - 1, 0), dtype=f64))
        else:
            inc = torch.as_tensor(increments, dtype=f64).flatten()
            if inc.numel() != num_steps - 1 or not (inc > 0).all():
                raise ConfigError(
                    f"increments must be T − 1 = {num_steps - 1} positive numbers, got "
                    f"{inc.numel()} values"
                )
            u = _inverse_softplus(inc)
        self.endpoints_mode = endpoints
        self._num_steps = num_steps
        self.name = "learned"
        self.shape_logits = nn.Parameter(u)
        if endpoints is Endpoints.LEARNED:
            self.start = nn.Parameter(start)
            self.gap = nn.Parameter(gap)
        else:
            self.register_buffer("start", start)
            self.register_buffer("gap", gap)

    @classmethod
    def from_schedule(
        cls, schedule: NoiseSchedule, endpoints: Endpoints = Endpoints.LEARNED
    ) -> LearnedSchedule:
        """The learned schedule that starts equal to ``schedule`` (to float64 rounding)."""
        g = schedule.log_snr.detach().double().cpu()
        T = schedule.num_steps
        inc = g[1:-1] - g[2:] if T >= 2 else None
        if inc is not None and not (inc > 0).all():
            raise ConfigError("the schedule's log-SNR is not strictly decreasing")
        start = g[1].item() if T >= 2 else g[T].item() + 1.0
        return cls(T, start, g[T].item(), endpoints, inc)

    @property
    def num_steps(self) -> int:
        """T."""
        return self._num_steps

    def parameters_of_shape(self) -> list[nn.Parameter]:
        """The parameters of the interior shape of λ (not its ends)."""
        return [self.shape_logits]

    def endpoints(self) -> tuple[Tensor, Tensor]:
        """(λ_1, λ_T), the least and the most noise of the chain, as differentiable tensors."""
        return self.start, self.start - F.softplus(self.gap)

    @property
    def log_snr(self) -> Tensor:
        """λ_t for t = 0 … T (λ_0 = +inf: x_0 is the data)."""
        g_start = self.start
        T = self.num_steps
        if T == 1:
            interior = g_start.reshape(1)
        else:
            cum = torch.cumsum(F.softplus(self.shape_logits), 0)
            frac = torch.cat([cum.new_zeros(1), cum / cum[-1]])
            interior = g_start - F.softplus(self.gap) * frac
        inf = torch.full((1,), torch.inf, dtype=interior.dtype, device=interior.device)
        return torch.cat([inf, interior])

    @property
    def alpha_bar(self) -> Tensor:
        """ᾱ_t = sigmoid(λ_t)."""
        return signal_variance(self.log_snr)

    @property
    def one_minus_alpha_bar(self) -> Tensor:
        """1 − ᾱ_t = sigmoid(−λ_t), accurate where ᾱ_t is close to 1.

        At t = 0 it holds the smallest positive float instead of 0: formulas evaluated on whole
        tables (such as β_t / (1 − ᾱ_t)) then stay finite at the unused index 0, and their
        gradient there is 0 rather than NaN, which would otherwise reach the parameters.
        """
        om = noise_variance(self.log_snr[1:])
        tiny = torch.full((1,), torch.finfo(om.dtype).tiny, dtype=om.dtype, device=om.device)
        return torch.cat([tiny, om])

    @property
    def alphas(self) -> Tensor:
        """α_t = ᾱ_t / ᾱ_{t−1} (α_0 = 1)."""
        return torch.exp(self._log_alphas())

    @property
    def betas(self) -> Tensor:
        """β_t = 1 − α_t, computed as −expm1(log α_t) (β_0 = 0)."""
        return -torch.expm1(self._log_alphas())

    @property
    def posterior_variance(self) -> Tensor:
        """β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t) (β̃_0 = β̃_1 = 0)."""
        om = self.one_minus_alpha_bar
        post = self.betas[2:] * om[1:-1] / om[2:]
        # β̃_1 = 0 is a constant, not a function of the parameters: √β̃ has an infinite slope there
        return torch.cat([post.new_zeros(2), post])

    def _log_alphas(self) -> Tensor:
        log_ab = F.logsigmoid(self.log_snr)  # log ᾱ_0 = logsigmoid(+inf) = 0
        return torch.cat([log_ab.new_zeros(1), log_ab[1:] - log_ab[:-1]])

    def frozen(self) -> NoiseSchedule:
        """A fixed :class:`~pyrodiff.schedules.NoiseSchedule` with the current values."""
        with torch.no_grad():
            return NoiseSchedule(self.betas[1:].detach().cpu(), name="learned")

    def config(self) -> dict:
        """A JSON-able description: T, the endpoint mode and the current log-SNR values."""
        return {
            "name": self.name,
            "num_steps": self.num_steps,
            "endpoints": self.endpoints_mode.value,
            "log_snr": self.log_snr[1:].detach().cpu().tolist(),
        }

    def extra_repr(self) -> str:
        return f"T={self.num_steps}, endpoints={self.endpoints_mode.value}"


class LearnedScheduleGuide(ForwardGuide):
    """q_φ(x_{1:T} | x_0): the forward chain over a :class:`LearnedSchedule`.

    It is :class:`~pyrodiff.ForwardGuide` with φ = the schedule's parameters; ``marginal``,
    ``posterior`` and the Pyro program are inherited, so Trace_ELBO, TraceMeanField_ELBO (top-down
    order) and DiffusionELBO all train it. Built from a fixed schedule it starts equal to the
    ForwardGuide over that schedule.

    A guide swap changes q only: the model keeps its own schedule in its reverse mean
    μ_θ(x_t, t) = μ̃_t(x_t, x̂_0) and its parameters are untouched. The shared configuration of
    VDM (the model's reverse mean uses the learned λ as well) is a different *model*: build the
    :class:`~pyrodiff.Diffusion` with ``schedule=guide.schedule``.
    """

    schedule: LearnedSchedule

    def __init__(
        self,
        schedule: LearnedSchedule | NoiseSchedule | int,
        order: ChainOrder = ChainOrder.TOP_DOWN,
        endpoints: Endpoints = Endpoints.LEARNED,
        name: str = "",
        event_shape: tuple[int, ...] | None = None,
    ) -> None:
        if isinstance(schedule, int):
            schedule = LearnedSchedule.from_schedule(linear_schedule(schedule), endpoints)
        elif isinstance(schedule, NoiseSchedule):
            schedule = LearnedSchedule.from_schedule(schedule, endpoints)
        elif not isinstance(schedule, LearnedSchedule):
            raise ConfigError(
                "schedule must be a LearnedSchedule, a NoiseSchedule to start from, or T; "
                f"got {type(schedule).__name__}"
            )
        super().__init__(schedule, order, name=name, event_shape=event_shape)

    @classmethod
    def for_model(cls, model, endpoints: Endpoints = Endpoints.LEARNED) -> LearnedScheduleGuide:
        """The learned-schedule guide that starts at the model's own (fixed) schedule, under the
        model's name (so its sites are the model's)."""
        return cls(
            model.schedule,
            endpoints=endpoints,
            name=model.name,
            event_shape=tuple(model.event_shape),
        )
