"""PyroModule layers with low-rank factorised Bayesian weights."""

from pyro_lowrank.nn.linear import LowRankLinear, factored_is_cheaper

__all__ = ["LowRankLinear", "factored_is_cheaper"]
