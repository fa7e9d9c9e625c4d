"""Study (b): how the gap between the ELBO and the best possible log-likelihood falls as T grows.

Data: the eight-Gaussians ring (2-D, standardised), whose log density and entropy H are known
(:func:`pyrodiff.data.load_toy2d`), so −H = E log p_data is the best expected log-likelihood any
model can reach. For each T the same model (an :class:`~pyrodiff.networks.MLPDenoiser`,
ε-prediction, a learned variance per step, Gaussian decoder, linear schedule with the same ᾱ_T
for every T) is trained with the fixed guide by :class:`~pyrodiff.infer.DiffusionELBO` for the
same number of updates. On held-out data it reports the ELBO (every per-step term,
:func:`~pyrodiff.infer.elbo_terms`) and IWAE-K (:func:`~pyrodiff.infer.iwae_bound`), each as a
gap to the data's own log density, paired per datum:

    gap = E[log p_data(x) − bound(x)] = KL(p_data ‖ p_θ) + E[log p_θ(x) − bound(x)] ≥ 0.

    python examples/study_gap_vs_T.py            # ≈ 6 minutes
    python examples/study_gap_vs_T.py --quick    # seconds; what the tests run
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from _study_common import markdown_table, mean_se, parse_args, pm, timed_fit
from _tables import table_row
from matplotlib.figure import Figure

from pyrodiff import Diffusion, ForwardGuide, ReverseVariance, linear_schedule
from pyrodiff.data import Toy2D, load_toy2d
from pyrodiff.infer import DiffusionELBO, elbo_estimate, elbo_terms, iwae_bound
from pyrodiff.networks import MLPDenoiser
from pyrodiff.plots import save_figure


@dataclass(frozen=True)
class GapConfig:
    data: Toy2D = Toy2D.EIGHT_GAUSSIANS
    steps_list: tuple[int, ...] = (2, 5, 10, 50, 200, 1000)
    num_train: int = 20_000
    num_test: int = 2000
    hidden: int = 64
    depth: int = 2
    steps: int = 4000
    batch_size: int = 256
    lr: float = 2e-3
    iwae_k: int = 16
    iwae_data: int = 250
    elbo_samples: int = 64
    seed: int = 0

    @staticmethod
    def quick(seed: int) -> GapConfig:
        return GapConfig(
            steps_list=(2, 10),
            num_train=1000,
            num_test=200,
            steps=60,
            iwae_k=4,
            iwae_data=40,
            elbo_samples=8,
            seed=seed,
        )


def build(cfg: GapConfig, T: int) -> tuple[Diffusion, ForwardGuide]:
    torch.manual_seed(cfg.seed)  # the same initial network for every T
    schedule = linear_schedule(T)
    net = MLPDenoiser(2, hidden=cfg.hidden, depth=cfg.depth, time_dim=32)
    model = Diffusion(net, schedule, variance=ReverseVariance.PER_STEP).float()
    return model, ForwardGuide(schedule)


def run_one(cfg: GapConfig, T: int, data) -> dict:
    model, guide = build(cfg, T)
    train = data.train.float()
    test = data.test.float()
    clock = timed_fit(
        model,
        guide,
        train,
        DiffusionELBO(),
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        seed=cfg.seed,
    )
    log_pd = data.density.log_prob(test.double())
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    with torch.no_grad():
        terms = elbo_terms(model, guide, test, generator=gen)
        torch.manual_seed(cfg.seed + 2)
        sub = test[: cfg.iwae_data]
        iwae = iwae_bound(model, guide, sub, cfg.iwae_k, num_repeats=4)
        # the subset's ELBO from draws of the same literal chain, for a like-for-like IWAE − ELBO
        elbo_sub = elbo_estimate(model, guide, sub, cfg.elbo_samples).values.double()
    elbo = terms.elbo.double()
    n = cfg.iwae_data
    return {
        "T": T,
        "train_seconds": clock.seconds,
        "train_cpu_seconds": clock.cpu_seconds,
        "elbo": mean_se(elbo),
        "iwae": (iwae.mean, iwae.stderr),
        "gap_elbo": mean_se(log_pd - elbo),
        "gap_elbo_sub": mean_se(log_pd[:n] - elbo[:n]),
        "gap_iwae": mean_se(log_pd[:n] - iwae.values.double()),
        "iwae_minus_elbo": mean_se(iwae.values.double() - elbo_sub),
        "reconstruction": terms.reconstruction.mean().item(),
        "prior": terms.prior.mean().item(),
        "per_step_loss": terms.per_step_loss.mean(0).tolist(),
    }


def figure(cfg: GapConfig, rows: list[dict], entropy: float, entropy_se: float) -> Figure:
    fig = Figure(figsize=(14, 4.6), layout="constrained")
    left, mid, right = fig.subplots(1, 3, width_ratios=[1, 1, 1.1])
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
        ("gap_elbo", "log p_data − ELBO", "o-"),
        ("gap_iwae", f"log p_data − IWAE-{k}", "s--"),
    ):
        m = np.array([r[key][0] for r in rows])
        s = np.array([r[key][1] for r in rows])
        mid.errorbar(Ts, np.maximum(m, 1e-3), yerr=2 * s, fmt=style, capsize=3, label=label)
    mid.set_xscale("log")
    mid.set_yscale("log")
    mid.set_xlabel("T (log scale)")
    mid.set_ylabel("log p_data − bound (nats per datum, log scale)")
    mid.set_title("the gap falls as T grows")
    mid.legend(fontsize=8)
    mid.grid(alpha=0.3, which="both")
    colors = [mpl_color(i, len(rows)) for i in range(len(rows))]
    for r, c in zip(rows, colors, strict=True):
        T = r["T"]
        kl = np.array(r["per_step_loss"][1:])  # L_{t−1} for t = 2 … T, each ≥ 0
        t = np.arange(2, T + 1) / T
        right.plot(t, kl * T, "o-" if T <= 10 else "-", ms=4, color=c, label=f"T = {T}")
    right.set_yscale("log")
    right.set_xlabel("t / T")
    right.set_ylabel("T · L_{t−1} (nats per datum)")
    right.set_title("KL terms t ≥ 2; area = their sum")
    right.legend(fontsize=7, ncol=2)
    right.grid(alpha=0.3, which="both")
    fig.suptitle(
        f"{cfg.data.value}: same network, {cfg.steps} updates of {cfg.batch_size} for every T "
        f"(H = {entropy:.3f} ± {entropy_se:.3f} nats)"
    )
    return fig


def _table_row(cfg: GapConfig, config: dict, r: dict, H: float, H_se: float) -> dict:
    """The row as data; IWAE is on the first ``iwae_data`` test points (a subset)."""
    return table_row(
        label=f"fixed q, T = {r['T']}",
        configuration={k: config[k] for k in ("data", "hidden", "depth", "batch_size", "lr")}
        | {"iwae_data": cfg.iwae_data},
        T=r["T"],
        elbo=r["elbo"],
        iwae=r["iwae"],
        iwae_k=cfg.iwae_k,
        reference=(-H, H_se),
        reference_name="−H",
        updates=cfg.steps,
        cpu_minutes=r["train_cpu_seconds"] / 60,
        converged=None,  # doubling the updates was not measured
    )


def mpl_color(i: int, n: int):
    from matplotlib import colormaps

    return colormaps["viridis"](i / max(n - 1, 1))


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(__doc__.splitlines()[0], argv, "study_gap_vs_T")
    cfg = GapConfig.quick(args.seed) if args.quick else GapConfig(seed=args.seed)
    data = load_toy2d(cfg.data, num_train=cfg.num_train, num_test=cfg.num_test, seed=cfg.seed)
    H, H_se = data.density.entropy, data.density.entropy_se
    log_pd = data.density.log_prob(data.test.double())
    rows = []
    for T in cfg.steps_list:
        rows.append(run_one(cfg, T, data))
        r = rows[-1]
        print(f"T = {T}: ELBO {pm(*r['elbo'])}, {r['train_cpu_seconds']:.0f} CPU s", flush=True)
    save_figure(figure(cfg, rows, H, H_se), args.outputs.figure("study_gap_vs_T.png"))
    print(
        f"\n{cfg.data.value}: −H = {pm(-H, H_se)} nats; mean log p_data on the {cfg.num_test} test "
        f"data = {pm(*mean_se(log_pd))}. IWAE-{cfg.iwae_k} (4 repeats) on the first "
        f"{cfg.iwae_data}, and IWAE − ELBO there against an ELBO from {cfg.elbo_samples} draws "
        "of the same chain. Gaps are paired per datum (log p_data(x) − bound(x)), ± one "
        "standard error; training time in CPU seconds of one thread.\n"
    )
    k = cfg.iwae_k
    print(
        markdown_table(
            [
                "T",
                "test ELBO",
                f"IWAE-{k}",
                "log p_data − ELBO",
                f"log p_data − IWAE-{k}",
                f"IWAE-{k} − ELBO",
                "−log p(x_0|x_1)",
                "L_T (prior)",
                "train CPU s",
            ],
            [
                [
                    r["T"],
                    pm(*r["elbo"]),
                    pm(*r["iwae"]),
                    pm(*r["gap_elbo"]),
                    pm(*r["gap_iwae"]),
                    pm(*r["iwae_minus_elbo"]),
                    f"{-r['reconstruction']:.3f}",
                    f"{r['prior']:.1e}",
                    f"{r['train_cpu_seconds']:.0f}",
                ]
                for r in rows
            ],
        )
    )
    config = {**asdict(cfg), "data": cfg.data.value}
    results = {
        "config": config,
        "entropy": (H, H_se),
        "log_p_data": mean_se(log_pd),
        "rows": rows,
        "table": [_table_row(cfg, config, r, H, H_se) for r in rows],
    }
    args.outputs.write_results(results)
    return results


if __name__ == "__main__":
    main()
