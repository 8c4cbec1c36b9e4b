"""pyro-lowrank: low-rank Bayesian neural networks for Pyro.

Each weight matrix is factorised as W = A B^T with mean-field Gaussian posteriors over the factors; the induced
posterior over W is the pushforward :class:`~pyro_lowrank.distributions.LowRankMatrixNormal`.

Importing the package turns on ``pyro.settings.set(module_local_params=True)``: parameters of ``PyroModule`` s and
autoguides live in the modules themselves (not in Pyro's global param store), which is what Pyro recommends for the
``ELBOModule`` route (``loss = elbo(model, guide)``; ``torch.optim`` over ``loss.parameters()``) that training,
checkpointing and ``.to(device)`` rely on. Build models and guides after the import.
"""

import pyro

from pyro_lowrank.distributions import GaussianPrior, LogUniformPrior, LowRankMatrixNormal, ScaleMixturePrior
from pyro_lowrank.errors import TrainingDivergedError
from pyro_lowrank.guides import FactorGuide, LRVDGuide, init_to_factors, prune_ranks
from pyro_lowrank.nn import LowRankLinear

__version__ = "0.1.0"

pyro.settings.set(module_local_params=True)

__all__ = [
    "FactorGuide",
    "GaussianPrior",
    "LRVDGuide",
    "LogUniformPrior",
    "LowRankLinear",
    "LowRankMatrixNormal",
    "ScaleMixturePrior",
    "TrainingDivergedError",
    "init_to_factors",
    "prune_ranks",
]
