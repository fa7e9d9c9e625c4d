"""Noise schedules of the forward chain q(x_t | x_{t-1}) = N(√α_t x_{t-1}, β_t I).

Every table has length T + 1 on its last axis and is indexed by t itself, so
``alpha_bar[..., 0] == 1`` and ``betas[..., 0] == 0`` (there is no step into x_0). A schedule
per dimension holds tables of shape (*event_shape, T + 1), one chain per dimension of a datum;
a scalar schedule is the case ``event_shape == ()``. Tables are float64 buffers: they follow
``.to(device)`` and keep ᾱ_t accurate where 1 − ᾱ_t is tiny.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..errors import ConfigError

__all__ = ["NoiseSchedule", "linear_schedule", "cosine_schedule", "schedule_from_alpha_bar"]


class NoiseSchedule(nn.Module):
    """A discrete-time variance-preserving schedule built from β_1 … β_T.

    ``betas`` holds β_1 … β_T: shape (T,) for one schedule shared by every dimension, or
    (*event_shape, T) for a schedule per dimension (β_{j,t} for the data's dimension j), in
    which case every buffer has shape (*event_shape, T + 1) and q(x_t | x_0) =
    N(√ᾱ_t ⊙ x_0, diag(1 − ᾱ_t)). ``event_shape`` is () for the scalar case.

    Buffers (all float64, length T + 1 on the last axis, index t):

    ============  ==========================================  ======================
    name          meaning                                     value at t = 0
    ============  ==========================================  ======================
    betas         β_t                                         0
    alphas        α_t = 1 − β_t                               1
    alpha_bar     ᾱ_t = Π_{s ≤ t} α_s                          1
    log_snr       log(ᾱ_t / (1 − ᾱ_t))                        +inf
    posterior_variance  β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t)   0 (β̃_1 = 0 as well)
    ============  ==========================================  ======================
    """

    betas: Tensor
    alphas: Tensor
    alpha_bar: Tensor
    log_snr: Tensor
    posterior_variance: Tensor

    def __init__(self, betas: Tensor | list[float], name: str = "custom") -> None:
        super().__init__()
        b = torch.as_tensor(betas, dtype=torch.float64).detach().cpu()
        if b.dim() == 0:
            b = b.reshape(1)
        if b.shape[-1] < 1:
            raise ConfigError(f"a schedule needs T >= 1 steps, got T = {b.shape[-1]}")
        if b.numel() == 0:
            raise ConfigError(
                f"a schedule per dimension needs every event dimension >= 1, got betas of shape "
                f"{tuple(b.shape)} (event shape, T)"
            )
        ok = torch.isfinite(b) & (b > 0) & (b < 1)
        if not ok.all():
            bad, where = _first_bad(b, ~ok, first_step=1)
            raise ConfigError(f"every β_t must lie in (0, 1); got β = {bad!r}{where}")
        self.name = name
        self.event_shape: tuple[int, ...] = tuple(b.shape[:-1])
        zero = torch.zeros(self.event_shape + (1,), dtype=torch.float64)
        betas_full = torch.cat([zero, b], -1)
        alphas = 1.0 - betas_full
        alpha_bar = torch.cumprod(alphas, -1)
        one_minus = -torch.expm1(torch.cumsum(torch.log1p(-betas_full), -1))
        posterior_variance = torch.zeros_like(betas_full)
        posterior_variance[..., 1:] = betas_full[..., 1:] * one_minus[..., :-1] / one_minus[..., 1:]
        self.register_buffer("betas", betas_full)
        self.register_buffer("alphas", alphas)
        self.register_buffer("alpha_bar", alpha_bar)
        self.register_buffer("one_minus_alpha_bar", one_minus)
        self.register_buffer("log_snr", torch.log(alpha_bar) - torch.log(one_minus))
        self.register_buffer("posterior_variance", posterior_variance)

    def _apply(self, fn, recurse=True):
        # Follow device moves but never dtype casts: model.float() or .half() must not round ᾱ_t,
        # whose complement 1 − ᾱ_t is ~1e-4 at t = 1.
        tables = {k: v for k, v in self._buffers.items() if v is not None}
        for name in tables:
            self._buffers[name] = None
        super()._apply(fn, recurse)
        for name, buf in tables.items():
            target = fn(torch.zeros((), dtype=torch.float64, device=buf.device)).device
            self._buffers[name] = buf.to(target)
        return self

    @property
    def num_steps(self) -> int:
        """T, the number of noising steps."""
        return self.betas.shape[-1] - 1

    def extra_repr(self) -> str:
        shape = f", event_shape={self.event_shape}" if self.event_shape else ""
        return f"name={self.name!r}, T={self.num_steps}{shape}"

    def config(self) -> dict:
        """A JSON-able description from which :func:`schedule_from_config` rebuilds it.

        A schedule per dimension has no formula to name, so it serialises its table: β_1 … β_T
        per dimension (``"betas"``, nested lists of shape (*event_shape, T)) with its
        ``"event_shape"``; JSON's shortest round-trip floats rebuild it bit for bit.
        """
        cfg = {"name": self.name, "num_steps": self.num_steps, **getattr(self, "_params", {})}
        if self.event_shape:
            cfg["event_shape"] = list(self.event_shape)
            cfg["betas"] = self.betas[..., 1:].cpu().tolist()
        return cfg


def schedule_from_alpha_bar(alpha_bar: Tensor, name: str = "custom") -> NoiseSchedule:
    """Build a schedule from ᾱ_0 … ᾱ_T (ᾱ_0 = 1), which must be strictly decreasing in (0, 1].

    ``alpha_bar`` has shape (T + 1,), or (*event_shape, T + 1) for a schedule per dimension
    (each dimension's ᾱ on the last axis).
    """
    ab = torch.as_tensor(alpha_bar, dtype=torch.float64).detach().cpu()
    if ab.dim() == 0 or ab.shape[-1] < 2:
        raise ConfigError(
            f"ᾱ needs T + 1 >= 2 entries on its last axis, got shape {tuple(ab.shape)}"
        )
    if ab.numel() == 0:
        raise ConfigError(
            f"ᾱ per dimension needs every event dimension >= 1, got {tuple(ab.shape)}"
        )
    start = ab[..., 0]
    off = (start - 1.0).abs() > 1e-12
    if off.any():
        bad, where = _first_bad(start, off)
        raise ConfigError(f"ᾱ_0 must be 1 (x_0 is the data), got {bad!r}{where}")
    step_ok = (ab[..., 1:] < ab[..., :-1]) & (ab[..., 1:] > 0)
    if not step_ok.all():
        bad, where = _first_bad(ab[..., 1:], ~step_ok, first_step=1)
        raise ConfigError(
            f"ᾱ_t must be strictly decreasing and positive: the schedule is not monotone "
            f"(ᾱ = {bad!r}{where})"
        )
    return NoiseSchedule(1.0 - ab[..., 1:] / ab[..., :-1], name=name)


def linear_schedule(
    num_steps: int,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    reference_steps: int = 1000,
) -> NoiseSchedule:
    """DDPM's linear schedule: β from ``beta_start`` to ``beta_end`` over ``reference_steps``.

    At T = ``reference_steps`` the β's are DDPM's exactly. For any other T the chain keeps
    DDPM's curve of log ᾱ over the unit time interval and takes T equal strides along it
    (linear interpolation between the reference points), so ᾱ_T is the same for every T and
    every β_t stays in (0, 1). When T divides ``reference_steps`` this is DDPM's chain
    respaced, as in improved DDPM's strided sampling.
    """
    _check_steps(num_steps)
    if not (0 < beta_start < 1 and 0 < beta_end < 1):
        raise ConfigError(
            f"beta_start and beta_end must lie in (0, 1), got {beta_start!r}, {beta_end!r}"
        )
    ref_betas = torch.linspace(beta_start, beta_end, reference_steps, dtype=torch.float64)
    log_ab_ref = torch.cat(
        [torch.zeros(1, dtype=torch.float64), torch.cumsum(torch.log1p(-ref_betas), 0)]
    )
    if num_steps == reference_steps:
        sched = NoiseSchedule(ref_betas, name="linear")
    else:
        pos = torch.arange(num_steps + 1, dtype=torch.float64) * (reference_steps / num_steps)
        lo = pos.floor().long().clamp(max=reference_steps - 1)
        frac = pos - lo
        log_ab = log_ab_ref[lo] * (1 - frac) + log_ab_ref[lo + 1] * frac
        sched = NoiseSchedule(-torch.expm1(log_ab[1:] - log_ab[:-1]), name="linear")
    sched._params = {
        "beta_start": beta_start,
        "beta_end": beta_end,
        "reference_steps": reference_steps,
    }
    return sched


def cosine_schedule(
    num_steps: int, offset: float = 0.008, max_beta: float = 0.999
) -> NoiseSchedule:
    """Improved DDPM's cosine schedule: ᾱ_t = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s) · π/2).

    β_t is clipped at ``max_beta`` so the last step stays a proper Gaussian.
    """
    _check_steps(num_steps)
    if not 0 < max_beta < 1:
        raise ConfigError(f"max_beta must lie in (0, 1), got {max_beta!r}")
    t = torch.arange(num_steps + 1, dtype=torch.float64)
    f = torch.cos((t / num_steps + offset) / (1 + offset) * math.pi / 2) ** 2
    ab = f / f[0]
    betas = (1 - ab[1:] / ab[:-1]).clamp(min=1e-12, max=max_beta)
    sched = NoiseSchedule(betas, name="cosine")
    sched._params = {"offset": offset, "max_beta": max_beta}
    return sched


def schedule_from_config(config: dict) -> NoiseSchedule:
    """Rebuild a schedule from :meth:`NoiseSchedule.config`."""
    cfg = dict(config)
    name = cfg.pop("name", None)
    steps = cfg.pop("num_steps")
    if "betas" in cfg:
        # a schedule per dimension carries its table (NoiseSchedule.config)
        sched = NoiseSchedule(torch.tensor(cfg["betas"], dtype=torch.float64), name=name)
        event = tuple(cfg.get("event_shape", sched.event_shape))
        if sched.num_steps != steps or sched.event_shape != event:
            raise ConfigError(
                f"a per-dimension schedule's betas have shape {sched.event_shape + (sched.num_steps,)}"
                f", but its config says event_shape {event} and T = {steps}"
            )
        return sched
    if name == "linear":
        return linear_schedule(steps, **cfg)
    if name == "cosine":
        return cosine_schedule(steps, **cfg)
    raise ConfigError(f"unknown schedule {name!r}; expected 'linear' or 'cosine'")


def _first_bad(values: Tensor, bad: Tensor, first_step: int | None = None) -> tuple[float, str]:
    """(the first offending value, where it is: " at dimension (j, …), step t = k"), for a
    table whose last axis is time starting at ``first_step`` (or holds no time axis at all)."""
    index = tuple(int(i) for i in bad.nonzero()[0])
    value = values[index].item()
    dims = index if first_step is None else index[:-1]
    where = f" at dimension {dims}" if dims else ""
    if first_step is not None:
        where += f"{',' if dims else ' at'} step t = {index[-1] + first_step}"
    return value, where


def _check_steps(num_steps: int) -> None:
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ConfigError(f"the number of steps T must be an integer >= 1, got {num_steps!r}")
