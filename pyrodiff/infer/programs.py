"""The fast bounds on Pyro programs that call pyrodiff models: every chain collapsed to one site.

A timestep-sampled bound (:class:`~pyrodiff.infer.DiffusionELBO`,
:class:`~pyrodiff.infer.ContinuousELBO`) handed something other than a pyrodiff model and guide
(the pair wrapped by ``poutine`` handlers, a plain function that calls them, or a user's model
in which the diffusion model is a sub-program) runs :func:`program_loss`: Pyro's
``Trace_ELBO`` on the two programs, with every pyrodiff chain *collapsed*. While it runs,

- a closed-form guide (:class:`~pyrodiff.ForwardGuide`, a learned schedule,
  :class:`~pyrodiff.ContinuousForwardGuide`) draws nothing and announces itself, with the scale
  and mask its handlers give it, under its name;
- a pyrodiff model, instead of its T + 1 sites, samples the one site ``"<name>.x_0"`` from
  :class:`~pyrodiff.infer.DiffusionPrior` paired with the guide of the same name: observed when
  x_0 is data (or conditioned), latent when the user's guide draws it.

For the chain's sites, E_q[log p_θ(x_{0:T}) − log q(x_{1:T} | x_0)] is the ELBO per datum,
which DiffusionPrior's log_prob estimates without bias; every other site is Pyro's as usual. So
the loss has the expectation Trace_ELBO's has on the uncollapsed programs, and the handlers act
on the collapsed site as they act on the chain's: ``scale`` and subsampled plates multiply it,
``mask`` masks it, ``condition`` on x_0 observes it, ``block`` of the whole chain hides it.

Where a handler would treat the chain's sites differently from one another, one number per
datum cannot stand for them, and :func:`program_loss` raises
:class:`~pyrodiff.errors.ModelMismatchError` naming the handler: ``condition`` or ``do`` on an
intermediate x_t (t ≥ 1), ``block`` of part of the chain, or a scale or mask on the model's
chain that differs from the guide's.

Private Pyro names read here, and why: ``pyro.poutine.runtime._PYRO_STACK`` (the handlers
around a chain, to find those that would touch its intermediate sites, which the collapsed
program never emits) and ``pyro.poutine.runtime._inspect`` (the scale and mask the handlers give
a guide that emits no site).
"""

from __future__ import annotations

import pyro
import torch
from pyro.infer import Trace_ELBO
from pyro.poutine.block_messenger import BlockMessenger
from pyro.poutine.condition_messenger import ConditionMessenger
from pyro.poutine.do_messenger import DoMessenger
from pyro.poutine.runtime import _PYRO_STACK, _inspect
from pyro.poutine.trace_struct import Trace
from torch import Tensor

from ..errors import ModelMismatchError
from ..modules import fast_bound, site_name
from .prior import DiffusionPrior

__all__ = ["program_loss"]


def _chain_names(module, latent_prefix: str = "x") -> list[str]:
    return [site_name(module, f"{latent_prefix}_{t}") for t in range(module.num_steps + 1)]


def _refuse_partial_handlers(module, role: str, x0_observed: bool) -> None:
    """Raise unless every handler around ``module``'s chain treats its sites alike (x_0 may be
    conditioned: it is the datum)."""
    if not hasattr(module, "num_steps"):
        return
    names = _chain_names(module)
    latents = names[1:]
    for handler in _PYRO_STACK:
        if isinstance(handler, (ConditionMessenger, DoMessenger)):
            data = handler.data
            keys = data.nodes if isinstance(data, Trace) else data
            hit = [n for n in latents if n in keys]
            if hit:
                kind = "condition" if isinstance(handler, ConditionMessenger) else "do"
                raise ModelMismatchError(
                    f"poutine.{kind} on {hit[0]!r} of the {role}'s chain: the one-call bound "
                    "integrates x_1 … x_T out, so it cannot hold an intermediate site fixed; use "
                    "Trace_ELBO on the literal chain"
                )
        elif isinstance(handler, BlockMessenger):
            hidden = [
                bool(
                    handler.hide_fn(
                        {
                            "name": n,
                            "type": "sample",
                            "is_observed": x0_observed and n == names[0],
                            "infer": {},
                        }
                    )
                )
                for n in names
            ]
            if any(hidden) and not all(hidden):
                which = [n for n, h in zip(names, hidden, strict=True) if h][0]
                raise ModelMismatchError(
                    f"poutine.block hides {which!r} but not all of the {role}'s chain: the one-call "
                    "bound stands for the whole chain as one site, so block all of it or none"
                )


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        a, b = torch.as_tensor(a), torch.as_tensor(b)
        try:
            return bool((a == b).all())
        except RuntimeError:  # shapes that do not broadcast
            return False
    return a == b


class _CollapsedChains:
    """The hook pyrodiff models and guides call while :func:`program_loss` runs the programs
    (:func:`pyrodiff.modules.fast_bound_hook`)."""

    def __init__(self, objective) -> None:
        self.objective = objective
        self.guides: dict[str, tuple] = {}
        self.seen_model = False

    def guide(self, guide, x0: Tensor | None) -> None:
        self.objective._check_guide(guide)
        _refuse_partial_handlers(guide, "guide", False)
        effects = _inspect()
        self.guides[guide.name] = (guide, effects["scale"], effects["mask"])

    def model(self, model, x0: Tensor | None, batch: int) -> Tensor:
        self.seen_model = True
        name = model.name
        entry = self.guides.get(name)
        guide = None if entry is None else entry[0]
        if entry is None and not hasattr(model, "log_snr_and_slope"):
            self.objective._check_model(model)  # a model of the wrong kind says so first
            raise ModelMismatchError(
                f"{type(self.objective).__name__}: the model program runs the diffusion model "
                f"{name or '(unnamed)'!s} but the guide program runs no closed-form guide of that "
                f"name; its chain needs one (ForwardGuide(schedule, name={name!r}))"
            )
        self.objective._check_pair(model, guide)
        _refuse_partial_handlers(model, "model", x0 is not None)
        if entry is not None:
            effects = _inspect()
            for what, key, index in (("scale", "scale", 1), ("mask", "mask", 2)):
                if not _same(effects[key], entry[index]):
                    raise ModelMismatchError(
                        f"poutine.{what} differs between the model's chain "
                        f"{name or '(unnamed)'!s} and its guide's: the one-call bound estimates "
                        "log p − log q of the chain as one number, so both need the same "
                        f"{what}"
                    )
        prior = DiffusionPrior(model, guide, self.objective).expand((batch,))
        return pyro.sample(site_name(model, "x_0"), prior, obs=x0)


def program_loss(objective, model, guide, args: tuple, kwargs: dict) -> Tensor:
    """−(Trace_ELBO's estimate) on ``model`` and ``guide`` with their pyrodiff chains collapsed
    (see the module's docstring), with ``objective``'s timestep sampler and ``num_particles``.

    Its expectation is the negative ELBO that Trace_ELBO estimates on the same programs run in
    full; each chain costs one network call per datum instead of T. Raises
    :class:`~pyrodiff.errors.ModelMismatchError` where a handler or a guide makes that
    untrue, and when the model program runs no pyrodiff model at all.
    """
    hook = _CollapsedChains(objective)
    elbo = Trace_ELBO(num_particles=objective.num_particles)
    with fast_bound(hook):
        guide_fn = guide if guide is not None else _no_guide
        loss = elbo.differentiable_loss(model, guide_fn, *args, **kwargs)
    if not hook.seen_model:
        raise ModelMismatchError(
            f"{type(objective).__name__} bounds a pyrodiff model's evidence, but the model "
            f"program ({getattr(model, '__name__', type(model).__name__)}) ran none; use "
            "Trace_ELBO for other programs"
        )
    # Pyro returns a plain 0.0 when every site is hidden (a blocked chain contributes nothing)
    return loss if isinstance(loss, Tensor) else torch.zeros(())


def _no_guide(*args, **kwargs) -> None:
    return None
