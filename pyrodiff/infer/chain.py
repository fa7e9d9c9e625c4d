"""The log-weights of a closed-form guide's chain, vectorised over t and importance samples.

For a :class:`~pyrodiff.Diffusion` model and a guide with closed forms
(:func:`~pyrodiff.guides.has_closed_forms`), a draw x_{1:T} ~ q(x_{1:T} | x_0) has the log-weight

    log w = log p(x_T) + Σ_{t=2}^T log p_θ(x_{t−1} | x_t) + log p_θ(x_0 | x_1)
            − log q(x_T | x_0) − Σ_{t=2}^T log q(x_{t−1} | x_t, x_0),

the value Pyro's traces give for the same draw (the top-down factorisation of q; any order of
the forward chain has the same joint density). Drawing the chain takes T cheap elementwise
steps; every density above, the network's T calls included, is then evaluated at all t at once.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..gaussian import sum_event
from ..progress import progress_bar
from .elbo import _check_closed_form_pair, _reconstruction

__all__ = ["sample_chain", "chain_log_weights", "closed_form_log_weights"]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _normal_log_prob(x: Tensor, loc: Tensor, scale: Tensor, event_dim: int) -> Tensor:
    """log N(x; loc, scale²), elementwise, summed over the event dims."""
    z = (x - loc) / scale
    return sum_event(-0.5 * z * z - scale.log().expand_as(z) - _HALF_LOG_2PI, event_dim)


def sample_chain(guide, x0: Tensor, num_steps: int, generator: torch.Generator | None = None):
    """x_{1:T} ~ q(x_{1:T} | x_0), top-down: x_T ~ q(x_T | x_0), x_{t−1} ~ q(x_{t−1} | x_t, x_0).

    Returns a tensor of shape (T, *x0.shape) whose entry t − 1 is x_t.
    """
    T = num_steps
    chain = x0.new_empty((T,) + x0.shape)

    def noise() -> Tensor:
        return torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)

    loc, scale = guide.marginal_moments(x0, T)
    chain[T - 1] = loc + scale * noise()
    for t in range(T, 1, -1):
        loc, scale = guide.posterior_moments(x0, chain[t - 1], t)
        chain[t - 2] = loc + scale * noise()
    return chain


def chain_log_weights(model, guide, x0: Tensor, chain: Tensor) -> Tensor:
    """log p_θ(x_{0:T}) − log q(x_{1:T} | x_0) per datum, shape (N,), for a given chain
    (shape (T, N, *event), entry t − 1 holding x_t): the model's T network calls are made as one
    batch of T·N inputs."""
    T, N = chain.shape[0], x0.shape[0]
    event_dim = x0.dim() - 1
    flat = chain.reshape((T * N,) + x0.shape[1:])
    t = torch.arange(1, T + 1, device=x0.device).repeat_interleave(N)
    mean, var = model.reverse_moments(flat, t)
    mean = mean.reshape(chain.shape)
    var = var.expand((T * N,) + x0.shape[1:]).reshape(chain.shape)

    x_T = chain[T - 1]
    p_loc, p_scale = model.prior_loc.to(x0), model.prior_scale.to(x0)
    log_p = _normal_log_prob(x_T, p_loc, p_scale.expand_as(x0), event_dim)
    log_p = log_p + _reconstruction(model, x0, mean[0], var[0], event_dim)
    q_loc, q_scale = guide.marginal_moments(x0, T)
    log_q = _normal_log_prob(x_T, q_loc, q_scale.expand_as(x0), event_dim)
    if T > 1:
        # steps t = 2 … T, one batch of (T − 1)·N: x_{t−1} given x_t
        prev = chain[:-1].reshape(((T - 1) * N,) + x0.shape[1:])
        cur = chain[1:].reshape(((T - 1) * N,) + x0.shape[1:])
        xs = x0.repeat((T - 1,) + (1,) * event_dim)
        ts = t[N:]
        m = mean[1:].reshape(prev.shape)
        s = var[1:].reshape(prev.shape).sqrt()
        log_p = log_p + _normal_log_prob(prev, m, s, event_dim).reshape(T - 1, N).sum(0)
        q_loc, q_scale = guide.posterior_moments(xs, cur, ts)
        log_q_steps = _normal_log_prob(prev, q_loc, q_scale.expand_as(prev), event_dim)
        log_q = log_q + log_q_steps.reshape(T - 1, N).sum(0)
    return log_p - log_q


_CHAIN_VALUES = 2**24
"""At most this many values (rows · T · D) in one drawn chain: 128 MB in float64."""


def closed_form_log_weights(
    model,
    guide,
    x0: Tensor,
    num_samples: int,
    batch_budget: int = 8192,
    progress: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """log w for K draws per datum from a closed-form guide, shape (K, N), detached.

    Row k·N + n of the K·N (draw, datum) pairs is datum n's k-th draw, as in
    :func:`~pyrodiff.infer.bounds.log_weights`. The chains of as many rows as fit in 2^24
    values are drawn together (T elementwise steps over all of them); their log-weights then go
    through the network in chunks of about ``batch_budget`` inputs (rows × T), so memory stays
    bounded whatever T, K and N.
    """
    _check_closed_form_pair(model, guide)
    N, T = x0.shape[0], model.num_steps
    rows = num_samples * N
    per_row = T * math.prod(x0.shape[1:])
    chain_rows = max(1, min(rows, _CHAIN_VALUES // per_row))
    net_rows = max(1, batch_budget // T)
    out = []
    bar = progress_bar(rows, "log-weights", "draw", progress)
    with torch.no_grad(), bar:
        for start in range(0, rows, chain_rows):
            idx = torch.arange(start, min(start + chain_rows, rows), device=x0.device) % N
            xs = x0[idx]
            chain = sample_chain(guide, xs, T, generator)
            for s in range(0, xs.shape[0], net_rows):
                part = slice(s, s + net_rows)
                out.append(chain_log_weights(model, guide, xs[part], chain[:, part]))
                bar.update(out[-1].shape[0])
    return torch.cat(out).reshape(num_samples, N)
