"""Reference models built on the library: the low-rank Bayesian MLP, its deterministic twin, likelihoods, and the
model-level baselines (MC dropout, rank-1 multiplicative BNN, full-rank mean-field BBB), the LSTM forecaster, the
Transformer text classifier, ``SupervisedModel`` around any (converted) network, and the LoRA / BayesLoRA sequence
classifier on a pretrained encoder."""

from .bayesian_mlp import BayesianMLP
from .deterministic import DeterministicMLP
from .likelihoods import BernoulliLikelihood, CategoricalLikelihood, GaussianLikelihood, Likelihood, make_likelihood
from .local_reparameterization import LocalReparameterization
from .lora_classifier import (
    LoRASequenceClassifier, PooledEncoderClassifier, load_minilm, minilm_classifier, minilm_path, tokenize,
)
from .lstm_forecaster import LowRankLSTMForecaster
from .mc_dropout import MCDropoutMLP
from .mean_field import MeanFieldLinear, MeanFieldMLP
from .mlp import LowRankMLP
from .rank1 import Rank1Linear, Rank1MLP
from .reduced_rank import LowRankRegression
from .supervised import SupervisedModel
from .transformer import LowRankTransformerClassifier, LowRankTransformerEncoder

__all__ = [
    "BayesianMLP",
    "BernoulliLikelihood",
    "CategoricalLikelihood",
    "DeterministicMLP",
    "GaussianLikelihood",
    "Likelihood",
    "LoRASequenceClassifier",
    "LocalReparameterization",
    "LowRankLSTMForecaster",
    "LowRankMLP",
    "LowRankRegression",
    "LowRankTransformerClassifier",
    "LowRankTransformerEncoder",
    "MCDropoutMLP",
    "MeanFieldLinear",
    "MeanFieldMLP",
    "PooledEncoderClassifier",
    "Rank1Linear",
    "Rank1MLP",
    "SupervisedModel",
    "load_minilm",
    "make_likelihood",
    "minilm_classifier",
    "minilm_path",
    "tokenize",
]
