"""Generative models: the diffusion model p_θ(x_{0:T}), its exact Gaussian oracle, the HVAE."""

from .diffusion import Diffusion, ReverseVariance
from .hvae import HierarchicalVAE
from .oracle import gaussian_oracle

__all__ = ["Diffusion", "HierarchicalVAE", "ReverseVariance", "gaussian_oracle"]
