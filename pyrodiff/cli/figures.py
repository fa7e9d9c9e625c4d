"""Which figures the command line writes, and where; :mod:`pyrodiff.plots` draws them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def samples_figure(
    x: torch.Tensor,
    dataset,
    path: Path,
    *,
    sampler: Any | None = None,
    steps: int | None = None,
) -> Path:
    """A digit grid for images, a scatter over the true density for 2-D points. A quantised
    data set's grid reads in its integer levels, the scale of the ``.npy`` beside it. The title
    gives the number of samples and, when given, the ``sampler`` (a name or an enum member,
    shown by its value) and the number of reverse ``steps`` it took."""
    fig = plots.plot_samples(
        x,
        density=getattr(dataset, "density", None),
        num_levels=getattr(dataset, "num_levels", None),
        sampler=sampler,
        steps=steps,
    )
    return plots.save_figure(fig, path)


def comparison_figure(
    histories: dict[str, History], path: Path, *, entropy: float | None = None
) -> Path:
    """Left: each run's ELBO per datum over training (:func:`pyrodiff.plots.draw_elbo`: the
    training estimate as a running mean, its held-out evaluations as labelled markers, −H when
    the data's ``entropy`` is known, the first updates in a panel below); right: each run's
    per-step terms L_t at its last held-out evaluation, on log axes
    (:func:`pyrodiff.plots.plot_step_terms`)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 5.6), layout="constrained")
    # the left panel also holds its legend beside the axes
    left, right = fig.subplots(1, 2, width_ratios=[1.35, 1.0])
    plots.draw_elbo(left, {label: list(hist) for label, hist in histories.items()}, entropy=entropy)
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
