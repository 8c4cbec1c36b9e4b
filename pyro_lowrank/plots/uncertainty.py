"""Uncertainty scores in and out of distribution, and selective-prediction curves."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from matplotlib.figure import Figure

from pyro_lowrank._validation import check_positive_int
from pyro_lowrank.metrics import ood_detection_from_scores

__all__ = ["selective_prediction_plot", "uncertainty_histogram"]


def uncertainty_histogram(
    scores_in: torch.Tensor,
    scores_out: torch.Tensor,
    num_bins: int = 30,
    score_name: str = "mutual information",
) -> Figure:
    r"""Overlaid density histograms of an uncertainty score on in-distribution and OOD inputs, on shared bins.

    The better the two histograms separate, the higher the OOD AUROC, shown in the title (the probability that a
    random OOD input scores above a random in-distribution input).
    """
    num_bins = check_positive_int(num_bins, "num_bins")
    scores_in = torch.as_tensor(scores_in).detach().cpu().to(torch.float64).reshape(-1)
    scores_out = torch.as_tensor(scores_out).detach().cpu().to(torch.float64).reshape(-1)
    result = ood_detection_from_scores(scores_in, scores_out)
    both = torch.cat([scores_in, scores_out])
    low, high = float(both.min()), float(both.max())
    edges = np.linspace(low, high if high > low else low + 1.0, num_bins + 1)
    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.subplots()
    ax.hist(scores_in.numpy(), bins=edges, density=True, alpha=0.6, label="in-distribution")
    ax.hist(scores_out.numpy(), bins=edges, density=True, alpha=0.6, label="out-of-distribution")
    ax.set_xlabel(score_name)
    ax.set_ylabel("density")
    ax.set_title(f"{score_name}: OOD AUROC {result['auroc']:.3f}")
    ax.legend(loc="best")
    return fig


def selective_prediction_plot(
    curves: Mapping[str, Mapping[str, torch.Tensor]],
    ylabel: str = "accuracy",
) -> Figure:
    r"""Metric on the retained examples against the retained fraction, one line per method.

    Each curve is the output of :func:`pyro_lowrank.metrics.selective_prediction_curve` (``{"retention", "value"}``):
    examples are retained from the least uncertain upwards, so a useful uncertainty gives a curve that improves
    as the retention drops (accuracy rises, error falls).
    """
    if not isinstance(curves, Mapping) or not curves:
        raise ValueError("curves must be a non-empty mapping name -> {'retention', 'value'}")
    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.subplots()
    for name, curve in curves.items():
        if "retention" not in curve or "value" not in curve:
            raise ValueError(f"curves[{name!r}] must have keys 'retention' and 'value', got {sorted(curve)}")
        retention = torch.as_tensor(curve["retention"]).detach().cpu().reshape(-1)
        value = torch.as_tensor(curve["value"]).detach().cpu().reshape(-1)
        if retention.shape != value.shape:
            raise ValueError(f"curves[{name!r}]: 'retention' and 'value' must have the same length, got "
                             f"{retention.numel()} and {value.numel()}")
        order = torch.argsort(retention)
        ax.plot(retention[order].numpy(), value[order].numpy(), marker="o", markersize=3, label=name)
    ax.set_xlabel("retained fraction")
    ax.set_ylabel(ylabel)
    ax.set_title(f"selective prediction: {ylabel} vs retention")
    ax.invert_xaxis()
    ax.legend(loc="best")
    return fig
