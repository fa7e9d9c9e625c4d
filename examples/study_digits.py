"""Study (d): test bits/dim on the 8×8 digits, diffusion bounds against exact-likelihood references.

Every diffusion row uses the same model structure (a :class:`~pyrodiff.networks.UNetDenoiser`,
ε-prediction, a learned variance per step, the discretised Gaussian decoder on the 17 grey
levels) and the same number of updates on the same split (:func:`~pyrodiff.data.load_digits`);
only T and the guide change:

* fixed q (the forward chain) at large T and at small T, trained by
  :class:`~pyrodiff.infer.DiffusionELBO`;
* a learned guide at small T (:class:`~pyrodiff.guides.LearnedGuide`, top-down, trained with
  the model by TraceMeanField_ELBO): a hierarchical VAE;
* a learned schedule (:class:`~pyrodiff.guides.LearnedScheduleGuide`, ends included) at small T.

The test bound of closed-form guides is summed term by term (:func:`~pyrodiff.infer.elbo_terms`);
that of the learned guide is a Monte-Carlo ELBO (:func:`~pyrodiff.infer.elbo_estimate`).
References, computed here with exact likelihoods (:mod:`pyrodiff.baselines`): every pixel an
independent 17-way categorical (add-one smoothed counts), and a small autoregressive model
(MADE, raster order) trained by maximum likelihood.

    python examples/study_digits.py            # ≈ 10 minutes on one free core
    python examples/study_digits.py --quick    # seconds; what the tests run
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from _study_common import (
    Stopwatch,
    markdown_table,
    mean_se,
    parse_args,
    pm,
    timed_fit,
)
from _tables import table_row
from matplotlib.figure import Figure
from pyro.infer import TraceMeanField_ELBO

from pyrodiff import Diffusion, ForwardGuide, ReverseVariance, linear_schedule
from pyrodiff.baselines import AutoregressiveCategorical, PixelCategorical
from pyrodiff.data import load_digits
from pyrodiff.guides import GuideStructure, LearnedGuide, LearnedScheduleGuide
from pyrodiff.infer import DiffusionELBO, elbo_estimate, elbo_terms, iwae_bound
from pyrodiff.networks import UNetDenoiser
from pyrodiff.plots import save_figure


class GuideKind(enum.Enum):
    FIXED = "fixed q"
    LEARNED = "learned q (HVAE)"
    SCHEDULE = "learned schedule"


@dataclass(frozen=True)
class DigitsConfig:
    large_T: int = 1000
    small_T: int = 4
    base: int = 16
    steps: int = 600
    batch_size: int = 128
    lr: float = 2e-3
    guide_hidden: int = 128
    test_size: int | None = None
    elbo_samples: int = 16
    iwae_k: int = 64
    ar_hidden: int = 128
    ar_steps: int = 1000
    ar_weight_decay: float = 0.1
    seed: int = 0

    @staticmethod
    def quick(seed: int) -> DigitsConfig:
        return DigitsConfig(
            large_T=20,
            small_T=2,
            base=8,
            steps=4,
            batch_size=16,
            guide_hidden=16,
            test_size=12,
            elbo_samples=4,
            iwae_k=4,
            ar_hidden=16,
            ar_steps=5,
            seed=seed,
        )

    def arms(self) -> list[tuple[GuideKind, int]]:
        # a learned schedule at large T would cost another large-T run; at small T, where the
        # fixed chain's first step is coarse (β_1 ≈ 0.48 at T = 4), is where it can matter
        return [
            (GuideKind.FIXED, self.large_T),
            (GuideKind.FIXED, self.small_T),
            (GuideKind.LEARNED, self.small_T),
            (GuideKind.SCHEDULE, self.small_T),
        ]


def run_arm(cfg: DigitsConfig, kind: GuideKind, T: int, data, test) -> dict:
    torch.manual_seed(cfg.seed)  # the same initial network in every row
    schedule = linear_schedule(T)
    model = Diffusion(
        UNetDenoiser(channels=1, image_size=8, base=cfg.base),
        schedule,
        likelihood=data.likelihood(),
        variance=ReverseVariance.PER_STEP,
    )
    if kind is GuideKind.FIXED:
        guide, loss = ForwardGuide(schedule), DiffusionELBO()
    elif kind is GuideKind.SCHEDULE:
        guide, loss = LearnedScheduleGuide.for_model(model), DiffusionELBO()
    else:
        guide = LearnedGuide(model, GuideStructure.TOP_DOWN, hidden=cfg.guide_hidden)
        guide.to(torch.get_default_dtype())
        loss = TraceMeanField_ELBO()  # valid: the guide is top-down
    train = data.train.to(torch.get_default_dtype())
    clock = timed_fit(
        model,
        guide,
        train,
        loss,
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        seed=cfg.seed,
    )
    D = data.num_dims
    torch.manual_seed(cfg.seed + 5)
    out = {"guide": kind, "T": T, "seconds": clock.seconds, "cpu_seconds": clock.cpu_seconds}
    with torch.no_grad():
        if kind is GuideKind.LEARNED:
            est = elbo_estimate(model, guide, test, cfg.elbo_samples)
            elbo, per_step = est.values.double(), None
        else:
            gen = torch.Generator().manual_seed(cfg.seed + 5)
            terms = elbo_terms(model, guide, test, generator=gen)
            elbo = terms.elbo.double()
            per_step = (terms.per_step_loss.mean(0) / (D * math.log(2))).tolist()
            out["prior_bits"] = terms.prior.mean().item() / (D * math.log(2))
        iwae = None
        if T <= 10:  # the literal chain is T network calls per draw: affordable at small T
            iwae = iwae_bound(model, guide, test, cfg.iwae_k).values.double()
    bits = -elbo / (D * math.log(2))
    out["elbo"] = mean_se(elbo)
    out["iwae"] = None if iwae is None else mean_se(iwae)
    out["bits_per_dim"] = mean_se(bits)
    out["per_step_bits"] = per_step
    if iwae is not None:
        out["iwae_bits_per_dim"] = mean_se(-iwae / (D * math.log(2)))
    if kind is GuideKind.SCHEDULE:
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
            "seconds": clock.seconds,
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
            "seconds": clock.seconds,
            "cpu_seconds": clock.cpu_seconds,
        }
    )
    return rows


def _table_row(cfg: DigitsConfig, r: dict, ref: dict, num_dims: int) -> dict:
    """The row as data, in nats per image; the reference is the autoregressive model's exact
    test log-likelihood."""
    nats = num_dims * math.log(2)
    keys = ("base", "batch_size", "lr", "guide_hidden", "test_size")
    return table_row(
        label=_label(r),
        configuration={k: getattr(cfg, k) for k in keys} | {"guide": r["guide"].name},
        T=r["T"],
        elbo=r["elbo"],
        iwae=r["iwae"],
        iwae_k=cfg.iwae_k if r["iwae"] is not None else None,
        reference=(-ref["bits_per_dim"][0] * nats, ref["bits_per_dim"][1] * nats),
        reference_name="log p (autoregressive)",
        updates=cfg.steps,
        cpu_minutes=r["cpu_seconds"] / 60,
        converged=None,  # doubling the updates was not measured
        extra={"bits/dim": r["bits_per_dim"]},
    )


def _label(r: dict) -> str:
    return f"{r['guide'].value}, T = {r['T']}"


def figure(cfg: DigitsConfig, rows: list[dict], refs: list[dict]) -> Figure:
    fig = Figure(figsize=(13, 4.6), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[1.3, 1])
    labels = [_label(r) for r in rows] + [r["name"] for r in refs]
    vals = [r["bits_per_dim"] for r in rows] + [r["bits_per_dim"] for r in refs]
    colors = [f"C{list(GuideKind).index(r['guide'])}" for r in rows] + ["0.5"] * len(refs)
    y = np.arange(len(labels))[::-1]
    m = np.array([v[0] for v in vals])
    s = np.array([v[1] for v in vals])
    left.barh(y, m, xerr=2 * s, color=colors, capsize=3)
    for yi, mi in zip(y, m, strict=True):
        left.text(mi, yi, f" {mi:.2f}", va="center", fontsize=8)
    left.set_yticks(y, labels, fontsize=8)
    left.set_xlabel("test bits/dim (upper bound for diffusion rows; exact for grey rows)")
    left.set_xlim(0, max(m) * 1.18)
    left.set_title("digits, test split (297 images); lower is better, ±2 SE")
    left.grid(alpha=0.3, axis="x")
    for r in rows:
        if r["per_step_bits"] is None or r["T"] < 20:
            continue
        bits = np.array(r["per_step_bits"])
        t = np.arange(1, len(bits) + 1)
        right.plot(t, np.cumsum(bits), lw=2, label=_label(r))
        right.axhline(bits.sum() + r["prior_bits"], ls=":", lw=1, color=right.lines[-1].get_color())
    right.set_xscale("log")
    right.set_xlabel("t (log scale)")
    right.set_ylabel("test bits/dim from steps 1 … t")
    right.set_title("where the bound is spent (dotted: total)")
    right.legend(fontsize=8)
    right.grid(alpha=0.3, which="both")
    return fig


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(__doc__.splitlines()[0], argv, "study_digits")
    cfg = DigitsConfig.quick(args.seed) if args.quick else DigitsConfig(seed=args.seed)
    data = load_digits(torch.get_default_dtype())
    test = data.test if cfg.test_size is None else data.test[: cfg.test_size]
    rows = []
    for kind, T in cfg.arms():
        rows.append(run_arm(cfg, kind, T, data, test))
        r = rows[-1]
        print(f"{_label(r)}: {pm(*r['bits_per_dim'])} bits/dim, {r['seconds']:.0f} s", flush=True)
    refs = references(cfg, data, test)
    save_figure(figure(cfg, rows, refs), args.outputs.figure("study_digits.png"))
    k = cfg.iwae_k
    table = []
    for r in rows:
        iw = r.get("iwae_bits_per_dim")
        small = ""
        if r["per_step_bits"] is not None and r["T"] >= 20:
            steps = np.array(r["per_step_bits"])
            small = f"{steps[:10].sum():.2f} / {steps[:100].sum():.2f}"
        ends = r.get("log_snr_ends")
        table.append(
            [
                _label(r),
                pm(*r["bits_per_dim"]),
                pm(*iw) if iw else "—",
                small or "—",
                f"{ends[0]:.2f} … {ends[1]:.2f}" if ends else "—",
                f"{r['cpu_seconds']:.0f}",
            ]
        )
    for r in refs:
        table.append(
            [r["name"], pm(*r["bits_per_dim"]), "(exact)", "—", "—", f"{r['cpu_seconds']:.0f}"]
        )
    print(
        f"\ndigits test split ({test.shape[0]} images, 64 pixels, 17 levels). Diffusion rows: "
        f"U-Net base {cfg.base}, {cfg.steps} updates of {cfg.batch_size}; bits/dim ± one "
        "standard error over the test images; training time in CPU seconds of one thread.\n"
    )
    print(
        markdown_table(
            [
                "model",
                "test bits/dim (ELBO)",
                f"IWAE-{k} bits/dim",
                "bits/dim from t ≤ 10 / t ≤ 100",
                "learned log-SNR γ_1 … γ_T",
                "train CPU s",
            ],
            table,
        )
    )
    results = {
        "config": asdict(cfg),
        "rows": [{**r, "guide": r["guide"].name} for r in rows],
        "references": refs,
        "table": [_table_row(cfg, r, refs[-1], data.num_dims) for r in rows],
    }
    args.outputs.write_results(results)
    return results


if __name__ == "__main__":
    main()
