"""Constraints for matrix-valued supports.

The support of the low-rank pushforward q_W is the determinantal variety
R_r = {W in R^{m x n} : rank(W) <= r}, a closed set of dimension r (m + n - r).
"""

from __future__ import annotations

import torch
from torch.distributions import constraints

__all__ = ["LowRankMatrices", "low_rank_matrices"]


class LowRankMatrices(constraints.Constraint):
    """Matrices of rank at most ``rank`` (the event is the trailing two dimensions).

    ``check`` computes the numerical rank with :func:`torch.linalg.matrix_rank` using the relative tolerance
    ``rtol = tolerance_factor * max(m, n) * eps(dtype)`` on the singular values, which absorbs the round-off of
    forming ``A @ B.T`` in float32.

    Parameters
    ----------
    rank : int
        Maximal rank r.
    tolerance_factor : float
        Multiplier of the default LAPACK-style relative tolerance.
    """

    event_dim = 2
    is_discrete = False

    def __init__(self, rank: int, tolerance_factor: float = 10.0) -> None:
        self.rank = int(rank)
        self.tolerance_factor = float(tolerance_factor)
        super().__init__()

    def check(self, value: torch.Tensor) -> torch.Tensor:
        m, n = value.shape[-2:]
        rtol = self.tolerance_factor * max(m, n) * torch.finfo(value.dtype).eps
        return torch.linalg.matrix_rank(value, rtol=rtol) <= self.rank

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank})"


low_rank_matrices = LowRankMatrices
