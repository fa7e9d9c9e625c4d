"""Generative models: the diffusion model p_θ(x_{0:T}) and its exact Gaussian oracle."""

from .diffusion import Diffusion, ReverseVariance
from .oracle import gaussian_oracle

__all__ = ["Diffusion", "ReverseVariance", "gaussian_oracle"]
from .hvae import HierarchicalVAE  # noqa: E402

__all__ += ["HierarchicalVAE"]
