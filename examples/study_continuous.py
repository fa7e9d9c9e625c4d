"""Study: the T = ∞ bound of one continuous-time model against its discretisations.

Data: the eight-Gaussians ring (2-D, standardised), whose log density and entropy H are known,
so −H = E log p_data is the best expected log-likelihood any model can reach. One
:class:`~pyrodiff.ContinuousDiffusion` (MLP, ε-prediction, conditioned on γ, linear log-SNR
from −13.3 to 5, Gaussian decoder) is trained on the T = ∞ bound
(:class:`~pyrodiff.infer.ContinuousELBO`) until doubling its updates no longer raises the
validation bound by 2 SE (``_converge.doubling``; 6000, 12000, … updates, each a fresh run).
Then, on the test data:

1. the discrete bounds of the same trained model at T = 10, 100, 1000 (``model.discretize(T)``,
   every per-step term, :func:`~pyrodiff.infer.elbo_terms`) and the T = ∞ bound, each as a gap
   to the data's own log density, paired per datum: gap = E[log p_data(x) − bound(x)] ≥ 0;
2. the same network under three schedules with the same ends (linear, cosine, and a learned
   interior trained only to minimise the estimator's variance): the T = ∞ bound, and the
   standard deviation of its one-sample estimator.

    python examples/study_continuous.py                # a few minutes
    python examples/study_continuous.py --quick        # seconds; what the tests run
    python examples/study_continuous.py --write-docs   # docs/results/study_continuous.json

Writes ``outputs/study_continuous/study_continuous.json`` (``--out DIR`` elsewhere): the
configuration and, under ``"table"``, one row per bound as ``examples/_tables.py`` makes them
(T is null for the T = ∞ bound), which docs/study.md prints.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from _converge import budget_entry, doubling
from _outputs import add_output_arguments, outputs
from _study_common import mean_se, pm
from _tables import render, table_row

from pyrodiff import (
    ContinuousDiffusion,
    ContinuousForwardGuide,
    CosineLogSNR,
    ForwardGuide,
    LearnedLogSNR,
    LinearLogSNR,
)
from pyrodiff.data import get_dataset
from pyrodiff.infer import (
    ContinuousELBO,
    LowDiscrepancyTimesteps,
    ScheduleObjective,
    continuous_elbo_terms,
    elbo_terms,
)
from pyrodiff.networks import MLPDenoiser
from pyrodiff.schedules import Endpoints

NAME = "study_continuous"


@dataclass(frozen=True)
class ContinuousStudyConfig:
    gamma_min: float = -13.3
    """γ(0) = −λ(0): the results files record the ends as VDM's γ"""
    gamma_max: float = 5.0
    steps_list: tuple[int, ...] = (10, 100, 1000)
    num_train: int = 20_000
    num_test: int = 2000
    hidden: int = 128
    depth: int = 3
    updates: int = 6000
    """the first budget of the doubling (``_converge.doubling``)"""
    max_updates: int = 24_000
    batch_size: int = 512
    lr: float = 2e-3
    passes: int = 64
    """one-sample estimates of the T = ∞ bound averaged per test datum"""
    schedule_updates: int = 400
    seed: int = 0
    check_convergence: bool = True
    """False for --quick: its budgets are too small for the doubling rule to mean anything"""

    @staticmethod
    def quick(seed: int) -> ContinuousStudyConfig:
        return ContinuousStudyConfig(
            steps_list=(10, 20),
            num_train=1000,
            num_test=100,
            hidden=16,
            depth=1,
            updates=20,
            max_updates=40,
            batch_size=64,
            passes=4,
            schedule_updates=5,
            seed=seed,
            check_convergence=False,
        )


def _ends(cfg: ContinuousStudyConfig) -> dict[str, float]:
    """The schedule's ends as pyrodiff's log-SNR λ = −γ."""
    return {"log_snr_start": -cfg.gamma_min, "log_snr_end": -cfg.gamma_max}


def train(
    model: ContinuousDiffusion, data: torch.Tensor, cfg: ContinuousStudyConfig, updates: int
) -> None:
    """Adam on the T = ∞ bound, linear warm-up then cosine decay, gradients clipped at 1."""
    loss = ContinuousELBO(timesteps=LowDiscrepancyTimesteps())(model, ContinuousForwardGuide())
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    warm = max(1, updates // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda n: (
            (n + 1) / warm
            if n < warm
            else 0.5 * (1 + math.cos(math.pi * (n - warm) / max(1, updates - warm)))
        ),
    )
    for _ in range(updates):
        idx = torch.randint(0, data.shape[0], (cfg.batch_size,))
        opt.zero_grad(set_to_none=True)
        loss(data[idx]).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()


def continuous_bound(model, x: torch.Tensor, passes: int, seed: int) -> tuple[torch.Tensor, float]:
    """(the T = ∞ bound per datum averaged over ``passes`` one-sample estimates, the standard
    deviation of a single one-sample estimate of the total, pooled over data)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        rows = torch.stack(
            [continuous_elbo_terms(model, x, generator=gen).elbo for _ in range(passes)]
        )
    # the spread of one estimate about its datum's own mean: the estimator's noise, not the data's
    within = (rows - rows.mean(0)).pow(2).sum(0) / max(passes - 1, 1)
    return rows.mean(0), within.mean().sqrt().item()


def variance_schedule(model, train_x, cfg: ContinuousStudyConfig) -> LearnedLogSNR:
    """A learned interior at the model's ends, trained (network frozen) on the variance
    objective only."""
    sched = LearnedLogSNR(**_ends(cfg), hidden=32, endpoints=Endpoints.FIXED)
    probe = with_schedule(model, sched)
    loss = ContinuousELBO(schedule_objective=ScheduleObjective.VARIANCE)
    opt = torch.optim.Adam(sched.parameters_of_shape(), lr=1e-2)
    for p in model.denoiser.parameters():
        p.requires_grad_(False)
    for _ in range(cfg.schedule_updates):
        idx = torch.randint(0, train_x.shape[0], (cfg.batch_size,))
        opt.zero_grad(set_to_none=True)
        loss.differentiable_loss(probe, ContinuousForwardGuide(), train_x[idx]).backward()
        opt.step()
    for p in model.denoiser.parameters():
        p.requires_grad_(True)
    return sched


def with_schedule(model: ContinuousDiffusion, schedule) -> ContinuousDiffusion:
    """The same network under another schedule (the same ends, so the same γ-conditioning)."""
    return ContinuousDiffusion(model.denoiser, schedule, likelihood=model.likelihood)


@dataclass
class Trained:
    model: ContinuousDiffusion
    updates: int
    cpu_minutes: float
    validation: tuple[float, float]


def run(cfg: ContinuousStudyConfig) -> tuple[list[dict], dict]:
    data = get_dataset(
        "eight_gaussians", num_train=cfg.num_train, num_test=cfg.num_test, seed=cfg.seed
    )
    neg_h = -data.density.entropy

    def train_budget(updates: int) -> Trained:
        torch.manual_seed(cfg.seed)  # the same initial network and batches for every budget
        net = MLPDenoiser(2, hidden=cfg.hidden, depth=cfg.depth)
        model = ContinuousDiffusion(net, LinearLogSNR(**_ends(cfg)))
        start = time.process_time()
        train(model, data.train, cfg, updates)
        minutes = (time.process_time() - start) / 60
        bound, _ = continuous_bound(model, data.validation, cfg.passes, cfg.seed + 4)
        print(f"  {updates} updates: validation T = ∞ bound {pm(*mean_se(bound))}", flush=True)
        return Trained(model, updates, minutes, mean_se(bound))

    runs, kept, converged = doubling(
        train_budget,
        lambda r: r.validation,
        first_updates=cfg.updates,
        max_updates=cfg.max_updates,
        check=cfg.check_convergence,
    )
    model, cpu_minutes = kept.model, kept.cpu_minutes
    budgets = {
        "budgets": [budget_entry(r.updates, r.cpu_minutes, r.validation) for r in runs],
        "updates": kept.updates,
        "converged": converged,
    }
    x = data.test
    log_p = data.density.log_prob(x).double()
    rows: list[dict] = []
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    for T in cfg.steps_list:
        d = model.discretize(T)
        with torch.no_grad():
            elbo = elbo_terms(d, ForwardGuide(d.schedule), x, generator=gen).elbo.double()
        rows.append(_row("gap_vs_T", f"T = {T}", T, elbo, log_p, neg_h))
    bound, spread = continuous_bound(model, x, cfg.passes, cfg.seed + 2)
    rows.append(_row("gap_vs_T", "T = ∞", None, bound.double(), log_p, neg_h, spread))
    learned = variance_schedule(model, data.train, cfg)
    for name, sched in (
        ("linear", LinearLogSNR(**_ends(cfg))),
        ("cosine", CosineLogSNR(**_ends(cfg))),
        ("learned (variance objective)", learned),
    ):
        bound, spread = continuous_bound(with_schedule(model, sched), x, cfg.passes, cfg.seed + 3)
        rows.append(_row("schedule_interior", name, None, bound.double(), log_p, neg_h, spread))
    for r in rows:
        r["neg_entropy_se"] = data.density.entropy_se
        r["cpu_minutes"] = cpu_minutes
    return rows, budgets


def _row(table, label, T, bound, log_p, neg_h, spread=None) -> dict:
    b, b_se = mean_se(bound)
    g, g_se = mean_se(log_p - bound)
    return {
        "table": table,
        "label": label,
        "num_steps": T,
        "bound": b,
        "bound_se": b_se,
        "gap": g,
        "gap_se": g_se,
        "neg_entropy": neg_h,
        "estimator_std": spread,
    }


def _table_row(cfg: ContinuousStudyConfig, r: dict, budgets: dict) -> dict:
    """One row of the study's table: the bound, −H as the reference, and the gap to the data's
    log density paired per datum (not the difference of the two columns' SEs)."""
    return table_row(
        label=r["label"] if r["table"] == "gap_vs_T" else f"interior: {r['label']}",
        configuration={"part": r["table"], "batch_size": cfg.batch_size},
        T=r["num_steps"],
        elbo=(r["bound"], r["bound_se"]),
        iwae=None,
        iwae_k=None,
        reference=(r["neg_entropy"], r["neg_entropy_se"]),
        reference_name="−H",
        updates=budgets["updates"],
        cpu_minutes=r["cpu_minutes"],
        converged=budgets["converged"],
        extra={
            "gap to log p_data": (r["gap"], r["gap_se"]),
            "one-sample SD": r["estimator_std"],
        },
    )


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings (seconds)")
    parser.add_argument("--seed", type=int, default=0)
    add_output_arguments(parser, NAME)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cfg = ContinuousStudyConfig.quick(args.seed) if args.quick else ContinuousStudyConfig()
    rows, budgets = run(cfg)
    results = {
        "config": asdict(cfg),
        "convergence": budgets,
        "table": [_table_row(cfg, r, budgets) for r in rows],
    }
    print(render(results["table"]))
    path = outputs(args, NAME).write_results(results)
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
