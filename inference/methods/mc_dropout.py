"""MC dropout as a compared method: train with dropout, predict with S stochastic passes (one vectorised call).

Validation early stopping (``fit(train, val)``, ``patience``) monitors the training loss (NLL / MSE) of the network
with dropout *off* (eval mode, the deterministic "weight-averaged" network), not the MC-dropout predictive: it is
cheap, noise-free and consumes no random numbers, so the trajectory up to the stop is that of a run without ``val``.
The best epoch's weights are restored (also with ``patience=None``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pyro_lowrank._validation import check_probability

from ..deterministic import DeterministicFitResult, fit_deterministic
from .base import Data, Method, count_parameters
from .registry import register_method

__all__ = ["MCDropout", "dropout_samples"]


def dropout_samples(network: nn.Module, x: torch.Tensor, num_samples: int) -> torch.Tensor:
    """``num_samples`` forward passes of any ``network`` with its dropout active, stacked to ``(S, N, ...)``.

    Every module is put in training mode for the passes (dropout layers, ``nn.LSTM``'s inter-layer dropout,
    attention dropout, and no fused inference fast path that would skip dropout) except batch-norm layers, which
    keep their running statistics; the modes are restored afterwards."""
    modes = {module: module.training for module in network.modules()}
    try:
        for module in network.modules():
            module.train(not isinstance(module, nn.modules.batchnorm._BatchNorm))
        return torch.stack([network(x) for _ in range(num_samples)])
    finally:
        for module, mode in modes.items():
            module.training = mode


@register_method("mc_dropout")
class MCDropout(Method):
    """The shared network built with dropout (an MLP: :class:`~pyro_lowrank.models.mc_dropout.MCDropoutMLP`, one
    vectorised call per prediction; any other architecture: :func:`dropout_samples`) trained with Adam (``weight_decay`` is the L2 term of
    the dropout-as-variational-inference objective); draws are stochastic forward passes. :attr:`fit_result` records
    the training (``epochs_run``, ``best_epoch``, loss curves)."""

    def __init__(self, *args: Any, dropout: float = 0.1, weight_decay: float = 1e-4, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        check_probability(dropout, "dropout")
        self.dropout = float(dropout)
        self.weight_decay = float(weight_decay)
        self.network: nn.Module | None = None
        self.fit_result: DeterministicFitResult | None = None

    def _fit(self, train: Data, val: Data | None) -> float:
        torch.manual_seed(self.seed)
        self.network = self.build_network(dropout=self.dropout)
        self.fit_result = fit_deterministic(self.network, train, likelihood=self.likelihood,
                                            num_epochs=self.num_epochs, batch_size=self.batch_size, lr=self.lr,
                                            weight_decay=self.weight_decay, seed=self.seed, progress=self.progress,
                                            **self._early_stopping(val))
        return self.fit_result.seconds

    def _predictive_draws(self, x: torch.Tensor, num_samples: int) -> dict[str, torch.Tensor]:
        if self.is_mlp:
            return self._draws(self.network.sample_outputs(x, num_samples))
        return self._draws(dropout_samples(self.network, x, num_samples))

    @property
    def num_parameters(self) -> int:
        return count_parameters([self.network])
