"""Inputs on any device and dtype: float64 arithmetic, floats for scalars, tensors on the input's device."""

import pytest
import torch

from pyro_lowrank import metrics as M

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def _classification(device, dtype):
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(2 * torch.randn(6, 200, 4, generator=gen), -1)
    y = torch.randint(0, 4, (200,), generator=gen)
    return probs.to(device, dtype), y.to(device)


def _regression(device, dtype):
    gen = torch.Generator().manual_seed(1)
    means = torch.randn(5, 300, generator=gen)
    scales = 0.5 + torch.rand(5, 300, generator=gen)
    y = torch.randn(300, generator=gen)
    return means.to(device, dtype), scales.to(device, dtype), y.to(device, dtype)


def _summary(device, dtype):
    probs, y = _classification(device, dtype)
    means, scales, yr = _regression(device, dtype)
    mi = M.mutual_information(probs)
    std = M.regression_predictive_moments(means, scales)[1]
    tensors = {
        "mi": mi,
        "entropy": M.predictive_entropy(probs),
        "bins": M.reliability_bins(probs, y, binning="equal_mass")["confidence"],
        "interval": M.predictive_interval(means, scales, method="mixture")[0],
        "coverage": M.coverage_curve(means, scales, yr)["observed"],
        "selective": M.selective_prediction_curve((probs.mean(0).argmax(-1) == y), mi)["value"],
    }
    scalars = {
        "accuracy": M.accuracy(probs, y),
        "nll": M.negative_log_likelihood(probs, y),
        "brier": M.brier_score(probs, y),
        "ece": M.expected_calibration_error(probs, y),
        "ood": M.ood_detection(probs[:, :100], probs[:, 100:])["auroc"],
        "ood_std": M.ood_detection_from_scores(std[:150], std[150:])["aupr_in"],
        "misclassification": M.misclassification_detection(probs, y)["auroc"],
        "rmse": M.rmse(means, yr),
        "nll_regression": M.gaussian_mixture_nll(means, scales, yr),
        "picp": M.picp(means, scales, yr, method="mixture"),
        "area": M.coverage_calibration_area(means, scales, yr),
        "selective_mae": M.selective_prediction((means.mean(0) - yr).abs(), std, 0.8),
    }
    return tensors, scalars


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_outputs_live_on_the_input_device_and_agree_across_devices(device, dtype):
    tensors, scalars = _summary(device, dtype)
    reference_tensors, reference_scalars = _summary("cpu", torch.float64)
    for name, value in tensors.items():
        assert value.device.type == device and value.dtype == torch.float64, name
        tol = 1e-10 if dtype == torch.float64 else 1e-5
        assert torch.allclose(value.cpu(), reference_tensors[name], atol=tol, equal_nan=True), name
    for name, value in scalars.items():
        assert isinstance(value, float), name
        assert value == pytest.approx(reference_scalars[name], abs=1e-4 if dtype == torch.float32 else 1e-10), name


def test_inputs_requiring_grad_are_accepted():
    probs = torch.softmax(torch.randn(3, 10, 2, requires_grad=True), -1)
    y = torch.randint(0, 2, (10,))
    assert not M.mutual_information(probs).requires_grad
    assert isinstance(M.expected_calibration_error(probs, y), float)
