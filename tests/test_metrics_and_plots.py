import math

import pytest
import torch
from matplotlib.figure import Figure

from pyro_lowrank.metrics import accuracy, expected_calibration_error, negative_log_likelihood, reliability_bins
from pyro_lowrank.plots import reliability_diagram


def test_accuracy_and_nll_use_the_mean_of_the_draws():
    probs = torch.tensor([[[0.9, 0.1], [0.2, 0.8]], [[0.5, 0.5], [0.6, 0.4]]])  # S=2, N=2
    y = torch.tensor([0, 0])
    # predictive mean: [[0.7, 0.3], [0.4, 0.6]]
    assert accuracy(probs, y) == 0.5
    assert negative_log_likelihood(probs, y) == pytest.approx(-(math.log(0.7) + math.log(0.4)) / 2)


def test_ece_by_hand():
    # four points: confidences .9 (correct), .9 (wrong), .6 (correct), .6 (correct); 10 bins
    probs = torch.tensor([[[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]]])
    y = torch.tensor([0, 1, 0, 1])
    # bin .9: acc .5 conf .9 -> .4 * 2/4; bin .6: acc 1 conf .6 -> .4 * 2/4
    assert expected_calibration_error(probs, y, num_bins=10) == pytest.approx(0.4)
    bins = reliability_bins(probs, y, num_bins=10)
    assert bins["count"].sum() == 4 and torch.isnan(bins["accuracy"][0])


def test_calibrated_predictions_have_small_ece():
    gen = torch.Generator().manual_seed(0)
    conf = 0.5 + 0.5 * torch.rand(20000, generator=gen, dtype=torch.float64)
    correct = torch.rand(20000, generator=gen, dtype=torch.float64) < conf
    y = torch.where(correct, 0, 1)
    probs = torch.stack([conf, 1 - conf], -1).unsqueeze(0)
    assert expected_calibration_error(probs, y) < 0.02
    assert expected_calibration_error(probs, 1 - y) > 0.4


def test_metric_shape_errors():
    with pytest.raises(ValueError, match="probs must have shape \\(S, N, C\\)"):
        accuracy(torch.rand(3, 2), torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match="y must have shape \\(3,\\)"):
        accuracy(torch.rand(1, 3, 2), torch.tensor([0, 1]))


def test_reliability_diagram_is_a_headless_figure(tmp_path):
    probs = torch.softmax(torch.randn(4, 50, 3), -1)
    y = torch.randint(0, 3, (50,))
    fig = reliability_diagram({"a": probs, "b": probs[:1]}, y)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert "ECE" in fig.axes[0].get_title()
    fig.savefig(tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 1000
