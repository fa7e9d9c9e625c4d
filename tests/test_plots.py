"""Plots: they draw the data they are given, label every axis with units, and write files."""

import itertools
import math

import numpy as np
import pytest
import torch

from pyrodiff import ConfigError, DataError, ForwardGuide, gaussian_oracle, linear_schedule
from pyrodiff.data import Toy2D, load_digits, toy_density
from pyrodiff.infer import elbo_terms
from pyrodiff.plots import (
    Units,
    draw_elbo,
    plot_elbo,
    plot_guide_comparison,
    plot_image_grid,
    plot_samples,
    plot_scatter,
    plot_step_terms,
    plot_traces,
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
    test_line = next(ln for ln in left.lines if ln.get_label().startswith("test (eval)"))
    assert np.allclose(test_line.get_ydata(), [-3.0 / 20, -3.0 / 40, -3.0 / 60])
    assert any(list(ln.get_ydata()) == [-1.25, -1.25] for ln in left.lines)
    path = save_figure(fig, tmp_path / "figs" / "elbo.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_elbo_plot_without_bits_has_one_panel_and_accepts_several_runs():
    fig = plot_elbo({"a": records(bits=False), "b": records(0.2, bits=False)})
    (ax,) = fig.axes
    labels = [ln.get_label() for ln in ax.lines]
    assert {"a: train", "b: train"} <= set(labels)
    for run in ("a", "b"):
        assert any(label.startswith(f"{run}: test (eval)") for label in labels)


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


def transient_records(steps=1500, eval_steps=(1500,)):
    """A digits-like run: the training ELBO starts thousands of nats below where it ends
    (-80 - 5000/s at update s) and the test split is evaluated at ``eval_steps`` only."""
    rows = []
    for s in range(1, steps + 1):
        elbo = -80.0 - 5000.0 / s
        rows.append({"step": s, "kind": "train", "loss": -elbo, "elbo_per_datum": elbo, "lr": 1e-3})
        if s in eval_steps:
            rows.append(
                {
                    "step": s,
                    "kind": "eval",
                    "split": "test",
                    "elbo": elbo - 0.5,
                    "bits_per_dim": -(elbo - 0.5) / (64 * math.log(2)),
                    "per_step_loss": None,
                }
            )
    return rows


def contains(limits, values):
    lo, hi = sorted(limits)
    return lo <= np.min(values) and np.max(values) <= hi


def test_elbo_plot_zooms_on_the_run_and_keeps_the_early_transient_in_an_inset():
    rows = transient_records()
    train = np.array([r["elbo_per_datum"] for r in rows if r["kind"] == "train"])
    evals = [r["elbo"] for r in rows if r["kind"] == "eval"]
    fig = plot_elbo(rows)
    (ax,) = fig.axes  # one eval only: no bits/dim panel
    (inset,) = ax.child_axes
    # every record is on some axes: the inset holds the whole run, first update included
    assert contains(inset.get_ylim(), train) and contains(inset.get_ylim(), evals)
    # the main axes hold the eval and the last 90 % of the updates, at a readable scale
    assert contains(ax.get_ylim(), evals) and contains(ax.get_ylim(), train[150:])
    main_span = abs(np.subtract(*ax.get_ylim()))
    assert main_span < 0.05 * (train.max() - train.min())
    # the inset shades exactly the main axes' window
    (shade,) = inset.patches
    ys = shade.get_path().transformed(shade.get_patch_transform()).vertices[:, 1]
    assert np.allclose(sorted({ys.min(), ys.max()}), sorted(ax.get_ylim()))


def test_elbo_plot_without_a_transient_has_no_inset():
    rows = [
        {"step": s, "kind": "train", "loss": 1.0, "elbo_per_datum": -1.0 - 0.01 * (s % 3), "lr": 1}
        for s in range(1, 101)
    ]
    (ax,) = plot_elbo(rows).axes
    assert not ax.child_axes
    assert contains(ax.get_ylim(), [-1.0, -1.02])


def test_elbo_plot_labels_a_single_final_evaluation():
    rows = transient_records()
    (final,) = [r for r in rows if r["kind"] == "eval"]
    fig = plot_elbo(rows)
    assert len(fig.axes) == 1  # a held-out panel with one dot would say nothing
    (line,) = [ln for ln in fig.axes[0].lines if ln.get_label().startswith("test (eval)")]
    assert list(line.get_xdata()) == [1500] and list(line.get_ydata()) == [final["elbo"]]
    assert line.get_marker() not in ("None", "", None)
    label = line.get_label()
    assert f"{final['elbo']:.4f}" in label and f"{final['bits_per_dim']:.4f} bits/dim" in label
    assert "once, at step 1500" in label
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert label in legend
    # evaluated twice: the bits/dim panel returns, the last value in its legend
    twice = transient_records(eval_steps=(750, 1500))
    left, right = plot_elbo(twice).axes
    last = twice[-1]["bits_per_dim"]
    assert any(f"{last:.4f}" in t.get_text() for t in right.get_legend().get_texts())


def test_digit_grid_reads_in_the_levels_of_the_saved_array():
    digits = load_digits(torch.float64)
    x = digits.train[:6]
    fig = plot_samples(x, num_levels=digits.num_levels)
    ax, bar = fig.axes
    top = digits.num_levels - 1
    assert f"0 … {top}" in ax.get_ylabel() and f"0 … {top}" in bar.get_ylabel()
    # the shade of each pixel is its level / (K - 1): the colour bar's tick k sits at k / (K - 1)
    shown = ax.get_images()[0].get_array()
    first = np.asarray(shown[1:9, 1:9])  # the first image, inside its 1-pixel border
    assert np.allclose(first * top, digits.to_levels(x[:1])[0, 0].numpy())
    ticks = [
        (t, float(lab.get_text()))
        for t, lab in zip(bar.get_yticks(), bar.get_yticklabels(), strict=True)
    ]
    assert ticks[0][1] == 0 and ticks[-1][1] == top
    assert all(math.isclose(pos, level / top) for pos, level in ticks)
    # without levels, the label gives the model scale it shows
    assert "[-1, 1]" in plot_samples(x).axes[0].get_ylabel()
    with pytest.raises(ConfigError, match="num_levels"):
        plot_image_grid(x, num_levels=1)


def test_traces_that_coincide_stay_distinguishable():
    n = 300
    same = list(np.arange(n, dtype=float))
    fig = plot_traces({"fixed": same, "schedule": same, "learned": same}, xlabel="u", ylabel="v")
    (ax,) = fig.axes
    lines = sorted(ax.lines, key=lambda ln: ln.get_zorder())
    assert [ln.get_label() for ln in lines] == ["fixed", "schedule", "learned"]
    assert all(ln.get_visible() for ln in lines)
    styles = {(ln.get_color(), ln.get_linestyle(), ln.get_marker()) for ln in lines}
    assert len({s[0] for s in styles}) == len({s[1] for s in styles}) == len(lines)
    assert len({s[2] for s in styles}) == len(lines)
    # each is drawn above and thinner than the one before it, so the earlier shows around it
    widths = [ln.get_linewidth() for ln in lines]
    assert all(a > b for a, b in itertools.pairwise(widths))
    sizes = [ln.get_markersize() for ln in lines]
    assert all(a > b for a, b in itertools.pairwise(sizes))
    assert len({ln.get_markevery()[0] for ln in lines}) == len(lines)  # staggered markers
    # a running mean over w = n // 30 updates of 0, 1, 2, ... ends at update s with s - (w + 1)/2
    w = n // 30
    assert np.allclose(lines[0].get_ydata(), lines[0].get_xdata() - (w + 1) / 2)
    assert ax.get_legend() is not None and labelled(ax)
    with pytest.raises(DataError):
        plot_traces({}, xlabel="u", ylabel="v")


def test_draw_elbo_on_given_axes_fits_every_run():
    from matplotlib.figure import Figure

    ax = Figure().add_subplot()
    slow, fast = transient_records(), records()
    inset = draw_elbo(ax, {"slow": slow, "fast": fast})
    every = [r.get("elbo_per_datum", r.get("elbo")) for r in slow + fast]
    assert inset is not None and contains(inset.get_ylim(), every)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert {"slow: train", "fast: train"} <= set(labels)
