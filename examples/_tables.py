"""The study's tables as data: one JSON object per row, and the markdown printed from them.

Every study script writes its table as a list of rows (:func:`table_row`) under the key
``"table"`` of its results file; docs/study.md shows tables printed by :func:`render` from those
files, below a marker naming the file::

    <!-- results: docs/results/study_exact.json -->

A study's further tables are kept in the same file under ``"tables"`` (:func:`named_table`)
and named by ``FILE#name`` in the marker. tests/test_docs_numbers.py checks that every such
table still matches its file.

    python examples/_tables.py docs/results/study_exact.json          # print the table
    python examples/_tables.py docs/results/study_gap_vs_T.json#gap   # a named table
    python examples/_tables.py --update docs/study.md                 # rewrite its marked tables
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

MARKER = "<!-- results: "
"""How docs/study.md names the results file of the table that follows."""

NATS_DIGITS = 4


def table_row(
    *,
    label: str,
    configuration: Mapping[str, Any],
    T: int | None,
    elbo: tuple[float, float],
    iwae: tuple[float, float] | None,
    iwae_k: int | None,
    reference: tuple[float, float] | None,
    reference_name: str | None,
    updates: int,
    cpu_minutes: float | None,
    converged: bool | None = None,
    extra: Mapping[str, tuple[float, float] | float] | None = None,
) -> dict[str, Any]:
    """One row of a study table. Bounds and references are (mean, standard error) in nats per
    datum on the held-out split; ``T`` is None for the continuous-time (T = ∞) bound.
    ``converged`` is True/False only when it was measured (doubling the updates moved the
    held-out ELBO by less than 2 SE); None when it was not."""
    if converged is not None and not isinstance(converged, bool):
        raise TypeError(f"converged must be True, False or None, got {converged!r}")
    return {
        "label": label,
        "configuration": dict(configuration),
        "T": None if T is None else int(T),
        "elbo": float(elbo[0]),
        "elbo_se": float(elbo[1]),
        "iwae": None if iwae is None else float(iwae[0]),
        "iwae_se": None if iwae is None else float(iwae[1]),
        "iwae_k": iwae_k,
        "reference": None if reference is None else float(reference[0]),
        "reference_se": None if reference is None else float(reference[1]),
        "reference_name": reference_name,
        "updates": int(updates),
        "cpu_minutes": None if cpu_minutes is None else float(cpu_minutes),
        "converged": converged,
        "extra": {k: list(v) if isinstance(v, tuple) else v for k, v in (extra or {}).items()},
    }


def _pm(mean: float | None, se: float | None, digits: int = NATS_DIGITS) -> str:
    if mean is None:
        return "—"
    if se is None or not math.isfinite(se):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {se:.{digits}f}"


def converged_text(value: bool | None) -> str:
    """The doubling rule's verdict as the tables print it (None: a quick run, not checked)."""
    return "not checked" if value is None else ("yes" if value else "no")


def render(rows: Sequence[Mapping[str, Any]]) -> str:
    """The markdown table of ``rows`` (as :func:`table_row` makes them): the standard columns,
    then each ``extra`` entry of the first row as a column."""
    iwae_ks = {r["iwae_k"] for r in rows if r["iwae_k"] is not None}
    iwae_head = f"IWAE-{iwae_ks.pop()}" if len(iwae_ks) == 1 else "IWAE-K"
    extras = list(rows[0]["extra"]) if rows else []
    header = ["configuration", "T", "ELBO", iwae_head, "reference", *extras]
    header += ["updates", "CPU-minutes", "converged"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    for r in rows:
        ref = (
            "—"
            if r["reference"] is None
            else f"{r['reference_name']} = {_pm(r['reference'], r['reference_se'])}"
        )
        cells = [
            r["label"],
            "∞" if r["T"] is None else str(r["T"]),
            _pm(r["elbo"], r["elbo_se"]),
            _pm(r["iwae"], r["iwae_se"]),
            ref,
        ]
        for name in extras:
            v = r["extra"][name]
            cells.append(_pm(*v) if isinstance(v, list) else _pm(v, None))
        minutes = r["cpu_minutes"]
        cells += [
            str(r["updates"]),
            "—" if minutes is None else f"{minutes:.2f}",
            converged_text(r["converged"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def named_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> dict[str, Any]:
    """A further table of a study, kept in its results file under ``"tables"`` as the cells it
    printed (``render_file("FILE#name")`` prints it again)."""
    return {"header": [str(h) for h in header], "rows": [[str(c) for c in r] for r in rows]}


def convergence_table(first: str, labels: Sequence[object], rows: Sequence[Mapping[str, Any]]):
    """The budgets of each row's doubling (``rows[i]["budgets"]``, as ``_converge`` reports
    them): validation ELBO ± SE and CPU-minutes per budget, the budget kept, and the verdict;
    with a column of every doubling's paired gain when the paired rule judged them
    (``rows[i]["paired_gains"]``)."""
    paired = any(r.get("paired_gains") is not None for r in rows)
    header = [first, "updates: validation ELBO (CPU-minutes)", "kept", "converged"]
    if paired:
        header.insert(2, "paired gain of each doubling")
    out = []
    for label, r in zip(labels, rows, strict=True):
        row = [
            label,
            "; ".join(
                f"{b['updates']}: {_pm(b['validation_elbo'], b['validation_elbo_se'], 3)} "
                f"({b['cpu_minutes']:.1f})"
                for b in r["budgets"]
            ),
            r["updates"],
            converged_text(r["converged"]),
        ]
        if paired:
            row.insert(2, paired_gain_text(r.get("paired_gains") or []))
        out.append(row)
    return named_table(header, out)


def paired_gain_text(gains: Sequence[Mapping[str, Any]]) -> str:
    """ "N→2N: gain ± paired SE" for every doubling, or "—" for none."""
    return (
        "; ".join(
            f"{g['shorter_updates']}→{g['longer_updates']}: {_pm(g['gain'], g['se'], 4)}"
            for g in gains
        )
        or "—"
    )


def markdown(table: Mapping[str, Any]) -> str:
    """The markdown of a :func:`named_table`."""
    header = table["header"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in table["rows"]]
    return "\n".join(lines)


def render_file(path: str | Path) -> str:
    """The markdown table of a results file's ``"table"`` rows, or with ``FILE#name`` that of
    its named table ``"tables"[name]``."""
    path, _, name = str(path).partition("#")
    results = json.loads(Path(path).read_text())
    return markdown(results["tables"][name]) if name else render(results["table"])


def update_page(page: str | Path, root: str | Path = ".") -> int:
    """Rewrite every marked table of a markdown ``page`` from its results file (paths in the
    markers are relative to ``root``); returns how many tables were written."""
    lines = Path(page).read_text().splitlines()
    out, i, count = [], 0, 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        i += 1
        if not line.strip().startswith(MARKER):
            continue
        src = line.strip()[len(MARKER) :].removesuffix("-->").strip()
        while i < len(lines) and not lines[i].strip():
            out.append(lines[i])
            i += 1
        while i < len(lines) and lines[i].startswith("|"):
            i += 1  # the old table
        out.extend(render_file(Path(root) / src).splitlines())
        count += 1
    Path(page).write_text("\n".join(out) + "\n")
    return count


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--update"]:
        # python examples/_tables.py --update docs/study.md: refresh its marked tables
        for page in args[1:]:
            print(f"{page}: {update_page(page)} tables written")
    else:
        for name in args:
            print(render_file(name))
