"""Study (g): is the ELBO invariant to the noise process? Four continuous-time arms, one bound.

Data: the eight-Gaussians ring (2-D, standardised), whose log density is exact, so every bound is
read as a gap to log p_data(x), paired per test point. The arms share the denoiser (an MLP
predicting ε), the optimiser and the training objective (the T = ∞ bound,
:class:`~pyrodiff.infer.ContinuousELBO`, low-discrepancy t) and differ only in q:

1. **fixed q**: :class:`~pyrodiff.ContinuousDiffusion` over VDM's linear log-SNR from 13.3 to −5;
2. **learned scalar schedule**: :class:`~pyrodiff.schedules.LearnedLogSNR`, ends trained on the
   bound and the interior on the estimator's variance (as ``pyrodiff train --model continuous``);
3. **learned per-dimension schedule**: :class:`~pyrodiff.schedules.MultivariateLogSNR` with one
   curve per coordinate, trained on the bound, the network told t (``Conditioning.TIME``);
4. **MuLAN**: :class:`~pyrodiff.models.AdaptiveDiffusion`, the per-dimension schedule a function of
   a latent z drawn by :class:`~pyrodiff.guides.AdaptiveNoiseGuide` (``latent_dim`` K), the
   denoiser told z.

Each arm is trained on the T = ∞ bound at budgets N, 2N, 4N, … until a doubling gains less than
2 paired SE on validation (``_converge.paired_doubling``: the two budgets' per-datum bounds are
evaluated with common random numbers and compared by their paired difference). The kept model
is then read on the test split at T = ∞ and at each T of ``steps_list`` (its own T-step chain,
``step_integrand``): trained at T = ∞ and read at T.

**The estimator read here** (:func:`bound_terms`): per datum, the ends (reconstruction and prior
KL) in closed form given the learned ends, and the diffusion term stratified over t (one t in
each of M equal strata of [0, 1], or of the steps 2 … T) with the control variate
½ Σ_j w_j(t) (ε_j² − 1), whose mean is exactly 0 (w = −λ′ at T = ∞, expm1(λ_{t−1} − λ_t) at T
steps), scaled per stratum by a coefficient estimated on validation data. Every term stays
unbiased; passes of M strata are added until the SE of the T = ∞ gap to log p_data reaches
``target_se`` (or ``max_passes``), and the SE reached is printed.

**Shares of each arm's gain over the fixed q** (paired per test point): the ends (the closed-form
reconstruction and prior terms at the arm's ends minus the fixed q's), the discretisation
(the arm's T-step bound minus its T = ∞ bound, minus the same for the fixed q; 0 at T = ∞) and
the network's (the rest, which includes −KL(q(z | x) ‖ p(z)) for MuLAN).

    python examples/study_adaptive.py                  # the eight Gaussians (~30 CPU-minutes)
    python examples/study_adaptive.py --quick          # seconds; what the tests run
    python examples/study_adaptive.py --write-docs     # docs/results/study_adaptive.json
    python examples/study_adaptive.py --dataset digits # T = 100 and ∞ on the digits
    python examples/study_adaptive.py --train-at 8 --max-updates 6000
                                                       # each arm trained on its 8-step bound

Trained models are kept under ``outputs/study_adaptive/runs/`` (beside the results of ``--out``),
so a rerun loads them and an interrupted one retrains only what is missing.
"""

from __future__ import annotations

import argparse
import enum
import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from _converge import paired_doubling
from _outputs import OUTPUTS, add_output_arguments, outputs
from _study_common import enum_argument, mean_se, pm
from _tables import markdown, named_table, render, table_row
from torch import Tensor

from pyrodiff import ContinuousDiffusion, ContinuousForwardGuide, LearnedLogSNR, LinearLogSNR
from pyrodiff.cli.parser import enum_metavar
from pyrodiff.data import get_dataset
from pyrodiff.gaussian import gaussian_kl, log_snr_marginal_moments, prior_kl, sum_event
from pyrodiff.guides.adaptive import AdaptiveNoiseGuide
from pyrodiff.infer import ContinuousELBO, LowDiscrepancyTimesteps, ScheduleObjective
from pyrodiff.infer.continuous import diffusion_integrand, step_integrand
from pyrodiff.likelihoods import GaussianLikelihood
from pyrodiff.models.adaptive import AdaptiveDiffusion
from pyrodiff.models.continuous import Conditioning
from pyrodiff.networks import MLPDenoiser, UNetDenoiser
from pyrodiff.schedules import Endpoints, discrete_times
from pyrodiff.schedules.multivariate import MultivariateLogSNR

NAME = "study_adaptive"


class Arm(enum.Enum):
    """The noise process of an arm: what q learns."""

    FIXED = "fixed q"
    SCALAR = "learned scalar schedule"
    PER_DIMENSION = "learned per-dimension schedule"
    MULAN = "MuLAN (per dimension, with z)"


class Data(enum.Enum):
    EIGHT_GAUSSIANS = "eight_gaussians"
    DIGITS = "digits"


@dataclass(frozen=True)
class AdaptiveStudyConfig:
    dataset: Data = Data.EIGHT_GAUSSIANS
    log_snr_start: float = 13.3
    log_snr_end: float = -5.0
    steps_list: tuple[int, ...] = (1000, 8, 4)
    """the T-step chains each arm is read at, besides T = ∞"""
    num_train: int = 20_000
    num_validation: int = 2000
    num_test: int = 10_000
    hidden: int = 128
    depth: int = 3
    latent_dim: int = 2
    """K, the size of MuLAN's z"""
    num_basis: int = 8
    updates: int = 3000
    """the first budget of the doubling"""
    max_updates: int = 12_000
    batch_size: int = 512
    lr: float = 2e-3
    validation_strata: int = 16
    """strata of t per validation datum for the paired rule (one pass, common random numbers)"""
    strata: int = 64
    """strata of t (or of the steps) per test datum and pass"""
    target_se: float = 0.005
    """passes are added until the T = ∞ gap's SE is at most this"""
    max_passes: int = 16
    step_passes: int = 2
    """passes at each finite T (its SE is printed; the target is for T = ∞)"""
    train_steps: int | None = None
    """the T each arm is trained (and its convergence judged) at; None: T = ∞"""
    seed: int = 0
    check_convergence: bool = True
    """False for --quick: its budgets are too small for the doubling rule to mean anything"""

    @staticmethod
    def quick(seed: int, dataset: Data = Data.EIGHT_GAUSSIANS) -> AdaptiveStudyConfig:
        return AdaptiveStudyConfig(
            dataset=dataset,
            steps_list=(20, 4) if dataset is Data.EIGHT_GAUSSIANS else (5,),
            num_train=500,
            num_validation=100,
            num_test=100,
            hidden=16,
            depth=1,
            num_basis=3,
            updates=10,
            max_updates=20,
            batch_size=64,
            validation_strata=2,
            strata=4,
            target_se=0.0,
            max_passes=2,
            step_passes=1,
            seed=seed,
            check_convergence=False,
        )

    @staticmethod
    def digits(seed: int) -> AdaptiveStudyConfig:
        return AdaptiveStudyConfig(
            dataset=Data.DIGITS,
            log_snr_start=13.3,
            log_snr_end=-5.0,
            steps_list=(100,),
            latent_dim=8,
            updates=1000,
            max_updates=8000,
            batch_size=64,
            hidden=32,
            lr=2e-3,
            validation_strata=4,
            strata=8,
            target_se=0.05,
            max_passes=8,
            seed=seed,
        )


# --- the arms ----------------------------------------------------------------------------------


@dataclass
class Built:
    model: ContinuousDiffusion
    guide: object
    loss: torch.nn.Module
    parameters: list[torch.nn.Parameter]
    interior: list[torch.nn.Parameter]
    """the parameters trained on the estimator's variance (clipped apart from the rest)"""


def _denoiser(cfg: AdaptiveStudyConfig, event_shape: tuple[int, ...], latent_dim: int = 0):
    if cfg.dataset is Data.DIGITS:
        c, h, w = event_shape
        return UNetDenoiser(
            channels=c,
            image_size=(h, w),
            base=cfg.hidden,
            fourier_exponents=(3, 4, 5),
            latent_dim=latent_dim,
        )
    return MLPDenoiser(event_shape[0], hidden=cfg.hidden, depth=cfg.depth, latent_dim=latent_dim)


def build_arm(arm: Arm, cfg: AdaptiveStudyConfig, event_shape: tuple[int, ...], likelihood):
    """The model, its guide, its training loss and every parameter the loss trains."""
    ends = {"log_snr_start": cfg.log_snr_start, "log_snr_end": cfg.log_snr_end}
    common = {"likelihood": likelihood, "event_shape": event_shape}
    sampler = LowDiscrepancyTimesteps()
    guide = ContinuousForwardGuide()
    objective = ScheduleObjective.BOUND
    if arm is Arm.FIXED:
        model = ContinuousDiffusion(_denoiser(cfg, event_shape), LinearLogSNR(**ends), **common)
    elif arm is Arm.SCALAR:
        schedule = LearnedLogSNR(**ends, endpoints=Endpoints.LEARNED)
        model = ContinuousDiffusion(_denoiser(cfg, event_shape), schedule, **common)
        # at T = ∞ the interior does not move the bound, so it minimises the estimator's
        # variance (as the CLI's continuous model); at finite T it is part of the bound
        if cfg.train_steps is None:
            objective = ScheduleObjective.VARIANCE
    elif arm is Arm.PER_DIMENSION:
        schedule = MultivariateLogSNR(event_shape, num_basis=cfg.num_basis, **ends)
        model = ContinuousDiffusion(
            _denoiser(cfg, event_shape), schedule, conditioning=Conditioning.TIME, **common
        )
    else:
        K = cfg.latent_dim
        schedule = MultivariateLogSNR(event_shape, K, num_basis=cfg.num_basis, **ends)
        model = AdaptiveDiffusion(_denoiser(cfg, event_shape, K), schedule, K, **common)
        guide = AdaptiveNoiseGuide.for_model(model)
    loss = ContinuousELBO(
        timesteps=sampler, schedule_objective=objective, num_steps=cfg.train_steps
    )(model, guide)
    params = {id(p): p for m in (model, guide) for p in m.parameters()}
    interior = []
    if objective is ScheduleObjective.VARIANCE:
        interior = list(model.schedule.parameters_of_shape())
    return Built(model, guide, loss, list(params.values()), interior)


def train(built: Built, data: Tensor, cfg: AdaptiveStudyConfig, updates: int) -> None:
    """Adam on the arm's loss (the bound at ``cfg.train_steps``), linear warm-up then cosine decay, gradients
    clipped at 1 (the recipe of study (f)), the interior of a schedule trained on the
    estimator's variance in its own norm."""
    opt = torch.optim.Adam(built.parameters, lr=cfg.lr)
    warm = max(1, updates // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda n: (
            (n + 1) / warm
            if n < warm
            else 0.5 * (1 + math.cos(math.pi * (n - warm) / max(1, updates - warm)))
        ),
    )
    apart = {id(p) for p in built.interior}
    rest = [p for p in built.parameters if id(p) not in apart]
    for _ in range(updates):
        idx = torch.randint(0, data.shape[0], (cfg.batch_size,))
        opt.zero_grad(set_to_none=True)
        built.loss(data[idx]).backward()
        # the interior's gradient is that of Σ_n L̂_n², far larger than the bound's: clipped
        # in one norm with the network's, it would shrink the network's steps to nothing
        torch.nn.utils.clip_grad_norm_(rest, 1.0)
        if built.interior:
            torch.nn.utils.clip_grad_norm_(built.interior, 1.0)
        opt.step()
        sched.step()


# --- the bound, read precisely -----------------------------------------------------------------


@dataclass(frozen=True)
class Terms:
    """Per-datum terms of the bound (nats), each averaged over the passes that produced it."""

    ends: Tensor
    """reconstruction − prior KL, in closed form given the ends (at a draw of z for MuLAN)"""
    diffusion: Tensor
    latent_kl: Tensor
    passes: int

    @property
    def elbo(self) -> Tensor:
        return self.ends - self.diffusion - self.latent_kl


def _lead(lam: Tensor, x: Tensor) -> Tensor:
    """λ with a leading data dimension, shaped to broadcast over ``x``."""
    return lam.reshape(lam.shape + (1,) * (x.dim() - lam.dim()))


def closed_form_ends(model, x: Tensor, latent: Tensor | None) -> Tensor:
    """E_q[log p(x | z_0)] − KL(q(z_1 | x) ‖ p(z_1)) per datum, in closed form for the Gaussian
    decoder: log N(x; x + s ε, s²) with s = e^{−λ(0)/2} has mean −½ log 2π + λ(0)/2 − ½ per
    dimension. (For another decoder the reconstruction is one draw, as the bound's own.)"""
    l0, l1 = model.schedule_endpoints(latent=latent)
    l0, l1 = (lam.to(x.dtype) for lam in (l0, l1))
    if latent is not None:
        l0, l1 = _lead(l0, x), _lead(l1, x)
    event_dim = x.dim() - 1
    if isinstance(model.likelihood, GaussianLikelihood):
        per_dim = -0.5 * math.log(2 * math.pi) + 0.5 * l0 - 0.5
        rec = sum_event(per_dim.expand_as(x), event_dim)
    else:
        loc, scale = log_snr_marginal_moments(l0, x)
        z_0 = loc + scale * torch.randn_like(x)
        rec = model.likelihood.reconstruction(x, *model.decoder_moments(z_0, l0))
    loc, scale = log_snr_marginal_moments(l1, x)
    p_loc = torch.tensor(model.prior_loc, dtype=x.dtype)
    p_scale = torch.tensor(model.prior_scale, dtype=x.dtype)
    return rec - prior_kl(loc, scale, p_loc, p_scale)


def _draw_latent(model, guide, x: Tensor, gen: torch.Generator):
    if not getattr(model, "latent_dim", 0):
        return None, torch.zeros(x.shape[0], dtype=torch.float64)
    loc, scale = guide.latent_moments(x)
    z = loc + scale * torch.randn(loc.shape, generator=gen, dtype=loc.dtype)
    kl = gaussian_kl(loc, scale**2, torch.zeros_like(loc), torch.ones_like(loc)).sum(-1)
    return z, kl.double()


def _strata(num_steps: int | None, strata: int) -> list[tuple[int, int]]:
    """Strata as [lo, hi): of M equal parts of [0, 1) at T = ∞ (returned as (m, M)), or of the
    steps 2 … T, indexed 0 … T − 2 (every step its own stratum when T − 1 <= M)."""
    if num_steps is None:
        return [(m, strata) for m in range(strata)]
    S = num_steps - 1
    M = min(strata, S)
    bounds = [(m * S) // M for m in range(M + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def stratified_draws(
    model, guide, x: Tensor, num_steps: int | None, strata: int, gen: torch.Generator
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One pass: (f, g, ends, latent KL) with f, g of shape (M, N). f[m] is the stratum's
    weighted draw of the diffusion term (Σ_m f[m] is unbiased for it per datum), g[m] the control
    variate ½ Σ_j w_j (ε_j² − 1) at the same draw with the same weight (mean exactly 0); z is
    drawn afresh in every stratum (ends and latent KL are averaged over those draws)."""
    N = x.shape[0]
    fs, gs, ends, kls = [], [], [], []
    event_dim = x.dim() - 1
    for lo, hi in _strata(num_steps, strata):
        z, kl = _draw_latent(model, guide, x, gen)
        u = torch.rand(N, generator=gen, dtype=torch.float64)
        noise = torch.randn(x.shape, generator=gen, dtype=x.dtype)
        if num_steps is None:
            t = ((lo + u) / hi).to(x.dtype)
            f = diffusion_integrand(model, x, t, noise, latent=z).double() / hi
            _, slope = model.log_snr_and_slope(t, latent=z)
            rate, weight = -slope, 1.0 / hi
        else:
            step = lo + torch.floor(u * (hi - lo)).long().clamp(max=hi - lo - 1) + 2
            f = step_integrand(model, x, step, num_steps, noise, latent=z).double() * (hi - lo)
            times = discrete_times(num_steps).to(x.dtype)
            s_now, s_prev = times[step], times[step - 1]
            lam, _ = model.log_snr_and_slope(s_now, latent=z)
            lam_prev, _ = model.log_snr_and_slope(s_prev, latent=z)
            rate, weight = torch.expm1(lam_prev - lam), float(hi - lo)
        rate = _lead(rate.to(x.dtype), x) if rate.dim() and rate.shape[0] == N else rate
        g = 0.5 * sum_event((rate * (noise**2 - 1.0)).expand_as(x), event_dim).double()
        fs.append(f)
        gs.append(g * weight)
        ends.append(closed_form_ends(model, x, z).double())
        kls.append(kl)
    return (
        torch.stack(fs),
        torch.stack(gs),
        torch.stack(ends).mean(0),
        torch.stack(kls).mean(0),
    )


def control_coefficients(f: Tensor, g: Tensor) -> Tensor:
    """Per stratum, c_m = Cov(f_m, g_m) / Var(g_m) over the data: the coefficient that
    minimises the variance of f_m − c_m g_m. Estimated on other draws than those it is applied
    to, so the estimate stays unbiased."""
    fc, gc = f - f.mean(1, keepdim=True), g - g.mean(1, keepdim=True)
    var = gc.pow(2).mean(1)
    return torch.where(var > 0, (fc * gc).mean(1) / var.clamp(min=1e-300), torch.zeros_like(var))


@torch.no_grad()
def bound_terms(
    model,
    guide,
    x: Tensor,
    *,
    num_steps: int | None,
    strata: int,
    seed: int,
    coefficients: Tensor | None = None,
    passes: int = 1,
    log_p: Tensor | None = None,
    target_se: float = 0.0,
) -> Terms:
    """The bound per datum (:class:`Terms`) from ``passes`` stratified passes (more, up to
    ``passes``, only while the SE of the gap log_p − bound is above ``target_se``), the
    diffusion term corrected by the control variate with ``coefficients`` (None: no control
    variate). The noise comes from a generator seeded with ``seed``: the same seed, data and
    settings give the same draws (common random numbers)."""
    gen = torch.Generator().manual_seed(seed)
    sums = None
    done = 0
    for _ in range(passes):
        f, g, ends, kl = stratified_draws(model, guide, x, num_steps, strata, gen)
        c = torch.zeros(f.shape[0], 1, dtype=f.dtype) if coefficients is None else coefficients
        diff = (f - c.reshape(-1, 1) * g).sum(0)
        part = torch.stack([ends, diff, kl])
        sums = part if sums is None else sums + part
        done += 1
        if log_p is not None and target_se > 0:
            ends_, diff_, kl_ = sums / done
            if mean_se(log_p.double() - (ends_ - diff_ - kl_))[1] <= target_se:
                break
    ends, diff, kl = sums / done
    return Terms(ends, diff, kl, done)


def pilot_coefficients(model, guide, x: Tensor, num_steps: int | None, cfg) -> Tensor:
    """The control variate's coefficients per stratum from one pass on ``x`` (validation)."""
    with torch.no_grad():
        f, g, _, _ = stratified_draws(
            model, guide, x, num_steps, cfg.strata, torch.Generator().manual_seed(cfg.seed + 11)
        )
    return control_coefficients(f, g)


# --- training to convergence by the paired rule, with a cache of trained models ----------------


@dataclass
class Trained:
    built: Built
    updates: int
    cpu_minutes: float
    validation: Tensor
    """the bound per validation datum at the T trained at, common random numbers across
    budgets"""


def _cache_key(arm: Arm, cfg: AdaptiveStudyConfig, updates: int) -> str:
    relevant = {
        k: v
        for k, v in asdict(cfg).items()
        if k
        not in (
            "steps_list",
            "updates",
            "max_updates",
            "check_convergence",
            "strata",
            "target_se",
            "max_passes",
            "step_passes",
            "num_test",
        )
    }
    if cfg.train_steps is None:  # the key of a model trained at T = ∞ stays what it was
        del relevant["train_steps"]
    if arm is Arm.SCALAR and cfg.train_steps is None:
        relevant["interior_clipped_apart"] = True  # the recipe that changed: retrain
    text = json.dumps({"arm": arm.value, "updates": updates, **relevant}, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def train_arm(arm: Arm, cfg: AdaptiveStudyConfig, data, runs: Path, say=print):
    """The arm trained at doubling budgets until the paired rule holds (or the cap)."""

    def train_budget(updates: int) -> Trained:
        torch.manual_seed(cfg.seed)  # the same initial network and batches for every budget
        built = build_arm(arm, cfg, data.event_shape, data.likelihood())
        path = runs / f"{arm.name.lower()}-u{updates}-{_cache_key(arm, cfg, updates)}.pt"
        if path.is_file():
            saved = torch.load(path, map_location="cpu", weights_only=True)
            built.model.load_state_dict(saved["model"])
            built.guide.load_state_dict(saved["guide"])
            minutes = float(saved["cpu_minutes"])
        else:
            start = time.process_time()
            train(built, data.train, cfg, updates)
            minutes = (time.process_time() - start) / 60
            runs.mkdir(parents=True, exist_ok=True)
            state = {
                "model": built.model.state_dict(),
                "guide": built.guide.state_dict(),
                "cpu_minutes": minutes,
            }
            torch.save(state, path)
        val = bound_terms(
            built.model,
            built.guide,
            data.validation,
            num_steps=cfg.train_steps,
            strata=cfg.validation_strata,
            seed=cfg.seed + 7,
        ).elbo
        say(
            f"  {arm.value}, {updates} updates ({minutes:.2f} CPU-minutes): validation "
            f"T = {_label(cfg.train_steps)} bound {pm(*mean_se(val))}"
        )
        return Trained(built, updates, minutes, val)

    return paired_doubling(
        train_budget,
        lambda r: r.validation,
        first_updates=cfg.updates,
        max_updates=cfg.max_updates,
        check=cfg.check_convergence,
    )


# --- the study ---------------------------------------------------------------------------------


def _load(cfg: AdaptiveStudyConfig):
    if cfg.dataset is Data.DIGITS:
        return get_dataset("digits")
    return get_dataset(
        "eight_gaussians",
        num_train=cfg.num_train,
        num_validation=cfg.num_validation,
        num_test=cfg.num_test,
        seed=cfg.seed,
    )


def _pair(a: Tensor, b: Tensor | None = None) -> tuple[float, float]:
    return mean_se(a if b is None else a - b)


def run(cfg: AdaptiveStudyConfig, runs: Path, say=print, partial=None) -> dict:
    """Train and read every arm; ``partial(results)`` is called after each arm with the
    results so far (a long run leaves its finished arms behind if it is stopped)."""
    data = _load(cfg)
    x = data.test
    exact = getattr(data, "density", None)
    log_p = exact.log_prob(x).double() if exact is not None else None
    T_all: list[int | None] = [None, *cfg.steps_list]
    per_arm: dict[Arm, dict] = {}
    for arm in Arm:
        say(f"{arm.value}:")
        budgets, kept, converged, gains = train_arm(arm, cfg, data, runs, say)
        model, guide = kept.built.model, kept.built.guide
        read: dict[int | None, Terms] = {}
        for T in T_all:
            start = time.process_time()
            coeffs = pilot_coefficients(model, guide, data.validation, T, cfg)
            terms = bound_terms(
                model,
                guide,
                x,
                num_steps=T,
                strata=cfg.strata,
                seed=cfg.seed + 1 + (0 if T is None else T),
                coefficients=coeffs,
                passes=cfg.max_passes if T is None else cfg.step_passes,
                log_p=log_p if T is None else None,
                target_se=cfg.target_se if T is None else 0.0,
            )
            read[T] = terms
            shown = _pair(log_p, terms.elbo) if log_p is not None else _pair(terms.elbo)
            say(
                f"  T = {'∞' if T is None else T}: "
                f"{'gap to log p_data' if log_p is not None else 'bound'} {pm(*shown, digits=4)} "
                f"({terms.passes} passes of {cfg.strata} strata, "
                f"{(time.process_time() - start) / 60:.2f} CPU-minutes)"
            )
        per_arm[arm] = {
            "budgets": budgets,
            "kept": kept,
            "converged": converged,
            "gains": gains,
            "read": read,
        }
        if partial is not None:
            partial(_results(cfg, data, log_p, T_all, per_arm))
    return _results(cfg, data, log_p, T_all, per_arm)


def _both(a: bool | None, b: bool | None) -> bool | None:
    """A difference of two runs is converged when both are (None: not checked)."""
    return None if a is None or b is None else a and b


def _label(T: int | None) -> str:
    return "∞" if T is None else str(T)


def _results(cfg, data, log_p, T_all, per_arm) -> dict:
    neg_h = None
    if log_p is not None:
        neg_h = (-data.density.entropy, data.density.entropy_se)
    rows, share_rows, conv_rows, shares = [], [], [], []
    fixed = per_arm[Arm.FIXED]["read"]
    for arm, got in per_arm.items():
        kept: Trained = got["kept"]
        for T in T_all:
            terms: Terms = got["read"][T]
            extra = {
                "ends (closed form)": _pair(terms.ends),
                "diffusion": _pair(terms.diffusion),
                "latent KL": _pair(terms.latent_kl),
            }
            if log_p is not None:
                extra = {"gap to log p_data": _pair(log_p, terms.elbo), **extra}
            rows.append(
                table_row(
                    label=arm.value,
                    configuration={
                        "arm": arm.name.lower(),
                        "trained_at": f"T = {_label(cfg.train_steps)}",
                    },
                    T=T,
                    elbo=_pair(terms.elbo),
                    iwae=None,
                    iwae_k=None,
                    reference=neg_h,
                    reference_name="−H" if neg_h is not None else None,
                    updates=kept.updates,
                    cpu_minutes=kept.cpu_minutes,
                    converged=got["converged"],
                    extra=extra,
                )
            )
            if arm is Arm.FIXED:
                continue
            base = fixed[T]
            gain = _pair(terms.elbo, base.elbo)
            ends = _pair(terms.ends, base.ends)
            disc = (
                (0.0, 0.0)
                if T is None
                else _pair((terms.elbo - got["read"][None].elbo) - (base.elbo - fixed[None].elbo))
            )
            network = (gain[0] - ends[0] - disc[0], None)
            net_alone = _pair(
                -(got["read"][None].diffusion + got["read"][None].latent_kl) + fixed[None].diffusion
            )
            shares.append(
                {
                    "arm": arm.name.lower(),
                    "T": T,
                    "gain": list(gain),
                    "ends": list(ends),
                    "discretisation": list(disc),
                    "network": [network[0], net_alone[1]],
                    "converged": _both(got["converged"], per_arm[Arm.FIXED]["converged"]),
                }
            )
            share_rows.append(
                [
                    arm.value,
                    _label(T),
                    pm(*gain, digits=4),
                    pm(*ends, digits=4),
                    "0" if T is None else pm(*disc, digits=4),
                    pm(network[0], net_alone[1], digits=4),
                ]
            )
        conv_rows.append(
            [
                arm.value,
                "; ".join(
                    f"{r.updates}: {pm(*mean_se(r.validation))} ({r.cpu_minutes:.1f})"
                    for r in got["budgets"]
                ),
                "; ".join(
                    f"{g.shorter_updates}→{g.longer_updates}: {pm(g.gain, g.se, digits=4)}"
                    for g in got["gains"]
                )
                or "—",
                str(kept.updates),
                {None: "not checked", True: "yes", False: "no"}[got["converged"]],
            ]
        )
    return {
        "config": {**asdict(cfg), "dataset": cfg.dataset.value},
        "table": rows,
        "shares": shares,
        "convergence": [
            {
                "arm": arm.name.lower(),
                "budgets": [
                    {
                        "updates": r.updates,
                        "cpu_minutes": r.cpu_minutes,
                        "validation_elbo": mean_se(r.validation)[0],
                        "validation_elbo_se": mean_se(r.validation)[1],
                    }
                    for r in got["budgets"]
                ],
                "paired_gains": [asdict(g) for g in got["gains"]],
                "updates": got["kept"].updates,
                "converged": got["converged"],
            }
            for arm, got in per_arm.items()
        ],
        "passes": {
            f"{arm.name.lower()}@{_label(T)}": got["read"][T].passes
            for arm, got in per_arm.items()
            for T in T_all
        },
        "cpu_minutes_total": sum(r.cpu_minutes for got in per_arm.values() for r in got["budgets"]),
        "tables": {
            "shares": named_table(
                ["arm", "T", "gain over fixed q", "ends", "discretisation", "network (the rest)"],
                share_rows,
            ),
            "convergence": named_table(
                [
                    "arm",
                    f"updates: validation T = {_label(cfg.train_steps)} bound (CPU-minutes)",
                    "paired gain of each doubling",
                    "kept",
                    "converged",
                ],
                conv_rows,
            ),
        },
    }


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings (seconds)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--dataset",
        type=enum_argument(Data),
        default=Data.EIGHT_GAUSSIANS,
        metavar=enum_metavar(Data),
        help="eight_gaussians (T = ∞, 1000, 8, 4) or digits (T = ∞ and 100)",
    )
    parser.add_argument(
        "--train-at",
        type=int,
        default=None,
        metavar="T",
        help="train every arm on its T-step bound and read it at T and at T = ∞ "
        "(default: trained on the T = ∞ bound and read at every T)",
    )
    parser.add_argument(
        "--max-updates",
        type=int,
        default=None,
        metavar="N",
        help="the largest budget of the doubling (default: the configuration's)",
    )
    add_output_arguments(parser, NAME)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.quick:
        cfg = AdaptiveStudyConfig.quick(args.seed, args.dataset)
    elif args.dataset is Data.DIGITS:
        cfg = AdaptiveStudyConfig.digits(args.seed)
    else:
        cfg = AdaptiveStudyConfig(seed=args.seed)
    if args.train_at is not None:
        if args.train_at < 2:
            parser.error(f"--train-at takes a number of steps T >= 2, got {args.train_at}")
        cfg = replace(cfg, train_steps=args.train_at, steps_list=(args.train_at,))
    if args.max_updates is not None:
        if args.max_updates < cfg.updates:
            parser.error(
                f"--max-updates must be at least the first budget, {cfg.updates}; "
                f"got {args.max_updates}"
            )
        cfg = replace(cfg, max_updates=args.max_updates)
    where = outputs(args, NAME)
    stem = NAME + ("_digits" if args.dataset is Data.DIGITS else "")
    stem += "" if args.train_at is None else f"_T{args.train_at}"
    where = replace(where, results=where.results.with_name(f"{stem}.json"))
    runs = (OUTPUTS / NAME if args.write_docs else where.results.parent) / "runs"
    results = run(cfg, runs, partial=where.write_results)
    print(render(results["table"]))
    print()
    print(markdown(results["tables"]["shares"]))
    print()
    print(markdown(results["tables"]["convergence"]))
    path = where.write_results(results)
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
