r"""The low-rank Bayesian MLP as a compared method, with random or SVD initialisation ("LR-SVD").

Random init: factor means by variance matching, :math:`s = (\sigma_W^2 / r)^{1/4}`. SVD init: a deterministic twin of
the same architecture is trained first and each layer starts at its balanced truncated SVD,
:math:`\mu_A = U_r \Sigma_r^{1/2}`, :math:`\mu_B = V_r \Sigma_r^{1/2}` (so :math:`\mu_A\mu_B^\top = W_r`, the best
rank-r approximation by Eckart–Young–Mirsky), with the twin's biases; its training time is part of the method's.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from pyro_lowrank._validation import check_choice
from pyro_lowrank.distributions import ScaleMixturePrior
from pyro_lowrank.guides import FactorGuide, svd_init
from pyro_lowrank.models import DeterministicMLP, LowRankMLP
from pyro_lowrank.models.supervised import SupervisedModel
from pyro_lowrank.nn import lowrankify

from ..deterministic import train_deterministic
from .base import Data, PyroMethod
from .registry import register_method

__all__ = ["LowRankBNN", "LowRankSVDBNN"]


@register_method("lowrank")
class LowRankBNN(PyroMethod):
    """:class:`~pyro_lowrank.models.LowRankMLP` with :class:`~pyro_lowrank.guides.FactorGuide`.

    Any other architecture: :func:`~pyro_lowrank.nn.lowrankify` of its network (``init="random"``; LR-SVD:
    ``init="svd"`` of the trained twin) in a :class:`~pyro_lowrank.models.supervised.SupervisedModel`, with
    ``rank`` a lowrankify rank specification (default: the architecture's ``lowrank_rank``).

    Extra parameters: ``rank`` (MLP: int or one per hidden layer, default 15), ``output_rank`` (MLP only; default: C
    for classification, i.e. a full-rank C-way output layer when C is at most the last hidden width; 1 for
    regression as in the paper),
    ``prior`` (``"gaussian"``: N(0, prior_scale²) per factor entry, ``prior_scale="matched"`` giving each layer the
    He variance on W (see :class:`~pyro_lowrank.nn.LowRankLinear`); ``"scale_mixture"``: the paper's
    0.5 N(0, 1) + 0.5 N(0, e⁻¹²)), ``prior_scale``, ``init_scale_factor`` (η: initial guide scales are η times the
    init scale). ``num_parameters`` = Σ_layers 2·r·(m + n) + 2·m.
    """

    def __init__(self, *args: Any, rank: Any = None, output_rank: int | None = None,
                 prior: str = "gaussian", prior_scale: float | str = 1.0, init_scale_factor: float = 0.01,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.prior = check_choice(prior, "prior", ("gaussian", "scale_mixture"))
        if self.is_mlp:
            self.rank = 15 if rank is None else rank
            if output_rank is None:
                output_rank = min(self.num_classes, self.hidden_features[-1] if self.hidden_features else
                                  self.in_features) if self.likelihood == "categorical" else 1
        else:
            if output_rank is not None:
                raise ValueError("output_rank is for MLP architectures; give the head's rank in the lowrankify rank "
                                 f"specification instead, got output_rank={output_rank!r}")
            self.rank = self.architecture.lowrank_rank if rank is None else rank
        self.output_rank = output_rank
        self.prior_scale = prior_scale
        self.init_scale_factor = init_scale_factor
        self.make_model()  # validate ranks and settings now, not after (pre-)training

    def _layer_kwargs(self) -> dict[str, Any]:
        prior = ScaleMixturePrior() if self.prior == "scale_mixture" else None
        return {"prior": prior, "prior_scale": self.prior_scale, "init_scale_factor": self.init_scale_factor}

    def _supervised(self, network: nn.Module) -> SupervisedModel:
        return SupervisedModel(network, likelihood=self.likelihood, num_classes=self.num_classes,
                               noise_scale=self.noise_scale)

    def make_model(self, init_from: nn.Module | None = None) -> nn.Module:
        """The low-rank model: a :class:`LowRankMLP`, or :func:`lowrankify` of the architecture's network (of
        ``init_from`` with the truncated-SVD initialisation when given) inside a :class:`SupervisedModel`."""
        if self.is_mlp:
            return LowRankMLP(self.in_features, self.hidden_features, rank=self.rank, output_rank=self.output_rank,
                              likelihood=self.likelihood, num_classes=self.num_classes, noise_scale=self.noise_scale,
                              **self._layer_kwargs())
        if init_from is not None:
            return self._supervised(lowrankify(init_from, self.rank, init="svd", **self._layer_kwargs()))
        network = self.architecture.network(self.out_features)
        return self._supervised(lowrankify(network, self.rank, init="random", **self._layer_kwargs()))

    def build(self, train: Data) -> tuple[nn.Module, nn.Module]:
        model = self.place(self.make_model())
        return model, FactorGuide(model)


@register_method("lowrank_svd")
class LowRankSVDBNN(LowRankBNN):
    """LR-SVD: :class:`LowRankBNN` whose factor means start at the truncated SVD of a trained deterministic twin
    (trained with the same ``num_epochs``, ``batch_size``, ``lr`` unless ``pretrain_epochs`` is given; with
    validation data the twin, like the deterministic baseline, keeps its best validation epoch and stops after
    ``patience`` epochs without improvement)."""

    def __init__(self, *args: Any, pretrain_epochs: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pretrain_epochs = self.num_epochs if pretrain_epochs is None else int(pretrain_epochs)
        self.pretrain_seconds = 0.0
        self.twin: DeterministicMLP | None = None
        self._val: Data | None = None

    def build(self, train: Data) -> tuple[nn.Module, nn.Module]:
        start = time.perf_counter()
        twin = self.build_network()
        train_deterministic(twin, train, likelihood=self.likelihood, num_epochs=self.pretrain_epochs,
                            batch_size=self.batch_size, lr=self.lr, seed=self.seed, progress=self.progress,
                            **self._early_stopping(self._val))
        if self.is_mlp:
            model = self.place(self.make_model())
            with torch.no_grad():
                for layer, linear in zip(model.layers, twin.layers):
                    layer.set_factor_init(svd_init(linear.weight, layer.rank), linear.bias)
        else:
            model = self.place(self.make_model(init_from=twin))
        self.pretrain_seconds = time.perf_counter() - start
        self.twin = twin
        return model, FactorGuide(model)

    def _fit(self, train: Data, val: Data | None) -> float:
        self._val = val  # build() trains the twin, which stops on the same validation data
        try:
            return super()._fit(train, val) + self.pretrain_seconds
        finally:
            self._val = None
