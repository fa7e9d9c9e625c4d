"""Pyro optimizers that step every parameter with one torch optimizer.

:class:`pyro.optim.PyroOptim` keeps one torch optimizer per parameter tensor, so that
parameters may appear at any step; each ``step()`` it makes pays torch's per-call wrapper
(profiler scope, grad-mode guard, hooks), once per tensor. For a denoiser with dozens of
tensors that is a measurable share of a training step (see ``docs/performance.md``).
:class:`JointOptim` is a drop-in :class:`~pyro.optim.PyroOptim` for :class:`pyro.infer.SVI`
with the same contract — parameters may still appear at any step, only the parameters of the
current step move, state is saved and restored by parameter name — but all parameters live
in one torch optimizer (new ones join as parameter groups), so a step is one ``step()`` call.

For optimizers whose update of a tensor depends only on that tensor (Adam, AdamW, SGD, …) the
updates are exactly those of the per-parameter optimizers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pyro
import torch
from pyro.optim import PyroOptim
from torch import Tensor

from .errors import CheckpointError, ConfigError

__all__ = ["JointOptim", "Adam", "AdamW"]


class JointOptim(PyroOptim):
    """A :class:`~pyro.optim.PyroOptim` whose parameters share one torch optimizer.

    Args:
        optim_constructor: a ``torch.optim.Optimizer`` class (its update must act on each
            tensor separately for the per-parameter semantics to hold, as Adam's does).
        optim_args: its keyword arguments, or a callable ``(module_name, param_name) -> dict``
            (or ``(param_name) -> dict``) as for :class:`~pyro.optim.PyroOptim`.
        clip_args: ``{"clip_norm": …, "clip_value": …}``, applied to each parameter tensor
            separately, as :class:`~pyro.optim.PyroOptim` does.

    Parameters a step does not touch keep their values and their optimizer state (their
    gradients are hidden from the torch optimizer for that step). After a step the gradients
    of its parameters are released (set to None) rather than left for SVI to zero: the next
    backward pass then writes them instead of adding into fresh zeros, which is the same
    arithmetic without an allocation and an addition per tensor. ``get_state`` / ``set_state``
    / ``save`` / ``load`` work by parameter name; a state saved by one :class:`JointOptim`
    restores into another whatever the order in which parameters appear.
    """

    def __init__(
        self,
        optim_constructor: type[torch.optim.Optimizer],
        optim_args: dict | Callable[..., dict],
        clip_args: dict | Callable[..., dict] | None = None,
    ) -> None:
        if not (
            isinstance(optim_constructor, type)
            and issubclass(optim_constructor, torch.optim.Optimizer)
        ):
            raise ConfigError(
                f"optim_constructor must be a torch.optim.Optimizer class, got {optim_constructor!r}"
            )
        if not (isinstance(optim_args, dict) or callable(optim_args)):
            raise ConfigError(
                f"optim_args must be a dict or a callable returning one, got {type(optim_args).__name__}"
            )
        if clip_args is not None and not (isinstance(clip_args, dict) or callable(clip_args)):
            raise ConfigError(
                f"clip_args must be a dict or a callable returning one, got {type(clip_args).__name__}"
            )
        super().__init__(optim_constructor, optim_args, clip_args)
        self.optimizer: torch.optim.Optimizer | None = None
        self._known: set[Tensor] = set()
        self._released: set[Tensor] = set()

    # --- stepping -----------------------------------------------------------------------

    def __call__(self, params: Iterable[Tensor], *args, **kwargs) -> None:
        params = list(params)
        new = [p for p in params if p not in self._known]
        if new:
            self._add(new)
        for p in params:
            # released by an earlier step and not differentiated by this one: under SVI it
            # would hold a zero gradient, which Adam still steps (its momentum moves p)
            if p.grad is None and p in self._released:
                p.grad = torch.zeros_like(p)
        if self.pt_clip_args:
            for p in params:
                clip = self.grad_clip[p]
                if clip is not None:
                    clip(p)
        idle = self._known.difference(params) if len(self._known) != len(params) else ()
        hidden = [(p, p.grad) for p in idle if p.grad is not None]
        for p, _ in hidden:
            p.grad = None  # torch optimizers skip tensors without a gradient
        try:
            self.optimizer.step(*args, **kwargs)
        finally:
            for p, grad in hidden:
                p.grad = grad
        # SVI zeroes the stepped gradients next (pyro.infer.util.zero_grads: a fresh tensor of
        # zeros each, which the next backward then adds into); releasing them instead lets the
        # next backward write its gradients directly, with the same values
        for p in params:
            if p.grad is not None:
                p.grad = None
                self._released.add(p)

    def _add(self, params: list[Tensor]) -> None:
        """Give ``params`` to the torch optimizer, one group per distinct set of arguments,
        with any state waiting under their names."""
        groups: list[tuple[dict, list[Tensor]]] = []
        restored: dict[Tensor, dict] = {}
        for p in params:
            name = pyro.get_param_store().param_name(p)
            saved = self._state_waiting_to_be_consumed.pop(name, None) if name else None
            hyper = dict(self._get_optim_args(p))
            if saved is not None:
                hyper.update(saved["group"])
                restored[p] = saved["state"]
            self.grad_clip[p] = self._get_grad_clip(p)
            for group_hyper, members in groups:
                if _same(group_hyper, hyper):
                    members.append(p)
                    break
            else:
                groups.append((hyper, [p]))
        for hyper, members in groups:
            if self.optimizer is None:
                # hyperparameters as group entries: a restored group may carry keys (set by a
                # scheduler, say) that the constructor does not take as arguments
                self.optimizer = self.pt_optim_constructor([{"params": members, **hyper}])
            else:
                self.optimizer.add_param_group({"params": members, **hyper})
        for p, state in restored.items():
            self.optimizer.state[p] = {k: _to(v, p) for k, v in state.items()}
        self._known.update(params)

    # --- state by parameter name --------------------------------------------------------

    def get_state(self) -> dict[str, dict[str, Any]]:
        """``{param_name: {"state": the tensor's optimizer state, "group": its hyperparameters}}``."""
        store = pyro.get_param_store()
        out: dict[str, dict[str, Any]] = dict(self._state_waiting_to_be_consumed)
        for group in self.optimizer.param_groups if self.optimizer is not None else ():
            hyper = {k: v for k, v in group.items() if k != "params"}
            for p in group["params"]:
                name = store.param_name(p)
                if name is None:
                    continue
                state = self.optimizer.state.get(p, {})
                out[name] = {"state": {k: _detached(v) for k, v in state.items()}, "group": hyper}
        return out

    def set_state(self, state_dict: dict[str, dict[str, Any]]) -> None:
        """Hold ``state_dict`` (from :meth:`get_state`) until each named parameter appears;
        parameters already being optimized take theirs at once."""
        if not isinstance(state_dict, dict) or not all(
            isinstance(v, dict) and set(v) == {"state", "group"} for v in state_dict.values()
        ):
            raise CheckpointError(
                "JointOptim state must map parameter names to {'state', 'group'} dicts "
                "(as JointOptim.get_state returns); a pyro.optim.PyroOptim state does not fit"
            )
        store = pyro.get_param_store()
        pending = dict(state_dict)
        if self.optimizer is not None:
            for group in self.optimizer.param_groups:
                for p in group["params"]:
                    saved = pending.pop(store.param_name(p), None)
                    if saved is not None:
                        self.optimizer.state[p] = {k: _to(v, p) for k, v in saved["state"].items()}
        self._state_waiting_to_be_consumed.update(pending)

    def load(self, filename: str, map_location=None) -> None:
        """Load a state written by :meth:`save` (plain tensors only: nothing is unpickled)."""
        self.set_state(torch.load(filename, map_location=map_location, weights_only=True))


def _same(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    try:
        return all(bool(a[k] == b[k]) for k in a)
    except (RuntimeError, TypeError, ValueError):  # tensor-valued arguments: keep apart
        return False


def _detached(v: Any) -> Any:
    return v.detach().clone() if isinstance(v, Tensor) else v


def _to(v: Any, p: Tensor) -> Any:
    # per-element moments follow their parameter; scalars such as Adam's step count stay put
    if isinstance(v, Tensor) and v.dim() > 0:
        return v.to(device=p.device, dtype=p.dtype if v.is_floating_point() else v.dtype)
    return v


def Adam(optim_args: dict | Callable[..., dict], clip_args: dict | None = None) -> JointOptim:
    """``pyro.optim.Adam`` with one ``torch.optim.Adam`` for all parameters."""
    return JointOptim(torch.optim.Adam, optim_args, clip_args)


def AdamW(optim_args: dict | Callable[..., dict], clip_args: dict | None = None) -> JointOptim:
    """``pyro.optim.AdamW`` with one ``torch.optim.AdamW`` for all parameters."""
    return JointOptim(torch.optim.AdamW, optim_args, clip_args)
