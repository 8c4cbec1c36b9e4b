r"""A Pyro model around any network: the network's output is the likelihood's parameter inside a data plate.

Model: :math:`f = \mathrm{net}(x)` (the network's random weights, e.g. the factors of a :func:`lowrankify`-converted
module, are global sites sampled outside the plate) and :math:`y_i \mid f_i \sim p(y \mid f_i)` inside the data plate,
so a minibatch of size B from N data points scales the likelihood by N / B and the ELBO stays an unbiased estimate of
the full-data ELBO. This is the glue that makes a converted ``nn.Module`` trainable with
:func:`pyro_lowrank.inference.fit` (or plain :class:`~pyro.infer.SVI`) and predictable with
:func:`pyro_lowrank.predictive.predict`.
"""

from __future__ import annotations

import pyro
import torch
from pyro.nn import PyroModule
from torch import nn

from pyro_lowrank._validation import check_finite
from pyro_lowrank.nn.convert import LOW_RANK_TYPES
from pyro_lowrank.nn.point_estimates import to_point_estimates_

from .data_plate import data_plate
from .likelihoods import Likelihood, make_likelihood

__all__ = ["SupervisedModel"]


class SupervisedModel(PyroModule):
    """``y ~ likelihood(network(x))`` for any network (a :func:`~pyro_lowrank.nn.lowrankify` result, a model built
    from the library's layers, or a plain module made Bayesian some other way).

    Parameters
    ----------
    network : nn.Module
        Maps inputs ``(N, ...)`` to outputs ``(..., N, k)``; leading particle dimensions of its random weights come
        first. It is made a ``PyroModule`` tree in place, its sites named by path and its plain parameters turned
        into point-estimated ``PyroParam`` s (:func:`~pyro_lowrank.nn.point_estimates.to_point_estimates_`), so both
        ``fit`` and plain ``SVI`` train them.
    likelihood : {"gaussian", "bernoulli", "categorical"} or Likelihood
        The observation model; ``k`` must be 1 for Gaussian/Bernoulli and ``num_classes`` for categorical.
    num_classes : int, optional
        For ``likelihood="categorical"``.
    noise_scale, learn_noise : float, bool
        For ``likelihood="gaussian"``: the fixed noise sigma, or its initial value when learned.

    Notes
    -----
    ``forward(x, y=None, *, num_data=None, subsample_size=None)`` records the network output as the deterministic site
    ``f`` and the observations as ``obs``, like the library's other models.
    """

    def __init__(
        self,
        network: nn.Module,
        *,
        likelihood: str | Likelihood = "categorical",
        num_classes: int | None = None,
        noise_scale: float = 1.0,
        learn_noise: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(network, nn.Module):
            raise TypeError(f"network must be a torch.nn.Module, got {type(network).__name__}")
        to_point_estimates_(network, skip=LOW_RANK_TYPES)
        if likelihood == "categorical" and num_classes is None:
            raise ValueError("likelihood='categorical' needs num_classes, got None")
        kwargs = {"noise_scale": noise_scale, "learn_noise": learn_noise} if likelihood == "gaussian" else {}
        self.network = network
        self.likelihood = make_likelihood(likelihood, num_classes or 1, **kwargs)

    def _check_shapes(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        """Shape checks run by :meth:`check_data` and on every call: a data dimension first and one target per input
        row. Models with other layouts (sequences, several outputs per datum) override this."""
        if x.dim() == 0:
            raise ValueError(f"x must have a data dimension first, got a scalar of shape {tuple(x.shape)}")
        if y is not None and y.shape != x.shape[:1]:
            raise ValueError(f"y must have shape {tuple(x.shape[:1])} to match x of shape {tuple(x.shape)}, "
                             f"got {tuple(y.shape)}")

    def check_data(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """Validate a dataset once (``fit`` calls this): shapes, finite float inputs and targets, and target values
        in the likelihood's support."""
        self._check_shapes(x, y)
        if x.dtype.is_floating_point:
            check_finite(x, "x")
        if y is not None:
            if y.dtype.is_floating_point:
                check_finite(y, "y")
            self.likelihood.check_targets(y)

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        num_data: int | None = None,
        subsample_size: int | None = None,
    ) -> torch.Tensor:
        """Run the network on ``x`` and observe ``y`` inside the data plate; returns ``f``."""
        self._check_shapes(x, y)
        plate, x, y = data_plate(x, y, num_data, subsample_size)
        f = self.likelihood.link_input(self.network(x))
        with plate:
            pyro.deterministic("f", f, event_dim=self.likelihood.event_dim)
            self.likelihood(f, y)
        return f
