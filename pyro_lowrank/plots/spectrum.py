"""Singular spectra, the rank chosen from them, and ranks over training (rank selection)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from matplotlib.figure import Figure

from pyro_lowrank.diagnostics import energy_fraction

__all__ = ["rank_dynamics_plot", "spectrum_plot"]


def spectrum_plot(
    singular_values: torch.Tensor | Mapping[str, torch.Tensor],
    rank: int | Mapping[str, int] | None = None,
    energy: float | None = None,
) -> Figure:
    r"""Singular values :math:`\sigma_i` (log scale, left) and the retained energy fraction
    :math:`\sum_{i \le k}\sigma_i^2 / \sum_i \sigma_i^2` against k (right), with the chosen rank marked.

    By Eckart–Young–Mirsky the best rank-k approximation error is :math:`(\sum_{i>k}\sigma_i^2)^{1/2}`, so the right
    panel reads off how much of the weight a rank keeps.

    Parameters
    ----------
    singular_values : tensor (p,) or mapping name -> tensor
        Descending singular values (e.g. from :func:`pyro_lowrank.diagnostics.singular_spectrum`); a mapping
        draws one line per layer.
    rank : int or mapping name -> int, optional
        Chosen rank(s), drawn as vertical dashed lines.
    energy : float, optional
        Target energy fraction, drawn as a horizontal dotted line on the right panel.
    """
    spectra = dict(singular_values) if isinstance(singular_values, Mapping) else {"weight": singular_values}
    ranks = dict(rank) if isinstance(rank, Mapping) else ({name: rank for name in spectra} if rank else {})
    fig = Figure(figsize=(10.0, 4.0), layout="constrained")
    left, right = fig.subplots(1, 2)
    for index, (name, values) in enumerate(spectra.items()):
        values = values.detach().cpu().to(torch.float64).reshape(-1)
        color = f"C{index % 10}"
        k = torch.arange(1, values.numel() + 1).numpy()
        left.semilogy(k, values.clamp_min(torch.finfo(torch.float64).tiny).numpy(), color=color, label=name)
        right.plot(torch.arange(values.numel() + 1).numpy(), energy_fraction(values).numpy(), color=color, label=name)
        if name in ranks and ranks[name] is not None:
            for ax in (left, right):
                ax.axvline(ranks[name], color=color, linestyle="--", linewidth=1)
    if energy is not None:
        right.axhline(energy, color="black", linestyle=":", linewidth=1, label=f"{energy:.0%} energy")
    left.set_xlabel("index i")
    left.set_ylabel("singular value")
    left.set_title("singular spectrum")
    right.set_xlabel("rank k")
    right.set_ylabel("energy fraction kept")
    right.set_ylim(0, 1.02)
    right.set_title("Eckart-Young-Mirsky energy")
    for ax in (left, right):
        ax.legend(loc="best")
    return fig


def rank_dynamics_plot(
    effective_ranks: Mapping[str, Sequence[int]],
    ranks: Mapping[str, Sequence[int]] | None = None,
    *,
    prune_epochs: Sequence[int] | None = None,
    title: str = "rank dynamics",
) -> Figure:
    r"""Rank of each layer over training: the effective rank (components with :math:`\log\alpha_k < \tau`) as
    solid lines and, optionally, the rank after pruning as dashed steps, one colour per layer.

    Parameters
    ----------
    effective_ranks : mapping name -> sequence of int
        Per layer, one value per epoch (e.g. regrouped from ``FitResult.effective_ranks``, a list of
        ``{layer: rank}`` dicts); epochs are numbered from 1 on the x axis.
    ranks : mapping name -> sequence of int, optional
        Per layer, the rank after each epoch's pruning (``FitResult.ranks``), same lengths.
    prune_epochs : sequence of int, optional
        Epochs (counted from 1) at which pruning ran, drawn as faint vertical lines.
    title : str
        Axes title.

    Returns
    -------
    matplotlib.figure.Figure
        One axes: rank against epoch.

    Raises
    ------
    ValueError
        An empty mapping, or ``ranks`` whose layers or lengths differ from ``effective_ranks``.
    """
    if not effective_ranks:
        raise ValueError("effective_ranks must map at least one layer name to its per-epoch ranks, got an empty "
                         "mapping")
    if ranks is not None:
        if set(ranks) != set(effective_ranks):
            raise ValueError(f"ranks must have the layers of effective_ranks {sorted(effective_ranks)}, got "
                             f"{sorted(ranks)}")
        for name, values in ranks.items():
            if len(values) != len(effective_ranks[name]):
                raise ValueError(f"ranks[{name!r}] must have one value per epoch ({len(effective_ranks[name])}), "
                                 f"got {len(values)}")
    fig = Figure(figsize=(6.5, 4.0), layout="constrained")
    ax = fig.subplots()
    for epoch in prune_epochs or ():
        ax.axvline(epoch, color="0.85", linewidth=0.8, zorder=0)
    for index, (name, values) in enumerate(effective_ranks.items()):
        color = f"C{index % 10}"
        epochs = list(range(1, len(values) + 1))
        ax.plot(epochs, list(values), color=color, label=f"{name} effective")
        if ranks is not None:
            ax.step(epochs, list(ranks[name]), where="post", color=color, linestyle="--", linewidth=1,
                    label=f"{name} after pruning")
    ax.set_xlabel("epoch")
    ax.set_ylabel("rank")
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.legend(loc="best", fontsize="small")
    return fig
