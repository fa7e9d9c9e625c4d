"""The noise process in terms of its log-SNR λ: the one place ᾱ, 1 − ᾱ, α and σ come from λ.

λ = log SNR = log(ᾱ / (1 − ᾱ)), so ᾱ = α² = sigmoid(λ) and 1 − ᾱ = σ² = sigmoid(−λ). λ may be a
number, a tensor per datum, or carry the data's event shape (a schedule per dimension): every
function here is elementwise.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["alpha_sigma", "noise_variance", "signal_variance"]


def signal_variance(log_snr: Tensor) -> Tensor:
    """ᾱ = α² = sigmoid(λ)."""
    return torch.sigmoid(log_snr)


def noise_variance(log_snr: Tensor) -> Tensor:
    """1 − ᾱ = σ² = sigmoid(−λ), accurate where ᾱ is close to 1."""
    return torch.sigmoid(-log_snr)


def alpha_sigma(log_snr: Tensor) -> tuple[Tensor, Tensor]:
    """(α, σ) = (√sigmoid(λ), √sigmoid(−λ)): x_λ = α x_0 + σ ε."""
    return signal_variance(log_snr).sqrt(), noise_variance(log_snr).sqrt()
