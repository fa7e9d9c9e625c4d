"""The reference models are normalised distributions with the stated structure."""

import itertools
import math

import pytest
import torch

from pyrodiff.baselines import AutoregressiveCategorical, PixelCategorical
from pyrodiff.errors import ConfigError, DataError


def test_pixel_categorical_is_the_smoothed_frequency():
    levels = torch.tensor([[0, 2], [0, 1], [1, 1], [0, 1]])
    model = PixelCategorical.fit(levels, num_levels=3, pseudocount=1.0)
    # pixel 0 counts (3, 1, 0), pixel 1 counts (0, 3, 1); N = 4, K = 3
    p0 = torch.tensor([4.0, 2.0, 1.0]) / 7
    p1 = torch.tensor([1.0, 4.0, 2.0]) / 7
    torch.testing.assert_close(model.log_probs.exp(), torch.stack([p0, p1]).double())
    x = torch.tensor([[2, 0]])
    expected = math.log(p0[2].item()) + math.log(p1[0].item())
    assert model.log_prob(x).item() == pytest.approx(expected)
    assert model.bits_per_dim(x).item() == pytest.approx(-expected / (2 * math.log(2)))


def _all_configurations(D: int, K: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(K), repeat=D)))


@pytest.mark.parametrize("hidden", [0, 7])
def test_autoregressive_model_sums_to_one(hidden):
    torch.manual_seed(0)
    D, K = 3, 3
    model = AutoregressiveCategorical(D, K, hidden=hidden)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 1.5)  # away from the zero start, where it is trivially uniform
        total = model.log_prob(_all_configurations(D, K)).exp().sum()
    assert total.item() == pytest.approx(1.0, abs=1e-10)


def test_autoregressive_logits_see_only_earlier_pixels():
    torch.manual_seed(1)
    D, K = 5, 4
    model = AutoregressiveCategorical(D, K, hidden=9)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
        x = torch.randint(0, K, (6, D))
        base = model.logits(x)
        for d in range(D):
            y = x.clone()
            y[:, d] = (y[:, d] + 1) % K
            changed = (model.logits(y) - base).abs().amax(dim=(0, 2))
            assert torch.all(changed[: d + 1] == 0), f"pixel {d} leaks into earlier logits"
            if d + 1 < D:
                assert changed[d + 1 :].max() > 0


def test_autoregressive_fit_beats_uniform_on_dependent_pixels():
    # pixel 1 copies pixel 0: the chain rule lets the model put log K nats on pixel 0 only
    torch.manual_seed(2)
    K = 4
    first = torch.randint(0, K, (512,))
    x = torch.stack([first, first], 1)
    model = AutoregressiveCategorical(2, K, hidden=16)
    model.fit(x, steps=300, batch_size=128, lr=0.05, weight_decay=0.0)
    with torch.no_grad():
        nll = -model.log_prob(x).mean().item()
    # bounded on both sides: no model of these pairs beats their empirical entropy, which is
    # pixel 0's (pixel 1 is a copy); an independent model needs about 2 log K. Using the
    # dependence means landing nearer the first than the second: below entropy + ½ log K
    freq = torch.bincount(first, minlength=K).double() / len(first)
    entropy = -(freq * freq.log()).sum().item()
    assert entropy - 1e-9 <= nll < entropy + 0.5 * math.log(K), (nll, entropy)


def test_bad_levels_are_refused():
    model = PixelCategorical.fit(torch.tensor([[0, 1]]), num_levels=2)
    with pytest.raises(DataError, match="integer tensor"):
        model.log_prob(torch.tensor([[0.0, 1.0]]))
    with pytest.raises(DataError, match="lie in 0"):
        model.log_prob(torch.tensor([[0, 2]]))
    with pytest.raises(DataError, match="pixels"):
        model.log_prob(torch.tensor([[0, 1, 1]]))
    with pytest.raises(ConfigError):
        AutoregressiveCategorical(4, 1)
