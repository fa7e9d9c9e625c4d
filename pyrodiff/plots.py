"""Figures: the ELBO over training, per-step terms L_t, samples, and runs side by side.

Every function takes plain data (lists, tensors, dicts of training records, or anything that
iterates over records, such as :class:`pyrodiff.train.History`) and returns a
:class:`matplotlib.figure.Figure` drawn on the Agg canvas; no pyplot state is touched, so the
functions are safe in scripts, tests and notebooks alike. :func:`save_figure` writes one.

Training records are dicts of two kinds (the ``metrics.jsonl`` format):
``{"step", "kind": "train", "loss", "elbo_per_datum", "lr"}`` and
``{"step", "kind": "eval", "split", "elbo", "bits_per_dim" (or None), "reconstruction",
"prior", "per_step_loss": [T floats]}``. All ELBO values are per datum, in nats.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .errors import ConfigError, DataError

__all__ = [
    "Units",
    "plot_elbo",
    "draw_elbo",
    "plot_step_terms",
    "plot_samples",
    "plot_image_grid",
    "plot_scatter",
    "plot_guide_comparison",
    "plot_traces",
    "plot_schedule_images",
    "save_figure",
]

Record = Mapping[str, Any]
Run = Iterable[Record]


class Units(enum.Enum):
    """How a log-likelihood quantity is shown."""

    NATS = "nats"
    """nats per datum (the raw ELBO scale)"""
    BITS_PER_DIM = "bits/dim"
    """nats / (D ln 2): needs the number of dimensions D"""


def _figure(
    ncols: int = 1,
    width: float = 6.0,
    height: float = 4.2,
    width_ratios: Sequence[float] | None = None,
) -> tuple[Figure, list[Axes]]:
    """A constrained-layout figure on the Agg canvas with ``ncols`` axes in a row, ``width``
    inches per column on average."""
    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(1, ncols, width_ratios=width_ratios)
    axes = [fig.add_subplot(grid[0, i]) for i in range(ncols)]
    return fig, axes


def _records(run: Run) -> list[Record]:
    if isinstance(run, Mapping) and "kind" in run:
        return [run]
    try:
        rows = list(run)
    except TypeError:
        raise DataError(
            f"expected training records (a list of dicts or a History), got {type(run).__name__}"
        ) from None
    if not all(isinstance(r, Mapping) for r in rows):
        raise DataError("training records must be dicts with 'step' and 'kind'")
    return rows


def _runs(runs: Run | Mapping[str, Run]) -> dict[str, list[Record]]:
    """{label: records}: one run (unlabelled) or a mapping of labelled runs."""
    if isinstance(runs, Mapping) and "kind" not in runs:
        if not runs:
            raise DataError("no runs to plot")
        return {str(k): _records(v) for k, v in runs.items()}
    return {"": _records(runs)}


def _of_kind(rows: list[Record], kind: str, split: str | None = None) -> list[Record]:
    return [r for r in rows if r.get("kind") == kind and (split is None or r.get("split") == split)]


def _running_mean(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or values.size < window:
        return values
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="valid")


def _convert(values: np.ndarray, units: Units, num_dims: int | None, sign: float = 1.0):
    """Nats per datum → the requested units (a loss in bits/dim keeps its sign)."""
    if not isinstance(units, Units):
        raise ConfigError(f"units must be a Units, got {units!r}")
    if units is Units.NATS:
        return values
    if not num_dims or num_dims < 1:
        raise ConfigError("bits/dim need num_dims, the number of dimensions D of one datum")
    return sign * values / (num_dims * math.log(2.0))


def plot_elbo(
    runs: Run | Mapping[str, Run],
    *,
    entropy: float | None = None,
    title: str | None = None,
) -> Figure:
    """The ELBO per datum (nats) over training: train estimates and held-out evaluations.

    Left: the training ELBO (faint: every record; solid: a running mean over 2 % of them) and
    each eval split (markers; the legend gives each split's last value). ``entropy`` H, when
    the data density is known, adds the line −H: no model's expected log-likelihood can rise
    above it, so the distance to it is the bound's gap plus the model's misfit. The first
    updates' ELBO lies orders of magnitude below where training ends; the main axes span the
    5th percentile of the training values to the top (always holding every evaluation and −H)
    and, when that leaves values out, a short panel below them draws the whole run on its own
    scale, so no record is off every axes. Right, when some split was evaluated at least twice
    and evals carry bits/dim: those over training, per split. A split evaluated once (the
    default: at the end) is a labelled marker on the left instead, its bits/dim in the label;
    a panel holding one dot would say nothing more. Legends sit beside the axes, never on the
    data. ``runs`` is one run's records or ``{label: records}`` for several.
    """
    runs = _runs(runs)
    has_bpd = any(
        len([r for r in _of_kind(rows, "eval", split) if r.get("bits_per_dim") is not None]) > 1
        for rows in runs.values()
        for split, _ in _splits(rows)
    )
    overview = _fit_ylim(*_elbo_values(runs), entropy) is not None
    # the ELBO panel also holds its legend beside the axes: it gets the wider column
    fig, axes = _figure(
        2 if has_bpd else 1,
        width=7.0 if has_bpd else 8.5,
        height=5.4 if overview else 4.2,
        width_ratios=[1.6, 1.0] if has_bpd else None,
    )
    draw_elbo(axes[0], runs, entropy=entropy, title=title)
    if has_bpd:
        for (label, rows), color in zip(runs.items(), _colors(len(runs)), strict=True):
            prefix = f"{label}: " if label else ""
            for split, marker in _splits(rows):
                ev = [r for r in _of_kind(rows, "eval", split) if r.get("bits_per_dim") is not None]
                axes[1].plot(
                    [r["step"] for r in ev],
                    [r["bits_per_dim"] for r in ev],
                    marker=marker,
                    color=color,
                    label=f"{prefix}{split} ({ev[-1]['bits_per_dim']:.4f})" if ev else None,
                )
        axes[1].set_xlabel("training step")
        axes[1].set_ylabel("negative ELBO (bits/dim)")
        axes[1].set_title("held-out bound (lower is better; last value in legend)")
        _legend_beside(axes[1])
        axes[1].grid(alpha=0.3)
    return fig


def draw_elbo(
    ax: Axes,
    runs: Run | Mapping[str, Run],
    *,
    entropy: float | None = None,
    title: str | None = None,
) -> Axes | None:
    """The left panel of :func:`plot_elbo` on ``ax``: each run's training ELBO and evaluations,
    −H when ``entropy`` is given, the legend to the right of the axes, and the axes fitted to
    the run. When the first updates lie far below the rest, ``ax`` gives up its lower quarter
    to a panel showing the whole run on its own scale (``ax``'s window shaded), placed below
    it and sharing its step axis, so it covers no data; that panel is returned (else None).
    """
    runs = _runs(runs)
    colors = _colors(len(runs))
    for (label, rows), color in zip(runs.items(), colors, strict=True):
        _draw_elbo_run(ax, rows, color, f"{label}: " if label else "")
    if entropy is not None:
        ax.axhline(-entropy, color="k", ls=":", lw=1.2, label=f"−H = {-entropy:.3f} (data)")
    ax.set_ylabel("ELBO per datum (nats)")
    ax.set_title(title or "ELBO over training (higher is better)")
    overview = _whole_run_panel(ax, runs, colors, entropy)
    (overview if overview is not None else ax).set_xlabel("training step")
    _legend_beside(ax)
    ax.grid(alpha=0.3)
    return overview


def _legend_beside(ax: Axes) -> None:
    """The legend outside ``ax``, to the right of its top: a legend inside the axes would hide
    whichever curve happens to run there, usually the last updates, the ones worth reading."""
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


def _draw_elbo_run(ax: Axes, rows: list[Record], color, prefix: str, labels: bool = True) -> None:
    """One run's training trace (faint raw, solid running mean) and eval markers on ``ax``."""
    train = [r for r in _of_kind(rows, "train") if r.get("elbo_per_datum") is not None]
    if train:
        steps = np.array([r["step"] for r in train], dtype=float)
        vals = np.array([r["elbo_per_datum"] for r in train], dtype=float)
        window = max(1, len(vals) // 50)
        ax.plot(steps, vals, color=color, alpha=0.2, lw=0.8)
        smooth = _running_mean(vals, window)
        label = f"{prefix}train" if labels else None
        ax.plot(steps[window - 1 :], smooth, color=color, lw=1.6, label=label)
    for split, marker in _splits(rows):
        ev = _of_kind(rows, "eval", split)
        label = None
        if labels and ev:
            last = ev[-1]
            bits = last.get("bits_per_dim")
            value = f"{last['elbo']:.4f} nats"
            if bits is not None:
                value += f" = {bits:.4f} bits/dim"
            when = f"step {last['step']}" if len(ev) > 1 else f"once, at step {last['step']}"
            label = f"{prefix}{split} (eval), {when}:\n{value}"
        ax.plot(
            [r["step"] for r in ev],
            [r["elbo"] for r in ev],
            marker=marker,
            ms=7 if len(ev) == 1 else 5,
            ls="--",
            color=color,
            mec="k" if len(ev) == 1 else color,
            label=label,
            zorder=3,
        )


def _splits(rows: list[Record]) -> list[tuple[str, str]]:
    names = sorted({str(r.get("split")) for r in _of_kind(rows, "eval")}, key=_split_order)
    markers = "os^Dv"
    return [(n, markers[i % len(markers)]) for i, n in enumerate(names)]


def _split_order(name: str) -> tuple[int, str]:
    return ({"train": 0, "validation": 1, "test": 2}.get(name, 3), name)


def _elbo_values(runs: dict[str, list[Record]]) -> tuple[np.ndarray, np.ndarray]:
    """(training ELBO values, evaluated ELBO values) of all runs, the finite ones."""

    def finite(vals):
        arr = np.asarray([v for v in vals if v is not None], dtype=float)
        return arr[np.isfinite(arr)]

    train = finite(r.get("elbo_per_datum") for rows in runs.values() for r in rows)
    evals = finite(r.get("elbo") for rows in runs.values() for r in _of_kind(rows, "eval"))
    return train, evals


def _fit_ylim(
    train: np.ndarray, evals: np.ndarray, entropy: float | None
) -> tuple[float, float] | None:
    """Limits for the main ELBO axes, or None when every value fits without flattening.

    The first updates sit far below the rest (a digits run starts thousands of nats per datum
    below where it ends), and on a linear axis they would flatten the part worth reading. The
    limits span the 5th percentile of the training values to the highest value, padded by 8 %,
    and always hold every held-out evaluation and −H: evaluations are the numbers the figure
    reports, so they are never cut; a training record below the limits is drawn in the panel
    of the whole run.
    """
    if train.size < 10:
        return None
    everything = np.concatenate([train, evals])
    lo = min(np.percentile(train, 5), evals.min() if evals.size else np.inf)
    hi = everything.max()
    if entropy is not None:
        hi = max(hi, -entropy)
    pad = 0.08 * (hi - lo) if hi > lo else 1.0
    if everything.min() >= lo - pad:
        return None
    return float(lo - pad), float(hi + pad)


def _below(ax: Axes, height_ratio: float) -> Axes:
    """A new axes under ``ax`` sharing its x axis, made by splitting ``ax``'s grid cell (so the
    figure's layout spaces the two and neither covers the other). An axes placed by hand,
    without a grid cell, gets the new one as a child below its lower edge instead."""
    spec = ax.get_subplotspec()
    if spec is None:
        below = ax.inset_axes([0.0, -0.55, 1.0, 0.3], sharex=ax)
    else:
        grid = spec.subgridspec(2, 1, height_ratios=[1.0, height_ratio], hspace=0.05)
        ax.set_subplotspec(grid[0])
        below = ax.figure.add_subplot(grid[1], sharex=ax)
    ax.tick_params(labelbottom=False)
    return below


def _whole_run_panel(
    ax: Axes, runs: dict[str, list[Record]], colors: list, entropy: float | None
) -> Axes | None:
    """Zoom ``ax`` onto the converged part and draw the whole run, early transient included,
    in a short panel below it with ``ax``'s window shaded; returns the panel, if any."""
    train, evals = _elbo_values(runs)
    limits = _fit_ylim(train, evals, entropy)
    if limits is None:
        return None
    ax.set_ylim(*limits)
    panel = _below(ax, 0.3)
    for rows, color in zip(runs.values(), colors, strict=True):
        _draw_elbo_run(panel, rows, color, "", labels=False)
    panel.axhspan(*limits, color="0.5", alpha=0.15, lw=0, zorder=0)
    everything = np.concatenate([train, evals])
    span = everything.max() - everything.min()
    panel.set_ylim(everything.min() - 0.05 * span, everything.max() + 0.05 * span)
    panel.set_title("whole run, first updates included (shaded: the axes above)", fontsize=8)
    panel.set_ylabel("nats/datum", fontsize=8)
    panel.tick_params(labelsize=7)
    panel.grid(alpha=0.3)
    return panel


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def _step_curve(obj: Any) -> np.ndarray:
    """L_t for t = 1 … T (nats per datum) from a curve, an (N, T) tensor, a record or a run."""
    if hasattr(obj, "per_step_loss") and not isinstance(obj, Mapping):
        obj = obj.per_step_loss  # ELBOTerms
    if isinstance(obj, Mapping):
        if obj.get("per_step_loss") is None:
            raise DataError("this record has no 'per_step_loss'")
        return np.asarray(obj["per_step_loss"], dtype=float)
    if isinstance(obj, torch.Tensor):
        arr = obj.detach().double().cpu().numpy()
    elif isinstance(obj, np.ndarray):
        arr = obj.astype(float)
    else:
        rows = list(obj)
        if rows and isinstance(rows[0], Mapping):
            evals = [r for r in rows if r.get("per_step_loss") is not None]
            if not evals:
                raise DataError("no eval record with 'per_step_loss' to plot")
            test = [r for r in evals if r.get("split") == "test"]
            return np.asarray((test or evals)[-1]["per_step_loss"], dtype=float)
        arr = np.asarray(rows, dtype=float)
    if arr.ndim == 2:
        arr = arr.mean(0)
    if arr.ndim != 1 or arr.size < 1:
        raise DataError(f"per-step terms must be a (T,) or (N, T) array, got shape {arr.shape}")
    return arr


def plot_step_terms(
    curves: Any,
    *,
    units: Units = Units.NATS,
    num_dims: int | None = None,
    title: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """The per-step losses L_t against t, both axes logarithmic: where the bound is loose.

    Entry t − 1 of a curve is the loss the network's timestep t contributes: −log p(x_0 | x_1)
    at t = 1 (drawn as a marker), KL(q(x_{t−1} | x_t, x_0) ‖ p_θ(x_{t−1} | x_t)) ≥ 0 for
    t ≥ 2 (the line); the prior term is not included. A continuous decoder's −log p(x_0 | x_1)
    can be negative and so cannot sit on a log axis: its value is then given in the legend.
    ``curves`` is one curve (list, tensor (T,) or (N, T), an ELBOTerms, an eval record, or a
    run's records: its last test eval) or ``{label: curve}``.
    """
    if isinstance(curves, Mapping) and "per_step_loss" not in curves:
        labelled = {str(k): _step_curve(v) for k, v in curves.items()}
    else:
        labelled = {"": _step_curve(curves)}
    if ax is None:
        fig, (ax,) = _figure(1)
    else:
        fig = ax.figure
    unit_label = "nats per datum" if units is Units.NATS else "bits/dim"
    for (label, curve), color in zip(labelled.items(), _colors(len(labelled)), strict=True):
        y = _convert(curve, units, num_dims)
        name = f"{label}: " if label else ""
        t = np.arange(2, y.size + 1)
        kl = np.where(y[1:] > 0, y[1:], np.nan)  # a KL is ≥ 0; exact zeros have no log
        if t.size:
            ax.plot(t, kl, color=color, lw=1.6, label=f"{name}KL terms, t ≥ 2")
        l0 = float(y[0])
        if l0 > 0:
            ax.plot(
                [1],
                [l0],
                marker="D",
                ms=7,
                color=color,
                ls="none",
                label=f"{name}−log p(x₀|x₁) = {l0:.3g}",
            )
        else:
            ax.plot(
                [],
                [],
                marker="D",
                color=color,
                ls="none",
                mfc="none",
                label=f"{name}−log p(x₀|x₁) = {l0:.3g} (≤ 0, off the log axis)",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    _integer_log_ticks(ax, max(c.size for c in labelled.values()))
    ax.set_xlabel("timestep t (log scale)")
    ax.set_ylabel(f"loss term L_t ({unit_label}, log scale)")
    ax.set_title(title or "per-step terms of the negative ELBO")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return fig


def _integer_log_ticks(ax: Axes, T: int) -> None:
    """Plain integer labels 1, 2, 5, 10, … on a log-scaled t axis (no 3×10⁰ clutter)."""
    from matplotlib.ticker import FixedLocator, NullFormatter, ScalarFormatter

    ticks = [m * 10**e for e in range(7) for m in (1, 2, 5) if m * 10**e <= T] + [T]
    ax.xaxis.set_major_locator(FixedLocator(sorted(set(ticks))))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())


def plot_image_grid(
    x: torch.Tensor | np.ndarray,
    *,
    ncols: int | None = None,
    value_range: tuple[float, float] = (-1.0, 1.0),
    num_levels: int | None = None,
    title: str | None = None,
) -> Figure:
    """Images (N, C, H, W) or (N, H, W), C ∈ {1, 3}, tiled in a grid; values in ``value_range``.

    ``value_range`` is drawn black to white. With ``num_levels`` K (quantised data, whose
    model scale maps level k to lo + k (hi − lo)/(K − 1), as ``Dataset.to_levels`` inverts),
    the colour bar and the axis label read in levels 0 … K − 1, the scale of the ``.npy`` files
    ``pyrodiff sample`` writes; without it they read in ``value_range``. The scale is named
    once, on the colour bar (on the image's y axis for RGB, which has no bar).
    """
    arr = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4 or arr.shape[1] not in (1, 3) or arr.shape[0] < 1:
        raise DataError(f"images must have shape (N, C, H, W) with C = 1 or 3, got {arr.shape}")
    if num_levels is not None and (
        isinstance(num_levels, bool) or not isinstance(num_levels, int) or num_levels < 2
    ):
        raise ConfigError(f"num_levels must be an integer >= 2 or None, got {num_levels!r}")
    n, c, h, w = arr.shape
    ncols = ncols or int(math.ceil(math.sqrt(n)))
    nrows = int(math.ceil(n / ncols))
    lo, hi = value_range
    arr = np.clip((arr - lo) / (hi - lo), 0, 1)
    pad = 1
    canvas = np.ones((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c))
    for i in range(n):
        r, q = divmod(i, ncols)
        y0, x0 = pad + r * (h + pad), pad + q * (w + pad)
        canvas[y0 : y0 + h, x0 : x0 + w] = arr[i].transpose(1, 2, 0)
    side = min(8.0, max(3.0, 0.45 * max(ncols, nrows)))
    fig, (ax,) = _figure(
        1, width=side + (1.0 if c == 1 else 0.0), height=side * nrows / ncols + 0.5
    )
    if c == 1:
        image = ax.imshow(canvas[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        bar = fig.colorbar(image, ax=ax, shrink=0.8)
        if num_levels is not None:
            top = num_levels - 1
            levels = sorted({round(k * top / 4) for k in range(5)})
            bar.set_ticks([k / top for k in levels], labels=[str(k) for k in levels])
            scale = f"grey level 0 … {top} (black … white)"
        else:
            bar.set_ticks([0.0, 0.5, 1.0], labels=[f"{lo:g}", f"{(lo + hi) / 2:g}", f"{hi:g}"])
            scale = f"grey value in [{lo:g}, {hi:g}] (black … white)"
        bar.set_label(scale)  # the image's axes are pixel positions: no scale there
    else:
        ax.imshow(canvas, interpolation="nearest")
        ax.set_ylabel(f"RGB in [{lo:g}, {hi:g}]")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(f"{n} samples, {h}×{w} pixels each ({ncols} per row)")
    ax.set_title(title or "samples")
    return fig


def _sampler_title(n: int, sampler: Any, steps: int | None) -> str:
    """``n samples``, and how they were drawn when known: ``(ddim, 10 steps)``."""
    how = [str(getattr(sampler, "value", sampler))] if sampler is not None else []
    if steps is not None:
        how.append(f"{steps} step{'s' if steps != 1 else ''}")
    return f"{n} samples" + (f" ({', '.join(how)})" if how else "")


# The density is drawn in light tones only (the lower half of "Blues") and the samples in a dark
# red with a white rim, opaque enough that each stands out at a contrast ratio above 3 (the
# usual threshold for graphics) on every level, in the modes included.
_DENSITY_SHADES = (0.0, 0.5)
_SAMPLE_COLOR = "#67000d"
_SAMPLE_EDGE = "white"


def plot_scatter(
    x: torch.Tensor | np.ndarray,
    *,
    density: Any | None = None,
    limit: float | None = None,
    title: str | None = None,
    max_points: int = 5000,
    sampler: Any | None = None,
    steps: int | None = None,
) -> Figure:
    """2-D points over the filled contours of a true density p(x), when one is given.

    ``density`` is anything with ``log_prob`` on (N, 2) tensors (e.g. a data set's
    ``density``); the square [−limit, limit]² is shown (default: fits the points, at most 6).
    The density is shaded in light tones and the points are dark with a light rim, so they
    stand out on every level; their size and opacity fall with their number, so a thousand
    points still show where they pile up. ``sampler`` (a name or an enum such as the CLI's
    sampler kind) and ``steps`` (reverse steps taken) go into the default title.
    """
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap

    arr = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise DataError(f"scatter plots take points of shape (N, 2), got {arr.shape}")
    arr = arr[:max_points]
    if limit is None:
        finite = arr[np.isfinite(arr).all(1)]
        q = np.percentile(np.abs(finite), 99.5) if finite.size else 3.0
        limit = float(min(6.0, max(2.5, 1.15 * q)))
    fig, (ax,) = _figure(1, width=6.2, height=5.4)
    if density is not None:
        g = np.linspace(-limit, limit, 240)
        gx, gy = np.meshgrid(g, g)
        pts = torch.from_numpy(np.stack([gx.ravel(), gy.ravel()], 1))
        with torch.no_grad():
            p = density.log_prob(pts).exp().double().numpy().reshape(gx.shape)
        light = ListedColormap(colormaps["Blues"](np.linspace(*_DENSITY_SHADES, 256)))
        filled = ax.contourf(gx, gy, p, levels=10, cmap=light)
        fig.colorbar(filled, ax=ax, label="true density p(x) (per unit area)")
    n = len(arr)
    size = float(np.clip(250.0 / math.sqrt(max(n, 1)), 5.0, 30.0))
    ax.scatter(
        arr[:, 0],
        arr[:, 1],
        s=size,
        color=_SAMPLE_COLOR,
        edgecolors=_SAMPLE_EDGE,
        linewidths=0.4,
        alpha=float(np.clip(25.0 / math.sqrt(max(n, 1)), 0.75, 1.0)),
        zorder=3,
    )
    ax.set_xlim(-limit, limit)
    ax.set_ylim(-limit, limit)
    ax.set_aspect("equal")
    ax.set_xlabel("x₁ (standardised units)")
    ax.set_ylabel("x₂ (standardised units)")
    default = _sampler_title(n, sampler, steps)
    ax.set_title(title or default + ("\nover the true density" if density is not None else ""))
    return fig


def plot_samples(
    x: torch.Tensor | np.ndarray,
    *,
    density: Any | None = None,
    value_range: tuple[float, float] = (-1.0, 1.0),
    num_levels: int | None = None,
    title: str | None = None,
    sampler: Any | None = None,
    steps: int | None = None,
) -> Figure:
    """A scatter for (N, 2) points (over ``density`` if given), an image grid for images
    (``value_range`` and ``num_levels`` as in :func:`plot_image_grid`). Without a ``title``,
    it says how many samples, and ``sampler`` and ``steps`` when given."""
    shape = tuple(x.shape)
    if len(shape) == 2 and shape[1] == 2:
        return plot_scatter(x, density=density, title=title, sampler=sampler, steps=steps)
    if len(shape) in (3, 4):
        title = title or _sampler_title(shape[0], sampler, steps)
        return plot_image_grid(x, value_range=value_range, num_levels=num_levels, title=title)
    raise DataError(f"cannot draw samples of shape {shape}: expected (N, 2) or (N, C, H, W)")


def plot_schedule_images(
    log_snr: Mapping[float, torch.Tensor | np.ndarray],
    *,
    centred: bool = True,
    title: str | None = None,
) -> Figure:
    """A noise process per pixel as images: λ(t) at each time t of ``log_snr`` ({t: λ(t)}, each
    shaped (H, W) or (1, H, W), e.g. a :class:`~pyrodiff.schedules.MultivariateLogSNR` averaged
    over the latents of some images), one panel per t on one colour scale, the scale beside.

    ``centred`` (the default) shows each pixel's λ_j(t) minus the mean over pixels at that t
    (the mean is in the panel's title), on a scale symmetric about 0: which pixels get more
    noise than the others, which a scale spanning all t would hide."""
    if not isinstance(log_snr, Mapping) or not log_snr:
        raise DataError("plot_schedule_images takes {t: λ(t) per pixel}, at least one time")
    images = {}
    for t, lam in log_snr.items():
        arr = np.asarray(lam.detach().cpu() if isinstance(lam, torch.Tensor) else lam, float)
        if arr.ndim == 3 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim != 2:
            raise DataError(f"λ({t}) has shape {arr.shape}: expected (H, W) or (1, H, W)")
        images[float(t)] = arr
    means = {t: float(a.mean()) for t, a in images.items()}
    if centred:
        images = {t: a - means[t] for t, a in images.items()}
        top = max(float(np.abs(a).max()) for a in images.values()) or 1.0
        lo, hi, cmap, label = -top, top, "RdBu", "λ − its mean over pixels"
    else:
        lo = min(a.min() for a in images.values())
        hi = max(a.max() for a in images.values())
        cmap, label = "viridis", "log-SNR λ"
    fig, axes = _figure(len(images), width=2.2, height=2.6)
    for ax, (t, arr) in zip(axes, sorted(images.items()), strict=True):
        shown = ax.imshow(arr, vmin=lo, vmax=hi, cmap=cmap)
        ax.set_title(f"t = {t:g}" + (f"\nmean λ {means[t]:.2f}" if centred else ""))
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(shown, ax=axes, label=label, shrink=0.8)
    if title:
        fig.suptitle(title)
    return fig


def plot_guide_comparison(
    runs: Mapping[str, Run],
    *,
    entropy: float | None = None,
    units: Units = Units.NATS,
    num_dims: int | None = None,
    split: str = "test",
    title: str | None = None,
) -> Figure:
    """Several runs side by side (e.g. the fixed and a learned guide on the same model).

    Left: each run's held-out ELBO per datum (nats) over training, with −H when the data
    entropy is known. Right: each run's per-step terms L_t at its last evaluation on
    ``split`` (see :func:`plot_step_terms`).
    """
    if not isinstance(runs, Mapping) or not runs:
        raise DataError("plot_guide_comparison takes {label: records}, at least one run")
    labelled = _runs(runs)
    fig, (left, right) = _figure(2)
    last = {}
    for (label, rows), color in zip(labelled.items(), _colors(len(labelled)), strict=True):
        ev = _of_kind(rows, "eval", split) or _of_kind(rows, "eval")
        if not ev:
            raise DataError(f"run {label!r} has no eval records to compare")
        steps = [r["step"] for r in ev]
        elbo = [r["elbo"] for r in ev]
        left.plot(steps, elbo, marker="o", color=color, label=f"{label} ({elbo[-1]:.3f})")
        if ev[-1].get("per_step_loss") is not None:
            last[label] = ev[-1]
    if entropy is not None:
        left.axhline(-entropy, color="k", ls=":", lw=1.2, label=f"−H = {-entropy:.3f} (data)")
    left.set_xlabel("training step")
    left.set_ylabel(f"{split} ELBO per datum (nats)")
    left.set_title(f"{split} ELBO (higher is better; final value in legend)")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    if last:
        plot_step_terms(
            last, units=units, num_dims=num_dims, ax=right, title="per-step terms, last eval"
        )
    else:
        right.set_axis_off()
    if title:
        fig.suptitle(title)
    return fig


_LINE_STYLES = ("-", "--", ":", "-.")
_MARKERS = "osD^v"


def plot_traces(
    traces: Mapping[str, Sequence[float]],
    *,
    xlabel: str,
    ylabel: str,
    title: str | None = None,
    log_y: bool = False,
) -> Figure:
    """Labelled training traces (one value per update) on one axes, e.g. one model under
    several guides, each as a running mean over 1/30 of its length.

    Traces may coincide (a learned schedule starts as the fixed chain it was built from), so
    each has its own colour, line style and marker, the markers sit at staggered updates, and
    each trace is drawn thinner (smaller markers) than the one before it and above it: where
    two coincide the earlier shows as a wide band around the later one instead of being hidden.
    """
    if not isinstance(traces, Mapping) or not traces:
        raise DataError("plot_traces takes {label: values}, at least one trace")
    fig, (ax,) = _figure(1, width=6.4, height=4.2)
    n = len(traces)
    for i, ((label, values), color) in enumerate(zip(traces.items(), _colors(n), strict=True)):
        vals = np.asarray(list(values), dtype=float)
        if vals.ndim != 1 or vals.size < 1:
            raise DataError(f"trace {label!r} must be a non-empty sequence of numbers")
        window = max(1, vals.size // 30)
        smooth = _running_mean(vals, window)
        steps = np.arange(window, vals.size + 1)
        every = max(1, smooth.size // 8)
        ax.plot(
            steps,
            smooth,
            color=color,
            ls=_LINE_STYLES[i % len(_LINE_STYLES)],
            lw=max(1.0, 3.2 - 0.9 * i),
            marker=_MARKERS[i % len(_MARKERS)],
            ms=max(4.0, 8.0 - 1.5 * i),
            markevery=(i * every // n, every),
            zorder=2 + i,
            label=str(label),
        )
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title or "training traces")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = 150) -> Path:
    """Write ``fig`` (format from the suffix, e.g. .png or .pdf), creating parent folders."""
    path = Path(path)
    if not path.suffix:
        raise ConfigError(f"{path}: give the figure file a suffix such as .png or .pdf")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path
