r"""Selective prediction: a metric on the examples the model is most certain about.

Given a per-example quantity :math:`v_i` (e.g. 0/1 correctness for accuracy, or the absolute error for MAE) and an
uncertainty :math:`u_i`, order the examples by increasing uncertainty, :math:`u_{\pi(1)} \le \dots \le u_{\pi(N)}`.
At retention :math:`r \in (0, 1]` the model answers the :math:`k(r) = \lceil r N \rceil` least uncertain examples and
the selective value is

.. math::
    V(r) = \frac{1}{k(r)} \sum_{j=1}^{k(r)} v_{\pi(j)} .

Ties are broken at random *in expectation*: if the cut falls inside a group :math:`T` of equal uncertainty, with
:math:`L` examples strictly less uncertain than the group, the group contributes :math:`(k - L)` times its mean,

.. math::
    V(r) = \frac{1}{k} \Big( \sum_{j \le L} v_{\pi(j)} + (k - L) \frac{1}{|T|} \sum_{i \in T} v_i \Big),

so the result never depends on the order of the data (a constant score, e.g. the zero mutual information of a
deterministic network, gives :math:`V(r) = \bar v` at every retention).

:math:`V(1)` is the plain mean of :math:`v`. A useful uncertainty makes :math:`V` improve as :math:`r` decreases
(accuracy rises, error falls).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from pyro_lowrank.metrics._checks import check_levels, check_nonempty_1d, output

__all__ = ["selective_prediction", "selective_prediction_curve"]

DEFAULT_RETENTION = tuple(k / 20 for k in range(1, 21))
"""Default retention grid: 0.05, 0.10, ..., 1.0 (20 values)."""


def _kept(retention: float, num: int) -> int:
    r""":math:`\lceil r N \rceil` guarded against round-off (``0.3 * 10`` is ``3.0000000000000004`` in floats)."""
    return max(1, min(num, math.ceil(retention * num * (1 - 1e-12))))


def _curve(values: torch.Tensor, uncertainty: torch.Tensor, retention: list[float]) -> torch.Tensor:
    sorted_u, order = torch.sort(uncertainty)
    running = torch.cat([values.new_zeros(1), values[order].cumsum(0)])
    kept = torch.tensor([_kept(r, values.numel()) for r in retention], device=values.device)
    cut = sorted_u[kept - 1]
    below = torch.searchsorted(sorted_u, cut, right=False)  # L: strictly less uncertain than the cut's tie group
    end = torch.searchsorted(sorted_u, cut, right=True)
    group_mean = (running[end] - running[below]) / (end - below).to(torch.float64)
    return (running[below] + (kept - below).to(torch.float64) * group_mean) / kept.to(torch.float64)


def _inputs(values: torch.Tensor, uncertainty: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    v = check_nonempty_1d(values, "values")
    u = check_nonempty_1d(uncertainty, "uncertainty", length=v.numel())
    return v, u.to(v.device)


def selective_prediction_curve(
    values: torch.Tensor,
    uncertainty: torch.Tensor,
    retention: Sequence[float] | torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    r"""Selective value :math:`V(r)` (mean of ``values`` over the :math:`\lceil rN \rceil` least uncertain examples).

    Parameters
    ----------
    values : tensor (N,)
        Per-example quantity to average, e.g. correctness (bool or 0/1) or absolute error.
    uncertainty : tensor (N,)
        Per-example uncertainty (larger = less certain), e.g. :func:`~pyro_lowrank.metrics.uncertainty_score` or a
        predictive standard deviation.
    retention : sequence of float or 1-D tensor, optional
        Retained fractions in :math:`(0, 1]`, in any order; default ``0.05, 0.10, ..., 1.0`` (20 values).

    Returns
    -------
    dict of float64 tensors (R,) on the device of ``values``
        ``"retention"`` (as given) and ``"value"`` (:math:`V(r)` at each retention).
    """
    grid = check_levels(DEFAULT_RETENTION if retention is None else retention, "retention", include_one=True)
    v, u = _inputs(values, uncertainty)
    return {
        "retention": output(torch.tensor(grid, dtype=torch.float64), values.device),
        "value": output(_curve(v, u, grid), values.device),
    }


def selective_prediction(values: torch.Tensor, uncertainty: torch.Tensor, retention: float = 0.9) -> float:
    r"""Selective value :math:`V(r)` at one retention :math:`r \in (0, 1]` (e.g. MAE at 90 % retention).

    Parameters
    ----------
    values : tensor (N,)
        Per-example quantity to average, e.g. correctness (bool or 0/1) or absolute error.
    uncertainty : tensor (N,)
        Per-example uncertainty (larger = less certain).
    retention : float
        Retained fraction in :math:`(0, 1]`.
    """
    grid = check_levels(retention, "retention", include_one=True)
    if len(grid) != 1:
        raise ValueError(f"retention must be a single number in (0, 1], got {retention!r}")
    v, u = _inputs(values, uncertainty)
    return float(_curve(v, u, grid)[0])
