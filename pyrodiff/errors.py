"""Typed exceptions raised at pyrodiff's boundaries.

Every error names what is wrong and what was expected, so that the CLI can print it as one
line. They subclass ``ValueError`` (or ``RuntimeError``) so that code catching the built-in
types keeps working.
"""

from __future__ import annotations


class PyrodiffError(Exception):
    """Base class of every error pyrodiff raises on purpose.

    ``fields`` names the configuration fields the message is about (in the words it uses), so
    that the command line can say them as the flags the user typed (``num_steps`` → ``--T``).
    """

    def __init__(self, message: str = "", *, fields: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.fields = tuple(fields)


class DataError(PyrodiffError, ValueError):
    """Data has the wrong shape, dtype, range or contains non-finite values."""


class ConfigError(PyrodiffError, ValueError):
    """A schedule, network or option is invalid (T < 1, β outside (0, 1), unknown option…)."""


class ModelMismatchError(PyrodiffError, ValueError):
    """Two objects that must agree (a guide and its model, a checkpoint and its config) do not."""


class NotLinearGaussianError(PyrodiffError, TypeError):
    """An exact computation was asked of a model that is not linear-Gaussian."""


class CheckpointError(PyrodiffError, RuntimeError):
    """A checkpoint is missing, truncated, corrupt, unsafe or from another configuration."""


class DeviceError(PyrodiffError, RuntimeError):
    """A device was requested that this machine does not have."""


class NonFiniteError(PyrodiffError, FloatingPointError):
    """Training produced a non-finite loss or gradient."""
