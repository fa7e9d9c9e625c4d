"""The record of a training run: training losses and evaluations, as JSON lines.

``metrics.jsonl`` holds one JSON object per line, appended and flushed as training goes:

- ``{"step", "kind": "train", "loss", "elbo_per_datum", "lr"}``
- ``{"step", "kind": "eval", "split", "elbo", "bits_per_dim", "reconstruction", "prior",
  "per_step_loss", "estimator", "ema"}``

``step`` counts optimizer updates done when the record was made. :class:`History` is the
in-memory view of the same records.
"""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError

__all__ = ["RecordKind", "History", "MetricsWriter", "METRICS_NAME"]

METRICS_NAME = "metrics.jsonl"
"""The metrics file's name inside a run folder."""


class RecordKind(enum.Enum):
    """What a metrics record describes; its value is the ``"kind"`` string in the JSON."""

    TRAIN = "train"
    EVAL = "eval"


@dataclass(frozen=True)
class History:
    """The records of one run, in order, and whether it was interrupted.

    ``train`` and ``evals`` filter by kind; :meth:`series` gives (steps, values) lists ready for
    ``plt.plot``. A History is immutable: ``fit`` builds a new one at the end.
    """

    records: tuple[dict[str, Any], ...] = ()
    interrupted: bool = False
    final_step: int = 0

    @property
    def train(self) -> list[dict[str, Any]]:
        """The training-loss records, in step order."""
        return [r for r in self.records if r.get("kind") == RecordKind.TRAIN.value]

    @property
    def evals(self) -> list[dict[str, Any]]:
        """The evaluation records, in step order."""
        return [r for r in self.records if r.get("kind") == RecordKind.EVAL.value]

    @property
    def final_eval(self) -> dict[str, Any] | None:
        """The last evaluation record, or ``None`` if there was none: after a finished run on
        a Dataset, its test split."""
        evals = self.evals
        return evals[-1] if evals else None

    def final_eval_on(self, split: str) -> dict[str, Any] | None:
        """The last evaluation record of ``split`` ("validation", "test"), or ``None``. Records
        written before splits were named count as "test"."""
        evals = [r for r in self.evals if r.get("split", "test") == split]
        return evals[-1] if evals else None

    def series(self, key: str, kind: RecordKind = RecordKind.TRAIN) -> tuple[list[int], list[Any]]:
        """(steps, values) of ``key`` over the records of ``kind`` that have it (not null)."""
        if not isinstance(kind, RecordKind):
            raise DataError(f"kind must be a RecordKind, got {kind!r}")
        rows = [r for r in self.records if r.get("kind") == kind.value and r.get(key) is not None]
        return [r["step"] for r in rows], [r[key] for r in rows]

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the records as JSON lines (the ``metrics.jsonl`` format) atomically."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for record in self.records:
                f.write(_dumps(record))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> History:
        """Read a ``metrics.jsonl`` (or a run folder holding one).

        A last line without its newline (a write cut short by a kill) is ignored; any other
        line that is not a JSON object raises :class:`~pyrodiff.errors.DataError`.
        """
        path = Path(path)
        if path.is_dir():
            path = path / METRICS_NAME
        if not path.is_file():
            raise DataError(f"no metrics file at {path}: expected a metrics.jsonl written by fit")
        records = read_records(path)
        last = max((r["step"] for r in records), default=0)
        return cls(records=tuple(records), final_step=last)


def _dumps(record: Mapping[str, Any]) -> str:
    # allow_nan=False: a NaN in the metrics would make the file invalid JSON for other readers
    return json.dumps(dict(record), allow_nan=False, separators=(",", ":")) + "\n"


def read_records(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    complete, tail = lines[:-1], lines[-1]
    records = []
    for number, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number} is not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise DataError(f"{path}:{number} is not a metrics record (an object with a step)")
        records.append(record)
    del tail  # an unterminated last line is a write interrupted mid-way
    return records


class MetricsWriter:
    """Appends records to ``metrics.jsonl``, one ``write`` and flush per line.

    Each record is written whole and flushed at once, so the file is valid JSON lines after any
    exception; after a kill at most the last line is cut short, and :meth:`truncate_after`
    (called on resume) removes it. With ``path=None`` it only keeps records in memory.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = []
        self._file = None

    def truncate_after(self, step: int) -> None:
        """Keep only records with ``step ≤ step`` (on disk and in memory): a resumed run then
        rewrites what came after its checkpoint, with no step missing or repeated."""
        if self.path is not None and self.path.is_file():
            self.records = [r for r in read_records(self.path) if r["step"] <= step]
            History(records=tuple(self.records)).save(self.path)
        else:
            self.records = [r for r in self.records if r["step"] <= step]

    def write(self, kind: RecordKind, step: int, **values: Any) -> dict[str, Any]:
        record = {"step": int(step), "kind": kind.value, **values}
        line = _dumps(record)
        if self.path is not None:
            if self._file is None:
                self._file = open(self.path, "a", encoding="utf-8")
            self._file.write(line)
            self._file.flush()
        self.records.append(record)
        return record

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def history(self, interrupted: bool, final_step: int) -> History:
        return History(records=tuple(self.records), interrupted=interrupted, final_step=final_step)

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
