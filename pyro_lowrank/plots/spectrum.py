"""Singular spectra and the rank chosen from them."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from matplotlib.figure import Figure

from pyro_lowrank.diagnostics import energy_fraction

__all__ = ["spectrum_plot"]


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
