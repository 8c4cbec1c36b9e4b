"""Reference models built on the library: the low-rank Bayesian MLP, its deterministic twin, likelihoods."""

from .deterministic import DeterministicMLP
from .likelihoods import BernoulliLikelihood, CategoricalLikelihood, GaussianLikelihood, Likelihood, make_likelihood
from .mlp import LowRankMLP

__all__ = [
    "BernoulliLikelihood",
    "CategoricalLikelihood",
    "DeterministicMLP",
    "GaussianLikelihood",
    "Likelihood",
    "LowRankMLP",
    "make_likelihood",
]
