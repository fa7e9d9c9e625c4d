"""Study (c): the same p_θ under the fixed forward chain, a learned guide and a learned schedule.

Data: the eight-Gaussians ring (2-D, exact log density). For each T, one diffusion model (an
:class:`~pyrodiff.networks.MLPDenoiser`, ε-prediction, a learned variance per step) is first
trained with the fixed guide. From that same p_θ, four continuations of equal length:

* **fixed q**: the forward chain, :class:`~pyrodiff.infer.DiffusionELBO`;
* **learned q, joint**: a :class:`~pyrodiff.guides.LearnedGuide` (top-down, amortised
  Gaussian, starting equal to the forward chain) trained with the model by
  TraceMeanField_ELBO: the model plus this guide is a hierarchical VAE;
* **learned q, p_θ frozen**: the same guide, only q trained: what a better q buys *at this
  p_θ*, the pure tightening of the bound;
* **learned schedule**: :class:`~pyrodiff.guides.LearnedScheduleGuide` (VDM's learnable
  log-SNR, ends included) trained with the model by DiffusionELBO.

Every pair is then measured the same way on held-out data: the ELBO
(:func:`~pyrodiff.infer.elbo_estimate`), IWAE-K (:func:`~pyrodiff.infer.iwae_bound`, a tighter
bound on the same log p_θ) and PSIS k̂ (:func:`~pyrodiff.infer.psis_diagnostic`: how good q is
as a proposal for p_θ(x_{1:T} | x_0)).

    python examples/study_guides.py            # ≈ 8 minutes
    python examples/study_guides.py --quick    # seconds; what the tests run
"""

from __future__ import annotations

import copy
import enum
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from _study_common import markdown_table, mean_se, parse_args, pm, timed_fit
from _tables import table_row
from matplotlib.figure import Figure
from pyro.infer import TraceMeanField_ELBO

from pyrodiff import Diffusion, ForwardGuide, ReverseVariance, linear_schedule
from pyrodiff.data import Toy2D, load_toy2d
from pyrodiff.guides import GuideStructure, LearnedGuide, LearnedScheduleGuide
from pyrodiff.infer import DiffusionELBO, elbo_estimate, iwae_bound, psis_diagnostic
from pyrodiff.networks import MLPDenoiser
from pyrodiff.plots import save_figure


class Arm(enum.Enum):
    """What is trained after the shared start."""

    START = "start: p_θ after fixed-q training"
    FIXED = "fixed q (continued)"
    LEARNED_JOINT = "learned q + p_θ (HVAE)"
    LEARNED_FROZEN = "learned q, p_θ frozen"
    SCHEDULE = "learned schedule + p_θ"


@dataclass(frozen=True)
class GuidesConfig:
    data: Toy2D = Toy2D.EIGHT_GAUSSIANS
    steps_list: tuple[int, ...] = (4, 8, 50)
    num_train: int = 20_000
    num_test: int = 2000
    hidden: int = 64
    depth: int = 2
    guide_hidden: int = 64
    pretrain_steps: int = 2000
    steps: int = 600
    batch_size: int = 128
    lr: float = 2e-3
    eval_data: int = 200
    elbo_samples: int = 64
    iwae_k: int = 64
    psis_samples: int = 256
    seed: int = 0

    @staticmethod
    def quick(seed: int) -> GuidesConfig:
        return GuidesConfig(
            steps_list=(4,),
            num_train=1000,
            num_test=100,
            guide_hidden=16,
            pretrain_steps=40,
            steps=20,
            batch_size=64,
            eval_data=20,
            elbo_samples=8,
            iwae_k=8,
            psis_samples=64,
            seed=seed,
        )


def _fit(cfg: GuidesConfig, model, guide, train, loss, steps: int) -> tuple[float, float]:
    """Train; (wall seconds, CPU seconds)."""
    clock = timed_fit(
        model, guide, train, loss, steps=steps, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed
    )
    return clock.seconds, clock.cpu_seconds


def measure(cfg: GuidesConfig, model, guide, x, log_pd) -> dict:
    torch.manual_seed(cfg.seed + 11)
    with torch.no_grad():
        elbo = elbo_estimate(model, guide, x, cfg.elbo_samples)
        iwae = iwae_bound(model, guide, x, cfg.iwae_k, num_repeats=2)
        psis = psis_diagnostic(model, guide, x, cfg.psis_samples)
    e, i = elbo.values.double(), iwae.values.double()
    return {
        "elbo": mean_se(e),
        "iwae": mean_se(i),
        "iwae_minus_elbo": mean_se(i - e),
        "gap_elbo": mean_se(log_pd - e),
        "gap_iwae": mean_se(log_pd - i),
        "khat": (psis.mean, psis.stderr),
        "khat_fraction_bad": psis.fraction_bad,
    }


def run_T(cfg: GuidesConfig, T: int, data) -> list[dict]:
    dtype = torch.get_default_dtype()
    train, test = data.train.to(dtype), data.test[: cfg.eval_data].to(dtype)
    log_pd = data.density.log_prob(test.double()).double()
    torch.manual_seed(cfg.seed)
    schedule = linear_schedule(T)
    net = MLPDenoiser(2, hidden=cfg.hidden, depth=cfg.depth, time_dim=32)
    base = Diffusion(net, schedule, variance=ReverseVariance.PER_STEP)
    fixed = ForwardGuide(schedule)
    pre_s, pre_cpu = _fit(cfg, base, fixed, train, DiffusionELBO(), cfg.pretrain_steps)
    rows = [
        {
            "T": T,
            "arm": Arm.START,
            "train_seconds": pre_s,
            "train_cpu_seconds": pre_cpu,
            "updates": cfg.pretrain_steps,
            **measure(cfg, base, fixed, test, log_pd),
        }
    ]
    for arm in (Arm.FIXED, Arm.LEARNED_JOINT, Arm.LEARNED_FROZEN, Arm.SCHEDULE):
        model = copy.deepcopy(base)
        torch.manual_seed(cfg.seed + 1)
        if arm is Arm.FIXED:
            guide, loss = ForwardGuide(schedule), DiffusionELBO()
        elif arm is Arm.SCHEDULE:
            guide, loss = LearnedScheduleGuide.for_model(model), DiffusionELBO()
        else:
            guide = LearnedGuide(model, GuideStructure.TOP_DOWN, hidden=cfg.guide_hidden)
            guide.to(dtype)
            # top-down, so the analytic per-site KL of TraceMeanField_ELBO is valid
            loss = TraceMeanField_ELBO()
            if arm is Arm.LEARNED_FROZEN:
                # train(False) tells Pyro the frozen weights are meant to stay out of the param
                # store; the MLP has no dropout or normalisation, so nothing else changes
                model.requires_grad_(False).train(False)
        seconds, cpu = _fit(cfg, model, guide, train, loss, cfg.steps)
        rows.append(
            {
                "T": T,
                "arm": arm,
                "train_seconds": seconds,
                # the arm's model went through the shared start as well
                "train_cpu_seconds": pre_cpu + cpu,
                "updates": cfg.pretrain_steps + cfg.steps,
                **measure(cfg, model, guide, test, log_pd),
            }
        )
        print(f"T = {T}, {arm.value}: ELBO {pm(*rows[-1]['elbo'])}, {seconds:.0f} s", flush=True)
    return rows


def _table_row(cfg: GuidesConfig, config: dict, r: dict, H: float, H_se: float) -> dict:
    """The row as data: bounds on the first ``eval_data`` test points, k̂ as an extra column."""
    keys = ("data", "hidden", "depth", "guide_hidden", "batch_size", "lr", "eval_data")
    return table_row(
        label=r["arm"].value,
        configuration={k: config[k] for k in keys} | {"arm": r["arm"].name},
        T=r["T"],
        elbo=r["elbo"],
        iwae=r["iwae"],
        iwae_k=cfg.iwae_k,
        reference=(-H, H_se),
        reference_name="−H",
        updates=r["updates"],
        cpu_minutes=r["train_cpu_seconds"] / 60,
        converged=None,  # doubling the updates was not measured
        extra={"PSIS k̂": r["khat"]},
    )


def figure(cfg: GuidesConfig, rows: list[dict], entropy: float) -> Figure:
    fig = Figure(figsize=(12, 4.4), layout="constrained")
    left, right = fig.subplots(1, 2)
    arms = list(Arm)
    Ts = list(cfg.steps_list)
    width = 0.8 / len(arms)
    for j, arm in enumerate(arms):
        sel = [next(r for r in rows if r["T"] == T and r["arm"] is arm) for T in Ts]
        x = np.arange(len(Ts)) + (j - (len(arms) - 1) / 2) * width
        g = np.array([r["gap_elbo"][0] for r in sel])
        gs = np.array([r["gap_elbo"][1] for r in sel])
        gi = np.array([r["gap_iwae"][0] for r in sel])
        left.bar(x, g, width, yerr=2 * gs, capsize=2, color=f"C{j}", label=arm.value)
        left.plot(x, gi, "k_", ms=14, mew=2)
        k = np.array([r["khat"][0] for r in sel])
        ks = np.array([r["khat"][1] for r in sel])
        right.bar(x, k, width, yerr=2 * ks, capsize=2, color=f"C{j}", label=arm.value)
    left.plot([], [], "k_", ms=14, mew=2, label=f"same, IWAE-{cfg.iwae_k}")
    for ax in (left, right):
        ax.set_xticks(range(len(Ts)), [f"T = {T}" for T in Ts])
        ax.grid(alpha=0.3, axis="y")
    left.set_ylabel("log p_data − ELBO (nats per datum, ±2 SE)")
    left.set_title(f"gap to the best possible (−H = {-entropy:.3f}); lower is better")
    left.legend(fontsize=7)
    right.axhline(0.5, color="k", ls=":", lw=1)
    right.axhline(0.7, color="k", ls="--", lw=1)
    right.set_ylabel("mean PSIS k̂ over test data (±2 SE)")
    right.set_title("q as a proposal for p_θ(x_1:T | x_0): k̂ < 0.5 good, > 0.7 unreliable")
    return fig


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(__doc__.splitlines()[0], argv, "study_guides")
    cfg = GuidesConfig.quick(args.seed) if args.quick else GuidesConfig(seed=args.seed)
    data = load_toy2d(cfg.data, num_train=cfg.num_train, num_test=cfg.num_test, seed=cfg.seed)
    rows = [r for T in cfg.steps_list for r in run_T(cfg, T, data)]
    H = data.density.entropy
    save_figure(figure(cfg, rows, H), args.outputs.figure("study_guides.png"))
    k = cfg.iwae_k
    print(
        f"\n{cfg.data.value} (−H = {-H:.3f} nats), {cfg.eval_data} test data; every model "
        f"pre-trained {cfg.pretrain_steps} updates with the fixed q, then {cfg.steps} updates "
        f"of {cfg.batch_size} per arm. ELBO from {cfg.elbo_samples} draws per datum, IWAE-{k} "
        f"from 2 × {k}, k̂ from {cfg.psis_samples}; ± one standard error over the data.\n"
    )
    print(
        markdown_table(
            [
                "T",
                "guide",
                "ELBO",
                f"IWAE-{k}",
                f"IWAE-{k} − ELBO",
                "log p_data − ELBO",
                "PSIS k̂ (share > 0.7)",
                "train s",
            ],
            [
                [
                    r["T"],
                    r["arm"].value,
                    pm(*r["elbo"]),
                    pm(*r["iwae"]),
                    pm(*r["iwae_minus_elbo"]),
                    pm(*r["gap_elbo"]),
                    f"{pm(*r['khat'], digits=2)} ({r['khat_fraction_bad']:.0%})",
                    f"{r['train_seconds']:.0f}",
                ]
                for r in rows
            ],
        )
    )
    config = {**asdict(cfg), "data": cfg.data.value}
    H_se = data.density.entropy_se
    results = {
        "config": config,
        "entropy": H,
        "rows": [{**r, "arm": r["arm"].name} for r in rows],
        "table": [_table_row(cfg, config, r, H, H_se) for r in rows],
    }
    args.outputs.write_results(results)
    return results


if __name__ == "__main__":
    main()
