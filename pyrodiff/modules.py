"""Reading a plain ``nn.Module`` held by a :class:`~pyro.nn.PyroModule` in the hot paths.

Private Pyro attributes, read here and nowhere else (checked against pyro-ppl 1.9), because
Pyro has no public route to what they give:

- ``PyroModule._pyro_context``: the per-run context of a module tree. :func:`pyro_method`
  enters it as ``pyro.nn.pyro_method`` itself does (that decorator has no "only when a handler
  listens" variant), and :func:`child` reads its ``active`` flag and its per-run cache
  (``get`` / ``set``) to announce a submodule once per run, the way Pyro caches its own
  ``pyro.param`` statements there.
- ``PyroModule._pyro_get_fullname(name)``: the site-name prefix Pyro gives the submodule's
  parameters, used as the cache key, so that two modules under one tree never share a key.

If Pyro changes them, ``tests/test_model_and_guide.py`` (the parameters SVI sees, the traces'
param sites) fails.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import TypeVar

from pyro.nn import PyroModule
from pyro.poutine.runtime import am_i_wrapped
from torch import nn

__all__ = ["batch_size_argument", "child", "pyro_method"]

_F = TypeVar("_F", bound=Callable)


def child(owner: PyroModule, name: str) -> nn.Module:
    """``owner``'s submodule ``name``, announced to Pyro once per run of ``owner``.

    Reading such an attribute inside a Pyro context issues ``pyro.module`` (a ``pyro.param``
    per parameter tensor): that is how SVI and the traces see, say, a denoiser's weights or a
    learned schedule's parameters. Once per run is enough; per site it would cost
    T × (number of tensors) param statements per literal-chain step and per sampling run. With
    no handler listening (plain sampling, ``torch.optim`` on an ELBO module), or no parameter
    to announce, the submodule is returned directly.
    """
    module = owner._modules[name]
    ctx = owner._pyro_context
    # a module without parameters (a fixed schedule) has nothing to announce
    if ctx.active and am_i_wrapped() and next(module.parameters(), None) is not None:
        key = owner._pyro_get_fullname(name) + "#announced"
        if ctx.get(key) is None:
            ctx.set(key, True)
            return getattr(owner, name)
    return module


def pyro_method(fn: _F) -> _F:
    """:func:`pyro.nn.pyro_method` that opens the module's Pyro context only when a Pyro
    handler is listening (SVI, a trace, Predictive).

    With no handler, the context has nothing to record: parameters are read as plain tensors
    and ``pyro.param`` statements would go nowhere. Opening it anyway costs two look-ups of
    Pyro's settings per call, which the timestep-sampled estimators pay several times a step.
    """

    @functools.wraps(fn)
    def method(self, *args, **kwargs):
        if am_i_wrapped():
            with self._pyro_context:
                return fn(self, *args, **kwargs)
        return fn(self, *args, **kwargs)

    return method  # type: ignore[return-value]


def batch_size_argument(batch_size: int | None, num_samples: int | None) -> int | None:
    """The size of a model's data plate from ``batch_size``, or from its old name
    ``num_samples`` (deprecated: beside :class:`pyro.infer.Predictive`'s ``num_samples``, the
    number of draws, it read as the same thing)."""
    if num_samples is None:
        return batch_size
    if batch_size is not None:
        raise TypeError("give batch_size only (num_samples is its deprecated name), not both")
    warnings.warn(
        "the model's num_samples= is deprecated; it is batch_size=, the size of the data plate",
        DeprecationWarning,
        stacklevel=3,
    )
    return num_samples
