"""Plain-PyTorch baselines: the same computations as pyrodiff's, written out by hand.

Every function here uses only ``torch``: no Pyro, no distribution objects, no pyrodiff
helpers. Schedule coefficients are read once from the schedule's float64 buffers into
:class:`PlainTables` (cast to the data's dtype) and then indexed directly, as a hand-written
DDPM would. They cover the configuration the benchmarks use: ε-prediction, σ_t² = β_t, and a
Gaussian or a discretised-Gaussian decoder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

_LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class PlainTables:
    """Schedule coefficients over t = 0 … T in the data's dtype and on its device."""

    sqrt_ab: Tensor
    sqrt_1m_ab: Tensor
    beta: Tensor
    log_beta: Tensor
    post_c0: Tensor
    post_ct: Tensor
    post_var: Tensor
    inv_sqrt_alpha: Tensor
    mean_eps: Tensor
    num_steps: int

    @staticmethod
    def from_schedule(schedule: nn.Module, dtype: torch.dtype, device) -> PlainTables:
        ab = schedule.alpha_bar.detach().cpu().double()
        om = schedule.one_minus_alpha_bar.detach().cpu().double()
        b = schedule.betas.detach().cpu().double()
        a = schedule.alphas.detach().cpu().double()
        ab_prev = torch.cat([ab[:1], ab[:-1]])
        om_prev = torch.cat([om[:1], om[:-1]])
        c0 = ab_prev.sqrt() * b / om
        ct = a.sqrt() * om_prev / om
        c0[0], ct[0] = 0.0, 0.0
        post_var = b * om_prev / om
        post_var[0] = 0.0
        mean_eps = b / om.sqrt()
        mean_eps[0] = 0.0

        def to(x: Tensor) -> Tensor:
            return x.to(device=device, dtype=dtype)

        return PlainTables(
            to(ab.sqrt()),
            to(om.sqrt()),
            to(b),
            to(b.clamp(min=1e-300).log()),
            to(c0),
            to(ct),
            to(post_var),
            to(a.rsqrt()),
            to(mean_eps),
            schedule.num_steps,
        )


def _col(v: Tensor, like: Tensor) -> Tensor:
    return v.reshape(v.shape + (1,) * (like.dim() - 1))


def ddpm_step(net: nn.Module, opt: torch.optim.Optimizer, x0: Tensor, tab: PlainTables) -> Tensor:
    """One DDPM training step on L_simple: t ~ U{1…T}, ε ~ N(0, I), ‖ε − ε̂_θ(x_t, t)‖²."""
    t = torch.randint(1, tab.num_steps + 1, (x0.shape[0],), device=x0.device)
    noise = torch.randn_like(x0)
    x_t = _col(tab.sqrt_ab[t], x0) * x0 + _col(tab.sqrt_1m_ab[t], x0) * noise
    loss = (net(x_t, t) - noise).pow(2).sum()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def _log_ndtr_interval(lo: Tensor, hi: Tensor) -> Tensor:
    """log(Φ(hi) − Φ(lo)) for lo < hi, evaluated in the upper tail when that is more accurate."""
    upper = (lo + hi) > 0
    a = torch.where(upper, -hi, lo)
    b = torch.where(upper, -lo, hi)
    log_b = torch.special.log_ndtr(b)
    d = torch.special.log_ndtr(a) - log_b
    log1mexp = torch.where(
        d > -math.log(2.0), torch.log(-torch.expm1(d)), torch.log1p(-torch.exp(d))
    )
    return log_b + log1mexp


def decoder_log_prob(x0: Tensor, mean: Tensor, var: Tensor, num_levels: int | None) -> Tensor:
    """log p(x_0 | x_1) per element: a Gaussian density, or DDPM's binned Gaussian on [−1, 1]."""
    if num_levels is None:
        return -0.5 * ((x0 - mean).pow(2) / var + var.log() + _LOG_2PI)
    half = 1.0 / (num_levels - 1)
    std = var.sqrt()
    lo = torch.where(x0 <= -1 + half, torch.full_like(x0, -math.inf), (x0 - half - mean) / std)
    hi = torch.where(x0 >= 1 - half, torch.full_like(x0, math.inf), (x0 + half - mean) / std)
    return _log_ndtr_interval(lo, hi)


def _reverse_mean(net: nn.Module, x_t: Tensor, t: Tensor, tab: PlainTables) -> Tensor:
    """DDPM's Algorithm 2 mean (x_t − β_t/√(1 − ᾱ_t) ε̂)/√α_t; at t = 1 it is x̂_0 itself."""
    eps = net(x_t, t)
    return _col(tab.inv_sqrt_alpha[t], x_t) * (x_t - _col(tab.mean_eps[t], x_t) * eps)


@torch.no_grad()
def full_bound(
    net: nn.Module,
    x0: Tensor,
    tab: PlainTables,
    num_levels: int | None,
    batch_budget: int = 4096,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Every per-step term of the ELBO, vectorised over t in chunks: (N, T + 1) in nats.

    Column 0 is log p(x_0 | x_1), column t − 1 (t ≥ 2) is −KL(q(x_{t−1} | x_t, x_0) ‖
    p_θ(x_{t−1} | x_t)), the last column −KL(q(x_T | x_0) ‖ N(0, I)). Noise is drawn one
    timestep at a time in t order, as pyrodiff's ``elbo_terms`` does with a generator.
    """
    N, T = x0.shape[0], tab.num_steps
    chunk = max(1, batch_budget // N)
    dims = tuple(range(1, x0.dim()))
    cols = []
    for start in range(1, T + 1, chunk):
        ts = torch.arange(start, min(start + chunk, T + 1), device=x0.device)
        t = ts.repeat_interleave(N)
        xs = x0.repeat((len(ts),) + (1,) * (x0.dim() - 1))
        noise = torch.cat(
            [
                torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
                for _ in range(len(ts))
            ]
        )
        x_t = _col(tab.sqrt_ab[t], xs) * xs + _col(tab.sqrt_1m_ab[t], xs) * noise
        mean = _reverse_mean(net, x_t, t, tab)
        var_p = _col(tab.beta[t], xs)
        mu_q = _col(tab.post_c0[t], xs) * xs + _col(tab.post_ct[t], xs) * x_t
        # at t = 1 the posterior is a point mass; the KL column there is replaced below
        var_q = _col(torch.where(t == 1, tab.beta[t], tab.post_var[t]), xs)
        kl = 0.5 * (var_p.log() - var_q.log() + (var_q + (mu_q - mean).pow(2)) / var_p - 1)
        rec = decoder_log_prob(xs, mean, var_p.expand_as(xs), num_levels)
        term = torch.where(t == 1, rec.sum(dims), -kl.sum(dims))
        cols.append(term.reshape(len(ts), N))
    m = tab.sqrt_ab[T] * x0
    v = tab.sqrt_1m_ab[T] ** 2
    prior_kl = 0.5 * (-v.log() + v + m.pow(2) - 1)
    return torch.cat([torch.cat(cols).T, -prior_kl.sum(dims)[:, None]], dim=1)


def _normal_log_prob(x: Tensor, mean: Tensor, std: Tensor, dims: tuple[int, ...]) -> Tensor:
    return (-0.5 * ((x - mean) / std).pow(2) - std.log() - 0.5 * _LOG_2PI).sum(dims)


def literal_chain_loss(
    net: nn.Module, x0: Tensor, tab: PlainTables, num_levels: int | None
) -> Tensor:
    """−[log p_θ(x_{0:T}) − log q(x_{1:T} | x_0)] summed over the batch, on one draw of the
    whole chain: x_T ~ q(x_T | x_0), x_{t−1} ~ q(x_{t−1} | x_t, x_0), one network call per step.

    This is the surrogate Trace_ELBO differentiates for fully reparameterised sites.
    """
    T = tab.num_steps
    B = x0.shape[0]
    dims = tuple(range(1, x0.dim()))
    one = torch.ones((), dtype=x0.dtype, device=x0.device)
    std_T = tab.sqrt_1m_ab[T]
    x = tab.sqrt_ab[T] * x0 + std_T * torch.randn_like(x0)
    log_q = _normal_log_prob(x, tab.sqrt_ab[T] * x0, std_T, dims)
    log_p = _normal_log_prob(x, torch.zeros_like(x), one, dims)
    for t in range(T, 1, -1):
        t_vec = torch.full((B,), t, dtype=torch.long, device=x0.device)
        mean_q = tab.post_c0[t] * x0 + tab.post_ct[t] * x
        std_q = tab.post_var[t].sqrt()
        x_prev = mean_q + std_q * torch.randn_like(x0)
        log_q = log_q + _normal_log_prob(x_prev, mean_q, std_q, dims)
        mean_p = _reverse_mean(net, x, t_vec, tab)
        log_p = log_p + _normal_log_prob(x_prev, mean_p, tab.beta[t].sqrt(), dims)
        x = x_prev
    t_vec = torch.ones((B,), dtype=torch.long, device=x0.device)
    mean_p = _reverse_mean(net, x, t_vec, tab)
    var_1 = tab.beta[1].expand_as(x0)
    log_p = log_p + decoder_log_prob(x0, mean_p, var_1, num_levels).sum(dims)
    return -(log_p - log_q).sum()


def literal_chain_step(
    net: nn.Module,
    opt: torch.optim.Optimizer,
    x0: Tensor,
    tab: PlainTables,
    num_levels: int | None,
) -> Tensor:
    """One gradient step on :func:`literal_chain_loss`."""
    loss = literal_chain_loss(net, x0, tab, num_levels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


@torch.no_grad()
def ancestral_loop(
    net: nn.Module,
    tab: PlainTables,
    shape: tuple[int, ...],
    num_levels: int | None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """x_T ~ N(0, I); x_{t−1} = μ_θ(x_t, t) + √β_t z for t = T … 2; x_0 decoded at t = 1."""
    dtype, device = tab.beta.dtype, tab.beta.device
    T = tab.num_steps
    x = torch.randn(shape, generator=generator, dtype=dtype, device=device)
    std = tab.beta.sqrt()
    for t in range(T, 0, -1):
        t_vec = torch.full((shape[0],), t, dtype=torch.long, device=device)
        mean = _reverse_mean(net, x, t_vec, tab)
        x = mean + std[t] * torch.randn(shape, generator=generator, dtype=dtype, device=device)
    if num_levels is not None:
        step = 2.0 / (num_levels - 1)
        x = -1 + torch.round((x + 1) / step).clamp(0, num_levels - 1) * step
    return x


@torch.no_grad()
def iwae_log_weights(
    net: nn.Module,
    x0: Tensor,
    tab: PlainTables,
    num_levels: int | None,
    num_samples: int,
    batch_budget: int = 8192,
    generator: torch.Generator | None = None,
) -> Tensor:
    """log p_θ(x_{0:T}) − log q(x_{1:T} | x_0) for K draws of the chain per datum, (K, N).

    Row k·N + n is datum n's k-th draw. The chains of as many rows as fit in 2^24 values are
    drawn together, top-down (noise for x_T, then x_{T−1} … x_1, as pyrodiff draws it); the
    network then sees batch_budget // T rows (× T steps) per call.
    """
    N, T = x0.shape[0], tab.num_steps
    rows = num_samples * N
    chain_rows = max(1, min(rows, 2**24 // (T * x0[0].numel())))
    step = max(1, batch_budget // T)
    out = []
    for start in range(0, rows, chain_rows):
        xs = x0[torch.arange(start, min(start + chain_rows, rows), device=x0.device) % N]
        chain = xs.new_empty((T + 1,) + xs.shape)  # chain[t] = x_t, t = 1 … T
        chain[T] = tab.sqrt_ab[T] * xs + tab.sqrt_1m_ab[T] * torch.randn(
            xs.shape, generator=generator, dtype=xs.dtype, device=xs.device
        )
        for t in range(T, 1, -1):
            noise = torch.randn(xs.shape, generator=generator, dtype=xs.dtype, device=xs.device)
            mean_q = tab.post_c0[t] * xs + tab.post_ct[t] * chain[t]
            chain[t - 1] = mean_q + tab.post_var[t].sqrt() * noise
        for s in range(0, xs.shape[0], step):
            part = slice(s, s + step)
            out.append(_chain_log_weights(net, xs[part], chain[:, part], tab, num_levels))
    return torch.cat(out).reshape(num_samples, N)


def _chain_log_weights(
    net: nn.Module, xs: Tensor, chain: Tensor, tab: PlainTables, num_levels: int | None
) -> Tensor:
    """log p_θ(x_{0:T}) − log q(x_{1:T} | x_0) of drawn chains (chain[t] = x_t, t ≥ 1), with
    the network called once on all T · rows inputs."""
    T, R = tab.num_steps, xs.shape[0]
    dims = tuple(range(2, xs.dim() + 1))  # event dims of (T, R, *event) tensors
    x_t = chain[1:]  # (T, R, ...), entry t − 1 is x_t
    t_all = torch.arange(1, T + 1, device=xs.device)
    mean = _reverse_mean(net, x_t.reshape((T * R,) + xs.shape[1:]), t_all.repeat_interleave(R), tab)
    mean = mean.reshape(x_t.shape)
    x_prev, x_cur = chain[1:T], chain[2:]
    ts = _col(t_all[1:], x_prev)
    mean_q = tab.post_c0[ts] * xs + tab.post_ct[ts] * x_cur
    log_q = _normal_log_prob(x_prev, mean_q, tab.post_var[ts].sqrt(), dims).sum(0)
    x_T = chain[T][None]
    log_q = log_q + _normal_log_prob(x_T, tab.sqrt_ab[T] * xs, tab.sqrt_1m_ab[T], dims)[0]
    log_p = _normal_log_prob(x_prev, mean[1:], tab.beta[ts].sqrt(), dims).sum(0)
    one = torch.ones((), dtype=xs.dtype, device=xs.device)
    log_p = log_p + _normal_log_prob(x_T, 0 * one, one, dims)[0]
    var_1 = tab.beta[1].expand_as(xs)
    rec = decoder_log_prob(xs, mean[0], var_1, num_levels)
    return log_p + rec.sum(tuple(d - 1 for d in dims)) - log_q


def vdm_loss(
    net: nn.Module,
    x0: Tensor,
    gamma_min: float,
    gamma_max: float,
    num_levels: int | None,
    num_bins: int = 1000,
) -> Tensor:
    """−(VDM's T = ∞ bound) per datum, written out: linear γ(t) = γ_min + (γ_max − γ_min) t,
    ε-prediction, the network conditioned on 1000 (γ − γ_min)/(γ_max − γ_min) (= 1000 t here).

    Draws in the order pyrodiff's ContinuousELBO does (a bin, a uniform offset in it, the
    diffusion noise, the decoder's noise), so with the same seed both give the same numbers:
    prior KL + (−log p(x | z_0), z_0/α_0 ± e^{γ_min/2}) + ½ γ′ ‖ε − ε̂_θ(z_t)‖².
    """
    N = x0.shape[0]
    k = torch.randint(1, num_bins + 1, (N,), device=x0.device)
    u = torch.rand(N, device=x0.device, dtype=torch.float64)
    t = ((k.to(torch.float64) - 1.0 + u) / num_bins).to(x0.dtype)
    span = gamma_max - gamma_min
    gamma = _col(gamma_min + span * t, x0)
    eps = torch.randn_like(x0)
    z_t = torch.sigmoid(-gamma).sqrt() * x0 + torch.sigmoid(gamma).sqrt() * eps
    eps_hat = net(z_t, 1000.0 * t)
    dims = tuple(range(1, x0.dim()))
    diffusion = 0.5 * span * (eps - eps_hat).pow(2).sum(dims)
    g0 = torch.tensor(gamma_min, dtype=x0.dtype, device=x0.device)
    a0, s0 = torch.sigmoid(-g0).sqrt(), torch.sigmoid(g0).sqrt()
    z_0 = a0 * x0 + s0 * torch.randn_like(x0)
    var0 = torch.exp(g0).expand_as(x0)
    rec = decoder_log_prob(x0, z_0 / a0, var0, num_levels).sum(dims)
    g1 = torch.tensor(gamma_max, dtype=x0.dtype, device=x0.device)
    a1sq, v1 = torch.sigmoid(-g1), torch.sigmoid(g1)
    prior = 0.5 * (a1sq * x0.pow(2) + v1 - 1 - v1.log()).sum(dims)
    return prior - rec + diffusion


def vdm_step(
    net: nn.Module,
    opt: torch.optim.Optimizer,
    x0: Tensor,
    gamma_min: float,
    gamma_max: float,
    num_levels: int | None,
) -> Tensor:
    """One VDM training step on the T = ∞ bound (fixed linear schedule)."""
    loss = vdm_loss(net, x0, gamma_min, gamma_max, num_levels).sum()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()
