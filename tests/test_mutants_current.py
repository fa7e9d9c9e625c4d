"""The planted-bug list (tests/mutants/run.py) stays planted: every mutant's source text occurs
exactly once in the tree and each names test files that exist. A refactor that moves the code
a mutant replaces makes it stale (it plants nothing), which this says at once instead of at the
next full mutation run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _mutants():
    spec = importlib.util.spec_from_file_location("_mutants_run", ROOT / "tests/mutants/run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module.MUTANTS


MUTANTS = _mutants()


def test_mutant_names_are_unique():
    names = [m.name for m in MUTANTS]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name)
def test_each_mutant_plants_its_bug(mutant):
    text = (ROOT / mutant.path).read_text()
    assert text.count(mutant.old) == 1, (
        f"{mutant.name}: its text occurs {text.count(mutant.old)} times"
    )
    assert mutant.new != mutant.old
    for target in mutant.tests:
        assert (ROOT / target.split("::")[0]).is_file(), target
