"""``fit``: stochastic variational inference on a (model, guide) pair, safe to interrupt.

The parts a reader looks for, by name: :func:`_set_up` (options, data, state, resume),
:func:`~pyrodiff.train.step.take_step` (one update and its guards), :class:`_Evaluations`
(validation during training, the test split once at the end), :class:`_Checkpoints`, and the
loop itself in :func:`_run`.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from pyro.infer import ELBO
from torch import Tensor, nn

from ..checkpoint import (
    CHECKPOINT_NAME,
    CONFIG_NAME,
    check_model_config,
    load_checkpoint,
    save_checkpoint,
)
from ..data import Dataset, Split
from ..devices import param_dtype, resolve_device
from ..distributed import DistributedContext, rank_seed, shard_indices, wrap_module
from ..errors import CheckpointError, ConfigError
from ..infer import DiffusionELBO
from .ema import EMA
from .evaluate import EVAL_SEED_OFFSET, evaluate_split
from .guards import InterruptFlag, non_finite_error
from .history import METRICS_NAME, History, MetricsWriter, RecordKind
from .options import LRSchedule, Precision, default_warmup
from .rng import capture_rng, restore_rng, seed_everything
from .sampler import EpochSampler
from .setup import TrainData, check_options, create_lazy_params, resolve_data
from .state import TrainState, stateful_parts
from .step import Divergence, Phase, take_step

__all__ = ["RunRecord", "fit"]


@runtime_checkable
class RunRecord(Protocol):
    """What ``fit(..., config=...)`` writes as ``run_dir/config.json`` so that every
    ``pyrodiff`` command reads the folder: a :class:`pyrodiff.config.RunConfig`."""

    def to_dict(self) -> dict[str, Any]: ...

    def to_json(self, path: str | Path | None = None) -> str: ...


def fit(
    model: nn.Module,
    guide: nn.Module,
    data: Dataset | Tensor,
    *,
    loss: ELBO | None = None,
    updates: int = 1000,
    batch_size: int = 128,
    lr: float = 1e-3,
    lr_schedule: LRSchedule = LRSchedule.CONSTANT,
    warmup_steps: int | None = None,
    weight_decay: float = 0.0,
    grad_clip: float | None = None,
    ema_decay: float | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    precision: Precision = Precision.FP32,
    eval_every: int | None = None,
    eval_data: Tensor | None = None,
    eval_batch_budget: int = 4096,
    log_every: int = 1,
    run_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    config: RunRecord | dict[str, Any] | None = None,
    progress: bool = True,
    distributed: DistributedContext | None = None,
    callback: Callable[[int, float], None] | None = None,
    steps: int | None = None,
) -> History:
    """Maximise the ELBO of ``model`` with ``guide`` on ``data`` by stochastic gradients.

    Each update draws ``batch_size`` training data (a fresh permutation each epoch), computes
    ``loss(model, guide)(batch)`` (a Pyro ELBO used as an ``nn.Module``: the negative ELBO of
    the batch, summed over data) and takes one AdamW step over the parameters of the model and
    the guide. Any Pyro ELBO works: :class:`~pyrodiff.infer.DiffusionELBO` (the default; one
    network call per datum, needs a closed-form guide), Trace_ELBO, TraceMeanField_ELBO.

    Args:
        model, guide: ``nn.Module`` s (``PyroModule`` s) taking the data batch as first argument.
        data: a :class:`~pyrodiff.data.Dataset` (trains on ``.train``, evaluates on
            ``.validation`` during training and on ``.test`` once at the end; bits/dim when it
            is quantised) or a tensor of training data.
        loss: the ELBO estimator; ``DiffusionELBO()`` if omitted.
        updates: total number of optimizer updates of the run (a resumed run continues up to
            it). ``steps`` is its deprecated old name.
        lr, lr_schedule, warmup_steps: base learning rate and its schedule (see
            :class:`LRSchedule`); ``warmup_steps`` defaults to 0, or to updates // 20 for
            WARMUP_COSINE.
        weight_decay: AdamW's decoupled weight decay (0: Adam).
        grad_clip: clip the global gradient norm to this value.
        ema_decay: keep θ̄ ← d θ̄ + (1 − d) θ; evaluations use θ̄ and the checkpoint stores it.
        seed: seeds torch, numpy, ``random`` and the batch order; same seed, same run, bit for bit.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``…; model, guide and data are moved there (data
            also to the parameters' floating dtype).
        precision: FP32, or BF16 autocast of the loss computation.
        eval_every: evaluate on the validation data every this many updates (records with
            ``"split": "validation"``); ``eval_data`` replaces ``data.validation``. At the end
            the validation data is evaluated once more (unless it just was) and a Dataset's
            test split once (``"split": "test"``): the only time fit reads the test split.
        eval_batch_budget: at most this many network inputs per call during evaluation.
        log_every: write a training record every this many updates, holding the mean loss of
            those updates.
        run_dir: folder for ``metrics.jsonl`` and ``checkpoint.pt``, and ``config.json`` when
            ``config`` is a RunConfig: then it is the run folder ``pyrodiff train`` writes, which
            ``pyrodiff evaluate``, ``sample``, ``plot`` and ``compare`` read. A checkpoint is
            written every ``checkpoint_every`` updates, at the end and on Ctrl-C.
        resume: continue the run in ``run_dir`` from its checkpoint; with the same arguments the
            result is bit-identical to a run that was never interrupted.
        config: a :class:`pyrodiff.config.RunConfig` (written to ``run_dir/config.json`` and
            stored in the checkpoint) or a JSON-able dict (stored in the checkpoint only).
        progress: show a tqdm bar with the running ELBO per datum.
        distributed: a ``pyrodiff.distributed.DistributedContext``; each rank draws its
            batches from its own shard with its own seed, ``wrap_module`` sums the gradients
            over ranks, and only the main rank evaluates, writes files and shows the bar.
        callback: called as ``callback(step, loss)`` after every update.

    Returns:
        the :class:`History` of the run (``interrupted`` is True after Ctrl-C).

    Raises:
        ConfigError, DataError: invalid arguments or data (before anything is written).
        CheckpointError: ``resume`` without a usable checkpoint, or a fresh run that would
            overwrite one.
        NonFiniteError: the loss or the gradient became NaN/inf; the last checkpoint is kept.
    """
    if steps is not None:
        warnings.warn(
            "fit(steps=...) is deprecated; the number of optimizer updates is now updates=",
            DeprecationWarning,
            stacklevel=2,
        )
        updates = steps
    record = config if isinstance(config, RunRecord) else None
    check_options(
        updates=updates,
        batch_size=batch_size,
        lr=lr,
        lr_schedule=lr_schedule,
        warmup_steps=warmup_steps,
        weight_decay=weight_decay,
        grad_clip=grad_clip,
        ema_decay=ema_decay,
        seed=seed,
        precision=precision,
        eval_every=eval_every,
        eval_batch_budget=eval_batch_budget,
        log_every=log_every,
        run_dir=run_dir,
        checkpoint_every=checkpoint_every,
        resume=resume,
        config=record.to_dict() if record is not None else config,
    )
    if loss is None:
        loss = DiffusionELBO()
    if not isinstance(loss, ELBO):
        raise ConfigError(
            f"loss must be a Pyro ELBO instance (DiffusionELBO(), Trace_ELBO()…), got {loss!r}"
        )
    if warmup_steps is None:
        warmup_steps = default_warmup(lr_schedule, updates)
    run = _set_up(
        model,
        guide,
        data,
        loss,
        updates=updates,
        batch_size=batch_size,
        lr=lr,
        lr_schedule=lr_schedule,
        warmup_steps=warmup_steps,
        weight_decay=weight_decay,
        ema_decay=ema_decay,
        seed=seed,
        device=device,
        eval_data=eval_data,
        run_dir=run_dir,
        resume=resume,
        config=config,
        record=record,
        distributed=distributed,
    )
    evaluations = _Evaluations(run, eval_every, eval_batch_budget, seed)
    checkpoints = _Checkpoints(run, checkpoint_every)
    options = {
        "lr": lr,
        "lr_schedule": lr_schedule,
        "updates": updates,
        "warmup_steps": warmup_steps,
        "grad_clip": grad_clip,
        "precision": precision,
    }
    bar = _progress_bar(progress and run.is_main, updates, run.ts.step)
    try:
        return _run(run, options, evaluations, checkpoints, log_every, bar, callback)
    finally:
        if bar is not None:
            bar.close()


# --- set-up -------------------------------------------------------------------------------------


@dataclass
class _Run:
    """What the set-up hands the loop: the state, the data and where things are written."""

    ts: TrainState
    data: TrainData
    train_module: nn.Module
    params: list[nn.Parameter]
    device: torch.device
    batch_size: int
    is_main: bool
    run_dir: Path | None
    metrics_path: Path | None


def _set_up(
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
) -> _Run:
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
    return _Run(ts, d, train_module, params, dev, batch_size, is_main, run_dir, metrics_path)


# --- evaluation ---------------------------------------------------------------------------------


class _Evaluations:
    """Validation every ``eval_every`` updates; at the end, validation (unless it just ran) and
    the test split, once. Only the main rank evaluates; the EMA parameters are used if kept."""

    def __init__(self, run: _Run, every: int | None, batch_budget: int, seed: int) -> None:
        self.run, self.every, self.batch_budget = run, every, batch_budget
        self.seed = seed + EVAL_SEED_OFFSET
        self.last = {Split.VALIDATION: -1, Split.TEST: -1}

    def resume_from(self, writer: MetricsWriter) -> None:
        """Take the last evaluation of each split from the records a resumed run keeps, so that
        resuming a finished run evaluates nothing again."""
        for r in writer.records:
            if r["kind"] == RecordKind.EVAL.value:
                split = Split(r.get("split", Split.VALIDATION.value))
                self.last[split] = max(self.last[split], r["step"])

    def after_update(self, writer: MetricsWriter) -> None:
        if self.every is not None and self.run.ts.step % self.every == 0:
            self._evaluate(writer, Split.VALIDATION)

    def at_end(self, writer: MetricsWriter) -> None:
        for split in (Split.VALIDATION, Split.TEST):
            if self.last[split] != self.run.ts.step:
                self._evaluate(writer, split)

    def _evaluate(self, writer: MetricsWriter, split: Split) -> None:
        run = self.run
        x = run.data.validation if split is Split.VALIDATION else run.data.test
        self.last[split] = run.ts.step
        if x is None or not run.is_main:
            return
        ema = run.ts.ema
        with ema.applied() if ema is not None else contextlib.nullcontext():
            result = evaluate_split(
                run.ts.model,
                run.ts.guide,
                x,
                num_levels=run.data.num_levels,
                batch_budget=self.batch_budget,
                seed=self.seed,
            )
        writer.write(RecordKind.EVAL, run.ts.step, split=split.value, ema=ema is not None, **result)


# --- checkpointing ------------------------------------------------------------------------------


class _Checkpoints:
    """Atomic checkpoints every ``every`` updates, at the end and on Ctrl-C (main rank only)."""

    def __init__(self, run: _Run, every: int | None) -> None:
        self.run, self.every = run, every
        self.path = run.run_dir / CHECKPOINT_NAME if run.run_dir is not None else None

    def write(self, rng: dict[str, Any] | None = None) -> None:
        if self.path is not None and self.run.is_main:
            save_checkpoint(self.path, self.run.ts.to_checkpoint(rng or capture_rng()))

    def after_update(self) -> None:
        if self.every is not None and self.run.ts.step % self.every == 0:
            self.write()

    def kept(self) -> str | None:
        """The last checkpoint on disk, if any."""
        return str(self.path) if self.path is not None and self.path.exists() else None

    def next_due(self) -> int | None:
        """The update at which the next periodic checkpoint is due."""
        if self.path is None or self.every is None:
            return None
        return (self.run.ts.step // self.every + 1) * self.every


# --- the loop -----------------------------------------------------------------------------------


def _run(
    run: _Run,
    options: dict[str, Any],
    evaluations: _Evaluations,
    checkpoints: _Checkpoints,
    log_every: int,
    bar,
    callback: Callable[[int, float], None] | None,
) -> History:
    """Updates until ``updates`` or Ctrl-C; what a Ctrl-C may save depends on its :class:`Phase`."""
    ts, updates, batch_size = run.ts, options["updates"], run.batch_size
    data_range = (float(run.data.train.min()), float(run.data.train.max()))
    interrupted = False
    running = None
    with MetricsWriter(run.metrics_path) as writer, InterruptFlag() as flag:
        writer.truncate_after(ts.step)
        evaluations.resume_from(writer)
        phase, snapshot = [Phase.AFTER], None
        try:
            while ts.step < updates and not flag.requested:
                snapshot = (capture_rng(), ts.sampler.snapshot())
                phase[0] = Phase.BEFORE
                batch = run.data.train[ts.sampler.next().to(run.device)]
                try:
                    step = take_step(
                        ts, run.train_module, run.params, batch, phase=phase, **options
                    )
                except Divergence as div:
                    raise _divergence_error(div, ts.step + 1, data_range, run, checkpoints) from (
                        div.__cause__
                    )
                ts.accumulate(step.loss)
                if ts.step % log_every == 0 or ts.step == updates:
                    mean_loss = ts.pop_mean_loss()
                    writer.write(
                        RecordKind.TRAIN,
                        ts.step,
                        loss=mean_loss,
                        elbo_per_datum=-mean_loss / batch_size,
                        lr=step.lr,
                    )
                elbo_now = -step.loss / batch_size
                running = elbo_now if running is None else 0.95 * running + 0.05 * elbo_now
                if bar is not None:
                    bar.set_postfix_str(f"elbo/datum {running:.4g}", refresh=False)
                    bar.update(1)
                evaluations.after_update(writer)
                checkpoints.after_update()
                if callback is not None:
                    callback(ts.step, step.loss)
        except KeyboardInterrupt:
            interrupted = True
            if phase[0] is Phase.BEFORE:
                restore_rng(snapshot[0])
                ts.sampler.restore(snapshot[1])
                ts.optimizer.zero_grad(set_to_none=True)
            if phase[0] is not Phase.DURING:
                checkpoints.write()
        else:
            interrupted = flag.requested
            if not interrupted:
                evaluations.at_end(writer)
            checkpoints.write()
        return writer.history(interrupted=interrupted, final_step=ts.step)


# --- guards -------------------------------------------------------------------------------------


def _divergence_error(
    div: Divergence,
    step: int,
    data_range: tuple[float, float],
    run: _Run,
    checkpoints: _Checkpoints,
):
    """The NonFiniteError of a diverged update: what went wrong, and which checkpoint is kept
    (or why there is none)."""
    return non_finite_error(
        div.what,
        div.value,
        step,
        div.lr,
        data_range,
        checkpoints.kept(),
        run_dir=run.run_dir,
        next_checkpoint=checkpoints.next_due(),
    )


def _progress_bar(enabled: bool, updates: int, start: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=updates, initial=start, desc="train", unit="update", dynamic_ncols=True)
