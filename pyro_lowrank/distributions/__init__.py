"""Distributions: the low-rank pushforward q_W, factor priors and matrix constraints."""

from pyro_lowrank.distributions.constraints import LowRankMatrices, low_rank_matrices
from pyro_lowrank.distributions.factor_normal import FactorNormal
from pyro_lowrank.distributions.low_rank_matrix_normal import LowRankMatrixNormal, SingularDensityError
from pyro_lowrank.distributions.priors import FactorPrior, GaussianPrior, ScaleMixturePrior
from pyro_lowrank.distributions.scale_mixture import ScaleMixtureNormal

__all__ = [
    "FactorNormal",
    "FactorPrior",
    "GaussianPrior",
    "LowRankMatrices",
    "LowRankMatrixNormal",
    "ScaleMixtureNormal",
    "ScaleMixturePrior",
    "SingularDensityError",
    "low_rank_matrices",
]
