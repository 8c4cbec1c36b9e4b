"""Guides over the factors and their initialisation."""

from pyro_lowrank.guides.factor_guide import FactorGuide, factor_initial_scales, factor_initial_values, init_to_factors
from pyro_lowrank.guides.init import FactorInit, svd_init, variance_matching_init

__all__ = [
    "FactorGuide",
    "FactorInit",
    "factor_initial_scales",
    "factor_initial_values",
    "init_to_factors",
    "svd_init",
    "variance_matching_init",
]
