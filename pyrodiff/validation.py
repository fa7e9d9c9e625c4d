"""Checks at the boundaries: one clear error naming what is wrong and what is expected."""

from __future__ import annotations

import torch
from torch import Tensor

from .errors import DataError, ModelMismatchError

__all__ = ["check_data", "check_pair"]


def check_data(
    x0: object,
    event_shape: tuple[int, ...],
    likelihood=None,
    name: str = "data",
    values: bool = True,
) -> None:
    """Raise :class:`DataError` unless ``x0`` is a finite float tensor of shape (N, *event_shape).

    With ``values=False`` only the type, dtype and shape are checked: nothing is read back from
    the tensor's device (finiteness and the likelihood's support are not checked).
    """
    if not isinstance(x0, Tensor):
        raise DataError(f"{name} must be a torch.Tensor, got {type(x0).__name__}")
    if not x0.is_floating_point():
        raise DataError(f"{name} must be a floating-point tensor, got dtype {x0.dtype}")
    if x0.dim() != len(event_shape) + 1 or tuple(x0.shape[1:]) != tuple(event_shape):
        raise DataError(
            f"{name} must have shape (batch, {', '.join(map(str, event_shape))}), got {tuple(x0.shape)}"
        )
    if x0.shape[0] == 0:
        raise DataError(f"{name} is empty: expected at least one datum")
    if not values:
        return
    if not torch.isfinite(x0).all():
        raise DataError(f"{name} contains NaN or inf values; expected finite numbers")
    if likelihood is not None:
        likelihood.validate(x0)


def check_pair(model, guide) -> None:
    """Raise :class:`ModelMismatchError` unless the guide's T and data shape match the model's."""
    m_steps = getattr(model, "num_steps", None)
    g_steps = getattr(guide, "num_steps", None)
    if m_steps is not None and g_steps is not None and m_steps != g_steps:
        raise ModelMismatchError(
            f"the guide has T = {g_steps} steps but the model has T = {m_steps}"
        )
    m_shape = getattr(model, "event_shape", None)
    g_shape = getattr(guide, "event_shape", None)
    if m_shape is not None and g_shape is not None and tuple(m_shape) != tuple(g_shape):
        raise ModelMismatchError(
            f"the guide's data shape {tuple(g_shape)} does not match the model's {tuple(m_shape)}"
        )
