"""Every figure renders headless and draws what it claims: checked through the artists, not only that it ran."""

import pytest
import torch
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.patches import Rectangle

from pyro_lowrank.diagnostics import energy_fraction
from pyro_lowrank.metrics import selective_prediction_curve
from pyro_lowrank.plots import (
    correlation_heatmap,
    ppc_band,
    reliability_diagram,
    selective_prediction_plot,
    spectrum_plot,
    uncertainty_histogram,
)


def _bars(ax):
    return [p for p in ax.patches if isinstance(p, Rectangle)]


def _saves(fig, tmp_path):
    fig.savefig(tmp_path / "figure.png")
    return (tmp_path / "figure.png").stat().st_size > 1000


def test_reliability_diagram_bars_are_bin_accuracies(tmp_path):
    probs = torch.tensor([[[0.95, 0.05], [0.95, 0.05], [0.65, 0.35], [0.35, 0.65]]])
    y = torch.tensor([0, 1, 0, 1])
    fig = reliability_diagram(probs, y, num_bins=10)
    ax = fig.axes[0]
    heights = {round(b.get_x(), 2): b.get_height() for b in _bars(ax)}
    assert len(heights) == 10
    assert heights[0.9] == pytest.approx(0.5) and heights[0.6] == pytest.approx(1.0) and heights[0.0] == 0.0
    assert "ECE 0.400" in ax.get_title()
    diagonal = ax.lines[0]
    assert list(diagonal.get_xdata()) == [0, 1] and list(diagonal.get_ydata()) == [0, 1]
    assert ax.get_xlabel() == "confidence" and ax.get_ylabel() == "accuracy"
    mass = reliability_diagram({"a": probs, "b": probs}, y, num_bins=2, binning="equal_mass")
    assert len(mass.axes) == 2 and len(_bars(mass.axes[1])) == 2
    assert _saves(fig, tmp_path)


def test_ppc_band_draws_mean_band_and_observations(tmp_path):
    x = torch.tensor([2.0, 0.0, 1.0])
    means = torch.tensor([[1.0, 0.0, 0.5], [1.0, 0.0, 0.5]])
    scales = torch.ones(2, 3)
    y = torch.tensor([1.0, 0.0, 5.0])
    fig = ppc_band(x, means, scales, y, level=0.95, num_draws=2)
    ax = fig.axes[0]
    mean_line = ax.lines[0]
    assert list(mean_line.get_xdata()) == [0.0, 1.0, 2.0]  # sorted by x
    assert list(mean_line.get_ydata()) == [0.0, 0.5, 1.0]
    assert len(ax.lines) == 3  # mean + two function draws
    band = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(band) == 1
    vertices = band[0].get_paths()[0].vertices
    assert vertices[:, 1].max() == pytest.approx(1.0 + 1.959964, abs=1e-4)
    assert "PICP 0.667" in ax.get_title()  # y=5 at x=1 lies outside 0.5 +- 1.96
    assert ax.collections[-1].get_offsets().shape == (3, 2)
    with pytest.raises(ValueError, match="x must have shape"):
        ppc_band(torch.randn(3, 2), means, scales)
    with pytest.raises(ValueError, match="y must have 3 targets to match x, got shape \\(2,\\)"):
        ppc_band(x, means, scales, y[:2])
    assert _saves(fig, tmp_path)


def test_uncertainty_histogram_shares_bins_and_reports_auroc(tmp_path):
    fig = uncertainty_histogram(torch.rand(200) * 0.5, 0.5 + torch.rand(100) * 0.5, num_bins=10)
    ax = fig.axes[0]
    bars = _bars(ax)
    assert len(bars) == 20
    in_left = sorted(b.get_x() for b in bars[:10])
    out_left = sorted(b.get_x() for b in bars[10:])
    assert in_left == pytest.approx(out_left)
    assert "OOD AUROC 1.000" in ax.get_title()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["in-distribution", "out-of-distribution"]
    with pytest.raises(ValueError, match="num_bins must be a positive integer"):
        uncertainty_histogram(torch.rand(5), torch.rand(5), num_bins=0)
    assert _saves(fig, tmp_path)


def test_selective_prediction_plot_one_line_per_method(tmp_path):
    correct = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0] * 4)
    good = torch.tensor([0.1, 0.2, 0.3, 0.9, 0.8] * 4)
    curves = {"good": selective_prediction_curve(correct, good), "random": selective_prediction_curve(correct, -good)}
    fig = selective_prediction_plot(curves)
    ax = fig.axes[0]
    assert len(ax.lines) == 2
    assert ax.lines[0].get_ydata()[-1] == pytest.approx(0.6)  # retention 1: plain accuracy
    assert ax.xaxis_inverted() and ax.get_ylabel() == "accuracy"
    shuffled = selective_prediction_curve(correct, good, retention=[1.0, 0.2, 0.6])
    line = selective_prediction_plot({"m": shuffled}).axes[0].lines[0]
    assert list(line.get_xdata()) == pytest.approx([0.2, 0.6, 1.0])  # drawn in retention order
    with pytest.raises(ValueError, match="curves must be a non-empty mapping"):
        selective_prediction_plot({})
    assert _saves(fig, tmp_path)


def test_spectrum_plot_marks_rank_and_energy(tmp_path):
    sv = torch.tensor([4.0, 2.0, 1.0, 0.5])
    fig = spectrum_plot({"layer": sv}, rank=2, energy=0.9)
    left, right = fig.axes
    assert left.get_yscale() == "log"
    assert list(left.lines[0].get_ydata()) == pytest.approx([4.0, 2.0, 1.0, 0.5])
    assert list(right.lines[0].get_ydata()) == pytest.approx(energy_fraction(sv).tolist())
    verticals = [line for line in left.lines if line.get_linestyle() == "--"]
    assert len(verticals) == 1 and list(verticals[0].get_xdata()) == [2, 2]
    assert any(line.get_linestyle() == ":" and line.get_ydata()[0] == 0.9 for line in right.lines)
    assert _saves(fig, tmp_path)


def test_correlation_heatmap_two_panels_shared_scale(tmp_path):
    corr = torch.tensor([[1.0, 0.5], [0.5, 1.0]])
    fig = correlation_heatmap(corr, corr + 0.01 * torch.eye(2), labels=["W[0,0]", "W[0,1]"])
    images = [im for ax in fig.axes for im in ax.get_images()]
    assert len(images) == 2 and all(isinstance(im, AxesImage) for im in images)
    assert all(im.get_clim() == (-1.0, 1.0) for im in images)
    assert images[0].get_array()[0, 1] == pytest.approx(0.5)
    assert [ax.get_title() for ax in fig.axes[:2]] == ["closed form", "Monte Carlo"]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["W[0,0]", "W[0,1]"]
    with pytest.raises(ValueError, match="Monte Carlo correlation must be a square \\(2, 2\\) matrix"):
        correlation_heatmap(corr, torch.ones(3, 3))
    single = correlation_heatmap(corr)
    assert isinstance(single, Figure) and len([ax for ax in single.axes if ax.get_images()]) == 1
    assert _saves(fig, tmp_path)


def test_rank_dynamics_plot_draws_effective_and_pruned_ranks(tmp_path):
    from pyro_lowrank.plots import rank_dynamics_plot

    effective = {"layers.0.A": [8, 6, 4, 4], "layers.1.A": [8, 8, 3, 2]}
    pruned = {"layers.0.A": [8, 6, 6, 4], "layers.1.A": [8, 8, 8, 2]}
    fig = rank_dynamics_plot(effective, pruned, prune_epochs=[2, 4])
    ax = fig.axes[0]
    solid = [line for line in ax.lines if line.get_linestyle() == "-" and line.get_label().endswith("effective")]
    dashed = [line for line in ax.lines if line.get_linestyle() == "--"]
    assert [list(line.get_ydata()) for line in solid] == [[8, 6, 4, 4], [8, 8, 3, 2]]
    assert list(solid[0].get_xdata()) == [1, 2, 3, 4]
    assert [list(line.get_ydata()) for line in dashed] == [[8, 6, 6, 4], [8, 8, 8, 2]]
    assert sum(1 for line in ax.lines if list(line.get_xdata()) in ([2, 2], [4, 4])) == 2
    assert ax.get_xlabel() == "epoch" and ax.get_ylabel() == "rank"
    assert _saves(fig, tmp_path)
    with pytest.raises(ValueError, match="one value per epoch \\(4\\), got 3"):
        rank_dynamics_plot(effective, {"layers.0.A": [1, 1, 1], "layers.1.A": [1, 1, 1, 1]})
    with pytest.raises(ValueError, match="empty mapping"):
        rank_dynamics_plot({})
