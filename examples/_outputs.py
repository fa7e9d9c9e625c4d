"""Where the examples write: ``outputs/<example>/`` by default, docs/ only when asked.

Every example takes ``--out DIR`` (default ``outputs/<example name>/`` at the project root,
which git ignores) and ``--write-docs``, which sends its figure to ``docs/figures/`` and its
results to ``docs/results/<example>.json``, the files the docs show. A quick run therefore
never overwrites a figure or a number the docs cite.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUTPUTS = ROOT / "outputs"
DOCS_FIGURES = ROOT / "docs" / "figures"
DOCS_RESULTS = ROOT / "docs" / "results"


@dataclass(frozen=True)
class Outputs:
    """The folder for an example's figures and the path of its results file."""

    figures: Path
    results: Path

    def figure(self, filename: str) -> Path:
        self.figures.mkdir(parents=True, exist_ok=True)
        return self.figures / filename

    def write_results(self, results: object, filename: str | None = None) -> Path:
        """Write ``results`` as JSON to :attr:`results` (or to ``filename`` beside it)."""
        path = self.results if filename is None else self.results.parent / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2, allow_nan=True) + "\n")
        return path


def add_output_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"folder for the figures and results (default: outputs/{name}/)",
    )
    group.add_argument(
        "--write-docs",
        action="store_true",
        help="write the figure into docs/figures/ and the results into docs/results/, "
        "replacing what the docs show",
    )


def outputs(args: argparse.Namespace, name: str) -> Outputs:
    """The :class:`Outputs` the parsed ``--out`` / ``--write-docs`` ask for."""
    if args.write_docs:
        return Outputs(DOCS_FIGURES, DOCS_RESULTS / f"{name}.json")
    folder = args.out if args.out is not None else OUTPUTS / name
    return Outputs(folder, folder / f"{name}.json")
