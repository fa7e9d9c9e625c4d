"""How good is a guide? Importance-weighted bounds, PSIS k̂, site-wise ELBO terms, estimator spread.

Everything here works for any model/guide pair written as Pyro programs over one
``pyro.plate("data")`` on the first dimension of x_0 (a :class:`~pyrodiff.Diffusion` with any
guide, a :class:`~pyrodiff.models.HierarchicalVAE`): the guide is traced, the model replayed on
its draws, and the per-datum log-weight

    log w = log p_θ(x_0, z) − log q_φ(z | x_0),   z ~ q_φ(· | x_0)

is read off the two traces. Draws for K importance samples are made by repeating the batch K
times inside the data plate (chunked to bound memory), so models and guides need no particle
dimension of their own. For a Diffusion model with a closed-form guide the same log-weights are
computed without traces, vectorised over t and K (:mod:`pyrodiff.infer.chain`). All results are
frozen dataclasses with per-datum values and standard errors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from pyro import poutine
from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.ops.stats import fit_generalized_pareto
from pyro.poutine.util import site_is_subsample
from torch import Tensor

from ..errors import ConfigError, DataError, ModelMismatchError, NotLinearGaussianError
from ..guides import has_closed_forms
from ..progress import progress_bar
from ..validation import check_pair
from .chain import closed_form_log_weights
from .chunks import repeated_chunks
from .elbo import DiffusionELBO, ELBOTerms
from .exact import exact_log_evidence

__all__ = [
    "BoundEstimate",
    "PSISDiagnostic",
    "EstimatorSpread",
    "BoundsReport",
    "log_weights",
    "elbo_estimate",
    "iwae_bound",
    "pareto_khat",
    "psis_diagnostic",
    "sitewise_elbo_terms",
    "estimator_spread",
    "bounds_report",
]


# --- log-weights ------------------------------------------------------------------------------


def _traces(model, guide, x0: Tensor):
    guide_tr = poutine.trace(guide).get_trace(x0)
    model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(x0)
    latent_m = {n for n, s in model_tr.nodes.items() if _is_latent(s)}
    latent_g = {n for n, s in guide_tr.nodes.items() if _is_latent(s)}
    if latent_m != latent_g:
        only_m, only_g = sorted(latent_m - latent_g), sorted(latent_g - latent_m)
        raise ModelMismatchError(
            "the guide and the model must sample the same latent sites; "
            f"only in the model: {only_m[:4]}, only in the guide: {only_g[:4]} "
            "(different T or a guide built for another model)"
        )
    model_tr.compute_log_prob()
    guide_tr.compute_log_prob()
    return model_tr, guide_tr


def _is_sample(site: dict) -> bool:
    return site["type"] == "sample" and not site_is_subsample(site)


def _is_latent(site: dict) -> bool:
    return _is_sample(site) and not site["is_observed"]


def _site_log_prob(site: dict, batch: int) -> Tensor:
    lp = site["log_prob"]
    if lp.dim() == 0 or lp.shape[-1] != batch:
        raise ModelMismatchError(
            f"site {site['name']!r} must have one log-density per datum inside pyro.plate('data'); "
            f"got log_prob of shape {tuple(lp.shape)} for a batch of {batch}"
        )
    return lp.reshape(-1, batch).sum(0)


def _check_inputs(model, guide, x0: Tensor, num_samples: int) -> None:
    check_pair(model, guide)
    if hasattr(guide, "check_model"):
        guide.check_model(model)
    if not isinstance(x0, Tensor) or x0.dim() < 1 or x0.shape[0] < 1:
        raise DataError("x0 must be a non-empty tensor of shape (N, *event_shape)")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ConfigError(
            f"the number of importance samples must be an integer >= 1, got {num_samples!r}"
        )


def log_weights(
    model,
    guide,
    x0: Tensor,
    num_samples: int,
    batch_budget: int = 8192,
    progress: bool = False,
    vectorised: bool | None = None,
) -> Tensor:
    """log p_θ(x_0, z_k) − log q_φ(z_k | x_0) for z_k ~ q_φ, shape (K, N), detached.

    Two paths give the same values for the same draws. With a :class:`~pyrodiff.Diffusion`
    model and a closed-form guide (:func:`~pyrodiff.guides.has_closed_forms`) the chain is drawn
    and every density evaluated at all t at once
    (:func:`~pyrodiff.infer.chain.closed_form_log_weights`, about ``batch_budget`` network
    inputs per call); for any other pair the guide is traced and the model replayed on its
    draws, up to ``batch_budget`` data copies at once. ``vectorised`` picks the path (None: the
    vectorised one where it applies). Both are network-bound when K·N is large; the vectorised
    one saves Pyro's per-site work, which dominates for few rows. ``progress`` shows a tqdm bar
    on stderr.
    """
    _check_inputs(model, guide, x0, num_samples)
    if vectorised is None:
        vectorised = _vectorisable(model, guide)
    if vectorised:
        return closed_form_log_weights(
            model, guide, x0, num_samples, batch_budget=batch_budget, progress=progress
        )
    N = x0.shape[0]
    out = []
    bar = progress_bar(num_samples * N, "log-weights (traces)", "draw", progress)
    with torch.no_grad(), bar:
        for _, k, xs in repeated_chunks(x0, num_samples, batch_budget):
            model_tr, guide_tr = _traces(model, guide, xs)
            lw = sum(
                _site_log_prob(s, k * N) for s in model_tr.nodes.values() if _is_sample(s)
            ) - sum(_site_log_prob(s, k * N) for s in guide_tr.nodes.values() if _is_latent(s))
            out.append(lw.reshape(k, N))
            bar.update(k * N)
    return torch.cat(out, 0)


def _vectorisable(model, guide) -> bool:
    """A Diffusion model (it has reverse moments) with a closed-form guide."""
    return has_closed_forms(guide) and callable(getattr(model, "reverse_moments", None))


# --- bounds -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BoundEstimate:
    """A per-datum lower bound on log p_θ(x_0), in nats.

    Attributes:
        name: "elbo", "iwae" or "exact".
        num_samples: K, the importance samples per datum (0 for exact values).
        values: the per-datum estimate, shape (N,) (the mean over repeats).
        mc_stderr: per-datum Monte Carlo standard error of ``values``, shape (N,) (zeros when
            exact; NaN when one repeat gives no spread to measure).
    """

    name: str
    num_samples: int
    values: Tensor
    mc_stderr: Tensor

    @property
    def mean(self) -> float:
        """The bound averaged over the data."""
        return self.values.mean().item()

    @property
    def stderr(self) -> float:
        """Standard error of :attr:`mean` as an estimate of the population mean (spread over
        the data; Monte Carlo error included, since each datum's value carries it)."""
        n = self.values.numel()
        return (self.values.std().item() / math.sqrt(n)) if n > 1 else float("nan")

    @property
    def mc_stderr_of_mean(self) -> float:
        """Monte Carlo standard error of :attr:`mean` for these data held fixed."""
        return (self.mc_stderr.pow(2).sum().sqrt() / self.values.numel()).item()

    def bits_per_dim(self, num_dims: int) -> float:
        """−mean / (D ln 2)."""
        return -self.mean / (num_dims * math.log(2.0))


def elbo_estimate(
    model,
    guide,
    x0: Tensor,
    num_samples: int = 100,
    batch_budget: int = 8192,
    progress: bool = False,
) -> BoundEstimate:
    """ELBO(x_0) = E_q[log w], estimated per datum by the mean of K log-weights.

    Unbiased for any model/guide pair; the Monte Carlo error is the spread of log w over √K.
    The log-weights come from :func:`log_weights` (vectorised for closed-form guides).
    """
    lw = log_weights(model, guide, x0, num_samples, batch_budget, progress)
    se = lw.std(0) / math.sqrt(num_samples) if num_samples > 1 else torch.full_like(lw[0], math.nan)
    return BoundEstimate("elbo", num_samples, lw.mean(0), se)


def iwae_bound(
    model,
    guide,
    x0: Tensor,
    num_samples: int,
    num_repeats: int = 1,
    batch_budget: int = 8192,
    progress: bool = False,
) -> BoundEstimate:
    """IWAE-K: L_K(x_0) = E[log (1/K) Σ_k w_k], per datum (Burda et al., 2016).

    Each repeat is an unbiased draw of L_K, and L_1 = ELBO ≤ L_K ≤ L_{K+1} ≤ log p_θ(x_0) for
    every datum; ``values`` averages ``num_repeats`` independent draws and ``mc_stderr`` is their
    spread over √repeats. The log-weights come from :func:`log_weights` (vectorised over t and
    K for closed-form guides, Pyro traces otherwise); ``progress`` shows a tqdm bar.
    """
    if isinstance(num_repeats, bool) or not isinstance(num_repeats, int) or num_repeats < 1:
        raise ConfigError(f"num_repeats must be an integer >= 1, got {num_repeats!r}")
    lw = log_weights(model, guide, x0, num_samples * num_repeats, batch_budget, progress)
    lw = lw.reshape(num_repeats, num_samples, -1)
    draws = torch.logsumexp(lw, 1) - math.log(num_samples)  # (R, N)
    if num_repeats > 1:
        se = draws.std(0) / math.sqrt(num_repeats)
    else:
        se = torch.full_like(draws[0], math.nan)
    return BoundEstimate("iwae", num_samples, draws.mean(0), se)


# --- PSIS -------------------------------------------------------------------------------------


def pareto_khat(log_w: Tensor) -> float:
    """The Pareto shape k̂ of the largest importance weights of one datum (Vehtari et al.).

    The tail selection is the one of ``pyro.infer.importance.psis_diagnostic`` (the largest
    min(0.2 S, 3 √S) weights), fitted with ``pyro.ops.stats.fit_generalized_pareto``; this
    applies it to the weights of a single datum rather than of the whole batch's joint.
    ``inf`` when there are fewer than 10 tail weights.
    """
    lw = torch.sort(log_w.detach().double().flatten() - log_w.max())[0]
    S = lw.numel()
    cut = -int(math.ceil(min(0.2 * S, 3.0 * math.sqrt(S)))) - 1
    if -cut > S:
        return math.inf
    lw_cut = max(math.log(1.0e-15), lw[cut].item())
    tail = lw[lw > lw_cut]
    if tail.numel() < 10:
        return math.inf
    k, _ = fit_generalized_pareto(tail.exp() - math.exp(lw_cut))
    return k


@dataclass(frozen=True)
class PSISDiagnostic:
    """PSIS k̂ per datum: how heavy the tail of w = p_θ(x_0, z) / q_φ(z | x_0) is.

    k̂ < 0.5: q is a good importance proposal for p_θ(z | x_0); 0.5–0.7: usable; > 0.7: the
    importance-weighted estimates (IWAE-K) are unreliable for that datum. k̂ is itself noisy:
    S of a few hundred draws gives it to about ±0.1.
    """

    khat: Tensor
    num_samples: int

    @property
    def mean(self) -> float:
        return self.khat.mean().item()

    @property
    def stderr(self) -> float:
        return self.khat.std().item() / math.sqrt(self.khat.numel())

    @property
    def fraction_bad(self) -> float:
        """The fraction of data with k̂ > 0.7."""
        return (self.khat > 0.7).double().mean().item()


def psis_diagnostic(
    model,
    guide,
    x0: Tensor,
    num_samples: int = 500,
    batch_budget: int = 8192,
    progress: bool = False,
) -> PSISDiagnostic:
    """k̂ for every datum from ``num_samples`` importance weights (see :func:`pareto_khat`),
    read from :func:`log_weights` (vectorised for closed-form guides)."""
    lw = log_weights(model, guide, x0, num_samples, batch_budget, progress)
    khat = torch.tensor([pareto_khat(lw[:, n]) for n in range(lw.shape[1])], dtype=torch.float64)
    return PSISDiagnostic(khat, num_samples)


# --- the ELBO, site by site -------------------------------------------------------------------


def sitewise_elbo_terms(
    model, guide, x0: Tensor, num_samples: int = 16, batch_budget: int = 8192
) -> ELBOTerms:
    """The ELBO split by the model's sites, for any guide (Monte Carlo, ``num_samples`` draws).

    The model's latent sites, in the order it samples them (x_T … x_1, or z_L … z_1), give
    prior = E_q[log q(top) − log p(top)], diffusion column j = E_q[log q(site) − log p(site |
    parent)] for the (j+1)-th latent from the bottom, and reconstruction = E_q log p(x_0 | ·).
    The guide's density at a site is its own conditional, so for a top-down guide the columns
    are DDPM's L_{t−1} (the per-layer KLs of a ladder VAE); for a bottom-up guide they are a
    different split of the same total. The total is always the ELBO.
    """
    _check_inputs(model, guide, x0, num_samples)
    N = x0.shape[0]
    parts: list[Tensor] = []
    with torch.no_grad():
        for _, k, xs in repeated_chunks(x0, num_samples, batch_budget):
            model_tr, guide_tr = _traces(model, guide, xs)
            rows = []
            for name, site in model_tr.nodes.items():
                if not _is_sample(site):
                    continue
                lp = _site_log_prob(site, k * N)
                if site["is_observed"]:
                    rows.append(lp)
                else:
                    rows.append(_site_log_prob(guide_tr.nodes[name], k * N) - lp)
            parts.append(torch.stack(rows, 0).reshape(len(rows), k, N).sum(1))
    per_site = torch.stack(parts, 0).sum(0) / num_samples  # (sites, N), model order
    return ELBOTerms(
        reconstruction=per_site[-1],
        diffusion=per_site[1:-1].flip(0).T.contiguous(),
        prior=per_site[0],
        num_dims=math.prod(x0.shape[1:]),
    )


# --- the spread of ELBO estimators --------------------------------------------------------------


@dataclass(frozen=True)
class EstimatorSpread:
    """The spread of one ELBO estimator's per-batch value, in nats per datum.

    Attributes:
        estimator: the estimator's class name.
        mean: mean of the repeated estimates of the ELBO per datum.
        std: their standard deviation (how noisy one training step's loss is).
        std_stderr: standard error of ``std``, std / √(2(R − 1)) (exact for normal draws).
        num_repeats: R.
    """

    estimator: str
    mean: float
    std: float
    std_stderr: float
    num_repeats: int

    @property
    def mean_stderr(self) -> float:
        return self.std / math.sqrt(self.num_repeats)


def estimator_spread(
    model,
    guide,
    x0: Tensor,
    estimators: Sequence[ELBO] | None = None,
    num_repeats: int = 50,
) -> list[EstimatorSpread]:
    """Repeat each estimator's ELBO estimate on the batch ``x0`` and report its spread.

    By default: Trace_ELBO, TraceMeanField_ELBO and (when the guide has closed-form factors)
    :class:`~pyrodiff.infer.DiffusionELBO`. All three are unbiased for the same ELBO when
    TraceMeanField_ELBO is valid for the guide (a top-down guide; see
    :class:`~pyrodiff.guides.GuideStructure`); their means agree within their standard errors
    there, and differ only in spread.
    """
    if isinstance(num_repeats, bool) or not isinstance(num_repeats, int) or num_repeats < 2:
        raise ConfigError(f"num_repeats must be an integer >= 2, got {num_repeats!r}")
    check_pair(model, guide)
    if estimators is None:
        estimators = [Trace_ELBO(), TraceMeanField_ELBO()]
        if has_closed_forms(guide):
            estimators.append(DiffusionELBO())
    N = x0.shape[0]
    out = []
    for est in estimators:
        if not isinstance(est, ELBO):
            raise ConfigError(f"estimators must be pyro.infer.ELBO instances, got {est!r}")
        with torch.no_grad():
            vals = torch.tensor(  # float64: a zero spread must not round to float32 noise
                [-est.loss(model, guide, x0) / N for _ in range(num_repeats)], dtype=torch.float64
            )
        std = vals.std().item()
        out.append(
            EstimatorSpread(
                type(est).__name__,
                vals.mean().item(),
                std,
                std / math.sqrt(2 * (num_repeats - 1)),
                num_repeats,
            )
        )
    return out


# --- everything at once -----------------------------------------------------------------------


@dataclass(frozen=True)
class BoundsReport:
    """The ELBO, IWAE-K for several K, k̂ and (linear-Gaussian models) the exact evidence."""

    elbo: BoundEstimate
    iwae: tuple[BoundEstimate, ...]
    psis: PSISDiagnostic
    exact: BoundEstimate | None

    def summary(self) -> dict[str, float]:
        """Means over the data, as plain numbers (nats per datum)."""
        out = {"elbo": self.elbo.mean, "elbo_se": self.elbo.stderr}
        for b in self.iwae:
            out[f"iwae_{b.num_samples}"] = b.mean
        out["khat_mean"] = self.psis.mean
        out["khat_fraction_bad"] = self.psis.fraction_bad
        if self.exact is not None:
            out["log_evidence"] = self.exact.mean
            out["elbo_gap"] = (self.exact.values - self.elbo.values).mean().item()
        return out


def bounds_report(
    model,
    guide,
    x0: Tensor,
    iwae_samples: Sequence[int] = (1, 10, 100),
    elbo_samples: int = 100,
    psis_samples: int = 500,
    progress: bool = False,
) -> BoundsReport:
    """Every bound this module has, for one model/guide pair on ``x0``; the exact evidence is
    included when :func:`~pyrodiff.infer.exact_log_evidence` applies to the model."""
    try:
        ev = exact_log_evidence(model, x0)
        exact = BoundEstimate("exact", 0, ev.to(x0.dtype), torch.zeros_like(ev, dtype=x0.dtype))
    except NotLinearGaussianError:
        exact = None
    return BoundsReport(
        elbo=elbo_estimate(model, guide, x0, elbo_samples, progress=progress),
        iwae=tuple(iwae_bound(model, guide, x0, k, progress=progress) for k in iwae_samples),
        psis=psis_diagnostic(model, guide, x0, psis_samples, progress=progress),
        exact=exact,
    )
