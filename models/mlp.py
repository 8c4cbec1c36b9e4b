r"""A multilayer perceptron whose every weight matrix is a low-rank Bayesian factorisation.

Model: :math:`h_0 = x`, :math:`h_\ell = \phi(h_{\ell-1} (A_\ell B_\ell^\top)^\top + b_\ell)`, :math:`f = h_L` (no
activation on the output), and :math:`y_i \mid f_i \sim p(y \mid f_i)` inside a data plate. The factor and bias sites
are global (sampled outside the plate); only ``obs`` is inside it, so minibatches of size B from N data points scale
the likelihood by N / B, which keeps the ELBO an unbiased estimate of the full-data ELBO.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

from torch import nn

from pyro_lowrank._validation import check_rank
from pyro_lowrank.distributions import FactorPrior
from pyro_lowrank.nn import LowRankLinear

from .bayesian_mlp import BayesianMLP
from .likelihoods import Likelihood

__all__ = ["LowRankMLP"]


class LowRankMLP(BayesianMLP):
    """Low-rank Bayesian MLP: ``LowRankLinear`` layers, an activation, and a likelihood.

    Parameters
    ----------
    in_features : int
        Input width.
    hidden_features : sequence of int
        Widths of the hidden layers.
    out_features : int, optional
        Output width; default the likelihood's (1 for Gaussian/Bernoulli, ``num_classes`` for categorical).
    rank : int or sequence of int
        Rank of each hidden layer's weight (one int for all, or one per hidden layer).
    output_rank : int
        Rank of the output layer (the paper uses 1).
    likelihood : {"gaussian", "bernoulli", "categorical"} or Likelihood
        The observation model.
    num_classes : int, optional
        For ``likelihood="categorical"``.
    noise_scale, learn_noise : float, bool
        For ``likelihood="gaussian"``: fixed noise sigma, or its initial value when learned.
    prior : FactorPrior, optional
        Factor prior shared by all layers (default Gaussian with ``prior_scale``); each layer gets its own copy.
    prior_scale : float or "matched"
        Scale of the default Gaussian factor prior.
    activation : nn.Module
        Hidden activation (default ReLU).
    init_scale_factor : float
        eta, the guide's initial standard deviation relative to the init entry scale.

    Notes
    -----
    ``forward(x, y=None, *, num_data=None, subsample_size=None)``:

    * ``num_data``: ``x`` is a minibatch of a dataset of this size (the library's ``fit`` passes it);
    * ``subsample_size``: ``x`` is the full dataset and the data plate draws a random minibatch of this size
      (Pyro's tutorial idiom);
    * neither: ``x`` is the whole dataset.

    The network output is recorded as the deterministic site ``f`` (shape ``(N,)`` or ``(N, C)`` per draw).
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: Sequence[int],
        out_features: int | None = None,
        *,
        rank: int | Sequence[int] = 15,
        output_rank: int = 1,
        likelihood: str | Likelihood = "categorical",
        num_classes: int | None = None,
        noise_scale: float = 1.0,
        learn_noise: bool = False,
        prior: FactorPrior | None = None,
        prior_scale: float | str = 1.0,
        activation: nn.Module | None = None,
        init_scale_factor: float = 0.1,
    ) -> None:
        super().__init__(in_features, hidden_features, out_features, likelihood=likelihood, num_classes=num_classes,
                         noise_scale=noise_scale, learn_noise=learn_noise, activation=activation)
        widths = self.widths
        num_hidden = len(widths) - 2
        if isinstance(rank, numbers.Integral) or not isinstance(rank, Sequence):
            hidden_ranks = [rank] * num_hidden
        else:
            hidden_ranks = list(rank)
        if len(hidden_ranks) != num_hidden:
            raise ValueError(f"rank must be an int or one per hidden layer ({num_hidden}), got {len(hidden_ranks)} ranks")
        ranks = hidden_ranks + [output_rank]
        names = [f"rank[{i}]" for i in range(len(hidden_ranks))] + ["output_rank"]
        ranks = [check_rank(r, n_out, n_in, name) for r, n_in, n_out, name in zip(ranks, widths[:-1], widths[1:], names)]
        self.layers = self._make_layers(LowRankLinear, prior, [{"rank": r} for r in ranks], prior_scale=prior_scale,
                                        init_scale_factor=init_scale_factor)

    @property
    def ranks(self) -> tuple[int, ...]:
        """The current rank of each layer (it drops when :func:`~pyro_lowrank.guides.prune_ranks` prunes)."""
        return tuple(layer.rank for layer in self.layers)
