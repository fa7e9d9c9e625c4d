"""The denoisers' latent input and dropout: what they change and what they leave alone."""

from __future__ import annotations

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
    fig = plot_schedule_images(lam, title="λ per pixel")
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in panels] == ["t = 0", "t = 0.5", "t = 1"]
    limits = {ax.images[0].get_clim() for ax in panels}
    assert len(limits) == 1  # one colour scale for every time
    lo, hi = limits.pop()
    assert lo == pytest.approx(min(v.min().item() for v in lam.values()))
    assert hi == pytest.approx(max(v.max().item() for v in lam.values()))
    from pyrodiff.errors import DataError

    with pytest.raises(DataError, match="expected"):
        plot_schedule_images({0.0: torch.zeros(3, 8, 8)})
