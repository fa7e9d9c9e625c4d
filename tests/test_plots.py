"""Plots: they draw the data they are given, label every axis with units, and write files."""

import itertools
import math

import numpy as np
import pytest
import torch
from matplotlib.text import Text

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
    left, right, whole = fig.axes  # the ELBO, bits/dim, and the whole run below the ELBO
    assert all(labelled(ax) for ax in (right, whole)) and left.get_ylabel()
    assert whole.get_shared_x_axes().joined(left, whole)
    assert "nats" in left.get_ylabel() and "bits/dim" in right.get_ylabel()
    test_line = next(ln for ln in left.lines if ln.get_label().startswith("test (eval)"))
    assert np.allclose(test_line.get_ydata(), [-3.0 / 20, -3.0 / 40, -3.0 / 60])
    assert any(list(ln.get_ydata()) == [-1.25, -1.25] for ln in left.lines)
    path = save_figure(fig, tmp_path / "figs" / "elbo.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_elbo_plot_without_bits_has_one_panel_and_accepts_several_runs():
    fig = plot_elbo({"a": records(bits=False), "b": records(0.2, bits=False)})
    ax, whole = fig.axes  # no bits/dim panel; the whole run (first update at -5) below
    assert whole.get_xlabel() == "training step"
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
    ax, bar = fig.axes
    assert "10 samples" in ax.get_xlabel() and "[-1, 1]" in bar.get_ylabel()
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
    ax, inset = fig.axes  # one eval only: no bits/dim panel; the whole run below
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
    assert len(fig.axes) == 2  # the ELBO and the whole run: a bits/dim panel with one dot
    # would say nothing
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
    left, right, _ = plot_elbo(twice).axes
    last = twice[-1]["bits_per_dim"]
    assert any(f"{last:.4f}" in t.get_text() for t in right.get_legend().get_texts())


def test_digit_grid_reads_in_the_levels_of_the_saved_array():
    digits = load_digits(torch.float64)
    x = digits.train[:6]
    fig = plot_samples(x, num_levels=digits.num_levels)
    ax, bar = fig.axes
    top = digits.num_levels - 1
    assert f"0 … {top}" in bar.get_ylabel()
    # the scale is named once: on the colour bar, not on the grid's pixel axes
    texts = [t.get_text() for t in fig.findobj(Text)]
    assert sum("grey level" in t for t in texts) == 1 and not ax.get_ylabel()
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
    assert "[-1, 1]" in plot_samples(x).axes[1].get_ylabel()
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


# --- nothing covers data --------------------------------------------------------------------


def _data_points(ax):
    """Display coordinates of what ``ax`` plots and shows: each line's points and 8 points on
    each of its segments (a box may sit between two markers), and scatter points."""
    found = []
    for line in ax.lines:
        if not line.get_visible():
            continue
        xy = line.get_transform().transform(np.asarray(line.get_xydata(), dtype=float))
        xy = xy[np.isfinite(xy).all(1)]
        if len(xy) > 1 and line.get_linestyle() not in ("None", "", " "):
            t = np.linspace(0.0, 1.0, 9)[:, None, None]
            xy = (xy[:-1][None] * (1 - t) + xy[1:][None] * t).reshape(-1, 2)
        found.append(xy)
    for coll in ax.collections:
        offsets = np.asarray(coll.get_offsets(), dtype=float)
        if coll.get_visible() and offsets.size and hasattr(coll, "get_sizes"):
            found.append(coll.get_offset_transform().transform(offsets))
    pts = np.concatenate(found) if found else np.zeros((0, 2))
    box = ax.get_window_extent()
    inside = (
        (pts[:, 0] > box.x0 + 1)
        & (pts[:, 0] < box.x1 - 1)
        & (pts[:, 1] > box.y0 + 1)
        & (pts[:, 1] < box.y1 - 1)
    )
    return pts[inside]


def _all_axes(fig):
    out = []
    for ax in fig.axes:
        out += [ax, *ax.child_axes]
    return out


def covered(fig):
    """[(axes title, what covers, how many points)]: the shown data points of every axes that
    lie inside a text (titles, labels, tick labels), a legend or another axes."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [
        (f"text {t.get_text()!r}", t.get_window_extent(renderer))
        for t in fig.findobj(Text)
        if t.get_visible() and t.get_text().strip()
    ]
    legends = [(f"legend of {a.get_title()!r}", a.get_legend()) for a in _all_axes(fig)]
    boxes = texts + [(n, leg.get_window_extent(renderer)) for n, leg in legends if leg]
    found = []
    for ax in _all_axes(fig):
        pts = _data_points(ax)
        others = [
            (f"axes {o.get_title()!r}", o.get_window_extent())
            for o in _all_axes(fig)
            if o is not ax
        ]
        for name, box in boxes + others:
            hit = (
                (pts[:, 0] >= box.x0)
                & (pts[:, 0] <= box.x1)
                & (pts[:, 1] >= box.y0)
                & (pts[:, 1] <= box.y1)
            )
            if hit.any():
                found.append((ax.get_title(), name, int(hit.sum())))
    return found


def last_fifth(ax):
    """The shown data points in the last 20 % of ``ax``'s x range."""
    pts = _data_points(ax)
    lo, hi = ax.get_xlim()
    cut = ax.transData.transform([[lo + 0.8 * (hi - lo), 0.0]])[0, 0]
    return pts[pts[:, 0] >= cut]


def evaluated_run(shift=0.0, steps=1500, every=150, noise=4.0):
    """A digits-like run (see transient_records) whose training records scatter by ``noise``
    nats (one batch's estimate each), with validation every ``every`` updates."""
    rng = np.random.default_rng(0)
    rows = transient_records(steps, eval_steps=(steps,))
    for r in rows:
        if r["kind"] == "train":
            r["elbo_per_datum"] += float(rng.normal(0.0, noise)) - shift
    for s in range(every, steps + 1, every):
        elbo = -80.5 - 5000.0 / s - shift
        rows.append(
            {
                "step": s,
                "kind": "eval",
                "split": "validation",
                "elbo": elbo,
                "bits_per_dim": -elbo / (64 * math.log(2)),
                "per_step_loss": None,
            }
        )
    return rows


def test_no_panel_legend_or_title_covers_the_elbo_curves():
    fig = plot_elbo(evaluated_run(), entropy=79.0)
    ax, whole = fig.axes[0], fig.axes[-1]
    assert whole.get_title() and len(last_fifth(ax)) > 100  # the latest updates are drawn
    assert covered(fig) == []
    # the whole-run panel lies below the main axes, apart from them
    assert whole.get_window_extent().y1 < ax.get_window_extent().y0


def test_the_comparison_figure_covers_no_data(tmp_path):
    from pyrodiff.cli.figures import comparison_figure

    def history(shift):
        rows = evaluated_run(shift)
        for r in rows:
            if r["kind"] == "eval":
                r["per_step_loss"] = [0.5 + shift] + [1.0 / t for t in range(2, T + 1)]
        return History(records=tuple(rows))

    path = comparison_figure(
        {"fixed": history(0.0), "learned": history(0.4)}, tmp_path / "c.png", entropy=79.0
    )
    assert path.read_bytes()[:4] == b"\x89PNG"
    # redraw it as comparison_figure does, to look inside
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 5.6), layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, width_ratios=[1.35, 1.0])
    whole = draw_elbo(
        left, {"fixed": list(history(0.0)), "learned": list(history(0.4))}, entropy=79.0
    )
    plot_step_terms({"a": records(), "b": records(0.4)}, ax=right)
    assert whole is not None and len(last_fifth(left)) > 100
    assert covered(fig) == []
    labels = [t.get_text() for t in left.get_legend().get_texts()]
    assert any(t.startswith("−H = -79.000") for t in labels)


def test_the_old_inset_would_be_caught():
    """The check itself: an inset over the right half of the main axes (where the whole-run
    inset used to sit) hides the latest curves, and so does a text on them."""
    fig = plot_elbo(evaluated_run())
    ax = fig.axes[0]
    assert covered(fig) == []
    ax.inset_axes([0.55, 0.3, 0.42, 0.65])
    # a title where the latest curve runs
    y = ax.transAxes.inverted().transform([[0.0, np.median(last_fifth(ax)[:, 1])]])[0, 1]
    ax.text(0.6, y, "whole run (shaded: main axes)", transform=ax.transAxes, va="center")
    found = covered(fig)
    assert any(name.startswith("axes") for _, name, _ in found)
    assert any(name.startswith("text 'whole run") for _, name, _ in found)


def _luminance(rgb):
    c = np.asarray(rgb, dtype=float)[:3]
    lin = np.where(c <= 0.03928, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return float(lin @ [0.2126, 0.7152, 0.0722])


def _contrast(a, b):
    lo, hi = sorted([_luminance(a), _luminance(b)])
    return (hi + 0.05) / (lo + 0.05)


def test_samples_stand_out_on_every_level_of_the_density():
    from enum import Enum

    density = toy_density(Toy2D.TWO_MOONS)
    x = density.sample(1000, torch.Generator().manual_seed(0))

    class Kind(Enum):
        DDIM = "ddim"

    fig = plot_samples(x, density=density, sampler=Kind.DDIM, steps=10)
    ax = fig.axes[0]
    assert ax.get_title().startswith("1000 samples (ddim, 10 steps)")
    (points,) = [c for c in ax.collections if len(c.get_offsets()) == 1000]
    (filled,) = [c for c in ax.collections if hasattr(c, "levels")]
    levels = filled.cmap(filled.norm(np.asarray(filled.levels)))[:, :3]
    face = np.asarray(points.get_facecolor()[0][:3])
    alpha = points.get_alpha()
    # each sample, composited over each shade of the density, has contrast >= 3 with it
    for shade in [*levels, np.ones(3)]:
        shown = alpha * face + (1 - alpha) * shade
        assert _contrast(shown, shade) >= 3.0, shade
    edge = np.asarray(points.get_edgecolor()[0][:3])
    assert _contrast(edge, face) >= 3.0  # overlapping samples stay apart
    assert covered(fig) == []
    # images get the same title
    grid = plot_samples(torch.zeros(4, 1, 8, 8), sampler="ancestral", steps=100)
    assert grid.axes[0].get_title() == "4 samples (ancestral, 100 steps)"


def test_the_sample_figure_names_the_sampler_and_its_steps(tmp_path, monkeypatch):
    from pyrodiff.cli import figures
    from pyrodiff.cli.commands import SamplerKind

    drawn = []
    monkeypatch.setattr(figures.plots, "save_figure", lambda fig, path: drawn.append(fig) or path)
    x = torch.zeros(5, 2)
    figures.samples_figure(x, None, tmp_path / "s.png", sampler=SamplerKind.DDIM, steps=10)
    figures.samples_figure(x, None, tmp_path / "t.png")
    assert [f.axes[0].get_title() for f in drawn] == ["5 samples (ddim, 10 steps)", "5 samples"]
