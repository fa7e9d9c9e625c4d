"""Held-out evaluation: the ELBO and its per-step terms on a split (what ``fit`` records during
training), and the whole report ``pyrodiff evaluate`` prints (:func:`evaluation_report`)."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
from pyro import poutine
from torch import Tensor

from ..errors import ModelMismatchError
from ..guides import has_closed_forms
from ..infer import bits_per_dim, continuous_elbo_terms, elbo_terms
from ..infer.timesteps import LowDiscrepancyTimesteps
from ..models import ContinuousDiffusion
from .report import (
    DataGap,
    ELBOEvaluation,
    EvaluationReport,
    ImportanceBound,
    PSISSummary,
    stderr_of_mean,
)

__all__ = [
    "EVAL_SEED_OFFSET",
    "LITERAL_CHAIN_BUDGET",
    "ELBOEvaluation",
    "as_chain",
    "bound_steps",
    "evaluate_elbo",
    "evaluate_split",
    "evaluation_report",
]

EVAL_SEED_OFFSET = 7_919
"""``fit`` evaluates with seed + this offset: a stream apart from the training noise. A run's
evaluations, during training and by ``pyrodiff evaluate``, all use this seed unless told
otherwise, so that they print the same numbers for the same parameters and data."""

CONTINUOUS_EVAL_PASSES = 10
"""One-sample estimates of the T = ∞ bound averaged per datum: one network call each, so ten
passes cost a tenth of a T = 100 evaluation and shrink the t-sampling noise √10-fold."""


LITERAL_CHAIN_BUDGET = 2**24
"""At most this many network inputs (T · K · N) for an importance-weighted bound read through a
model's literal chain (a model with a latent z has no closed-form chain to vectorise): about a
minute of a small network on one core. Beyond it the report says so instead of computing."""


def bound_steps(model, loss=None) -> int | None:
    """T of the bound a continuous-time model's run trains and reports: ``loss.num_steps`` of
    a :class:`~pyrodiff.infer.ContinuousELBO` (None: T = ∞), the model's own ``num_steps``
    under any other objective (:class:`~pyrodiff.infer.DiffusionELBO` and Trace_ELBO read its
    T-step chain). None for every other model, whose bound has its own T."""
    from ..infer import ContinuousELBO

    if not isinstance(model, ContinuousDiffusion):
        return None
    if loss is None or isinstance(loss, ContinuousELBO):
        return getattr(loss, "num_steps", None)
    return model.num_steps


def evaluate_split(
    model,
    guide,
    x: Tensor,
    *,
    num_levels: int | None,
    batch_budget: int = 4096,
    seed: int = 0,
    progress: bool = False,
    num_steps: int | None = None,
) -> dict[str, Any]:
    """:func:`evaluate_elbo`'s result as the plain record ``fit`` writes (its ``to_dict()``)."""
    return evaluate_elbo(
        model,
        guide,
        x,
        num_levels=num_levels,
        batch_budget=batch_budget,
        seed=seed,
        progress=progress,
        num_steps=num_steps,
    ).to_dict()


def evaluate_elbo(
    model,
    guide,
    x: Tensor,
    *,
    num_levels: int | None,
    batch_budget: int = 4096,
    seed: int = 0,
    progress: bool = False,
    num_steps: int | None = None,
) -> ELBOEvaluation:
    """The ELBO (nats per datum) on ``x``, per datum and on average, and, where they exist,
    its terms.

    For a :class:`~pyrodiff.models.ContinuousDiffusion` it is the T = ∞ bound, or the bound of
    its T-step chain for ``num_steps`` = T (:func:`bound_steps` says which a run trains)
    (:func:`~pyrodiff.infer.continuous_elbo_terms`, low-discrepancy t, the mean of
    :data:`CONTINUOUS_EVAL_PASSES` one-sample estimates per datum), split into reconstruction,
    diffusion loss and prior KL; for a model with a latent z
    (:class:`~pyrodiff.models.AdaptiveDiffusion`) each estimate is at one z ~ q(z | x) from
    ``guide``, plus KL(q(z | x) ‖ p(z)) in closed form (the ``latent`` term). With a
    closed-form guide every per-step term is estimated by :func:`elbo_terms` (one draw of x_t
    per datum and step). Otherwise (learned guides) the
    ELBO is one Trace_ELBO sample per datum, split by site: reconstruction = log p(x_0 | x_1),
    step t ≥ 2 contributes log q(x_{t−1} | ·) − log p_θ(x_{t−1} | x_t), the prior term
    log q(x_T | ·) − log p(x_T). The trace path evaluates up to ``batch_budget`` data per
    network call (fewer when the chain's T · D latent values per datum would not fit in 2^26
    numbers). Both are unbiased for the same ELBO; the site split equals DDPM's L_{t−1} in
    expectation when the guide draws x_{t−1} given x_t (top-down). Sites must be named
    ``x_0`` … ``x_T`` for the split; for other models only the ELBO is reported.

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
            out = _continuous_terms(model, guide, x, batch_budget, gen, num_steps)
        elif has_closed_forms(guide):
            gen = torch.Generator(device=x.device).manual_seed(seed)
            terms = elbo_terms(
                model, guide, x, batch_budget=batch_budget, generator=gen, progress=progress
            )
            per_datum = terms.elbo.double()
            out = {
                **terms.mean(),
                "per_datum": per_datum,
                "elbo_se": stderr_of_mean(per_datum),
                "estimator": "closed_form",
            }
        else:
            out = _trace_terms(model, guide, x, batch_budget)
    quantised = num_levels is not None
    out["bits_per_dim"] = float(bits_per_dim(out["elbo"], num_dims)) if quantised else None
    return ELBOEvaluation(**out)


def _continuous_terms(
    model, guide, x: Tensor, batch_budget: int, gen: torch.Generator, num_steps: int | None
) -> dict[str, Any]:
    sums = {"reconstruction": 0.0, "diffusion": 0.0, "prior": 0.0}
    if getattr(model, "latent_dim", 0):
        sums["latent"] = 0.0
    per_datum = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for _ in range(CONTINUOUS_EVAL_PASSES):
        for start in range(0, x.shape[0], batch_budget):
            xb = x[start : start + batch_budget]
            terms = continuous_elbo_terms(
                model,
                xb,
                LowDiscrepancyTimesteps(),
                generator=gen,
                guide=guide,
                num_steps=num_steps,
            )
            per_datum[start : start + xb.shape[0]] += terms.elbo.double()
            for key in sums:
                sums[key] += getattr(terms, key).double().sum().item()
    n = CONTINUOUS_EVAL_PASSES * x.shape[0]
    out: dict[str, Any] = {key: value / n for key, value in sums.items()}
    out["bound_steps"] = num_steps
    per_datum /= CONTINUOUS_EVAL_PASSES
    out["per_datum"] = per_datum
    out["elbo"] = per_datum.mean().item()
    out["elbo_se"] = stderr_of_mean(per_datum)
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
        "per_datum": per_datum,
        "elbo_se": stderr_of_mean(per_datum),
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


# --- the whole report -----------------------------------------------------------------------------


@contextlib.contextmanager
def evaluation_mode(*modules: torch.nn.Module):
    """Modules in eval mode (dropout off) for the duration, each restored to its own mode after:
    a bound is a property of the model, not of one dropout mask."""
    modes = [[(m, m.training) for m in module.modules()] for module in modules]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for pairs in modes:
            for m, training in pairs:
                m.training = training


def as_chain(model, guide):
    """The model and guide as a discrete chain, for the tools that walk one (IWAE, PSIS, the
    samplers): a continuous-time model discretised at its ``num_steps`` with the forward chain
    over that discretisation (per dimension for a schedule per dimension); a model with a latent
    z (its schedule depends on z, so it has no fixed tables) as its own literal chain, read
    through Pyro traces; any other pair as it is."""
    from ..guides import ForwardGuide

    if getattr(model, "latent_dim", 0) and isinstance(model, ContinuousDiffusion):
        return model, guide
    if isinstance(model, ContinuousDiffusion):
        discrete = model.discretize()
        return discrete, ForwardGuide(discrete.schedule)
    return model, guide


def _chain_or_note(model, guide, x: Tensor, num_samples: int, what: str):
    """(chain, guide, None) for the importance-weighted tools, or (None, None, note): one line
    saying why they are not computed for this model (no discrete chain, or a literal chain
    costing more than :data:`LITERAL_CHAIN_BUDGET` network inputs)."""
    try:
        chain, chain_guide = as_chain(model, guide)
    except ModelMismatchError as exc:
        return None, None, f"not computed: {exc}"
    if chain is model and isinstance(model, ContinuousDiffusion):
        # the literal chain, T network calls per datum per draw, through Pyro traces
        cost = model.num_steps * num_samples * x.shape[0]
        if cost > LITERAL_CHAIN_BUDGET:
            note = (
                f"not computed: {what} reads this model's literal chain, T · K · N = "
                f"{model.num_steps} · {num_samples} · {x.shape[0]} = {cost:,} network inputs, "
                f"over the {LITERAL_CHAIN_BUDGET:,} allowed (fewer data, draws or steps fit)"
            )
            return None, None, note
    return chain, chain_guide, None


def evaluation_report(
    model,
    guide,
    x: Tensor,
    *,
    num_levels: int | None = None,
    density=None,
    iwae: int | None = None,
    psis_num: int | None = None,
    psis_samples: int = 256,
    batch_budget: int = 4096,
    seed: int = 0,
    progress: bool = False,
    num_steps: int | None = None,
) -> EvaluationReport:
    """Everything ``pyrodiff evaluate`` reports on ``x``, as an :class:`EvaluationReport`.

    - the ELBO and its terms (:func:`evaluate_elbo`, noise seeded by ``seed``; a
      continuous-time model's at T = ``num_steps``, None: T = ∞);
    - with ``density`` (a :class:`~pyrodiff.data.Density`: the exact log p_data, in the
      model's space), the gap log p_data(x) − ELBO(x): its mean over the data and the standard
      error of that mean from the per-datum differences (paired: the spread of the data, which
      log p_data and the ELBO share, cancels);
    - with ``iwae`` = K, the importance-weighted bound IWAE-K (Burda et al.);
    - with ``psis_num``, PSIS k̂ (Vehtari et al.) of the guide as a proposal, on the first
      ``psis_num`` data from ``psis_samples`` draws each.

    IWAE and k̂ read the pair as a discrete chain (:func:`as_chain`) and draw from torch's
    generator seeded with ``seed`` (the caller's stream is restored): the same call gives the
    same numbers. Where there is no such chain, or a model with a latent z would need more
    than :data:`LITERAL_CHAIN_BUDGET` network inputs through its literal chain, the report
    holds one line saying so (``iwae_note``, ``psis_note``) instead.
    """
    elbo = evaluate_elbo(
        model,
        guide,
        x,
        num_levels=num_levels,
        batch_budget=batch_budget,
        seed=seed,
        progress=progress,
        num_steps=num_steps,
    )
    gap = None
    if density is not None:
        # the densities hold their tables on the CPU
        log_p = density.log_prob(x.detach().cpu()).to(torch.float64).reshape(-1)
        gap = DataGap.paired(log_p, elbo.per_datum.cpu())
    bound = psis = None
    chain_steps = None
    notes: dict[str, str] = {}
    if iwae is not None or psis_num is not None:
        from ..infer import bounds

        devices = [x.device] if x.device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            if iwae is not None:
                chain, chain_guide, notes["iwae"] = _chain_or_note(
                    model, guide, x, iwae, f"IWAE-{iwae}"
                )
                if chain is not None:
                    chain_steps = _discretized_at(model, chain, num_steps)
                    res = bounds.iwae_bound(
                        chain, chain_guide, x, num_samples=iwae, batch_budget=batch_budget,
                        progress=progress,
                    )  # fmt: skip
                    bpd = res.bits_per_dim(math.prod(x.shape[1:])) if num_levels else None
                    bound = ImportanceBound(iwae, res.mean, res.stderr, bpd)
            if psis_num is not None:
                subset = x[:psis_num]
                chain, chain_guide, notes["psis"] = _chain_or_note(
                    model, guide, subset, psis_samples, "PSIS k-hat"
                )
                if chain is not None:
                    chain_steps = _discretized_at(model, chain, num_steps)
                    diag = bounds.psis_diagnostic(
                        chain, chain_guide, subset, num_samples=psis_samples,
                        batch_budget=batch_budget, progress=progress,
                    )  # fmt: skip
                    psis = PSISSummary.of(diag.khat, diag.num_samples)
    return EvaluationReport(
        num_data=int(x.shape[0]),
        seed=seed,
        elbo=elbo,
        data_gap=gap,
        iwae=bound,
        psis=psis,
        discretized_at=chain_steps,
        iwae_note=notes.get("iwae"),
        psis_note=notes.get("psis"),
    )


def _discretized_at(model, chain, num_steps: int | None) -> int | None:
    """T of the discrete chain a continuous-time model was read as, where it differs from the
    bound's (T = ∞, or ``num_steps``); None where both read the same chain."""
    if chain is not model:
        return chain.num_steps
    if isinstance(model, ContinuousDiffusion) and num_steps is None:
        return model.num_steps  # its literal chain, against the T = ∞ bound
    return None
