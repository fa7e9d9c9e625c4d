"""Generative models: the diffusion model p_θ(x_{0:T}), its exact Gaussian oracle, the HVAE,
the continuous-time model whose ``discretize(T)`` is a Diffusion, and the adaptive one whose
noise process depends on a latent z."""

from .adaptive import AdaptiveDiffusion
from .continuous import Conditioning, ContinuousDiffusion
from .diffusion import Diffusion, ReverseVariance
from .hvae import HierarchicalVAE
from .oracle import gaussian_oracle

__all__ = [
    "AdaptiveDiffusion",
    "Conditioning",
    "ContinuousDiffusion",
    "Diffusion",
    "HierarchicalVAE",
    "ReverseVariance",
    "gaussian_oracle",
]
