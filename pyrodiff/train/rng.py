"""Random-number state: cheap snapshots during training, tensors and plain values on disk.

:func:`capture_rng` is cheap enough to call before every update (it copies the generators'
states without converting them); :func:`encode_rng` turns a snapshot into tensors and plain
types that a weights-only checkpoint can hold; :func:`restore_rng` accepts either.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError

__all__ = ["seed_everything", "capture_rng", "encode_rng", "restore_rng"]


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy's global generator and Python's ``random``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng() -> dict[str, Any]:
    """A snapshot of torch's (CPU, CUDA), numpy's and Python's global generators."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def encode_rng(snapshot: dict[str, Any]) -> dict[str, Any]:
    """The snapshot as tensors, ints, floats and strings (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, cached = snapshot["numpy"]
    version, internal, gauss_next = snapshot["python"]
    return {
        "torch": snapshot["torch"],
        "cuda": list(snapshot["cuda"]),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {
            "version": int(version),
            "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Put back a snapshot from :func:`capture_rng` or its :func:`encode_rng` form."""
    try:
        torch.set_rng_state(state["torch"].cpu())
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
        npy, py = state["numpy"], state["python"]
        if isinstance(npy, dict):
            npy = (
                npy["kind"],
                npy["keys"].numpy().astype(np.uint32),
                npy["pos"],
                npy["has_gauss"],
                npy["cached_gaussian"],
            )
        np.random.set_state(npy)
        if isinstance(py, dict):
            py = (py["version"], tuple(int(v) for v in py["internal"]), py["gauss_next"])
        random.setstate(py)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"the checkpoint's random-number state is unusable ({exc})") from None
