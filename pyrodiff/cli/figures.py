"""Which figures the command line writes, and where; :mod:`pyrodiff.plots` draws them."""

from __future__ import annotations

from pathlib import Path

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
        title = f"per-step terms at step {final['step']}: −ELBO = {-final['elbo']:.2f} nats"
        fig = plots.plot_step_terms(final, title=title)
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
    """Left: each run's ELBO per datum over training (:func:`pyrodiff.plots.draw_elbo`: the
    training estimate as a running mean, its held-out evaluations as labelled markers, the
    first updates in an inset); right: each run's per-step terms L_t at its last held-out
    evaluation, on log axes (:func:`pyrodiff.plots.plot_step_terms`)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 4.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    plots.draw_elbo(left, {label: list(hist) for label, hist in histories.items()})
    finals = {
        label: hist.evals[-1]
        for label, hist in histories.items()
        if hist.evals and hist.evals[-1].get("per_step_loss")
    }
    if finals:
        plots.plot_step_terms(finals, ax=right, title="per-step terms at the last evaluation")
    else:
        right.set_axis_off()
    return plots.save_figure(fig, path)
