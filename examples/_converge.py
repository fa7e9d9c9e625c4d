"""Training a study model until more updates stop helping, judged on validation data.

A run is a run folder of ``pyrodiff train`` (config.json, checkpoint.pt, metrics.jsonl), so
every model of the study can be read again with ``pyrodiff evaluate``, ``sample`` or
``compare``. :func:`train_to_convergence` trains one configuration at a doubling sequence of
budgets, each a full run with its own learning-rate schedule:

    updates = N, 2N, 4N, … (at most ``max_updates``)

and stops at the first doubling that does **not** raise the validation ELBO by 2 standard
errors (the SE over the validation data of the shorter run's ELBO). The run kept is the one of
the last pair with the better validation ELBO, so the budget is chosen on validation data; when
the doubling lowered the ELBO (over-fitting) the shorter run is kept. ``converged`` is True
then, and False when ``max_updates`` came first (the last doubling's gain is the slope to
report). The test split is never read here: the studies read it once, for the kept run.

With ``check=False`` (the studies' ``--quick`` runs) the same budgets are trained and the same
run kept, but ``converged`` is None, "not checked": a budget of a few dozen updates sits far
from convergence, yet its validation ELBO is so noisy that a doubling's gain is below 2 SE, and
the rule would call it converged. The rule can only be trusted at budgets the study chose for it.

A killed job loses nothing: a run folder with a checkpoint is resumed (``fit(resume=True)``,
bit-identical to an uninterrupted run), and a finished one is only loaded.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from pyrodiff.cli.runs import LoadedRun, load_run
from pyrodiff.config import RunConfig, build
from pyrodiff.train import History, fit

R = TypeVar("R")

DONE_NAME = "study_budget.json"
"""Written into a run folder when its training is complete: CPU seconds and updates."""


@dataclass
class TrainedRun:
    """One finished run: the model with its evaluation parameters, its validation curve and
    what it cost."""

    folder: Path
    loaded: LoadedRun
    history: History
    cpu_minutes: float

    @property
    def updates(self) -> int:
        return self.loaded.config.updates

    @property
    def curve(self) -> list[dict[str, float]]:
        """The validation ELBO (nats per datum) against updates within this run."""
        return [
            {"updates": r["step"], "elbo": r["elbo"], "elbo_se": r["elbo_se"]}
            for r in self.history.evals
            if r.get("split", "validation") == "validation"
        ]

    @property
    def validation(self) -> tuple[float, float]:
        """The validation ELBO at the end of the run, with its SE over the validation data."""
        last = self.curve[-1]
        return last["elbo"], last["elbo_se"]


@dataclass
class Converged:
    """The budgets tried for one configuration, the run kept, and whether the rule was met."""

    runs: list[TrainedRun]
    kept: TrainedRun
    converged: bool | None
    """None when the rule was not checked (a quick run)"""
    gains: list[PairedGain] | None = None
    """the paired gain of every doubling, when the paired rule judged them"""

    @property
    def last_gain(self) -> tuple[float, float] | None:
        """What the last doubling gained on validation, with the SE the rule used: the paired
        gain and its paired SE under the paired rule, else the difference of the two runs'
        validation ELBOs and the shorter run's SE; None after a single run."""
        if len(self.runs) < 2:
            return None
        if self.gains:
            return self.gains[-1].gain, self.gains[-1].se
        (a, se), (b, _) = self.runs[-2].validation, self.runs[-1].validation
        return b - a, se

    def budget_table(self) -> list[dict[str, Any]]:
        """Every budget tried: updates, CPU-minutes, final validation ELBO ± SE, and its curve."""
        return [budget_entry(r.updates, r.cpu_minutes, r.validation, r.curve) for r in self.runs]

    def gain_table(self) -> list[dict[str, Any]] | None:
        """Every doubling's paired gain (None under the unpaired rule)."""
        return None if self.gains is None else [asdict(g) for g in self.gains]


def budget_entry(
    updates: int,
    cpu_minutes: float,
    validation: tuple[float, float],
    curve: list[dict[str, float]] | None = None,
) -> dict[str, Any]:
    """One budget of a doubling as the studies report it (what ``_tables.convergence_table``
    reads): its updates, CPU-minutes, final validation ELBO ± SE and, where recorded, the
    validation curve within the run."""
    entry = {
        "updates": updates,
        "cpu_minutes": cpu_minutes,
        "validation_elbo": validation[0],
        "validation_elbo_se": validation[1],
    }
    return entry if curve is None else {**entry, "curve": curve}


def train_run(config: RunConfig, folder: Path, *, say=print) -> TrainedRun:
    """Train ``config`` into ``folder`` (resuming a checkpoint there, or only loading a finished
    run) on the training split, evaluating on the validation split; the test split is not read."""
    folder = Path(folder)
    done = folder / DONE_NAME
    written = folder / "config.json"
    if written.is_file() and RunConfig.from_json(written).to_dict() != config.to_dict():
        raise ValueError(
            f"{folder} holds a run of another configuration; remove it or choose another folder"
        )
    if not done.is_file():
        built = build(config)
        data = built.dataset
        resume = (folder / "checkpoint.pt").is_file()
        start = _checkpoint_step(folder) if resume else 0
        if not resume and folder.exists():
            for stale in folder.iterdir():  # a run killed before its first checkpoint
                stale.unlink()
        folder.mkdir(parents=True, exist_ok=True)
        say(f"  training {folder} ({config.updates} updates{', resumed' if resume else ''})")
        cpu, wall = time.process_time(), time.perf_counter()
        history = fit(
            built.model,
            built.guide,
            data.train,
            loss=built.loss,
            **config.fit_options(),
            **config.checkpoint_options(folder),
            eval_data=data.validation,
            resume=resume,
            config=config,
            progress=False,
            log_every=max(1, config.updates // 100),
        )
        if history.interrupted:
            raise KeyboardInterrupt
        # a resumed run's earlier segments were timed by a process that is gone: scale the
        # segment timed here to the whole run (evaluations are spread evenly over it)
        scale = config.updates / max(1, config.updates - start)
        spent = {
            "cpu_seconds": (time.process_time() - cpu) * scale,
            "wall_seconds": (time.perf_counter() - wall) * scale,
            "updates": config.updates,
            "resumed_at": start,
        }
        done.write_text(json.dumps(spent, indent=2) + "\n")
    spent = _read(done)
    loaded = load_run(folder, device="cpu")
    history = History.load(folder / "metrics.jsonl")
    return TrainedRun(folder, loaded, history, spent["cpu_seconds"] / 60)


def doubling(
    train: Callable[[int], R],
    validation: Callable[[R], tuple[float, float]],
    *,
    first_updates: int,
    max_updates: int,
    check: bool = True,
) -> tuple[list[R], R, bool | None]:
    """The doubling rule for any trainer: ``train(updates)`` returns a trained result and
    ``validation(result)`` its validation ELBO with that ELBO's SE. Returns every result in
    order of budget, the one kept, and whether the rule was met: None without ``check`` (see
    the module's docstring)."""
    if first_updates < 1 or max_updates < first_updates:
        raise ValueError(
            f"need 1 <= first_updates <= max_updates, got {first_updates} and {max_updates}"
        )
    runs: list[R] = []
    updates = first_updates
    while True:
        runs.append(train(updates))
        if len(runs) >= 2:
            (a, se), (b, _) = validation(runs[-2]), validation(runs[-1])
            if b - a < 2 * se:
                return runs, (runs[-1] if b >= a else runs[-2]), (True if check else None)
        if 2 * updates > max_updates:
            return runs, runs[-1], (False if check else None)
        updates *= 2


def train_to_convergence(
    config: RunConfig,
    root: Path,
    *,
    first_updates: int,
    max_updates: int,
    check: bool = True,
    say=print,
    per_datum: Callable[[TrainedRun], Any] | None = None,
) -> Converged:
    """Train ``config`` at ``first_updates``, then double until the validation ELBO stops rising
    by 2 SE or ``max_updates`` is reached (see the module's docstring).

    With ``per_datum`` (a run's bound per validation datum, drawn with common random numbers
    on every call) each doubling is judged by the paired rule instead (:func:`paired_doubling`)."""

    def train(n: int) -> TrainedRun:
        return train_run(config.replace(updates=n), Path(root) / f"u{n}", say=say)

    if per_datum is not None:
        runs, kept, converged, gains = paired_doubling(
            train, per_datum, first_updates=first_updates, max_updates=max_updates, check=check
        )
        return Converged(runs, kept, converged, gains)
    runs, kept, converged = doubling(
        train,
        lambda run: run.validation,
        first_updates=first_updates,
        max_updates=max_updates,
        check=check,
    )
    return Converged(runs, kept, converged)


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _checkpoint_step(folder: Path) -> int:
    from pyrodiff.checkpoint import load_checkpoint

    return int(load_checkpoint(folder / "checkpoint.pt", map_location="cpu")["step"])


# --- the paired rule: two budgets compared on the same draws -------------------------------------


@dataclass(frozen=True)
class PairedGain:
    """What doubling a budget gained on validation, read as a paired difference.

    ``gain`` is the mean over the validation data of bound_2N(x) − bound_N(x), both evaluated
    with common random numbers (the same generator seed, hence the same t, ε and z noise per
    datum), and ``se`` its standard error over the data. Most of the Monte-Carlo noise of the two
    bounds is shared and cancels in the difference, so ``se`` is far smaller than either bound's
    own SE, and the rule below is far stricter than :func:`doubling`'s.
    """

    shorter_updates: int
    longer_updates: int
    gain: float
    se: float

    @property
    def converged(self) -> bool:
        """The doubling gained less than 2 paired SE."""
        return self.gain < 2 * self.se


def paired_gain(shorter, longer, shorter_updates: int, longer_updates: int) -> PairedGain:
    """The :class:`PairedGain` of per-datum bounds ``shorter`` and ``longer`` (tensors of the
    same shape, the same data in the same order, drawn with common random numbers)."""
    diff = (longer.detach().double() - shorter.detach().double()).flatten()
    if diff.numel() < 2:
        raise ValueError(f"a paired SE needs at least 2 data, got {diff.numel()}")
    se = diff.std().item() / diff.numel() ** 0.5
    return PairedGain(shorter_updates, longer_updates, diff.mean().item(), se)


def paired_doubling(
    train: Callable[[int], R],
    per_datum_validation: Callable[[R], Any],
    *,
    first_updates: int,
    max_updates: int,
    check: bool = True,
    available: Callable[[int], bool] | None = None,
) -> tuple[list[R], R, bool | None, list[PairedGain]]:
    """The doubling sequence N, 2N, 4N, … judged by the paired rule (:class:`PairedGain`).

    ``train(updates)`` returns a trained result, ``per_datum_validation(result)`` its bound per
    validation datum; it must draw its noise from a generator seeded the same way on every call
    (common random numbers), or the pairing removes nothing. Stops at the first doubling that
    gains less than 2 paired SE (converged) or when ``max_updates`` comes first (not
    converged). With ``available``, a doubling whose budget is not available (a run not made)
    ends the sequence there, not converged. The result kept is the better of the last pair on
    validation. Returns every
    result in order of budget, the one kept, the verdict (None without ``check``, as
    :func:`doubling`) and the gain of every doubling."""
    if first_updates < 1 or max_updates < first_updates:
        raise ValueError(
            f"need 1 <= first_updates <= max_updates, got {first_updates} and {max_updates}"
        )
    runs: list[R] = []
    bounds: list[Any] = []
    gains: list[PairedGain] = []
    updates = first_updates
    while True:
        runs.append(train(updates))
        bounds.append(per_datum_validation(runs[-1]))
        if len(runs) >= 2:
            gains.append(paired_gain(bounds[-2], bounds[-1], updates // 2, updates))
            if gains[-1].converged:
                kept = runs[-1] if gains[-1].gain >= 0 else runs[-2]
                return runs, kept, (True if check else None), gains
        if 2 * updates > max_updates or (available is not None and not available(2 * updates)):
            # not converged: the last doubling gained at least 2 paired SE, so it is kept
            return runs, runs[-1], (False if check else None), gains
        updates *= 2
