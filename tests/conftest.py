"""Shared test settings: float64 arithmetic, Pyro's validation on, a clean parameter store,
and Hypothesis profiles.

Hypothesis: with the environment variable ``CI`` set, the "ci" profile is loaded: derandomised
(the same examples on every run, from the test's own source) and without an example database,
so a CI failure reproduces exactly. Elsewhere the "explore" profile draws new examples each
run and remembers failures in the local database. ``HYPOTHESIS_PROFILE`` picks one by name.
"""

import importlib.util
import os
import sys
from pathlib import Path

import pyro
import pytest
import torch
from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "explore")
)

# the mutation check plants bugs in a scratch copy and runs tests there; it is not a test
collect_ignore = ["mutants"]


@pytest.fixture(autouse=True)
def _float64_and_clean_store():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    pyro.enable_validation(True)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    torch.set_default_dtype(old)
    pyro.clear_param_store()


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def load_example(monkeypatch):
    """Import ``examples/<name>.py`` as a module, as running it would: with the examples folder
    on the path (they share ``_outputs`` and ``_tables``) and the module in ``sys.modules``
    (dataclasses resolve their annotations there); both are undone after the test."""

    def load(name: str):
        monkeypatch.syspath_prepend(str(EXAMPLES))
        spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, name, module)
        spec.loader.exec_module(module)
        return module

    return load


def pytest_configure(config):
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
