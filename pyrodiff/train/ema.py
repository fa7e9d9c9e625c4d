"""An exponential moving average of parameters, for evaluation and sampling."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError

__all__ = ["EMA"]


class EMA:
    """θ̄ ← d_n·θ̄ + (1 − d_n)·θ after the n-th update, over a module's named parameters.

    d_n = min(decay, (1 + n)/(10 + n)): the average starts at the initial parameters, and the
    warm-up keeps it from holding on to them, which a fixed d would do for ~1/(1 − d) updates
    (after 1500 updates at d = 0.999, 22 % of the weight would still sit on the untrained start).
    It depends only on n, which the checkpoint holds, so a resumed run averages identically.
    :meth:`applied` swaps θ̄ into the module for a block (evaluation, sampling) and puts θ back
    afterwards, bit for bit.

    Why not ``torch.optim.swa_utils.AveragedModel``: it can give the same average (a
    ``multi_avg_fn`` reading the warm-up decay from ``n_averaged``, plus one update at
    construction so the average starts at θ_0 rather than at the first update's θ; written so,
    it matched this class bit for bit over 50 updates and passed the resume tests), but it
    reads its update counter across devices on every update (``n_averaged.to(device)`` or
    ``bool(n_averaged == 0)``), a stream synchronisation per update on a GPU, where the
    training step is built to read back once; it deep-copies the whole module, buffers
    included; and it cost 1.8 ms per update against 0.47 ms here for the digits U-Net's 245 k
    parameters on one CPU thread, with no code saved, since swapping the average in and out
    and the checkpoint format stay here either way.
    """

    def __init__(self, module: nn.Module, decay: float) -> None:
        if not isinstance(decay, float | int) or not 0.0 < float(decay) < 1.0:
            raise ConfigError(f"ema_decay must be a number in (0, 1), got {decay!r}")
        self.decay = float(decay)
        self.num_updates = 0
        self._params = dict(_trainable(module))
        self.shadow = {name: p.detach().clone() for name, p in self._params.items()}

    @torch.no_grad()
    def update(self) -> None:
        self.num_updates += 1
        decay = min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))
        for name, p in self._params.items():
            self.shadow[name].lerp_(p.detach(), 1.0 - decay)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Within the block the module holds the averaged parameters."""
        saved = {name: p.detach().clone() for name, p in self._params.items()}
        with torch.no_grad():
            for name, p in self._params.items():
                p.copy_(self.shadow[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in self._params.items():
                    p.copy_(saved[name])

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        """Write the averaged parameters into ``module`` (which must have the same names)."""
        params = dict(_trainable(module))
        for name, value in self.shadow.items():
            params[name].copy_(value)

    def state_dict(self) -> dict[str, Any]:
        return {
            "decay": self.decay,
            "num_updates": self.num_updates,
            "shadow": {k: v.clone() for k, v in self.shadow.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        shadow = state.get("shadow", {})
        if set(shadow) != set(self.shadow):
            raise CheckpointError(
                "the checkpoint's EMA holds other parameters than the model: "
                f"{sorted(set(shadow) ^ set(self.shadow))[:4]}"
            )
        with torch.no_grad():
            for name, value in shadow.items():
                self.shadow[name].copy_(value)
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])


def _trainable(module: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    return ((n, p) for n, p in module.named_parameters() if p.requires_grad)
