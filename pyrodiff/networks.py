"""Denoisers: plain ``torch.nn`` modules with ``forward(x_t, t) -> tensor shaped like x_t``.

``t`` is a tensor of shape ``(batch,)``: the real timestep (1 … T) of a discrete chain, or a
continuous time feature (:class:`~pyrodiff.ContinuousDiffusion` passes 1000 × a scaled time or
log-SNR, so the same sinusoidal embedding sees the same range). No Pyro here:
:class:`~pyrodiff.Diffusion` decides what the output means (ε, x_0 or v) and which density it
parameterises. Any ``nn.Module`` with the same contract can be used instead; if it has an
``event_shape`` attribute the model reads the data shape from it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .errors import ConfigError

__all__ = ["FourierFeatures", "TimeEmbedding", "MLPDenoiser", "UNetDenoiser", "LinearDenoiser"]


class TimeEmbedding(nn.Module):
    """Sinusoidal features of t followed by a two-layer MLP (Transformer-style frequencies)."""

    def __init__(self, dim: int, max_period: float = 10_000.0) -> None:
        super().__init__()
        if dim < 2 or dim % 2:
            raise ConfigError(f"time embedding dim must be an even integer >= 2, got {dim}")
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        angles = t.to(self.freqs.dtype)[:, None] * self.freqs[None, :]
        feats = torch.cat([angles.sin(), angles.cos()], dim=-1).to(self.mlp[0].weight.dtype)
        return self.mlp(feats)


class FourierFeatures(nn.Module):
    """The input with sin(2^n π x) and cos(2^n π x) appended along the channel dimension (VDM).

    For data on a grid of spacing Δ, exponents n with 2^n ≈ 1/Δ let the network see where x_t
    sits between two levels: the scale that decides the bound when the noise is below one
    level. ``exponents=()`` is the identity. Channels grow from C to C (1 + 2 K).
    """

    def __init__(self, exponents: tuple[int, ...] = ()) -> None:
        super().__init__()
        exps = tuple(int(n) for n in exponents)
        if any(isinstance(n, bool) for n in exponents):
            raise ConfigError(f"Fourier exponents must be integers, got {exponents!r}")
        self.exponents = exps
        freqs = torch.tensor([math.pi * 2.0**n for n in exps], dtype=torch.float64)
        self.register_buffer("freqs", freqs, persistent=False)

    def channels(self, channels: int) -> int:
        """The number of output channels for ``channels`` input channels."""
        return channels * (1 + 2 * len(self.exponents))

    def forward(self, x: Tensor) -> Tensor:
        if not self.exponents:
            return x
        # (B, C, …) → (B, C, K, …): every channel at every frequency
        shape = (1, 1, -1) + (1,) * (x.dim() - 2)
        angles = x.unsqueeze(2) * self.freqs.to(x.dtype).reshape(shape)
        feats = torch.cat([angles.sin(), angles.cos()], dim=2).flatten(1, 2)
        return torch.cat([x, feats], dim=1)


def _check_dropout(p: float) -> float:
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= p < 1.0:
        raise ConfigError(f"dropout must be a probability in [0, 1), got {p!r}")
    return float(p)


def _dropout(h: Tensor, p: float, training: bool) -> Tensor:
    # no op at all when off: the default network's step costs what it did
    return nn.functional.dropout(h, p, training) if p and training else h


def _latent_projection(latent_dim: int, time_dim: int) -> nn.Linear | None:
    """A latent z (MuLAN's auxiliary variable) enters as a learned projection added to the time
    embedding, so every block that sees the noise level sees z too."""
    if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 0:
        raise ConfigError(f"latent_dim must be an integer >= 0, got {latent_dim!r}")
    return nn.Linear(latent_dim, time_dim) if latent_dim else None


def _condition(emb: Tensor, projection: nn.Linear | None, latent: Tensor | None) -> Tensor:
    if projection is None:
        if latent is not None:
            raise ConfigError("this denoiser has no latent input (latent_dim = 0)")
        return emb
    if latent is None:
        raise ConfigError(
            f"this denoiser is conditioned on a latent of size {projection.in_features}: "
            "pass latent="
        )
    return emb + projection(latent.to(emb.dtype))


class MLPDenoiser(nn.Module):
    """A residual MLP for vector data x_t ∈ R^D, conditioned on t by an additive embedding.

    It parameterises whatever the model asks of it (ε̂_θ(x_t, t) by default).
    ``fourier_exponents`` adds :class:`FourierFeatures` of x_t to its input; ``latent_dim`` > 0
    conditions it on a latent z as well (``forward(x_t, t, latent=z)``), added to the time
    embedding. ``dropout`` drops units of each residual branch while training (a regulariser
    for small data sets; ``model.eval()`` turns it off for evaluation).
    """

    def __init__(
        self,
        data_dim: int,
        hidden: int = 128,
        depth: int = 3,
        time_dim: int = 64,
        out_dim: int | None = None,
        fourier_exponents: tuple[int, ...] = (),
        latent_dim: int = 0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.dropout = _check_dropout(dropout)
        if data_dim < 1 or hidden < 1 or depth < 1:
            raise ConfigError(
                f"MLPDenoiser needs data_dim, hidden, depth >= 1, got {data_dim}, {hidden}, {depth}"
            )
        self.event_shape = (data_dim,)
        self.time = TimeEmbedding(time_dim)
        self.latent = _latent_projection(latent_dim, time_dim)
        self.features = FourierFeatures(fourier_exponents)
        self.inp = nn.Linear(self.features.channels(data_dim), hidden)
        self.temb = nn.ModuleList(nn.Linear(time_dim, hidden) for _ in range(depth))
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden)
            )
            for _ in range(depth)
        )
        # out_dim = 2·data_dim for a learned reverse variance (ReverseVariance.LEARNED_RANGE)
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, out_dim or data_dim))

    def forward(self, x_t: Tensor, t: Tensor, latent: Tensor | None = None) -> Tensor:
        emb = _condition(self.time(t), self.latent, latent)
        h = self.inp(self.features(x_t))
        for proj, block in zip(self.temb, self.blocks, strict=True):
            h = h + _dropout(block(h + proj(emb)), self.dropout, self.training)
        return self.out(h)


class _ResBlock(nn.Module):
    def __init__(
        self, cin: int, cout: int, time_dim: int, groups: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.dropout = dropout
        self.norm1 = nn.GroupNorm(min(groups, cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.temb = nn.Linear(time_dim, cout)
        self.norm2 = nn.GroupNorm(min(groups, cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        h = h + self.temb(emb)[:, :, None, None]
        h = nn.functional.silu(self.norm2(h))
        h = self.conv2(_dropout(h, self.dropout, self.training))
        return self.skip(x) + h


class UNetDenoiser(nn.Module):
    """A small two-level convolutional U-Net for images shaped (C, H, W) with even H and W.

    Sized for 8×8 digits: ``base=32`` has about 0.2 M parameters and trains on two CPU cores
    in minutes. ``fourier_exponents`` adds :class:`FourierFeatures` of x_t to its input
    channels (for 17 grey levels on [−1, 1], spacing 2^−3: exponents 3, 4, 5); ``latent_dim``
    > 0 conditions it on a latent z, and ``dropout`` drops units before each residual block's
    second convolution while training, as in :class:`MLPDenoiser`.
    """

    def __init__(
        self,
        channels: int = 1,
        image_size: int | tuple[int, int] = 8,
        base: int = 32,
        time_dim: int = 64,
        groups: int = 8,
        out_channels: int | None = None,
        fourier_exponents: tuple[int, ...] = (),
        latent_dim: int = 0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        dropout = _check_dropout(dropout)
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        if h % 2 or w % 2 or h < 2 or w < 2:
            raise ConfigError(f"UNetDenoiser needs an even image size, got {h}x{w}")
        self.event_shape = (channels, h, w)
        out_channels = channels if out_channels is None else out_channels
        self.time = TimeEmbedding(time_dim)
        self.latent = _latent_projection(latent_dim, time_dim)
        self.features = FourierFeatures(fourier_exponents)
        self.inp = nn.Conv2d(self.features.channels(channels), base, 3, padding=1)
        self.down1 = _ResBlock(base, base, time_dim, groups, dropout)
        self.pool = nn.Conv2d(base, 2 * base, 3, stride=2, padding=1)
        self.mid1 = _ResBlock(2 * base, 2 * base, time_dim, groups, dropout)
        self.mid2 = _ResBlock(2 * base, 2 * base, time_dim, groups, dropout)
        self.up = nn.ConvTranspose2d(2 * base, base, 2, stride=2)
        self.up1 = _ResBlock(2 * base, base, time_dim, groups, dropout)
        self.out = nn.Sequential(
            nn.GroupNorm(min(groups, base), base),
            nn.SiLU(),
            nn.Conv2d(base, out_channels, 3, padding=1),
        )

    def forward(self, x_t: Tensor, t: Tensor, latent: Tensor | None = None) -> Tensor:
        emb = _condition(self.time(t), self.latent, latent)
        h0 = self.down1(self.inp(self.features(x_t)), emb)
        h = self.mid2(self.mid1(self.pool(h0), emb), emb)
        h = self.up1(torch.cat([self.up(h), h0], dim=1), emb)
        return self.out(h)


class LinearDenoiser(nn.Module):
    """An affine map of x_t with separate parameters for every t: output = W_t x_t + b_t.

    With it (and a fixed or per-step reverse variance and a Gaussian likelihood) the whole
    model is linear-Gaussian, so log p_θ(x_0) has a closed form
    (:func:`pyrodiff.infer.exact_log_evidence`). Parameters start at zero.
    """

    def __init__(self, data_dim: int, num_steps: int) -> None:
        super().__init__()
        if data_dim < 1 or num_steps < 1:
            raise ConfigError(
                f"LinearDenoiser needs data_dim >= 1 and num_steps >= 1, got {data_dim}, {num_steps}"
            )
        self.event_shape = (data_dim,)
        self.num_steps = num_steps
        self.weight = nn.Parameter(torch.zeros(num_steps + 1, data_dim, data_dim))
        self.bias = nn.Parameter(torch.zeros(num_steps + 1, data_dim))

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        return torch.einsum("bij,bj->bi", self.weight[t], x_t) + self.bias[t]
