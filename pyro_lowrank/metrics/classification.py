r"""Accuracy, proper scoring rules and calibration of the Monte Carlo predictive distribution.

Inputs are per-draw class probabilities ``probs`` of shape ``(S, N, C)`` and integer labels ``y`` of shape ``(N,)``.
The predictive distribution is the Monte Carlo mean :math:`\bar p_i = \frac1S \sum_{s=1}^S p_{s,i}`; its confidence
and prediction are :math:`\hat c_i = \max_c \bar p_{ic}` and :math:`\hat y_i = \arg\max_c \bar p_{ic}`.

* accuracy :math:`\frac1N \sum_i 1[\hat y_i = y_i]`;
* negative log-likelihood :math:`-\frac1N \sum_i \log \bar p_{i y_i}`;
* Brier score :math:`\frac1N \sum_i \sum_c (\bar p_{ic} - 1[y_i = c])^2`;
* expected calibration error over confidence bins :math:`B_1, \dots, B_M`:
  :math:`\mathrm{ECE} = \sum_m \frac{|B_m|}{N} |\mathrm{acc}(B_m) - \mathrm{conf}(B_m)|`.
"""

from __future__ import annotations

import torch

from pyro_lowrank._validation import check_positive_int
from pyro_lowrank.metrics._checks import check_choice, check_labels, check_probs, output

__all__ = [
    "accuracy",
    "brier_score",
    "expected_calibration_error",
    "negative_log_likelihood",
    "predictive_mean",
    "reliability_bins",
]

BINNINGS = ("equal_width", "equal_mass")


def _mean_and_labels(probs: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated float64 predictive mean ``(N, C)`` and int64 labels on the same device."""
    p = check_probs(probs, y=y)
    labels = check_labels(y, p.shape[1], p.shape[2], p.device)
    return p.mean(0), labels


def predictive_mean(probs: torch.Tensor) -> torch.Tensor:
    r"""The Monte Carlo predictive distribution :math:`\bar p_i = \frac1S \sum_s p_{s,i}`.

    Parameters
    ----------
    probs : tensor (S, N, C)
        Per-draw class probabilities.

    Returns
    -------
    tensor (N, C)
        ``probs.mean(0)`` in the dtype and on the device of ``probs``.
    """
    check_probs(probs)
    return probs.detach().mean(0)


def accuracy(probs: torch.Tensor, y: torch.Tensor) -> float:
    r"""Accuracy of the predictive mean's arg-max, :math:`\frac1N \sum_i 1[\arg\max_c \bar p_{ic} = y_i]`.

    Parameters
    ----------
    probs : tensor (S, N, C)
        Per-draw class probabilities.
    y : tensor (N,)
        Integer labels in ``[0, C)``.
    """
    mean, labels = _mean_and_labels(probs, y)
    return float((mean.argmax(-1) == labels).to(torch.float64).mean())


def negative_log_likelihood(probs: torch.Tensor, y: torch.Tensor, eps: float = 1e-12) -> float:
    r"""Mean negative log predictive probability of the true class, :math:`-\frac1N \sum_i \log \max(\bar p_{i
    y_i}, \epsilon)`.

    Parameters
    ----------
    probs : tensor (S, N, C)
        Per-draw class probabilities.
    y : tensor (N,)
        Integer labels in ``[0, C)``.
    eps : float
        Floor on the probability of the true class, so that a confident mistake costs :math:`-\log\epsilon` instead
        of infinity.
    """
    mean, labels = _mean_and_labels(probs, y)
    p_true = mean.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return float(-p_true.clamp_min(eps).log().mean())


def brier_score(probs: torch.Tensor, y: torch.Tensor) -> float:
    r"""Multi-class Brier score of the predictive mean, :math:`\frac1N \sum_i \sum_c (\bar p_{ic} - 1[y_i = c])^2`.

    It lies in :math:`[0, 2]`; 0 is a perfect, confident prediction and the uniform prediction scores
    :math:`1 - 1/C`.

    Parameters
    ----------
    probs : tensor (S, N, C)
        Per-draw class probabilities.
    y : tensor (N,)
        Integer labels in ``[0, C)``.
    """
    mean, labels = _mean_and_labels(probs, y)
    one_hot = torch.nn.functional.one_hot(labels, mean.shape[-1]).to(torch.float64)
    return float((mean - one_hot).square().sum(-1).mean())


def _quantile(sorted_values: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Linear-interpolation quantiles of already sorted values (``torch.quantile``'s default, without its size cap)."""
    position = q * (sorted_values.numel() - 1)
    low = position.floor().long()
    high = position.ceil().long()
    weight = position - low
    return sorted_values[low] + weight * (sorted_values[high] - sorted_values[low])


def reliability_bins(
    probs: torch.Tensor, y: torch.Tensor, num_bins: int = 15, binning: str = "equal_width"
) -> dict[str, torch.Tensor]:
    r"""Confidence bins of the predictive mean: per bin the count, the mean confidence and the accuracy.

    With confidence :math:`\hat c_i = \max_c \bar p_{ic}` and edges :math:`0 = e_0 < \dots < e_M = 1`, bin
    :math:`B_m = \{i : e_{m-1} \le \hat c_i < e_m\}` (the last bin also holds :math:`\hat c_i = 1`), and

    .. math::
        \mathrm{conf}(B_m) = \frac{1}{|B_m|} \sum_{i \in B_m} \hat c_i, \qquad
        \mathrm{acc}(B_m) = \frac{1}{|B_m|} \sum_{i \in B_m} 1[\hat y_i = y_i].

    * ``"equal_width"``: :math:`e_m = m / M`; a confidence goes to bin :math:`\min(\lfloor M \hat c_i \rfloor, M-1)`.
    * ``"equal_mass"``: the inner edges are the empirical quantiles :math:`e_m = Q(m/M)`, :math:`m = 1, \dots, M-1`,
      of the confidences (linear interpolation, as ``torch.quantile``), and the outer edges are fixed at
      :math:`e_0 = 0`, :math:`e_M = 1` so the bins cover :math:`[0, 1]`. Each bin then holds :math:`N/M` points up
      to rounding, except when confidences tie (e.g. many exactly 1): tied quantiles give coinciding edges and empty
      bins.

    Parameters
    ----------
    probs : tensor (S, N, C)
        Per-draw class probabilities.
    y : tensor (N,)
        Integer labels in ``[0, C)``.
    num_bins : int
        Number of bins :math:`M`.
    binning : {"equal_width", "equal_mass"}
        How the edges are placed.

    Returns
    -------
    dict of float64 tensors on the device of ``probs``
        ``"edges"`` (M + 1,), ``"count"`` (M,), ``"confidence"`` (M,) and ``"accuracy"`` (M,); the last two are NaN
        for empty bins.
    """
    num_bins = check_positive_int(num_bins, "num_bins")
    binning = check_choice(binning, "binning", BINNINGS)
    mean, labels = _mean_and_labels(probs, y)
    confidence, prediction = mean.max(-1)
    correct = (prediction == labels).to(torch.float64)
    if binning == "equal_width":
        edges = torch.linspace(0, 1, num_bins + 1, dtype=torch.float64, device=mean.device)
        index = torch.clamp((confidence * num_bins).long(), max=num_bins - 1)
    else:
        q = torch.arange(1, num_bins, dtype=torch.float64, device=mean.device) / num_bins
        inner = _quantile(confidence.sort().values, q)
        edges = torch.cat([inner.new_zeros(1), inner, inner.new_ones(1)])
        index = torch.searchsorted(inner, confidence, right=True)
    count = torch.bincount(index, minlength=num_bins).to(torch.float64)
    conf_sum = torch.bincount(index, weights=confidence, minlength=num_bins)
    acc_sum = torch.bincount(index, weights=correct, minlength=num_bins)
    nan = torch.full_like(count, float("nan"))
    bins = {
        "edges": edges,
        "count": count,
        "confidence": torch.where(count > 0, conf_sum / count.clamp_min(1), nan),
        "accuracy": torch.where(count > 0, acc_sum / count.clamp_min(1), nan),
    }
    device = probs.device
    return {key: output(value, device) for key, value in bins.items()}


def expected_calibration_error(
    probs: torch.Tensor, y: torch.Tensor, num_bins: int = 15, binning: str = "equal_width"
) -> float:
    r"""Expected calibration error :math:`\sum_m \frac{|B_m|}{N} |\mathrm{acc}(B_m) - \mathrm{conf}(B_m)|`.

    The bins are those of :func:`reliability_bins`; empty bins contribute nothing.

    Parameters
    ----------
    probs : tensor (S, N, C)
        Per-draw class probabilities.
    y : tensor (N,)
        Integer labels in ``[0, C)``.
    num_bins : int
        Number of bins :math:`M`.
    binning : {"equal_width", "equal_mass"}
        Equal-width bins on :math:`[0, 1]` or equal-mass bins at the confidence quantiles.
    """
    bins = reliability_bins(probs, y, num_bins, binning)
    filled = bins["count"] > 0
    gap = (bins["accuracy"][filled] - bins["confidence"][filled]).abs()
    return float((bins["count"][filled] / bins["count"].sum() * gap).sum())
