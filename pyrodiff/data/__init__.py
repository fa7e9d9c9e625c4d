"""Datasets in the model's space: the embedded digits, and (see submodules) more."""

from .base import Dataset
from .digits import DIGITS_TRAIN_SIZE, load_digits

__all__ = ["Dataset", "DIGITS_TRAIN_SIZE", "load_digits"]
