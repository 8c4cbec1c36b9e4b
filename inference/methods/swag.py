r"""SWAG baseline (Maddox et al., 2019) on the shared MLP: Adam pre-training, then SGD iterates collected by
:class:`pyro_lowrank.inference.swag.SWAG` and predictive draws at sampled weights
:math:`\theta_s \sim \mathcal N(\bar\theta, s(\Sigma_\text{diag} + \hat D\hat D^\top/(K-1)))`.

Validation early stopping (``fit(train, val)``, ``patience``) applies to the Adam *pre-training* only: it stops
after ``patience`` epochs without a lower validation NLL / MSE and SWAG starts from the best pre-training epoch.
The collection phase always runs its configured ``swag_epochs`` (stopping it early would change the number of
collected iterates, i.e. the posterior's rank and moments).
"""

from __future__ import annotations

from typing import Any

import torch

from pyro_lowrank._validation import check_choice, check_positive, check_positive_int
from pyro_lowrank.models import DeterministicMLP

from ..deterministic import DeterministicFitResult, fit_deterministic
from ..swag import SCHEDULES, SWAG
from .base import Data, Method
from .registry import register_method

__all__ = ["SWAGMethod"]


@register_method("swag")
class SWAGMethod(Method):
    r"""A :class:`~pyro_lowrank.models.DeterministicMLP` pre-trained with ``fit_deterministic`` (``num_epochs``,
    ``batch_size``, ``lr``; with ``val`` the best validation epoch, ``patience`` for early stopping; the record is
    :attr:`pretrain_result`), then ``swag_epochs`` epochs of SGD (momentum ``swag_momentum``, rate ``swag_lr``,
    constant or cyclic schedule) with one iterate collected per epoch (or every ``swag_collect_every`` steps).

    Extra parameters
    ----------------
    swag_epochs : int
        Epochs of the collection phase (``>= max_rank`` fills the deviation matrix).
    swag_lr, swag_momentum, swag_weight_decay : float
        SGD settings of the collection phase.
    swag_schedule : {"constant", "cyclic"}
        With ``"cyclic"``, ``swag_lr_max`` is the rate at the start of each cycle.
    max_rank : int
        :math:`K`, deviation columns kept.
    sample_scale : float
        :math:`s`, multiplies the SWAG covariance (0.5 = the paper's :math:`\Sigma_\text{SWAG}`; see
        :mod:`pyro_lowrank.inference.swag`).
    sample_cov : bool
        ``False`` gives SWAG-diagonal.

    ``training_seconds`` is pre-training plus collection; ``num_parameters`` is :math:`2P + KP` (first and second
    moments and :math:`K` deviation columns, :math:`P` the MLP's weights) where :math:`K = \min(\text{collected},
    \text{max\_rank})`.
    """

    def __init__(
        self,
        *args: Any,
        swag_epochs: int = 40,
        swag_lr: float = 0.01,
        swag_momentum: float = 0.9,
        swag_weight_decay: float = 0.0,
        swag_schedule: str = "constant",
        swag_lr_max: float | None = None,
        swag_collect_every: int | None = None,
        max_rank: int = 20,
        sample_scale: float = 0.5,
        sample_cov: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.swag_epochs = check_positive_int(swag_epochs, "swag_epochs")
        check_positive(swag_lr, "swag_lr")
        self.swag_lr = float(swag_lr)
        self.swag_momentum = float(swag_momentum)
        self.swag_weight_decay = float(swag_weight_decay)
        self.swag_schedule = check_choice(swag_schedule, "swag_schedule", SCHEDULES)
        self.swag_lr_max = swag_lr_max
        self.swag_collect_every = swag_collect_every
        self.max_rank = check_positive_int(max_rank, "max_rank")
        check_positive(sample_scale, "sample_scale")
        self.sample_scale = float(sample_scale)
        self.sample_cov = bool(sample_cov)
        self.network: DeterministicMLP | None = None
        self.pretrain_result: DeterministicFitResult | None = None
        self.swag: SWAG | None = None

    def _fit(self, train: Data, val: Data | None) -> float:
        torch.manual_seed(self.seed)
        net = self.build_network()
        self.pretrain_result = fit_deterministic(net, train, likelihood=self.likelihood, num_epochs=self.num_epochs,
                                                 batch_size=self.batch_size, lr=self.lr, seed=self.seed,
                                                 progress=self.progress, **self._early_stopping(val))
        pretrain = self.pretrain_result.seconds
        swag = SWAG(net, max_rank=self.max_rank)
        collection = swag.fit(train, likelihood=self.likelihood, num_epochs=self.swag_epochs,
                              batch_size=self.batch_size, lr=self.swag_lr, momentum=self.swag_momentum,
                              weight_decay=self.swag_weight_decay, schedule=self.swag_schedule,
                              lr_max=self.swag_lr_max, collect_every=self.swag_collect_every, seed=self.seed + 1,
                              progress=self.progress)
        swag.load_sample()  # the network holds the SWA mean (the reference's deterministic SWA solution)
        self.network, self.swag = net, swag
        self.pretrain_seconds, self.collection_seconds = pretrain, collection
        return pretrain + collection

    def _predictive_draws(self, x: torch.Tensor, num_samples: int) -> dict[str, torch.Tensor]:
        f = self.swag.sample_outputs(x, num_samples, scale=self.sample_scale, cov=self.sample_cov)
        return self._draws(f)

    @property
    def num_parameters(self) -> int:
        if self.swag is None:
            raise RuntimeError(f"{self.name}: the SWAG statistics are built by fit(); num_parameters is known after fitting")
        return self.swag.num_parameters
