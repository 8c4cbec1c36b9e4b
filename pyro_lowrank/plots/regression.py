"""Posterior predictive band for one-dimensional regression."""

from __future__ import annotations

import torch
from matplotlib.figure import Figure

from pyro_lowrank.metrics import (
    picp,
    predictive_interval,
    regression_predictive_moments,
)

__all__ = ["ppc_band"]


def ppc_band(
    x: torch.Tensor,
    means: torch.Tensor,
    scales: torch.Tensor,
    y: torch.Tensor | None = None,
    level: float = 0.95,
    method: str = "gaussian",
    num_draws: int = 0,
) -> Figure:
    r"""Predictive mean and central ``level`` interval against a scalar input, with the observations on top.

    The draws are Gaussians :math:`\mathcal N(\mu_{s,i}, \sigma_{s,i}^2)`; the line is the predictive mean
    :math:`\bar\mu_i = \frac1S \sum_s \mu_{s,i}` and the band the interval of
    :func:`pyro_lowrank.metrics.predictive_interval` (``method``), whose coverage of ``y`` (PICP) is in the title.

    Parameters
    ----------
    x : tensor (N,) or (N, 1)
        Scalar inputs; the points are sorted by x before drawing.
    means, scales : tensor (S, N)
        Per-draw predictive means and standard deviations.
    y : tensor (N,), optional
        Observed targets, drawn as points.
    level : float
        Nominal coverage of the band.
    method : {"gaussian", "mixture"}
        Interval construction.
    num_draws : int
        Also draw the first ``num_draws`` per-draw mean curves :math:`\mu_{s,\cdot}` (function-space samples).
    """
    x = torch.as_tensor(x).detach().cpu().to(torch.float64)
    if x.dim() == 2 and x.shape[1] == 1:
        x = x[:, 0]
    if x.dim() != 1:
        raise ValueError(f"x must have shape (N,) or (N, 1) for a band plot, got {tuple(x.shape)}")
    means = torch.as_tensor(means).detach().cpu().to(torch.float64)
    scales = torch.as_tensor(scales).detach().cpu().to(torch.float64)
    if means.dim() != 2 or means.shape[1] != x.shape[0]:
        raise ValueError(f"means must have shape (S, {x.shape[0]}) to match x, got {tuple(means.shape)}")
    if y is not None:
        y = torch.as_tensor(y).detach().cpu().to(torch.float64).reshape(-1)
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"y must have {x.shape[0]} targets to match x, got shape {tuple(y.shape)}")
    order = torch.argsort(x)
    xs = x[order].numpy()
    mean, _ = regression_predictive_moments(means, scales)
    lower, upper = predictive_interval(means, scales, level=level, method=method)
    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.subplots()
    ax.fill_between(xs, lower[order].numpy(), upper[order].numpy(), alpha=0.3, label=f"{level:.0%} interval")
    ax.plot(xs, mean[order].numpy(), color="C0", linewidth=2, label="predictive mean")
    for s in range(min(num_draws, means.shape[0])):
        ax.plot(xs, means[s, order].numpy(), color="C0", linewidth=0.5, alpha=0.4)
    title = "posterior predictive"
    if y is not None:
        ax.scatter(xs, y[order].numpy(), s=8, color="black", label="observed")
        title += f" (PICP {picp(means, scales, y, level=level, method=method):.3f} at {level:.0%})"
    ax.set_title(title)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.legend(loc="best")
    return fig
