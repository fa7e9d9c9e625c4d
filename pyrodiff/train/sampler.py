"""The order in which training batches are drawn, with state that a checkpoint can hold."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..errors import CheckpointError

__all__ = ["EpochSampler"]


class EpochSampler:
    """Batches of indices from a fresh random permutation each epoch (without replacement).

    Its own CPU generator, seeded once, drives the permutations, so the batch order depends only
    on the seed and is independent of what else consumes random numbers. The state (generator,
    current permutation, position) round-trips through :meth:`state_dict`, which is what makes a
    resumed run draw exactly the batches the uninterrupted run would have drawn. A batch that
    would cross the end of an epoch starts the next epoch instead (the few leftover indices are
    skipped for that epoch), so every batch has exactly ``batch_size`` distinct data.
    """

    def __init__(self, num_data: int, batch_size: int, seed: int) -> None:
        self.num_data = int(num_data)
        self.batch_size = int(batch_size)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.perm: Tensor | None = None
        self.pos = 0

    def next(self) -> Tensor:
        if self.perm is None or self.pos + self.batch_size > self.num_data:
            self.perm = torch.randperm(self.num_data, generator=self.generator)
            self.pos = 0
        idx = self.perm[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx

    def snapshot(self) -> tuple[Tensor, Tensor | None, int]:
        # the permutation is replaced, never written in place, so sharing it is safe
        return self.generator.get_state(), self.perm, self.pos

    def restore(self, snap: tuple[Tensor, Tensor | None, int]) -> None:
        state, self.perm, self.pos = snap
        self.generator.set_state(state)

    def state_dict(self) -> dict[str, Any]:
        gen, perm, pos = self.snapshot()
        return {"generator": gen, "perm": perm, "pos": pos, "num_data": self.num_data}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("num_data") != self.num_data:
            raise CheckpointError(
                f"the checkpoint was trained on {state.get('num_data')} data, "
                f"but {self.num_data} are given now"
            )
        self.restore((state["generator"], state["perm"], int(state["pos"])))
