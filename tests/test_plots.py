"""Plots: they draw the data they are given, label every axis with units, and write files."""

import math

import numpy as np
import pytest
import torch

from pyrodiff import ConfigError, DataError, ForwardGuide, gaussian_oracle, linear_schedule
from pyrodiff.data import Toy2D, toy_density
from pyrodiff.infer import elbo_terms
from pyrodiff.plots import (
    Units,
    plot_elbo,
    plot_guide_comparison,
    plot_image_grid,
    plot_samples,
    plot_scatter,
    plot_step_terms,
    save_figure,
)
from pyrodiff.train import History

T = 20


def records(shift=0.0, bits=True, steps=60):
    """A run's metrics in the metrics.jsonl format: train records every step, evals every 20."""
    rows = []
    for s in range(1, steps + 1):
        rows.append(
            {"step": s, "kind": "train", "loss": 5.0 / s, "elbo_per_datum": -5.0 / s, "lr": 1e-3}
        )
        if s % 20 == 0:
            for split in ("train", "test"):
                elbo = -3.0 / s - shift
                rows.append(
                    {
                        "step": s,
                        "kind": "eval",
                        "split": split,
                        "elbo": elbo,
                        "bits_per_dim": -elbo / (64 * math.log(2)) if bits else None,
                        "reconstruction": -0.5,
                        "prior": 1e-4,
                        "per_step_loss": [0.5 + shift] + [1.0 / t for t in range(2, T + 1)],
                    }
                )
    return rows


def labelled(ax):
    return bool(ax.get_xlabel()) and bool(ax.get_ylabel())


def test_elbo_plot_draws_train_and_eval_in_nats_and_bits(tmp_path):
    rows = records()
    fig = plot_elbo(History(records=tuple(rows)), entropy=1.25)
    left, right = fig.axes
    assert all(labelled(ax) for ax in fig.axes)
    assert "nats" in left.get_ylabel() and "bits/dim" in right.get_ylabel()
    test_line = next(ln for ln in left.lines if ln.get_label() == "test (eval)")
    assert np.allclose(test_line.get_ydata(), [-3.0 / 20, -3.0 / 40, -3.0 / 60])
    assert any(list(ln.get_ydata()) == [-1.25, -1.25] for ln in left.lines)
    path = save_figure(fig, tmp_path / "figs" / "elbo.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_elbo_plot_without_bits_has_one_panel_and_accepts_several_runs():
    fig = plot_elbo({"a": records(bits=False), "b": records(0.2, bits=False)})
    (ax,) = fig.axes
    labels = {ln.get_label() for ln in ax.lines}
    assert {"a: train", "b: train", "a: test (eval)", "b: test (eval)"} <= labels


def test_step_terms_plot_the_curve_on_log_axes_and_convert_to_bits():
    curve = torch.tensor([0.3] + [1.0 / t for t in range(2, T + 1)])
    fig = plot_step_terms(curve)
    (ax,) = fig.axes
    assert labelled(ax) and "nats" in ax.get_ylabel()
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    kl = next(ln for ln in ax.lines if "KL" in ln.get_label())
    assert np.allclose(kl.get_xdata(), np.arange(2, T + 1))
    assert np.allclose(kl.get_ydata(), curve[1:].numpy())
    D = 64
    bits = plot_step_terms(curve, units=Units.BITS_PER_DIM, num_dims=D).axes[0]
    kl_bits = next(ln for ln in bits.lines if "KL" in ln.get_label())
    assert np.allclose(kl_bits.get_ydata(), curve[1:].numpy() / (D * math.log(2)))
    assert "bits/dim" in bits.get_ylabel()
    with pytest.raises(ConfigError, match="num_dims"):
        plot_step_terms(curve, units=Units.BITS_PER_DIM)


def test_step_terms_take_elbo_terms_records_and_labelled_curves():
    sched = linear_schedule(T)
    model = gaussian_oracle(sched, torch.zeros(2), 0.5)
    terms = elbo_terms(model, ForwardGuide(sched), torch.randn(16, 2) * 0.5)
    ax = plot_step_terms(terms).axes[0]
    kl = next(ln for ln in ax.lines if "KL" in ln.get_label())
    assert np.allclose(kl.get_ydata(), terms.per_step_loss.mean(0)[1:].numpy(), equal_nan=True)
    # a negative decoder term cannot sit on a log axis: it is reported in the legend
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("log p(x₀|x₁)" in t for t in legend)
    fig = plot_step_terms({"fixed": records(), "learned": records(0.1)})
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any(t.startswith("fixed") for t in texts) and any(t.startswith("learned") for t in texts)
    with pytest.raises(DataError):
        plot_step_terms(torch.zeros(2, 3, 4))


def test_scatter_over_the_true_density(tmp_path):
    density = toy_density(Toy2D.TWO_MOONS)
    x = density.sample(500, torch.Generator().manual_seed(0))
    fig = plot_samples(x, density=density)
    ax = fig.axes[0]
    assert labelled(ax) and "standardised" in ax.get_xlabel()
    assert len(fig.axes) == 2 and "p(x)" in fig.axes[1].get_ylabel()  # the colour bar
    assert save_figure(fig, tmp_path / "moons.png").stat().st_size > 0
    assert labelled(plot_scatter(x).axes[0]) and len(plot_scatter(x).axes) == 1
    with pytest.raises(DataError, match=r"\(N, 2\)"):
        plot_scatter(torch.zeros(4, 3))


def test_image_grid_of_images(tmp_path):
    x = torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    fig = plot_samples(x)
    ax = fig.axes[0]
    assert labelled(ax) and "10 samples" in ax.get_xlabel()
    image = ax.get_images()[0].get_array()
    assert image.shape == (3 * 9 + 1, 4 * 9 + 1)  # 10 images, 4 per row, 1-pixel borders
    assert save_figure(fig, tmp_path / "grid.pdf").read_bytes()[:4] == b"%PDF"
    with pytest.raises(DataError):
        plot_image_grid(torch.zeros(3, 2, 4, 4))
    with pytest.raises(DataError):
        plot_samples(torch.zeros(3, 5))


def test_guide_comparison_side_by_side():
    fig = plot_guide_comparison(
        {"fixed guide": records(), "learned guide": records(0.3)}, entropy=0.1
    )
    left, right = fig.axes
    assert all(labelled(ax) for ax in fig.axes)
    assert "nats" in left.get_ylabel() and right.get_yscale() == "log"
    names = [t.get_text() for t in left.get_legend().get_texts()]
    assert any(n.startswith("fixed guide") for n in names)
    assert any(n.startswith("learned guide") for n in names)
    with pytest.raises(DataError, match="no eval"):
        plot_guide_comparison({"empty": [r for r in records() if r["kind"] == "train"]})


def test_save_figure_needs_a_suffix(tmp_path):
    with pytest.raises(ConfigError, match="suffix"):
        save_figure(plot_step_terms([0.1, 0.2]), tmp_path / "noext")
