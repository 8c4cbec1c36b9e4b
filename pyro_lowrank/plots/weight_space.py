r"""Figures of the weight-space study: sampled vs linearised Laplace across the prior precision, the share of the
Laplace posterior variance in the GGN's kernel, and one-dimensional predictive bands per method.

Every function takes plain tensors or arrays and returns a :class:`matplotlib.figure.Figure` built without pyplot.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

__all__ = ["kernel_share_plot", "predictive_bands_plot", "underfitting_plot"]


def _vector(values: object, name: str, length: int | None = None) -> np.ndarray:
    array = np.asarray(torch.as_tensor(values).detach().cpu().to(torch.float64)).reshape(-1)
    if length is not None and array.shape[0] != length:
        raise ValueError(f"{name} must hold {length} values to match prior_precisions, got {array.shape[0]}")
    return array


def _alphas(prior_precisions: object) -> np.ndarray:
    alphas = _vector(prior_precisions, "prior_precisions")
    if alphas.size == 0 or not np.all(np.isfinite(alphas)) or np.any(alphas <= 0):
        raise ValueError(f"prior_precisions must be a non-empty sequence of finite numbers > 0, got {alphas.tolist()}")
    return alphas


def underfitting_plot(
    prior_precisions: Sequence[float] | torch.Tensor | np.ndarray,
    nll: Mapping[str, Sequence[float] | torch.Tensor | np.ndarray],
    rmse: Mapping[str, Sequence[float] | torch.Tensor | np.ndarray],
    *,
    selected: Mapping[str, float] | None = None,
    reference_nll: float | None = None,
    reference_rmse: float | None = None,
    log_y: bool = True,
    title: str = "",
) -> Figure:
    r"""Test NLL (left) and RMSE (right) of several predictives against the prior precision :math:`\alpha` (log x).

    Meant for the Laplace approximation :math:`\mathcal N(\hat\theta, (G + \alpha I)^{-1})`: the *sampled*
    predictive runs the network at the draws :math:`\theta_s`, the *linearised* one its first-order Taylor model
    :math:`f(x;\hat\theta) + J_x(\theta_s - \hat\theta)`. A sampled curve that degrades at prior precisions where the
    linearised one still matches the MAP (``reference_*``) is the under-fitting of the sampled Laplace.

    Parameters
    ----------
    prior_precisions : sequence of float (A,)
        The alphas, all > 0.
    nll, rmse : mapping label -> sequence (A,)
        One curve per predictive (the same labels in both); non-finite values are left out of the line.
    selected : mapping label -> float, optional
        The alpha a predictive's validation tuning picks, drawn as a dashed vertical line in that curve's colour on
        both panels.
    reference_nll, reference_rmse : float, optional
        The point estimate's (MAP's) values, drawn as a dotted black horizontal line.
    log_y : bool
        Logarithmic RMSE axis and symmetric-logarithmic NLL axis (linear within ±1): a sampled predictive at a small
        alpha can be orders of magnitude off.
    title : str
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
        Two axes: NLL, RMSE.
    """
    alphas = _alphas(prior_precisions)
    if set(nll) != set(rmse) or not nll:
        raise ValueError(f"nll and rmse must be non-empty and have the same labels, got {sorted(nll)} and "
                         f"{sorted(rmse)}")
    selected = dict(selected or {})
    unknown = set(selected) - set(nll)
    if unknown:
        raise ValueError(f"selected must use labels of the curves {sorted(nll)}, got {sorted(unknown)}")
    fig = Figure(figsize=(10.0, 4.0), layout="constrained")
    left, right = fig.subplots(1, 2)
    for index, label in enumerate(nll):
        color = f"C{index % 10}"
        for ax, values, name in ((left, nll[label], "nll"), (right, rmse[label], "rmse")):
            ax.plot(alphas, _vector(values, f"{name}[{label!r}]", alphas.size), color=color, marker="o",
                    markersize=3, label=label)
            if label in selected and selected[label] is not None:
                ax.axvline(float(selected[label]), color=color, linestyle="--", linewidth=1,
                           label=f"{label}: validation pick α={float(selected[label]):.3g}")
    for ax, value, name in ((left, reference_nll, "NLL"), (right, reference_rmse, "RMSE")):
        if value is not None and math.isfinite(value):
            ax.axhline(float(value), color="black", linestyle=":", linewidth=1, label=f"MAP {name}")
    if log_y:
        left.set_yscale("symlog", linthresh=1.0)
        right.set_yscale("log")
        finite = [v for values in nll.values() for v in _vector(values, "nll") if math.isfinite(v)]
        finite += [float(reference_nll)] if reference_nll is not None and math.isfinite(reference_nll) else []
        if finite:  # symlog would otherwise open a decade of empty negative range below positive curves
            low = min(finite)
            left.set_ylim(bottom=low - 0.25 * (abs(low) + 1.0))
    for ax, name in ((left, "test NLL"), (right, "test RMSE")):
        ax.set_xscale("log")
        ax.set_xlabel("prior precision α")
        ax.set_ylabel(name)
        ax.legend(loc="best", fontsize="x-small")
    left.set_title("negative log-likelihood")
    right.set_title("RMSE of the predictive mean")
    if title:
        fig.suptitle(title)
    return fig


def kernel_share_plot(
    prior_precisions: Sequence[float] | torch.Tensor | np.ndarray,
    shares: Mapping[str, Sequence[float] | torch.Tensor | np.ndarray],
    *,
    floors: Mapping[str, float] | None = None,
    title: str = "",
) -> Figure:
    r"""The share :math:`s(\alpha) = \frac{\dim\ker G/\alpha}{\sum_i 1/(\lambda_i + \alpha)}` of the Laplace
    posterior's total variance that lies in the GGN's kernel, against the prior precision (log x), one line per
    network.

    Parameters
    ----------
    prior_precisions : sequence of float (A,)
    shares : mapping label -> sequence (A,)
        Shares in [0, 1].
    floors : mapping label -> float, optional
        The large-alpha limit :math:`\dim\ker G / D` per label, drawn dotted in the line's colour.
    title : str

    Returns
    -------
    matplotlib.figure.Figure
        One axes.
    """
    alphas = _alphas(prior_precisions)
    if not shares:
        raise ValueError("shares must hold at least one curve, got an empty mapping")
    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.subplots()
    for index, (label, values) in enumerate(shares.items()):
        color = f"C{index % 10}"
        ax.plot(alphas, _vector(values, f"shares[{label!r}]", alphas.size), color=color, marker="o", markersize=3,
                label=label)
        if floors and label in floors:
            ax.axhline(float(floors[label]), color=color, linestyle=":", linewidth=1, label=f"{label}: dim ker / D")
    ax.set_xscale("log")
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("prior precision α")
    ax.set_ylabel("share of tr Σ in ker G")
    ax.set_title(title or "Laplace posterior variance in the GGN kernel")
    ax.legend(loc="best", fontsize="x-small")
    return fig


def predictive_bands_plot(
    x: Sequence[float] | torch.Tensor | np.ndarray,
    means: Mapping[str, torch.Tensor | np.ndarray],
    noise: Mapping[str, float | torch.Tensor | np.ndarray],
    *,
    x_train: Sequence[float] | torch.Tensor | np.ndarray | None = None,
    y_train: Sequence[float] | torch.Tensor | np.ndarray | None = None,
    reference: tuple[object, object] | None = None,
    num_std: float = 2.0,
    num_draws: int = 0,
    ncols: int = 3,
    title: str = "",
) -> Figure:
    r"""Predictive bands of several methods on a scalar input, one panel per method, with the training points.

    With draws :math:`\mu_{s,i}` of the network output and the predictive noise :math:`\sigma_i`, the line is
    :math:`\bar\mu_i = \frac1S\sum_s\mu_{s,i}` and the band :math:`\bar\mu_i \pm k\sqrt{v_i + \sigma_i^2}`,
    :math:`v_i = \frac1S\sum_s(\mu_{s,i} - \bar\mu_i)^2` (k = ``num_std``): the spread of the draws' means plus the
    observation noise. A darker inner band shows :math:`\pm k\sqrt{v_i}` alone (the weight uncertainty).

    Parameters
    ----------
    x : sequence (N,)
        The scalar inputs of the draws (sorted before drawing).
    means : mapping method -> tensor (S, N)
        Per-draw network outputs.
    noise : mapping method -> float or tensor (N,) or (S, N)
        Observation noise standard deviation (a per-draw tensor is averaged in variance over draws).
    x_train, y_train : sequence (M,), optional
        Training points, drawn on every panel.
    reference : (x, y), optional
        A reference curve (e.g. the true regression function), drawn dashed black on every panel.
    num_std : float
        k, the band's half-width in standard deviations.
    num_draws : int
        Also draw the first ``num_draws`` function draws as thin lines.
    ncols : int
        Panels per row.
    title : str

    Returns
    -------
    matplotlib.figure.Figure
        One axes per method (in the order of ``means``), sharing both axes.
    """
    xs = _vector(x, "x")
    if not means:
        raise ValueError("means must hold at least one method, got an empty mapping")
    missing = set(means) - set(noise)
    if missing:
        raise ValueError(f"noise must give a value for every method of means, missing {sorted(missing)}")
    if not (num_std > 0 and math.isfinite(num_std)):
        raise ValueError(f"num_std must be a finite number > 0, got {num_std!r}")
    if (x_train is None) != (y_train is None):
        raise ValueError("x_train and y_train must be given together")
    order = np.argsort(xs)
    count = len(means)
    ncols = max(1, min(int(ncols), count))
    nrows = math.ceil(count / ncols)
    fig = Figure(figsize=(4.0 * ncols, 3.2 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True).reshape(-1)
    for ax in axes[count:]:
        fig.delaxes(ax)
    for ax, (name, draws) in zip(axes, means.items()):
        draws = torch.as_tensor(draws).detach().cpu().to(torch.float64)
        if draws.dim() == 1:
            draws = draws[None]
        if draws.dim() != 2 or draws.shape[1] != xs.size:
            raise ValueError(f"means[{name!r}] must have shape (S, {xs.size}) to match x, got {tuple(draws.shape)}")
        sigma = torch.as_tensor(noise[name], dtype=torch.float64).detach().cpu()
        noise_var = sigma.square().mean(0) if sigma.dim() == 2 else sigma.square().expand(xs.size)
        center = draws.mean(0)
        spread = draws.var(0, unbiased=False)
        total = (spread + noise_var).sqrt().numpy()[order]
        epistemic = spread.sqrt().numpy()[order]
        mid = center.numpy()[order]
        xo = xs[order]
        ax.fill_between(xo, mid - num_std * total, mid + num_std * total, color="C0", alpha=0.2,
                        label=f"±{num_std:g} sd (draws + noise)")
        ax.fill_between(xo, mid - num_std * epistemic, mid + num_std * epistemic, color="C0", alpha=0.35,
                        label=f"±{num_std:g} sd (draws)")
        for s in range(min(num_draws, draws.shape[0])):
            ax.plot(xo, draws[s].numpy()[order], color="C0", linewidth=0.4, alpha=0.5)
        ax.plot(xo, mid, color="C0", linewidth=1.5, label="predictive mean")
        if reference is not None:
            rx, ry = _vector(reference[0], "reference x"), _vector(reference[1], "reference y")
            if rx.size != ry.size:
                raise ValueError(f"reference must be (x, y) of equal lengths, got {rx.size} and {ry.size}")
            ro = np.argsort(rx)
            ax.plot(rx[ro], ry[ro], color="black", linestyle="--", linewidth=1, label="true function")
        if x_train is not None:
            ax.scatter(_vector(x_train, "x_train"), _vector(y_train, "y_train"), s=6, color="black", zorder=3,
                       label="training data")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("x")
    axes[0].set_ylabel("y")
    axes[0].legend(loc="best", fontsize="x-small")
    if title:
        fig.suptitle(title)
    return fig
