"""Matplotlib figures. Every function returns a :class:`matplotlib.figure.Figure` built without pyplot, so it works
headless (no display, any backend) and never leaks global figure state."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from matplotlib.figure import Figure

from pyro_lowrank.metrics import expected_calibration_error, reliability_bins

__all__ = ["reliability_diagram"]


def reliability_diagram(
    probs: torch.Tensor | Mapping[str, torch.Tensor], y: torch.Tensor, num_bins: int = 15
) -> Figure:
    """Accuracy against confidence per equal-width bin, with the diagonal of perfect calibration and the ECE.

    Parameters
    ----------
    probs : tensor (S, N, C) or mapping name -> tensor
        Per-draw class probabilities; a mapping draws one panel per method, side by side.
    y : tensor (N,)
        True labels.
    num_bins : int
        Number of equal-width bins.
    """
    methods = dict(probs) if isinstance(probs, Mapping) else {"model": probs}
    fig = Figure(figsize=(4.0 * len(methods), 4.0), layout="constrained")
    axes = fig.subplots(1, len(methods), squeeze=False)[0]
    for ax, (name, p) in zip(axes, methods.items()):
        bins = reliability_bins(p.detach().cpu(), y.cpu(), num_bins)
        edges = bins["edges"].numpy()
        centers = 0.5 * (edges[1:] + edges[:-1])
        accuracy = torch.nan_to_num(bins["accuracy"], nan=0.0).numpy()
        ax.bar(centers, accuracy, width=edges[1] - edges[0], edgecolor="black", alpha=0.7, label="accuracy")
        ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
        ece = expected_calibration_error(p.detach().cpu(), y.cpu(), num_bins)
        ax.set_title(f"{name} (ECE {ece:.3f})")
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.legend(loc="upper left")
    return fig
