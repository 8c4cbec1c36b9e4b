"""PyroModule layers with low-rank factorised Bayesian weights."""

from pyro_lowrank.nn.linear import LowRankLinear, align_to_plates, factor_matmul, factored_is_cheaper

__all__ = ["LowRankLinear", "align_to_plates", "factor_matmul", "factored_is_cheaper"]
