"""Random linear-Gaussian diffusion models for the exact tests: a LinearDenoiser with random
weights, so the reverse kernels are affine and every bound has a closed form
(tests/reference.py), and the forward chain is a loose guide."""

from __future__ import annotations

import torch

from pyrodiff import Diffusion, NoiseSchedule, Parameterization, ReverseVariance
from pyrodiff.networks import LinearDenoiser


def random_linear_diffusion(
    schedule: NoiseSchedule,
    dim: int,
    parameterization: Parameterization,
    variance: ReverseVariance,
    prior_loc: torch.Tensor,
    prior_scale: torch.Tensor,
    seed: int = 0,
    log_variance_spread: float = 0.0,
) -> Diffusion:
    """Weights and biases ~ N(0, 0.3²) after ``torch.manual_seed(seed)``; a PER_STEP model's
    log σ_t² moved by N(0, spread²) off its start. The global stream is left where a caller
    drawing its data next expects it."""
    torch.manual_seed(seed)
    model = Diffusion(
        LinearDenoiser(dim, schedule.num_steps),
        schedule,
        parameterization=parameterization,
        variance=variance,
        prior_loc=prior_loc,
        prior_scale=prior_scale,
    )
    with torch.no_grad():
        model.denoiser.weight.normal_(0, 0.3)
        model.denoiser.bias.normal_(0, 0.3)
        if log_variance_spread and variance is ReverseVariance.PER_STEP:
            model.log_variance.add_(log_variance_spread * torch.randn_like(model.log_variance))
    return model
