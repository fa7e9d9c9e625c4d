"""``fit``: stochastic variational inference on a (model, guide) pair, safe to interrupt.

The parts a reader looks for, by name: :func:`~pyrodiff.train.setup.set_up_run` (options,
data, state, resume, the run folder), :func:`~pyrodiff.train.step.take_step` (one update and
its guards), :class:`_Evaluations` (validation during training, the test split once at the
end), :class:`_Checkpoints`, and the loop itself in :func:`_run`.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pyro.infer import ELBO
from torch import Tensor, nn

from ..checkpoint import CHECKPOINT_NAME, save_checkpoint
from ..data import Dataset, Split
from ..devices import Threads, check_threads, choose_threads, thread_count
from ..distributed import DistributedContext
from ..errors import ConfigError
from ..infer import DiffusionELBO
from ..progress import TrainingProgress
from .evaluate import EVAL_SEED_OFFSET, bound_steps, evaluate_split, evaluation_mode
from .guards import InterruptFlag, non_finite_error
from .history import History, MetricsWriter, RecordKind
from .options import OPTIONS, LRSchedule, Precision, check_options, default_warmup
from .rng import capture_rng, restore_rng
from .setup import Run, RunRecord, check_run_options, set_up_run
from .step import Divergence, Phase, take_step

__all__ = ["RunRecord", "fit"]


def fit(
    model: nn.Module,
    guide: nn.Module,
    data: Dataset | Tensor,
    *,
    loss: ELBO | None = None,
    updates: int = OPTIONS.updates.default,
    batch_size: int = OPTIONS.batch_size.default,
    lr: float = OPTIONS.lr.default,
    lr_schedule: LRSchedule = OPTIONS.lr_schedule.default,
    warmup_steps: int | None = OPTIONS.warmup_steps.default,
    weight_decay: float = OPTIONS.weight_decay.default,
    grad_clip: float | None = OPTIONS.grad_clip.default,
    ema_decay: float | None = OPTIONS.ema_decay.default,
    seed: int = OPTIONS.seed.default,
    device: str | torch.device = OPTIONS.device.default,
    precision: Precision = OPTIONS.precision.default,
    eval_every: int | None = OPTIONS.eval_every.default,
    eval_data: Tensor | None = None,
    eval_batch_budget: int = OPTIONS.eval_batch_budget.default,
    log_every: int = OPTIONS.log_every.default,
    run_dir: str | Path | None = None,
    checkpoint_every: int | None = OPTIONS.checkpoint_every.default,
    resume: bool = False,
    config: RunRecord | dict[str, Any] | None = None,
    progress: bool = True,
    distributed: DistributedContext | None = None,
    callback: Callable[[int, float], None] | None = None,
    steps: int | None = None,
    threads: int | Threads = Threads.AUTO,
) -> History:
    """Maximise the ELBO of ``model`` with ``guide`` on ``data`` by stochastic gradients.

    Each update draws ``batch_size`` training data (a fresh permutation each epoch), computes
    ``loss(model, guide)(batch)`` (a Pyro ELBO used as an ``nn.Module``: the negative ELBO of
    the batch, summed over data) and takes one AdamW step over the parameters of the model and
    the guide. Any Pyro ELBO works: :class:`~pyrodiff.infer.DiffusionELBO` (the default; one
    network call per datum, needs a closed-form guide), Trace_ELBO, TraceMeanField_ELBO.

    Every training option is checked against its one declaration,
    :data:`pyrodiff.train.options.OPTIONS` (type, range, default, help), which RunConfig and
    ``pyrodiff train`` check against too.

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
            ``"split": "validation"``; None or 0: only at the end); ``eval_data`` replaces
            ``data.validation``. At the end
            the validation data is evaluated once more (unless it just was) and a Dataset's
            test split once (``"split": "test"``): the only time fit reads the test split.
            A continuous-time model is evaluated on the bound its ``loss`` trains
            (:func:`~pyrodiff.train.evaluate.bound_steps`): T = ∞ under ContinuousELBO, its
            T-step chain under DiffusionELBO or Trace_ELBO.
        eval_batch_budget: at most this many network inputs per call during evaluation.
        log_every: write a training record every this many updates, holding the mean loss of
            those updates.
        run_dir: folder for ``metrics.jsonl`` and ``checkpoint.pt``, and ``config.json`` when
            ``config`` is a RunConfig: then it is the run folder ``pyrodiff train`` writes, which
            ``pyrodiff evaluate``, ``sample``, ``plot`` and ``compare`` read. A checkpoint is
            written every ``checkpoint_every`` updates (None or 0: only at the end), at the end
            and on Ctrl-C.
        resume: continue the run in ``run_dir`` from its checkpoint; with the same arguments the
            result is bit-identical to a run that was never interrupted.
        config: a :class:`pyrodiff.config.RunConfig` (written to ``run_dir/config.json`` and
            stored in the checkpoint) or a JSON-able dict (stored in the checkpoint only).
        progress: show a tqdm bar with the running ELBO per datum, and one for each evaluation.
        distributed: a ``pyrodiff.distributed.DistributedContext``; each rank draws its
            batches from its own shard with its own seed, ``wrap_module`` sums the gradients
            over ranks, and only the main rank evaluates, writes files and shows the bar.
        callback: called as ``callback(step, loss)`` after every update.
        threads: CPU threads for torch during the fit, restored after it: an ``int``, or
            ``Threads.AUTO`` (one thread on the CPU unless torch's count was set by the user,
            see :func:`~pyrodiff.devices.choose_threads`; a change is announced in one line
            on stderr when ``progress`` is on) or ``Threads.KEEP``.

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
    # one schema for every training option: fit refuses exactly what RunConfig and the
    # pyrodiff command refuse, with the same message (pyrodiff.train.options.OPTIONS)
    opts = check_options(
        {
            "updates": updates,
            "batch_size": batch_size,
            "lr": lr,
            "lr_schedule": lr_schedule,
            "warmup_steps": warmup_steps,
            "weight_decay": weight_decay,
            "grad_clip": grad_clip,
            "ema_decay": ema_decay,
            "seed": seed,
            "device": device,
            "precision": precision,
            "eval_every": eval_every,
            "eval_batch_budget": eval_batch_budget,
            "checkpoint_every": checkpoint_every,
            "log_every": log_every,
        }
    )
    # integral floats become integers, integers floats, as RunConfig reads them
    updates, batch_size, warmup_steps = opts["updates"], opts["batch_size"], opts["warmup_steps"]
    lr, weight_decay, grad_clip = opts["lr"], opts["weight_decay"], opts["grad_clip"]
    ema_decay, seed, eval_batch_budget = opts["ema_decay"], opts["seed"], opts["eval_batch_budget"]
    log_every = opts["log_every"]
    # 0 and None both mean "only at the end"
    eval_every, checkpoint_every = opts["eval_every"] or None, opts["checkpoint_every"] or None
    check_run_options(
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
    check_threads(threads)
    run = set_up_run(
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
    evaluations = _Evaluations(
        run, eval_every, eval_batch_budget, seed, progress, bound_steps(model, loss)
    )
    checkpoints = _Checkpoints(run, checkpoint_every)
    options = {
        "lr": lr,
        "lr_schedule": lr_schedule,
        "updates": updates,
        "warmup_steps": warmup_steps,
        "grad_clip": grad_clip,
        "precision": precision,
    }
    choice = choose_threads(threads, run.device)
    if choice.changes and progress and run.is_main:
        print(choice.message(), file=sys.stderr, flush=True)
    bar = _progress_bar(progress and run.is_main, updates, run.ts.step, eval_every)
    try:
        with thread_count(choice):
            return _run(run, options, evaluations, checkpoints, log_every, bar, callback)
    finally:
        if bar is not None:
            bar.close()


# --- evaluation ---------------------------------------------------------------------------------


class _Evaluations:
    """Validation every ``eval_every`` updates; at the end, validation (unless it just ran) and
    the test split, once. Only the main rank evaluates; the EMA parameters are used if kept.
    With ``progress``, each evaluation shows its own bar (a digits evaluation is 100 network
    passes over the split, seconds to minutes on a CPU)."""

    def __init__(
        self,
        run: Run,
        every: int | None,
        batch_budget: int,
        seed: int,
        progress: bool,
        num_steps: int | None = None,
    ) -> None:
        self.run, self.every, self.batch_budget = run, every, batch_budget
        # a continuous-time model is evaluated on the bound its objective trains (T or ∞)
        self.num_steps = num_steps
        self.progress = progress
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
        with (
            ema.applied() if ema is not None else contextlib.nullcontext(),
            evaluation_mode(run.ts.model, run.ts.guide),
        ):
            result = evaluate_split(
                run.ts.model,
                run.ts.guide,
                x,
                num_levels=run.data.num_levels,
                batch_budget=self.batch_budget,
                seed=self.seed,
                progress=self.progress,
                num_steps=self.num_steps,
            )
        writer.write(RecordKind.EVAL, run.ts.step, split=split.value, ema=ema is not None, **result)


# --- checkpointing ------------------------------------------------------------------------------


class _Checkpoints:
    """Atomic checkpoints every ``every`` updates, at the end and on Ctrl-C (main rank only)."""

    def __init__(self, run: Run, every: int | None) -> None:
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
    run: Run,
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
                        ts, run.train_module, run.clip_groups, batch, phase=phase, **options
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
                    bar.update(f"elbo/datum {running:.4g}")
                # evaluation time stays out of the bar's time per update, so its ETA holds still
                with bar.paused() if bar is not None else contextlib.nullcontext():
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
    run: Run,
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


def _progress_bar(
    enabled: bool, updates: int, start: int, eval_every: int | None
) -> TrainingProgress | None:
    return TrainingProgress(updates, start, eval_every=eval_every) if enabled else None
