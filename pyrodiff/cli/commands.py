"""The subcommands: train, evaluate, sample, compare, plot. Each returns an exit status."""

from __future__ import annotations

import argparse
import enum
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import CHECKPOINT_NAME
from ..config import CONFIG_NAME, GuideKind, ModelKind, RunConfig, build, load_data, parse_enum
from ..data import Split
from ..devices import param_dtype, resolve_device
from ..errors import ConfigError
from ..train.history import History
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
    if getattr(args, "dry_run", False):
        _say(config.to_json().rstrip())
        _say(
            f"data {built.dataset.name}: train {tuple(built.dataset.train.shape)}, "
            f"validation {_shape(built.dataset.validation)}, "
            f"test {tuple(built.dataset.test.shape)}; would write {run_dir}"
        )
        return 0

    created = False
    if is_main and not args.resume:
        run_dir.mkdir(parents=True, exist_ok=True)
        created = True
        config.to_json(run_dir / CONFIG_NAME)
    if is_main:
        n_params = sum(p.numel() for p in built.model.parameters()) + sum(
            p.numel() for p in built.guide.parameters()
        )
        _say(
            f"{'resuming' if args.resume else 'training'} {config.model.value} with a "
            f"{config.guide.value} guide on {built.dataset.name} (T = {config.num_steps}, "
            f"{n_params:,} parameters, {config.updates} updates) -> {run_dir}"
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
    for split in (Split.VALIDATION, Split.TEST):
        record = history.final_eval_on(split.value)
        if record is not None:
            _say(_eval_line(record, split, built.dataset.num_levels is not None))
    _say(f"run folder: {run_dir}")
    return 0


def _shape(x) -> tuple[int, ...] | None:
    return None if x is None else tuple(x.shape)


def _eval_line(record: dict[str, Any], split: Split, quantised: bool) -> str:
    line = f"{split.value} ELBO {record['elbo']:.4f} nats/datum"
    if quantised and record.get("bits_per_dim") is not None:
        line += f", {split.value} bits/dim {record['bits_per_dim']:.4f}"
    return line


# --- evaluate -----------------------------------------------------------------------------------


def evaluate(args: argparse.Namespace) -> int:
    """``pyrodiff evaluate RUN``: the ELBO terms on a split, bits/dim, IWAE-K, PSIS k̂."""
    from ..train import evaluate_split

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
    if args.num is not None:
        x = x[: args.num]
    x = x.to(device=loaded.device, dtype=param_dtype(loaded.model))
    quantised = dataset.num_levels is not None
    with torch.no_grad():
        result = evaluate_split(
            loaded.model,
            loaded.guide,
            x,
            num_levels=dataset.num_levels,
            batch_budget=loaded.config.eval_batch_budget,
            seed=args.seed,
            progress=True,
        )
    out: dict[str, Any] = {
        "run": str(loaded.path),
        "step": loaded.step,
        "split": split.value,
        "num_data": int(x.shape[0]),
        "ema": loaded.used_ema,
        **result,
    }
    if args.iwae is not None or args.psis:
        # seeded like the ELBO: the same command prints the same numbers
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            torch.manual_seed(args.seed)
            out.update(_bounds(loaded, x, args, dataset.num_dims, quantised))
    write_json_atomic(loaded.path / EVALUATION_NAME, out)
    _say(_evaluation_table(out, quantised))
    _say(f"wrote {loaded.path / EVALUATION_NAME}")
    return 0


def _bounds(loaded, x, args: argparse.Namespace, num_dims: int, quantised: bool) -> dict:
    """IWAE-K (Burda et al.) and PSIS k̂ (Vehtari et al.) from :mod:`pyrodiff.infer.bounds`.

    Both take T network calls per importance sample (vectorised for closed-form guides), so
    IWAE-K costs about K times an ELBO evaluation of the same data, and k̂ with S samples S
    times one of its ``--psis-num`` data: it reads a subset, which the output names."""
    k, psis = args.iwae, args.psis
    model, guide = loaded.chain()
    from ..infer import bounds

    out: dict[str, Any] = {}
    if model is not loaded.model:
        out["discretized_at"] = model.num_steps  # a continuous-time run read as a T-step chain
    budget = loaded.config.eval_batch_budget
    if k is not None:
        res = bounds.iwae_bound(model, guide, x, num_samples=k, batch_budget=budget, progress=True)
        out["iwae_k"] = k
        out["iwae"] = res.mean
        out["iwae_se"] = res.stderr
        out["iwae_bits_per_dim"] = res.bits_per_dim(num_dims) if quantised else None
    if psis:
        subset = x[: args.psis_num]
        diag = bounds.psis_diagnostic(
            model,
            guide,
            subset,
            num_samples=args.psis_samples,
            batch_budget=budget,
            progress=True,
        )
        out["psis_num_data"] = int(subset.shape[0])
        khat = diag.khat[torch.isfinite(diag.khat)]
        out["psis_num_samples"] = diag.num_samples
        out["psis_khat_mean"] = float(khat.mean()) if khat.numel() else None
        out["psis_khat_max"] = float(khat.max()) if khat.numel() else None
        out["psis_frac_above_0.7"] = float((diag.khat > 0.7).double().mean())
    return out


def _evaluation_table(out: dict[str, Any], quantised: bool) -> str:
    per_step = out.get("per_step_loss") or []
    rows = [
        ("run", out["run"]),
        ("step", out["step"]),
        ("split", f"{out['split']} ({out['num_data']} data)"),
        ("parameters", "EMA" if out["ema"] else "raw"),
        (
            "ELBO",
            f"{out['elbo']:.4f}"
            + (f" ± {out['elbo_se']:.4f}" if out.get("elbo_se") is not None else "")
            + " nats/datum",
        ),
    ]
    if quantised and out.get("bits_per_dim") is not None:
        rows.append(("bits/dim", f"{out['bits_per_dim']:.4f}"))
    if out.get("reconstruction") is not None:
        given = "z0" if out.get("estimator") == "continuous" else "x1"
        rows.append((f"reconstruction log p(x0|{given})", f"{out['reconstruction']:.4f} nats"))
    if per_step:
        rows.append(("sum of L_t, t = 2..T", f"{sum(per_step[1:]):.4f} nats"))
        worst = max(range(len(per_step)), key=lambda i: per_step[i])
        rows.append(("largest per-step loss", f"{per_step[worst]:.4f} nats at t = {worst + 1}"))
        # where the bound is paid: the small-noise end against the second half of the chain
        T, bound = len(per_step), -out["elbo"]
        if T > 10 and bound > 0:
            rows.append(("-ELBO share at t <= 10", f"{100 * sum(per_step[:10]) / bound:.1f} %"))
        if T > 1:
            rows.append((f"-ELBO at t > {T // 2}", f"{sum(per_step[T // 2 :]):.4f} nats"))
    if out.get("prior") is not None:
        rows.append(("prior KL L_T", f"{out['prior']:.4g} nats"))
    if out.get("diffusion") is not None:
        rows.append(("diffusion loss (T = ∞)", f"{out['diffusion']:.4f} nats"))
    at = f" (at T = {out['discretized_at']})" if out.get("discretized_at") else ""
    if "iwae" in out:
        rows.append(
            (
                f"IWAE-{out['iwae_k']}{at}",
                f"{out['iwae']:.4f} ± {out['iwae_se']:.4f} nats/datum",
            )
        )
        if out.get("iwae_bits_per_dim") is not None:
            rows.append((f"IWAE-{out['iwae_k']} bits/dim", f"{out['iwae_bits_per_dim']:.4f}"))
    if out.get("psis_khat_mean") is not None:
        rows.append(
            (
                f"PSIS k-hat{at} (first {out['psis_num_data']} data, "
                f"{out['psis_num_samples']} draws)",
                f"mean {out['psis_khat_mean']:.3f}, max {out['psis_khat_max']:.3f}, "
                f"{100 * out['psis_frac_above_0.7']:.0f}% of data above 0.7",
            )
        )
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


# --- sample -------------------------------------------------------------------------------------


def sample(args: argparse.Namespace) -> int:
    """``pyrodiff sample RUN``: draws from p_θ(x_0), saved as .npy and drawn as a PNG."""
    from .. import sampling

    kind = parse_enum(SamplerKind, args.sampler, "sampler")
    if args.num < 1:
        raise ConfigError(f"--num must be >= 1, got {args.num}")
    if not math.isfinite(args.eta) or args.eta < 0:
        raise ConfigError(f"--eta must be a finite number >= 0, got {args.eta}")
    loaded = load_run(args.run, device=args.device, use_ema=not args.no_ema)
    model, _ = loaded.chain()
    T = model.num_steps
    steps = args.sampler_steps if args.sampler_steps is not None else max(1, T // 10)
    if kind is not SamplerKind.ANCESTRAL and not 1 <= steps <= T:
        raise ConfigError(f"--sampler-steps must be an integer in 1..T = {T}, got {steps}")
    gen = torch.Generator(device=loaded.device).manual_seed(args.seed)
    if kind is SamplerKind.ANCESTRAL:
        x = sampling.ancestral_sample(model, args.num, generator=gen)
        tag = "ancestral"
    elif kind is SamplerKind.STRIDED:
        x = sampling.strided_sample(model, args.num, steps, generator=gen)
        tag = f"strided{steps}"
    else:
        x = sampling.ddim_sample(model, args.num, steps, eta=args.eta, generator=gen)
        tag = f"ddim{steps}-eta{args.eta:g}"
    dataset = loaded.built.dataset
    x = x.detach().cpu()
    array = dataset.to_levels(x).numpy().astype(np.int64) if dataset.num_levels else x.numpy()
    npy = Path(args.out) if args.out else loaded.path / f"samples-{tag}.npy"
    if npy.suffix != ".npy":
        raise ConfigError(f"--out must end in .npy, got {npy}")
    npy.parent.mkdir(parents=True, exist_ok=True)
    tmp = npy.with_name(f".{npy.name}.tmp.npy")
    np.save(tmp, array)
    tmp.replace(npy)
    png = figures.samples_figure(x, dataset, figures_dir(loaded.path) / f"samples-{tag}.png")
    _say(
        f"{args.num} samples ({kind.value}{'' if kind is SamplerKind.ANCESTRAL else f', {steps} sampler steps'}) "
        f"from step {loaded.step}{' (EMA)' if loaded.used_ema else ''}"
    )
    _say(f"wrote {npy}")
    _say(f"wrote {png}")
    return 0


# --- compare and plot ---------------------------------------------------------------------------


def compare(args: argparse.Namespace) -> int:
    """``pyrodiff compare RUN RUN...``: one figure and one table for several runs."""
    runs = [check_run_dir(r, need_config=False) for r in args.runs]
    if len(set(map(lambda p: p.resolve(), runs))) != len(runs):
        raise ConfigError("the same run folder is given twice")
    histories = {_label(r, runs): read_history(r) for r in runs}
    out = Path(args.out)
    if out.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise ConfigError(f"--out must end in .png, .pdf or .svg, got {out}")
    figures.comparison_figure(histories, out)
    _say(_comparison_table(histories))
    _say(f"wrote {out}")
    return 0


def _label(run: Path, runs: list[Path]) -> str:
    names = [r.name for r in runs]
    return run.name if names.count(run.name) == 1 else str(run)


def _comparison_table(histories: dict[str, History]) -> str:
    """One row per run: its last validation ELBO and its best one with the update it came at
    (choose on these), then the test figures the run reports (read once, at its end)."""
    header = (
        "run",
        "updates",
        "train ELBO/datum",
        "validation ELBO",
        "best validation (update)",
        "test ELBO",
        "test bits/dim",
    )
    rows = [header]
    for label, hist in histories.items():
        train_rec = hist.train[-1] if hist.train else None
        val = [r for r in hist.evals if r.get("split") == Split.VALIDATION.value]
        best = max(val, key=lambda r: r["elbo"]) if val else None
        final = hist.final_eval_on(Split.TEST.value)
        bpd = final.get("bits_per_dim") if final else None
        rows.append(
            (
                label,
                str(train_rec["step"]) if train_rec else "-",
                f"{train_rec['elbo_per_datum']:.4f}" if train_rec else "-",
                f"{val[-1]['elbo']:.4f}" if val else "-",
                f"{best['elbo']:.4f} ({best['step']})" if best else "-",
                f"{final['elbo']:.4f}" if final else "-",
                f"{bpd:.4f}" if bpd is not None else "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


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
        x = -1.0 + 2.0 * x.double() / (dataset.num_levels - 1)
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
