r"""Detection by uncertainty: out-of-distribution inputs and misclassified inputs.

An uncertainty score :math:`u_i` (larger = more uncertain, see :mod:`pyro_lowrank.metrics.uncertainty`) is used as a
detector of a positive class. With positives :math:`P` and negatives :math:`Q`:

* AUROC is the area under the ROC curve, equal to the probability that a positive outranks a negative, ties counting
  one half: :math:`\frac{1}{|P||Q|} \sum_{i \in P} \sum_{j \in Q} (1[u_i > u_j] + \tfrac12 1[u_i = u_j])`. Constant
  scores (e.g. the mutual information of a deterministic network, which is 0) therefore give exactly 0.5.
* AUPR is the average precision :math:`\sum_k (R_k - R_{k-1}) P_k` over the score thresholds (precision
  :math:`P_k`, recall :math:`R_k`), as in ``sklearn.metrics.average_precision_score``. AUPR-OOD and AUPR-Err use
  the score with OOD / misclassified examples as positives; AUPR-In and AUPR-Succ use :math:`-u` with
  in-distribution / correctly classified examples as positives.
* Both areas are computed by scikit-learn in float64 and clipped to :math:`[0, 1]` against round-off.
* score ratio (the "MI ratio" when :math:`u` is the mutual information) :math:`\frac{\mathrm{mean}_{OOD}\, u}
  {\mathrm{mean}_{in}\, u}`.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from pyro_lowrank.metrics._checks import (
    check_choice,
    check_labels,
    check_nonempty_1d,
    check_probs,
)
from pyro_lowrank.metrics.uncertainty import _SCORE_FUNCTIONS, SCORES

__all__ = ["misclassification_detection", "ood_detection", "ood_detection_from_scores"]


def _numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().to(torch.float64).numpy()


def _unit(value: float) -> float:
    """An area in [0, 1], clipped against round-off in the summation (average precision can exceed 1 by an ulp)."""
    return min(1.0, max(0.0, float(value)))


def _score_ratio(mean_out: float, mean_in: float) -> float:
    """``mean_out / mean_in`` with the limits of the quotient when ``mean_in == 0``: +-inf, or NaN for 0 / 0."""
    if mean_in != 0:
        return mean_out / mean_in
    if mean_out == 0:
        return math.nan
    return math.copysign(math.inf, mean_out)


def ood_detection_from_scores(scores_in: torch.Tensor, scores_out: torch.Tensor) -> dict[str, float]:
    r"""Out-of-distribution detection metrics from precomputed uncertainty scores (larger = more uncertain).

    Use this directly when the score is not a function of class probabilities, e.g. the predictive standard deviation
    of a regression model (:func:`~pyro_lowrank.metrics.regression_predictive_moments`).

    Parameters
    ----------
    scores_in : tensor (N_in,)
        Scores of in-distribution examples (negatives).
    scores_out : tensor (N_out,)
        Scores of out-of-distribution examples (positives).

    Returns
    -------
    dict of float
        ``"auroc"``: AUROC with OOD positive (0.5 for constant scores); ``"aupr_ood"``: average precision with OOD
        positive and score :math:`u`; ``"aupr_in"``: average precision with in-distribution positive and score
        :math:`-u`; ``"score_ratio"``: :math:`\bar u_{OOD} / \bar u_{in}` (the MI ratio for the mutual information),
        ``inf`` when :math:`\bar u_{in} = 0 < \bar u_{OOD}` (``-inf`` if negative) and ``nan`` when both means are 0.
    """
    u_in = check_nonempty_1d(scores_in, "scores_in")
    u_out = check_nonempty_1d(scores_out, "scores_out")
    scores = np.concatenate([_numpy(u_in), _numpy(u_out)])
    is_out = np.concatenate([np.zeros(u_in.numel()), np.ones(u_out.numel())])
    from sklearn.metrics import average_precision_score, roc_auc_score  # imported on use: ~1 s at import time

    return {
        "auroc": _unit(roc_auc_score(is_out, scores)),
        "aupr_ood": _unit(average_precision_score(is_out, scores)),
        "aupr_in": _unit(average_precision_score(1 - is_out, -scores)),
        "score_ratio": _score_ratio(float(u_out.mean()), float(u_in.mean())),
    }


def ood_detection(
    probs_in: torch.Tensor, probs_out: torch.Tensor, score: str = "mutual_information"
) -> dict[str, float]:
    r"""Out-of-distribution detection by a classifier's uncertainty score.

    The paper's protocol uses the mutual information :math:`I_i = H[\bar p_i] - \frac1S \sum_s H[p_{s,i}]`; see
    :func:`ood_detection_from_scores` for the returned metrics.

    Parameters
    ----------
    probs_in : tensor (S, N_in, C)
        Per-draw class probabilities on in-distribution inputs.
    probs_out : tensor (S', N_out, C)
        Per-draw class probabilities on out-of-distribution inputs (same number of classes).
    score : {"mutual_information", "predictive_entropy", "expected_entropy", "max_probability"}
        The uncertainty score, see :func:`~pyro_lowrank.metrics.uncertainty_score`.

    Returns
    -------
    dict of float
        ``"auroc"``, ``"aupr_ood"``, ``"aupr_in"`` and ``"score_ratio"``.
    """
    score = check_choice(score, "score", SCORES)
    p_in = check_probs(probs_in, "probs_in")
    p_out = check_probs(probs_out, "probs_out")
    if p_in.shape[-1] != p_out.shape[-1]:
        raise ValueError(
            f"probs_out must have the number of classes of probs_in ({p_in.shape[-1]}), got shape "
            f"{tuple(p_out.shape)}"
        )
    fn = _SCORE_FUNCTIONS[score]
    return ood_detection_from_scores(fn(p_in), fn(p_out))


def misclassification_detection(
    probs: torch.Tensor, y: torch.Tensor, score: str = "mutual_information"
) -> dict[str, float]:
    r"""How well an uncertainty score separates misclassified from correctly classified examples.

    An example is misclassified when :math:`\arg\max_c \bar p_{ic} \ne y_i`.

    Parameters
    ----------
    probs : tensor (S, N, C)
        Per-draw class probabilities.
    y : tensor (N,)
        Integer labels in ``[0, C)``.
    score : {"mutual_information", "predictive_entropy", "expected_entropy", "max_probability"}
        The uncertainty score, see :func:`~pyro_lowrank.metrics.uncertainty_score`.

    Returns
    -------
    dict of float
        ``"auroc"``: AUROC with errors positive; ``"aupr_err"``: average precision with errors positive and score
        :math:`u`; ``"aupr_succ"``: average precision with correct predictions positive and score :math:`-u`.

    Notes
    -----
    When every prediction is correct or every prediction is wrong the three numbers are undefined: they are NaN and
    a ``RuntimeWarning`` says why (so evaluation loops over small or perfect test sets keep running).

    Raises
    ------
    ValueError
        On invalid input.
    """
    score = check_choice(score, "score", SCORES)
    p = check_probs(probs, y=y)
    labels = check_labels(y, p.shape[1], p.shape[2], p.device)
    wrong = _numpy(p.mean(0).argmax(-1) != labels)
    num_wrong = int(wrong.sum())
    if num_wrong in (0, wrong.size):
        warnings.warn(
            "misclassification_detection needs both correct and misclassified examples (AUROC is undefined "
            f"otherwise), got {num_wrong} misclassified out of {wrong.size}: returning NaN",
            RuntimeWarning,
            stacklevel=2,
        )
        return {"auroc": math.nan, "aupr_err": math.nan, "aupr_succ": math.nan}
    from sklearn.metrics import average_precision_score, roc_auc_score  # imported on use: ~1 s at import time

    u = _numpy(_SCORE_FUNCTIONS[score](p))
    return {
        "auroc": _unit(roc_auc_score(wrong, u)),
        "aupr_err": _unit(average_precision_score(wrong, u)),
        "aupr_succ": _unit(average_precision_score(1 - wrong, -u)),
    }
