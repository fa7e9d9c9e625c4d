"""The report objects behind ``pyrodiff evaluate`` and ``compare``: what their numbers are."""

import math
import re

import pytest
import torch

from pyrodiff.train.history import History
from pyrodiff.train.report import ComparisonReport, DataGap, ELBOEvaluation, EvaluationReport


def test_the_gap_to_the_data_is_paired_over_the_data():
    """ELBO(x) = log p(x) − 0.3 + ε: the data's spread (std 2) is shared and cancels, so the
    gap's SE is that of ε alone, std(ε)/√N, far below the two SEs combined."""
    g = torch.Generator().manual_seed(0)
    n = 400
    log_p = 2.0 * torch.randn(n, generator=g, dtype=torch.float64)
    eps = 0.05 * torch.randn(n, generator=g, dtype=torch.float64)
    gap = DataGap.paired(log_p, log_p - 0.3 + eps)
    assert gap.gap == pytest.approx(0.3 - eps.mean().item(), abs=1e-12)
    assert gap.gap_se == pytest.approx(eps.std().item() / math.sqrt(n), rel=1e-12)
    assert gap.log_p == pytest.approx(log_p.mean().item(), rel=1e-12)
    combined = math.hypot(gap.log_p_se, (log_p - 0.3 + eps).std().item() / math.sqrt(n))
    assert gap.gap_se < combined / 20


def _evaluation(**kw) -> ELBOEvaluation:
    per_datum = torch.tensor([-1.0, -2.0, -3.0], dtype=torch.float64)
    return ELBOEvaluation(
        elbo=-2.0, elbo_se=per_datum.std().item() / math.sqrt(3), estimator="closed_form",
        per_datum=per_datum, reconstruction=-0.5, prior=0.01, per_step_loss=[0.5, 1.0, 0.49],
        **kw,
    )  # fmt: skip


def test_an_evaluation_record_keeps_the_keys_fit_has_always_written():
    record = _evaluation().to_dict()
    assert set(record) == {
        "elbo", "elbo_se", "reconstruction", "prior", "per_step_loss", "estimator",
        "bits_per_dim",
    }  # fmt: skip
    assert "per_datum" not in record


def test_the_report_says_whether_it_drew_training_noise():
    base = EvaluationReport(num_data=3, seed=7919, elbo=_evaluation(), training_seed=7919)
    same = EvaluationReport(**{**base.__dict__, "same_noise_as_training": True})
    other = EvaluationReport(**{**base.__dict__, "seed": 0, "same_noise_as_training": False})
    assert "the same noise" in same.table()
    assert "new evaluation noise" in other.table() and "seed 7919" in other.table()
    assert other.to_dict()["seed"] == 0
    # nothing of training's to compare with (a split it never evaluated): the seed alone
    assert "noise" not in base.table()
    # the ELBO is printed with its SE
    assert f"-2.0000 ± {base.elbo.elbo_se:.4f} nats/datum" in base.table()


def test_the_comparison_labels_the_last_batch_as_noisy_and_shows_minus_h():
    class Density:
        entropy, entropy_se = 1.845, 0.0012

    records = (
        {"step": 1, "kind": "train", "loss": 1.0, "elbo_per_datum": -0.75, "lr": 1e-3},
        {"step": 1, "kind": "eval", "split": "validation", "elbo": -2.5, "elbo_se": 0.03},
        {"step": 1, "kind": "eval", "split": "test", "elbo": -2.4, "elbo_se": 0.02},
    )
    report = ComparisonReport.of({"a": History(records)}, {"a": Density()})
    header, row = report.table().splitlines()
    assert "last batch ELBO (noisy)" in header and "-H (data)" in header
    assert "-1.8450 ± 0.0012" in row and "-2.4000 ± 0.0200" in row
    assert report.to_dict()["runs"][0]["neg_entropy"] == -1.845
    assert report.entropy == 1.845  # one reference line for the figure
    # no density known: no −H column, no line
    unknown = ComparisonReport.of({"a": History(records), "b": History(records)}, {"a": Density()})
    assert "-H" in unknown.table() and unknown.entropy is None
    assert "-H" not in ComparisonReport.of({"a": History(records)}).table()


def test_the_share_of_the_bound_at_small_noise_is_given_for_quantised_data_only():
    """On continuous data log p(x_0 | x_1) is a density and can exceed 0, so a "share of
    −ELBO" at t ≤ 10 could be negative; with a discretised decoder every term is a loss."""
    per_datum = torch.tensor([-2.0, -2.0], dtype=torch.float64)
    terms = [-3.0] + [0.5] * 11  # a reconstruction density above 1, then KL terms
    continuous = ELBOEvaluation(
        elbo=-2.5, elbo_se=0.1, estimator="closed_form", per_datum=per_datum,
        reconstruction=3.0, prior=0.0, per_step_loss=terms,
    )  # fmt: skip
    assert "share" not in EvaluationReport(num_data=2, seed=0, elbo=continuous).table()
    losses = [1.0] * 12
    quantised = ELBOEvaluation(
        elbo=-12.0, elbo_se=0.1, estimator="closed_form", per_datum=per_datum,
        reconstruction=-1.0, prior=0.0, per_step_loss=losses, bits_per_dim=8.6,
    )  # fmt: skip
    table = EvaluationReport(num_data=2, seed=0, elbo=quantised).table()
    assert re.search(r"^-ELBO share at t <= 10 +83\.3 %$", table, re.M)
