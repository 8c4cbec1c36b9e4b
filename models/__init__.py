"""Reference models built on the library: the low-rank Bayesian MLP, its deterministic twin, likelihoods, and the
model-level baselines (MC dropout, rank-1 multiplicative BNN, full-rank mean-field BBB), the LSTM forecaster, the
Transformer text classifier, and ``SupervisedModel`` around any (converted) network."""

from .bayesian_mlp import BayesianMLP
from .deterministic import DeterministicMLP
from .likelihoods import BernoulliLikelihood, CategoricalLikelihood, GaussianLikelihood, Likelihood, make_likelihood
from .local_reparameterization import LocalReparameterization
from .lstm_forecaster import LowRankLSTMForecaster
from .mc_dropout import MCDropoutMLP
from .mean_field import MeanFieldLinear, MeanFieldMLP
from .mlp import LowRankMLP
from .rank1 import Rank1Linear, Rank1MLP
from .supervised import SupervisedModel
from .transformer import LowRankTransformerClassifier, LowRankTransformerEncoder

__all__ = [
    "BayesianMLP",
    "BernoulliLikelihood",
    "CategoricalLikelihood",
    "DeterministicMLP",
    "GaussianLikelihood",
    "Likelihood",
    "LocalReparameterization",
    "LowRankLSTMForecaster",
    "LowRankMLP",
    "LowRankTransformerClassifier",
    "LowRankTransformerEncoder",
    "MCDropoutMLP",
    "MeanFieldLinear",
    "MeanFieldMLP",
    "Rank1Linear",
    "Rank1MLP",
    "SupervisedModel",
    "make_likelihood",
]
