"""Reference models built on the library: the low-rank Bayesian MLP, its deterministic twin, likelihoods, and the
model-level baselines (MC dropout, rank-1 multiplicative BNN, full-rank mean-field BBB)."""

from .bayesian_mlp import BayesianMLP
from .deterministic import DeterministicMLP
from .likelihoods import BernoulliLikelihood, CategoricalLikelihood, GaussianLikelihood, Likelihood, make_likelihood
from .local_reparameterization import LocalReparameterization
from .mc_dropout import MCDropoutMLP
from .mean_field import MeanFieldLinear, MeanFieldMLP
from .mlp import LowRankMLP
from .rank1 import Rank1Linear, Rank1MLP

__all__ = [
    "BayesianMLP",
    "BernoulliLikelihood",
    "CategoricalLikelihood",
    "DeterministicMLP",
    "GaussianLikelihood",
    "Likelihood",
    "LocalReparameterization",
    "LowRankMLP",
    "MCDropoutMLP",
    "MeanFieldLinear",
    "MeanFieldMLP",
    "Rank1Linear",
    "Rank1MLP",
    "make_likelihood",
]
