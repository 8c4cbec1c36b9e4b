r"""Point-prediction error and likelihood of a Bayesian regression model's predictive distribution.

Inputs are per-draw Gaussian predictive parameters, ``means`` :math:`\mu_{si}` and ``scales`` :math:`\sigma_{si} > 0`
of shape ``(S, N)``, and targets :math:`y_i` of shape ``(N,)``. The predictive distribution of example :math:`i` is
the equal-weight Gaussian mixture :math:`p(y \mid x_i) = \frac1S \sum_s \mathcal N(y; \mu_{si}, \sigma_{si}^2)` with
moments (law of total variance)

.. math::
    \hat y_i = \frac1S \sum_s \mu_{si}, \qquad
    \hat\sigma_i^2 = \frac1S \sum_s \sigma_{si}^2 + \frac1S \sum_s (\mu_{si} - \hat y_i)^2 .

* RMSE :math:`\sqrt{\frac1N \sum_i (\hat y_i - y_i)^2}`, MAE :math:`\frac1N \sum_i |\hat y_i - y_i|`;
* mixture NLL :math:`-\frac1N \sum_i \log \frac1S \sum_s \mathcal N(y_i; \mu_{si}, \sigma_{si}^2)`.

Intervals, coverage and calibration are in :mod:`pyro_lowrank.metrics.intervals`.
"""

from __future__ import annotations

import math

import torch

from pyro_lowrank.metrics._checks import check_regression, check_targets, output

__all__ = ["gaussian_mixture_nll", "mae", "regression_predictive_moments", "rmse"]


def _moments(mu: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 mixture mean and standard deviation from validated float64 draws."""
    mean = mu.mean(0)
    variance = sigma.square().mean(0) + (mu - mean).square().mean(0)
    return mean, variance.sqrt()


def regression_predictive_moments(means: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Mean and standard deviation of the Gaussian-mixture predictive distribution.

    .. math::
        \hat y_i = \frac1S \sum_s \mu_{si}, \qquad
        \hat\sigma_i = \Big(\frac1S \sum_s \sigma_{si}^2 + \frac1S \sum_s (\mu_{si} - \hat y_i)^2\Big)^{1/2},

    the aleatoric term plus the population (divide-by-:math:`S`) variance of the draw means (the epistemic term).

    Parameters
    ----------
    means, scales : tensor (S, N)
        Per-draw Gaussian means and standard deviations (``scales > 0``).

    Returns
    -------
    (tensor (N,), tensor (N,))
        :math:`\hat y` and :math:`\hat\sigma` in float64 on the device of ``means``.
    """
    mu, sigma = check_regression(means, scales)
    mean, std = _moments(mu, sigma)
    return output(mean, means.device), output(std, means.device)


def rmse(means: torch.Tensor, y: torch.Tensor) -> float:
    r"""Root mean squared error of the predictive mean, :math:`\sqrt{\frac1N \sum_i (\hat y_i - y_i)^2}`.

    Parameters
    ----------
    means : tensor (S, N)
        Per-draw predictive means (use ``means.unsqueeze(0)`` for a single point prediction).
    y : tensor (N,)
        Targets.
    """
    mu, _ = check_regression(means)
    target = check_targets(y, mu.shape[1]).to(mu.device)
    return float((mu.mean(0) - target).square().mean().sqrt())


def mae(means: torch.Tensor, y: torch.Tensor) -> float:
    r"""Mean absolute error of the predictive mean, :math:`\frac1N \sum_i |\hat y_i - y_i|`.

    Parameters
    ----------
    means : tensor (S, N)
        Per-draw predictive means (use ``means.unsqueeze(0)`` for a single point prediction).
    y : tensor (N,)
        Targets.
    """
    mu, _ = check_regression(means)
    target = check_targets(y, mu.shape[1]).to(mu.device)
    return float((mu.mean(0) - target).abs().mean())


def gaussian_mixture_nll(means: torch.Tensor, scales: torch.Tensor, y: torch.Tensor) -> float:
    r"""Mean negative log-density of the targets under the equal-weight Gaussian mixture of the draws.

    .. math::
        \mathrm{NLL} = -\frac1N \sum_i \Big[\operatorname{logsumexp}_s \Big(-\frac{(y_i - \mu_{si})^2}
        {2\sigma_{si}^2} - \log \sigma_{si} - \tfrac12 \log 2\pi\Big) - \log S\Big],

    evaluated in float64 with ``torch.logsumexp`` so that far-away targets do not underflow.

    Parameters
    ----------
    means, scales : tensor (S, N)
        Per-draw Gaussian means and standard deviations (``scales > 0``).
    y : tensor (N,)
        Targets.
    """
    mu, sigma = check_regression(means, scales)
    target = check_targets(y, mu.shape[1]).to(mu.device)
    log_density = -0.5 * ((target - mu) / sigma).square() - sigma.log() - 0.5 * math.log(2 * math.pi)
    log_mixture = torch.logsumexp(log_density, 0) - math.log(mu.shape[0])
    return float(-log_mixture.mean())
