"""The doubling rule of the study (examples/_converge.py): which budgets it trains, which run it
keeps, when it calls a configuration converged, and that a run folder is reused only for its
own configuration."""

from types import SimpleNamespace

import pytest
import torch

from pyrodiff.config import RunConfig


def _fake_runs(module, monkeypatch, curve: dict[int, tuple[float, float]]) -> list[int]:
    """train_run replaced by a table: updates -> (validation ELBO, SE); returns the budgets
    asked for, in order."""
    asked = []

    def fake(config, folder, say=print):
        asked.append(config.updates)
        elbo, se = curve[config.updates]
        return SimpleNamespace(updates=config.updates, validation=(elbo, se), folder=folder)

    monkeypatch.setattr(module, "train_run", fake)
    return asked


@pytest.mark.parametrize(
    ("curve", "budgets", "kept", "converged"),
    [
        # rises by > 2 SE once, then by < 2 SE: the longer run of the last pair is kept
        ({10: (-3.0, 0.1), 20: (-2.0, 0.1), 40: (-1.9, 0.1)}, [10, 20, 40], 40, True),
        # over-fitting: the doubling lowers the ELBO, so the shorter run is kept
        ({10: (-3.0, 0.1), 20: (-2.0, 0.1), 40: (-2.5, 0.1)}, [10, 20, 40], 20, True),
        # still rising by > 2 SE when the cap is reached: not converged, the last run kept
        ({10: (-3.0, 0.1), 20: (-2.0, 0.1), 40: (-1.0, 0.1)}, [10, 20, 40], 40, False),
        # exactly 2 SE is a rise that counts (the rule is "less than 2 SE")
        ({10: (-3.0, 0.5), 20: (-2.0, 0.1), 40: (-2.0, 0.1)}, [10, 20, 40], 40, True),
    ],
)
def test_doubling_rule(load_example, monkeypatch, tmp_path, curve, budgets, kept, converged):
    module = load_example("_converge")
    asked = _fake_runs(module, monkeypatch, curve)
    result = module.train_to_convergence(
        RunConfig(data="eight_gaussians"), tmp_path, first_updates=10, max_updates=40
    )
    assert asked == budgets
    assert result.kept.updates == kept and result.converged is converged


def test_single_budget_is_not_converged(load_example, monkeypatch, tmp_path):
    module = load_example("_converge")
    _fake_runs(module, monkeypatch, {10: (-1.0, 0.1)})
    result = module.train_to_convergence(
        RunConfig(data="eight_gaussians"), tmp_path, first_updates=10, max_updates=19
    )
    assert result.converged is False and result.last_gain is None
    with pytest.raises(ValueError, match="first_updates <= max_updates"):
        module.train_to_convergence(
            RunConfig(data="eight_gaussians"), tmp_path, first_updates=20, max_updates=10
        )


def test_run_folder_of_another_configuration_is_refused(load_example, tmp_path):
    module = load_example("_converge")
    small = RunConfig(data="eight_gaussians", network="mlp", width=8, batch_size=16, num_steps=2)
    run = module.train_run(small.replace(updates=4), tmp_path / "run", say=lambda _: None)
    assert run.updates == 4 and run.cpu_minutes > 0 and run.curve[-1]["updates"] == 4
    # a finished run is loaded, not trained again: the same parameters come back
    again = module.train_run(small.replace(updates=4), tmp_path / "run", say=pytest.fail)
    for a, b in zip(run.loaded.model.parameters(), again.loaded.model.parameters(), strict=True):
        assert (a == b).all()
    with pytest.raises(ValueError, match="another configuration"):
        module.train_run(small.replace(updates=8), tmp_path / "run")


def test_an_unchecked_doubling_trains_and_keeps_the_same_runs_but_gives_no_verdict(
    load_example, monkeypatch, tmp_path
):
    # a quick run: the gain of the doubling is below 2 SE only because the SE is large
    module = load_example("_converge")
    curve = {20: (-6.16, 0.20), 40: (-5.83, 0.20)}
    _fake_runs(module, monkeypatch, curve)
    checked = module.train_to_convergence(
        RunConfig(data="eight_gaussians"), tmp_path, first_updates=20, max_updates=40
    )
    assert checked.converged is True  # what the rule says when asked
    asked = _fake_runs(module, monkeypatch, curve)
    quick = module.train_to_convergence(
        RunConfig(data="eight_gaussians"), tmp_path, first_updates=20, max_updates=40, check=False
    )
    assert asked == [20, 40] and quick.kept.updates == checked.kept.updates == 40
    assert quick.converged is None


def test_the_paired_rule_judges_each_doubling_by_per_datum_differences(
    load_example, monkeypatch, tmp_path
):
    # the unpaired validation ELBOs are flat within 2 SE, but every datum gains 0.05 under
    # common random numbers (a shared noise of SD 1 cancels): the paired rule asks for more
    module = load_example("_converge")
    tables = load_example("_tables")
    curve = {10: (-2.0, 0.1), 20: (-1.95, 0.1), 40: (-1.94, 0.1)}
    asked = _fake_runs(module, monkeypatch, curve)
    noise = torch.randn(400, generator=torch.Generator().manual_seed(0))
    shift = {10: 0.0, 20: 0.05, 40: 0.05}

    def per_datum(run):
        own = torch.Generator().manual_seed(run.updates)  # each run's own small noise
        return noise + shift[run.updates] + 1e-3 * torch.randn(400, generator=own)

    result = module.train_to_convergence(
        RunConfig(data="eight_gaussians"), tmp_path, first_updates=10, max_updates=40,
        per_datum=per_datum,
    )  # fmt: skip
    assert asked == [10, 20, 40] and result.converged is True and result.kept.updates == 40
    first, last = result.gain_table()
    assert first["gain"] > 2 * first["se"] and last["gain"] < 2 * last["se"]
    assert result.last_gain == (last["gain"], last["se"])
    # the unpaired rule would have stopped at the first doubling
    asked.clear()
    unpaired = module.train_to_convergence(
        RunConfig(data="eight_gaussians"), tmp_path, first_updates=10, max_updates=40
    )
    assert asked == [10, 20] and unpaired.gain_table() is None
    row = {"budgets": [], "updates": 40, "converged": True, "paired_gains": result.gain_table()}
    table = tables.convergence_table("T", [2], [row])
    assert table["header"][2] == "paired gain of each doubling"
    assert table["rows"][0][2].startswith("10→20: 0.0499 ± 0.0001; 20→40: ")
    plain = tables.convergence_table("T", [2], [{**row, "paired_gains": None}])
    assert "paired gain of each doubling" not in plain["header"]
