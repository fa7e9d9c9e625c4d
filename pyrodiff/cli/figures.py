"""Which figures the command line writes, and where; :mod:`pyrodiff.plots` draws them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .. import plots
from ..train.history import History

__all__ = ["training_figures", "samples_figure", "comparison_figure"]

ELBO_FIGURE = "elbo.png"
STEP_TERMS_FIGURE = "step_terms.png"


def _entropy(dataset) -> float | None:
    density = getattr(dataset, "density", None) if dataset is not None else None
    return float(density.entropy) if density is not None else None


def training_figures(history: History, out: Path, dataset=None) -> list[Path]:
    """``elbo.png`` (the ELBO over training, train and test) and, once the run has a held-out
    evaluation, ``step_terms.png`` (its per-step terms L_t against t)."""
    records = list(history)
    written = [
        plots.save_figure(plots.plot_elbo(records, entropy=_entropy(dataset)), out / ELBO_FIGURE)
    ]
    final = history.final_eval
    if final is not None and final.get("per_step_loss"):
        fig = plots.plot_step_terms(final, title=f"per-step terms at step {final['step']}")
        written.append(plots.save_figure(fig, out / STEP_TERMS_FIGURE))
    return written


def samples_figure(x: torch.Tensor, dataset, path: Path) -> Path:
    """A digit grid for images, a scatter over the true density for 2-D points. A quantised
    data set's grid reads in its integer levels, the scale of the ``.npy`` beside it."""
    fig = plots.plot_samples(
        x,
        density=getattr(dataset, "density", None),
        num_levels=getattr(dataset, "num_levels", None),
        title=f"{x.shape[0]} samples",
    )
    return plots.save_figure(fig, path)


def comparison_figure(histories: dict[str, History], path: Path) -> Path:
    """Left: each run's ELBO per datum over training (the training estimate as a running mean,
    its held-out evaluations as markers); right: each run's per-step terms L_t at its last
    held-out evaluation, on log axes (:func:`pyrodiff.plots.plot_step_terms`)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 4.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    colors = [f"C{i % 10}" for i in range(len(histories))]
    finals = {}
    for (label, hist), color in zip(histories.items(), colors, strict=True):
        train = [r for r in hist.train if r.get("elbo_per_datum") is not None]
        if train:
            steps = np.array([r["step"] for r in train], dtype=float)
            values = np.array([r["elbo_per_datum"] for r in train], dtype=float)
            window = max(1, len(values) // 25)
            smooth = np.convolve(values, np.ones(window) / window, mode="valid")
            left.plot(steps[window - 1 :], smooth, color=color, lw=1.5, label=f"{label}: train")
        evals = hist.evals
        if evals:
            left.plot(
                [r["step"] for r in evals],
                [r["elbo"] for r in evals],
                marker="o",
                ls="--",
                color=color,
                label=f"{label}: test ({evals[-1]['elbo']:.3f})",
            )
            if evals[-1].get("per_step_loss"):
                finals[label] = evals[-1]
    low = [r["elbo"] for h in histories.values() for r in h.evals]
    if low:  # the first updates' very low estimates would flatten every curve
        span = max(low) - min(low)
        left.set_ylim(bottom=min(low) - max(1.0, 2 * span))
    left.set_xlabel("training step")
    left.set_ylabel("ELBO per datum (nats)")
    left.set_title("ELBO over training (higher is better)")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    if finals:
        plots.plot_step_terms(finals, ax=right, title="per-step terms at the last evaluation")
    else:
        right.set_axis_off()
    return plots.save_figure(fig, path)
