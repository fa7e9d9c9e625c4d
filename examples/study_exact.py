"""Study (a): Gaussian data, where the diffusion ELBO can be checked against the exact evidence.

Data x_0 ~ N(m, s² I) in D = 2. The model is a linear-Gaussian :class:`~pyrodiff.Diffusion`
(a :class:`~pyrodiff.networks.LinearDenoiser`, ε-prediction, Gaussian decoder) trained with
the fixed forward-chain guide by :class:`~pyrodiff.infer.DiffusionELBO`, at 1500, 3000, …
updates until doubling them no longer raises the validation ELBO by 2 SE
(``_converge.doubling``). Over training it records, on the validation data, the exact
log p_θ(x_0) (:func:`~pyrodiff.infer.exact_log_evidence`), the ELBO in closed form
(:func:`~pyrodiff.infer.exact_elbo_terms`) and IWAE-K (:func:`~pyrodiff.infer.iwae_bound`); the
test data are read once, for the run kept. Two reverse variances:

* ``PER_STEP`` (a learned σ_t² per step): the family contains the true reverse process
  q(x_{t−1} | x_t) of any isotropic Gaussian (see :func:`~pyrodiff.gaussian_oracle`), so the
  gap log p − ELBO can go to ≈ 0 by moving p_θ alone;
* ``BETA`` (σ_t² = β_t, DDPM's choice): right only for N(0, I) data; here s ≠ 1, so the gap
  keeps a floor that no mean can remove.

Then the oracle: with p_θ equal to the exact reverse process, ELBO = log p for every draw
from q, so Trace_ELBO's estimate has zero variance (measured, with the other estimators).

    python examples/study_exact.py                # ≈ 1 minute; writes to outputs/study_exact/
    python examples/study_exact.py --write-docs   # the same, into docs/figures and docs/results
    python examples/study_exact.py --quick        # seconds; what the tests run
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from _converge import budget_entry, doubling
from _study_common import Stopwatch, markdown_table, mean_se, parse_args, pm
from _tables import convergence_table, markdown, render, table_row
from matplotlib.figure import Figure
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyrodiff import Diffusion, ForwardGuide, ReverseVariance, gaussian_oracle, linear_schedule
from pyrodiff.infer import (
    DiffusionELBO,
    estimator_spread,
    exact_elbo_terms,
    exact_log_evidence,
    iwae_bound,
    log_weights,
)
from pyrodiff.networks import LinearDenoiser
from pyrodiff.plots import save_figure
from pyrodiff.train import LRSchedule, fit


@dataclass(frozen=True)
class ExactConfig:
    dim: int = 2
    data_mean: tuple[float, ...] = (1.0, -0.5)
    data_std: float = 0.5
    num_steps: int = 10
    num_train: int = 4000
    num_test: int = 1000
    num_validation: int = 1000
    first_updates: int = 1500
    max_updates: int = 24_000
    batch_size: int = 256
    lr: float = 0.02
    iwae_k: int = 16
    spread_batch: int = 256
    spread_repeats: int = 50
    seed: int = 0
    check_convergence: bool = True
    """False for --quick: its budgets are too small for the doubling rule to mean anything"""

    @staticmethod
    def quick(seed: int) -> ExactConfig:
        return ExactConfig(
            num_train=500,
            num_test=100,
            num_validation=100,
            first_updates=50,
            max_updates=100,
            spread_repeats=5,
            seed=seed,
            check_convergence=False,
        )


VARIANCES = (ReverseVariance.PER_STEP, ReverseVariance.BETA)


def eval_steps(total: int) -> set[int]:
    """0, 1, 2, 5, 10, 20, 50, … up to ``total``, and ``total``: even on a log axis."""
    out, base = {0, total}, 1
    while base <= total:
        out |= {m * base for m in (1, 2, 5) if m * base <= total}
        base *= 10
    return out


def _data(
    cfg: ExactConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.distributions.Normal]:
    """Train, validation and test draws; the validation data are drawn last, so the training
    and test data do not depend on how many there are."""
    gen = torch.Generator().manual_seed(cfg.seed)
    mean = torch.tensor(cfg.data_mean, dtype=torch.float64)
    law = torch.distributions.Normal(mean, cfg.data_std)
    n = cfg.num_train + cfg.num_test + cfg.num_validation
    x = mean + cfg.data_std * torch.randn(n, cfg.dim, generator=gen)
    test_end = cfg.num_train + cfg.num_test
    return x[: cfg.num_train], x[test_end:], x[cfg.num_train : test_end], law


def train_one(cfg: ExactConfig, variance: ReverseVariance, updates: int, train, validation) -> dict:
    """One run of ``updates`` updates; its curve and final ELBO are on the validation data."""
    schedule = linear_schedule(cfg.num_steps)
    model = Diffusion(LinearDenoiser(cfg.dim, cfg.num_steps), schedule, variance=variance)
    guide = ForwardGuide(schedule)
    curve: list[dict] = []
    when = eval_steps(updates)

    def record(step: int, _loss: float) -> None:
        if step not in when:
            return
        with torch.no_grad():
            log_p = exact_log_evidence(model, validation)
            elbo = exact_elbo_terms(model, guide, validation).elbo
            iwae = iwae_bound(model, guide, validation, cfg.iwae_k).values
        curve.append(
            {
                "step": step,
                "log_p": log_p.mean().item(),
                "elbo": elbo.mean().item(),
                "elbo_se": mean_se(elbo)[1],
                f"iwae_{cfg.iwae_k}": iwae.mean().item(),
                "gap_elbo": (log_p - elbo).mean().item(),
                "gap_iwae": (log_p - iwae).mean().item(),
            }
        )

    with Stopwatch() as clock:
        record(0, math.nan)
        fit(
            model,
            guide,
            train,
            loss=DiffusionELBO(),
            updates=updates,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            lr_schedule=LRSchedule.COSINE,
            seed=cfg.seed,
            device="cpu",
            progress=False,
            log_every=updates,
            callback=record,
        )
    return {
        "variance": variance.value,
        "updates": updates,
        "curve": curve,
        "cpu_seconds": clock.cpu_seconds,
        "model": model,
        "guide": guide,
    }


def validation_elbo(run: dict) -> tuple[float, float]:
    """The run's exact ELBO on the validation data at its last update, with its SE."""
    last = run["curve"][-1]
    return last["elbo"], last["elbo_se"]


def converge(cfg: ExactConfig, variance: ReverseVariance, train, validation) -> dict:
    """Train at first_updates, 2 × first_updates, … until the validation ELBO stops rising by
    2 SE (``_converge.doubling``); the run kept, its budgets and the verdict."""
    runs, kept, converged = doubling(
        lambda n: train_one(cfg, variance, n, train, validation),
        validation_elbo,
        first_updates=cfg.first_updates,
        max_updates=cfg.max_updates,
        check=cfg.check_convergence,
    )
    budgets = [
        budget_entry(
            r["updates"],
            r["cpu_seconds"] / 60,
            validation_elbo(r),
            [
                {"updates": c["step"], "elbo": c["elbo"], "elbo_se": c["elbo_se"]}
                for c in r["curve"]
            ],
        )
        for r in runs
    ]
    return {**kept, "budgets": budgets, "converged": converged}


def measure(cfg: ExactConfig, run: dict, test) -> dict:
    """The kept run on the test data (read once): exact log p_θ, the exact ELBO and IWAE-K."""
    model, guide = run["model"], run["guide"]
    with torch.no_grad():
        log_p = exact_log_evidence(model, test)
        terms = exact_elbo_terms(model, guide, test)
        iwae = iwae_bound(model, guide, test, cfg.iwae_k, num_repeats=4)
    gap = log_p - terms.elbo
    return {
        "log_p": mean_se(log_p),
        "elbo": mean_se(terms.elbo),
        "iwae": (iwae.mean, iwae.stderr),
        "gap_elbo": mean_se(gap),
        "gap_elbo_max": gap.max().item(),
        "gap_elbo_min": gap.min().item(),
        "gap_iwae": mean_se(log_p - iwae.values),
        "prior_kl": terms.prior.mean().item(),
    }


def _label(name: str) -> str:
    return "σ_t² learned per step (PER_STEP)" if name == "per_step" else "σ_t² = β_t (BETA)"


def _table_row(cfg: ExactConfig, run: dict, best) -> dict:
    """The row as data: the run kept by the doubling rule, measured on the test data."""
    name = run["variance"]
    keys = ("dim", "data_mean", "data_std", "num_test", "batch_size", "lr")
    return table_row(
        label=_label(name),
        configuration={k: getattr(cfg, k) for k in keys} | {"variance": name},
        T=cfg.num_steps,
        elbo=run["elbo"],
        iwae=run["iwae"],
        iwae_k=cfg.iwae_k,
        reference=best,
        reference_name="E log p_data",
        updates=run["updates"],
        cpu_minutes=run["cpu_seconds"] / 60,
        converged=run["converged"],
        extra={"log p_θ (exact)": run["log_p"]},
    )


def oracle_check(cfg: ExactConfig, test) -> dict:
    """The exact reverse process as the model: ELBO = log p with zero estimator variance."""
    schedule = linear_schedule(cfg.num_steps)
    oracle = gaussian_oracle(schedule, torch.tensor(cfg.data_mean), cfg.data_std)
    guide = ForwardGuide(schedule)
    x = test[: cfg.spread_batch]
    with torch.no_grad():
        log_p = exact_log_evidence(oracle, test)
        elbo = exact_elbo_terms(oracle, guide, test).elbo
        lw = log_weights(oracle, guide, x, 64)  # (64, N): one Trace_ELBO draw per entry
    spreads = estimator_spread(
        oracle,
        guide,
        x,
        [Trace_ELBO(), TraceMeanField_ELBO(), DiffusionELBO()],
        num_repeats=cfg.spread_repeats,
    )
    return {
        "max_abs_elbo_minus_log_p": (elbo - log_p).abs().max().item(),
        "max_log_weight_std": lw.std(0).max().item(),
        "max_abs_log_weight_minus_log_p": (lw - log_p[: x.shape[0]]).abs().max().item(),
        "spread": {s.estimator: {"mean": s.mean, "std": s.std} for s in spreads},
    }


def figure(cfg: ExactConfig, runs: dict[str, dict], best: float) -> Figure:
    fig = Figure(figsize=(12, 4.4), layout="constrained")
    left, right = fig.subplots(1, 2)
    colors = {"per_step": "C0", "beta": "C3"}
    k = cfg.iwae_k
    for name, run in runs.items():
        c = colors[name]
        steps = [r["step"] + 1 for r in run["curve"]]
        label = "σ_t² learned per step" if name == "per_step" else "σ_t² = β_t"
        left.plot(
            steps, [r["log_p"] for r in run["curve"]], color=c, lw=2.2, label=f"log p_θ, {label}"
        )
        left.plot(
            steps, [r[f"iwae_{k}"] for r in run["curve"]], color=c, ls="--", label=f"IWAE-{k}"
        )
        left.plot(steps, [r["elbo"] for r in run["curve"]], color=c, ls=":", lw=2, label="ELBO")
        gap = [r["gap_elbo"] for r in run["curve"]]
        right.plot(steps, gap, "o-", ms=3, color=c, lw=2, label=f"log p_θ − ELBO, {label}")
    left.axhline(best, color="k", ls="-.", lw=1, label=f"E log p_data = {best:.3f} (validation)")
    left.set_ylim(best - 0.4, best + 0.05)
    left.set_xscale("log")
    left.set_xlabel("training step + 1 (log scale)")
    left.set_ylabel("validation nats per datum")
    left.set_title(f"exact evidence and bounds (Gaussian data, D = {cfg.dim}, T = {cfg.num_steps})")
    left.legend(fontsize=7, ncol=2, loc="lower right")
    left.grid(alpha=0.3, which="both")
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("training step + 1 (log scale)")
    right.set_ylabel("log p_θ − ELBO, exact (nats per datum, log scale)")
    right.set_title("the gap closes only when the family holds the reverse of q")
    right.legend(fontsize=8)
    right.grid(alpha=0.3, which="both")
    return fig


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(__doc__.splitlines()[0], argv, "study_exact")
    previous = torch.get_default_dtype()
    # float64 throughout: the oracle's zero variance is a statement about rounding error
    torch.set_default_dtype(torch.float64)
    try:
        return _main(args)
    finally:
        torch.set_default_dtype(previous)


def _main(args) -> dict:
    cfg = ExactConfig.quick(args.seed) if args.quick else ExactConfig(seed=args.seed)
    torch.manual_seed(cfg.seed)
    train, validation, test, law = _data(cfg)
    best = law.log_prob(test).sum(-1)
    runs = {}
    for v in VARIANCES:
        kept = converge(cfg, v, train, validation)
        runs[v.value] = {**kept, **measure(cfg, kept, test)}
    oracle = oracle_check(cfg, test)
    # the figure's curves are on the validation data, so its reference line is too
    best_validation = law.log_prob(validation).sum(-1).mean().item()
    save_figure(figure(cfg, runs, best_validation), args.outputs.figure("study_exact.png"))

    rows = []
    for name, run in runs.items():
        with torch.no_grad():
            kl = best - exact_log_evidence(run["model"], test)
        rows.append(
            [
                _label(name),
                pm(*run["log_p"]),
                pm(*run["elbo"]),
                pm(*run["iwae"]),
                pm(*run["gap_elbo"], digits=4),
                pm(*run["gap_iwae"], digits=4),
                pm(*mean_se(kl), digits=4),
            ]
        )
    table = [_table_row(cfg, run, mean_se(best)) for run in runs.values()]
    tables = {
        "convergence": convergence_table(
            "reverse variance", [_label(k) for k in runs], list(runs.values())
        )
    }
    updates = ", ".join(f"{_label(k)} {run['updates']}" for k, run in runs.items())
    print(
        f"Gaussian data N({list(cfg.data_mean)}, {cfg.data_std}² I), T = {cfg.num_steps}, "
        f"updates of {cfg.batch_size} kept on validation ({updates}); {cfg.num_test} test "
        f"data; E log p_data = {pm(*mean_se(best))} nats\n"
    )
    print(
        markdown_table(
            [
                "reverse variance",
                "log p_θ (exact)",
                "ELBO (exact)",
                f"IWAE-{cfg.iwae_k}",
                "log p_θ − ELBO",
                f"log p_θ − IWAE-{cfg.iwae_k}",
                "log p_data − log p_θ",
            ],
            rows,
        )
    )
    print("\nThe same runs as data (docs/results/study_exact.json under --write-docs):\n")
    print(render(table))
    print("\nConvergence: the validation ELBO of each budget of the doubling (nats per datum).\n")
    print(markdown(tables["convergence"]))
    sp = oracle["spread"]
    print(
        "\nOracle (exact reverse process): max |ELBO − log p| = "
        f"{oracle['max_abs_elbo_minus_log_p']:.2e} nats; per-datum std of Trace_ELBO's log-weight "
        f"over 64 draws ≤ {oracle['max_log_weight_std']:.2e}\n"
    )
    print(
        markdown_table(
            [
                f"estimator (oracle, batch of {min(cfg.spread_batch, cfg.num_test)})",
                "mean ELBO / datum",
                "std of one estimate",
            ],
            [[k, f"{v['mean']:.4f}", f"{v['std']:.2e}"] for k, v in sp.items()],
        )
    )
    results = {
        "config": asdict(cfg),
        "log_p_data": mean_se(best),
        "runs": {
            k: {kk: vv for kk, vv in v.items() if kk not in ("model", "guide")}
            for k, v in runs.items()
        },
        "oracle": oracle,
        "table": table,
        "tables": tables,
    }
    args.outputs.write_results(results)
    return results


if __name__ == "__main__":
    main()
