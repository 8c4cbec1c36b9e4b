"""Counting what a mean-field guide over a network's low-rank layers learns."""

from __future__ import annotations

from torch import nn

from pyro_lowrank.nn.embedding import LowRankEmbedding
from pyro_lowrank.nn.linear import LowRankLinear

__all__ = ["num_variational_parameters"]


def num_variational_parameters(module: nn.Module) -> int:
    r"""Learned numbers of a mean-field Gaussian guide (a loc and a scale per entry) over every factorised matrix and
    Bayesian bias in ``module``: :math:`\sum 2 r (m + n)` over the factorised matrices plus :math:`2 m` per bias.

    Composite layers (LSTM gates, attention projections) are built from :class:`LowRankLinear` parts, so summing over
    the parts and the embeddings counts every matrix once. Deterministic parameters (layer norms, positional tables)
    are not included.
    """
    return sum(m.num_variational_parameters() for m in module.modules()
               if isinstance(m, (LowRankLinear, LowRankEmbedding)))
