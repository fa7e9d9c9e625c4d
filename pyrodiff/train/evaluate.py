"""Held-out evaluation during training: the ELBO and its per-step terms on a split."""

from __future__ import annotations

import math
from typing import Any

import torch
from pyro import poutine
from torch import Tensor

from ..guides import has_closed_forms
from ..infer import bits_per_dim, continuous_elbo_terms, elbo_terms
from ..infer.timesteps import LowDiscrepancyTimesteps
from ..models import ContinuousDiffusion

__all__ = ["EVAL_SEED_OFFSET", "evaluate_split"]

EVAL_SEED_OFFSET = 7_919
"""``fit`` evaluates with seed + this offset: a stream apart from the training noise."""

CONTINUOUS_EVAL_PASSES = 10
"""One-sample estimates of the T = ∞ bound averaged per datum: one network call each, so ten
passes cost a tenth of a T = 100 evaluation and shrink the t-sampling noise √10-fold."""


def evaluate_split(
    model,
    guide,
    x: Tensor,
    *,
    num_levels: int | None,
    batch_budget: int = 4096,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """The mean ELBO (nats per datum) on ``x`` and, where they exist, its terms.

    For a :class:`~pyrodiff.models.ContinuousDiffusion` it is the T = ∞ bound
    (:func:`~pyrodiff.infer.continuous_elbo_terms`, low-discrepancy t, the mean of
    :data:`CONTINUOUS_EVAL_PASSES` one-sample estimates per datum), split into reconstruction,
    diffusion loss and prior KL. With a closed-form guide every per-step term is estimated by :func:`elbo_terms` (one draw
    of x_t per datum and step). Otherwise (learned guides) the ELBO is one Trace_ELBO sample
    per datum, split by site: reconstruction = log p(x_0 | x_1), step t ≥ 2 contributes
    log q(x_{t−1} | ·) − log p_θ(x_{t−1} | x_t), the prior term log q(x_T | ·) − log p(x_T).
    The trace path evaluates up to ``batch_budget`` data per network call (fewer when the
    chain's T · D latent values per datum would not fit in 2^26 numbers). Both are unbiased for
    the same ELBO; the site split equals DDPM's L_{t−1} in expectation
    when the guide draws x_{t−1} given x_t (top-down). Sites must be named ``x_0`` … ``x_T``
    for the split; for other models only the ELBO is reported.

    Randomness comes from a private generator seeded with ``seed`` (the training stream is
    untouched), so every evaluation of a run uses the same noise: successive evaluations differ
    only through the parameters. ``progress`` shows a tqdm bar on stderr (closed-form path).
    """
    num_dims = math.prod(x.shape[1:])
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        if isinstance(model, ContinuousDiffusion):
            gen = torch.Generator(device=x.device).manual_seed(seed)
            out = _continuous_terms(model, x, batch_budget, gen)
        elif has_closed_forms(guide):
            gen = torch.Generator(device=x.device).manual_seed(seed)
            terms = elbo_terms(
                model, guide, x, batch_budget=batch_budget, generator=gen, progress=progress
            )
            out = terms.mean()
            out["elbo_se"] = _stderr(terms.elbo)
            out["estimator"] = "closed_form"
        else:
            out = _trace_terms(model, guide, x, batch_budget)
    out["bits_per_dim"] = (
        float(bits_per_dim(out["elbo"], num_dims)) if num_levels is not None else None
    )
    return out


def _stderr(per_datum: Tensor) -> float | None:
    """The standard error of the mean over data of per-datum estimates: the spread of the data
    and of the estimator's own noise together (None for a single datum)."""
    n = per_datum.shape[0]
    return (per_datum.double().std() / math.sqrt(n)).item() if n > 1 else None


def _continuous_terms(model, x: Tensor, batch_budget: int, gen: torch.Generator) -> dict[str, Any]:
    sums = {"reconstruction": 0.0, "diffusion": 0.0, "prior": 0.0}
    per_datum = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for _ in range(CONTINUOUS_EVAL_PASSES):
        for start in range(0, x.shape[0], batch_budget):
            xb = x[start : start + batch_budget]
            terms = continuous_elbo_terms(model, xb, LowDiscrepancyTimesteps(), generator=gen)
            per_datum[start : start + xb.shape[0]] += terms.elbo.double()
            for key in sums:
                sums[key] += getattr(terms, key).double().sum().item()
    n = CONTINUOUS_EVAL_PASSES * x.shape[0]
    out: dict[str, Any] = {key: value / n for key, value in sums.items()}
    per_datum /= CONTINUOUS_EVAL_PASSES
    out["elbo"] = per_datum.mean().item()
    out["elbo_se"] = _stderr(per_datum)
    out["estimator"] = "continuous"
    return out


_TRACE_VALUES = 2**26
"""At most this many latent values (T · chunk · D) held by one chunk's traces (512 MB in float64)."""


def _trace_terms(model, guide, x: Tensor, batch_budget: int) -> dict[str, Any]:
    num_steps = getattr(model, "num_steps", None)
    # no gradients are kept, so what a chunk holds is its T + 1 site values, not activations:
    # batch_budget data per network call, within the memory bound above
    per_datum = max(1, num_steps or 1) * math.prod(x.shape[1:])
    chunk = max(1, min(batch_budget, _TRACE_VALUES // per_datum))
    rec_sum, prior_sum, per_step_sum = 0.0, 0.0, None
    per_datum = []
    split = num_steps is not None
    for start in range(0, x.shape[0], chunk):
        xb = x[start : start + chunk]
        guide_tr = poutine.trace(guide).get_trace(xb)
        model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(xb)
        log_p = _site_log_probs(model_tr)
        log_q = _site_log_probs(guide_tr)
        per_datum.append((sum(log_p.values()) - sum(log_q.values())).double())
        names = [f"x_{t}" for t in range(num_steps + 1)] if split else []
        if split and all(n in log_p for n in names) and all(n in log_q for n in names[1:]):
            rec_sum += float(log_p["x_0"].sum())
            prior_sum += float((log_q[names[-1]] - log_p[names[-1]]).sum())
            steps = [-log_p["x_0"].sum()] + [
                (log_q[f"x_{t - 1}"] - log_p[f"x_{t - 1}"]).sum() for t in range(2, num_steps + 1)
            ]
            step_tensor = torch.stack(steps)
            per_step_sum = step_tensor if per_step_sum is None else per_step_sum + step_tensor
        else:
            split = False
    n = x.shape[0]
    per_datum = torch.cat(per_datum)
    return {
        "elbo": per_datum.mean().item(),
        "elbo_se": _stderr(per_datum),
        "reconstruction": rec_sum / n if split else None,
        "prior": prior_sum / n if split else None,
        "per_step_loss": (per_step_sum / n).tolist() if split else None,
        "estimator": "trace_elbo",
    }


def _site_log_probs(trace) -> dict[str, Tensor]:
    """Per-datum log densities of the sample sites (summed over event dims)."""
    trace.compute_log_prob()
    return {
        name: site["log_prob"]
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and "log_prob" in site
    }
