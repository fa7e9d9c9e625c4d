"""Shared test settings: float64 arithmetic, Pyro's validation on, a clean parameter store."""

import pyro
import pytest
import torch


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


def pytest_configure(config):
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
