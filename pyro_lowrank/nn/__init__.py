"""PyroModule layers with low-rank factorised Bayesian weights, and ``lowrankify`` for existing torch modules."""

from pyro_lowrank.nn.attention import LowRankMultiheadAttention
from pyro_lowrank.nn.convert import SUPPORTED_TYPES, lowrankify
from pyro_lowrank.nn.embedding import LowRankEmbedding
from pyro_lowrank.nn.linear import LowRankLinear, align_to_plates, factor_matmul, factored_is_cheaper
from pyro_lowrank.nn.lstm import LowRankLSTM
from pyro_lowrank.nn.summary import num_variational_parameters
from pyro_lowrank.nn.transformer import LowRankFeedForward, LowRankTransformerEncoderLayer

__all__ = [
    "SUPPORTED_TYPES",
    "LowRankEmbedding",
    "LowRankFeedForward",
    "LowRankLSTM",
    "LowRankLinear",
    "LowRankMultiheadAttention",
    "LowRankTransformerEncoderLayer",
    "align_to_plates",
    "factor_matmul",
    "factored_is_cheaper",
    "lowrankify",
    "num_variational_parameters",
]
