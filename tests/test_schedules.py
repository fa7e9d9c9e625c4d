"""Schedules: the DDPM tables exactly, the t-indexing convention, respacing, and clear errors."""

import math

import pytest
import torch

from pyrodiff import ConfigError, NoiseSchedule, cosine_schedule, linear_schedule
from pyrodiff.schedules import schedule_from_alpha_bar, schedule_from_config


def test_linear_at_reference_is_ddpm_exactly():
    s = linear_schedule(1000)
    ddpm = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    assert torch.equal(s.betas[1:], ddpm)
    assert torch.allclose(s.alpha_bar[1:], torch.cumprod(1 - ddpm, 0), rtol=1e-12, atol=0)


@pytest.mark.parametrize("make", [linear_schedule, cosine_schedule])
@pytest.mark.parametrize("T", [1, 2, 7, 100, 1000])
def test_tables_are_indexed_by_t(make, T):
    s = make(T)
    for table in (s.betas, s.alphas, s.alpha_bar, s.log_snr, s.posterior_variance):
        assert table.shape == (T + 1,) and table.dtype == torch.float64
    assert s.alpha_bar[0] == 1 and s.betas[0] == 0 and s.num_steps == T
    assert ((s.betas[1:] > 0) & (s.betas[1:] < 1)).all()
    assert (s.alpha_bar[1:] < s.alpha_bar[:-1]).all()
    assert (s.log_snr[1:] < s.log_snr[:-1]).all()
    assert torch.allclose(s.one_minus_alpha_bar, 1 - s.alpha_bar, atol=1e-15)
    t = torch.arange(2, T + 1)
    expected = s.betas[t] * (1 - s.alpha_bar[t - 1]) / (1 - s.alpha_bar[t])
    assert torch.allclose(s.posterior_variance[t], expected, rtol=1e-10)


@pytest.mark.parametrize("T", [1, 4, 10, 250])
def test_linear_respacing_keeps_ddpm_curve(T):
    """When T divides 1000 the chain is DDPM's respaced: ᾱ_t equals DDPM's ᾱ at t·1000/T."""
    ref = linear_schedule(1000).alpha_bar
    s = linear_schedule(T)
    stride = 1000 // T
    assert torch.allclose(s.alpha_bar, ref[::stride], rtol=1e-12)


def test_linear_any_T_is_valid_and_ends_at_same_alpha_bar():
    for T in (3, 7, 333, 1500):
        s = linear_schedule(T)
        assert math.isclose(
            s.alpha_bar[-1].item(), linear_schedule(1000).alpha_bar[-1].item(), rel_tol=1e-12
        )


def test_cosine_matches_its_definition_where_unclipped():
    T, off = 50, 0.008
    s = cosine_schedule(T)
    t = torch.arange(T + 1, dtype=torch.float64)
    f = torch.cos((t / T + off) / (1 + off) * math.pi / 2) ** 2
    unclipped = (1 - (f[1:] / f[:-1])) < 0.999
    ab = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(s.alphas[1:], 0)])
    assert torch.allclose(s.alpha_bar, ab)
    idx = torch.nonzero(unclipped).flatten() + 1
    assert torch.allclose(s.alpha_bar[idx[idx < T]], (f / f[0])[idx[idx < T]], rtol=1e-10)


def test_tables_stay_float64_under_dtype_casts():
    s = linear_schedule(10)
    s.float()
    assert s.alpha_bar.dtype == torch.float64


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_number_of_steps(bad):
    with pytest.raises(ConfigError, match="T"):
        linear_schedule(bad)
    with pytest.raises(ConfigError, match="T"):
        cosine_schedule(bad)


@pytest.mark.parametrize("betas", [[0.1, 0.0], [0.1, 1.0], [0.5, -0.1], [0.2, float("nan")], []])
def test_betas_outside_unit_interval(betas):
    with pytest.raises(ConfigError):
        NoiseSchedule(torch.tensor(betas, dtype=torch.float64))


def test_non_monotone_alpha_bar_is_refused():
    with pytest.raises(ConfigError, match="monotone"):
        schedule_from_alpha_bar(torch.tensor([1.0, 0.5, 0.7, 0.1]))
    s = schedule_from_alpha_bar(torch.tensor([1.0, 0.9, 0.5, 0.1]))
    assert torch.allclose(s.alpha_bar, torch.tensor([1.0, 0.9, 0.5, 0.1], dtype=torch.float64))


def test_config_round_trip():
    for s in (linear_schedule(17), cosine_schedule(9)):
        again = schedule_from_config(s.config())
        assert torch.equal(again.betas, s.betas)
    with pytest.raises(ConfigError, match="unknown schedule"):
        schedule_from_config({"name": "quadratic", "num_steps": 3})
