r"""The rank-1 Bayesian MLP (Dusenberry et al., 2020) as a compared method.

Model :class:`~pyro_lowrank.models.rank1.Rank1MLP`: point-estimated shared weights :math:`W_0`, biases, and Bayesian
rank-1 factors :math:`W = W_0 \circ (r s^\top)`, :math:`r, s \sim \mathcal N(1, \sigma^2)`, with a mean-field
Gaussian :class:`~pyro_lowrank.guides.FactorGuide` over the factors; ``num_components = K > 1`` gives the K-component
mixture posterior (K ensemble members sharing :math:`W_0`). Training averages the members' likelihoods and sums their
KL terms (the reference weighting, see :mod:`pyro_lowrank.models.rank1`).

Predictive draws: each of the S guide draws carries all K components, so ``predictive_draws(x, S)`` returns S K draws
(``(S K, N, C)`` probabilities, or ``(S K, N)`` means and scales), whose equal-weight average is the mixture
predictive. ``num_parameters`` = :math:`\sum_\text{layers} m n + m + 2 K (m + n)`.
"""

from __future__ import annotations

from typing import Any

import torch
from pyro_lowrank.models.rank1 import Rank1MLP
from pyro_lowrank.models.supervised import SupervisedModel
from pyro_lowrank.models.weight_space import Rank1Network, weight_space_guide
from torch import nn

from pyro_lowrank.guides import FactorGuide
from pyro_lowrank.predictive import predict

from .base import Data, PyroMethod
from .registry import register_method

__all__ = ["Rank1BNN"]


@register_method("rank1")
class Rank1BNN(PyroMethod):
    """:class:`~pyro_lowrank.models.rank1.Rank1MLP` with :class:`~pyro_lowrank.guides.FactorGuide`.

    Extra parameters: ``num_components`` (K, mixture components / ensemble members, default 1), ``prior_scale``
    (sigma of the N(1, sigma^2) factor prior, default 0.1), ``random_sign_init`` (initial factor means: in (0, 1],
    random signs +-1 with that probability of +1; <= 0, N(1, random_sign_init^2); default -0.5), ``init_scale_factor``
    (the guide's initial factor standard deviation, default 0.1).

    Any other architecture: :class:`~pyro_lowrank.models.weight_space.Rank1Network` around its network (every 2-D
    weight of its Linear/LSTM/Embedding/attention layers perturbed, K = 1) with an ``AutoNormal`` guide; predictive
    draws run one forward pass per draw.
    """

    def __init__(self, *args: Any, num_components: int = 1, prior_scale: float = 0.1,
                 random_sign_init: float = -0.5, init_scale_factor: float = 0.1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.num_components = num_components
        self.prior_scale = prior_scale
        self.random_sign_init = random_sign_init
        self.init_scale_factor = init_scale_factor
        self.make_model()  # validate the configuration now rather than at fit time

    def make_model(self) -> nn.Module:
        if self.is_mlp:
            return Rank1MLP(self.in_features, self.hidden_features, likelihood=self.likelihood,
                            num_classes=self.num_classes, noise_scale=self.noise_scale, prior_scale=self.prior_scale,
                            num_components=self.num_components, random_sign_init=self.random_sign_init,
                            init_scale_factor=self.init_scale_factor)
        if self.num_components != 1:
            raise NotImplementedError(f"{self.name}: num_components > 1 is implemented for MLP architectures only, "
                                      f"got num_components={self.num_components} with {self.architecture!r}")
        network = Rank1Network(self.architecture.network(self.out_features), prior_scale=self.prior_scale,
                               random_sign_init=self.random_sign_init)
        return SupervisedModel(network, likelihood=self.likelihood, num_classes=self.num_classes,
                               noise_scale=self.noise_scale)

    def build(self, train: Data) -> tuple[nn.Module, nn.Module]:
        model = self.place(self.make_model())
        if self.is_mlp:
            return model, FactorGuide(model)
        return model, weight_space_guide(model, init_scale=self.init_scale_factor)

    def _predictive_draws(self, x: torch.Tensor, num_samples: int) -> dict[str, torch.Tensor]:
        f = predict(self.model, self.guide, x, num_samples=num_samples)["f"]
        if self.is_mlp and self.model.num_components > 1:  # (S, K, N, ...) -> (S K, N, ...): the components are extra draws
            f = f.reshape((-1,) + tuple(f.shape[2:]))
        return self._draws(f)
