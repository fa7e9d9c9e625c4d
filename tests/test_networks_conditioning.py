"""The denoisers' latent input and dropout: what they change and what they leave alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pyrodiff.errors import ConfigError
from pyrodiff.networks import MLPDenoiser, UNetDenoiser


@pytest.mark.parametrize("make", [lambda **kw: MLPDenoiser(3, hidden=16, depth=2, **kw),
                                  lambda **kw: UNetDenoiser(1, 8, base=8, **kw)])  # fmt: skip
def test_dropout_is_off_in_eval_mode_and_the_weights_are_the_same(make):
    torch.manual_seed(0)
    plain = make()
    torch.manual_seed(0)
    dropped = make(dropout=0.3)
    # dropout adds no parameters: the same seed gives the same weights, the same state dict
    assert plain.state_dict().keys() == dropped.state_dict().keys()
    for a, b in zip(plain.parameters(), dropped.parameters(), strict=True):
        assert torch.equal(a, b)
    x = torch.randn((4,) + plain.event_shape)
    t = torch.full((4,), 7.0)
    dropped.eval()
    assert torch.equal(plain(x, t), dropped(x, t))
    dropped.train()
    assert not torch.allclose(plain(x, t), dropped(x, t))


def test_latent_changes_the_output_and_is_required_when_declared():
    torch.manual_seed(0)
    net = MLPDenoiser(3, hidden=16, depth=1, latent_dim=2)
    x, t = torch.randn(5, 3), torch.full((5,), 3.0)
    a = net(x, t, latent=torch.zeros(5, 2))
    b = net(x, t, latent=torch.ones(5, 2))
    assert not torch.allclose(a, b)
    with pytest.raises(ConfigError, match="pass latent="):
        net(x, t)
    with pytest.raises(ConfigError, match="no latent input"):
        MLPDenoiser(3)(x, t, latent=torch.zeros(5, 2))
    with pytest.raises(ConfigError, match="dropout"):
        MLPDenoiser(3, dropout=1.0)


def test_schedule_images_one_panel_per_time_on_one_scale():
    from pyrodiff.plots import plot_schedule_images
    from pyrodiff.schedules import MultivariateLogSNR

    sched = MultivariateLogSNR((1, 8, 8))
    with torch.no_grad():
        sched.start.add_(torch.linspace(0, 1, 64).reshape(1, 8, 8))
    times = (0.0, 0.5, 1.0)
    lam = {t: sched.log_snr(torch.full((1,), t, dtype=torch.float64))[0] for t in times}
    fig = plot_schedule_images(lam, centred=False, title="λ per pixel")
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in panels] == ["t = 0", "t = 0.5", "t = 1"]
    limits = {ax.images[0].get_clim() for ax in panels}
    assert len(limits) == 1  # one colour scale for every time
    lo, hi = limits.pop()
    assert lo == pytest.approx(min(v.min().item() for v in lam.values()))
    assert hi == pytest.approx(max(v.max().item() for v in lam.values()))
    # centred: each panel is λ minus its mean over pixels, on one scale symmetric about 0
    fig = plot_schedule_images(lam)
    panels = [ax for ax in fig.axes if ax.images]
    for ax, t in zip(panels, times, strict=True):
        shown = ax.images[0].get_array()
        want = lam[t].reshape(8, 8) - lam[t].mean()
        assert np.allclose(shown, want.detach().numpy())
        assert f"mean λ {lam[t].mean().item():.2f}" in ax.get_title()
    (clim,) = {ax.images[0].get_clim() for ax in panels}
    assert clim[1] == -clim[0] and clim[1] > 0
    from pyrodiff.errors import DataError

    with pytest.raises(DataError, match="expected"):
        plot_schedule_images({0.0: torch.zeros(3, 8, 8)})


@pytest.mark.parametrize("value, typed", [(1.0, "1"), (-0.1, "-0.1")])
def test_dropout_bounds_are_one_message_from_python_and_the_cli(tmp_path, value, typed):
    import contextlib
    import io

    from pyrodiff.cli import main
    from pyrodiff.config import RunConfig

    message = f"dropout must be a number in [0, 1), got {value!r}"
    with pytest.raises(ConfigError) as caught:
        RunConfig(data="eight_gaussians", dropout=value)
    assert str(caught.value) == message
    err = io.StringIO()
    argv = ["train", "--data", "eight_gaussians", "--updates", "1", "--dropout", typed]
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = main([*argv, "--out", str(tmp_path / "run")])
    assert status == 1 and "Traceback" not in err.getvalue()
    assert err.getvalue().strip().splitlines() == [
        f"pyrodiff: error: {message.replace('dropout', '--dropout')}"
    ]


def test_fit_evaluates_without_dropout_and_trains_with_it(monkeypatch):
    from pyrodiff.config import RunConfig, build
    from pyrodiff.train import fit, loop

    config = RunConfig(data="eight_gaussians", num_steps=4, width=16, depth=1, dropout=0.5)
    model, guide, data, loss = build(config)
    assert model.denoiser.dropout == 0.5
    seen = []
    real = loop.evaluate_split

    def spy(model, guide, x, **kwargs):
        seen.append([m.training for m in (*model.modules(), *guide.modules())])
        return real(model, guide, x, **kwargs)

    monkeypatch.setattr(loop, "evaluate_split", spy)
    fit(model, guide, data, loss=loss, updates=2, batch_size=16, progress=False, eval_every=1)
    assert seen and all(not any(flags) for flags in seen)  # every evaluation: dropout off
    assert all(m.training for m in model.modules())  # and training goes on with it


def test_the_variance_trained_interior_is_clipped_apart_from_the_network():
    from pyrodiff import ContinuousDiffusion, ContinuousForwardGuide, LearnedLogSNR
    from pyrodiff.infer import ContinuousELBO, ScheduleObjective
    from pyrodiff.infer.objectives import variance_trained_parameters
    from pyrodiff.train.step import _grad_norm

    torch.manual_seed(0)
    model = ContinuousDiffusion(MLPDenoiser(2, hidden=8, depth=1), LearnedLogSNR(hidden=4))
    guide = ContinuousForwardGuide()
    shape = model.schedule.parameters_of_shape()
    variance = ContinuousELBO(schedule_objective=ScheduleObjective.VARIANCE)
    assert variance_trained_parameters(variance, model, guide) == shape
    assert variance_trained_parameters(ContinuousELBO(), model, guide) == []
    # a huge interior gradient leaves the network's (below the clip) as it was
    rest = [p for p in model.parameters() if all(p is not q for q in shape)]
    for p in rest:
        p.grad = torch.full_like(p, 1e-3)
    for p in shape:
        p.grad = torch.full_like(p, 1e4)
    before = [p.grad.clone() for p in rest]
    norm = _grad_norm([rest, shape], 1.0, like=torch.zeros(()))
    assert all(torch.equal(p.grad, b) for p, b in zip(rest, before, strict=True))
    assert torch.stack([p.grad.norm() for p in shape]).norm() == pytest.approx(1.0, rel=1e-5)
    assert norm > 1e4  # the reported norm is the whole gradient's, before clipping
    # one group: the global norm, and everything scaled together
    for p in shape:
        p.grad = torch.full_like(p, 1e4)
    _grad_norm([rest + shape], 1.0, like=torch.zeros(()))
    assert all((p.grad < b).all() for p, b in zip(rest, before, strict=True))


def test_dropout_is_written_to_config_json_only_when_set():
    from pyrodiff.config import RunConfig

    plain = RunConfig(data="eight_gaussians")
    assert "dropout" not in plain.to_dict()  # old run folders are written as before
    assert RunConfig.from_dict(plain.to_dict()) == plain
    dropped = RunConfig(data="eight_gaussians", dropout=0.2)
    assert dropped.to_dict()["dropout"] == 0.2
    assert RunConfig.from_json(dropped.to_json()) == dropped
