"""Matplotlib figures. Every function returns a :class:`matplotlib.figure.Figure` built without pyplot, so it works
headless (no display, any backend) and never leaks global figure state; save with ``fig.savefig(path)``.

* :func:`reliability_diagram` — accuracy vs confidence per bin (ECE);
* :func:`ppc_band` — regression posterior predictive band with the observations;
* :func:`uncertainty_histogram` — an uncertainty score in and out of distribution (OOD AUROC);
* :func:`selective_prediction_plot` — a metric against the retained fraction;
* :func:`spectrum_plot` — singular spectrum and energy fraction with the chosen rank;
* :func:`rank_dynamics_plot` — effective and pruned ranks per layer over training (LRVD rank selection);
* :func:`correlation_heatmap` — weight-entry correlations, closed form beside Monte Carlo;
* :func:`underfitting_plot` — sampled vs linearised Laplace test NLL and RMSE against the prior precision;
* :func:`kernel_share_plot` — the share of the Laplace posterior variance in the GGN's kernel;
* :func:`predictive_bands_plot` — one-dimensional predictive bands, one panel per method.
"""

from pyro_lowrank.plots.calibration import reliability_diagram
from pyro_lowrank.plots.correlation import correlation_heatmap
from pyro_lowrank.plots.regression import ppc_band
from pyro_lowrank.plots.spectrum import rank_dynamics_plot, spectrum_plot
from pyro_lowrank.plots.uncertainty import selective_prediction_plot, uncertainty_histogram
from pyro_lowrank.plots.weight_space import kernel_share_plot, predictive_bands_plot, underfitting_plot

__all__ = [
    "correlation_heatmap",
    "kernel_share_plot",
    "ppc_band",
    "predictive_bands_plot",
    "rank_dynamics_plot",
    "reliability_diagram",
    "selective_prediction_plot",
    "spectrum_plot",
    "uncertainty_histogram",
    "underfitting_plot",
]
