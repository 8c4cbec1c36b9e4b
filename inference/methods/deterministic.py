r"""The deterministic network and the deep ensemble (Lakshminarayanan et al., 2017).

A deterministic network is one predictive "draw" (S = 1): its mutual information is 0 for every input, so MI-based OOD
detection sits at AUROC 0.5 by construction. A deep ensemble trains M such networks from independent initialisations
and minibatch orders; its M members are the draws, :math:`\bar p(y \mid x) = \frac1M \sum_m p(y \mid x, \theta_m)`.
"""

from __future__ import annotations

from typing import Any

import torch

from pyro_lowrank._validation import check_positive_int
from pyro_lowrank.models import DeterministicMLP

from ..deterministic import train_deterministic
from .base import Data, Method, count_parameters
from .registry import register_method

__all__ = ["DeepEnsemble", "Deterministic"]


@register_method("deterministic")
class Deterministic(Method):
    """A :class:`~pyro_lowrank.models.DeterministicMLP` trained by maximum likelihood with Adam (``weight_decay``
    optional). ``predictive_draws`` returns one draw whatever ``num_samples`` is."""

    def __init__(self, *args: Any, weight_decay: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.weight_decay = float(weight_decay)
        self.networks: list[DeterministicMLP] = []

    def _train_member(self, train: Data, seed: int) -> tuple[DeterministicMLP, float]:
        torch.manual_seed(seed)
        net = self.place(DeterministicMLP(self.in_features, self.hidden_features, self.out_features))
        seconds = train_deterministic(net, train, likelihood=self.likelihood, num_epochs=self.num_epochs,
                                      batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay,
                                      seed=seed, progress=self.progress)
        return net, seconds

    def _fit(self, train: Data, val: Data | None) -> float:
        net, seconds = self._train_member(train, self.seed)
        self.networks = [net]
        return seconds

    def _predictive_draws(self, x: torch.Tensor, num_samples: int) -> dict[str, torch.Tensor]:
        return self._draws(torch.stack([net(x) for net in self.networks]))

    @property
    def num_parameters(self) -> int:
        return count_parameters(self.networks)


@register_method("ensemble")
class DeepEnsemble(Deterministic):
    """M independently initialised and shuffled deterministic networks (seeds ``seed, seed + 1, ...``); the members
    are the draws. ``num_parameters`` is M times a member's."""

    def __init__(self, *args: Any, num_members: int = 5, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.num_members = check_positive_int(num_members, "num_members")

    def _fit(self, train: Data, val: Data | None) -> float:
        members = [self._train_member(train, self.seed + m) for m in range(self.num_members)]
        self.networks = [net for net, _ in members]
        return sum(seconds for _, seconds in members)
