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
