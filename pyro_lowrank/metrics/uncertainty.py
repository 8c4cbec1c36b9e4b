r"""Per-example uncertainty scores of a classifier from its per-draw class probabilities.

With draws :math:`p_{s,i}` (:math:`s = 1, \dots, S`), predictive mean :math:`\bar p_i = \frac1S \sum_s p_{s,i}` and
Shannon entropy :math:`H[p] = -\sum_c p_c \log p_c` (natural log, :math:`0 \log 0 = 0`):

* predictive (total) entropy :math:`H[\bar p_i]`;
* expected (aleatoric) entropy :math:`\frac1S \sum_s H[p_{s,i}]`;
* mutual information (epistemic) :math:`I_i = H[\bar p_i] - \frac1S \sum_s H[p_{s,i}] \ge 0`, the Monte Carlo
  estimate of :math:`I[y; \theta \mid x_i, \mathcal D]` (Jensen's inequality makes it non-negative, and it is 0 when
  all draws agree, e.g. for a deterministic network);
* max-probability score :math:`1 - \max_c \bar p_{ic}`.

All scores are computed in float64 and returned as float64 tensors of shape ``(N,)`` on the device of ``probs``.
"""

from __future__ import annotations

import torch

from pyro_lowrank.metrics._checks import check_choice, check_probs, output

__all__ = [
    "expected_entropy",
    "mutual_information",
    "predictive_entropy",
    "uncertainty_score",
]

SCORES = ("mutual_information", "predictive_entropy", "expected_entropy", "max_probability")


def _entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy over the last axis with :math:`0 \\log 0 = 0` (via ``torch.xlogy``)."""
    return -torch.xlogy(p, p).sum(-1)


def _predictive_entropy(p: torch.Tensor) -> torch.Tensor:
    return _entropy(p.mean(0))


def _expected_entropy(p: torch.Tensor) -> torch.Tensor:
    return _entropy(p).mean(0)


def _mutual_information(p: torch.Tensor) -> torch.Tensor:
    return (_predictive_entropy(p) - _expected_entropy(p)).clamp_min(0)


def _max_probability(p: torch.Tensor) -> torch.Tensor:
    return 1 - p.mean(0).max(-1).values


_SCORE_FUNCTIONS = {
    "mutual_information": _mutual_information,
    "predictive_entropy": _predictive_entropy,
    "expected_entropy": _expected_entropy,
    "max_probability": _max_probability,
}


def predictive_entropy(probs: torch.Tensor) -> torch.Tensor:
    r"""Entropy of the predictive mean, :math:`H[\bar p_i] = -\sum_c \bar p_{ic} \log \bar p_{ic}`.

    Parameters
    ----------
    probs : tensor (S, N, C)
        Per-draw class probabilities.

    Returns
    -------
    tensor (N,)
        Values in :math:`[0, \log C]`.
    """
    return output(_predictive_entropy(check_probs(probs)), probs.device)


def expected_entropy(probs: torch.Tensor) -> torch.Tensor:
    r"""Mean entropy of the draws, :math:`\frac1S \sum_s H[p_{s,i}]` (the aleatoric part of the total entropy).

    Parameters
    ----------
    probs : tensor (S, N, C)
        Per-draw class probabilities.

    Returns
    -------
    tensor (N,)
        Values in :math:`[0, \log C]`, never above :func:`predictive_entropy` (concavity of :math:`H`).
    """
    return output(_expected_entropy(check_probs(probs)), probs.device)


def mutual_information(probs: torch.Tensor) -> torch.Tensor:
    r"""Mutual information between the label and the weights, :math:`H[\bar p_i] - \frac1S \sum_s H[p_{s,i}]`.

    The difference is computed in float64 and clamped at 0, since rounding can make it slightly negative when the
    draws (nearly) agree; the exact value is non-negative by Jensen's inequality.

    Parameters
    ----------
    probs : tensor (S, N, C)
        Per-draw class probabilities.

    Returns
    -------
    tensor (N,)
        Values in :math:`[0, \min(\log C, \log S)]`.
    """
    return output(_mutual_information(check_probs(probs)), probs.device)


def uncertainty_score(probs: torch.Tensor, score: str = "mutual_information") -> torch.Tensor:
    r"""A per-example uncertainty score, larger meaning more uncertain.

    Parameters
    ----------
    probs : tensor (S, N, C)
        Per-draw class probabilities.
    score : {"mutual_information", "predictive_entropy", "expected_entropy", "max_probability"}
        :math:`I_i`, :math:`H[\bar p_i]`, :math:`\frac1S \sum_s H[p_{s,i}]` or :math:`1 - \max_c \bar p_{ic}`.

    Returns
    -------
    tensor (N,)
        The score in float64 on the device of ``probs``.

    Raises
    ------
    ValueError
        If ``score`` is not one of the names above (the message lists them) or ``probs`` is invalid.
    """
    score = check_choice(score, "score", SCORES)
    return output(_SCORE_FUNCTIONS[score](check_probs(probs)), probs.device)
