"""Weight-entry correlation heat maps: the covariance lemma beside Monte Carlo."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from matplotlib.figure import Figure

__all__ = ["correlation_heatmap"]


def correlation_heatmap(
    closed_form: torch.Tensor,
    monte_carlo: torch.Tensor | None = None,
    labels: Sequence[str] | None = None,
) -> Figure:
    r"""Correlation matrices of selected weight entries as heat maps on a shared [-1, 1] colour scale.

    Under :math:`q_W = T_\#(q_A \otimes q_B)` entries that share a row or a column of W are correlated and entries
    sharing neither are independent (:meth:`~pyro_lowrank.distributions.LowRankMatrixNormal.covariance`); drawing the
    closed form beside the empirical correlation of samples (from
    :func:`pyro_lowrank.diagnostics.weight_correlation`) checks the lemma by eye.

    Parameters
    ----------
    closed_form : tensor (K, K)
        Correlation matrix from the covariance lemma.
    monte_carlo : tensor (K, K), optional
        Empirical correlation from posterior samples; drawn in a second panel.
    labels : sequence of str, optional
        K tick labels, e.g. ``"W[0,3]"``.
    """
    panels = {"closed form": closed_form}
    if monte_carlo is not None:
        panels["Monte Carlo"] = monte_carlo
    size = closed_form.shape[-1]
    for name, matrix in panels.items():
        if matrix.dim() != 2 or matrix.shape != (size, size):
            raise ValueError(f"{name} correlation must be a square ({size}, {size}) matrix, got {tuple(matrix.shape)}")
    if labels is not None and len(labels) != size:
        raise ValueError(f"labels must have {size} entries, got {len(labels)}")
    fig = Figure(figsize=(4.5 * len(panels) + 1.0, 4.5), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    image = None
    for ax, (name, matrix) in zip(axes, panels.items()):
        image = ax.imshow(matrix.detach().cpu().to(torch.float64).numpy(), vmin=-1.0, vmax=1.0, cmap="RdBu_r")
        ax.set_title(name)
        if labels is not None:
            ax.set_xticks(range(size), labels, rotation=90, fontsize=7)
            ax.set_yticks(range(size), labels, fontsize=7)
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="correlation")
    return fig
