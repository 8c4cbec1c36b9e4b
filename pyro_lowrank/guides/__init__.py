"""Guides over the factors and their initialisation."""

from pyro_lowrank.guides.factor_guide import FactorGuide, factor_initial_scales, factor_initial_values, init_to_factors
from pyro_lowrank.guides.init import FactorInit, svd_init, variance_matching_init
from pyro_lowrank.guides.rank_selection import (
    RankPruning, effective_rank, effective_ranks, fix_gauge, prune_ranks, rank_log_alpha, removed_weight,
    replace_in_optimizer, resize_ranks,
)
from pyro_lowrank.guides.rankwise import LRVDGuide

__all__ = [
    "FactorGuide",
    "FactorInit",
    "LRVDGuide",
    "RankPruning",
    "effective_rank",
    "effective_ranks",
    "factor_initial_scales",
    "factor_initial_values",
    "fix_gauge",
    "init_to_factors",
    "prune_ranks",
    "rank_log_alpha",
    "removed_weight",
    "replace_in_optimizer",
    "resize_ranks",
    "svd_init",
    "variance_matching_init",
]
