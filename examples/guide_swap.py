"""One diffusion model, four guides: the fixed forward chain, a learned schedule, a learned q,
and a learned noise process per dimension conditioned on a latent z (adaptive, MuLAN).

The same model structure (same denoiser, schedule, likelihood and initial weights) is trained
jointly with each guide by Pyro's Trace_ELBO; only the ``guide`` argument changes. The ELBO
traces are drawn side by side and each trained pair is scored on held-out data by its ELBO and
its IWAE-K bound.

The adaptive arm changes the model with its guide, as MuLAN's q requires: the model draws the
same z from its prior p(z) and its denoiser (the same MLP, with z as an input) and reverse
kernels see it, over a schedule per dimension that starts at the linear schedule's ends. It is
trained and scored like the others, through its literal T-step chain.

    python examples/guide_swap.py --data moons            # 2-D continuous data
    python examples/guide_swap.py --data digits           # 8×8 digits, bits/dim (≈ 3-4 min)
    python examples/guide_swap.py --data linear           # linear-Gaussian gaps to log p(x_0)
    python examples/guide_swap.py --quick                 # a few seconds (used by the tests)
    python examples/guide_swap.py --schedule-objectives --T 50 --updates 1500 --hidden 64 --batch 256
"""

from __future__ import annotations

import argparse
import enum
import json
import math
import time
from pathlib import Path

import pyro
import torch
from _outputs import add_output_arguments, outputs
from pyro.infer import Trace_ELBO

from pyrodiff import (
    Diffusion,
    ForwardGuide,
    GaussianLikelihood,
    Parameterization,
    ReverseVariance,
    linear_schedule,
)
from pyrodiff.data import load_digits
from pyrodiff.guides import (
    AdaptiveNoiseGuide,
    Endpoints,
    GuideCovariance,
    GuideStructure,
    LearnedGuide,
    LearnedSchedule,
    LearnedScheduleGuide,
)
from pyrodiff.infer import (
    DiffusionELBO,
    ScheduleObjective,
    elbo_estimate,
    elbo_terms,
    estimator_spread,
    exact_elbo_terms,
    exact_log_evidence,
    iwae_bound,
)
from pyrodiff.models import AdaptiveDiffusion
from pyrodiff.networks import LinearDenoiser, MLPDenoiser
from pyrodiff.plots import plot_traces, save_figure
from pyrodiff.schedules import MultivariateLogSNR


class DataKind(enum.Enum):
    MOONS = "moons"
    DIGITS = "digits"
    LINEAR = "linear"


class GuideKind(enum.Enum):
    FORWARD = "forward chain (fixed q)"
    SCHEDULE = "learned schedule"
    LEARNED = "learned q (top-down)"
    ADAPTIVE = "adaptive noise per dimension (MuLAN)"


ADAPTIVE_LATENT_DIM = 4
"""z's size in the adaptive arm: a few numbers per datum."""


def make_guide(kind: GuideKind, model, hidden: int):
    if kind is GuideKind.FORWARD:
        return ForwardGuide(model.schedule)
    if kind is GuideKind.SCHEDULE:
        return LearnedScheduleGuide.for_model(model)
    if kind is GuideKind.ADAPTIVE:
        return AdaptiveNoiseGuide.for_model(model, hidden=hidden)
    return LearnedGuide(model, GuideStructure.TOP_DOWN, hidden=hidden)


def build_arm(kind: GuideKind, D: int, T: int, likelihood, hidden: int, seed: int):
    """(model, guide) of one arm: the shared model structure, or for the adaptive arm its
    z-conditioned counterpart (:func:`build_adaptive_model`)."""
    if kind is GuideKind.ADAPTIVE:
        model = build_adaptive_model(D, T, likelihood, hidden, seed)
    else:
        model = build_model(D, T, likelihood, hidden, seed)
    return model, make_guide(kind, model, hidden)


def load(kind: DataKind, quick: bool):
    """(train, test, likelihood, num_dims): digits flattened to 64-vectors on 17 levels."""
    if kind is DataKind.DIGITS:
        ds = load_digits(torch.get_default_dtype())
        train, test = ds.train.flatten(1), ds.test.flatten(1)
        if quick:
            train, test = train[:64], test[:32]
        return train, test, ds.likelihood(), ds.num_dims
    from sklearn.datasets import make_moons

    n = 128 if quick else 4000
    x, _ = make_moons(n + n // 4, noise=0.05, random_state=0)
    x = torch.as_tensor((x - x.mean(0)) / x.std(0), dtype=torch.get_default_dtype())
    return x[:n], x[n:], GaussianLikelihood(), 2


def build_model(D: int, T: int, likelihood, hidden: int, seed: int) -> Diffusion:
    torch.manual_seed(seed)  # the same initial weights whichever guide trains it
    return Diffusion(
        MLPDenoiser(D, hidden=hidden, depth=2, time_dim=32),
        linear_schedule(T),
        likelihood=likelihood,
        parameterization=Parameterization.EPSILON,
        variance=ReverseVariance.PER_STEP,
    )


def build_adaptive_model(D: int, T: int, likelihood, hidden: int, seed: int) -> AdaptiveDiffusion:
    """The adaptive arm's model: the same MLP with a latent input z, a log-SNR schedule per
    dimension conditioned on z from the linear schedule's λ_1 to λ_T, the same T."""
    torch.manual_seed(seed)
    ends = linear_schedule(T).log_snr
    return AdaptiveDiffusion(
        MLPDenoiser(D, hidden=hidden, depth=2, time_dim=32, latent_dim=ADAPTIVE_LATENT_DIM),
        MultivariateLogSNR(
            (D,),
            ADAPTIVE_LATENT_DIM,
            log_snr_start=ends[1].item(),
            log_snr_end=ends[T].item(),
        ),
        ADAPTIVE_LATENT_DIM,
        likelihood=likelihood,
        parameterization=Parameterization.EPSILON,
        event_shape=(D,),
        num_steps=T,
    )


def train_pair(model, guide, train, steps: int, batch: int, lr: float, seed: int) -> list[float]:
    """Joint SVI on (model, guide) with Trace_ELBO; returns the per-step ELBO per datum (nats)."""
    pyro.set_rng_seed(seed)
    loss_fn = Trace_ELBO()(model, guide)
    loss_fn(train[:batch])  # create any lazily built parameters before the optimiser
    opt = torch.optim.Adam(loss_fn.parameters(), lr=lr)
    trace = []
    with pyro.validation_enabled(False):
        for _ in range(steps):
            idx = torch.randint(0, train.shape[0], (batch,))
            opt.zero_grad()
            loss = loss_fn(train[idx]) / batch
            loss.backward()
            opt.step()
            trace.append(-loss.item())
    return trace


def run_swap(args) -> dict:
    kind = DataKind(args.data)
    train, test, lik, D = load(kind, args.quick)
    T = args.steps_T
    results, traces = {}, {}
    for gk in GuideKind:
        model, guide = build_arm(gk, D, T, lik, args.hidden, args.seed)
        t0 = time.time()
        trace = train_pair(model, guide, train, args.updates, args.batch, args.lr, args.seed)
        seconds = time.time() - t0
        with torch.no_grad():
            elbo = elbo_estimate(model, guide, test, args.eval_samples)
            iwae = iwae_bound(model, guide, test, args.iwae_k)
        results[gk.value] = {
            "train_seconds": round(seconds, 1),
            "test_elbo_nats": elbo.mean,
            "test_elbo_se": elbo.stderr,
            f"test_iwae{args.iwae_k}_nats": iwae.mean,
            f"test_iwae{args.iwae_k}_se": iwae.stderr,
            "test_elbo_bits_per_dim": elbo.bits_per_dim(D),
            f"test_iwae{args.iwae_k}_bits_per_dim": iwae.bits_per_dim(D),
        }
        traces[gk.value] = trace
    plot(traces, kind, D, outputs(args, "guide_swap").figure(f"guide_swap_{kind.value}.png"))
    return results


def plot(traces: dict[str, list[float]], kind: DataKind, D: int, path: Path) -> None:
    bits = kind is DataKind.DIGITS
    if bits:
        traces = {name: [-v / (D * math.log(2)) for v in tr] for name, tr in traces.items()}
    fig = plot_traces(
        traces,
        xlabel="SVI step (Trace_ELBO, one batch each)",
        ylabel="train −ELBO (bits/dim)" if bits else "train ELBO (nats per datum)",
        title=f"one model, four guides ({kind.value})",
        # the first steps start tens of bits/dim above where training ends
        log_y=bits,
    )
    save_figure(fig, path, dpi=120)


def run_linear(args) -> dict:
    """Done-criterion numbers: a fixed linear-Gaussian model, its exact log p(x_0), and the gap
    left by each guide after training the guide alone."""
    torch.set_default_dtype(torch.float64)
    T, D = 3, 2
    gen = torch.Generator().manual_seed(args.seed)
    den = LinearDenoiser(D, T)
    with torch.no_grad():
        den.weight.copy_(0.3 * torch.randn(den.weight.shape, generator=gen))
        den.bias.copy_(0.3 * torch.randn(den.bias.shape, generator=gen))
    model = Diffusion(
        den,
        linear_schedule(T, reference_steps=25 * T),
        parameterization=Parameterization.X0,
        variance=ReverseVariance.PER_STEP,
    )
    # the model is held fixed: only the guide's parameters are given to the optimiser
    x0 = 0.8 * torch.randn(32 if not args.quick else 8, D, generator=gen) + 0.3
    evidence = exact_log_evidence(model, x0)
    steps = 40 if args.quick else args.updates
    out = {"log_evidence": evidence.mean().item()}
    fixed = exact_elbo_terms(model, ForwardGuide(model.schedule), x0).elbo
    out["forward chain gap"] = (evidence - fixed).mean().item()
    sched_guide = LearnedScheduleGuide.for_model(model)
    _fit_guide(model, sched_guide, x0, steps, DiffusionELBO, lr=0.05)
    out["learned schedule gap"] = (
        (evidence - exact_elbo_terms(model, sched_guide, x0).elbo).mean().item()
    )
    for structure in GuideStructure:
        guide = LearnedGuide(model, structure, hidden=0, covariance=GuideCovariance.FULL)
        _fit_guide(model, guide, x0, steps, Trace_ELBO, lr=0.05)
        est = elbo_estimate(model, guide, x0, 4000 if not args.quick else 100)
        out[f"learned q ({structure.value}) gap"] = (evidence - est.values).mean().item()
        out[f"learned q ({structure.value}) gap mc_se"] = est.mc_stderr_of_mean
    return out


def run_schedule_objectives(args) -> dict:
    """VDM's shared learned schedule (interior only; ends fixed) trained on 2-D data with the
    DiffusionELBO, its interior on the bound and on the estimator's variance
    (ScheduleObjective.BOUND, VARIANCE); then the spread of the DiffusionELBO estimate (one
    batch of 256) and the full-decomposition ELBO, per datum, for each."""
    train, _, _, D = load(DataKind.MOONS, args.quick)
    T, out = args.steps_T, {}
    for objective in ScheduleObjective:
        torch.manual_seed(args.seed)
        pyro.set_rng_seed(args.seed)
        schedule = LearnedSchedule.from_schedule(linear_schedule(T), Endpoints.FIXED)
        model = Diffusion(
            MLPDenoiser(D, hidden=args.hidden, depth=2, time_dim=32),
            schedule,
            variance=ReverseVariance.PER_STEP,
        )
        guide = LearnedScheduleGuide(schedule)
        loss_fn = DiffusionELBO(schedule_objective=objective)(model, guide)
        loss_fn(train[: args.batch])
        opt = torch.optim.Adam(loss_fn.parameters(), lr=args.lr)
        for _ in range(args.updates):
            idx = torch.randint(0, train.shape[0], (args.batch,))
            opt.zero_grad()
            (loss_fn(train[idx]) / args.batch).backward()
            opt.step()
        with torch.no_grad():
            (row,) = estimator_spread(model, guide, train[:256], [DiffusionELBO()], num_repeats=100)
            full = elbo_terms(model, guide, train[:1000]).elbo
        out[objective.value] = {
            "estimate_std_nats": row.std,
            "estimate_std_se": row.std_stderr,
            "elbo_nats": full.mean().item(),
            "elbo_se": full.std().item() / math.sqrt(full.numel()),
        }
    return out


def _fit_guide(model, guide, x0, steps, loss_cls, lr, particles=16):
    xs = x0.repeat(particles, 1)
    loss_fn = loss_cls()(model, guide)
    loss_fn(xs)
    opt = torch.optim.Adam(guide.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    with pyro.validation_enabled(False):
        for _ in range(steps):
            opt.zero_grad()
            (loss_fn(xs) / xs.shape[0]).backward()
            opt.step()
            sched.step()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", choices=[k.value for k in DataKind], default="moons")
    p.add_argument("--quick", action="store_true", help="tiny settings: runs in seconds")
    p.add_argument(
        "--updates", "--steps", dest="updates", type=int, default=None, help="SVI updates per guide"
    )
    p.add_argument("--T", dest="steps_T", type=int, default=None, help="diffusion steps T")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--iwae-k", type=int, default=None)
    p.add_argument("--eval-samples", type=int, default=None, help="draws per datum for the ELBO")
    p.add_argument("--seed", type=int, default=0)
    add_output_arguments(p, "guide_swap")
    p.add_argument(
        "--schedule-objectives",
        action="store_true",
        help="a shared learned schedule (moons) with its interior trained on the bound and on "
        "the estimator's variance",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    digits = args.data == DataKind.DIGITS.value
    if args.updates is None:
        args.updates = 15 if args.quick else (1500 if digits else 2000)
    if args.steps_T is None:
        args.steps_T = 4 if args.quick else 8
    if args.iwae_k is None:
        args.iwae_k = 4 if args.quick else 64
    if args.eval_samples is None:
        args.eval_samples = 4 if args.quick else 16
    if args.quick:
        args.hidden, args.batch = 16, 32
    if args.schedule_objectives:
        result = run_schedule_objectives(args)
    elif args.data == DataKind.LINEAR.value:
        result = run_linear(args)
    else:
        result = run_swap(args)
    print(json.dumps(result, indent=2))
    outputs(args, "guide_swap").write_results(result)
    return result


if __name__ == "__main__":
    main()
