r"""The full-rank mean-field Bayes-by-Backprop baseline ("FR-BBB") as a compared method.

:class:`~pyro_lowrank.models.MeanFieldMLP` with :class:`~pyro_lowrank.guides.FactorGuide`: every weight entry has its
own Gaussian :math:`\mathcal N(\mu, \operatorname{softplus}(\rho)^2)`, trained by the same minibatch SVI as the low-rank
model (:func:`~pyro_lowrank.inference.fit`, analytic Gaussian KL through ``TraceMeanField_ELBO``), by default with the
local reparameterisation trick. ``num_parameters`` :math:`= 2 \sum_\ell (m_\ell n_\ell + m_\ell)`.
"""

from __future__ import annotations

from typing import Any

from pyro_lowrank.models.mean_field import MeanFieldMLP
from pyro_lowrank.models.supervised import SupervisedModel
from pyro_lowrank.models.weight_space import MeanFieldNetwork, weight_space_guide
from torch import nn

from pyro_lowrank.guides import FactorGuide

from .base import Data, PyroMethod
from .registry import register_method

__all__ = ["MeanFieldBBB"]


@register_method("mean_field")
class MeanFieldBBB(PyroMethod):
    """Full-rank mean-field BNN (Bayes by Backprop).

    Extra parameters: ``prior_scale`` (standard deviation of the Gaussian prior of every weight and bias),
    ``init_scale_factor`` (eta: initial guide standard deviations are eta times the He init scale
    ``sqrt(2 / n_in)``), ``local_reparameterization`` (sample pre-activations instead of weights, in training and
    prediction; see :class:`~pyro_lowrank.models.MeanFieldMLP`).

    Any other architecture: :class:`~pyro_lowrank.models.weight_space.MeanFieldNetwork` around its network (every
    weight and bias of its Linear/LSTM/Embedding/attention layers Bayesian, N(0, prior_scale²) prior or, with
    ``prior_scale="matched"``, He's N(0, 2/fan_in) per weight tensor; sampled weights, no local
    reparameterisation, ``init_scale_factor`` unused) with an ``AutoNormal`` guide started at the network's
    initialisation with standard deviation ``guide_init_scale``; predictive draws run one forward pass per draw.
    ``local_reparameterization`` defaults to True for MLPs and False otherwise.
    """

    def __init__(self, *args: Any, prior_scale: float | str = 1.0, init_scale_factor: float = 0.01,
                 local_reparameterization: bool | None = None, guide_init_scale: float = 1e-3,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.is_mlp and isinstance(prior_scale, str):
            raise ValueError(f"prior_scale must be a positive float for an MLP, got {prior_scale!r} ('matched' is for "
                             "other architectures)")
        self.prior_scale = prior_scale if isinstance(prior_scale, str) else float(prior_scale)
        self.init_scale_factor = float(init_scale_factor)
        if local_reparameterization and not self.is_mlp:
            raise ValueError("local_reparameterization is implemented for MLP architectures only, got True with "
                             f"{self.architecture!r}")
        self.local_reparameterization = self.is_mlp if local_reparameterization is None else bool(
            local_reparameterization)
        self.guide_init_scale = float(guide_init_scale)

    def make_model(self) -> nn.Module:
        if self.is_mlp:
            return MeanFieldMLP(self.in_features, self.hidden_features, likelihood=self.likelihood,
                                num_classes=self.num_classes, noise_scale=self.noise_scale,
                                prior_scale=self.prior_scale, init_scale_factor=self.init_scale_factor,
                                local_reparameterization=self.local_reparameterization)
        network = MeanFieldNetwork(self.architecture.network(self.out_features), prior_scale=self.prior_scale)
        return SupervisedModel(network, likelihood=self.likelihood, num_classes=self.num_classes,
                               noise_scale=self.noise_scale)

    def build(self, train: Data) -> tuple[nn.Module, nn.Module]:
        model = self.place(self.make_model())
        if self.is_mlp:
            return model, FactorGuide(model)
        return model, weight_space_guide(model, init_scale=self.guide_init_scale)
