"""Distributions: the low-rank pushforward q_W, factor priors and matrix constraints."""

from pyro_lowrank.distributions.constraints import LowRankMatrices, low_rank_matrices
from pyro_lowrank.distributions.factor_normal import FactorNormal
from pyro_lowrank.distributions.log_uniform import (
    LOG_UNIFORM_KL_CONSTANTS, LogUniform, log_uniform_kl, log_uniform_kl_reference, noise_to_signal_log_ratio,
)
from pyro_lowrank.distributions.low_rank_matrix_normal import LowRankMatrixNormal, SingularDensityError
from pyro_lowrank.distributions.priors import FactorPrior, GaussianPrior, LogUniformPrior, ScaleMixturePrior
from pyro_lowrank.distributions.scale_mixture import ScaleMixtureNormal

__all__ = [
    "FactorNormal",
    "FactorPrior",
    "GaussianPrior",
    "LOG_UNIFORM_KL_CONSTANTS",
    "LogUniform",
    "LogUniformPrior",
    "LowRankMatrices",
    "LowRankMatrixNormal",
    "ScaleMixtureNormal",
    "ScaleMixturePrior",
    "SingularDensityError",
    "log_uniform_kl",
    "log_uniform_kl_reference",
    "low_rank_matrices",
    "noise_to_signal_log_ratio",
]
