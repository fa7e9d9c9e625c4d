"""fit's CPU thread count: one thread unless the user chose a count, announced, and restored."""

import pytest
import torch

from pyrodiff import ConfigError, Diffusion, ForwardGuide, devices, linear_schedule
from pyrodiff.devices import Threads, choose_threads
from pyrodiff.networks import MLPDenoiser
from pyrodiff.train import fit


@pytest.fixture
def fresh_torch(monkeypatch):
    """A process as a user starts it: torch at 2 threads, as it was when pyrodiff was imported,
    and no thread variable in the environment; torch's count is restored after the test."""
    old = torch.get_num_threads()
    for name in devices.THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    torch.set_num_threads(2)
    monkeypatch.setattr(devices, "_THREADS_AT_IMPORT", 2)
    yield
    torch.set_num_threads(old)


def test_auto_chooses_one_thread_when_the_user_chose_none(fresh_torch):
    choice = choose_threads(Threads.AUTO, "cpu")
    assert (choice.threads, choice.before, choice.changes) == (1, 2, True)
    line = choice.message()
    assert "\n" not in line and "1 CPU thread " in line and "threads=N" in line
    assert torch.get_num_threads() == 2  # choosing changes nothing by itself


@pytest.mark.parametrize("variable", devices.THREAD_VARIABLES)
def test_auto_keeps_a_count_set_in_the_environment(fresh_torch, monkeypatch, variable):
    monkeypatch.setenv(variable, "2")
    choice = choose_threads(Threads.AUTO, "cpu")
    assert choice.threads == 2 and not choice.changes and variable in choice.reason


def test_auto_keeps_a_count_set_with_torch_after_import(fresh_torch):
    torch.set_num_threads(3)
    choice = choose_threads(Threads.AUTO, "cpu")
    assert choice.threads == 3 and not choice.changes


def test_auto_keeps_torchs_count_on_cuda_and_keep_keeps_it_anywhere(fresh_torch):
    assert choose_threads(Threads.AUTO, torch.device("cuda")).threads == 2
    assert choose_threads(Threads.KEEP, "cpu").threads == 2


def test_an_integer_is_used_as_given(fresh_torch, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert choose_threads(4, "cpu").threads == 4


@pytest.mark.parametrize("bad", [0, -1, True, "auto", 1.0, None])
def test_bad_thread_counts_are_one_clear_error(bad):
    with pytest.raises(ConfigError, match="threads must be"):
        choose_threads(bad, "cpu")


def _small_fit(**kwargs):
    torch.manual_seed(0)
    schedule = linear_schedule(4)
    model = Diffusion(MLPDenoiser(2, hidden=8, depth=1), schedule)
    seen = []
    fit(
        model,
        ForwardGuide(schedule),
        torch.randn(32, 2),
        updates=2,
        batch_size=8,
        device="cpu",
        callback=lambda step, loss: seen.append(torch.get_num_threads()),
        **kwargs,
    )
    return seen


def test_fit_trains_on_its_choice_says_so_once_and_restores_torchs_count(fresh_torch, capsys):
    assert _small_fit(progress=True) == [1, 1]
    assert torch.get_num_threads() == 2
    err = capsys.readouterr().err
    assert err.count("pyrodiff: training on 1 CPU thread (torch had 2") == 1
    # a count the user asked for is used, and nothing is announced without the bar
    assert _small_fit(progress=False, threads=3) == [3, 3]
    assert _small_fit(progress=False, threads=Threads.KEEP) == [2, 2]
    assert "CPU thread" not in capsys.readouterr().err
    assert torch.get_num_threads() == 2


def test_fit_refuses_a_bad_thread_count_before_training():
    with pytest.raises(ConfigError, match="threads must be >= 1, got 0"):
        _small_fit(progress=False, threads=0)
