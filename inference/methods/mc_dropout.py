"""MC dropout as a compared method: train with dropout, predict with S stochastic passes (one vectorised call).

Validation early stopping (``fit(train, val)``, ``patience``) monitors the training loss (NLL / MSE) of the network
with dropout *off* (eval mode, the deterministic "weight-averaged" network), not the MC-dropout predictive: it is
cheap, noise-free and consumes no random numbers, so the trajectory up to the stop is that of a run without ``val``.
The best epoch's weights are restored (also with ``patience=None``).
"""

from __future__ import annotations

from typing import Any

import torch

from pyro_lowrank._validation import check_probability
from pyro_lowrank.models.mc_dropout import MCDropoutMLP

from ..deterministic import DeterministicFitResult, fit_deterministic
from .base import Data, Method, count_parameters
from .registry import register_method

__all__ = ["MCDropout"]

@register_method("mc_dropout")
class MCDropout(Method):
    """:class:`~pyro_lowrank.models.mc_dropout.MCDropoutMLP` trained with Adam (``weight_decay`` is the L2 term of
    the dropout-as-variational-inference objective); draws are stochastic forward passes. :attr:`fit_result` records
    the training (``epochs_run``, ``best_epoch``, loss curves)."""

    def __init__(self, *args: Any, dropout: float = 0.1, weight_decay: float = 1e-4, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        check_probability(dropout, "dropout")
        self.dropout = float(dropout)
        self.weight_decay = float(weight_decay)
        self.network: MCDropoutMLP | None = None
        self.fit_result: DeterministicFitResult | None = None

    def _fit(self, train: Data, val: Data | None) -> float:
        torch.manual_seed(self.seed)
        self.network = self.place(MCDropoutMLP(self.in_features, self.hidden_features, self.out_features,
                                               dropout=self.dropout))
        self.fit_result = fit_deterministic(self.network, train, likelihood=self.likelihood,
                                            num_epochs=self.num_epochs, batch_size=self.batch_size, lr=self.lr,
                                            weight_decay=self.weight_decay, seed=self.seed, progress=self.progress,
                                            **self._early_stopping(val))
        return self.fit_result.seconds

    def _predictive_draws(self, x: torch.Tensor, num_samples: int) -> dict[str, torch.Tensor]:
        return self._draws(self.network.sample_outputs(x, num_samples))

    @property
    def num_parameters(self) -> int:
        return count_parameters([self.network])
