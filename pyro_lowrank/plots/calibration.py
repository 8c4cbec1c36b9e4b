"""Reliability diagrams: accuracy against confidence per bin, the picture behind the ECE."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from matplotlib.figure import Figure

from pyro_lowrank.metrics import expected_calibration_error, reliability_bins

__all__ = ["reliability_diagram"]


def reliability_diagram(
    probs: torch.Tensor | Mapping[str, torch.Tensor],
    y: torch.Tensor,
    num_bins: int = 15,
    binning: str = "equal_width",
) -> Figure:
    r"""Accuracy against confidence per bin, with the diagonal of perfect calibration and the ECE in the title.

    A bar of bin :math:`B_m` spans the bin's edges and has height :math:`\mathrm{acc}(B_m)`; a calibrated model's bars
    follow the diagonal :math:`\mathrm{acc} = \mathrm{conf}`, and the ECE is the count-weighted mean gap
    :math:`\sum_m \frac{|B_m|}{N}\,|\mathrm{acc}(B_m) - \mathrm{conf}(B_m)|`.

    Parameters
    ----------
    probs : tensor (S, N, C) or mapping name -> tensor
        Per-draw class probabilities; a mapping draws one panel per method, side by side.
    y : tensor (N,)
        True labels.
    num_bins : int
        Number of bins.
    binning : {"equal_width", "equal_mass"}
        Equal-width bins on [0, 1] or bins holding equal numbers of points.
    """
    methods = dict(probs) if isinstance(probs, Mapping) else {"model": probs}
    fig = Figure(figsize=(4.0 * len(methods), 4.0), layout="constrained")
    axes = fig.subplots(1, len(methods), squeeze=False)[0]
    for ax, (name, p) in zip(axes, methods.items()):
        p, labels = p.detach().cpu(), y.detach().cpu()
        bins = reliability_bins(p, labels, num_bins, binning=binning)
        edges = bins["edges"].numpy()
        accuracy = torch.nan_to_num(bins["accuracy"], nan=0.0).numpy()
        ax.bar(edges[:-1], accuracy, width=edges[1:] - edges[:-1], align="edge", edgecolor="black", alpha=0.7,
               label="accuracy")
        ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
        ece = expected_calibration_error(p, labels, num_bins, binning=binning)
        ax.set_title(f"{name} (ECE {ece:.3f})")
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.legend(loc="upper left")
    return fig
