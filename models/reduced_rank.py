r"""Bayesian reduced-rank regression: a multi-output linear model whose coefficient matrix is low-rank.

Model: :math:`A \sim p_A`, :math:`B \sim p_B`, :math:`b \sim p_b` (one :class:`~pyro_lowrank.nn.LowRankLinear`) and,
for each datum, :math:`y_i \mid x_i \sim \mathcal N(A B^\top x_i + b, \sigma^2 I_m)` inside a data plate (the m outputs
are one event). With the log-uniform prior and :class:`~pyro_lowrank.guides.LRVDGuide` this is rank selection for
reduced-rank regression (Anderson 1951; Izenman 1975): the learned effective rank estimates the rank of the true
coefficient matrix.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from pyro_lowrank._validation import check_finite, check_last_dim, check_positive
from pyro_lowrank.distributions import FactorPrior
from pyro_lowrank.nn import LowRankLinear

from .data_plate import data_plate

__all__ = ["LowRankRegression"]


class LowRankRegression(PyroModule):
    """``y ~ N(x (A B^T)^T + b, noise_scale^2 I)`` with ``y`` of shape ``(N, out_features)``.

    Parameters
    ----------
    in_features, out_features : int
        n and m.
    rank : int
        r in [1, min(m, n)].
    noise_scale : float
        The fixed observation noise sigma, > 0.
    prior : FactorPrior, optional
        Factor prior of the layer (e.g. :class:`~pyro_lowrank.distributions.LogUniformPrior` for LRVD).
    **layer_kwargs
        Passed to :class:`~pyro_lowrank.nn.LowRankLinear` (``bias``, ``prior_scale``, ``init_scale_factor``).

    Notes
    -----
    ``forward(x, y=None, *, num_data=None, subsample_size=None)`` as for the library's other models; the mean is the
    deterministic site ``f`` of shape ``(N, out_features)`` per draw.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, *, noise_scale: float = 1.0,
                 prior: FactorPrior | None = None, **layer_kwargs) -> None:
        super().__init__()
        check_positive(noise_scale, "noise_scale")
        self.layer = LowRankLinear(in_features, out_features, rank, prior=prior, **layer_kwargs)
        self.register_buffer("noise_scale", torch.tensor(float(noise_scale)))

    def check_data(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """Shapes and finiteness of a dataset (``fit`` calls this once)."""
        name = f"LowRankRegression(in_features={self.layer.in_features})"
        check_last_dim(x, self.layer.in_features, "x", name)
        if x.dim() != 2:
            raise ValueError(f"x must have shape (N, {self.layer.in_features}), got {tuple(x.shape)}")
        if y is not None:
            expected = (x.shape[0], self.layer.out_features)
            if tuple(y.shape) != expected:
                raise ValueError(f"y must have shape {expected} to match x, got {tuple(y.shape)}")
            check_finite(y, "y")

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, *, num_data: int | None = None,
                subsample_size: int | None = None) -> torch.Tensor:
        """Observe ``y`` (N, m) given ``x`` (N, n) inside the data plate; returns the mean ``f``."""
        data, x, y = data_plate(x, y, num_data, subsample_size)
        f = self.layer(x)
        with data:
            pyro.deterministic("f", f, event_dim=1)
            pyro.sample("obs", dist.Normal(f, self.noise_scale).to_event(1), obs=y)
        return f
