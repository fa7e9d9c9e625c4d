"""Datasets in the model's space: the embedded digits, 2-D densities with exact log density,
the user's own arrays, and a registry naming them all."""

from .arrays import load_array
from .base import Dataset, Density, Split
from .digits import DIGITS_TEST_START, DIGITS_TRAIN_SIZE, DIGITS_VALIDATION_SIZE, load_digits
from .registry import DatasetName, dataset_names, get_dataset
from .toy2d import Checkerboard, GaussianMixture2D, Standardized, Toy2D, load_toy2d, toy_density

__all__ = [
    "Checkerboard",
    "DIGITS_TEST_START",
    "DIGITS_TRAIN_SIZE",
    "DIGITS_VALIDATION_SIZE",
    "Split",
    "Dataset",
    "DatasetName",
    "Density",
    "GaussianMixture2D",
    "Standardized",
    "Toy2D",
    "dataset_names",
    "get_dataset",
    "load_array",
    "load_digits",
    "load_toy2d",
    "toy_density",
]
