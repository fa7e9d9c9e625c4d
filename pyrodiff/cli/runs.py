"""Run folders: what ``pyrodiff train`` writes and the other subcommands read back.

A run folder holds ``config.json`` (:class:`~pyrodiff.config.RunConfig`), ``metrics.jsonl``
(:class:`~pyrodiff.train.History`), ``checkpoint.pt`` (:mod:`pyrodiff.checkpoint`) and
``figures/``; ``evaluate`` adds ``evaluation.json`` and ``sample`` adds ``samples-*.npy``.
``pyrodiff train`` and ``fit(..., run_dir=..., config=RunConfig(...))`` write the same folder.
``plot`` and ``compare`` need only ``metrics.jsonl``; ``evaluate`` and ``sample`` rebuild the
model from ``config.json``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import CHECKPOINT_NAME, check_model_config, load_checkpoint
from ..config import CONFIG_NAME, Built, RunConfig, build, load_data
from ..devices import resolve_device
from ..errors import CheckpointError, ConfigError
from ..train.history import METRICS_NAME, History

__all__ = ["LoadedRun", "check_run_dir", "load_run", "read_history", "write_json_atomic"]

FIGURES = "figures"
EVALUATION_NAME = "evaluation.json"


def check_run_dir(run: str | os.PathLike, need_config: bool = True) -> Path:
    """``run`` as a Path, or ConfigError if it is not a run folder: one holding a config.json
    (``need_config``), else one holding a config.json or a metrics.jsonl."""
    path = Path(run)
    if not path.exists():
        raise ConfigError(f"run folder {path} does not exist")
    wanted = CONFIG_NAME if need_config else f"{CONFIG_NAME} or {METRICS_NAME}"
    if not path.is_dir():
        raise ConfigError(f"{path} is not a run folder (expected a folder holding {wanted})")
    if (path / CONFIG_NAME).is_file():
        return path
    if not need_config and (path / METRICS_NAME).is_file():
        return path
    if (path / METRICS_NAME).is_file():
        raise ConfigError(
            f"{path} has no {CONFIG_NAME}, which this command rebuilds the model from: "
            "fit writes it when given config=RunConfig(...) (build the model with "
            "pyrodiff.config.build)"
        )
    raise ConfigError(f"{path} is not a run folder: it has no {wanted}")


def read_history(run: Path) -> History:
    """The run's metrics; ConfigError when the file is missing."""
    path = run / METRICS_NAME
    if not path.is_file():
        raise ConfigError(f"{run} has no {METRICS_NAME}: was it trained?")
    return History.load(path)


@dataclass
class LoadedRun:
    """A trained run, ready to evaluate or sample: parameters (EMA ones if present) loaded."""

    path: Path
    config: RunConfig
    built: Built
    step: int
    used_ema: bool

    @property
    def model(self) -> nn.Module:
        return self.built.model

    @property
    def guide(self) -> nn.Module:
        return self.built.guide

    def chain(self) -> tuple[nn.Module, nn.Module]:
        """The model and guide as a discrete chain (:func:`pyrodiff.train.evaluate.as_chain`):
        a continuous-time model discretised at its ``num_steps``, any other run as it is."""
        from ..train.evaluate import as_chain

        return as_chain(self.model, self.guide)

    @property
    def device(self) -> torch.device:
        """Where the model's parameters are."""
        return next(self.model.parameters()).device


def load_run(
    run: str | os.PathLike, device: str = "auto", use_ema: bool = True, dtype=None
) -> LoadedRun:
    """Rebuild a run's model and guide from config.json and load checkpoint.pt into them.

    The checkpoint is read with ``weights_only`` loading (nothing in it is executed) and must
    have been written for the same model structure; its EMA parameters are used when present
    and ``use_ema`` is true. Raises ConfigError / CheckpointError with one clear message.
    """
    path = check_run_dir(run)
    config = RunConfig.from_json(path / CONFIG_NAME)
    dev = resolve_device(device)
    state = load_checkpoint(path / CHECKPOINT_NAME, map_location=dev)
    built = build(config, dtype=dtype)
    if dtype is None:
        # rebuild in the dtype the run trained in: evaluation noise drawn in another dtype
        # would differ, and float64 weights would not be the ones that were trained
        dtype = _trained_dtype(built.model, state.get("model"))
        built = built._replace(dataset=load_data(config, dtype=dtype))
    model, guide = built.model.to(dtype), built.guide.to(dtype)
    model_config = model.config() if callable(getattr(model, "config", None)) else None
    check_model_config(state, model_config, where=str(path / CHECKPOINT_NAME))
    for name, module in (("model", model), ("guide", guide)):
        if name not in state:
            raise CheckpointError(f"checkpoint of {path} has no {name!r} parameters")
        try:
            module.load_state_dict(state[name])
        except (RuntimeError, KeyError, TypeError) as exc:
            first = str(exc).strip().splitlines()[0][:200]
            raise CheckpointError(
                f"checkpoint of {path} does not fit the {name} its config.json builds: {first}"
            ) from None
    used_ema = False
    if use_ema and state.get("ema"):
        from ..train import EMA

        holder = nn.Module()
        holder.model, holder.guide = model, guide
        ema = EMA(holder, float(state["ema"]["decay"]))
        ema.load_state_dict(state["ema"])
        ema.copy_to(holder)
        used_ema = True
    model.to(dev)
    guide.to(dev)
    model.eval()
    guide.eval()
    return LoadedRun(path, config, built, int(state["step"]), used_ema)


def _trained_dtype(model: nn.Module, state_dict) -> torch.dtype:
    """The dtype of the model's parameters in the checkpoint (buffers such as float64 schedule
    tables do not count)."""
    state_dict = state_dict or {}
    for name, _ in model.named_parameters():
        value = state_dict.get(name)
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.dtype
    return torch.get_default_dtype()


def write_json_atomic(path: Path, value: Any) -> None:
    """Write JSON so that a reader never sees half a file: a temporary file, then a rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(tmp, path)


def figures_dir(run: Path) -> Path:
    out = run / FIGURES
    out.mkdir(exist_ok=True)
    return out
