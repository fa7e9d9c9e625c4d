"""Device selection: ``"auto"`` picks CUDA when it is present, the CPU otherwise."""

from __future__ import annotations

import torch

from .errors import ConfigError, DeviceError

__all__ = ["param_dtype", "resolve_device"]


def param_dtype(*modules: torch.nn.Module) -> torch.dtype:
    """The floating dtype of the first floating parameter of ``modules`` (the default dtype if
    there is none): the dtype data and noise must have to meet the model's weights."""
    for module in modules:
        for p in module.parameters():
            if p.is_floating_point():
                return p.dtype
    return torch.get_default_dtype()


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` (or a torch.device) into a device.

    Asking for CUDA where there is none raises :class:`~pyrodiff.errors.DeviceError`.
    """
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(
            f"unknown device {device!r}; expected 'auto', 'cpu', 'cuda' or 'cuda:N'"
        ) from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {device!r} was requested but CUDA is not available on this machine"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(
                f"device {device!r} was requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    elif dev.type != "cpu":
        raise ConfigError(f"unsupported device {device!r}; expected 'auto', 'cpu' or 'cuda'")
    return dev
