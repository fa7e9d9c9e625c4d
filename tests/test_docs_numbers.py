"""The tables of the docs pages that name a results file are exactly what that file says.

A table declares its source with a marker line just above it::

    <!-- results: docs/results/study_exact.json -->
    <!-- results: docs/results/study_gap_vs_T.json#gap -->   (a named table of the file)

Each such table must equal the markdown that ``examples/_tables.py`` prints from the file, and,
checked independently of that printer, every number in its cells must be a value of the file
rounded as shown. A rerun that changes a number therefore cannot leave the page stale. Tables
without a marker are not checked (the page says which those are).
"""

import json
import math
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
MARKER = re.compile(r"^<!-- results: (\S+) -->$")
NUMBER = re.compile(r"(?<![\w.])[−-]?\d+(?:\.\d+)?(?:e[−-]?\d+)?")


def _sourced_tables() -> list[tuple[str, str]]:
    """(results path, the table's markdown) for every marked table of the docs pages."""
    return [t for page in DOCS for t in _page_tables(page)]


def _page_tables(page: Path) -> list[tuple[str, str]]:
    lines = page.read_text().splitlines()
    out = []
    for i, line in enumerate(lines):
        m = MARKER.match(line.strip())
        if not m:
            continue
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        table = []
        while j < len(lines) and lines[j].startswith("|"):
            table.append(lines[j])
            j += 1
        out.append((m.group(1), "\n".join(table)))
    return out


def _prose(section: str) -> str:
    """A page section's prose, whitespace collapsed and minus signs as ASCII: the tables left
    out, which the page-wide tests hold to their files, so that a number quoted in the text is
    found only in the text."""
    lines = [line for line in section.splitlines() if not line.startswith("|")]
    return " ".join(" ".join(lines).split()).replace("−", "-")


def _values(obj) -> list[float]:
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return []
    if isinstance(obj, (int, float)):
        return [float(obj)]
    items = obj.values() if isinstance(obj, dict) else obj
    return [v for x in items for v in _values(x)]


def _render(path: str) -> str:
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from _tables import render_file
    finally:
        sys.path.remove(str(ROOT / "examples"))
    return render_file(path)


SOURCED = _sourced_tables()
IDS = [f"{src}-{i}" for i, (src, _) in enumerate(SOURCED)]


def test_the_page_declares_its_sourced_tables():
    # the study's exact case is produced from its results file; if the marker went missing,
    # the checks below would have nothing to check
    assert any(src == "docs/results/study_exact.json" for src, _ in SOURCED)
    for src, table in SOURCED:
        path, _, name = src.partition("#")
        assert (ROOT / path).is_file(), f"{path} is named by a docs page but does not exist"
        if name:
            assert name in json.loads((ROOT / path).read_text())["tables"], src
        assert table, f"no table follows the marker of {src}"


@pytest.mark.parametrize(("src", "table"), SOURCED, ids=IDS)
def test_sourced_table_is_printed_from_its_file(src, table):
    assert table == _render(f"{ROOT}/{src}")


@pytest.mark.parametrize(("src", "table"), SOURCED, ids=IDS)
def test_every_number_of_a_sourced_table_is_in_its_file(src, table):
    path, _, name = src.partition("#")
    results = json.loads((ROOT / path).read_text())
    # a row table's numbers are among its rows'; a named table's among the file's numeric
    # values (its own printed cells are strings, so they do not count)
    values = _values(
        {k: v for k, v in results.items() if k != "tables"} if name else results["table"]
    )
    body = table.splitlines()[2:]  # the header names columns (IWAE-16, …), not results
    cells = [c for line in body for c in line.strip("|").split("|")]
    numbers = [n for c in cells for n in NUMBER.findall(c)]
    assert numbers
    for text in numbers:
        shown = float(text.replace("−", "-"))
        decimals = len(text.split(".")[1].split("e")[0]) if "." in text else 0
        # shown with d decimals: some value of the file lies within half a unit of the last one
        tol = 0.5 * 10**-decimals + 1e-12
        assert any(math.isclose(shown, v, abs_tol=tol) for v in values), (src, text)


# --- the default run, as the README and docs/cli.md quote it -----------------------------------

DEFAULT_RUN = ROOT / "docs" / "results" / "default_run.json"
"""The final evaluation records of the README's `pyrodiff train` (from its metrics.jsonl) and
the output of `pyrodiff evaluate` on that run (its evaluation.json)."""


def _default_run() -> dict:
    return json.loads(DEFAULT_RUN.read_text())


@pytest.mark.parametrize("page", ["README.md", "docs/cli.md"])
def test_pages_quote_the_default_runs_final_lines_as_its_records_say(page):
    """The pages print `pyrodiff train`'s final lines as the recorded run's metrics.jsonl
    says, the ELBO with its SE over the split's images."""
    run, text = _default_run()["second_machine"], (ROOT / page).read_text()
    for split in ("validation", "test"):
        r = run[f"final_{split}"]
        line = (
            f"{split} ELBO {r['elbo']:.4f} ± {r['elbo_se']:.4f} nats/datum, "
            f"{split} bits/dim {r['bits_per_dim']:.4f}"
        )
        assert line in text, f"{page} does not print {line!r}"


def test_readme_says_where_the_default_runs_bound_is_paid_as_evaluate_prints_it():
    """The README's shares are evaluate's table rows, computed from the per-step losses of its
    evaluation.json: −ELBO at t ≤ 10 over −ELBO, and the sum of the terms past T/2."""
    ev, text = _default_run()["evaluate"], (ROOT / "README.md").read_text()
    per_step, bound = ev["per_step_loss"], -ev["elbo"]
    T = len(per_step)
    assert f"{-bound:.2f} nats".replace("-", "−") in text
    assert f"t ≤ 10 is {100 * sum(per_step[:10]) / bound:.1f} %" in text
    assert f"(t > {T // 2}) costs {sum(per_step[T // 2 :]):.2f} nats" in text


def test_update_page_rewrites_only_the_marked_tables(tmp_path):
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from _tables import named_table, update_page
    finally:
        sys.path.remove(str(ROOT / "examples"))
    results = {"table": [], "tables": {"t": named_table(["a", "b"], [[1, "2 ± 0.1"]])}}
    (tmp_path / "r.json").write_text(json.dumps(results))
    page = tmp_path / "page.md"
    stale = "| a | b |\n| --- | --- |\n| 1 | 3 ± 0.1 |"
    page.write_text(f"text\n\n<!-- results: r.json#t -->\n{stale}\n\nafter\n\n{stale}\n")
    assert update_page(page, root=tmp_path) == 1
    fresh = "| a | b |\n| --- | --- |\n| 1 | 2 ± 0.1 |"
    assert page.read_text() == f"text\n\n<!-- results: r.json#t -->\n{fresh}\n\nafter\n\n{stale}\n"


# --- the README's Python blocks, run as written ------------------------------------------------


def _readme_python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", (ROOT / "README.md").read_text(), re.S | re.M)


def _run_blocks(blocks: list[str], capsys, monkeypatch, tmp_path) -> str:
    """exec the blocks in one namespace, as a user pastes them into one session (in a scratch
    folder, with torch's default float32), and return what they printed."""
    import torch

    monkeypatch.chdir(tmp_path)
    old_dtype, old_threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float32)
    try:
        namespace: dict = {}
        for block in blocks:
            exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 (our own README)
    finally:
        torch.set_default_dtype(old_dtype)
        torch.set_num_threads(old_threads)
    return capsys.readouterr().out


def test_readme_prints_one_bound_on_one_scale_and_the_two_estimates_agree(
    capsys, monkeypatch, tmp_path
):
    """The first block's two estimates of the same ELBO per datum — elbo_terms and Pyro's
    Trace_ELBO on the literal chain — are printed alike (nats per datum, mean ± SE) and agree
    within 4 of their combined standard errors; the Predictive block shows the plate's
    dimension it squeezes."""
    first, predictive = _readme_python_blocks()[:2]
    out = _run_blocks([first, predictive], capsys, monkeypatch, tmp_path)
    pm = r"ELBO (-?\d+\.\d{3}) ± (\d+\.\d{3}) nats per datum"
    (fast, fast_se), (literal, literal_se) = (
        tuple(float(v) for v in re.search(f"^{name}: {pm}$", out, re.M).groups())
        for name in ("elbo_terms", "Trace_ELBO")
    )
    assert fast < 0 and literal < 0 and fast_se > 0 and literal_se > 0  # an ELBO, not a loss
    assert abs(fast - literal) < 4 * math.hypot(fast_se, literal_se), out
    assert "torch.Size([500, 1, 2])" in out


def test_readme_fit_block_runs_as_written(capsys, monkeypatch, tmp_path):
    """The fit block, with 20 updates instead of its 2000 (the one change), writes the run
    folder `pyrodiff evaluate` reads and prints the test ELBO beside −H."""
    block = next(b for b in _readme_python_blocks() if "fit(" in b)
    assert "updates=2000" in block
    out = _run_blocks([block.replace("updates=2000", "updates=20")], capsys, monkeypatch, tmp_path)
    elbo, neg_h = (float(v) for v in out.split()[-2:])
    assert math.isfinite(elbo) and neg_h < 0
    assert (tmp_path / "runs" / "moons" / "config.json").is_file()


def test_guides_page_for_pyro_users_runs_and_shows_the_shapes_and_scales_it_explains(
    capsys, monkeypatch, tmp_path
):
    """docs/guides.md, "For Pyro users": Predictive's samples are (num_samples, batch_size, 2),
    and Pyro's loss divided by −N is on elbo_terms' scale: an ELBO per datum, negative like it
    (the README's test checks that the two agree within their SEs on a trained model)."""
    text = (ROOT / "docs" / "guides.md").read_text()
    section = text.split("## For Pyro users", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```python\n(.*?)^```$", section, re.S | re.M)
    assert len(blocks) == 2
    out = _run_blocks(blocks, capsys, monkeypatch, tmp_path).splitlines()
    assert out[0] == "torch.Size([3, 5, 2])"
    literal, fast = (float(v) for v in out[1].split())
    assert literal < 0 and fast < 0


# --- docs/cli.md's Errors section quotes the program ---------------------------------------------


def _quoted_errors() -> list[tuple[list[str], str]]:
    """(argv, the error line the page shows) for each `$ pyrodiff …` of the Errors section."""
    import shlex

    section = (ROOT / "docs" / "cli.md").read_text().split("## Errors", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"^```\n(.*?)^```$", section, re.S | re.M).group(1).splitlines()
    pairs = []
    for command, line in zip(block[::2], block[1::2], strict=True):
        assert command.startswith("$ pyrodiff ") and line.startswith("pyrodiff: error: ")
        pairs.append((shlex.split(command[2:], comments=True)[1:], line))
    return pairs


def test_cli_page_quotes_each_error_line_as_the_program_prints_it(capsys, monkeypatch, tmp_path):
    """Each quoted line is what the command prints on stderr, word for word; a line the page
    shortens with " ...)" (an error's technical detail) must be a prefix of it."""
    import shutil

    import torch

    from pyrodiff.cli import main

    monkeypatch.chdir(tmp_path)
    # the page's runs/ring-cut: a small run on the ring whose checkpoint was cut in half
    assert main(["train", "--data", "eight_gaussians", "--T", "4", "--network", "mlp",
                 "--width", "8", "--updates", "2", "--batch-size", "16", "--out", "runs/ring",
                 "--no-progress"]) == 0  # fmt: skip
    shutil.copytree("runs/ring", "runs/ring-cut")
    checkpoint = tmp_path / "runs" / "ring-cut" / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    capsys.readouterr()
    quoted = _quoted_errors()
    assert any("--objective" in argv for argv, _ in quoted)
    for argv, line in quoted:
        if "cuda" in argv and torch.cuda.is_available():
            continue  # the quoted line is the one of a machine without CUDA
        assert main(argv) != 0
        printed = capsys.readouterr().err.strip()
        if line.endswith(" ...)"):
            assert printed.startswith(line.removesuffix(" ...)")), (argv, printed)
        else:
            assert printed == line, (argv, printed)


def test_study_quotes_the_best_kernel_shares_of_its_results_file_with_significant_digits():
    """docs/study.md (b) quotes −H − ELBO* at every T in its prose: each is the results file's
    value to the decimals shown, and its Monte-Carlo SE is at most one unit of the last of
    them, so no quoted digit is noise."""
    results = json.loads((ROOT / "docs" / "results" / "study_gap_vs_T.json").read_text())
    shares = {r["T"]: r["best_kernel_gap"] for r in results["rows"]}
    text = (ROOT / "docs" / "study.md").read_text()
    quoted = re.search(r"leaves −H − ELBO\* = ([\d., and]+) nats at T = 2 … 1000", text)
    values = re.split(r", | and ", quoted.group(1))
    assert len(values) == len(shares)
    for text_value, (mean, se) in zip(values, shares.values(), strict=True):
        decimals = len(text_value.split(".")[1])
        assert text_value == f"{mean:.{decimals}f}"
        assert round(se, decimals) <= 10**-decimals


def test_readme_says_the_last_digits_are_the_machines_and_gives_their_standard_errors():
    """The README's other-machine figures are those of the run recorded as the default one,
    and the standard errors it gives are those its block prints, in nats and in bits/dim
    (÷ 64 ln 2); the two runs' bits/dim differ by less than 2 of those SEs."""
    run, text = _default_run(), (ROOT / "README.md").read_text()
    second = run["second_machine"]
    for split in ("validation", "test"):
        assert f"{split} bits/dim {run[f'final_{split}']['bits_per_dim']:.4f}" in text
        se = second[f"final_{split}"]["elbo_se"]
        se_bits = se / (64 * math.log(2))
        assert f"± {se:.2f} nats/datum" in text and f"± {se_bits:.3f} bits/dim" in text
        bits = second[f"final_{split}"]["bits_per_dim"]
        assert abs(bits - run[f"final_{split}"]["bits_per_dim"]) < 2 * se_bits


def test_guides_quote_the_latent_diffusion_gain_and_cost_as_its_results_file_says():
    """docs/guides.md's sentence on what the diffusion prior buys is the paired difference and
    the time ratio that examples/latent_diffusion.py wrote (a loss printed as a magnitude)."""
    results = json.loads((ROOT / "docs" / "results" / "latent_diffusion.json").read_text())
    text = " ".join((ROOT / "docs" / "guides.md").read_text().split())
    gain, se = results["gain_nats"], results["gain_se"]
    direction = "below" if gain < 0 else "above"
    assert f"{abs(gain):.2f} ± {se:.2f} nats per image *{direction}* N(0, I)" in text
    assert f"at {results['cost_ratio']:.2f} times the time per update" in text
    for name in ("diffusion", "normal"):
        kept = results[name]
        assert kept["updates"] in [h["updates"] for h in kept["history"]]


def test_study_part_g_prints_its_three_tables_and_every_row_says_whether_it_converged():
    """docs/study.md (g) shows the rows, the shares and the budgets of study_adaptive.json (the
    tables themselves are held to the file above); each row of a checked run says yes or no,
    never "not checked", and the budgets table names every budget trained."""
    text = (ROOT / "docs" / "study.md").read_text()
    part = text[text.index("## (g)") :]
    sources = [src for src, _ in _page_tables(ROOT / "docs" / "study.md")]
    for name in ("", "#shares", "#convergence"):
        assert f"docs/results/study_adaptive.json{name}" in sources
        assert f"<!-- results: docs/results/study_adaptive.json{name} -->" in part
    results = json.loads((ROOT / "docs" / "results" / "study_adaptive.json").read_text())
    assert all(r["converged"] in (True, False) for r in results["table"])
    assert "not checked" not in part
    for c in results["convergence"]:
        updates = [b["updates"] for b in c["budgets"]]
        assert c["updates"] in updates
        assert len(c["paired_gains"]) == len(updates) - 1
        last = c["paired_gains"][-1] if c["paired_gains"] else None
        # the verdict is the paired rule's: the last doubling gained less than 2 paired SE
        assert c["converged"] == (last is not None and last["gain"] < 2 * last["se"])
    assert "python examples/study_adaptive.py --write-docs" in part


def test_study_part_g_quotes_the_gains_gaps_and_shares_of_its_results_file():
    """The (g) prose quotes each multivariate arm's gain over the fixed q at T = ∞ and 1000, its
    ends and network shares, and the T = ∞ gaps to log p_data, as study_adaptive.json says."""
    results = json.loads((ROOT / "docs" / "results" / "study_adaptive.json").read_text())
    text = (ROOT / "docs" / "study.md").read_text()
    part = " ".join(text[text.index("## (g)") :].split()).replace("−", "-")
    shares = {(s["arm"], s["T"]): s for s in results["shares"]}
    for arm in ("per_dimension", "mulan"):
        for T in (None, 1000):
            mean, se = shares[(arm, T)]["gain"]
            assert f"{mean:.4f} ± {se:.4f}" in part, (arm, T)
        assert f"{shares[(arm, None)]['ends'][0]:.4f}" in part
        assert f"{shares[(arm, None)]['network'][0]:.4f}" in part
    gaps = {
        r["configuration"]["arm"]: r["extra"]["gap to log p_data"]
        for r in results["table"]
        if r["T"] is None
    }
    for arm in ("fixed", "per_dimension", "mulan"):
        mean, se = gaps[arm]
        assert f"{mean:.4f} ± {se:.4f}" in part, arm
        assert se <= 0.005  # T = ∞ read to ± 0.005, as the page says
    for c in results["convergence"]:
        if c["paired_gains"]:
            g = c["paired_gains"][-1]
            assert f"{g['gain']:.4f} ± {g['se']:.4f}" in part, c["arm"]


@pytest.mark.parametrize("T", [8, 4])
def test_study_part_g_quotes_the_arms_trained_at_small_T_as_their_results_files_say(T):
    """The paragraph of (g) on the arms trained at T quotes, from study_adaptive_T<T>.json, the
    last paired gain of every arm the rule calls not converged, MuLAN's T-step gap and latent
    KL, and the fixed q's diffusion term at T and at T = ∞."""
    results = json.loads((ROOT / "docs" / "results" / f"study_adaptive_T{T}.json").read_text())
    text = (ROOT / "docs" / "study.md").read_text()
    start = text.index(f"**Trained at T = {T}")
    end = re.search(r"\n\*\*(Trained at|On the digits)", text[start + 2 :]).start() + start + 2
    part = _prose(text[start:end])
    assert f"--train-at {T}" in part
    rows = {(r["configuration"]["arm"], r["T"]): r for r in results["table"]}
    assert all(r["configuration"]["trained_at"] == f"T = {T}" for r in rows.values())
    for c in results["convergence"]:
        last = c["paired_gains"][-1]
        # the verdict is the paired rule's, and an arm still gaining is quoted with its gain
        assert c["converged"] == (last["gain"] < 2 * last["se"])
        if not c["converged"]:
            assert f"{last['gain']:.4f} ± {last['se']:.4f}" in part, c["arm"]
    gap, se = rows[("mulan", T)]["extra"]["gap to log p_data"]
    assert f"{gap:.4f} ± {se:.4f}" in part
    assert f"{rows[('mulan', T)]['extra']['latent KL'][0]:.4f}" in part
    at_T, at_inf = (rows[("fixed", t)]["extra"]["diffusion"][0] for t in (T, None))
    assert f"{at_T:.4f} nats against {at_inf:.4f} at T = ∞" in part


def test_study_g_digits_prose_quotes_study_adaptive_digits_json():
    """The (g) digits bullets quote the paired differences, the converged test figures and
    the training total of study_adaptive_digits.json."""
    page = (ROOT / "docs" / "study.md").read_text()
    part = page.split("**On the digits (T = ∞).**", 1)[1].split("**Convergence.**", 1)[0]
    arms = json.loads((ROOT / "docs" / "results" / "study_adaptive_digits.json").read_text())[
        "arms"
    ]
    for name in ("linear", "per_dimension", "adaptive"):
        d = arms[name]["test_minus_learned"]
        assert f"{d['mean']:+.4f} ± {d['se']:.4f}".replace("-", "−") in part.replace("-", "−")
    for name in ("learned", "adaptive", "per_dimension", "linear"):
        assert arms[name]["converged"] is True
        assert f"{arms[name]['test_bpd']:.3f} ± {arms[name]['test_se']:.3f}" in part
    # the per-pixel schedule's last two doublings, quoted: gaining, then over-fitting
    for d in arms["per_dimension"]["doublings"][-2:]:
        assert f"{d['gain']:+.4f} ± {d['se']:.4f}".replace("-", "−") in part.replace("-", "−")
    total = sum(a["cpu_minutes_all"] for a in arms.values())
    assert f"{total:.0f} CPU-minutes of training in all" in part
    # the regularisation runs: read on validation, quoted paired with the study's setting
    variants = arms["learned"]["variants"]
    assert [v["dropout"] for v in variants] == [0.2, 0.3]
    quoted = " and ".join(
        f"{v['minus_study']['mean']:+.4f} ± {v['minus_study']['se']:.4f}" for v in variants
    )
    assert quoted.replace("-", "−").replace("+", "") in part.replace("-", "−").replace("+", "")
    assert "--variant-dropouts 0.2 0.3" in part
    readme = (ROOT / "README.md").read_text()
    pair = f"{arms['adaptive']['test_bpd']:.3f} against {arms['learned']['test_bpd']:.3f}"
    assert pair in readme


def test_study_g_digits_at_width_48_quotes_study_adaptive_digits_w48_json():
    """The width-48 bullets of (g) quote its results file: every arm's verdict and the loss of
    its doubling, the width table's paired differences, the test differences, the goal's
    margin against the best test figure of either width, and the training total."""
    page = (ROOT / "docs" / "study.md").read_text()
    start = page.index("**A wider U-Net, every arm alike.**")
    part = _prose(page[start : page.index("**Convergence.**", start)])
    results = ROOT / "docs" / "results"
    wide = json.loads((results / "study_adaptive_digits_w48.json").read_text())["arms"]
    base = json.loads((results / "study_adaptive_digits.json").read_text())["arms"]
    assert "--width 48 --first-updates 4000" in part
    assert f"{wide['learned']['parameters']:,} parameters" in part
    assert f"against {base['learned']['parameters']:,} at width 32" in part
    losses = sorted((-a["doublings"][-1]["gain"], a["doublings"][-1]["se"]) for a in wide.values())
    assert f"by {losses[0][0]:.4f} ± {losses[0][1]:.4f}" in part
    assert f"to {losses[-1][0]:.4f} ± {losses[-1][1]:.4f}" in part
    for name, arm in wide.items():
        assert arm["converged"] is True and arm["updates"] == 4000, name
        assert arm["doublings"][-1]["gain"] < 0, name  # the rule kept the shorter run
        assert (arm["reference"]["dropout"], arm["reference"]["width"]) == (0.1, 32), name
        d = arm["reference"]["minus_it"]
        assert f"{d['mean']:+.4f} ± {d['se']:.4f}".replace("+", "") in part, name
        if name != "learned":
            d = arm["test_minus_learned"]
            assert f"{d['mean']:+.4f} ± {d['se']:.4f}" in part, name
    best = min(a["test_bpd"] for arms in (wide, base) for a in arms.values())
    assert best == wide["learned"]["test_bpd"]
    margin = 1.888 - best
    assert f"{wide['learned']['test_bpd']:.3f} ± {wide['learned']['test_se']:.3f}" in part
    assert f"{margin:.3f} below it" in part
    if margin < 0.05:
        assert f"missed by {0.05 - margin:.3f} bits/dim" in part
    total = sum(a["cpu_minutes_all"] for a in wide.values())
    assert f"{total:.0f} CPU-minutes of training in all" in part
    readme = (ROOT / "README.md").read_text()
    pair = f"{wide['adaptive']['test_bpd']:.3f} against {wide['learned']['test_bpd']:.3f}"
    assert f"{pair} with a U-Net of width 48" in readme


def test_study_g_digits_dropout_02_at_width_48_quotes_its_json():
    """The dropout-0.2 bullets of (g) quote study_adaptive_digits_d0.2_w48.json: every arm's
    verdict and kept budget, its paired difference from dropout 0.1 at the same width (the
    reference table), the test differences against the learned scalar schedule, the best
    converged test figure against the goal, and the training total."""
    page = (ROOT / "docs" / "study.md").read_text()
    start = page.index("**Dropout 0.2 at width 48, every arm alike.**")
    part = _prose(page[start : page.index("**Convergence.**", start)])
    results = ROOT / "docs" / "results"
    arms = json.loads((results / "study_adaptive_digits_d0.2_w48.json").read_text())["arms"]
    assert "--width 48 --dropout 0.2 --first-updates 4000 --max-updates 16000" in part
    assert "--reference-width 48" in part
    for name, arm in arms.items():
        assert arm["converged"] is True, name
        assert (arm["reference"]["dropout"], arm["reference"]["width"]) == (0.1, 48), name
        d = arm["reference"]["minus_it"]
        assert f"{d['mean']:+.4f} ± {d['se']:.4f}".replace("+", "") in part, name
        assert f"{arm['test_bpd']:.3f} ± {arm['test_se']:.3f}" in part, name
        if name != "learned":
            d = arm["test_minus_learned"]
            assert f"{d['mean']:+.4f} ± {d['se']:.4f}".replace("+", "") in part, name
    total = sum(a["cpu_minutes_all"] for a in arms.values())
    assert f"{total:.0f} CPU-minutes of training in all" in part
    for arm in arms.values():
        g = arm["doublings"][-1]
        assert f"{g['gain']:+.4f} ± {g['se']:.4f}".replace("+", "") in part.replace("+", "")
    best = min(a["test_bpd"] for a in arms.values())
    margin = 1.888 - best
    assert margin >= 0.05 and "The digits goal is met." in part
    assert f"MuLAN's, is {margin:.3f} below it" in part
    assert best == arms["adaptive"]["test_bpd"]
    assert sum(1.888 - a["test_bpd"] >= 0.05 for a in arms.values()) == 3
    assert f"{1.888 - arms['learned']['test_bpd']:.3f} below 1.888" in part
    # validation ranks the learned scalar schedule first, as the bullet says
    assert min(arms, key=lambda a: arms[a]["validation_bpd"]) == "learned"
    readme = (ROOT / "README.md").read_text()
    assert f"{arms['adaptive']['test_bpd']:.3f} against {arms['learned']['test_bpd']:.3f}" in readme


def test_study_part_c_quotes_the_gaps_shares_and_verdicts_of_its_results_file():
    """The prose of (c) and the README's summary of it quote study_guides.json: the gaps that the
    learned q and the learned schedule leave at T = 4 and 8, the share of the learned q's gain
    that the schedule recovers, the T = 1000 gaps, the last gain of every row still gaining, and
    the training total."""
    results = json.loads((ROOT / "docs" / "results" / "study_guides.json").read_text())
    rows = {(r["arm"], r["T"]): r for r in results["rows"]}
    page = (ROOT / "docs" / "study.md").read_text()
    start = page.index("## (c) Fixed against learned q")
    part = _prose(page[start : page.index("## (d)", start)])

    def gap(arm: str, T: int) -> float:
        return rows[(arm, T)]["gap_elbo"][0]

    fixed, learned, schedule = (
        [gap(arm, T) for T in (4, 8)] for arm in ("FIXED", "LEARNED", "SCHEDULE")
    )
    closed = [f - q for f, q in zip(fixed, learned, strict=True)]
    assert f"leaves {fixed[0]:.2f} and {fixed[1]:.2f} nats" in part
    assert f"leaves {learned[0]:.3f} and {learned[1]:.3f}, a gain of {closed[0]:.2f} and" in part
    shares = [(f - s) / c for f, s, c in zip(fixed, schedule, closed, strict=True)]
    assert (
        f"leaves {schedule[0]:.2f} and {schedule[1]:.2f} nats: it recovers "
        f"{100 * shares[0]:.0f} % and {100 * shares[1]:.0f} %"
    ) in part
    beyond = [s - q for s, q in zip(schedule, learned, strict=True)]
    assert f"another {beyond[0]:.2f} and {beyond[1]:.2f} nats" in part
    at_1000 = [rows[(arm, 1000)]["gap_elbo"] for arm in ("FIXED", "SCHEDULE")]
    assert " and ".join(f"{m:.3f} ± {se:.3f}" for m, se in at_1000) in part
    for r in results["rows"]:
        if r["converged"] is False:
            last = r["paired_gains"][-1]
            assert f"{last['gain']:.4f} ± {last['se']:.4f}" in part, (r["arm"], r["T"])
    total = sum(b["cpu_minutes"] for r in results["rows"] for b in r["budgets"])
    assert f"Training took {total:.0f} CPU-minutes in all" in part
    readme = (ROOT / "README.md").read_text()
    assert f"closes {closed[0]:.2f} and {closed[1]:.2f} nats" in readme
