r"""The deterministic network and the deep ensemble (Lakshminarayanan et al., 2017).

A deterministic network is one predictive "draw" (S = 1): its mutual information is 0 for every input, so MI-based OOD
detection sits at AUROC 0.5 by construction. A deep ensemble trains M such networks from independent initialisations
and minibatch orders; its M members are the draws, :math:`\bar p(y \mid x) = \frac1M \sum_m p(y \mid x, \theta_m)`.

With validation data (``fit(train, val)``) every network is trained with validation early stopping on its own
training loss (NLL / MSE) and keeps its best epoch (:func:`pyro_lowrank.inference.deterministic.fit_deterministic`;
``patience`` stops it early); ensemble members stop independently.
"""

from __future__ import annotations

from typing import Any

import torch

from pyro_lowrank._validation import check_positive_int
from pyro_lowrank.models import DeterministicMLP

from ..deterministic import DeterministicFitResult, fit_deterministic
from .base import Data, Method, count_parameters
from .registry import register_method

__all__ = ["DeepEnsemble", "Deterministic"]


@register_method("deterministic")
class Deterministic(Method):
    """A :class:`~pyro_lowrank.models.DeterministicMLP` trained by maximum likelihood with Adam (``weight_decay``
    optional). ``predictive_draws`` returns one draw whatever ``num_samples`` is.

    With ``val``, the best validation epoch is restored (``patience``: early stopping); :attr:`fit_results` holds
    one :class:`~pyro_lowrank.inference.deterministic.DeterministicFitResult` per network (``epochs_run``,
    ``best_epoch``, loss curves)."""

    def __init__(self, *args: Any, weight_decay: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.weight_decay = float(weight_decay)
        self.networks: list[DeterministicMLP] = []
        self.fit_results: list[DeterministicFitResult] = []

    def _train_member(self, train: Data, val: Data | None, seed: int) -> tuple[DeterministicMLP, DeterministicFitResult]:
        torch.manual_seed(seed)
        net = self.build_network()
        result = fit_deterministic(net, train, likelihood=self.likelihood, num_epochs=self.num_epochs,
                                   batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay,
                                   seed=seed, progress=self.progress, **self._early_stopping(val))
        return net, result

    def _fit(self, train: Data, val: Data | None) -> float:
        net, result = self._train_member(train, val, self.seed)
        self.networks, self.fit_results = [net], [result]
        return result.seconds

    def _predictive_draws(self, x: torch.Tensor, num_samples: int) -> dict[str, torch.Tensor]:
        return self._draws(torch.stack([net(x) for net in self.networks]))

    @property
    def num_parameters(self) -> int:
        return count_parameters(self.networks)


@register_method("ensemble")
class DeepEnsemble(Deterministic):
    """M independently initialised and shuffled deterministic networks; the members are the draws.
    ``num_parameters`` is M times a member's. Member m of the ensemble with seed s uses seed ``s * M + m``, so
    ensembles of different seeds share no member (``s + m`` would reuse M - 1 members between seeds s and s + 1)."""

    def __init__(self, *args: Any, num_members: int = 5, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.num_members = check_positive_int(num_members, "num_members")

    def _fit(self, train: Data, val: Data | None) -> float:
        members = [self._train_member(train, val, self.seed * self.num_members + m) for m in range(self.num_members)]
        self.networks = [net for net, _ in members]
        self.fit_results = [result for _, result in members]
        return sum(result.seconds for result in self.fit_results)
