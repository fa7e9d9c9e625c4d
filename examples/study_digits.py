"""Study (d): test bits/dim on the 8×8 digits, diffusion bounds against exact-likelihood references.

Every model row is a configuration of ``pyrodiff train`` on the digits (train 1300 / validation
200 / test 297 images, :func:`~pyrodiff.data.load_digits`): the default diffusion model (a
:class:`~pyrodiff.networks.UNetDenoiser`, ε-prediction, improved DDPM's learned variance range,
the discretised Gaussian decoder on the 17 grey levels, importance-sampled timesteps, EMA)

* with the fixed forward chain at T = 1000, at the default T = 100 and at a small T = 8;
* with a learned schedule (:class:`~pyrodiff.guides.LearnedScheduleGuide`, ends included) at
  T = 100;

and the default hierarchical VAE (``--model hvae``: 8 latent layers, learned guide). Each is
trained until doubling its updates no longer raises the validation ELBO by 2 SE
(``_converge.py``: the budget is chosen on validation data; the digits over-fit, so doubling
can also lower it). The test split is read once, for the run kept: the bound summed term by
term for closed-form guides (:func:`~pyrodiff.infer.elbo_terms`), a Monte-Carlo ELBO for the
learned guide (:func:`~pyrodiff.infer.elbo_estimate`), and IWAE-K where the chain is short.
References, computed here with exact likelihoods (:mod:`pyrodiff.baselines`): every pixel an
independent 17-way categorical (add-one smoothed counts), and a small autoregressive model
(MADE, raster order) trained by maximum likelihood.

The runs are run folders under ``outputs/study_digits/runs/`` (``pyrodiff evaluate`` and
``compare`` read them); a rerun loads finished runs and resumes interrupted ones.

    python examples/study_digits.py            # ≈ 80 CPU-minutes
    python examples/study_digits.py --quick    # seconds; what the tests run
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from _converge import Converged, train_to_convergence
from _outputs import OUTPUTS
from _study_common import Stopwatch, mean_se, parse_args, pm
from _tables import converged_text, markdown, named_table, table_row
from matplotlib.figure import Figure

from pyrodiff.baselines import AutoregressiveCategorical, PixelCategorical
from pyrodiff.config import GuideKind, ModelKind, RunConfig
from pyrodiff.data import load_digits
from pyrodiff.guides import has_closed_forms
from pyrodiff.infer import elbo_estimate, elbo_terms, iwae_bound
from pyrodiff.plots import save_figure

ROWS: dict[str, dict] = {
    "fixed-T1000": {"num_steps": 1000},
    "fixed-T100": {},
    "fixed-T8": {"num_steps": 8},
    "schedule-T100": {"guide": "learned_schedule"},
    "hvae-T8": {"model": "hvae"},
}
"""The model rows: changes to ``pyrodiff train``'s digits defaults."""


@dataclass(frozen=True)
class DigitsConfig:
    rows: dict[str, dict] = field(default_factory=lambda: dict(ROWS))
    overrides: dict = field(default_factory=dict)
    first_updates: int = 1500
    max_updates: int = 6000
    test_size: int | None = None
    iwae_k: int = 64
    iwae_max_T: int = 10
    elbo_samples: int = 16
    ar_hidden: int = 128
    ar_steps: int = 1000
    ar_weight_decay: float = 0.1
    seed: int = 0
    check_convergence: bool = True
    """False for --quick: its budgets are too small for the doubling rule to mean anything"""

    @staticmethod
    def quick(seed: int) -> DigitsConfig:
        return DigitsConfig(
            rows={
                "fixed-T20": {"num_steps": 20},
                "fixed-T2": {"num_steps": 2},
                "schedule-T2": {"num_steps": 2, "guide": "learned_schedule"},
                "hvae-T2": {"model": "hvae", "num_steps": 2, "guide_hidden": 8},
            },
            overrides={"width": 8, "batch_size": 16},
            first_updates=3,
            max_updates=6,
            test_size=12,
            iwae_k=4,
            elbo_samples=4,
            ar_hidden=16,
            ar_steps=5,
            seed=seed,
            check_convergence=False,
        )

    def run_config(self, name: str) -> RunConfig:
        return RunConfig(device="cpu", seed=self.seed, **self.overrides, **self.rows[name])


def label(config: RunConfig) -> str:
    if config.model is ModelKind.HVAE:
        return f"HVAE (learned q), T = {config.num_steps}"
    kind = "learned schedule" if config.guide is GuideKind.LEARNED_SCHEDULE else "fixed q"
    return f"{kind}, T = {config.num_steps}"


def measure(cfg: DigitsConfig, name: str, result: Converged, test: torch.Tensor) -> dict:
    run = result.kept
    model, guide = run.loaded.chain()
    config = run.loaded.config
    T = config.num_steps
    D = math.prod(test.shape[1:])
    bits = D * math.log(2)
    x = test.to(next(model.parameters()).dtype)
    out: dict = {
        "name": name,
        "label": label(config),
        "T": T,
        "updates": run.updates,
        "converged": result.converged,
        "budgets": [
            {**b, "validation_bits_per_dim": -b["validation_elbo"] / bits}
            for b in result.budget_table()
        ],
        "cpu_minutes": run.cpu_minutes,
        "validation_elbo": run.validation,
        "per_step_bits": None,
    }
    torch.manual_seed(cfg.seed + 5)
    with torch.no_grad():
        if has_closed_forms(guide):
            gen = torch.Generator().manual_seed(cfg.seed + 5)
            terms = elbo_terms(model, guide, x, generator=gen)
            elbo = terms.elbo.double()
            out["per_step_bits"] = (terms.per_step_loss.double().mean(0) / bits).tolist()
            out["prior_bits"] = terms.prior.double().mean().item() / bits
        else:
            elbo = elbo_estimate(model, guide, x, cfg.elbo_samples).values.double()
        iwae = None
        if T <= cfg.iwae_max_T:  # the literal chain is T network calls per draw
            iwae = iwae_bound(model, guide, x, cfg.iwae_k).values.double()
    out["elbo"] = mean_se(elbo)
    out["bits_per_dim"] = mean_se(-elbo / bits)
    out["iwae"] = None if iwae is None else mean_se(iwae)
    out["iwae_bits_per_dim"] = None if iwae is None else mean_se(-iwae / bits)
    if config.guide is GuideKind.LEARNED_SCHEDULE:
        g = guide.schedule.log_snr.detach()
        out["log_snr_ends"] = (g[1].item(), g[T].item())
    return out


def references(cfg: DigitsConfig, data, test) -> list[dict]:
    train_lv, test_lv = data.to_levels(data.train), data.to_levels(test)
    with Stopwatch() as clock:
        pixel = PixelCategorical.fit(train_lv, data.num_levels)
    rows = [
        {
            "name": "independent pixels (add-one categorical)",
            "bits_per_dim": mean_se(pixel.bits_per_dim(test_lv)),
            "cpu_seconds": clock.cpu_seconds,
        }
    ]
    torch.manual_seed(cfg.seed)
    ar = AutoregressiveCategorical(data.num_dims, data.num_levels, hidden=cfg.ar_hidden)
    with Stopwatch() as clock:
        ar.fit(train_lv, steps=cfg.ar_steps, weight_decay=cfg.ar_weight_decay, seed=cfg.seed)
    with torch.no_grad():
        bits = ar.bits_per_dim(test_lv)
    rows.append(
        {
            "name": f"autoregressive (MADE, {cfg.ar_hidden} hidden, raster order)",
            "bits_per_dim": mean_se(bits),
            "cpu_seconds": clock.cpu_seconds,
        }
    )
    return rows


def _table_row(r: dict, ref: dict, config: RunConfig, num_dims: int) -> dict:
    """The row as data, in nats per image; the reference is the autoregressive model's exact
    test log-likelihood."""
    nats = num_dims * math.log(2)
    keys = ("model", "guide", "num_steps", "network", "width", "batch_size", "lr", "ema_decay")
    d = config.to_dict()
    return table_row(
        label=r["label"],
        configuration={k: d[k] for k in keys},
        T=r["T"],
        elbo=r["elbo"],
        iwae=r["iwae"],
        iwae_k=None if r["iwae"] is None else 64,
        reference=(-ref["bits_per_dim"][0] * nats, ref["bits_per_dim"][1] * nats),
        reference_name="log p (autoregressive)",
        updates=r["updates"],
        cpu_minutes=r["cpu_minutes"],
        converged=r["converged"],
        extra={"bits/dim": r["bits_per_dim"]},
    )


def slower_or_looser(rows: list[dict], num_dims: int) -> dict | None:
    """The fixed-q rows with the two largest T (1000 and 100 in the study) at equal updates and
    as kept (validation bits/dim), and their test bits/dim split at the same noise level:
    the first step of the smaller T against the first T_large / T_small steps of the larger."""
    fixed = sorted((r for r in rows if r["name"].startswith("fixed")), key=lambda r: r["T"])
    if len(fixed) < 2:
        return None
    small, large = fixed[-2], fixed[-1]
    bits = num_dims * math.log(2)

    def budgets(r):
        return {b["updates"]: -b["validation_elbo"] / bits for b in r["budgets"]}

    a, b = budgets(small), budgets(large)
    ratio = large["T"] // small["T"]
    split = {}
    for r, first in ((small, 1), (large, ratio)):
        steps = np.array(r["per_step_bits"])
        rest = float(steps[first:].sum()) + r["prior_bits"]
        split[r["T"]] = {"first": float(steps[:first].sum()), "rest": rest}
    split["difference"] = {
        part: split[large["T"]][part] - split[small["T"]][part] for part in ("first", "rest")
    }
    return {
        "T": (small["T"], large["T"]),
        "equal_updates": {u: (a[u], b[u], b[u] - a[u]) for u in sorted(set(a) & set(b))},
        "kept": (
            -small["validation_elbo"][0] / bits,
            -large["validation_elbo"][0] / bits,
            (small["validation_elbo"][0] - large["validation_elbo"][0]) / bits,
        ),
        "test_split_bits": split,
        "first_steps": ratio,
    }


def figure(rows: list[dict], refs: list[dict], num_dims: int) -> Figure:
    fig = Figure(figsize=(19, 4.8), layout="constrained")
    curves, left, right = fig.subplots(1, 3, width_ratios=[1, 1.3, 1])
    bits = num_dims * math.log(2)
    for i, r in enumerate(rows):
        for b in r["budgets"]:
            u = [p["updates"] for p in b["curve"]]
            e = [-p["elbo"] / bits for p in b["curve"]]
            kept = b["updates"] == r["updates"]
            curves.plot(
                u,
                e,
                "o-" if kept else "o:",
                ms=3,
                color=f"C{i}",
                label=r["label"] if kept else None,
            )
    curves.set_xlabel("updates (dotted: the other budgets of the doubling)")
    curves.set_ylabel("validation bits/dim (ELBO)")
    curves.set_title("convergence on the validation split")
    curves.legend(fontsize=7)
    curves.grid(alpha=0.3)
    labels = [r["label"] for r in rows] + [r["name"] for r in refs]
    vals = [r["bits_per_dim"] for r in rows] + [r["bits_per_dim"] for r in refs]
    colors = [f"C{i}" for i in range(len(rows))] + ["0.5"] * len(refs)
    y = np.arange(len(labels))[::-1]
    m = np.array([v[0] for v in vals])
    s = np.array([v[1] for v in vals])
    left.barh(y, m, xerr=2 * s, color=colors, capsize=3)
    for yi, mi in zip(y, m, strict=True):
        left.text(mi, yi, f" {mi:.3f}", va="center", fontsize=8)
    left.set_yticks(y, labels, fontsize=8)
    left.set_xlabel("test bits/dim (upper bound for model rows; exact for grey rows)")
    left.set_xlim(0, max(m) * 1.2)
    left.set_title("digits, test split; lower is better, ±2 SE")
    left.grid(alpha=0.3, axis="x")
    for i, r in enumerate(rows):
        if r["per_step_bits"] is None or r["T"] < 20:
            continue
        steps = np.array(r["per_step_bits"])
        t = np.arange(1, len(steps) + 1) / len(steps)
        right.plot(t, np.cumsum(steps), lw=2, color=f"C{i}", label=r["label"])
    right.set_xscale("log")
    right.set_xlabel("t / T (log scale)")
    right.set_ylabel("test bits/dim from steps 1 … t")
    right.set_title("where the bound is spent")
    right.legend(fontsize=8)
    right.grid(alpha=0.3, which="both")
    return fig


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(__doc__.splitlines()[0], argv, "study_digits")
    cfg = DigitsConfig.quick(args.seed) if args.quick else DigitsConfig(seed=args.seed)
    base = args.out if args.out is not None else OUTPUTS / "study_digits"
    root = base / ("quick_runs" if args.quick else "runs")
    data = load_digits(torch.get_default_dtype())
    test = data.test if cfg.test_size is None else data.test[: cfg.test_size]
    rows, configs = [], {}
    for name in cfg.rows:
        configs[name] = cfg.run_config(name)
        result = train_to_convergence(
            configs[name],
            root / name,
            first_updates=cfg.first_updates,
            max_updates=cfg.max_updates,
            check=cfg.check_convergence,
        )
        rows.append(measure(cfg, name, result, test))
        r = rows[-1]
        print(
            f"{r['label']}: {r['updates']} updates (converged: {converged_text(r['converged'])}), "
            f"test {pm(*r['bits_per_dim'])} bits/dim",
            flush=True,
        )
    refs = references(cfg, data, test)
    D = data.num_dims
    save_figure(figure(rows, refs, D), args.outputs.figure("study_digits.png"))
    k = cfg.iwae_k
    cells = []
    for r in rows:
        iw = r["iwae_bits_per_dim"]
        ends = r.get("log_snr_ends")
        cells.append(
            [
                r["label"],
                pm(*r["bits_per_dim"]),
                pm(*iw) if iw else "—",
                "; ".join(
                    f"{b['updates']}: {b['validation_bits_per_dim']:.3f}" for b in r["budgets"]
                ),
                f"{ends[0]:.2f} … {ends[1]:.2f}" if ends else "—",
            ]
        )
    for r in refs:
        cells.append([r["name"], pm(*r["bits_per_dim"]), "(exact)", "—", "—"])
    tables = {
        "bits": named_table(
            [
                "model",
                "test bits/dim (ELBO)",
                f"IWAE-{k} bits/dim",
                "validation bits/dim by updates",
                "learned log-SNR γ_1 … γ_T",
            ],
            cells,
        )
    }
    print(
        f"\ndigits test split ({test.shape[0]} images, 64 pixels, 17 levels): bits/dim ± one "
        "standard error over the test images; validation bits/dim of each budget tried.\n"
    )
    print(markdown(tables["bits"]))
    question = slower_or_looser(rows, D)
    if question is not None:
        Ts, Tl = question["T"]
        cells = [
            [f"validation, {u} updates each", f"{a:.3f}", f"{b:.3f}", f"{d:+.3f}"]
            for u, (a, b, d) in question["equal_updates"].items()
        ]
        a, b, d = question["kept"]
        cells.append(["validation, runs kept", f"{a:.3f}", f"{b:.3f}", f"{d:+.3f}"])
        split = question["test_split_bits"]
        first = question["first_steps"]
        for part, what in (
            ("first", f"t = 1 of T = {Ts} / t ≤ {first} of T = {Tl}"),
            ("rest", "the other steps and the prior"),
        ):
            a, b, d = split[Ts][part], split[Tl][part], split["difference"][part]
            cells.append([f"test, {what}", f"{a:.3f}", f"{b:.3f}", f"{d:+.3f}"])
        tables["slower_or_looser"] = named_table(
            ["bits/dim", f"T = {Ts}", f"T = {Tl}", "difference"], cells
        )
        print(f"\nT = {Tl} against T = {Ts}:\n")
        print(markdown(tables["slower_or_looser"]))
    results = {
        "config": {**asdict(cfg)},
        "rows": rows,
        "references": refs,
        "slower_or_looser": question,
        "table": [_table_row(r, refs[-1], configs[r["name"]], D) for r in rows],
        "tables": tables,
    }
    args.outputs.write_results(results)
    return results


if __name__ == "__main__":
    main()
