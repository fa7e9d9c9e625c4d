"""Checkpoints that never lose work and never run code.

A checkpoint is a ``dict`` of tensors and plain Python values (``int``, ``float``, ``str``,
``bool``, ``None``, lists, tuples and dicts of them), written with :func:`torch.save` and read
back with ``torch.load(..., weights_only=True)``. The weights-only unpickler builds nothing but
tensors and those plain types: a file that would construct any other object (which is how a
pickle runs code) is refused with :class:`~pyrodiff.errors.CheckpointError` before anything in
it is executed.

Writes are atomic: the bytes go to a temporary file in the same folder, are flushed and
fsync'ed, and only then :func:`os.replace` puts them in place. A process killed at any moment
leaves either the previous checkpoint or the new one, never a mixture.

Entries written by :func:`pyrodiff.train.fit` (``FORMAT_VERSION`` 1):

================== ============================================================================
``format_version`` int, added by :func:`save_checkpoint`
``step``           optimizer updates done
``model``          the model's ``state_dict``
``guide``          the guide's ``state_dict``
``optimizer``      the optimizer's ``state_dict``
``lr_schedule``    dict: kind, lr, warmup_steps, total_steps, last_step
``ema``            ``None`` or dict: decay, num_updates, shadow (name → tensor)
``rng``            dict: torch (ByteTensor), cuda (list of ByteTensors), numpy, python
``sampler``        dict: the batch order's generator state, permutation, position, num_data
``model_config``   ``model.config()`` when the model has one, else ``None``
``config``         the caller's JSON-able configuration (``None`` if not given)
``extra``          dict: the log accumulator, and the state_dict of a stateful estimator part
================== ============================================================================
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError

__all__ = [
    "FORMAT_VERSION",
    "CHECKPOINT_NAME",
    "CONFIG_NAME",
    "save_checkpoint",
    "load_checkpoint",
    "check_model_config",
    "restore_weights",
]

FORMAT_VERSION = 1
"""The version this code writes; files with a larger one are refused (written by newer code)."""

CHECKPOINT_NAME = "checkpoint.pt"
"""The checkpoint's file name inside a run folder."""
CONFIG_NAME = "config.json"
"""The run configuration's file name inside a run folder (:class:`pyrodiff.config.RunConfig`)."""

_REQUIRED = ("format_version", "step")


def _temp_path(path: Path) -> Path:
    # a fixed name in the same folder: os.replace is atomic only within one file system, and a
    # temp file left by a killed process is simply overwritten by the next save
    return path.with_name(f".{path.name}.tmp")


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """Write ``state`` (plus ``format_version``) to ``path`` atomically; return the path.

    The file is complete on disk (fsync'ed, and the folder entry too) before it replaces the
    old one, so a crash or SIGKILL during the write leaves the previous checkpoint intact.
    """
    path = Path(path)
    if not isinstance(state, Mapping):
        raise CheckpointError(f"a checkpoint state must be a dict, got {type(state).__name__}")
    if not path.parent.is_dir():
        raise CheckpointError(
            f"cannot write checkpoint {path}: folder {path.parent} does not exist"
        )
    payload = dict(state)
    payload["format_version"] = FORMAT_VERSION
    tmp = _temp_path(path)
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device | None = "cpu"
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, executing nothing in it.

    Raises :class:`~pyrodiff.errors.CheckpointError` if the file is missing, empty, truncated
    or corrupt, holds Python objects other than tensors and plain values (a pickle payload is
    never run), lacks the entries every checkpoint has, or was written by a newer format.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: expected a file written by pyrodiff")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): the write never completed")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "global" not in str(exc).lower():
            # an opcode the weights-only unpickler does not know: not a torch.save file
            raise CheckpointError(
                f"checkpoint {path} is truncated, corrupt or not a torch checkpoint and cannot "
                f"be read ({_last_line(exc)})"
            ) from None
        raise CheckpointError(
            f"refused to load {path}: it contains Python objects that are not tensors or plain "
            "values, and unpickling them could run code; pyrodiff checkpoints hold only tensors, "
            f"numbers, strings, lists and dicts ({_last_line(exc)})"
        ) from None
    except (RuntimeError, EOFError, KeyError, ValueError, zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt and cannot be read "
            f"({type(exc).__name__}: {_first_line(exc)})"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(state).__name__}, expected a dict of training state"
        )
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} is not a pyrodiff checkpoint: it lacks {', '.join(missing)}"
        )
    version = state["format_version"]
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"checkpoint {path} has an invalid format version {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {version}, newer than the {FORMAT_VERSION} "
            "this pyrodiff reads: upgrade pyrodiff to load it"
        )
    return state


def check_model_config(
    state: Mapping[str, Any], model_config: Mapping[str, Any] | None, where: str = "checkpoint"
) -> None:
    """Raise :class:`CheckpointError` if the checkpoint was written for another model structure.

    Compares ``model.config()`` stored at save time with the current one, key by key, so the
    message names what differs (T, event shape, parameterisation…).
    """
    saved = state.get("model_config")
    if saved is None or model_config is None:
        return
    diffs = _diff(saved, dict(model_config))
    if diffs:
        raise CheckpointError(
            f"{where} was written for another model configuration: " + "; ".join(diffs[:4])
        )


def restore_weights(
    model: torch.nn.Module,
    guide: torch.nn.Module,
    source: str | os.PathLike | Mapping[str, Any],
    *,
    use_ema: bool = True,
    map_location: str | torch.device | None = "cpu",
) -> dict[str, Any]:
    """Load a training checkpoint's parameters into ``model`` and ``guide``; return the state.

    ``source`` is a checkpoint path (or run folder) or an already loaded state. With
    ``use_ema`` and a run that kept an EMA, the averaged parameters replace the raw ones (what
    evaluation and sampling should use). The model's structure is checked first
    (:func:`check_model_config`), so a checkpoint of another configuration is refused with a
    message naming the difference rather than a tensor-shape error.
    """
    state = dict(source) if isinstance(source, Mapping) else load_checkpoint(source, map_location)
    where = "the checkpoint" if isinstance(source, Mapping) else str(source)
    config = model.config() if callable(getattr(model, "config", None)) else None
    check_model_config(state, config, where=where)
    try:
        model.load_state_dict(state["model"])
        guide.load_state_dict(state["guide"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(
            f"{where} does not fit this model and guide: {_first_line(exc)}"
        ) from None
    ema = state.get("ema")
    if use_ema and ema is not None:
        # the EMA is kept over the ELBO module, whose parameters are named model.* and guide.*
        params = {f"model.{n}": p for n, p in model.named_parameters()}
        params.update({f"guide.{n}": p for n, p in guide.named_parameters()})
        missing = sorted(set(ema["shadow"]) - set(params))
        if missing:
            raise CheckpointError(
                f"{where}: the EMA names parameters this model lacks: {missing[:3]}"
            )
        with torch.no_grad():
            for name, value in ema["shadow"].items():
                params[name].copy_(value)
    return state


def _diff(saved: Any, current: Any, prefix: str = "") -> list[str]:
    if isinstance(saved, Mapping) and isinstance(current, Mapping):
        out = []
        for key in sorted(set(saved) | set(current), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in current:
                out.append(f"{name} is {saved[key]!r} in the checkpoint but absent now")
            elif key not in saved:
                out.append(f"{name} is {current[key]!r} now but absent in the checkpoint")
            else:
                out.extend(_diff(saved[key], current[key], name))
        return out
    if isinstance(saved, tuple | list) and isinstance(current, tuple | list):
        saved, current = list(saved), list(current)
    if saved != current:
        return [f"{prefix or 'value'} is {saved!r} in the checkpoint but {current!r} now"]
    return []


def _last_line(exc: BaseException) -> str:
    """torch's unpickling errors put the useful part (the refused global) near the end."""
    lines = [
        line.strip()
        for line in str(exc).splitlines()
        if line.strip() and not line.startswith("Check the documentation")
    ]
    return lines[-1][:160] if lines else type(exc).__name__


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__
