"""The weight-space figures render headless and draw what they claim (checked through their artists)."""

import numpy as np
import pytest
import torch
from matplotlib.collections import PathCollection, PolyCollection
from matplotlib.figure import Figure

from pyro_lowrank.plots import kernel_share_plot, predictive_bands_plot, underfitting_plot

ALPHAS = [1e-3, 1e-1, 1e1, 1e3]


def _saves(fig, tmp_path):
    fig.savefig(tmp_path / "figure.png")
    return (tmp_path / "figure.png").stat().st_size > 1000


def _solid(ax):
    return [line for line in ax.lines if line.get_linestyle() == "-"]


def test_underfitting_plot_draws_curves_picks_and_the_map(tmp_path):
    nll = {"sampled": [50.0, 3.0, 1.2, 1.1], "linearised": torch.tensor([1.5, 1.2, 1.1, 1.1])}
    rmse = {"sampled": np.array([1e3, 2.0, 0.5, 0.4]), "linearised": [0.5, 0.45, 0.4, 0.4]}
    fig = underfitting_plot(ALPHAS, nll, rmse, selected={"sampled": 1e1, "linearised": 1e-1}, reference_nll=1.1,
                            reference_rmse=0.4, title="t")
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    for ax, curves in zip(fig.axes, (nll, rmse)):
        solid = _solid(ax)
        assert [line.get_label() for line in solid] == ["sampled", "linearised"]
        np.testing.assert_allclose(solid[0].get_xdata(), ALPHAS)
        np.testing.assert_allclose(solid[1].get_ydata(), np.asarray(curves["linearised"], dtype=float))
        dashed = [line for line in ax.lines if line.get_linestyle() == "--"]
        assert sorted(float(line.get_xdata()[0]) for line in dashed) == [1e-1, 1e1]
        assert len([line for line in ax.lines if line.get_linestyle() == ":"]) == 1
        assert ax.get_xscale() == "log"
    assert fig.axes[1].get_yscale() == "log" and fig.axes[0].get_yscale() == "symlog"
    assert _saves(fig, tmp_path)
    plain = underfitting_plot(ALPHAS, nll, rmse, log_y=False)
    assert len(plain.axes[0].lines) == 2 and plain.axes[1].get_yscale() == "linear"


def test_underfitting_plot_rejects_mismatches():
    with pytest.raises(ValueError, match="same labels"):
        underfitting_plot(ALPHAS, {"a": [1, 2, 3, 4]}, {"b": [1, 2, 3, 4]})
    with pytest.raises(ValueError, match="4 values"):
        underfitting_plot(ALPHAS, {"a": [1, 2, 3]}, {"a": [1, 2, 3, 4]})
    with pytest.raises(ValueError, match="prior_precisions"):
        underfitting_plot([0.0, 1.0], {"a": [1, 2]}, {"a": [1, 2]})
    with pytest.raises(ValueError, match="selected"):
        underfitting_plot(ALPHAS, {"a": [1, 2, 3, 4]}, {"a": [1, 2, 3, 4]}, selected={"b": 1.0})


def test_kernel_share_plot_one_line_per_network_and_its_floor(tmp_path):
    shares = {"toy": [1.0, 0.99, 0.95, 0.9], "yacht": torch.tensor([0.9, 0.7, 0.5, 0.46])}
    fig = kernel_share_plot(ALPHAS, shares, floors={"yacht": 0.45})
    assert len(fig.axes) == 1
    ax = fig.axes[0]
    assert [line.get_label() for line in _solid(ax)] == ["toy", "yacht"]
    floors = [line for line in ax.lines if line.get_linestyle() == ":"]
    assert len(floors) == 1 and float(floors[0].get_ydata()[0]) == 0.45
    assert ax.get_xscale() == "log" and ax.get_ylim() == (0.0, 1.02)
    assert _saves(fig, tmp_path)
    with pytest.raises(ValueError, match="at least one"):
        kernel_share_plot(ALPHAS, {})


def test_predictive_bands_plot_one_panel_per_method_with_bands_and_data(tmp_path):
    x = torch.linspace(-4, 4, 30)
    draws = torch.sin(x)[None] + 0.1 * torch.randn(20, 30, generator=torch.Generator().manual_seed(0))
    means = {f"m{i}": draws + i for i in range(4)}
    noise = {"m0": 0.1, "m1": torch.full((30,), 0.2), "m2": torch.full((20, 30), 0.3), "m3": np.float64(0.0)}
    fig = predictive_bands_plot(x, means, noise, x_train=x[:5], y_train=torch.sin(x[:5]), num_draws=2, ncols=3)
    assert len(fig.axes) == 4  # a 2 x 3 grid with the two unused panels removed
    for index, ax in enumerate(fig.axes):
        assert ax.get_title() == f"m{index}"
        bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
        assert len(bands) == 2
        assert len([c for c in ax.collections if isinstance(c, PathCollection)]) == 1
        assert len(ax.lines) == 3  # two function draws and the mean
        mean = ax.lines[-1]
        np.testing.assert_allclose(mean.get_ydata(), (draws + index).mean(0).numpy(), rtol=1e-5, atol=1e-6)
    # the outer band of m2 is wider than its inner band by the noise; with zero noise (m3) they coincide
    outer, inner = [c for c in fig.axes[2].collections if isinstance(c, PolyCollection)]
    assert np.ptp(outer.get_paths()[0].vertices[:, 1]) > np.ptp(inner.get_paths()[0].vertices[:, 1])
    outer, inner = [c for c in fig.axes[3].collections if isinstance(c, PolyCollection)]
    np.testing.assert_allclose(outer.get_paths()[0].vertices, inner.get_paths()[0].vertices, atol=1e-6)
    assert _saves(fig, tmp_path)
    with_truth = predictive_bands_plot(x, {"m0": draws}, {"m0": 0.1}, reference=(x, torch.sin(x)))
    dashed = [line for line in with_truth.axes[0].lines if line.get_linestyle() == "--"]
    assert len(with_truth.axes[0].lines) == 2 and len(dashed) == 1
    np.testing.assert_allclose(dashed[0].get_ydata(), torch.sin(x).numpy(), rtol=1e-6)


def test_predictive_bands_plot_rejects_bad_shapes():
    x = torch.linspace(0, 1, 5)
    with pytest.raises(ValueError, match="shape"):
        predictive_bands_plot(x, {"m": torch.zeros(3, 4)}, {"m": 0.1})
    with pytest.raises(ValueError, match="missing"):
        predictive_bands_plot(x, {"m": torch.zeros(3, 5)}, {})
    with pytest.raises(ValueError, match="together"):
        predictive_bands_plot(x, {"m": torch.zeros(3, 5)}, {"m": 0.1}, x_train=x)
