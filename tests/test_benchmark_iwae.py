"""The plain-PyTorch IWAE log-weights of ``benchmarks/`` compute what pyrodiff computes.

Same network, same noise (one generator, drawn in the same order), float64: the two must
agree to round-off, or the benchmark's ``iwae_ratio`` would compare different work.
"""

import sys
from pathlib import Path

import pytest
import torch

from pyrodiff import Diffusion, DiscretizedGaussianLikelihood, ForwardGuide, linear_schedule
from pyrodiff.infer.chain import closed_form_log_weights
from pyrodiff.networks import MLPDenoiser

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from baselines import PlainTables, iwae_log_weights  # noqa: E402


@pytest.mark.parametrize(
    ("T", "levels", "budget"), [(50, None, 120), (1000, None, 8192), (30, 17, 64)]
)
def test_the_plain_iwae_log_weights_equal_pyrodiffs(T, levels, budget):
    torch.manual_seed(0)
    sched = linear_schedule(T)
    lik = DiscretizedGaussianLikelihood(levels) if levels else None
    model = Diffusion(MLPDenoiser(2, hidden=16, depth=2, time_dim=8), sched, likelihood=lik)
    tab = PlainTables.from_schedule(sched, torch.float64, "cpu")
    x = torch.randn(3, 2).clamp(-1, 1)
    if levels:
        x = torch.round((x + 1) / 2 * (levels - 1)) / (levels - 1) * 2 - 1
    ours = closed_form_log_weights(
        model,
        ForwardGuide(sched),
        x,
        4,
        batch_budget=budget,
        generator=torch.Generator().manual_seed(3),
    )
    plain = iwae_log_weights(
        model.denoiser, x, tab, levels, 4, budget, torch.Generator().manual_seed(3)
    )
    # sums of ~T terms of size ~1: 1e-9 relative is far above float64 round-off
    torch.testing.assert_close(ours, plain, rtol=1e-9, atol=1e-9)
