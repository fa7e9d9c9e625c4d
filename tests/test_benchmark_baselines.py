"""The plain-PyTorch baselines of ``benchmarks/`` compute what pyrodiff computes.

A speed ratio means something only if both sides do the same work; here they must also give
the same numbers, from the same noise, in float64.
"""

import sys
from pathlib import Path

import pytest
import torch

from pyrodiff import Diffusion, DiscretizedGaussianLikelihood, ForwardGuide, linear_schedule
from pyrodiff.infer import elbo_terms
from pyrodiff.networks import MLPDenoiser
from pyrodiff.sampling import ancestral_sample

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from baselines import PlainTables, ancestral_loop, full_bound  # noqa: E402


def _pair(T: int, levels: int | None):
    torch.manual_seed(0)
    sched = linear_schedule(T)
    lik = DiscretizedGaussianLikelihood(levels) if levels else None
    model = Diffusion(MLPDenoiser(2, hidden=16, depth=2, time_dim=8), sched, likelihood=lik)
    return model, ForwardGuide(sched), PlainTables.from_schedule(sched, torch.float64, "cpu")


@pytest.mark.parametrize(("T", "levels"), [(50, None), (1000, None), (30, 17)])
def test_the_plain_full_bound_equals_elbo_terms(T, levels):
    model, guide, tab = _pair(T, levels)
    x = torch.randn(5, 2).clamp(-1, 1)
    if levels:
        x = torch.round((x + 1) / 2 * (levels - 1)) / (levels - 1) * 2 - 1
    ours = elbo_terms(model, guide, x, batch_budget=64, generator=torch.Generator().manual_seed(3))
    plain = full_bound(model.denoiser, x, tab, levels, 64, torch.Generator().manual_seed(3))
    ours_cols = torch.cat([ours.reconstruction[:, None], -ours.diffusion, -ours.prior[:, None]], 1)
    torch.testing.assert_close(ours_cols, plain, rtol=1e-9, atol=1e-9)


def test_the_plain_sampling_loop_equals_ancestral_sample():
    model, _, tab = _pair(40, None)
    with torch.no_grad():
        plain = ancestral_loop(model.denoiser, tab, (6, 2), None, torch.Generator().manual_seed(5))
    ours = ancestral_sample(model, 6, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(ours, plain, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("levels", [None, 17])
def test_the_plain_vdm_loss_equals_continuous_elbo(levels):
    from baselines import vdm_loss

    from pyrodiff import ContinuousDiffusion, ContinuousForwardGuide, LinearLogSNR
    from pyrodiff.infer import ContinuousELBO

    torch.manual_seed(0)
    net = MLPDenoiser(2, hidden=16, depth=2, time_dim=8)
    lik = DiscretizedGaussianLikelihood(levels) if levels else None
    model = ContinuousDiffusion(
        net, LinearLogSNR(log_snr_start=13.3, log_snr_end=-5.0), likelihood=lik
    )
    x = torch.randn(7, 2).clamp(-1, 1)
    if levels:
        x = torch.round((x + 1) / 2 * (levels - 1)) / (levels - 1) * 2 - 1
    torch.manual_seed(4)
    ours = ContinuousELBO().per_datum_loss(model, ContinuousForwardGuide(), x)
    torch.manual_seed(4)
    plain = vdm_loss(net, x, -13.3, 5.0, levels)
    torch.testing.assert_close(ours, plain, rtol=1e-10, atol=1e-10)
