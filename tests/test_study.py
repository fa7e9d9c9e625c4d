"""Every study script runs with --quick, writes its figure and table, and its numbers obey the
inequalities the study rests on (checked within their measured standard errors)."""

import itertools
import json
import math
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _run(name: str, tmp_path, load_example, capsys) -> tuple[dict, str]:
    module = load_example(name)
    returned = module.main(["--quick", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    png = tmp_path / f"{name}.png"
    assert png.exists() and png.stat().st_size > 10_000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the JSON copy holds the same numbers the script returned
    res = json.loads((tmp_path / f"{name}.json").read_text())
    assert res["table"] == json.loads(json.dumps(returned["table"]))
    _check_table(res)
    return res, out


def _check_table(res: dict) -> None:
    """Every study row carries the fields of a study table, with their meanings."""
    assert res["table"]
    for row in res["table"]:
        for key in ("configuration", "T", "elbo", "elbo_se", "iwae", "iwae_se", "reference",
                    "reference_name", "updates", "cpu_minutes", "converged"):  # fmt: skip
            assert key in row, key
        assert row["T"] >= 1 and row["updates"] >= 1 and row["cpu_minutes"] > 0
        assert math.isfinite(row["elbo"]) and row["elbo_se"] >= 0
        assert row["converged"] in (True, False, None)
        assert isinstance(row["reference_name"], str) and math.isfinite(row["reference"])


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (2.88, "2.9 CPU-seconds"),
        (0.012, "0.012 CPU-seconds"),
        (45.0, "45 CPU-seconds"),
        (600.0, "10.0 CPU-minutes"),
        (9000.0, "2.5 CPU-hours"),
    ],
)
def test_cpu_time_is_written_in_a_unit_that_shows_it(load_example, seconds, text):
    assert load_example("_study_common").cpu_time(seconds) == text


def _table_rows(out: str) -> list[list[str]]:
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in rows]


def test_study_exact(tmp_path, load_example, capsys):
    res, out = _run("study_exact", tmp_path, load_example, capsys)
    for run in res["runs"].values():
        # every ELBO and log p here is closed form: the bound holds datum by datum
        assert run["gap_elbo_min"] >= -1e-9
        for point in run["curve"]:
            assert point["elbo"] <= point["log_p"] + 1e-9
        # IWAE-K is a Monte-Carlo bound: below log p within its error, above the ELBO
        iwae, iwae_se = run["iwae"]
        assert iwae <= run["log_p"][0] + 4 * iwae_se + 1e-9
        assert run["gap_iwae"][0] <= run["gap_elbo"][0] + 4 * run["gap_iwae"][1] + 1e-9
    oracle = res["oracle"]
    assert oracle["max_abs_elbo_minus_log_p"] < 1e-9
    assert oracle["max_abs_log_weight_minus_log_p"] < 1e-9
    spread = oracle["spread"]
    assert spread["Trace_ELBO"]["std"] < 1e-9
    # analytic KL is not automatically lower variance: the mean-field estimate is noisy here
    assert spread["TraceMeanField_ELBO"]["std"] > 1e-3
    assert "converged: yes" not in out and "| yes |" not in out and "not checked" in out
    assert "| reverse variance |" in out and len(_table_rows(out)) == 3 * (2 + 2) + 2 + 3
    # the table rows are the kept runs' test numbers, and each run's budgets obey the rule
    for row, run in zip(res["table"], res["runs"].values(), strict=True):
        assert [row["elbo"], row["elbo_se"]] == list(run["elbo"])
        assert row["reference"] == res["log_p_data"][0]
        assert row["updates"] == run["updates"] and row["converged"] is run["converged"]
        _check_doubling(run)
    assert set(res["tables"]) == {"convergence"}


def _check_doubling(r: dict) -> None:
    """The row's budgets follow the doubling rule of examples/_converge.py: each doubling that
    was followed by another gained at least 2 SE (the paired gain and its paired SE where the
    paired rule judged them, else the validation ELBOs' difference and the shorter run's SE),
    and the run kept is the one the rule keeps. A --quick run does not check convergence: its
    verdict is None whatever its gains (a few dozen updates are far from converged, however
    noisy)."""
    budgets = r["budgets"]
    assert [b["updates"] for b in budgets] == [
        budgets[0]["updates"] * 2**i for i in range(len(budgets))
    ]
    if r.get("paired_gains") is not None:
        gains = [(g["gain"], g["se"]) for g in r["paired_gains"]]
        assert [(g["shorter_updates"], g["longer_updates"]) for g in r["paired_gains"]] == [
            (a["updates"], b["updates"]) for a, b in itertools.pairwise(budgets)
        ]
    else:
        gains = [
            (b["validation_elbo"] - a["validation_elbo"], a["validation_elbo_se"])
            for a, b in itertools.pairwise(budgets)
        ]
    assert all(g >= 2 * se for g, se in gains[:-1])
    assert r["converged"] is None
    if gains and gains[-1][0] < 2 * gains[-1][1]:
        kept = budgets[-1] if gains[-1][0] >= 0 else budgets[-2]
    else:
        kept = budgets[-1]
    assert r["updates"] == kept["updates"]
    for b in budgets:
        # the curve ends at the run's last update, and its final value is the budget's
        assert b["curve"][-1]["updates"] == b["updates"]
        assert b["curve"][-1]["elbo"] == b["validation_elbo"] and b["cpu_minutes"] > 0


def test_study_gap_vs_T(tmp_path, load_example, capsys):
    res, out = _run("study_gap_vs_T", tmp_path, load_example, capsys)
    assert [r["T"] for r in res["rows"]] == list(res["config"]["steps_list"])
    for r in res["rows"]:
        # E[log p_data − ELBO] = KL(p_data ‖ p_θ) + E[log p_θ − ELBO] ≥ 0; IWAE-K ≥ ELBO
        gap, se = r["gap_elbo"]
        assert gap > -4 * se
        assert r["iwae_minus_elbo"][0] > -4 * r["iwae_minus_elbo"][1]
        # every KL term is a closed-form KL between Gaussians, ≥ 0 datum by datum
        assert r["prior"] >= 0 and all(v >= 0 for v in r["per_step_loss"][1:])
        assert len(r["per_step_loss"]) == r["T"]
        # the grouped terms add up to the whole bound
        assert -sum(r["terms_by_t"].values()) - r["prior"] == pytest.approx(r["elbo"][0], abs=1e-6)
        _check_doubling(r)
    assert set(res["tables"]) == {"gap", "breakdown", "convergence"}
    H, H_se = res["entropy"]
    assert math.isfinite(H) and H_se >= 0
    assert len(_table_rows(out)) == 3 * (2 + len(res["rows"]))
    for row, r in zip(res["table"], res["rows"], strict=True):
        assert row["T"] == r["T"] and [row["elbo"], row["elbo_se"]] == r["elbo"]
        assert row["reference"] == -H and row["converged"] is r["converged"]
        assert row["updates"] == r["updates"]
    # --kernel-only recomputes ELBO* alone from the results file: with the same draws it gives
    # exactly the file a full run wrote, so the docs can refresh that part without training
    again = load_example("study_gap_vs_T").main(
        ["--quick", "--out", str(tmp_path), "--kernel-only"]
    )
    assert json.loads(json.dumps(again)) == res


def test_study_guides(tmp_path, load_example, capsys):
    res, out = _run("study_guides", tmp_path, load_example, capsys)
    cfg = res["config"]
    arms = {(r["arm"], r["T"]) for r in res["rows"]}
    expected = {(arm, T) for T in cfg["steps_list"] for arm in ("FIXED", "SCHEDULE", "ADAPTIVE")}
    expected |= {("LEARNED", T) for T in cfg["steps_list"] if T <= cfg["learned_max_T"]}
    assert arms == expected
    # an arm not trained here says what one update costs, and what its budgets would, in a
    # unit that shows it (the quick budgets take seconds, not "0.0 CPU-hours")
    skipped = [T for T in cfg["steps_list"] if T > cfg["learned_max_T"]]
    for T in skipped:
        seconds = res["learned_update_cpu_seconds"][str(T)] * 3 * cfg["first_updates"]
        line = next(s for s in out.splitlines() if s.startswith(f"learned q at T = {T}:"))
        value, unit = line.rsplit("would take ", 1)[1].rstrip(".").split()
        scale = {"CPU-seconds": 1, "CPU-minutes": 60, "CPU-hours": 3600}[unit]
        assert float(value) > 0 and float(value) * scale == pytest.approx(seconds, rel=0.05)
    assert sorted(int(T) for T in res["learned_update_cpu_seconds"]) == skipped
    assert all(v > 0 for v in res["learned_update_cpu_seconds"].values())
    for r in res["rows"]:
        # one-sided theorems, each within 4 SE: IWAE-K ≥ ELBO, and E[log p_data − ELBO] ≥ 0
        # (see test_study_gap_vs_T); the sizes are what the study measures, not claims
        assert r["iwae_minus_elbo"][0] > -4 * r["iwae_minus_elbo"][1]
        assert r["gap_elbo"][0] > -4 * r["gap_elbo"][1]
        assert not math.isnan(r["khat"][0])
        assert 0.0 <= r["khat_fraction_bad"] <= 1.0
        _check_doubling(r)
    assert len(_table_rows(out)) == 2 * (2 + len(res["rows"]))
    # --arms: only those arms are trained and measured again; the other rows are kept as
    # written, and every arm of every T is still there, in the table's order
    module = load_example("study_guides")
    again = module.main(["--quick", "--out", str(tmp_path), "--arms", "adaptive"])
    assert [(r["arm"], r["T"]) for r in again["rows"]] == [(r["arm"], r["T"]) for r in res["rows"]]
    for old, new in zip(res["rows"], again["rows"], strict=True):
        if old["arm"] != "ADAPTIVE":
            assert new == old
    assert json.loads(json.dumps(again["table"])) == res["table"]  # the same seed, the same runs
    with pytest.raises(SystemExit, match="results of a full run"):
        module.main(["--quick", "--out", str(tmp_path / "empty"), "--arms", "adaptive"])
    # --steps: one row rerun, every other row kept as written
    T = cfg["steps_list"][-1]
    one = module.main(["--quick", "--out", str(tmp_path), "--arms", "fixed", "--steps", str(T)])
    assert [(r["arm"], r["T"]) for r in one["rows"]] == [(r["arm"], r["T"]) for r in res["rows"]]
    assert json.loads(json.dumps(one["table"])) == res["table"]
    # --max-updates: that row's doubling stops at the cap, which the row records
    first = cfg["first_updates"]
    argv = ["--arms", "fixed", "--steps", str(T), "--max-updates", str(first)]
    capped = module.main(["--quick", "--out", str(tmp_path), *argv])
    row = next(r for r in capped["rows"] if (r["arm"], r["T"]) == ("FIXED", T))
    assert row["max_updates"] == first and [b["updates"] for b in row["budgets"]] == [first]
    assert all(r == old for r, old in zip(capped["rows"], one["rows"], strict=True) if r is not row)
    # and above the study's cap, for a row still gaining there
    above = 2 * cfg["max_updates"]
    argv = ["--arms", "fixed", "--steps", str(T), "--max-updates", str(above)]
    longer = module.main(["--quick", "--out", str(tmp_path), *argv])
    row = next(r for r in longer["rows"] if (r["arm"], r["T"]) == ("FIXED", T))
    assert row["max_updates"] == above and row["budgets"][-1]["updates"] == above
    for argv, message in (
        (["--arms", "fixed", "--steps", str(T + 1)], "numbers of steps of this study"),
        (["--steps", str(T)], "name --arms too"),
        (["--max-updates", str(first)], "name --arms too"),
        (["--arms", "fixed", "--max-updates", str(first - 1)], "no smaller than the first"),
        (["--arms", "learned", "--steps", str(T)], "no row of this study"),
    ):
        with pytest.raises(SystemExit, match=message):
            module.main(["--quick", "--out", str(tmp_path), *argv])


def test_study_digits(tmp_path, load_example, capsys):
    res, out = _run("study_digits", tmp_path, load_example, capsys)
    assert [r["name"] for r in res["rows"]] == list(res["config"]["rows"])
    for r in res["rows"]:
        bits, se = r["bits_per_dim"]
        # a discretised likelihood is a probability mass: −log₂ of a bound on it is > 0
        assert bits > 0 and se >= 0
        if r["iwae_bits_per_dim"] is not None:
            # IWAE-K is the tighter bound: fewer bits, up to its Monte-Carlo error
            assert r["iwae_bits_per_dim"][0] < bits + 4 * (se + r["iwae_bits_per_dim"][1])
        if r["per_step_bits"] is not None:
            assert sum(r["per_step_bits"]) + r["prior_bits"] == pytest.approx(bits, rel=1e-6)
        if "log_snr_ends" in r:
            first, last = r["log_snr_ends"]
            assert first > last
        _check_doubling(r)
    # the two largest fixed-q T: the split at equal noise adds up to each row's test bits/dim
    question = res["slower_or_looser"]
    Ts, Tl = question["T"]
    for T in (Ts, Tl):
        row = next(r for r in res["rows"] if r["T"] == T and r["name"].startswith("fixed"))
        split = question["test_split_bits"][str(T)]
        assert split["first"] + split["rest"] == pytest.approx(row["bits_per_dim"][0], rel=1e-9)
    pixel, ar = res["references"]
    # exact likelihoods of models that put mass on all 17 levels of all 64 pixels
    assert 0 < pixel["bits_per_dim"][0] < math.log2(17)
    assert 0 < ar["bits_per_dim"][0] < math.log2(17)
    assert (
        len(_table_rows(out)) == 2 + len(res["rows"]) + 2 + 2 + len(question["equal_updates"]) + 3
    )
