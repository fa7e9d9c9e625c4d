"""The subcommands: train, evaluate, sample, compare, plot. Each returns an exit status."""

from __future__ import annotations

import argparse
import dataclasses
import enum
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from ..checkpoint import CHECKPOINT_NAME
from ..config import CONFIG_NAME, GuideKind, ModelKind, RunConfig, build, load_data, parse_enum
from ..data import Split
from ..devices import param_dtype, resolve_device
from ..errors import ConfigError, ModelMismatchError
from ..modules import parameter_count
from ..train.history import METRICS_NAME, History
from . import figures
from .parser import config_overrides, flag_for
from .runs import (
    EVALUATION_NAME,
    check_run_dir,
    figures_dir,
    load_run,
    read_history,
    write_json_atomic,
)

__all__ = ["SamplerKind", "Split", "train", "evaluate", "sample", "compare", "plot"]


class SamplerKind(enum.Enum):
    """How ``pyrodiff sample`` draws (see :mod:`pyrodiff.sampling`)."""

    ANCESTRAL = "ancestral"
    """x_T ~ p(x_T), then every reverse kernel: T network calls, an exact draw from p_θ."""
    STRIDED = "strided"
    """ancestral sampling of the chain respaced onto S of the T steps."""
    DDIM = "ddim"
    """DDIM with stochasticity η on S steps (η = 0: deterministic given x_T)."""


def _say(text: str = "") -> None:
    print(text, flush=True)


# --- train --------------------------------------------------------------------------------------


def _train_config(args: argparse.Namespace) -> RunConfig:
    overrides = config_overrides(args)
    if args.resume:
        if overrides or args.config:
            given = ", ".join(flag_for(k) for k in overrides) or "--config"
            raise ConfigError(
                f"--resume continues a run with its own {CONFIG_NAME}; drop {given} "
                "(start a new run to change the configuration)"
            )
        return RunConfig.from_json(check_run_dir(args.resume) / CONFIG_NAME)
    if args.config:
        return RunConfig.from_json(args.config).replace(**overrides)
    # fields not given take the values that fit the given ones (an hvae's guide, say)
    return RunConfig(**overrides)


_SAID_CHOICES = ("guide", "objective", "num_steps")
"""Choices made for the user that are worth a line: they follow from other flags."""


def _choices_line(config: RunConfig) -> str | None:
    """One line naming the choices made to fit the flags given, when the run is not the plain
    diffusion default (whose choices are the documented defaults)."""
    if config.model is ModelKind.DIFFUSION and config.guide is GuideKind.FIXED:
        return None
    # T depends on the model, so it is worth saying where the model is not a plain diffusion
    said = _SAID_CHOICES if config.model is not ModelKind.DIFFUSION else ("guide", "objective")
    chosen = [name for name in said if name in config.chosen_fields]
    if not chosen:
        return None
    values = {
        "guide": config.guide.value,
        "objective": config.objective.value,
        "num_steps": str(config.num_steps),
    }
    given = f"--model {config.model.value}"
    if "guide" not in chosen:
        given += f" --guide {config.guide.value}"
    picks = ", ".join(f"{flag_for(name)} {values[name]}" for name in chosen)
    return f"chose {picks}: what fits {given} (give the flag to choose otherwise)"


def _new_run_dir(args: argparse.Namespace, distributed) -> Path:
    if args.out:
        out = Path(args.out)
    else:
        out = Path("runs") / time.strftime("%Y%m%d-%H%M%S")
        if distributed is not None:
            out = Path(distributed.broadcast_object(str(out)))
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(
            f"{out} already exists and is not empty; choose another --out, "
            f"or continue that run with --resume {out}"
        )
    return out


def train(args: argparse.Namespace) -> int:
    """``pyrodiff train``: everything is checked before the run folder is created; a failure
    before the first checkpoint removes the folder again, so nothing is left half-written."""
    config = _train_config(args)
    distributed = None
    if args.distributed:
        from ..distributed import setup_distributed

        distributed = setup_distributed()
    finished = False
    try:
        code = _train(args, config, distributed)
        finished = True
        return code
    finally:
        if distributed is not None:
            from ..distributed import cleanup_distributed

            # a rank that failed must not wait at a barrier its peers may never reach
            cleanup_distributed(synchronize=finished)


def _train(args: argparse.Namespace, config: RunConfig, distributed) -> int:
    from ..train import fit

    is_main = distributed is None or distributed.is_main
    line = _choices_line(config) if not args.resume else None
    if line is not None and is_main:
        _say(line)
    if distributed is None:
        resolve_device(config.device)  # CUDA asked for where there is none: stop here
    built = build(config)
    run_dir = check_run_dir(args.resume) if args.resume else _new_run_dir(args, distributed)
    if distributed is not None:
        distributed.barrier()  # every rank has checked the folder before rank 0 writes to it
    if args.resume and not (run_dir / CHECKPOINT_NAME).is_file():
        from ..errors import CheckpointError

        raise CheckpointError(f"{run_dir} has no {CHECKPOINT_NAME} to resume from")
    done = _checkpoint_step(run_dir) if args.resume else 0
    if getattr(args, "dry_run", False):
        _say(config.to_json().rstrip())
        _say(
            f"data {built.dataset.name}: train {tuple(built.dataset.train.shape)}, "
            f"validation {_shape(built.dataset.validation)}, "
            f"test {tuple(built.dataset.test.shape)}; would write {run_dir}"
        )
        return 0

    if args.resume and done >= config.updates:
        if is_main:
            _say_complete(run_dir, config, done)
        return 0
    created = False
    if is_main and not args.resume:
        run_dir.mkdir(parents=True, exist_ok=True)
        created = True
        config.to_json(run_dir / CONFIG_NAME)
    if is_main:
        n_params = parameter_count(built.model, built.guide)
        what = f"from update {done} of {config.updates}" if args.resume else config.updates
        _say(
            f"{'resuming' if args.resume else 'training'} {config.model.value} with "
            f"{_article(config.guide.value)} {config.guide.value} guide on {built.dataset.name} "
            f"(T = {config.num_steps}, "
            f"{n_params:,} parameters, {what} updates) -> {run_dir}"
        )
    started = time.perf_counter()
    try:
        history = fit(
            built.model,
            built.guide,
            built.dataset,
            loss=built.loss,
            **config.fit_options(),
            **config.checkpoint_options(run_dir),
            resume=bool(args.resume),
            config=config,
            progress=not args.no_progress and is_main,
            distributed=distributed,
        )
    except BaseException:
        if created and not (run_dir / CHECKPOINT_NAME).exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    if not is_main:
        return 0
    seconds = time.perf_counter() - started
    if history.interrupted:
        _say(
            f"interrupted at update {history.final_step}; checkpoint saved. "
            f"Continue with: pyrodiff train --resume {run_dir}"
        )
        return 130
    figures.training_figures(history, figures_dir(run_dir), built.dataset)
    _say(f"done in {seconds:.0f} s: {history.final_step} updates")
    _say_final_evaluations(history)
    _say(f"run folder: {run_dir}")
    return 0


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _checkpoint_step(run_dir: Path) -> int:
    """The update the run's checkpoint was written at; CheckpointError (one line) when there is
    no usable checkpoint, before anything is printed."""
    from ..checkpoint import load_checkpoint

    return int(load_checkpoint(run_dir / CHECKPOINT_NAME, map_location="cpu")["step"])


def _say_complete(run_dir: Path, config: RunConfig, done: int) -> None:
    """What ``--resume`` says of a run that has nothing left to do."""
    _say(f"{run_dir} is already complete: {done} of {config.updates} updates")
    metrics = run_dir / METRICS_NAME
    if metrics.is_file():
        _say_final_evaluations(History.load(metrics))
    _say(
        f"To train longer, start a new run from its configuration: pyrodiff train --config "
        f"{run_dir / CONFIG_NAME} --updates {2 * config.updates} --out NEW_RUN "
        "(--resume only continues an interrupted run)"
    )


def _say_final_evaluations(history: History) -> None:
    for split in (Split.VALIDATION, Split.TEST):
        record = history.final_eval_on(split.value)
        if record is not None:
            _say(_eval_line(record, split))


def _shape(x) -> tuple[int, ...] | None:
    return None if x is None else tuple(x.shape)


def _eval_line(record: dict[str, Any], split: Split) -> str:
    """``<split> ELBO <mean> ± <SE> nats/datum[, <split> bits/dim <b>]`` of one evaluation
    record (the SE is over the split's data, as ``evaluate`` prints it)."""
    se = record.get("elbo_se")
    line = f"{split.value} ELBO {record['elbo']:.4f}"
    line += f" ± {se:.4f} nats/datum" if se is not None else " nats/datum"
    if record.get("bits_per_dim") is not None:
        line += f", {split.value} bits/dim {record['bits_per_dim']:.4f}"
    return line


# --- evaluate -----------------------------------------------------------------------------------


def evaluate(args: argparse.Namespace) -> int:
    """``pyrodiff evaluate RUN``: :func:`~pyrodiff.train.evaluation_report` on a split of the
    run's data, printed as its table and written as ``evaluation.json``."""
    from ..train import EVAL_SEED_OFFSET, evaluation_report
    from ..train.evaluate import bound_steps

    split = parse_enum(Split, args.split, "split")
    if args.num is not None and args.num < 1:
        raise ConfigError(f"--num must be >= 1, got {args.num}")
    if args.iwae is not None and args.iwae < 1:
        raise ConfigError(f"--iwae needs K >= 1 samples, got {args.iwae}")
    if args.psis_num < 1:
        raise ConfigError(f"--psis-num must be >= 1, got {args.psis_num}")
    if args.psis_samples < 50:
        # pareto_khat fits the largest min(S/5, 3√S) weights and needs at least 10 of them
        raise ConfigError(
            f"--psis-samples needs at least 50 samples to fit a tail of 10, got {args.psis_samples}"
        )
    loaded = load_run(args.run, device=args.device, use_ema=not args.no_ema)
    dataset = loaded.built.dataset
    x = dataset.split(split)
    whole_split = args.num is None or args.num >= x.shape[0]
    if args.num is not None:
        x = x[: args.num]
    x = x.to(device=loaded.device, dtype=param_dtype(loaded.model))
    # the seed fit evaluates this run with: by default evaluate draws the same noise
    training_seed = loaded.config.seed + EVAL_SEED_OFFSET
    seed = training_seed if args.seed is None else args.seed
    with torch.no_grad():
        report = evaluation_report(
            loaded.model,
            loaded.guide,
            x,
            num_levels=dataset.num_levels,
            density=dataset.density,
            iwae=args.iwae,
            psis_num=args.psis_num if args.psis else None,
            psis_samples=args.psis_samples,
            batch_budget=loaded.config.eval_batch_budget,
            seed=seed,
            progress=True,
            num_steps=bound_steps(loaded.model, loaded.built.loss),
        )
    # None: training has no evaluation of this split at this step to compare with
    evaluated = _training_evaluated(loaded.path, split, loaded.step)
    same_noise = (seed == training_seed and whole_split) if evaluated else None
    report = dataclasses.replace(
        report,
        run=str(loaded.path),
        step=loaded.step,
        split=split.value,
        ema=loaded.used_ema,
        training_seed=training_seed,
        same_noise_as_training=same_noise,
    )
    write_json_atomic(loaded.path / EVALUATION_NAME, report.to_dict())
    _say(report.table())
    _say(f"wrote {loaded.path / EVALUATION_NAME}")
    return 0


def _training_evaluated(run: Path, split: Split, step: int) -> bool:
    """Whether the run's metrics hold training's own evaluation of ``split`` at ``step``."""
    try:
        history = read_history(run)
    except ConfigError:
        return False
    return any(r.get("split") == split.value and r["step"] == step for r in history.evals)


# --- sample -------------------------------------------------------------------------------------


SCATTER_SAMPLES = 1000
"""``sample``'s default for vector data, drawn as a scatter over the density: enough points to
show where the mass is."""

GRID_SAMPLES = 64
"""``sample``'s default for images: an 8 × 8 grid."""


def sample(args: argparse.Namespace) -> int:
    """``pyrodiff sample RUN``: draws from p_θ(x_0), saved as .npy and drawn as a PNG.

    A diffusion is sampled by any sampler of :mod:`pyrodiff.sampling`; a continuous-time run
    is first discretised at T = ``--T`` (at S steps for ``strided``: the same model on a
    coarser grid); a run of guide adaptive draws z ~ p(z) and then its own chain of T steps
    (S for ``strided``: the same model on a coarser grid); a hierarchical VAE has no noise
    schedule to stride over or to run DDIM on, so it is sampled ancestrally, by running its
    Pyro program."""
    kind = parse_enum(SamplerKind, args.sampler, "sampler")
    if args.num is not None and args.num < 1:
        raise ConfigError(f"--num must be >= 1, got {args.num}")
    if not math.isfinite(args.eta) or args.eta < 0:
        raise ConfigError(f"--eta must be a finite number >= 0, got {args.eta}")
    loaded = load_run(args.run, device=args.device, use_ema=not args.no_ema)
    dataset = loaded.built.dataset
    num = args.num
    if num is None:
        num = GRID_SAMPLES if len(dataset.event_shape) > 1 else SCATTER_SAMPLES
    gen = torch.Generator(device=loaded.device).manual_seed(args.seed)
    drawn = _draw(loaded, kind, num, args, gen)
    x, tag = drawn.x.detach().cpu(), drawn.tag
    array = dataset.to_levels(x).numpy().astype(np.int64) if dataset.num_levels else x.numpy()
    npy = Path(args.out) if args.out else loaded.path / f"samples-{tag}.npy"
    if npy.suffix != ".npy":
        raise ConfigError(f"--out must end in .npy, got {npy}")
    npy.parent.mkdir(parents=True, exist_ok=True)
    tmp = npy.with_name(f".{npy.name}.tmp.npy")
    np.save(tmp, array)
    tmp.replace(npy)
    png = figures.samples_figure(
        x, dataset, figures_dir(loaded.path) / f"samples-{tag}.png", sampler=kind, steps=drawn.steps
    )
    how = (
        kind.value
        if kind is SamplerKind.ANCESTRAL
        else f"{kind.value}, {drawn.steps} sampler steps"
    )
    _say(f"{num} samples ({how}) from step {loaded.step}{' (EMA)' if loaded.used_ema else ''}")
    _say(f"wrote {npy}")
    _say(f"wrote {png}")
    return 0


class _Drawn(NamedTuple):
    x: torch.Tensor
    tag: str
    """names the files: samples-<tag>.npy, figures/samples-<tag>.png."""
    steps: int
    """the reverse steps the sampler took (T, or an hvae's L layers, for ancestral)."""


def _draw(
    loaded, kind: SamplerKind, num: int, args: argparse.Namespace, gen: torch.Generator
) -> _Drawn:
    """Samples from the run's model by ``kind``; ConfigError, naming why, for a sampler the
    model cannot use."""
    from .. import sampling
    from ..models import ContinuousDiffusion, Diffusion, ReverseVariance

    model_kind = loaded.config.model.value
    if not isinstance(loaded.model, Diffusion | ContinuousDiffusion):
        if kind is not SamplerKind.ANCESTRAL:
            raise ConfigError(
                f"--sampler {kind.value} needs a diffusion's noise schedule, which a run of "
                f"--model {model_kind} does not have: it samples ancestrally (drop --sampler)"
            )
        x = _run_program(loaded.model, num, args.seed, loaded.device)
        return _Drawn(x, "ancestral", loaded.model.num_steps)
    if getattr(loaded.model, "latent_dim", 0) and isinstance(loaded.model, ContinuousDiffusion):
        return _draw_latent_chain(loaded.model, kind, num, args, gen)
    try:
        model, _ = loaded.chain()
    except ModelMismatchError as exc:
        raise ConfigError(f"this run cannot be sampled yet: {exc}") from None
    T = model.num_steps
    # strided re-discretises a continuous-time run, whose coarsest grid holds z_0 and z_1
    continuous = isinstance(loaded.model, ContinuousDiffusion)
    fewest = 2 if continuous and kind is SamplerKind.STRIDED else 1
    steps = args.sampler_steps if args.sampler_steps is not None else max(fewest, T // 10)
    if kind is not SamplerKind.ANCESTRAL and not fewest <= steps <= T:
        raise ConfigError(
            f"--sampler-steps must be an integer in {fewest}..T = {T} for this run, got {steps}"
        )
    if kind is SamplerKind.ANCESTRAL:
        return _Drawn(sampling.ancestral_sample(model, num, generator=gen), "ancestral", T)
    if kind is SamplerKind.STRIDED:
        if continuous:
            # the continuous model on a grid of S steps: its own discretisation, not a respacing
            coarse = loaded.model.discretize(steps)
            x = sampling.ancestral_sample(coarse, num, generator=gen)
        elif model.variance is ReverseVariance.PER_STEP:
            raise ConfigError(
                f"--sampler strided cannot respace this {model_kind} run: its reverse "
                f"variances were learned for each of its T = {T} steps; use --sampler "
                "ancestral or ddim"
            )
        else:
            x = sampling.strided_sample(model, num, steps, generator=gen)
        return _Drawn(x, f"strided{steps}", steps)
    x = sampling.ddim_sample(model, num, steps, eta=args.eta, generator=gen)
    return _Drawn(x, f"ddim{steps}-eta{args.eta:g}", steps)


def _draw_latent_chain(
    model, kind: SamplerKind, num: int, args: argparse.Namespace, gen: torch.Generator
) -> _Drawn:
    """Samples of a model with a latent z (:class:`~pyrodiff.models.AdaptiveDiffusion`):
    z ~ p(z), x_S ~ p(x_S), then its reverse kernels on the S-step grid
    (:meth:`~pyrodiff.models.AdaptiveDiffusion.reverse_kernel_moments`) and the decoder: an
    exact draw of the model's S-step chain, S = T for ancestral. Its schedule depends on z, so
    there is no fixed table for DDIM to run on."""
    from ..sampling import _decode

    T = model.num_steps
    if kind is SamplerKind.DDIM:
        raise ConfigError(
            "--sampler ddim needs a fixed noise schedule; this run's depends on its latent z: "
            "use --sampler ancestral, or strided with --sampler-steps S"
        )
    steps = T
    if kind is SamplerKind.STRIDED:
        steps = args.sampler_steps if args.sampler_steps is not None else max(2, T // 10)
        if not 2 <= steps <= T:
            raise ConfigError(
                f"--sampler-steps must be an integer in 2..T = {T} for this run, got {steps}"
            )
    dev = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    shape = (num, *model.event_shape)

    def normal(*size: int) -> torch.Tensor:
        return torch.randn(size, generator=gen, device=dev, dtype=dtype)

    with torch.no_grad():
        z = normal(num, model.latent_dim)
        x = model.prior_loc + model.prior_scale * normal(*shape)
        for step in range(steps, 1, -1):
            mean, std = model.reverse_kernel_moments(x, z, step, num_steps=steps)
            x = mean + std * normal(*shape)
        lam_0 = model._ends_per_datum(x, z)[0]
        loc, scale = model.decoder_moments(x, lam_0)
        x = _decode(model.likelihood, loc, scale, normal(*shape))
    tag = "ancestral" if kind is SamplerKind.ANCESTRAL else f"strided{steps}"
    return _Drawn(x, tag, steps)


def _run_program(model, num: int, seed: int, device: torch.device) -> torch.Tensor:
    """x_0 from running the Pyro model forward (no data), with torch's generator seeded by
    ``seed`` and the caller's stream restored: the same seed draws the same samples."""
    from pyro.infer import Predictive

    devices = [device] if device.type == "cuda" else []
    with torch.no_grad(), torch.random.fork_rng(devices=devices), torch.device(device):
        torch.manual_seed(seed)
        draws = Predictive(model, num_samples=1, return_sites=["x_0"], parallel=False)(None, num)
    return draws["x_0"].squeeze(0)


# --- compare and plot ---------------------------------------------------------------------------


COMPARISON_FIGURE = "comparison.png"
"""``compare``'s figure, written into the first run's figures/ unless ``--out`` says where."""


def compare(args: argparse.Namespace) -> int:
    """``pyrodiff compare RUN RUN...``: one figure and one table
    (:class:`~pyrodiff.train.ComparisonReport`) for several runs."""
    from ..train import ComparisonReport

    runs = [check_run_dir(r, need_config=False) for r in args.runs]
    if len(set(map(lambda p: p.resolve(), runs))) != len(runs):
        raise ConfigError("the same run folder is given twice")
    out = Path(args.out) if args.out else figures_dir(runs[0]) / COMPARISON_FIGURE
    if out.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise ConfigError(f"--out must end in .png, .pdf or .svg, got {out}")
    histories = {_label(r, runs): read_history(r) for r in runs}
    densities = {_label(r, runs): _density(r) for r in runs}
    report = ComparisonReport.of(histories, densities)
    out.parent.mkdir(parents=True, exist_ok=True)
    figures.comparison_figure(histories, out, entropy=report.entropy)
    _say(report.table())
    _say(f"wrote {out}")
    return 0


def _density(run: Path):
    """The exact density of the run's data, when its config.json names a data set that has
    one (the 2-D sets); None otherwise."""
    if not (run / CONFIG_NAME).is_file():
        return None
    return load_data(RunConfig.from_json(run / CONFIG_NAME)).density


def _label(run: Path, runs: list[Path]) -> str:
    names = [r.name for r in runs]
    return run.name if names.count(run.name) == 1 else str(run)


def plot(args: argparse.Namespace) -> int:
    """``pyrodiff plot RUN``: redraw the training figures, and sample figures from saved .npy."""
    run = check_run_dir(args.run, need_config=False)
    history = read_history(run)
    out = figures_dir(run)
    # without a config.json (fit given no RunConfig) the figures lack only the data's entropy
    has_config = (run / CONFIG_NAME).is_file()
    dataset = load_data(RunConfig.from_json(run / CONFIG_NAME)) if has_config else None
    written = figures.training_figures(history, out, dataset)
    samples = sorted(run.glob("samples-*.npy")) if dataset is not None else []
    for npy in samples:
        x = _load_samples(npy, dataset)
        written.append(figures.samples_figure(x, dataset, out / f"{npy.stem}.png"))
    for path in written:
        _say(f"wrote {path}")
    return 0


def _load_samples(path: Path, dataset) -> torch.Tensor:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"cannot read samples {path}: {exc}") from None
    x = torch.as_tensor(array)
    if dataset.num_levels:
        return dataset.from_levels(x, torch.get_default_dtype())
    return x.to(torch.get_default_dtype())


COMMANDS = {
    "train": train,
    "evaluate": evaluate,
    "sample": sample,
    "compare": compare,
    "plot": plot,
}


def stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
