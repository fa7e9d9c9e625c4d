"""What every pyrodiff model and guide shares as a Pyro sub-program: reading a plain
``nn.Module`` held by a :class:`~pyro.nn.PyroModule` in the hot paths, its site names, the plate
its data dimension lives in, its global sample sites, and the hook through which the fast bounds
of :mod:`pyrodiff.infer` stand in for a whole chain.

Private Pyro attributes, read here and nowhere else (checked against pyro-ppl 1.9), because
Pyro has no public route to what they give:

- ``PyroModule._pyro_context``: the per-run context of a module tree. :func:`pyro_method`
  enters it as ``pyro.nn.pyro_method`` itself does (that decorator has no "only when a handler
  listens" variant), and :func:`child` reads its ``active`` flag and its per-run cache
  (``get`` / ``set``) to announce a submodule once per run, the way Pyro caches its own
  ``pyro.param`` statements there.
- ``PyroModule._pyro_get_fullname(name)``: the site-name prefix Pyro gives the submodule's
  parameters, used as the cache key, so that two modules under one tree never share a key.
- ``PyroModule._pyro_samples``: the ``PyroSample`` attributes of a module, which
  :func:`draw_global_sites` draws once, outside the data plate.

If Pyro changes them, ``tests/test_model_and_guide.py`` (the parameters SVI sees, the traces'
param sites) and ``tests/test_composition.py`` (global sites) fail.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pyro
from pyro.nn import PyroModule
from pyro.poutine.runtime import am_i_wrapped, get_plates
from torch import nn

from .errors import DataError

__all__ = [
    "announce_parameters",
    "batch_size_argument",
    "child",
    "data_plate",
    "draw_global_sites",
    "fast_bound",
    "fast_bound_hook",
    "parameter_count",
    "pyro_method",
    "site_name",
]

_F = TypeVar("_F", bound=Callable)


def parameter_count(*modules: nn.Module) -> int:
    """The number of parameter scalars the ``modules`` hold together, each tensor counted once:
    a guide may hold its model's schedule (``AdaptiveNoiseGuide.for_model``), which a sum over
    each module alone would count twice."""
    tensors = {id(p): p for module in modules for p in module.parameters()}
    return sum(p.numel() for p in tensors.values())


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


def announce_parameters(module: PyroModule) -> None:
    """Issue ``module``'s ``pyro.param`` statements now, when a Pyro handler is listening.

    For a module whose network runs outside the program's run (the density of
    :class:`~pyrodiff.infer.DiffusionPrior` is evaluated when Pyro scores the trace, after the
    run): announced during the run, its parameters are sites of the trace, so ``Trace_ELBO``
    differentiates through them and ``SVI`` updates them even when nothing else in the program
    has parameters.
    """
    if not am_i_wrapped():
        return
    with module._pyro_context:
        for name in module._modules:
            child(module, name)
        for name in module._parameters:
            getattr(module, name)


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


def site_name(module: PyroModule, base: str) -> str:
    """``base`` under the module's ``name``: ``"x_0"`` unnamed, ``"prior.x_0"`` for a module
    built with ``name="prior"``.

    Its parameters follow Pyro's convention (the name, or the attribute path once the module
    is held by another :class:`~pyro.nn.PyroModule`); its sites keep the name it was built with,
    so holding a model or guide inside a module of one's own never renames its sites, and a
    guide's sites stay its model's."""
    prefix = module.name
    return f"{prefix}.{base}" if prefix else base


def _enclosing_data_frame():
    """The enclosing plate at the rightmost batch dimension (dim −1), or None."""
    if not am_i_wrapped():
        return None
    for frame in get_plates():
        if frame.dim == -1:
            return frame
    return None


@contextlib.contextmanager
def data_plate(module: PyroModule, size: int | None, what: str) -> Iterator[int]:
    """The plate of a model's or guide's data dimension; yields the number of data in it.

    Called inside a ``pyro.plate`` that occupies the rightmost batch dimension (dim −1, where
    the data's batch dimension is), the module joins that plate, whatever its name: the number
    of data is the plate's (its subsample size when subsampled, the N/B scale being the
    plate's), and ``size``, when given, must agree. Outside such a plate it opens its own,
    ``site_name(module, "data")`` of ``size`` (1 when None), as every pyrodiff model always has.
    Plates at other dimensions (Pyro's particle and ``Predictive`` plates, a user's outer plates)
    broadcast its sites as they do any site's.
    """
    frame = _enclosing_data_frame()
    if frame is None:
        n = 1 if size is None else int(size)
        with pyro.plate(site_name(module, "data"), n):
            yield n
        return
    if size is not None and int(size) != frame.size:
        raise DataError(
            f"{what} has {size} data inside pyro.plate({frame.name!r}) of size {frame.size}: "
            "inside a plate the data dimension is the plate's"
        )
    yield frame.size


def draw_global_sites(module: nn.Module) -> None:
    """Draw every ``PyroSample`` attribute of ``module``'s submodules now, before the data plate.

    A ``PyroModule`` caches such a draw for the rest of its run, so the weights of a Bayesian
    denoiser become one global site each (drawn once per run, outside the data plate), which a
    guide such as ``AutoNormal`` can then cover; drawn at first use they would fall inside the
    plate and be drawn once per datum.
    """
    for m in module.modules():
        samples = m.__dict__.get("_pyro_samples")
        if samples:
            for name in list(samples):
                getattr(m, name)


_FAST_BOUNDS: list[Any] = []


def fast_bound_hook() -> Any | None:
    """The active fast-bound hook, or None: while a timestep-sampled bound of
    :mod:`pyrodiff.infer` runs a user's program, a pyrodiff model hands its chain to
    ``hook.model(model, x0, n)`` (one site in place of T + 1) and a guide announces itself with
    ``hook.guide(guide, x0)`` instead of drawing its chain."""
    return _FAST_BOUNDS[-1] if _FAST_BOUNDS else None


@contextlib.contextmanager
def fast_bound(hook: Any) -> Iterator[Any]:
    """Make ``hook`` the active fast-bound hook (:func:`fast_bound_hook`) inside the block."""
    _FAST_BOUNDS.append(hook)
    try:
        yield hook
    finally:
        _FAST_BOUNDS.pop()
