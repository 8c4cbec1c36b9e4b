"""Every bad input raises ValueError naming the argument, the expected and the actual value."""

import pytest
import torch

from pyro_lowrank import metrics as M

P = torch.tensor([[[0.7, 0.3], [0.4, 0.6], [0.5, 0.5]]])  # (S=1, N=3, C=2)
Y = torch.tensor([0, 1, 0])
MEANS = torch.zeros(2, 3)
SCALES = torch.ones(2, 3)
YR = torch.zeros(3)
U = torch.tensor([0.1, 0.2, 0.3])


def _with(tensor, index, value):
    out = tensor.clone()
    out[index] = value
    return out


CASES = {
    # classification probabilities and labels
    "probs not 3-D": (lambda: M.accuracy(P[0], Y), r"probs must have shape \(S, N, C\).*got \(3, 2\)"),
    "probs empty": (lambda: M.predictive_entropy(torch.zeros(1, 0, 2)), r"probs must be non-empty.*\(1, 0, 2\)"),
    "probs integer": (lambda: M.brier_score(P.long(), Y), r"probs must be a floating-point tensor.*int64"),
    "probs NaN": (
        lambda: M.brier_score(_with(P, (0, 0, 0), float("nan")), Y),
        r"probs must contain only finite.*1 NaN",
    ),
    "probs Inf": (
        lambda: M.mutual_information(_with(P, (0, 1, 1), float("inf"))),
        r"probs must contain only finite.*1 Inf",
    ),
    "probs negative": (
        lambda: M.expected_calibration_error(torch.tensor([[[1.2, -0.2]]]), torch.tensor([0])),
        r"probs must be non-negative.*minimum -0\.2",
    ),
    "probs not normalised": (
        lambda: M.negative_log_likelihood(_with(P, (0, 2), 0.6), Y),
        r"probs must sum to 1 .* within 0\.001, got a maximum deviation of 0\.2",
    ),
    "logits passed as probs": (
        lambda: M.uncertainty_score(torch.tensor([[[0.1, 0.2]]])),
        r"probs must sum to 1.*maximum deviation of 0\.7",
    ),
    "y shape": (lambda: M.accuracy(P, Y[:2]), r"y must have shape \(3,\) to match probs, got \(2,\)"),
    "y out of range": (
        lambda: M.brier_score(P, torch.tensor([0, 2, 1])),
        r"y must hold class labels in \[0, 2\).*\[0, 2\]",
    ),
    "y negative": (
        lambda: M.reliability_bins(P, torch.tensor([0, -1, 1])),
        r"y must hold class labels in \[0, 2\).*\[-1, 1\]",
    ),
    "y non-integer": (lambda: M.accuracy(P, torch.tensor([0.0, 0.5, 1.0])), r"y must hold integer class labels.*0\.5"),
    "y bool": (
        lambda: M.accuracy(P, torch.tensor([True, False, True])),
        r"y must hold integer class labels.*torch\.bool",
    ),
    "num_bins": (lambda: M.reliability_bins(P, Y, num_bins=0), r"num_bins must be a positive integer, got 0"),
    "binning": (lambda: M.expected_calibration_error(P, Y, binning="quantile"), r"binning must be one of .*'quantile'"),
    "score": (lambda: M.ood_detection(P, P, score="entropy"), r"score must be one of .*'entropy'"),
    "misclassification score": (lambda: M.misclassification_detection(P, Y, score="x"), r"score must be one of"),
    "probs_out": (lambda: M.ood_detection(P, P[0]), r"probs_out must have shape \(S, N, C\)"),
    # scores and uncertainties
    "scores_in NaN": (
        lambda: M.ood_detection_from_scores(torch.tensor([0.1, float("nan")]), U),
        r"scores_in must contain only finite.*1 NaN",
    ),
    "scores_out Inf": (
        lambda: M.ood_detection_from_scores(U, torch.tensor([float("inf")])),
        r"scores_out must contain only finite.*1 Inf",
    ),
    "scores_in empty": (lambda: M.ood_detection_from_scores(torch.zeros(0), U), r"scores_in must be non-empty"),
    "scores_out 2-D": (lambda: M.ood_detection_from_scores(U, U[None]), r"scores_out must be 1-D, got shape \(1, 3\)"),
    "uncertainty NaN": (
        lambda: M.selective_prediction(U, _with(U, 1, float("nan"))),
        r"uncertainty must contain only finite.*1 NaN",
    ),
    "uncertainty length": (lambda: M.selective_prediction_curve(U, U[:2]), r"uncertainty must have shape \(3,\)"),
    "values empty": (lambda: M.selective_prediction(torch.zeros(0), torch.zeros(0)), r"values must be non-empty"),
    "retention 0": (lambda: M.selective_prediction(U, U, 0.0), r"retention must lie in \(0, 1\], got 0\.0"),
    "retention > 1": (
        lambda: M.selective_prediction_curve(U, U, [0.5, 1.5]),
        r"retention must lie in \(0, 1\], got 1\.5",
    ),
    "retention empty": (lambda: M.selective_prediction_curve(U, U, []), r"retention must be non-empty"),
    # regression draws
    "means not 2-D": (lambda: M.rmse(MEANS[0], YR), r"means must have shape \(S, N\).*got \(3,\)"),
    "means empty": (lambda: M.mae(torch.zeros(2, 0), torch.zeros(0)), r"means must be non-empty"),
    "means NaN": (lambda: M.rmse(_with(MEANS, (0, 0), float("nan")), YR), r"means must contain only finite"),
    "scales shape": (
        lambda: M.regression_predictive_moments(MEANS, SCALES[:1]),
        r"scales must have the shape of means \(2, 3\), got \(1, 3\)",
    ),
    "scales zero": (
        lambda: M.gaussian_mixture_nll(MEANS, _with(SCALES, (1, 2), 0.0), YR),
        r"scales must be > 0.*minimum 0",
    ),
    "scales negative": (lambda: M.picp(MEANS, -SCALES, YR), r"scales must be > 0.*minimum -1"),
    "scales Inf": (lambda: M.mpiw(MEANS, _with(SCALES, (0, 0), float("inf"))), r"scales must contain only finite"),
    "y regression shape": (lambda: M.gaussian_mixture_nll(MEANS, SCALES, YR[:2]), r"y must have shape \(3,\)"),
    "y regression NaN": (lambda: M.mae(MEANS, _with(YR, 0, float("nan"))), r"y must contain only finite"),
    "level 1": (
        lambda: M.predictive_interval(MEANS, SCALES, level=1.0),
        r"level must lie in \(0, 1\), got 1\.0",
    ),
    "level 0": (lambda: M.picp(MEANS, SCALES, YR, level=0), r"level must lie in \(0, 1\), got 0\.0"),
    "level str": (lambda: M.mpiw(MEANS, SCALES, level="0.9"), r"level must be a real number in \(0, 1\), got '0\.9'"),
    "levels outside": (
        lambda: M.coverage_curve(MEANS, SCALES, YR, levels=[0.5, 1.0]),
        r"levels must lie in \(0, 1\), got 1\.0",
    ),
    "levels empty": (lambda: M.coverage_calibration_area(MEANS, SCALES, YR, levels=[]), r"levels must be non-empty"),
    "method": (
        lambda: M.predictive_interval(MEANS, SCALES, method="exact"),
        r"method must be one of \['gaussian', 'mixture'\], got 'exact'",
    ),
    "method coverage": (lambda: M.coverage_curve(MEANS, SCALES, YR, method="mc"), r"method must be one of"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_raises_value_error_naming_the_argument(case):
    call, match = CASES[case]
    with pytest.raises(ValueError, match=match):
        call()


def test_non_tensor_inputs_raise_type_error():
    with pytest.raises(TypeError, match="probs must be a torch.Tensor"):
        M.accuracy([[[1.0, 0.0]]], Y)
    with pytest.raises(TypeError, match="scales must be a torch.Tensor"):
        M.picp(MEANS, 1.0, YR)


def test_float32_tolerance_accepts_softmax_round_off():
    probs = torch.softmax(torch.randn(8, 64, 1000), -1)
    assert M.predictive_entropy(probs).shape == (64,)
    with pytest.raises(ValueError, match="probs must sum to 1"):
        M.predictive_entropy(probs * 1.01)
