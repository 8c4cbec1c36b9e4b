r"""Uncertainty metrics computed from predictive draws.

Every metric is a function of Monte Carlo draws of the predictive distribution, so all numbers of one model come from
the same draws. Scalar metrics are returned as Python floats and per-example quantities and curves as float64 tensors
on the input's device; arithmetic is in float64. Invalid input raises ``ValueError`` naming the argument.

**Classification** (:mod:`~pyro_lowrank.metrics.classification`, :mod:`~pyro_lowrank.metrics.uncertainty`).
Per-draw class probabilities ``probs`` :math:`p_{s,i}` of shape ``(S, N, C)``, labels ``y`` of shape ``(N,)``;
predictive mean :math:`\bar p_i = \frac1S \sum_s p_{s,i}`, confidence :math:`\hat c_i = \max_c \bar p_{ic}`,
prediction :math:`\hat y_i = \arg\max_c \bar p_{ic}`, entropy :math:`H[p] = -\sum_c p_c \log p_c`.

* accuracy :math:`\frac1N \sum_i 1[\hat y_i = y_i]`; NLL :math:`-\frac1N \sum_i \log \bar p_{i y_i}`;
  Brier :math:`\frac1N \sum_i \sum_c (\bar p_{ic} - 1[y_i = c])^2`;
* ECE :math:`\sum_m \frac{|B_m|}{N} |\mathrm{acc}(B_m) - \mathrm{conf}(B_m)|` over equal-width or equal-mass
  confidence bins :math:`B_m`;
* predictive entropy :math:`H[\bar p_i]`, expected entropy :math:`\frac1S \sum_s H[p_{s,i}]`, mutual information
  :math:`H[\bar p_i] - \frac1S \sum_s H[p_{s,i}] \ge 0`, max-probability score :math:`1 - \hat c_i`.

**Detection** (:mod:`~pyro_lowrank.metrics.ood`). An uncertainty score (the mutual information by default) ranks
OOD inputs (or misclassified inputs) above in-distribution (or correct) ones: AUROC, AUPR with either class positive
(average precision), and the score ratio :math:`\bar u_{OOD} / \bar u_{in}` (the "MI ratio").

**Regression** (:mod:`~pyro_lowrank.metrics.regression`, :mod:`~pyro_lowrank.metrics.intervals`). Per-draw
Gaussian means :math:`\mu_{si}` and scales :math:`\sigma_{si}` of shape ``(S, N)``, targets :math:`y_i`; predictive
distribution :math:`\frac1S \sum_s \mathcal N(\mu_{si}, \sigma_{si}^2)` with mean :math:`\hat y_i = \frac1S \sum_s
\mu_{si}` and variance :math:`\hat\sigma_i^2 = \frac1S \sum_s \sigma_{si}^2 + \frac1S \sum_s (\mu_{si} - \hat
y_i)^2`.

* RMSE and MAE of :math:`\hat y`; mixture NLL :math:`-\frac1N \sum_i \log \frac1S \sum_s \mathcal N(y_i; \mu_{si},
  \sigma_{si}^2)`;
* central intervals at level :math:`\gamma`: :math:`\hat y_i \pm \Phi^{-1}(\frac{1+\gamma}2) \hat\sigma_i`
  (``"gaussian"``, :math:`\pm 1.96 \hat\sigma_i` at 0.95) or the exact mixture quantiles (``"mixture"``);
  PICP :math:`\frac1N \sum_i 1[L_i \le y_i \le U_i]`, MPIW :math:`\frac1N \sum_i (U_i - L_i)`, the coverage curve
  :math:`\gamma \mapsto \mathrm{PICP}(\gamma)` and its area to the diagonal :math:`\int_0^1 |\mathrm{PICP}(\gamma) -
  \gamma| d\gamma` (trapezoid rule);
* OOD detection by the predictive standard deviation via :func:`ood_detection_from_scores`.

**Selective prediction** (:mod:`~pyro_lowrank.metrics.selective`). Mean of a per-example value over the
:math:`\lceil rN \rceil` least uncertain examples, as a function of the retention :math:`r`.
"""

from pyro_lowrank.metrics.classification import (
    accuracy,
    brier_score,
    expected_calibration_error,
    negative_log_likelihood,
    predictive_mean,
    reliability_bins,
)
from pyro_lowrank.metrics.intervals import (
    coverage_calibration_area,
    coverage_curve,
    mpiw,
    picp,
    predictive_interval,
)
from pyro_lowrank.metrics.ood import (
    misclassification_detection,
    ood_detection,
    ood_detection_from_scores,
)
from pyro_lowrank.metrics.regression import (
    gaussian_mixture_nll,
    mae,
    regression_predictive_moments,
    rmse,
)
from pyro_lowrank.metrics.selective import (
    selective_prediction,
    selective_prediction_curve,
)
from pyro_lowrank.metrics.uncertainty import (
    expected_entropy,
    mutual_information,
    predictive_entropy,
    uncertainty_score,
)

__all__ = [
    "accuracy",
    "brier_score",
    "coverage_calibration_area",
    "coverage_curve",
    "expected_calibration_error",
    "expected_entropy",
    "gaussian_mixture_nll",
    "mae",
    "misclassification_detection",
    "mpiw",
    "mutual_information",
    "negative_log_likelihood",
    "ood_detection",
    "ood_detection_from_scores",
    "picp",
    "predictive_entropy",
    "predictive_interval",
    "predictive_mean",
    "regression_predictive_moments",
    "reliability_bins",
    "rmse",
    "selective_prediction",
    "selective_prediction_curve",
    "uncertainty_score",
]
