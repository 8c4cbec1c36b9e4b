r"""Uncertainty metrics computed from predictive draws.

Classification inputs are per-draw class probabilities ``probs`` of shape ``(S, N, C)``; the predictive
distribution is their Monte Carlo mean :math:`\bar p_i = \frac1S\sum_s p_{s,i}`, so every number below comes from the
same draws.

* accuracy: :math:`\frac1N\sum_i 1[\arg\max_c \bar p_{ic} = y_i]`;
* NLL: :math:`-\frac1N\sum_i \log \bar p_{i y_i}`;
* ECE with M equal-width confidence bins :math:`B_m`: :math:`\sum_m \frac{|B_m|}{N} |\text{acc}(B_m) -
  \text{conf}(B_m)|` with confidence :math:`\max_c \bar p_{ic}`.
"""

from __future__ import annotations

import torch

from pyro_lowrank._validation import check_positive_int

__all__ = ["accuracy", "expected_calibration_error", "negative_log_likelihood", "predictive_mean", "reliability_bins"]


def _check_probs(probs: torch.Tensor, y: torch.Tensor | None = None) -> None:
    if probs.dim() != 3:
        raise ValueError(f"probs must have shape (S, N, C) (draws, data, classes), got {tuple(probs.shape)}")
    if y is not None and y.shape != probs.shape[1:2]:
        raise ValueError(f"y must have shape ({probs.shape[1]},) to match probs {tuple(probs.shape)}, got {tuple(y.shape)}")


def predictive_mean(probs: torch.Tensor) -> torch.Tensor:
    """The Monte Carlo predictive distribution, ``probs.mean(0)``, shape ``(N, C)``."""
    _check_probs(probs)
    return probs.mean(0)


def accuracy(probs: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy of the predictive mean's arg-max."""
    _check_probs(probs, y)
    return float((predictive_mean(probs).argmax(-1) == y).to(torch.float64).mean())


def negative_log_likelihood(probs: torch.Tensor, y: torch.Tensor, eps: float = 1e-12) -> float:
    """Mean negative log predictive probability of the true class (probabilities clamped at ``eps``)."""
    _check_probs(probs, y)
    p_true = predictive_mean(probs).gather(-1, y.long().unsqueeze(-1)).squeeze(-1)
    return float(-p_true.clamp_min(eps).log().to(torch.float64).mean())


def reliability_bins(probs: torch.Tensor, y: torch.Tensor, num_bins: int = 15) -> dict[str, torch.Tensor]:
    """Equal-width confidence bins on [0, 1]: per bin the count, mean confidence and accuracy (NaN when empty)."""
    _check_probs(probs, y)
    num_bins = check_positive_int(num_bins, "num_bins")
    mean = predictive_mean(probs).to(torch.float64)
    confidence, prediction = mean.max(-1)
    correct = (prediction == y).to(torch.float64)
    index = torch.clamp((confidence * num_bins).long(), max=num_bins - 1)
    count = torch.bincount(index, minlength=num_bins).to(torch.float64)
    conf_sum = torch.bincount(index, weights=confidence, minlength=num_bins)
    acc_sum = torch.bincount(index, weights=correct, minlength=num_bins)
    nan = torch.full_like(count, float("nan"))
    return {
        "edges": torch.linspace(0, 1, num_bins + 1, dtype=torch.float64),
        "count": count,
        "confidence": torch.where(count > 0, conf_sum / count.clamp_min(1), nan),
        "accuracy": torch.where(count > 0, acc_sum / count.clamp_min(1), nan),
    }


def expected_calibration_error(probs: torch.Tensor, y: torch.Tensor, num_bins: int = 15) -> float:
    """ECE with ``num_bins`` equal-width confidence bins (see the module docstring)."""
    bins = reliability_bins(probs, y, num_bins)
    filled = bins["count"] > 0
    gap = (bins["accuracy"][filled] - bins["confidence"][filled]).abs()
    return float((bins["count"][filled] / bins["count"].sum() * gap).sum())
