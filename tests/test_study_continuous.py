"""The continuous-time examples run with --quick and write what they promise, where they
promise it; the study's rows obey the inequalities it rests on."""

import json
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_study_continuous_quick(tmp_path, monkeypatch, capsys, load_example):
    module = load_example("study_continuous")
    docs = tmp_path / "docs" / "study_continuous.json"
    monkeypatch.setattr(module, "DOCS_RESULTS", docs)
    rows = module.main(["--quick", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    written = [json.loads(line) for line in (tmp_path / "results.json").read_text().splitlines()]
    assert written == json.loads(json.dumps(rows))  # one JSON object per row, as returned
    labels = [r["label"] for r in rows]
    assert labels[-4:] == ["T = ∞", "linear", "cosine", "learned (variance objective)"]
    assert "| T = ∞ |" in out
    # the study writes into docs/ only when asked (--write-docs)
    assert not docs.exists()
    for r in rows:
        assert r["bound_se"] > 0 and r["gap_se"] > 0
        # every bound is below log p_data in expectation: gap ≥ 0 up to its SE
        assert r["gap"] > -4 * r["gap_se"]


def test_continuous_digits_quick(tmp_path, monkeypatch, capsys, load_example):
    module = load_example("continuous_digits")
    result = module.main(["--quick", "--out", str(tmp_path)])
    assert result["validation_bpd"] > 0 and "test_bpd" not in result  # test split not read
    assert len(list(tmp_path.glob("*.json"))) == 1
