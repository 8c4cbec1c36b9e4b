r"""A multilayer perceptron whose every weight matrix is a low-rank Bayesian factorisation.

Model: :math:`h_0 = x`, :math:`h_\ell = \phi(h_{\ell-1} (A_\ell B_\ell^\top)^\top + b_\ell)`, :math:`f = h_L` (no
activation on the output), and :math:`y_i \mid f_i \sim p(y \mid f_i)` inside a data plate. The factor and bias sites
are global (sampled outside the plate); only ``obs`` is inside it, so minibatches of size B from N data points scale
the likelihood by N / B, which keeps the ELBO an unbiased estimate of the full-data ELBO.
"""

from __future__ import annotations

import copy
import numbers
from collections.abc import Sequence

import pyro
import torch
from pyro.nn import PyroModule
from torch import nn

from pyro_lowrank._validation import check_last_dim, check_positive_int, check_rank
from pyro_lowrank.distributions import FactorPrior
from pyro_lowrank.nn import LowRankLinear

from .likelihoods import Likelihood, make_likelihood

__all__ = ["LowRankMLP"]


class LowRankMLP(PyroModule):
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
    prior_scale : float
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
        prior_scale: float = 1.0,
        activation: nn.Module | None = None,
        init_scale_factor: float = 0.1,
    ) -> None:
        super().__init__()
        if likelihood == "categorical":
            num_classes = out_features if num_classes is None else num_classes
            if num_classes is None:
                raise ValueError("likelihood='categorical' needs num_classes (or out_features), got None")
            num_classes = check_positive_int(num_classes, "num_classes")
        elif num_classes is not None:
            raise ValueError(f"num_classes is only used with likelihood='categorical', got likelihood={likelihood!r}")
        likelihood_kwargs = {"noise_scale": noise_scale, "learn_noise": learn_noise} if likelihood == "gaussian" else {}
        self.likelihood = make_likelihood(likelihood, num_classes or 1, **likelihood_kwargs)
        out_features = self.likelihood.num_outputs if out_features is None else out_features
        if out_features != self.likelihood.num_outputs:
            raise ValueError(
                f"out_features must be {self.likelihood.num_outputs} for this likelihood, got {out_features}"
            )
        widths = [check_positive_int(in_features, "in_features")]
        widths += [check_positive_int(h, "hidden_features") for h in hidden_features]
        widths.append(out_features)
        if isinstance(rank, numbers.Integral) or not isinstance(rank, Sequence):
            hidden_ranks = [rank] * len(hidden_features)
        else:
            hidden_ranks = list(rank)
        if len(hidden_ranks) != len(hidden_features):
            raise ValueError(
                f"rank must be an int or one per hidden layer ({len(hidden_features)}), got {len(hidden_ranks)} ranks"
            )
        ranks = hidden_ranks + [output_rank]
        names = [f"rank[{i}]" for i in range(len(hidden_ranks))] + ["output_rank"]
        ranks = [check_rank(r, n_out, n_in, name) for r, n_in, n_out, name in zip(ranks, widths[:-1], widths[1:], names)]
        self.in_features = widths[0]
        self.ranks = tuple(ranks)
        self.layers = PyroModule[nn.ModuleList](
            [
                LowRankLinear(
                    n_in,
                    n_out,
                    r,
                    prior=None if prior is None else copy.deepcopy(prior),
                    prior_scale=prior_scale,
                    init_scale_factor=init_scale_factor,
                )
                for n_in, n_out, r in zip(widths[:-1], widths[1:], ranks)
            ]
        )
        self.activation = activation if activation is not None else nn.ReLU()

    def network(self, x: torch.Tensor) -> torch.Tensor:
        """The network output ``(..., N, out_features)`` for inputs ``(N, in_features)``."""
        h = x
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < len(self.layers) - 1:
                h = self.activation(h)
        return h

    def check_data(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """Validate a dataset once (``fit`` calls this): shapes, and target values against the likelihood."""
        check_last_dim(x, self.in_features, "x", f"LowRankMLP(in_features={self.in_features})")
        if x.dim() != 2:
            raise ValueError(f"x must have shape (N, {self.in_features}), got {tuple(x.shape)}")
        if y is not None:
            if y.shape != x.shape[:1]:
                raise ValueError(f"y must have shape ({x.shape[0]},) to match x, got {tuple(y.shape)}")
            self.likelihood.check_targets(y)

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        num_data: int | None = None,
        subsample_size: int | None = None,
    ) -> torch.Tensor:
        check_last_dim(x, self.in_features, "x", f"LowRankMLP(in_features={self.in_features})")
        if x.dim() != 2:
            raise ValueError(f"x must have shape (N, {self.in_features}), got {tuple(x.shape)}")
        if y is not None and y.shape != x.shape[:1]:
            raise ValueError(f"y must have shape ({x.shape[0]},) to match x, got {tuple(y.shape)}")
        if subsample_size is not None and num_data is not None:
            raise ValueError(
                "pass num_data (x is a minibatch of that many points) or subsample_size (the plate subsamples x), "
                f"not both; got num_data={num_data} and subsample_size={subsample_size}"
            )
        if subsample_size is not None:
            data = pyro.plate("data", x.shape[0], subsample_size=subsample_size, dim=-1)
            with data as index:  # the plate draws its minibatch indices once; re-entering it reuses them
                pass
            x = x[index]
            y = None if y is None else y[index]
        else:
            size = x.shape[0] if num_data is None else num_data
            data = pyro.plate("data", size, subsample=torch.arange(x.shape[0], device=x.device), dim=-1)
        f = self.likelihood.link_input(self.network(x))
        with data:
            pyro.deterministic("f", f, event_dim=self.likelihood.event_dim)
            self.likelihood(f, y)
        return f

