"""``fit``: stochastic variational inference on a (model, guide) pair, safe to interrupt."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pyro.infer import ELBO
from torch import Tensor, nn

from ..checkpoint import (
    CHECKPOINT_NAME,
    check_model_config,
    load_checkpoint,
    restore_weights,
    save_checkpoint,
)
from ..data import Dataset
from ..devices import resolve_device
from ..errors import CheckpointError, ConfigError, DataError
from ..infer import DiffusionELBO
from ..validation import check_data
from .ema import EMA
from .evaluate import EVAL_SEED_OFFSET, evaluate_split
from .guards import InterruptFlag, non_finite_error
from .history import METRICS_NAME, History, MetricsWriter, RecordKind
from .options import LRSchedule, Precision, learning_rate
from .rng import capture_rng, encode_rng, restore_rng, seed_everything
from .sampler import EpochSampler

__all__ = ["fit"]

_RANK_SEED_STRIDE = 1_000_003
"""Rank r of a distributed run uses seed + r · stride: distinct streams, reproducible per rank."""


@dataclass
class _Data:
    train: Tensor
    eval: Tensor | None
    num_levels: int | None


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
    distributed: Any = None,
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
        eval_batch_budget: network inputs alive at once during evaluation.
        log_every: write a training record every this many updates, holding the mean loss of
            those updates.
        run_dir: folder for ``metrics.jsonl`` and ``checkpoint.pt`` (nothing else is written).
            A checkpoint is written every ``checkpoint_every`` updates, at the end and on Ctrl-C.
        resume: continue the run in ``run_dir`` from its checkpoint; with the same arguments the
            result is bit-identical to a run that was never interrupted.
        config: a JSON-able dict stored in the checkpoint (e.g. the CLI's configuration).
        progress: show a tqdm bar with the running ELBO per datum.
        distributed: a ``pyrodiff.distributed.DistributedContext``; each rank draws its own
            batches, gradients are averaged by DistributedDataParallel, and only the main rank
            writes files and shows the bar.
        callback: called as ``callback(step, loss)`` after every update.

    Returns:
        the :class:`History` of the run (``interrupted`` is True after Ctrl-C).

    Raises:
        ConfigError, DataError: invalid arguments or data (before anything is written).
        CheckpointError: ``resume`` without a usable checkpoint, or a fresh run that would
            overwrite one.
        NonFiniteError: the loss or the gradient became NaN/inf; the last checkpoint is kept.
    """
    _check_options(
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

    rank = 0 if distributed is None else int(distributed.rank)
    is_main = distributed is None or bool(distributed.is_main)
    dev = distributed.device if distributed is not None else resolve_device(device)
    model.to(dev)
    guide.to(dev)
    dtype = _param_dtype(model, guide)
    d = _resolve_data(model, data, eval_data, batch_size, dev, dtype)
    run_dir = Path(run_dir) if run_dir is not None else None
    ckpt_path = run_dir / CHECKPOINT_NAME if run_dir is not None else None
    if run_dir is not None and not resume and ckpt_path.exists():
        raise CheckpointError(
            f"{run_dir} already holds a checkpoint: pass resume=True to continue that run, "
            "or choose another run_dir"
        )

    run_seed = seed + _RANK_SEED_STRIDE * rank
    seed_everything(run_seed)
    sampler = EpochSampler(d.train.shape[0], batch_size, run_seed)
    loss_module = loss(model, guide)
    _create_lazy_params(loss_module, d.train[:batch_size])
    params = [p for p in loss_module.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model and guide have no trainable parameters: nothing to fit")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    ema = EMA(loss_module, ema_decay) if ema_decay is not None else None
    train_module = loss_module
    if distributed is not None:
        from ..distributed import wrap_module

        train_module = wrap_module(loss_module, distributed)

    stateful = _stateful_parts(loss)
    schedule_state = {
        "kind": lr_schedule.value,
        "lr": float(lr),
        "warmup_steps": int(warmup_steps),
        "total_steps": int(steps),
    }
    model_config = model.config() if callable(getattr(model, "config", None)) else None
    step = 0
    acc = {"loss_sum": 0.0, "count": 0}
    writer_path = run_dir / METRICS_NAME if (run_dir is not None and is_main) else None
    if run_dir is not None and is_main:
        run_dir.mkdir(parents=True, exist_ok=True)

    if resume:
        state = load_checkpoint(ckpt_path, map_location=dev)
        check_model_config(state, model_config, where=str(ckpt_path))
        step = _restore(state, model, guide, optimizer, ema, sampler, stateful, ckpt_path)
        acc = dict(state.get("extra", {}).get("log_accumulator", acc))
    elif writer_path is not None and writer_path.exists():
        writer_path.unlink()  # a fresh run starts a fresh record

    def checkpoint_state(rng: dict[str, Any]) -> dict[str, Any]:
        return {
            "step": step,
            "model": model.state_dict(),
            "guide": guide.state_dict(),
            "optimizer": optimizer.state_dict(),
            "lr_schedule": dict(schedule_state, last_step=step),
            "ema": ema.state_dict() if ema is not None else None,
            "rng": encode_rng(rng),
            "sampler": sampler.state_dict(),
            "model_config": model_config,
            "config": config,
            "extra": {
                "log_accumulator": dict(acc),
                **{name: obj.state_dict() for name, obj in stateful.items()},
            },
        }

    def write_checkpoint(rng: dict[str, Any] | None = None) -> None:
        if ckpt_path is not None and is_main:
            save_checkpoint(ckpt_path, checkpoint_state(rng or capture_rng()))

    def evaluate() -> None:
        if d.eval is None or not is_main:
            return
        scope = ema.applied() if ema is not None else contextlib.nullcontext()
        with scope:
            result = evaluate_split(
                model,
                guide,
                d.eval,
                num_levels=d.num_levels,
                batch_budget=eval_batch_budget,
                seed=seed + EVAL_SEED_OFFSET,
            )
        writer.write(RecordKind.EVAL, step, split="test", ema=ema is not None, **result)

    data_range = (float(d.train.min()), float(d.train.max()))
    interrupted = False
    last_eval = -1
    bar = _progress_bar(progress and is_main, steps, step)
    running = None
    with MetricsWriter(writer_path) as writer, InterruptFlag() as flag:
        if resume:
            writer.truncate_after(step)
            last_eval = max((r["step"] for r in writer.records if r["kind"] == "eval"), default=-1)
        # "before": the update has not touched the parameters, so rolling the random state back
        # to the snapshot gives the state after `step` updates; "during": the optimizer may have
        # changed some parameters; "after": everything is consistent with `step`.
        phase = "after"
        snapshot = None
        try:
            while step < steps and not flag.requested:
                snapshot = (capture_rng(), sampler.snapshot())
                phase = "before"
                lr_now = learning_rate(lr_schedule, lr, step, steps, warmup_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr_now
                batch = d.train[sampler.next().to(dev)]
                optimizer.zero_grad(set_to_none=True)
                try:
                    with _autocast(precision, dev):
                        loss_value = train_module(batch)
                except ValueError as exc:
                    # with validation on (Pyro's default) NaN parameters surface as a
                    # distribution refusing its arguments, before any loss exists
                    if "found invalid values" not in str(exc):
                        raise
                    what = "distribution parameter: " + str(exc).splitlines()[0][:120]
                    raise non_finite_error(
                        what, math.nan, step + 1, lr_now, data_range, _kept(ckpt_path)
                    ) from exc
                loss_float = float(loss_value.detach())
                if not math.isfinite(loss_float):
                    raise non_finite_error(
                        "loss", loss_float, step + 1, lr_now, data_range, _kept(ckpt_path)
                    )
                loss_value.backward()
                norm = _grad_norm(params, grad_clip)
                if not math.isfinite(norm):
                    raise non_finite_error(
                        "gradient norm", norm, step + 1, lr_now, data_range, _kept(ckpt_path)
                    )
                phase = "during"
                optimizer.step()
                if ema is not None:
                    ema.update()
                step += 1
                phase = "after"

                acc["loss_sum"] += loss_float
                acc["count"] += 1
                if step % log_every == 0 or step == steps:
                    mean_loss = acc["loss_sum"] / acc["count"]
                    writer.write(
                        RecordKind.TRAIN,
                        step,
                        loss=mean_loss,
                        elbo_per_datum=-mean_loss / batch_size,
                        lr=lr_now,
                    )
                    acc = {"loss_sum": 0.0, "count": 0}
                elbo_now = -loss_float / batch_size
                running = elbo_now if running is None else 0.95 * running + 0.05 * elbo_now
                if bar is not None:
                    bar.set_postfix_str(f"elbo/datum {running:.4g}", refresh=False)
                    bar.update(1)
                if eval_every is not None and step % eval_every == 0:
                    evaluate()
                    last_eval = step
                if checkpoint_every is not None and step % checkpoint_every == 0:
                    write_checkpoint()
                if callback is not None:
                    callback(step, loss_float)
        except KeyboardInterrupt:
            interrupted = True
            if phase == "before":
                restore_rng(snapshot[0])
                sampler.restore(snapshot[1])
                optimizer.zero_grad(set_to_none=True)
            if phase != "during":
                write_checkpoint()
        else:
            if flag.requested:
                interrupted = True
                write_checkpoint()
            else:
                if last_eval != step:
                    evaluate()
                write_checkpoint()
        finally:
            if bar is not None:
                bar.close()
        return writer.history(interrupted=interrupted, final_step=step)


def _kept(ckpt_path: Path | None) -> str | None:
    return str(ckpt_path) if ckpt_path is not None and ckpt_path.exists() else None


def _check_options(**o: Any) -> None:
    def positive_int(name: str, allow_none: bool = False) -> None:
        v = o[name]
        if v is None and allow_none:
            return
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{name} must be a positive integer, got {v!r}")

    positive_int("steps")
    positive_int("batch_size")
    positive_int("log_every")
    positive_int("eval_batch_budget")
    positive_int("eval_every", allow_none=True)
    positive_int("checkpoint_every", allow_none=True)
    if not isinstance(o["lr"], int | float) or not (math.isfinite(o["lr"]) and o["lr"] > 0):
        raise ConfigError(f"lr must be a positive finite number, got {o['lr']!r}")
    wd = o["weight_decay"]
    if not isinstance(wd, int | float) or not (math.isfinite(wd) and wd >= 0):
        raise ConfigError(f"weight_decay must be a finite number >= 0, got {wd!r}")
    gc = o["grad_clip"]
    if gc is not None and (not isinstance(gc, int | float) or not gc > 0 or not math.isfinite(gc)):
        raise ConfigError(f"grad_clip must be None or a positive number, got {gc!r}")
    ed = o["ema_decay"]
    if ed is not None and (not isinstance(ed, int | float) or not 0.0 < ed < 1.0):
        raise ConfigError(f"ema_decay must be None or a number in (0, 1), got {ed!r}")
    if not isinstance(o["lr_schedule"], LRSchedule):
        raise ConfigError(
            f"lr_schedule must be an LRSchedule ({', '.join(s.name for s in LRSchedule)}), "
            f"got {o['lr_schedule']!r}"
        )
    if not isinstance(o["precision"], Precision):
        raise ConfigError(
            f"precision must be a Precision ({', '.join(p.name for p in Precision)}), "
            f"got {o['precision']!r}"
        )
    ws = o["warmup_steps"]
    if ws is not None and (
        isinstance(ws, bool) or not isinstance(ws, int) or not 0 <= ws <= o["steps"]
    ):
        raise ConfigError(f"warmup_steps must be an integer in [0, steps={o['steps']}], got {ws!r}")
    if isinstance(o["seed"], bool) or not isinstance(o["seed"], int) or o["seed"] < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {o['seed']!r}")
    if o["run_dir"] is None and (o["resume"] or o["checkpoint_every"] is not None):
        what = "resume" if o["resume"] else "checkpoint_every"
        raise ConfigError(f"{what} needs a run_dir to hold the checkpoint")
    if o["config"] is not None:
        if not isinstance(o["config"], dict):
            raise ConfigError(f"config must be a dict, got {type(o['config']).__name__}")
        try:
            json.dumps(o["config"], allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"config must be JSON-able (plain values only): {exc}") from None


def _param_dtype(*modules: nn.Module) -> torch.dtype:
    for m in modules:
        for p in m.parameters():
            if p.is_floating_point():
                return p.dtype
    return torch.get_default_dtype()


def _resolve_data(model, data, eval_data, batch_size, dev, dtype) -> _Data:
    if isinstance(data, Dataset):
        train, test, levels = data.train, data.test, data.num_levels
    elif isinstance(data, Tensor):
        train, test, levels = data, None, None
    else:
        raise DataError(
            f"data must be a pyrodiff.data.Dataset or a torch.Tensor, got {type(data).__name__}"
        )
    if eval_data is not None:
        test = eval_data
    event_shape = tuple(getattr(model, "event_shape", None) or tuple(train.shape[1:]))
    likelihood = getattr(model, "likelihood", None)
    check_data(train, event_shape, likelihood, name="training data")
    if test is not None:
        check_data(test, event_shape, likelihood, name="evaluation data")
    if batch_size > train.shape[0]:
        raise DataError(
            f"batch_size {batch_size} is larger than the {train.shape[0]} training data; "
            f"expected at most {train.shape[0]}"
        )
    to = {"device": dev, "dtype": dtype}
    return _Data(train.to(**to), test.to(**to) if test is not None else None, levels)


def _create_lazy_params(loss_module: nn.Module, x: Tensor) -> None:
    """Run the loss once so guides that create parameters on first call (autoguides) have
    them before the optimizer is built; the random state is left exactly as it was."""
    snap = capture_rng()
    try:
        with torch.no_grad():
            loss_module(x)
    finally:
        restore_rng(snap)


def _stateful_parts(loss: ELBO) -> dict[str, Any]:
    """Parts of the estimator that learn as training goes (adaptive timestep samplers)."""
    parts = {}
    for name, obj in (("loss", loss), ("timesteps", getattr(loss, "timesteps", None))):
        if callable(getattr(obj, "state_dict", None)) and callable(
            getattr(obj, "load_state_dict", None)
        ):
            parts[name] = obj
    return parts


def _restore(state, model, guide, optimizer, ema, sampler, stateful, path) -> int:
    restore_weights(model, guide, state, use_ema=False)
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {path}: its optimizer state does not fit these parameters "
            f"({str(exc).splitlines()[0]})"
        ) from None
    if ema is not None:
        if state.get("ema") is None:
            raise CheckpointError(f"checkpoint {path} has no EMA, but ema_decay is set now")
        ema.load_state_dict(state["ema"])
    if "sampler" not in state or "rng" not in state:
        raise CheckpointError(f"checkpoint {path} lacks the random state needed to resume")
    sampler.load_state_dict(state["sampler"])
    restore_rng(state["rng"])
    extra = state.get("extra", {})
    for name, obj in stateful.items():
        if name in extra:
            obj.load_state_dict(extra[name])
    return int(state["step"])


def _grad_norm(params: list[nn.Parameter], clip: float | None) -> float:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    if clip is not None:
        return float(torch.nn.utils.clip_grad_norm_(params, clip))
    return float(torch.nn.utils.get_total_norm(grads))


def _autocast(precision: Precision, dev: torch.device):
    if precision is Precision.BF16:
        return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _progress_bar(enabled: bool, steps: int, start: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=steps, initial=start, desc="train", unit="step", dynamic_ncols=True)
