"""``fit``: stochastic variational inference on a (model, guide) pair, safe to interrupt."""

from __future__ import annotations

import contextlib
import enum
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pyro.infer import ELBO
from torch import Tensor, nn

from ..checkpoint import CHECKPOINT_NAME, check_model_config, load_checkpoint, save_checkpoint
from ..data import Dataset
from ..devices import resolve_device
from ..distributed import DistributedContext, rank_seed, shard_indices, wrap_module
from ..errors import CheckpointError, ConfigError
from ..infer import DiffusionELBO
from .ema import EMA
from .evaluate import EVAL_SEED_OFFSET, evaluate_split
from .guards import InterruptFlag, is_refused_non_finite, non_finite_error
from .history import METRICS_NAME, History, MetricsWriter, RecordKind
from .options import LRSchedule, Precision, learning_rate
from .rng import capture_rng, restore_rng, seed_everything
from .sampler import EpochSampler
from .setup import check_options, create_lazy_params, param_dtype, resolve_data
from .state import TrainState, stateful_parts

__all__ = ["fit"]


class _Phase(enum.Enum):
    """Where an update stands, which decides what a KeyboardInterrupt may checkpoint."""

    BEFORE = "before"
    """Parameters untouched: roll the random streams back to the update's start and save."""
    DURING = "during"
    """The optimizer may have changed some parameters: save nothing, keep the last checkpoint."""
    AFTER = "after"
    """Everything is consistent with the step count: save as is."""


def fit(
    model: nn.Module,
    guide: nn.Module,
    data: Dataset | Tensor,
    *,
    loss: ELBO | None = None,
    steps: int = 1000,
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
    config: dict[str, Any] | None = None,
    progress: bool = True,
    distributed: DistributedContext | None = None,
    callback: Callable[[int, float], None] | None = None,
) -> History:
    """Maximise the ELBO of ``model`` with ``guide`` on ``data`` by stochastic gradients.

    Each update draws ``batch_size`` training data (a fresh permutation each epoch), computes
    ``loss(model, guide)(batch)`` (a Pyro ELBO used as an ``nn.Module``: the negative ELBO of
    the batch, summed over data) and takes one AdamW step over the parameters of the model and
    the guide. Any Pyro ELBO works: :class:`~pyrodiff.infer.DiffusionELBO` (the default; one
    network call per datum, needs a closed-form guide), Trace_ELBO, TraceMeanField_ELBO.

    Args:
        model, guide: ``nn.Module`` s (``PyroModule`` s) taking the data batch as first argument.
        data: a :class:`~pyrodiff.data.Dataset` (trains on ``.train``; evaluates on ``.test``
            and reports bits/dim when it is quantised) or a tensor of training data.
        loss: the ELBO estimator; ``DiffusionELBO()`` if omitted.
        steps: total number of updates of the run (a resumed run continues up to it).
        lr, lr_schedule, warmup_steps: base learning rate and its schedule (see
            :class:`LRSchedule`); ``warmup_steps`` defaults to 0, or to steps // 20 for
            WARMUP_COSINE.
        weight_decay: AdamW's decoupled weight decay (0: Adam).
        grad_clip: clip the global gradient norm to this value.
        ema_decay: keep θ̄ ← d θ̄ + (1 − d) θ; evaluations use θ̄ and the checkpoint stores it.
        seed: seeds torch, numpy, ``random`` and the batch order; same seed, same run, bit for bit.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``…; model, guide and data are moved there (data
            also to the parameters' floating dtype).
        precision: FP32, or BF16 autocast of the loss computation.
        eval_every: evaluate every this many updates; an evaluation also runs at the end when
            there is evaluation data. ``eval_data`` defaults to ``data.test`` for a Dataset.
        eval_batch_budget: at most this many network inputs per call during evaluation.
        log_every: write a training record every this many updates, holding the mean loss of
            those updates.
        run_dir: folder for ``metrics.jsonl`` and ``checkpoint.pt`` (nothing else is written).
            A checkpoint is written every ``checkpoint_every`` updates, at the end and on Ctrl-C.
        resume: continue the run in ``run_dir`` from its checkpoint; with the same arguments the
            result is bit-identical to a run that was never interrupted.
        config: a JSON-able dict stored in the checkpoint (e.g. the CLI's configuration).
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
    check_options(
        steps=steps,
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
        config=config,
    )
    if loss is None:
        loss = DiffusionELBO()
    if not isinstance(loss, ELBO):
        raise ConfigError(
            f"loss must be a Pyro ELBO instance (DiffusionELBO(), Trace_ELBO()…), got {loss!r}"
        )
    if warmup_steps is None:
        warmup_steps = max(1, steps // 20) if lr_schedule is LRSchedule.WARMUP_COSINE else 0

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
            "total_steps": int(steps),
        },
        model_config=model.config() if callable(getattr(model, "config", None)) else None,
        config=config,
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
    writer_path = None
    if run_dir is not None and is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        writer_path = run_dir / METRICS_NAME
        if not resume:
            writer_path.unlink(missing_ok=True)  # a fresh run starts a fresh record

    def write_checkpoint(rng: dict[str, Any] | None = None) -> None:
        if ckpt_path is not None and is_main:
            save_checkpoint(ckpt_path, ts.to_checkpoint(rng or capture_rng()))

    def evaluate() -> None:
        if d.eval is None or not is_main:
            return
        with ts.ema.applied() if ts.ema is not None else contextlib.nullcontext():
            result = evaluate_split(
                model,
                guide,
                d.eval,
                num_levels=d.num_levels,
                batch_budget=eval_batch_budget,
                seed=seed + EVAL_SEED_OFFSET,
            )
        writer.write(RecordKind.EVAL, ts.step, split="test", ema=ts.ema is not None, **result)

    def stop(what: str, value: float, lr_now: float) -> Exception:
        kept = str(ckpt_path) if ckpt_path is not None and ckpt_path.exists() else None
        return non_finite_error(what, value, ts.step + 1, lr_now, data_range, kept)

    data_range = (float(d.train.min()), float(d.train.max()))
    interrupted = False
    bar = _progress_bar(progress and is_main, steps, ts.step)
    running = None
    with MetricsWriter(writer_path) as writer, InterruptFlag() as flag:
        writer.truncate_after(ts.step)
        last_eval = max((r["step"] for r in writer.records if r["kind"] == "eval"), default=-1)
        phase, snapshot = _Phase.AFTER, None
        try:
            while ts.step < steps and not flag.requested:
                snapshot = (capture_rng(), ts.sampler.snapshot())
                phase = _Phase.BEFORE
                lr_now = learning_rate(lr_schedule, lr, ts.step, steps, warmup_steps)
                for group in ts.optimizer.param_groups:
                    group["lr"] = lr_now
                batch = d.train[ts.sampler.next().to(dev)]
                ts.optimizer.zero_grad(set_to_none=True)
                try:
                    with _autocast(precision, dev):
                        loss_value = train_module(batch)
                except ValueError as exc:
                    if not is_refused_non_finite(exc):
                        raise
                    what = "distribution parameter: " + str(exc).splitlines()[0][:120]
                    raise stop(what, math.nan, lr_now) from exc
                # backward before any check: in a distributed run it is where the ranks meet,
                # so every rank reaches the checks below with the same (all-reduced) gradients
                loss_value.backward()
                # one read-back per update, for the loss and the gradient norm together
                norm_t = _grad_norm(params, grad_clip, like=loss_value)
                loss_float, norm = torch.stack([loss_value.detach(), norm_t]).tolist()
                if not math.isfinite(loss_float):
                    raise stop("loss", loss_float, lr_now)
                if not math.isfinite(norm):
                    raise stop("gradient norm", norm, lr_now)
                phase = _Phase.DURING
                ts.optimizer.step()
                if ts.ema is not None:
                    ts.ema.update()
                ts.step += 1
                phase = _Phase.AFTER

                ts.accumulate(loss_float)
                if ts.step % log_every == 0 or ts.step == steps:
                    mean_loss = ts.pop_mean_loss()
                    writer.write(
                        RecordKind.TRAIN,
                        ts.step,
                        loss=mean_loss,
                        elbo_per_datum=-mean_loss / batch_size,
                        lr=lr_now,
                    )
                elbo_now = -loss_float / batch_size
                running = elbo_now if running is None else 0.95 * running + 0.05 * elbo_now
                if bar is not None:
                    bar.set_postfix_str(f"elbo/datum {running:.4g}", refresh=False)
                    bar.update(1)
                if eval_every is not None and ts.step % eval_every == 0:
                    evaluate()
                    last_eval = ts.step
                if checkpoint_every is not None and ts.step % checkpoint_every == 0:
                    write_checkpoint()
                if callback is not None:
                    callback(ts.step, loss_float)
        except KeyboardInterrupt:
            interrupted = True
            if phase is _Phase.BEFORE:
                restore_rng(snapshot[0])
                ts.sampler.restore(snapshot[1])
                ts.optimizer.zero_grad(set_to_none=True)
            if phase is not _Phase.DURING:
                write_checkpoint()
        else:
            interrupted = flag.requested
            if not interrupted and last_eval != ts.step:
                evaluate()
            write_checkpoint()
        finally:
            if bar is not None:
                bar.close()
        return writer.history(interrupted=interrupted, final_step=ts.step)


def _grad_norm(params: list[nn.Parameter], clip: float | None, like: Tensor) -> Tensor:
    """The global gradient norm as a tensor like the loss (clipping first if asked); NaN/inf
    when any gradient is."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), dtype=like.dtype, device=like.device)
    if clip is not None:
        norm = torch.nn.utils.clip_grad_norm_(params, clip)
    else:
        norm = torch.nn.utils.get_total_norm(grads)
    return norm.detach().to(device=like.device, dtype=like.dtype)


def _autocast(precision: Precision, dev: torch.device):
    if precision is Precision.BF16:
        return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _progress_bar(enabled: bool, steps: int, start: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=steps, initial=start, desc="train", unit="step", dynamic_ncols=True)
