"""examples/study_adaptive_digits.py: its quick run, and the arithmetic its tables rest on."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study_adaptive_digits")
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import study_adaptive_digits

        study_adaptive_digits.main(["--quick", "--runs", str(tmp / "runs"), "--out", str(tmp)])
    finally:
        sys.path.remove(str(ROOT / "examples"))
    return tmp, json.loads((tmp / "study_adaptive_digits.json").read_text())


def test_every_arm_has_a_row_a_budget_and_a_test_figure(quick):
    tmp, results = quick
    arms = results["arms"]
    assert set(arms) == {"linear", "learned", "per_dimension", "adaptive"}
    assert len(results["tables"]["digits"]["rows"]) == 4
    for arm in arms.values():
        assert arm["budgets"] and arm["test_se"] > 0
        assert arm["validation_bpd_at_100"] is not None
    # the per-pixel schedule of the adaptive arm, as images
    assert (tmp / "adaptive_digits_log_snr.png").stat().st_size > 0
    # a run found in --runs is read again, not retrained: the same file gives the same row
    assert (tmp / "runs").is_dir()


def test_paired_differences_are_the_differences_of_the_means(quick):
    _, results = quick
    arms = results["arms"]
    base = arms["learned"]["test_bpd"]
    for name, arm in arms.items():
        if name == "learned":
            assert "test_minus_learned" not in arm
            continue
        # the mean of per-image differences is the difference of the means (same images; the
        # bits are float32, ~14 here: rounding ~1e-6)
        assert arm["test_minus_learned"]["mean"] == pytest.approx(arm["test_bpd"] - base, abs=1e-5)
        assert arm["test_minus_learned"]["se"] > 0


def test_a_doubling_not_run_ends_the_sequence_not_converged():
    import torch

    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from _converge import paired_doubling
    finally:
        sys.path.remove(str(ROOT / "examples"))
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(400, generator=gen)
    # every doubling gains 1 (far above 2 paired SE), but only the 1000 and 2000 runs exist
    trained = []

    def train(n):
        trained.append(n)
        return {"n": n, "bound": noise + n / 1000}

    runs, kept, verdict, gains = paired_doubling(
        train,
        lambda r: r["bound"],
        first_updates=1000,
        max_updates=8000,
        available=lambda n: n <= 2000,
    )
    assert trained == [1000, 2000] and kept["n"] == 2000 and verdict is False
    assert len(gains) == 1 and gains[0].gain == pytest.approx(1.0)


def test_each_dropout_rate_and_width_has_its_own_results_file():
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import study_adaptive_digits as study
    finally:
        sys.path.remove(str(ROOT / "examples"))
    assert study.results_name(0.1) == "study_adaptive_digits"
    assert study.results_name(0.3) == "study_adaptive_digits_d0.3"
    assert study.results_name(0.0) == "study_adaptive_digits_d0"
    assert study.results_name(0.1, 48) == "study_adaptive_digits_w48"
    assert study.results_name(0.2, 48) == "study_adaptive_digits_d0.2_w48"
    assert study.results_name(0.1, 32) == "study_adaptive_digits"
    with pytest.raises(SystemExit):
        study.main(["--quick", "--dropout", "1.0"])
    with pytest.raises(SystemExit):
        study.main(["--quick", "--width", "0"])
    with pytest.raises(SystemExit):
        study.main(["--quick", "--reference-width", "0"])
    with pytest.raises(SystemExit):
        study.main(["--quick", "--reference-dropout", "-0.1"])


def test_variants_are_read_from_runs_and_paired_on_validation(quick):
    tmp, _ = quick
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import continuous_digits
        import study_adaptive_digits as study

        runs = tmp / "runs"
        with pytest.raises(SystemExit, match="no run"):
            study.main(["--quick", "--runs", str(runs), "--no-train", "--arms", "learned",
                        "--variant-dropouts", "0.2", "--out", str(tmp / "v")])  # fmt: skip
        continuous_digits.main(["--quick", "--dropout", "0.2", "--out", str(runs)])
        results = study.main(["--quick", "--runs", str(runs), "--no-train", "--arms", "learned",
                              "--variant-dropouts", "0.2", "--out", str(tmp / "v")])  # fmt: skip
    finally:
        sys.path.remove(str(ROOT / "examples"))
    learned = results["arms"]["learned"]
    (variant,) = learned["variants"]
    assert variant["dropout"] == 0.2
    # the paired mean is the difference of the two runs' validation means (the same images)
    diff = variant["validation_bpd"] - learned["validation_bpd"]
    assert variant["minus_study"]["mean"] == pytest.approx(diff, abs=1e-5)
    assert len(results["tables"]["digits_variants"]["rows"]) == 1


@pytest.mark.parametrize("dropout, width", [(0.1, 48), (0.2, 48), (0.2, 32)])
def test_a_setting_is_compared_with_the_reference_at_the_budget_its_rule_keeps(
    tmp_path, dropout, width
):
    """reference_row reads the reference setting's doubling sequence from --runs (never trains
    it), keeps the budget the paired rule keeps and pairs the two kept runs per validation
    image; the reference need not be the default setting."""
    import argparse

    import torch

    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import continuous_digits
        import study_adaptive_digits as study
    finally:
        sys.path.remove(str(ROOT / "examples"))
    # the study at (dropout, width) against a reference at dropout 0.1 and width 48 or 32
    reference = study.Setting(0.1, 48 if (dropout, width) == (0.2, 48) else 32)
    args = argparse.Namespace(
        quick=False, runs=tmp_path, first_updates=2000, max_updates=8000, no_train=True,
        latent_dim=8, dropout=dropout, width=width,
        reference_dropout=reference.dropout, reference_width=reference.width,
    )  # fmt: skip
    with pytest.raises(SystemExit, match="no run"):
        study.reference_row("learned", {}, args)
    noise = 2.0 + torch.rand(200, generator=torch.Generator().manual_seed(0))
    # bits/dim at the reference: 2000 -> 4000 gains 1, 4000 -> 8000 loses 0.5, so the rule
    # keeps 4000 (converged)
    for updates, shift in ((2000, 1.0), (4000, 0.0), (8000, 0.5)):
        tag = study._tag("learned", updates, args, *reference)
        assert f"d{reference.dropout:g}" in tag and (
            f"w{reference.width}" in tag or reference.width == continuous_digits.WIDTH
        )
        bits = noise + shift
        torch.save(bits, tmp_path / f"{tag}.valid_bits.pt")
        summary = {"validation_bpd": bits.mean().item(), "validation_se": 0.01}
        (tmp_path / f"{tag}.json").write_text(json.dumps(summary))
    # a run at the study's own setting in --runs is not the reference
    own = study._tag("learned", 2000, args)
    assert own != study._tag("learned", 2000, args, *reference)
    wide = {
        "updates": 4000,
        "validation_bpd": 1.0,
        "validation_se": 0.01,
        "valid_bits": noise - 0.2,
    }
    row, numbers = study.reference_row("learned", wide, args)
    assert numbers["updates"] == 4000
    assert (numbers["dropout"], numbers["width"]) == tuple(reference)
    assert numbers["validation_se"] == 0.01
    assert numbers["minus_it"]["mean"] == pytest.approx(-0.2, abs=1e-5)
    assert row[1].endswith("(4000)") and row[2].endswith("(4000)")
