"""Accuracy, NLL, Brier score, reliability bins and ECE (equal-width and equal-mass)."""

import math

import pytest
import torch

from pyro_lowrank.metrics import (
    accuracy,
    brier_score,
    expected_calibration_error,
    negative_log_likelihood,
    predictive_mean,
    reliability_bins,
)


def _binary(conf, pred_first):
    """Single-draw binary probs whose confidence is ``conf`` on class 0 (``pred_first``) or class 1."""
    conf = torch.as_tensor(conf, dtype=torch.float64)
    first = torch.where(torch.as_tensor(pred_first), conf, 1 - conf)
    return torch.stack([first, 1 - first], -1).unsqueeze(0)


def _calibrated(num, num_classes, anti=False, seed=0):
    """Two draws whose mean has confidence c ~ U(1/C, 1) on class 0 and is right with probability c (1 - c if anti)."""
    gen = torch.Generator().manual_seed(seed)
    low = 1.0 / num_classes
    conf = low + (1 - low) * torch.rand(num, generator=gen, dtype=torch.float64)
    rest = (1 - conf) / (num_classes - 1)
    mean = torch.cat([conf[:, None], rest[:, None].expand(num, num_classes - 1)], -1)
    # spread the draws around the mean without leaving the simplex: +-d on classes 0 and 1
    d = 0.5 * torch.minimum(rest, 1 - conf) * torch.rand(num, generator=gen, dtype=torch.float64)
    shift = torch.zeros_like(mean)
    shift[:, 0], shift[:, 1] = d, -d
    probs = torch.stack([mean + shift, mean - shift])
    p_right = 1 - conf if anti else conf
    right = torch.rand(num, generator=gen, dtype=torch.float64) < p_right
    other = torch.randint(1, num_classes, (num,), generator=gen)
    return probs, torch.where(right, 0, other)


def test_predictive_mean_accuracy_nll_by_hand():
    probs = torch.tensor([[[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]], [[0.4, 0.5, 0.1], [0.2, 0.4, 0.4]]])
    y = torch.tensor([1, 2])
    mean = predictive_mean(probs)
    assert torch.allclose(mean, torch.tensor([[0.5, 0.4, 0.1], [0.2, 0.3, 0.5]]))
    assert mean.dtype == probs.dtype
    assert accuracy(probs, y) == 0.5
    assert negative_log_likelihood(probs, y) == pytest.approx(-(math.log(0.4) + math.log(0.5)) / 2, rel=1e-6)
    # a confident mistake is floored at eps instead of costing infinity
    hard = torch.tensor([[[1.0, 0.0]]])
    assert negative_log_likelihood(hard, torch.tensor([1]), eps=1e-8) == pytest.approx(-math.log(1e-8))


def test_brier_score_by_hand():
    probs = torch.tensor([[[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]], [[0.4, 0.5, 0.1], [0.2, 0.4, 0.4]]], dtype=torch.float64)
    y = torch.tensor([0, 2])
    # mean [[.5,.4,.1],[.2,.3,.5]]: (.25+.16+.01 + .04+.09+.25) / 2
    assert brier_score(probs, y) == pytest.approx(0.40)
    uniform = torch.full((1, 4, 5), 0.2)
    assert brier_score(uniform, torch.tensor([0, 1, 2, 3])) == pytest.approx(1 - 1 / 5)
    perfect = torch.eye(3).unsqueeze(0)
    assert brier_score(perfect, torch.arange(3)) == 0.0
    assert brier_score(perfect, torch.tensor([1, 2, 0])) == pytest.approx(2.0)


def test_equal_width_ece_by_hand():
    # confidences .55 (right), .65 (wrong), .75 (right), .95 (right), .92 (wrong); 5 bins of width .2
    probs = _binary([0.55, 0.65, 0.75, 0.95, 0.92], [True] * 5)
    y = torch.tensor([0, 1, 0, 0, 1])
    bins = reliability_bins(probs, y, num_bins=5)
    assert torch.allclose(bins["edges"], torch.linspace(0, 1, 6, dtype=torch.float64))
    assert bins["count"].tolist() == [0, 0, 1, 2, 2]
    assert torch.isnan(bins["accuracy"][:2]).all() and torch.isnan(bins["confidence"][:2]).all()
    assert torch.allclose(bins["confidence"][2:], torch.tensor([0.55, 0.70, 0.935], dtype=torch.float64))
    assert torch.allclose(bins["accuracy"][2:], torch.tensor([1.0, 0.5, 0.5], dtype=torch.float64))
    expected = (1 * 0.45 + 2 * 0.2 + 2 * 0.435) / 5
    assert expected_calibration_error(probs, y, num_bins=5) == pytest.approx(expected)


def test_equal_mass_ece_by_hand():
    # confidences .55 (right), .65 (wrong), .75 (right), .95 (right): the median edge .70 splits them 2 / 2
    probs = _binary([0.55, 0.65, 0.75, 0.95], [True] * 4)
    y = torch.tensor([0, 1, 0, 0])
    bins = reliability_bins(probs, y, num_bins=2, binning="equal_mass")
    assert torch.allclose(bins["edges"], torch.tensor([0.0, 0.70, 1.0], dtype=torch.float64))
    assert bins["count"].tolist() == [2, 2]
    assert torch.allclose(bins["confidence"], torch.tensor([0.60, 0.85], dtype=torch.float64))
    assert torch.allclose(bins["accuracy"], torch.tensor([0.5, 1.0], dtype=torch.float64))
    ece = expected_calibration_error(probs, y, num_bins=2, binning="equal_mass")
    assert ece == pytest.approx(0.5 * 0.1 + 0.5 * 0.15)


def test_equal_mass_bins_hold_equal_counts_and_match_torch_quantile():
    gen = torch.Generator().manual_seed(1)
    probs = torch.softmax(3 * torch.randn(4, 120, 5, generator=gen), -1)
    y = torch.randint(0, 5, (120,), generator=gen)
    bins = reliability_bins(probs, y, num_bins=8, binning="equal_mass")
    assert bins["count"].tolist() == [15.0] * 8
    confidence = probs.double().mean(0).max(-1).values
    inner = torch.quantile(confidence, torch.arange(1, 8, dtype=torch.float64) / 8)
    assert torch.allclose(bins["edges"][1:-1], inner)
    assert bins["edges"][0] == 0 and bins["edges"][-1] == 1
    assert (bins["edges"].diff() >= 0).all()


def test_equal_mass_ties_give_empty_bins_not_errors():
    probs = _binary([1.0] * 6 + [0.7, 0.8], [True] * 8)
    y = torch.zeros(8, dtype=torch.long)
    bins = reliability_bins(probs, y, num_bins=4, binning="equal_mass")
    assert bins["count"].sum() == 8 and (bins["count"] == 0).any()
    assert expected_calibration_error(probs, y, num_bins=4, binning="equal_mass") == pytest.approx(0.0625)


@pytest.mark.parametrize("binning", ["equal_width", "equal_mass"])
@pytest.mark.parametrize("num_classes", [2, 4])
def test_ece_small_for_calibrated_and_large_for_anti_calibrated(binning, num_classes):
    probs, y = _calibrated(20000, num_classes)
    assert expected_calibration_error(probs, y, binning=binning) < 0.02
    probs, y = _calibrated(20000, num_classes, anti=True)
    assert expected_calibration_error(probs, y, binning=binning) > 0.2


def test_reliability_bins_count_every_point_and_agree_with_ece():
    gen = torch.Generator().manual_seed(2)
    probs = torch.softmax(torch.randn(3, 500, 4, generator=gen), -1)
    y = torch.randint(0, 4, (500,), generator=gen)
    for binning in ("equal_width", "equal_mass"):
        bins = reliability_bins(probs, y, num_bins=10, binning=binning)
        assert bins["edges"].shape == (11,) and bins["count"].sum() == 500
        filled = bins["count"] > 0
        gap = (bins["accuracy"] - bins["confidence"]).abs()[filled]
        ece = float((bins["count"][filled] * gap).sum() / 500)
        assert expected_calibration_error(probs, y, 10, binning) == pytest.approx(ece)
        # the count-weighted bin accuracies recover the overall accuracy
        acc = float((bins["count"][filled] * bins["accuracy"][filled]).sum() / 500)
        assert acc == pytest.approx(accuracy(probs, y))


def test_float16_and_float_labels_are_accepted():
    probs = torch.softmax(torch.randn(2, 30, 3), -1)
    y = torch.randint(0, 3, (30,))
    assert accuracy(probs.half(), y) == pytest.approx(accuracy(probs, y))
    assert accuracy(probs, y.double()) == accuracy(probs, y)
    assert isinstance(brier_score(probs, y), float)
