"""The continuous-time examples run with --quick and write what they promise, where they
promise it; the study's rows obey the inequalities it rests on."""

import json
import re
from pathlib import Path

import torch

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_study_continuous_quick(tmp_path, capsys, load_example):
    module = load_example("study_continuous")
    result = module.main(["--quick", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    written = json.loads((tmp_path / "study_continuous.json").read_text())
    assert written == json.loads(json.dumps(result))  # the file holds what main returned
    rows = result["table"]
    labels = [r["label"] for r in rows]
    assert labels[-4:] == [
        "T = ∞",
        "interior: linear",
        "interior: cosine",
        "interior: learned (variance objective)",
    ]
    assert [r["T"] for r in rows[:-4]] == [10, 20] and all(r["T"] is None for r in rows[-4:])
    assert "| T = ∞ | ∞ |" in out
    # mean ± SE as the tables write it, never a raw tuple; a quick run checks no convergence
    validation = [line for line in out.splitlines() if "validation T = ∞ bound" in line]
    assert validation and all(re.search(r"bound -?\d+\.\d{3} ± \d+\.\d{3}$", v) for v in validation)
    assert "(" not in "".join(validation)
    assert result["convergence"]["converged"] is None
    assert all(r["converged"] is None for r in rows) and "| yes |" not in out
    assert all(line.endswith("| not checked |") for line in out.splitlines() if "| T = " in line)
    for r in rows:
        gap, gap_se = r["extra"]["gap to log p_data"]
        assert r["elbo_se"] > 0 and gap_se > 0
        # every bound is below log p_data in expectation: gap ≥ 0 up to its SE
        assert gap > -4 * gap_se


def test_continuous_digits_quick(tmp_path, monkeypatch, capsys, load_example):
    module = load_example("continuous_digits")
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        result = module.main(["--quick", "--out", str(tmp_path)])
        assert torch.get_num_threads() == 1  # as every example: one thread
    finally:
        torch.set_num_threads(old)
    assert result["validation_bpd"] > 0 and "test_bpd" not in result  # test split not read
    assert len(list(tmp_path.glob("*.json"))) == 1
