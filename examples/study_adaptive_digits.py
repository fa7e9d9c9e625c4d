"""Study (g) on the digits: four noise processes at T = ∞, each budget judged by the paired rule.

    python examples/study_adaptive_digits.py --runs DIR --write-docs   # trains what DIR lacks
    python examples/study_adaptive_digits.py --quick                   # seconds (the tests)

The arms are `examples/continuous_digits.py` runs (a U-Net with Fourier features, dropout 0.1
for every arm, batches of 128, Adam with warm-up and cosine decay): ``linear`` (fixed q),
``learned`` (a learned scalar log-SNR), ``per_dimension`` (a learned curve per pixel) and
``adaptive`` (a curve per pixel conditioned on z: MuLAN). Each arm's budgets double from
``--first-updates`` until a doubling gains less than 2 paired SE on validation, the per-image
bounds of the two budgets drawn with common random numbers (`_converge.paired_doubling`), or
``--max-updates`` comes first. The test split is read once, for the budget kept, every arm with
the same evaluation seed, so the arms' differences are paired per image too. Runs found in
``--runs`` (their JSON, weights and per-image validation bounds) are read, not retrained.
``--dropout`` sets every arm's rate alike and ``--width`` every arm's U-Net base width; a
setting other than the default has its own results file (``study_adaptive_digits_d<rate>.json``,
``…_w<width>.json``), so each file compares arms trained the same way. At a setting other than
the reference (``--reference-dropout``, ``--reference-width``; by default dropout 0.1 at width
32) each arm is also paired on validation with the same arm at the reference setting, whose
runs ``--runs`` must hold (they are read by the same rule, never trained).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import NamedTuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import continuous_digits as cd  # noqa: E402
from _converge import paired_doubling, paired_gain  # noqa: E402
from _outputs import add_output_arguments, outputs  # noqa: E402
from _tables import markdown, named_table  # noqa: E402

from pyrodiff.data import get_dataset  # noqa: E402
from pyrodiff.infer import ContinuousELBO  # noqa: E402
from pyrodiff.modules import parameter_count  # noqa: E402
from pyrodiff.plots import plot_schedule_images, save_figure  # noqa: E402

NAME = "study_adaptive_digits"
DROPOUT = 0.1  # every arm's, unless --dropout says otherwise


def results_name(dropout: float, width: int = cd.WIDTH) -> str:
    """The results file's stem: one per dropout rate and U-Net width, so that each file compares
    arms trained alike (the default settings keep the plain name)."""
    stem = NAME if dropout == DROPOUT else f"{NAME}_d{dropout:g}"
    return stem if width == cd.WIDTH else f"{stem}_w{width}"


class Setting(NamedTuple):
    """What the study holds alike across arms, besides the budget rule."""

    dropout: float
    width: int


ARMS = {
    "linear": "fixed q",
    "learned": "learned scalar schedule",
    "per_dimension": "learned schedule per pixel",
    "adaptive": "MuLAN (per pixel, with z)",
}
TEST_SEED = 2  # one seed for every arm: the same t, ε (and z noise) per test image


def _argv(arm: str, updates: int, args) -> list[str]:
    argv = ["--schedule", arm, "--updates", str(updates), "--dropout", str(args.dropout)]
    argv += ["--width", str(args.width)]  # --quick replaces it with its own
    argv += ["--latent-dim", str(args.latent_dim), "--passes", str(args.passes)]
    argv += ["--also-steps", "100", "--out", str(args.runs)]
    return argv + (["--quick"] if args.quick else [])


def _tag(
    arm: str, updates: int, args, dropout: float | None = None, width: int | None = None
) -> str:
    """The stem continuous_digits gives the run of ``arm`` at ``updates`` (its quick settings
    under --quick), with the study's dropout and width unless others are given."""
    run = argparse.Namespace(
        updates=cd.QUICK["updates"] if args.quick else updates,
        schedule=arm,
        fourier=[3, 4, 5],
        width=width if width is not None else cd.QUICK["width"] if args.quick else args.width,
        latent_dim=args.latent_dim,
        dropout=args.dropout if dropout is None else dropout,
        num_steps=None,
    )
    return cd.run_tag(run)


def variant_rows(base: dict, args) -> tuple[list[list], list[dict]]:
    """The learned scalar schedule at ``base``'s budget with one setting changed (a dropout rate
    of ``--variant-dropouts`` or a U-Net width of ``--variant-widths``), read from ``--runs``
    (never trained here): its validation bits/dim, and its difference from ``base`` paired per
    validation image (the same evaluation seed). Validation only: the settings are chosen on
    it, and the test split is read for the study's setting alone."""
    rows, numbers = [], []
    changes = [("dropout", d) for d in args.variant_dropouts]
    changes += [("width", w) for w in args.variant_widths]
    for what, value in changes:
        tag = _tag("learned", base["updates"], args, **{what: value})
        path = args.runs / f"{tag}.json"
        if not path.is_file():
            raise SystemExit(f"--variant-{what}s {value}: no run {path} (train it first)")
        run = json.loads(path.read_text())
        diff = paired_gain(base["valid_bits"], torch.load(args.runs / f"{tag}.valid_bits.pt"), 0, 0)
        label = f"dropout {value:g}" if what == "dropout" else f"U-Net base width {value}"
        numbers.append(
            {
                what: value,
                "validation_bpd": run["validation_bpd"],
                "validation_se": run["validation_se"],
                "minus_study": {"mean": diff.gain, "se": diff.se},
                "cpu_minutes": run["cpu_seconds"] / 60,
            }
        )
        rows.append(
            [
                label,
                f"{run['validation_bpd']:.3f} ± {run['validation_se']:.3f}",
                f"{diff.gain:+.4f} ± {diff.se:.4f}",
                f"{run['cpu_seconds'] / 60:.1f}",
            ]
        )
    return rows, numbers


def train_or_read(arm: str, updates: int, args, setting: Setting | None = None) -> dict:
    """A run's result (its JSON, plus the per-image validation bits), trained if absent (at the
    study's setting only: a run at another ``setting`` is read, never trained)."""
    tag = _tag(arm, updates, args, *(setting or ()))
    path = args.runs / f"{tag}.json"
    if not path.is_file():
        if setting is not None:
            raise SystemExit(f"no run {path} (train it first)")
        print(f"training {arm} for {updates} updates", flush=True)
        cd.main(_argv(arm, updates, args))
    result = json.loads(path.read_text())
    result["tag"] = tag
    result["updates"] = updates
    result["valid_bits"] = torch.load(args.runs / f"{tag}.valid_bits.pt")
    return result


def converge(arm: str, args, setting: Setting | None = None):
    """The arm's doubling sequence under the paired rule (``_converge.paired_doubling``): its
    runs, the one kept, the verdict and the gains. At the study's setting, runs missing from
    ``--runs`` are trained (unless ``--no-train``); at another ``setting`` they are only read."""
    read_only = args.no_train or setting is not None
    return paired_doubling(
        lambda n: train_or_read(arm, n, args, setting),
        lambda r: -r["valid_bits"],  # the bound: higher is better
        first_updates=args.first_updates,
        max_updates=args.max_updates,
        check=not args.quick,
        available=(lambda n: (args.runs / f"{_tag(arm, n, args, *(setting or ()))}.json").is_file())
        if read_only
        else None,
    )


def _setting_name(setting: Setting) -> str:
    return f"dropout {setting.dropout:g}, width {setting.width}"


def reference_row(arm: str, kept: dict, args) -> tuple[list, dict]:
    """The arm at the study's setting against the same arm at the reference setting, each at
    the budget the paired rule keeps for it (the reference runs read from ``--runs``, never
    trained): their validation bits/dim and the difference paired per validation image (the
    same evaluation seed). Validation only: the setting is chosen on it."""
    reference = Setting(args.reference_dropout, args.reference_width)
    _, base, _, _ = converge(arm, args, reference)
    diff = paired_gain(base["valid_bits"], kept["valid_bits"], 0, 0)
    row = [
        ARMS[arm],
        f"{base['validation_bpd']:.3f} ± {base['validation_se']:.3f} ({base['updates']})",
        f"{kept['validation_bpd']:.3f} ± {kept['validation_se']:.3f} ({kept['updates']})",
        f"{diff.gain:+.4f} ± {diff.se:.4f}",
    ]
    return row, {
        "dropout": reference.dropout,
        "width": reference.width,
        "updates": base["updates"],
        "validation_bpd": base["validation_bpd"],
        "validation_se": base["validation_se"],
        "minus_it": {"mean": diff.gain, "se": diff.se},
    }


def load(result: dict, args, likelihood):
    """The (model, guide) of a run, with its saved (EMA) weights, in eval mode."""
    run_args = argparse.Namespace(**result["args"], likelihood=likelihood)
    model, guide = cd.build(run_args)
    module = ContinuousELBO()(model, guide)
    module.load_state_dict(torch.load(args.runs / f"{result['tag']}.pt"))
    model.eval()
    guide.eval()
    return model, guide


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("outputs/study_adaptive_digits/runs"))
    parser.add_argument("--first-updates", type=int, default=2000)
    parser.add_argument("--max-updates", type=int, default=8000)
    parser.add_argument("--dropout", type=float, default=DROPOUT,
                        help="every arm's dropout rate; a rate other than 0.1 writes "
                             "study_adaptive_digits_d<rate>.json")  # fmt: skip
    parser.add_argument("--width", type=int, default=cd.WIDTH,
                        help="every arm's U-Net base width; a width other than "
                             f"{cd.WIDTH} writes study_adaptive_digits_w<width>.json")  # fmt: skip
    parser.add_argument("--reference-dropout", type=float, default=DROPOUT,
                        help="the reference setting's dropout rate: at any other setting each "
                             "arm is paired on validation with its reference runs (read only)")  # fmt: skip
    parser.add_argument("--reference-width", type=int, default=cd.WIDTH,
                        help="the reference setting's U-Net base width")  # fmt: skip
    parser.add_argument("--latent-dim", type=int, default=8)
    parser.add_argument("--passes", type=int, default=40, help="draws per image, validation")
    parser.add_argument("--test-passes", type=int, default=40, help="draws per image, test")
    parser.add_argument("--arms", nargs="*", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--quick", action="store_true", help="tiny settings (seconds)")
    parser.add_argument("--no-train", action="store_true",
                        help="read the budgets found in --runs; a doubling not run ends the "
                             "arm's sequence, not converged")  # fmt: skip
    parser.add_argument("--variant-dropouts", type=float, nargs="*", default=[],
                        help="also read the learned scalar schedule's runs at these dropout "
                             "rates (its kept budget; validation only)")  # fmt: skip
    parser.add_argument("--variant-widths", type=int, nargs="*", default=[],
                        help="likewise at these U-Net base widths")  # fmt: skip
    add_output_arguments(parser, NAME)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.quick:
        args.first_updates = args.max_updates = 1
        args.passes = args.test_passes = 1
    for flag in ("dropout", "reference_dropout"):
        if not 0.0 <= getattr(args, flag) < 1.0:
            parser.error(
                f"--{flag.replace('_', '-')} must be in [0, 1), got {getattr(args, flag)!r}"
            )
    for flag in ("width", "reference_width"):
        if getattr(args, flag) < 1:
            parser.error(
                f"--{flag.replace('_', '-')} must be a positive number of channels, "
                f"got {getattr(args, flag)}"
            )
    name = results_name(args.dropout, args.width)
    out = outputs(args, name)
    digits = get_dataset("digits")
    likelihood = digits.likelihood()
    rows, convergence, per_image, kept_runs, numbers = [], [], {}, {}, {}
    study_setting = Setting(args.dropout, args.width)
    reference = Setting(args.reference_dropout, args.reference_width)
    # --quick replaces every width with its own, so there is no other setting to compare
    against_reference = study_setting != reference and not args.quick
    references = []
    for arm in args.arms:
        runs, kept, verdict, gains = converge(arm, args)
        ref_cmp = reference_row(arm, kept, args) if against_reference else None
        model, guide = load(kept, args, likelihood)
        test = cd.per_image_bits(
            model,
            digits.test,
            args.test_passes,
            TEST_SEED,
            guide=guide if arm == "adaptive" else None,
        )
        per_image[arm] = test
        kept_runs[arm] = kept
        se = (test.std() / math.sqrt(len(test))).item()
        cpu = sum(r["cpu_seconds"] for r in runs) / 60
        at100 = kept.get("validation_bpd_at", {}).get("100")
        numbers[arm] = {
            "updates": kept["updates"],
            "converged": verdict,
            "validation_bpd": kept["validation_bpd"],
            "validation_se": kept["validation_se"],
            "validation_bpd_at_100": at100,
            "test_bpd": test.mean().item(),
            "test_se": se,
            "cpu_minutes_kept": kept["cpu_seconds"] / 60,
            "cpu_minutes_all": cpu,
            # model and guide share the schedule: each tensor counted once
            "parameters": parameter_count(model, guide),
            "budgets": [
                {
                    "updates": r["updates"],
                    "validation_bpd": r["validation_bpd"],
                    "validation_se": r["validation_se"],
                }
                for r in runs
            ],  # fmt: skip
            "doublings": [
                {"from": g.shorter_updates, "to": g.longer_updates, "gain": g.gain, "se": g.se}
                for g in gains
            ],
        }
        if ref_cmp is not None:
            references.append(ref_cmp[0])
            numbers[arm]["reference"] = ref_cmp[1]
        rows.append(
            [
                ARMS[arm],
                f"{kept['validation_bpd']:.3f} ± {kept['validation_se']:.3f}",
                f"{at100[0]:.3f} ± {at100[1]:.3f}" if at100 else "—",
                f"{test.mean().item():.3f} ± {se:.3f}",
                kept["updates"],
                f"{kept['cpu_seconds'] / 60:.1f} ({cpu:.1f})",
                {True: "yes", False: "no", None: "not checked"}[verdict],
            ]
        )
        convergence.append(
            [
                ARMS[arm],
                "; ".join(
                    f"{r['updates']}: {r['validation_bpd']:.3f} ± {r['validation_se']:.3f}"
                    for r in runs
                ),
                "; ".join(
                    f"{g.shorter_updates}→{g.longer_updates}: {g.gain:+.4f} ± {g.se:.4f}"
                    for g in gains
                )
                or "—",
            ]
        )
    # each arm against the learned scalar schedule, paired per test image (bits/dim; < 0: better)
    pairs = []
    if "learned" in per_image:
        for arm in args.arms:
            if arm == "learned":
                continue
            g = paired_gain(per_image["learned"], per_image[arm], 0, 0)
            pairs.append([ARMS[arm], f"{g.gain:+.4f} ± {g.se:.4f}"])
            numbers[arm]["test_minus_learned"] = {"mean": g.gain, "se": g.se}
    variants = []
    if "learned" in kept_runs and (args.variant_dropouts or args.variant_widths):
        variants, results_variants = variant_rows(kept_runs["learned"], args)
        numbers["learned"]["variants"] = results_variants
    results = {
        "settings": {k: str(v) for k, v in vars(args).items()},
        "arms": numbers,
        "tables": {
            "digits": named_table(
                [
                    "arm (T = ∞)",
                    "validation bits/dim",
                    "validation, read at T = 100",
                    "test bits/dim",
                    "updates",
                    "CPU-minutes (all budgets)",
                    "converged",
                ],
                rows,
            ),
            "digits_convergence": named_table(
                [
                    "arm",
                    "updates: validation bits/dim",
                    "paired gain of each doubling (bits/dim, > 0: better)",
                ],
                convergence,
            ),
            "digits_paired": named_table(
                ["arm", "test bits/dim minus the learned scalar schedule's, paired per image"],
                pairs,
            ),
        },
    }
    if references:
        results["tables"]["digits_reference"] = named_table(
            [
                "arm",
                f"validation bits/dim at {_setting_name(reference)} (updates kept)",
                f"at {_setting_name(study_setting)} (updates kept)",
                "the second minus the first, paired per validation image (< 0: better)",
            ],
            references,
        )
    if variants:
        results["tables"]["digits_variants"] = named_table(
            [
                "learned scalar schedule, one setting changed",
                "validation bits/dim",
                "minus the study's setting, paired per validation image (< 0: better)",
                "CPU-minutes",
            ],
            variants,
        )
    if "adaptive" in kept_runs and "log_snr_per_pixel" in kept_runs["adaptive"]:
        lam = {
            float(t): torch.tensor(v).reshape(8, 8)
            for t, v in kept_runs["adaptive"]["log_snr_per_pixel"].items()
        }
        fig = plot_schedule_images(lam, title="MuLAN on the digits: λ(t | z) per pixel")
        suffix = name.removeprefix(NAME)
        save_figure(fig, out.figure(f"adaptive_digits_log_snr{suffix}.png"))
    print(out.write_results(results))
    for table in results["tables"].values():
        print(markdown(table))
    return results


if __name__ == "__main__":
    main()
