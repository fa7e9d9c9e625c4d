"""A Markovian hierarchical VAE in the same framework as :class:`~pyrodiff.Diffusion`.

p_θ(x_0, z_{1:L}) = p(z_L) Π_{l=L}^{2} p_θ(z_{l−1} | z_l) · p_θ(x_0 | z_1), with latent sizes
d_1 … d_L that may be smaller than the data. Where a diffusion model fixes its guide, this model
comes with a learned one (:class:`~pyrodiff.guides.HierarchicalVAEGuide`). Sites: ``"z_L"`` … ``"z_1"`` (the real
layer number, e.g. ``"z_3"``) and ``"x_0"``, all in ``pyro.plate("data")``; the decoder is one of
:mod:`pyrodiff.likelihoods`, so bits/dim on quantised data mean the same as for a diffusion
model, and :func:`pyrodiff.infer.sitewise_elbo_terms` gives the per-layer decomposition
(prior = layer L, diffusion column l − 1 = layer l, reconstruction = the decoder).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.nn import PyroModule
from torch import Tensor, nn

from ..errors import ConfigError
from ..likelihoods import GaussianLikelihood, Likelihood
from ..modules import (
    batch_size_argument,
    data_plate,
    draw_global_sites,
    fast_bound_hook,
    site_name,
)
from ..validation import check_data

__all__ = ["HierarchicalVAE"]


class _GaussianConditional(nn.Module):
    """(loc, scale) of a diagonal Gaussian over R^out given a vector in R^in: an MLP with a
    linear skip path (hidden = 0: affine loc, constant scale, so the model is linear-Gaussian)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int, min_scale: float) -> None:
        super().__init__()
        self.skip = nn.Linear(in_dim, out_dim)
        self.raw_scale = nn.Parameter(torch.full((out_dim,), math.log(math.e - 1)))
        self.min_scale = min_scale
        self.hidden = hidden
        if hidden:
            self.mlp = nn.Sequential(
                nn.Linear(in_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU()
            )
            self.head = nn.Linear(hidden, 2 * out_dim)
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        loc, raw = self.skip(z), self.raw_scale.expand(z.shape[:-1] + self.raw_scale.shape)
        if self.hidden:
            d_loc, d_raw = self.head(self.mlp(z)).chunk(2, -1)
            loc, raw = loc + d_loc, raw + d_raw
        return loc, F.softplus(raw) + self.min_scale


class HierarchicalVAE(PyroModule):
    """p(z_L) = N(0, I), p_θ(z_{l−1} | z_l) = N(μ_l(z_l), diag σ_l(z_l)²), p_θ(x_0 | z_1) = the
    likelihood with location and scale from z_1.

    Args:
        event_shape: the shape of one datum.
        latent_dims: (d_1, …, d_L), bottom (next to the data) to top.
        likelihood: the decoder's family (:class:`~pyrodiff.GaussianLikelihood` unless given;
            :class:`~pyrodiff.DiscretizedGaussianLikelihood` for quantised data).
        hidden: width of the conditionals' MLPs; 0 makes every conditional affine with a
            constant scale (a linear-Gaussian model when the likelihood is Gaussian).
        min_scale: a floor on every scale.
        name: the prefix of its parameters and sites, in Pyro's convention ("" for none); a
            sub-program like :class:`~pyrodiff.Diffusion` (plates, names, particles).
    """

    def __init__(
        self,
        event_shape: tuple[int, ...],
        latent_dims: Sequence[int],
        likelihood: Likelihood | None = None,
        hidden: int = 128,
        min_scale: float = 1e-3,
        name: str = "",
    ) -> None:
        super().__init__(name)
        self.name = name
        dims = tuple(int(d) for d in latent_dims)
        if not dims or any(d < 1 for d in dims):
            raise ConfigError(
                f"latent_dims must be one or more positive sizes, got {latent_dims!r}"
            )
        if hidden < 0 or not min_scale > 0:
            raise ConfigError(f"need hidden >= 0 and min_scale > 0, got {hidden}, {min_scale}")
        self.event_shape = tuple(int(s) for s in event_shape)
        self.latent_dims = dims
        self.likelihood = likelihood if likelihood is not None else GaussianLikelihood()
        D = math.prod(self.event_shape)
        self.decoder = _GaussianConditional(dims[0], D, hidden, min_scale)
        # transitions[l - 2] is p(z_{l−1} | z_l), l = 2 … L
        self.transitions = nn.ModuleList(
            _GaussianConditional(dims[l], dims[l - 1], hidden, min_scale)
            for l in range(1, len(dims))  # noqa: E741
        )

    @property
    def num_layers(self) -> int:
        """L."""
        return len(self.latent_dims)

    @property
    def num_steps(self) -> int:
        """L, under the name the pair checks of :mod:`pyrodiff.validation` read."""
        return self.num_layers

    def forward(
        self,
        x0: Tensor | None = None,
        batch_size: int | None = None,
        *,
        num_samples: int | None = None,
    ) -> Tensor:
        """Run p_θ(x_0, z_{1:L}); returns x_0 (the observed data when ``x0`` is given, else
        ``batch_size`` draws; ``num_samples=`` is its deprecated name)."""
        batch_size = batch_size_argument(batch_size, num_samples)
        if x0 is not None:
            check_data(x0, self.event_shape, self.likelihood, name="x0")
            batch_size = x0.shape[0]
        L, dtype = self.num_layers, self.decoder.skip.weight.dtype
        hook = fast_bound_hook()
        draw_global_sites(self)
        with data_plate(self, batch_size, "the model") as N:
            if hook is not None:
                return hook.model(self, x0, N)
            top = torch.zeros(N, self.latent_dims[-1], dtype=dtype)
            z = pyro.sample(
                site_name(self, f"z_{L}"), dist.Normal(top, torch.ones_like(top)).to_event(1)
            )
            for layer in range(L, 1, -1):
                loc, scale = self.transitions[layer - 2](z)
                z = pyro.sample(
                    site_name(self, f"z_{layer - 1}"), dist.Normal(loc, scale).to_event(1)
                )
            loc, scale = self.decoder(z)
            # leading dimensions beyond the data's are particles (vectorised ELBOs, Predictive)
            shape = loc.shape[:-1] + self.event_shape
            p_x = self.likelihood.distribution(loc.reshape(shape), scale.reshape(shape))
            return pyro.sample(site_name(self, "x_0"), p_x.to_event(len(self.event_shape)), obs=x0)
