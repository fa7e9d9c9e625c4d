"""scikit-learn's bundled 8×8 digits: 1,797 images with 17 grey levels, no download."""

from __future__ import annotations

import torch

from .base import Dataset

__all__ = ["load_digits", "DIGITS_TRAIN_SIZE", "DIGITS_VALIDATION_SIZE", "DIGITS_TEST_START"]

DIGITS_TEST_START = 1500
"""test = the images from this index on in scikit-learn's order: the last 297."""
DIGITS_VALIDATION_SIZE = 200
"""validation = the last 200 of the first 1500 images, so the test split stays the last 297."""
DIGITS_TRAIN_SIZE = DIGITS_TEST_START - DIGITS_VALIDATION_SIZE
"""train = the first 1300 images."""


def load_digits(dtype: torch.dtype | None = None) -> Dataset:
    """The digits as (N, 1, 8, 8) tensors in [−1, 1] on 17 levels (0 … 16 rescaled).

    Every bits/dim pyrodiff reports on digits uses these splits: train the first 1300 images,
    validation the next 200, test the last 297.
    """
    from sklearn.datasets import load_digits as _sk_load_digits

    images = torch.as_tensor(_sk_load_digits().images, dtype=torch.float64)  # levels 0 … 16
    x = (images / 8.0 - 1.0).unsqueeze(1).to(dtype or torch.get_default_dtype())
    return Dataset(
        name="digits",
        train=x[:DIGITS_TRAIN_SIZE],
        validation=x[DIGITS_TRAIN_SIZE:DIGITS_TEST_START],
        test=x[DIGITS_TEST_START:],
        num_levels=17,
    )
