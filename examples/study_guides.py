"""Study (c): the same model under the fixed forward chain, a learned guide and a learned schedule.

Data: the eight-Gaussians ring (2-D, exact log density). Each arm is a configuration of
``pyrodiff train --data eight_gaussians --network mlp --width 128 --batch-size 256 --T T``
(an :class:`~pyrodiff.networks.MLPDenoiser`, ε-prediction, improved DDPM's learned variance
range, EMA), differing only in the guide:

* **fixed q**: the forward chain (``--guide fixed``), trained on the ELBO by
  :class:`~pyrodiff.infer.DiffusionELBO`;
* **learned q**: a :class:`~pyrodiff.guides.LearnedGuide` (``--guide learned``: amortised
  Gaussian, starting equal to the forward chain) trained with the model by Trace_ELBO on the
  literal chain: the model plus this guide is a hierarchical VAE;
* **learned schedule**: :class:`~pyrodiff.guides.LearnedScheduleGuide` (``--guide
  learned_schedule``: VDM's learnable log-SNR, ends included), trained with the model by
  DiffusionELBO;
* **MuLAN**: :class:`~pyrodiff.guides.AdaptiveNoiseGuide` (``--guide adaptive``: a learned
  log-SNR per dimension conditioned on a latent z ~ q_φ(z | x_0), which the reverse model
  reads too), trained with the model by its T-step bound at one network call per datum:
  the learned q cheap enough for T = 1000.

Every arm is trained from the same initial network until doubling its updates no longer raises
its validation ELBO by 2 paired SE: the two budgets' ELBOs per validation datum, drawn with
common random numbers, differ by less than twice the SE of their mean difference
(``_converge.py``, the paired rule). On held-out test data (read once, for the run
kept) it reports the ELBO (:func:`~pyrodiff.infer.elbo_estimate`), IWAE-K
(:func:`~pyrodiff.infer.iwae_bound`, a tighter bound on the same log p_θ) and PSIS k̂
(:func:`~pyrodiff.infer.psis_diagnostic`: how good q is as a proposal for p_θ(x_{1:T} | x_0)).
A learned guide reads the literal chain, T network calls per datum and update: at T = 1000 that
arm is not trained here, and the table says what one update costs.

    python examples/study_guides.py            # ≈ 7 CPU-hours on a fresh clone (runs cached)
    python examples/study_guides.py --quick    # seconds; what the tests run
    python examples/study_guides.py --arms adaptive   # these arms only, into the results file
    python examples/study_guides.py --arms learned --steps 8   # one row
    python examples/study_guides.py --arms learned --steps 8 --max-updates 32000
                                                      # that row, its doubling capped lower
    python examples/study_guides.py --arms learned_schedule --steps 8 --max-updates 128000
                                                      # that row carried past the study's cap

With ``--arms`` (and ``--steps``, numbers of steps T of the study) only the arms named, at
those T, are trained and measured; their rows replace those of the existing results file, and
the other rows are kept as they are, with the verdicts they were given (a row from a file written
before the paired rule has no paired gains). ``--max-updates`` sets their doubling's cap in place
of the study's 64,000 updates (the rows it writes record their own): lower, to read a sequence
that is still gaining where the time to double it again is not there; higher, to carry a row
that is still gaining at the study's cap further.
"""

from __future__ import annotations

import argparse
import enum
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from _converge import Converged, TrainedRun, train_to_convergence
from _outputs import OUTPUTS
from _study_common import cpu_time, enum_argument, mean_se, parse_args, pm
from _tables import converged_text, convergence_table, markdown, named_table, table_row
from matplotlib.figure import Figure

from pyrodiff.cli.parser import enum_metavar
from pyrodiff.config import RunConfig, build
from pyrodiff.data import Toy2D, load_toy2d
from pyrodiff.infer import elbo_estimate, iwae_bound, psis_diagnostic
from pyrodiff.plots import save_figure
from pyrodiff.train import fit


class Arm(enum.Enum):
    """The guide of an arm, as ``pyrodiff train --guide`` names it."""

    FIXED = "fixed"
    LEARNED = "learned"
    SCHEDULE = "learned_schedule"
    ADAPTIVE = "adaptive"

    @property
    def label(self) -> str:
        return {
            "fixed": "fixed q",
            "learned": "learned q",
            "learned_schedule": "learned schedule",
            "adaptive": "MuLAN (adaptive q)",
        }[self.value]


@dataclass(frozen=True)
class GuidesConfig:
    data: Toy2D = Toy2D.EIGHT_GAUSSIANS
    steps_list: tuple[int, ...] = (4, 8, 1000)
    learned_max_T: int = 8
    width: int = 128
    batch_size: int = 256
    first_updates: int = 4000
    max_updates: int = 64_000
    test_size: int = 500
    elbo_samples: int = 64
    iwae_k: int = 64
    psis_samples: int = 256
    psis_data: int = 100
    validation_samples: int = 4
    """draws per validation datum of the paired rule's ELBO (the same draws for both budgets)"""
    seed: int = 0
    check_convergence: bool = True
    """False for --quick: its budgets are too small for the doubling rule to mean anything"""

    @staticmethod
    def quick(seed: int) -> GuidesConfig:
        return GuidesConfig(
            steps_list=(2, 20),
            learned_max_T=2,
            width=16,
            batch_size=32,
            first_updates=10,
            max_updates=20,
            test_size=30,
            elbo_samples=8,
            iwae_k=4,
            psis_samples=64,
            psis_data=20,
            validation_samples=1,
            seed=seed,
            check_convergence=False,
        )

    def run_config(self, arm: Arm, T: int) -> RunConfig:
        return RunConfig(
            data=self.data.value,
            num_steps=T,
            guide=arm.value,
            network="mlp",
            width=self.width,
            batch_size=self.batch_size,
            seed=self.seed,
            device="cpu",
        )

    def arms(
        self, only: Sequence[Arm] = tuple(Arm), steps: Sequence[int] | None = None
    ) -> list[tuple[Arm, int]]:
        """The (arm, T) rows of the study, those of ``only`` at ``steps`` (default: every T)."""
        return [
            (arm, T)
            for T in self.steps_list
            for arm in Arm
            if arm in only
            and (steps is None or T in steps)
            and (arm is not Arm.LEARNED or T <= self.learned_max_T)
        ]


def converge(cfg: GuidesConfig, arm: Arm, T: int, root, max_updates: int) -> Converged:
    torch.set_num_threads(1)
    return train_to_convergence(
        cfg.run_config(arm, T),
        root / f"{arm.value}-T{T}",
        first_updates=cfg.first_updates,
        max_updates=max_updates,
        check=cfg.check_convergence,
        per_datum=lambda run: validation_bounds(cfg, run),
    )


def validation_bounds(cfg: GuidesConfig, run: TrainedRun) -> torch.Tensor:
    """The run's ELBO per validation datum (the literal chain's, any guide), from
    ``cfg.validation_samples`` draws of one seed for every budget: common random numbers."""
    model, guide = run.loaded.chain()
    x = run.loaded.built.dataset.validation.to(next(model.parameters()).dtype)
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(cfg.seed + 4)
        return elbo_estimate(model, guide, x, cfg.validation_samples).values.double()


def measure(cfg: GuidesConfig, arm: Arm, result: Converged, x, log_pd, max_updates: int) -> dict:
    run = result.kept
    model, guide = run.loaded.chain()
    x = x.to(next(model.parameters()).dtype)
    torch.manual_seed(cfg.seed + 3)
    with torch.no_grad():
        elbo = elbo_estimate(model, guide, x, cfg.elbo_samples).values.double()
        iwae = iwae_bound(model, guide, x, cfg.iwae_k).values.double()
        psis = psis_diagnostic(model, guide, x[: cfg.psis_data], cfg.psis_samples)
    return {
        "arm": arm.name,
        "T": run.loaded.config.num_steps,
        "updates": run.updates,
        "converged": result.converged,
        "max_updates": max_updates,
        "budgets": result.budget_table(),
        "paired_gains": result.gain_table(),
        "cpu_minutes": run.cpu_minutes,
        "validation_elbo": run.validation,
        "elbo": mean_se(elbo),
        "iwae": mean_se(iwae),
        "iwae_minus_elbo": mean_se(iwae - elbo),
        "gap_elbo": mean_se(log_pd - elbo),
        "khat": (psis.mean, psis.stderr),
        "khat_fraction_bad": psis.fraction_bad,
    }


def _kept_rows(cfg: GuidesConfig, args, rerun: Sequence[tuple[Arm, int]]) -> list[dict]:
    """The rows of the existing results file that are not rerun (``--arms``, ``--steps``)."""
    path = args.outputs.results
    if not path.is_file():
        raise SystemExit(f"--arms adds rows to the results of a full run, and {path} is missing")
    old = json.loads(path.read_text())
    ours = {**asdict(cfg), "data": cfg.data.value, "steps_list": list(cfg.steps_list)}
    # a row's own cap is in the row (--max-updates): the file's is the default of the others
    changed = {k: v for k, v in old["config"].items() if ours.get(k, v) != v and k != "max_updates"}
    if changed:
        raise SystemExit(f"{path} holds another configuration than this run's: {changed}")
    again = {(arm.name, T) for arm, T in rerun}
    return [r for r in old["rows"] if (r["arm"], r["T"]) not in again]


def update_cost(cfg: GuidesConfig, arm: Arm, T: int, updates: int = 3) -> float:
    """CPU seconds of one update of an arm that is not trained here (after one warm-up)."""
    config = cfg.run_config(arm, T).replace(updates=updates + 1, eval_every=0)
    built = build(config)
    times = []

    def tick(step: int, loss: float) -> None:
        times.append(time.process_time())

    fit(
        built.model,
        built.guide,
        built.dataset.train,
        loss=built.loss,
        **config.fit_options(),
        progress=False,
        callback=tick,
    )
    return (times[-1] - times[0]) / updates


def _table_row(cfg: GuidesConfig, r: dict, H: float, H_se: float) -> dict:
    return table_row(
        label=f"{Arm[r['arm']].label}, T = {r['T']}",
        configuration={
            "data": cfg.data.value,
            "guide": Arm[r["arm"]].value,
            "network": "mlp",
            "width": cfg.width,
            "batch_size": cfg.batch_size,
            "test_size": cfg.test_size,
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
        extra={"PSIS k̂": r["khat"]},
    )


def guides_table(cfg: GuidesConfig, rows: list[dict]) -> dict:
    """The study's main table (``_tables.named_table``): bounds, gap, k̂ and the verdict."""
    k = cfg.iwae_k
    return named_table(
        [
            "T",
            "guide",
            "ELBO",
            f"IWAE-{k}",
            f"IWAE-{k} − ELBO",
            "log p_data − ELBO",
            "PSIS k̂ (share > 0.7)",
            "updates",
            "converged",
        ],
        [
            [
                r["T"],
                Arm[r["arm"]].label,
                pm(*r["elbo"]),
                pm(*r["iwae"]),
                pm(*r["iwae_minus_elbo"]),
                pm(*r["gap_elbo"]),
                f"{pm(*r['khat'], digits=2)} ({r['khat_fraction_bad']:.2f})",
                r["updates"],
                converged_text(r["converged"]),
            ]
            for r in rows
        ],
    )


def figure(cfg: GuidesConfig, rows: list[dict], entropy: float) -> Figure:
    fig = Figure(figsize=(13, 4.4), layout="constrained")
    left, right = fig.subplots(1, 2)
    Ts = list(cfg.steps_list)
    width = 0.8 / len(Arm)
    for i, arm in enumerate(Arm):
        sel = [
            (j, next((r for r in rows if r["T"] == T and r["arm"] == arm.name), None))
            for j, T in enumerate(Ts)
        ]
        sel = [(j, r) for j, r in sel if r is not None]  # an arm not trained at this T
        pos = np.array([j for j, _ in sel]) + (i - (len(Arm) - 1) / 2) * width
        for ax, key in ((left, "gap_elbo"), (right, "khat")):
            m = np.array([r[key][0] for _, r in sel])
            se = np.array([r[key][1] for _, r in sel])
            ax.bar(pos, m, width, yerr=2 * se, capsize=3, label=arm.label, color=f"C{i}")
    for ax in (left, right):
        ax.set_xticks(np.arange(len(Ts)), [f"T = {T}" for T in Ts])
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    left.set_ylabel("log p_data − ELBO (nats per datum)")
    left.set_title(f"gap to the data's log density (−H = {-entropy:.3f}), ±2 SE")
    right.axhline(0.7, color="k", ls=":", lw=1)
    right.set_ylabel("PSIS k̂ (mean over test data)")
    right.set_title("q as a proposal for p_θ(x_1:T | x_0); k̂ > 0.7 is unreliable")
    fig.suptitle(
        f"{cfg.data.value}: each arm trained by doubling on validation (see its verdict) "
        f"(no bar: learned q at T > {cfg.learned_max_T}, not trained here)"
    )
    return fig


def main(argv: Sequence[str] | None = None) -> dict:
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument(
        "--arms",
        nargs="+",
        type=enum_argument(Arm),
        default=None,
        metavar=enum_metavar(Arm),
    )
    extra.add_argument("--steps", nargs="+", type=int, default=None, metavar="T")
    extra.add_argument("--max-updates", type=int, default=None, metavar="N")
    extra_args, rest = extra.parse_known_args(argv)
    args = parse_args(__doc__.splitlines()[0], rest, "study_guides")
    cfg = GuidesConfig.quick(args.seed) if args.quick else GuidesConfig(seed=args.seed)
    steps = extra_args.steps
    if steps is not None and not set(steps) <= set(cfg.steps_list):
        raise SystemExit(
            f"--steps takes numbers of steps of this study, {list(cfg.steps_list)}; got {steps}"
        )
    for flag, value in (("--steps", steps), ("--max-updates", extra_args.max_updates)):
        if value is not None and extra_args.arms is None:
            raise SystemExit(f"{flag} reruns rows of an existing results file: name --arms too")
    cap = cfg.max_updates if extra_args.max_updates is None else extra_args.max_updates
    if cap < cfg.first_updates:
        raise SystemExit(
            f"--max-updates takes a budget no smaller than the first, {cfg.first_updates}; "
            f"got {cap}"
        )
    base = args.out if args.out is not None else OUTPUTS / "study_guides"
    root = base / ("quick_runs" if args.quick else "runs")
    data = load_toy2d(cfg.data, seed=cfg.seed)
    H, H_se = data.density.entropy, data.density.entropy_se
    x = data.test[: cfg.test_size]
    log_pd = data.density.log_prob(x.double())
    only = tuple(extra_args.arms) if extra_args.arms else tuple(Arm)
    rerun = cfg.arms(only, steps)
    if not rerun:
        raise SystemExit(
            f"no row of this study is {[a.value for a in only]} at T = {steps} (the learned q "
            f"is trained at T <= {cfg.learned_max_T} only)"
        )
    rows = _kept_rows(cfg, args, rerun) if extra_args.arms else []
    for arm, T in rerun:
        rows.append(measure(cfg, arm, converge(cfg, arm, T, root, cap), x, log_pd, cap))
        r = rows[-1]
        print(
            f"{arm.label}, T = {T}: {r['updates']} updates (converged: {converged_text(r['converged'])}), "
            f"test ELBO {pm(*r['elbo'])}",
            flush=True,
        )
    order = {(arm.name, T): i for i, (arm, T) in enumerate(cfg.arms())}
    rows.sort(key=lambda r: order[(r["arm"], r["T"])])
    skipped = {T: update_cost(cfg, Arm.LEARNED, T) for T in cfg.steps_list if T > cfg.learned_max_T}
    save_figure(figure(cfg, rows, H), args.outputs.figure("study_guides.png"))
    k = cfg.iwae_k
    print(
        f"\n{cfg.data.value} (−H = {pm(-H, H_se)} nats), the first {x.shape[0]} test data: ELBO "
        f"from {cfg.elbo_samples} draws per datum, IWAE-{k}; k̂ from {cfg.psis_samples} draws "
        f"on the first {cfg.psis_data}; ± one standard error over the data.\n"
    )
    tables = {"guides": guides_table(cfg, rows)}
    print(markdown(tables["guides"]))
    labels = [f"{Arm[r['arm']].label}, T = {r['T']}" for r in rows]
    tables["convergence"] = convergence_table("configuration", labels, rows)
    print("\nConvergence: the validation ELBO of each budget of the doubling (nats per datum).\n")
    print(markdown(tables["convergence"]))
    for T, seconds in skipped.items():
        print(
            f"\nlearned q at T = {T}: not trained here; one update costs {seconds:.3g} "
            f"CPU-seconds, so the first two budgets of the doubling ({cfg.first_updates} and "
            f"{2 * cfg.first_updates} updates) would take "
            f"{cpu_time(seconds * 3 * cfg.first_updates)}."
        )
    results = {
        "config": {**asdict(cfg), "data": cfg.data.value},
        "entropy": (H, H_se),
        "rows": rows,
        "learned_update_cpu_seconds": skipped,
        "table": [_table_row(cfg, r, H, H_se) for r in rows],
        "tables": tables,
    }
    args.outputs.write_results(results)
    return results


if __name__ == "__main__":
    main()
