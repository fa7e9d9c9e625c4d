"""Study (b): how the gap between the ELBO and the best possible log-likelihood falls as T grows.

Data: the eight-Gaussians ring (2-D, standardised), whose log density and entropy H are known
(:func:`pyrodiff.data.load_toy2d`), so −H = E log p_data is the best expected log-likelihood any
model can reach. For each T the same model — the configuration ``pyrodiff train --data
eight_gaussians --network mlp --width 256 --batch-size 512 --T T`` builds (an
:class:`~pyrodiff.networks.MLPDenoiser`, ε-prediction, improved DDPM's learned variance range,
importance-sampled timesteps, EMA) — is trained with the fixed guide until doubling its updates
no longer raises the validation ELBO by 2 paired SE: the two budgets' ELBOs per validation
datum, drawn with common random numbers, differ by less than twice the SE of their mean
difference (``_converge.py``, the paired rule). On the test split, read once
per T for the run kept, it reports the ELBO with every per-step term
(:func:`~pyrodiff.infer.elbo_terms`) and IWAE-K (:func:`~pyrodiff.infer.iwae_bound`), each as
a gap to the data's own log density, paired per datum:

    gap = E[log p_data(x) − bound(x)] = KL(p_data ‖ p_θ) + E[log p_θ(x) − bound(x)] ≥ 0.

The runs are run folders under ``outputs/study_gap_vs_T/runs/`` (read them with ``pyrodiff
evaluate`` or ``compare``); a rerun loads finished runs and resumes interrupted ones.

    python examples/study_gap_vs_T.py             # ≈ 75 CPU-minutes; --jobs 2 halves the wait
    python examples/study_gap_vs_T.py --quick     # seconds; what the tests run
    python examples/study_gap_vs_T.py --write-docs --kernel-only   # ≈ 6 CPU-minutes

``--kernel-only`` recomputes only the best-Gaussian-kernel columns (ELBO*, with
``kernel_samples`` draws per step) of an existing results file, and its tables and figure,
without training or evaluating a network: ELBO* depends on the data and the schedule alone.
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import json
import math
import multiprocessing
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from _converge import Converged, TrainedRun, train_to_convergence
from _outputs import OUTPUTS
from _study_common import mean_se, parse_args, pm
from _tables import converged_text, convergence_table, markdown, named_table, table_row
from matplotlib.figure import Figure

from pyrodiff.config import RunConfig, build
from pyrodiff.data import Toy2D, load_toy2d
from pyrodiff.infer import best_gaussian_kernel_bound, elbo_terms, log_weights
from pyrodiff.plots import save_figure


@dataclass(frozen=True)
class GapConfig:
    data: Toy2D = Toy2D.EIGHT_GAUSSIANS
    steps_list: tuple[int, ...] = (2, 5, 10, 50, 200, 1000)
    width: int = 256
    batch_size: int = 512
    first_updates: int = 5000
    max_updates: int = 20_000
    iwae_k: int = 64
    iwae_data: int = 500
    kernel_samples: int = 2**18
    """draws of x_t per step for ELBO*: its SE is 0.0012 nats at T = 10 and below elsewhere,
    so the three decimals the page quotes are significant"""
    seed: int = 0
    check_convergence: bool = True
    """False for --quick: its budgets are too small for the doubling rule to mean anything"""

    @staticmethod
    def quick(seed: int) -> GapConfig:
        return GapConfig(
            steps_list=(2, 10),
            width=32,
            batch_size=64,
            first_updates=20,
            max_updates=40,
            iwae_k=4,
            iwae_data=40,
            kernel_samples=64,
            seed=seed,
            check_convergence=False,
        )

    def run_config(self, T: int) -> RunConfig:
        return RunConfig(
            data=self.data.value,
            num_steps=T,
            network="mlp",
            width=self.width,
            batch_size=self.batch_size,
            seed=self.seed,
            device="cpu",
        )


def converge(cfg: GapConfig, T: int, root: Path) -> Converged:
    torch.set_num_threads(1)
    return train_to_convergence(
        cfg.run_config(T),
        root / f"T{T}",
        first_updates=cfg.first_updates,
        max_updates=cfg.max_updates,
        check=cfg.check_convergence,
        per_datum=lambda run: validation_bounds(cfg, run),
    )


def validation_bounds(cfg: GapConfig, run: TrainedRun) -> torch.Tensor:
    """The run's ELBO per validation datum, every term summed, drawn from one seed for every
    budget (common random numbers: the same x_t draws for both runs of a doubling)."""
    model, guide = run.loaded.chain()
    x = run.loaded.built.dataset.validation.to(next(model.parameters()).dtype)
    gen = torch.Generator().manual_seed(cfg.seed + 3)
    with torch.no_grad():
        return elbo_terms(model, guide, x, generator=gen).elbo.double()


T_GROUPS = ((1, 1), (2, 10), (11, 100), (101, 1000))
"""Ranges of t whose ELBO terms the table adds up: t = 1 is −log p(x_0 | x_1), t ≥ 2 the KL
terms L_{t−1}."""


def measure(cfg: GapConfig, result: Converged, data) -> dict:
    run = result.kept
    model, guide = run.loaded.chain()
    test = data.test.to(next(model.parameters()).dtype)
    log_pd = data.density.log_prob(data.test.double())
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    with torch.no_grad():
        terms = elbo_terms(model, guide, test, generator=gen)
        torch.manual_seed(cfg.seed + 2)
        sub = test[: cfg.iwae_data]
        # K draws of the literal chain per datum: their mean is an ELBO estimate with K times
        # less noise than one draw per step, and their log-mean-exp is IWAE-K
        lw = log_weights(model, guide, sub, cfg.iwae_k).double()
        elbo_k = lw.mean(0)
        iwae_k = torch.logsumexp(lw, 0) - math.log(cfg.iwae_k)
    elbo = terms.elbo.double()
    n = cfg.iwae_data
    per_step = terms.per_step_loss.double().mean(0)  # t = 1 … T, −log p(x_0|x_1) first
    gain = result.last_gain
    measured = {
        "T": per_step.numel(),
        "updates": run.updates,
        "converged": result.converged,
        "budgets": result.budget_table(),
        "paired_gains": result.gain_table(),
        "last_doubling_gain": gain,
        "cpu_minutes": run.cpu_minutes,
        "validation_elbo": run.validation,
        "elbo": mean_se(elbo),
        "iwae": mean_se(iwae_k),
        "gap_elbo": mean_se(log_pd - elbo),
        "elbo_k": mean_se(elbo_k),
        "gap_elbo_k": mean_se(log_pd[:n] - elbo_k),
        "gap_iwae": mean_se(log_pd[:n] - iwae_k),
        "iwae_minus_elbo": mean_se(iwae_k - elbo_k),
        "reconstruction": terms.reconstruction.double().mean().item(),
        "prior": terms.prior.double().mean().item(),
        "terms_by_t": _by_t(per_step),
        "per_step_loss": per_step.tolist(),
    }
    return {**measured, **kernel_limit(cfg, measured, model.schedule, data.density)}


def _by_t(steps: torch.Tensor) -> dict[str, float]:
    T = steps.numel()
    return {
        f"t = {a}…{b}" if a < b else f"t = {a}": steps[a - 1 : min(b, T)].sum().item()
        for a, b in T_GROUPS
        if a <= T
    }


def kernel_limit(cfg: GapConfig, row: dict, schedule, density) -> dict:
    """The best any Gaussian reverse kernel can do at this schedule (ELBO*,
    :func:`~pyrodiff.infer.best_gaussian_kernel_bound`, ``cfg.kernel_samples`` draws per step)
    and the row's gap split into the bound's share (−H − ELBO*) and the network's (ELBO* − ELBO).
    ``row`` holds the network's measured ``elbo`` and ``terms_by_t``."""
    best = best_gaussian_kernel_bound(
        density, schedule, cfg.kernel_samples, torch.Generator().manual_seed(cfg.seed)
    )
    best_groups = _by_t(best.per_step)
    elbo, elbo_se = row["elbo"]
    return {
        "best_kernel_elbo": (best.elbo, best.elbo_se),
        "best_kernel_gap": (
            -density.entropy - best.elbo,
            math.hypot(best.elbo_se, density.entropy_se),
        ),
        "best_kernel_terms_by_t": best_groups,
        "network_terms_by_t": {g: v - best_groups[g] for g, v in row["terms_by_t"].items()},
        "network_excess": (best.elbo - elbo, math.hypot(best.elbo_se, elbo_se)),
    }


def figure(cfg: GapConfig, rows: list[dict], entropy: float, entropy_se: float) -> Figure:
    fig = Figure(figsize=(18, 4.6), layout="constrained")
    curves, left, mid, right = fig.subplots(1, 4, width_ratios=[1.1, 1, 1, 1.1])
    colors = [mpl_color(i, len(rows)) for i in range(len(rows))]
    for r, c in zip(rows, colors, strict=True):
        for b in r["budgets"]:
            u = np.array([p["updates"] for p in b["curve"]])
            e = np.array([p["elbo"] for p in b["curve"]])
            kept = b["updates"] == r["updates"]
            curves.plot(
                u, e, "-" if kept else ":", color=c, label=f"T = {r['T']}" if kept else None
            )
    curves.axhline(-entropy, color="k", ls=":", lw=1)
    curves.set_xscale("log")
    curves.set_ylim(-entropy - 2.5, -entropy + 0.1)
    curves.set_xlabel("updates (log scale; dotted: the other budgets of the doubling)")
    curves.set_ylabel("validation ELBO (nats per datum)")
    curves.set_title("convergence: validation ELBO against updates")
    curves.legend(fontsize=7, ncol=2)
    curves.grid(alpha=0.3, which="both")
    Ts = np.array([r["T"] for r in rows])
    k = cfg.iwae_k
    for key, label, style in (("elbo", "ELBO", "o-"), ("iwae", f"IWAE-{k}", "s--")):
        m = np.array([r[key][0] for r in rows])
        s = np.array([r[key][1] for r in rows])
        left.errorbar(Ts, m, yerr=2 * s, fmt=style, capsize=3, label=f"test {label}")
    left.axhline(-entropy, color="k", ls=":", label=f"−H = {-entropy:.3f} (best possible)")
    left.set_xscale("log")
    left.set_xlabel("T (number of diffusion steps, log scale)")
    left.set_ylabel("nats per datum")
    left.set_title("test bound per datum (±2 SE)")
    left.legend(fontsize=8)
    left.grid(alpha=0.3, which="both")
    for key, label, style in (
        ("gap_elbo", "log p_data − ELBO (term by term)", "o-"),
        ("gap_elbo_k", f"log p_data − ELBO ({k} draws)", "d-"),
        ("gap_iwae", f"log p_data − IWAE-{k}", "s--"),
    ):
        m = np.array([r[key][0] for r in rows])
        s = np.array([r[key][1] for r in rows])
        mid.errorbar(Ts, np.maximum(m, 1e-3), yerr=2 * s, fmt=style, capsize=3, label=label)
    best = np.array([r["best_kernel_gap"][0] for r in rows])
    mid.plot(Ts, np.maximum(best, 1e-3), "k^:", label="−H − ELBO* (best Gaussian kernels)")
    mid.set_xscale("log")
    mid.set_yscale("log")
    mid.set_xlabel("T (log scale)")
    mid.set_ylabel("log p_data − bound (nats per datum, log scale)")
    mid.set_title("the gap falls as T grows (±2 SE, paired)")
    mid.legend(fontsize=8)
    mid.grid(alpha=0.3, which="both")
    for r, c in zip(rows, colors, strict=True):
        T = r["T"]
        kl = np.array(r["per_step_loss"][1:])  # L_{t−1} for t = 2 … T
        t = np.arange(2, T + 1) / T
        right.plot(
            t, np.maximum(kl * T, 1e-6), "o-" if T <= 10 else "-", ms=4, color=c, label=f"T = {T}"
        )
    right.set_yscale("log")
    right.set_xlabel("t / T")
    right.set_ylabel("T · L_{t−1} (nats per datum)")
    right.set_title("KL terms t ≥ 2; area = their sum")
    right.legend(fontsize=7, ncol=2)
    right.grid(alpha=0.3, which="both")
    fig.suptitle(
        f"{cfg.data.value}: MLP {cfg.width} wide, batches of {cfg.batch_size}, each T trained "
        f"to convergence on validation (H = {entropy:.3f} ± {entropy_se:.3f} nats)"
    )
    return fig


def _table_row(cfg: GapConfig, r: dict, H: float, H_se: float) -> dict:
    """The row as data; IWAE is on the first ``iwae_data`` test points (a subset)."""
    return table_row(
        label=f"fixed q, T = {r['T']}",
        configuration={
            "data": cfg.data.value,
            "network": "mlp",
            "width": cfg.width,
            "batch_size": cfg.batch_size,
            "iwae_data": cfg.iwae_data,
        },
        T=r["T"],
        elbo=r["elbo"],
        iwae=r["iwae"],
        iwae_k=cfg.iwae_k,
        reference=(-H, H_se),
        reference_name="−H",
        updates=r["updates"],
        cpu_minutes=r["cpu_minutes"],
        converged=r["converged"],
        extra={"gap to log p_data": r["gap_elbo"]},
    )


def _tables(cfg: GapConfig, rows: list[dict]) -> dict[str, dict]:
    """The gap split into the bound's and the network's shares, the network's share by ranges
    of t, and the budgets of the doubling: the study's further tables (``_tables.named_table``)."""
    k = cfg.iwae_k
    gap = named_table(
        [
            "T",
            "test ELBO",
            "log p_data − ELBO",
            f"log p_data − ELBO ({k} draws, first {cfg.iwae_data})",
            f"log p_data − IWAE-{k}",
            f"IWAE-{k} − ELBO",
            "−H − ELBO* (bound)",
            "ELBO* − ELBO (network)",
        ],
        [
            [
                r["T"],
                pm(*r["elbo"]),
                pm(*r["gap_elbo"]),
                pm(*r["gap_elbo_k"]),
                pm(*r["gap_iwae"]),
                pm(*r["iwae_minus_elbo"]),
                pm(*r["best_kernel_gap"]),
                pm(*r["network_excess"]),
            ]
            for r in rows
        ],
    )
    groups = list(rows[-1]["terms_by_t"])
    breakdown = named_table(
        ["T", *groups, "L_T (prior)"],
        [
            [r["T"]]
            + [
                f"{r['network_terms_by_t'][g]:+.3f}" if g in r["terms_by_t"] else "—"
                for g in groups
            ]
            + [f"{r['prior']:.1e}"]
            for r in rows
        ],
    )
    convergence = convergence_table("T", [r["T"] for r in rows], rows)
    return {"gap": gap, "breakdown": breakdown, "convergence": convergence}


def mpl_color(i: int, n: int):
    from matplotlib import colormaps

    return colormaps["viridis"](i / max(n - 1, 1))


def _train_all(cfg: GapConfig, root: Path, jobs: int) -> None:
    """Train (or resume) every T's doubling sequence, ``jobs`` processes at a time."""
    if jobs <= 1:
        for T in sorted(cfg.steps_list, reverse=True):
            converge(cfg, T, root)
        return
    context = multiprocessing.get_context("spawn")
    # the longest chains first, so the last job to start is a short one
    order = sorted(cfg.steps_list, reverse=True)
    with futures.ProcessPoolExecutor(jobs, mp_context=context) as pool:
        for job in [pool.submit(converge, cfg, T, root) for T in order]:
            job.result()


def main(argv: Sequence[str] | None = None) -> dict:
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--jobs", type=int, default=1)
    extra.add_argument(
        "--kernel-only",
        action="store_true",
        help="recompute only ELBO* (the best Gaussian kernels) of the existing results file",
    )
    extra_args, rest = extra.parse_known_args(argv)
    args = parse_args(__doc__.splitlines()[0], rest, "study_gap_vs_T")
    cfg = GapConfig.quick(args.seed) if args.quick else GapConfig(seed=args.seed)
    if extra_args.kernel_only:
        return _kernel_only(cfg, args)
    base = args.out if args.out is not None else OUTPUTS / "study_gap_vs_T"
    root = base / ("quick_runs" if args.quick else "runs")
    _train_all(cfg, root, extra_args.jobs)
    data = load_toy2d(cfg.data, seed=cfg.seed)
    rows = []
    for T in cfg.steps_list:
        rows.append(measure(cfg, converge(cfg, T, root), data))
        r = rows[-1]
        print(
            f"T = {T}: {r['updates']} updates (converged: {converged_text(r['converged'])}), "
            f"test ELBO {pm(*r['elbo'])}",
            flush=True,
        )
    return _report(cfg, rows, data, args)


def _kernel_only(cfg: GapConfig, args: argparse.Namespace) -> dict:
    """Recompute ELBO* and the columns that use it for the rows of the existing results file,
    with ``cfg.kernel_samples`` draws per step; everything the networks measured is kept."""
    path = args.outputs.results
    if not path.is_file():
        raise SystemExit(f"--kernel-only needs the results of a full run at {path}")
    old = json.loads(path.read_text())
    stored = {k: v for k, v in old["config"].items() if k != "kernel_samples"}
    ours = {**asdict(cfg), "data": cfg.data.value, "steps_list": list(cfg.steps_list)}
    if any(ours.get(k) != v for k, v in stored.items()):
        raise SystemExit(f"{path} holds another configuration than this run's: {stored}")
    data = load_toy2d(cfg.data, seed=cfg.seed)
    rows = []
    for row in old["rows"]:
        schedule = build(cfg.run_config(row["T"])).model.schedule
        rows.append({**row, **kernel_limit(cfg, row, schedule, data.density)})
        print(f"T = {row['T']}: −H − ELBO* = {pm(*rows[-1]['best_kernel_gap'])}", flush=True)
    return _report(cfg, rows, data, args)


def _report(cfg: GapConfig, rows: list[dict], data, args: argparse.Namespace) -> dict:
    """The figure, the printed tables and the results file of the measured ``rows``."""
    H, H_se = data.density.entropy, data.density.entropy_se
    log_pd = data.density.log_prob(data.test.double())
    save_figure(figure(cfg, rows, H, H_se), args.outputs.figure("study_gap_vs_T.png"))
    k = cfg.iwae_k
    print(
        f"\n{cfg.data.value}: −H = {pm(-H, H_se)} nats; mean log p_data on the "
        f"{data.test.shape[0]} test data = {pm(*mean_se(log_pd))}. IWAE-{k} on the first "
        f"{cfg.iwae_data}; gaps paired per datum (log p_data(x) − bound(x)), ± one standard "
        "error. ELBO* is the best ELBO of any model with Gaussian reverse kernels at the same "
        "schedule (pyrodiff.infer.best_gaussian_kernel_bound): −H − ELBO* is the bound's share "
        "of the gap, ELBO* − ELBO the network's.\n"
    )
    tables = _tables(cfg, rows)
    print(markdown(tables["gap"]))
    print(
        "\nWhere the network's share goes: its −ELBO terms minus those of the best kernels, "
        "summed over ranges of t (t = 1: −log p(x_0 | x_1); nats per datum).\n"
    )
    print(markdown(tables["breakdown"]))
    print("\nConvergence: the validation ELBO of each budget of the doubling (nats per datum).\n")
    print(markdown(tables["convergence"]))
    results = {
        "config": {**asdict(cfg), "data": cfg.data.value},
        "entropy": (H, H_se),
        "log_p_data": mean_se(log_pd),
        "rows": rows,
        "table": [_table_row(cfg, r, H, H_se) for r in rows],
        "tables": tables,
    }
    args.outputs.write_results(results)
    return results


if __name__ == "__main__":
    main()
