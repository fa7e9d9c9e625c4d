"""Train a diffusion model on the 8×8 digits with one objective and report test bits/dim.

Every run trains the same U-Net for the same number of steps on the same batches and
reports the true bound on the test split (``elbo_terms`` + ``bits_per_dim``, discretised
Gaussian decoder on the 17 grey levels), whatever the objective it trained on. During
training it also evaluates the per-step terms on a fixed slice of the test set and sums
them in log-spaced bins of t, to show which t dominate the bound and how each objective
moves them.

    python examples/objectives_digits.py --objective simple
    python examples/objectives_digits.py --objective elbo-importance --parameterization x0
    python examples/objectives_digits.py --quick          # seconds; what the tests run
"""

from __future__ import annotations

import argparse
import enum
import math
import time
from dataclasses import asdict, dataclass

import torch
from _outputs import add_output_arguments, outputs

from pyrodiff import (
    Diffusion,
    ForwardGuide,
    Parameterization,
    ReverseVariance,
    gaussian_oracle,
    linear_schedule,
)
from pyrodiff.data import load_digits
from pyrodiff.infer import (
    DiffusionELBO,
    bits_per_dim,
    elbo_terms,
    estimator_spread,
    exact_elbo_terms,
)
from pyrodiff.infer.objectives import HybridLoss, SimpleLoss
from pyrodiff.infer.timesteps import (
    AntitheticTimesteps,
    ImportanceTimesteps,
    LowDiscrepancyTimesteps,
    StratifiedTimesteps,
    UniformTimesteps,
    bin_steps,
)
from pyrodiff.networks import UNetDenoiser


class Objective(enum.Enum):
    SIMPLE = "simple"
    """DDPM's L_simple, uniform t."""
    ELBO = "elbo"
    """the full bound, uniform t."""
    ELBO_IMPORTANCE = "elbo-importance"
    """the full bound, t importance-sampled by the terms' running second moment."""
    HYBRID = "hybrid"
    """improved DDPM's L_simple + 0.001 L_vlb, uniform t; learned variance."""


@dataclass(frozen=True)
class RunConfig:
    objective: Objective
    parameterization: Parameterization
    variance: ReverseVariance
    num_steps: int = 100
    train_steps: int = 600
    batch: int = 64
    base: int = 16
    lr: float = 2e-3
    seed: int = 0
    trace_every: int = 200
    trace_size: int = 16
    test_size: int | None = None


def make_loss(cfg: RunConfig):
    if cfg.objective is Objective.SIMPLE:
        return SimpleLoss(timesteps=UniformTimesteps())
    if cfg.objective is Objective.ELBO:
        return DiffusionELBO(timesteps=UniformTimesteps())
    if cfg.objective is Objective.ELBO_IMPORTANCE:
        return DiffusionELBO(timesteps=ImportanceTimesteps())
    return HybridLoss(lam=1e-3, timesteps=UniformTimesteps())


def run(cfg: RunConfig) -> dict:
    torch.manual_seed(cfg.seed)
    data = load_digits()
    test = data.test if cfg.test_size is None else data.test[: cfg.test_size]
    schedule = linear_schedule(cfg.num_steps)
    learned = cfg.variance is ReverseVariance.LEARNED_RANGE
    denoiser = UNetDenoiser(
        channels=1, image_size=8, base=cfg.base, out_channels=2 if learned else 1
    )
    model = Diffusion(
        denoiser,
        schedule,
        likelihood=data.likelihood(),
        parameterization=cfg.parameterization,
        variance=cfg.variance,
    )
    guide = ForwardGuide(schedule)
    loss_fn = make_loss(cfg)(model, guide)
    opt = torch.optim.Adam(loss_fn.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.train_steps)
    batches = torch.Generator().manual_seed(cfg.seed)
    trace_x = data.test[: cfg.trace_size]

    def trace_point(step: int) -> dict:
        model.eval()
        terms = elbo_terms(model, guide, trace_x)
        model.train()
        bins = bin_steps(terms.per_step_loss.mean(0), num_bins=8)
        return {
            "step": step,
            "bits_per_dim": terms.bits_per_dim().mean().item(),
            "bin_labels": bins.labels(),
            "bin_nats": bins.totals.tolist(),
            "prior_nats": terms.prior.mean().item(),
        }

    trace = []
    start = time.perf_counter()
    for step in range(1, cfg.train_steps + 1):
        idx = torch.randint(0, data.train.shape[0], (cfg.batch,), generator=batches)
        loss = loss_fn(data.train[idx])
        opt.zero_grad(set_to_none=True)
        (loss / cfg.batch).backward()
        torch.nn.utils.clip_grad_norm_(loss_fn.parameters(), 1.0)
        opt.step()
        sched.step()
        if cfg.trace_every and (step % cfg.trace_every == 0 or step == cfg.train_steps):
            trace.append(trace_point(step))
            print(
                f"step {step}: {trace[-1]['bits_per_dim']:.3f} bits/dim on the trace slice",
                flush=True,
            )
    train_seconds = time.perf_counter() - start
    model.eval()
    terms = elbo_terms(model, guide, test, generator=torch.Generator().manual_seed(1))
    bpd = terms.bits_per_dim()
    bins = bin_steps(terms.per_step_loss.mean(0), num_bins=8)
    return {
        "config": {k: (v.value if isinstance(v, enum.Enum) else v) for k, v in asdict(cfg).items()},
        "test_bits_per_dim": bpd.mean().item(),
        "test_bits_per_dim_se": (bpd.std() / math.sqrt(len(bpd))).item(),
        "test_bin_labels": bins.labels(),
        "test_bin_bits_per_dim": bits_per_dim(-bins.totals, data.num_dims).tolist(),
        "prior_bits_per_dim": bits_per_dim(-terms.prior.mean(), data.num_dims).item(),
        "train_seconds": train_seconds,
        "trace": trace,
    }


def sampler_variance(num_steps: int, repeats: int, batch: int) -> list[dict]:
    """Each timestep sampler's estimate of the bound on one batch of test digits: its mean, its
    standard error and the variance of one estimate, against the exact value.

    The model is the exact reverse process of N(m, s² I) fitted to the training digits (a
    linear-Gaussian model, Gaussian decoder), so the bound on the test digits is known in
    closed form and its per-step terms fall with t as a trained model's do.
    """
    data = load_digits(torch.float64)
    train = data.train.flatten(1)
    schedule = linear_schedule(num_steps)
    model = gaussian_oracle(schedule, train.mean(0), train.std().item())
    guide = ForwardGuide(schedule)
    x = data.test.flatten(1)[:batch].to(torch.get_default_dtype())
    truth = -exact_elbo_terms(model, guide, x).elbo.mean().item()
    rows = []
    for sampler in (
        UniformTimesteps(),
        StratifiedTimesteps(),
        LowDiscrepancyTimesteps(),
        AntitheticTimesteps(),
        ImportanceTimesteps(),
    ):
        objective = DiffusionELBO(timesteps=sampler)
        if isinstance(sampler, ImportanceTimesteps):
            with torch.no_grad():
                while not sampler.warm:
                    objective.loss(model, guide, x)
        # the negative loss per datum: the ELBO, in nats per datum
        (stats,) = estimator_spread(model, guide, x, [objective], num_repeats=repeats)
        mean, var = -stats.mean, stats.std**2
        se = math.sqrt(var / repeats)
        rows.append(
            {
                "sampler": type(sampler).__name__,
                "mean": mean,
                "se": se,
                "variance": var,
                "truth": truth,
                "z": (mean - truth) / se,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--objective", choices=[o.value for o in Objective], default="simple")
    p.add_argument(
        "--parameterization", choices=[x.value for x in Parameterization], default="epsilon"
    )
    p.add_argument(
        "--variance",
        choices=[v.value for v in ReverseVariance],
        default=None,
        help="default: learned_range for the hybrid, beta otherwise",
    )
    p.add_argument("--updates", "--steps", dest="updates", type=int, default=600)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--T", type=int, default=100)
    p.add_argument("--base", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    add_output_arguments(p, "objectives_digits")
    p.add_argument("--quick", action="store_true", help="tiny settings: runs in seconds")
    p.add_argument(
        "--sampler-variance",
        action="store_true",
        help="instead of training: each timestep sampler's mean and variance against the "
        "exact bound of a linear-Gaussian model of the digits",
    )
    p.add_argument("--repeats", type=int, default=200, help="estimates per sampler")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.sampler_variance:
        torch.set_default_dtype(torch.float64)
        T, repeats, batch = (20, 10, 16) if a.quick else (a.T, a.repeats, a.batch)
        rows = sampler_variance(T, repeats, batch)
        print(f"bound on {batch} test digits, T = {T}: -ELBO = {rows[0]['truth']:.3f} nats/datum")
        for r in rows:
            print(
                f"{r['sampler']:24s} mean {r['mean']:10.3f} ± {r['se']:.3f}  "
                f"(z = {r['z']:+.2f})  variance of one estimate {r['variance']:10.2f}"
            )
        outputs(a, "objectives_digits").write_results(rows, "sampler_variance.json")
        return {"sampler_variance": rows}
    objective = Objective(a.objective)
    variance = (
        ReverseVariance(a.variance)
        if a.variance is not None
        else ReverseVariance.LEARNED_RANGE
        if objective is Objective.HYBRID
        else ReverseVariance.BETA
    )
    cfg = RunConfig(
        objective=objective,
        parameterization=Parameterization(a.parameterization),
        variance=variance,
        num_steps=a.T,
        train_steps=a.updates,
        batch=a.batch,
        base=a.base,
        lr=a.lr,
        seed=a.seed,
    )
    if a.quick:
        cfg = RunConfig(
            objective=objective,
            parameterization=cfg.parameterization,
            variance=variance,
            num_steps=20,
            train_steps=4,
            batch=16,
            base=8,
            seed=a.seed,
            trace_every=2,
            trace_size=8,
            test_size=16,
        )
    result = run(cfg)
    print(
        f"{objective.value:16s} {cfg.parameterization.value:8s} {variance.value:14s} "
        f"test bits/dim {result['test_bits_per_dim']:.3f} ± {result['test_bits_per_dim_se']:.3f}"
        f"  ({cfg.train_steps} steps, batch {cfg.batch}, {result['train_seconds']:.0f} s)"
    )
    for label, value in zip(
        result["test_bin_labels"], result["test_bin_bits_per_dim"], strict=True
    ):
        print(f"  {label:>12s}  {value:7.3f} bits/dim")
    run_name = f"{objective.value}_{cfg.parameterization.value}_{variance.value}.json"
    outputs(a, "objectives_digits").write_results(result, run_name)
    return result


if __name__ == "__main__":
    main()
