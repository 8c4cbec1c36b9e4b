"""PyroModule layers with low-rank factorised Bayesian weights, ``lowrankify`` for existing torch modules, and LoRA
adapters (plain and Bayesian) on frozen layers."""

from pyro_lowrank.nn.attention import LowRankMultiheadAttention
from pyro_lowrank.nn.convert import SUPPORTED_TYPES, lowrankify
from pyro_lowrank.nn.embedding import LowRankEmbedding
from pyro_lowrank.nn.linear import LowRankLinear, align_to_plates, factor_matmul, factored_is_cheaper
from pyro_lowrank.nn.lora import (
    BayesianLoRALinear, LoRALinear, add_lora_adapters, adapter_parameter_count, draw_batch_shape, lora_init,
)
from pyro_lowrank.nn.lstm import LowRankLSTM
from pyro_lowrank.nn.summary import num_variational_parameters
from pyro_lowrank.nn.transformer import LowRankFeedForward, LowRankTransformerEncoderLayer

__all__ = [
    "SUPPORTED_TYPES",
    "BayesianLoRALinear",
    "LoRALinear",
    "LowRankEmbedding",
    "LowRankFeedForward",
    "LowRankLSTM",
    "LowRankLinear",
    "LowRankMultiheadAttention",
    "LowRankTransformerEncoderLayer",
    "add_lora_adapters",
    "adapter_parameter_count",
    "align_to_plates",
    "draw_batch_shape",
    "factor_matmul",
    "factored_is_cheaper",
    "lora_init",
    "lowrankify",
    "num_variational_parameters",
]
