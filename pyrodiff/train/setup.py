"""fit's set-up: the run folder's options and the data are checked, once, before anything is trained or written;
then the state of the run (placed model and data, optimizer, EMA, batch order, a resumed
checkpoint, the run folder) is built by :func:`set_up_run`."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from pyro.infer import ELBO
from torch import Tensor, nn

from ..checkpoint import CHECKPOINT_NAME, CONFIG_NAME, check_model_config, load_checkpoint
from ..data import Dataset
from ..devices import param_dtype, resolve_device
from ..distributed import DistributedContext, rank_seed, shard_indices, wrap_module
from ..errors import CheckpointError, ConfigError, DataError
from ..infer.objectives import variance_trained_parameters
from ..validation import check_batch_size, check_data
from .ema import EMA
from .history import METRICS_NAME
from .options import LRSchedule
from .rng import capture_rng, restore_rng, seed_everything
from .sampler import EpochSampler
from .state import TrainState, stateful_parts

__all__ = [
    "Run",
    "RunRecord",
    "TrainData",
    "check_run_options",
    "create_lazy_params",
    "resolve_data",
    "set_up_run",
]


@dataclass(frozen=True)
class TrainData:
    """The tensors fit works on, on the training device and in the parameters' dtype:
    ``validation`` is evaluated during training, ``test`` once at the end."""

    train: Tensor
    validation: Tensor | None
    test: Tensor | None
    num_levels: int | None


def check_run_options(
    *, run_dir: Any, checkpoint_every: int | None, resume: Any, config: Any
) -> None:
    """Raise :class:`ConfigError` for what only ``fit`` takes: a checkpoint or a resume needs a
    run folder, and a config must be JSON-able. (The training options themselves are checked
    against their schema, :func:`pyrodiff.train.options.check_options`.)"""
    if run_dir is None and (resume or checkpoint_every):
        what = "resume" if resume else "checkpoint_every"
        raise ConfigError(f"{what} needs a run_dir to hold the checkpoint")
    if config is not None:
        if not isinstance(config, dict):
            raise ConfigError(f"config must be a dict, got {type(config).__name__}")
        try:
            json.dumps(config, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"config must be JSON-able (plain values only): {exc}") from None


def resolve_data(
    model: nn.Module,
    data: Dataset | Tensor,
    eval_data: Tensor | None,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype,
    shard: Tensor | None = None,
) -> TrainData:
    """Check the data against the model and move it; ``shard`` selects this rank's indices.
    ``eval_data`` replaces the validation split."""
    if isinstance(data, Dataset):
        train, validation, test = data.train, data.validation, data.test
        levels = data.num_levels
    elif isinstance(data, Tensor):
        train, validation, test, levels = data, None, None, None
    else:
        raise DataError(
            f"data must be a pyrodiff.data.Dataset or a torch.Tensor, got {type(data).__name__}"
        )
    if eval_data is not None:
        validation = eval_data
    event_shape = getattr(model, "event_shape", None) or tuple(train.shape[1:])
    likelihood = getattr(model, "likelihood", None)
    check_data(train, tuple(event_shape), likelihood, name="training data")
    for name, held_out in (("validation data", validation), ("test data", test)):
        if held_out is not None:
            check_data(held_out, tuple(event_shape), likelihood, name=name)
    if shard is not None:
        train = train[shard]
    check_batch_size(batch_size, train.shape[0], shard=shard is not None)
    to = {"device": device, "dtype": dtype}
    return TrainData(
        train.to(**to),
        validation.to(**to) if validation is not None else None,
        test.to(**to) if test is not None else None,
        levels,
    )


def create_lazy_params(
    loss_module: nn.Module, x: Tensor, stateful: dict[str, Any] | None = None
) -> None:
    """Run the loss once so that guides creating parameters on their first call (autoguides)
    have them before the optimizer is built. The random state, and the state of the estimator's
    learning parts (``stateful``: an adaptive timestep sampler's history), are left exactly as
    they were: this call is not a training step."""
    snap = capture_rng()
    saved = {name: copy.deepcopy(obj.state_dict()) for name, obj in (stateful or {}).items()}
    try:
        with torch.no_grad():
            loss_module(x)
    finally:
        restore_rng(snap)
        for name, obj in (stateful or {}).items():
            obj.load_state_dict(saved[name])


@runtime_checkable
class RunRecord(Protocol):
    """What ``fit(..., config=...)`` writes as ``run_dir/config.json`` so that every
    ``pyrodiff`` command reads the folder: a :class:`pyrodiff.config.RunConfig`."""

    def to_dict(self) -> dict[str, Any]: ...

    def to_json(self, path: str | Path | None = None) -> str: ...


# --- a run's set-up -------------------------------------------------------------------------------------


@dataclass
class Run:
    """What the set-up hands the loop: the state, the data and where things are written."""

    ts: TrainState
    data: TrainData
    train_module: nn.Module
    params: list[nn.Parameter]
    clip_groups: list[list[nn.Parameter]]
    """the parameters whose gradient norm is clipped together: all of them, or the rest and
    apart from them those trained on the estimator's variance"""
    device: torch.device
    batch_size: int
    is_main: bool
    run_dir: Path | None
    metrics_path: Path | None


def set_up_run(
    model: nn.Module,
    guide: nn.Module,
    data: Dataset | Tensor,
    loss: ELBO,
    *,
    updates: int,
    batch_size: int,
    lr: float,
    lr_schedule: LRSchedule,
    warmup_steps: int,
    weight_decay: float,
    ema_decay: float | None,
    seed: int,
    device: str | torch.device,
    eval_data: Tensor | None,
    run_dir: str | Path | None,
    resume: bool,
    config: RunRecord | dict[str, Any] | None,
    record: RunRecord | None,
    distributed: DistributedContext | None,
) -> Run:
    """Place model, guide and data; build the optimizer, EMA and batch order; resume them from
    the checkpoint when asked; prepare the run folder. Raises before anything is written."""
    rank, is_main, run_seed, shard = 0, True, seed, None
    if distributed is not None:
        if not isinstance(distributed, DistributedContext):
            raise ConfigError(
                "distributed must be a pyrodiff.distributed.DistributedContext (from "
                f"setup_distributed()), got {type(distributed).__name__}"
            )
        rank, is_main = int(distributed.rank), bool(distributed.is_main)
        run_seed = rank_seed(seed, rank)
        n = data.train.shape[0] if isinstance(data, Dataset) else len(data)
        shard = shard_indices(n, rank, int(distributed.world_size))
    dev = distributed.device if distributed is not None else resolve_device(device)
    model.to(dev)
    guide.to(dev)
    d = resolve_data(model, data, eval_data, batch_size, dev, param_dtype(model, guide), shard)
    run_dir = Path(run_dir) if run_dir is not None else None
    ckpt_path = run_dir / CHECKPOINT_NAME if run_dir is not None else None
    if run_dir is not None and not resume and ckpt_path.exists():
        raise CheckpointError(
            f"{run_dir} already holds a checkpoint: pass resume=True to continue that run, "
            "or choose another run_dir"
        )

    seed_everything(run_seed)
    loss_module = loss(model, guide)
    stateful = stateful_parts(loss)
    create_lazy_params(loss_module, d.train[:batch_size], stateful)
    params = [p for p in loss_module.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model and guide have no trainable parameters: nothing to fit")
    apart = {id(p) for p in variance_trained_parameters(loss, model, guide)}
    clip_groups = [[p for p in params if id(p) not in apart]]
    if apart:
        clip_groups.append([p for p in params if id(p) in apart])
    ts = TrainState(
        model=model,
        guide=guide,
        optimizer=torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay),
        ema=EMA(loss_module, ema_decay) if ema_decay is not None else None,
        sampler=EpochSampler(d.train.shape[0], batch_size, run_seed),
        stateful=stateful,
        lr_schedule={
            "kind": lr_schedule.value,
            "lr": float(lr),
            "warmup_steps": int(warmup_steps),
            "total_steps": int(updates),
        },
        model_config=model.config() if callable(getattr(model, "config", None)) else None,
        config=record.to_dict() if record is not None else config,
    )
    train_module: nn.Module = loss_module
    if distributed is not None:
        train_module = wrap_module(loss_module, distributed)

    if resume:
        state = load_checkpoint(ckpt_path, map_location=dev)
        check_model_config(state, ts.model_config, where=str(ckpt_path))
        ts.restore(state, ckpt_path, streams=is_main)
        if not is_main:
            # the checkpoint holds rank 0's streams only: the others restart theirs from a seed
            # of (seed, rank, step), distinct and reproducible but not those of an unbroken run
            resumed_seed = rank_seed(seed + ts.step, rank)
            seed_everything(resumed_seed)
            ts.sampler = EpochSampler(d.train.shape[0], batch_size, resumed_seed)
    metrics_path = None
    if run_dir is not None and is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        metrics_path = run_dir / METRICS_NAME
        if not resume:
            metrics_path.unlink(missing_ok=True)  # a fresh run starts a fresh record
        if record is not None and (not resume or not (run_dir / CONFIG_NAME).exists()):
            # the folder is then the run folder every pyrodiff command reads
            record.to_json(run_dir / CONFIG_NAME)
    return Run(
        ts, d, train_module, params, clip_groups, dev, batch_size, is_main, run_dir, metrics_path
    )
