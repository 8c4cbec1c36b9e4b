r"""MC dropout (Gal & Ghahramani, 2016): a deterministic MLP with dropout kept on at prediction time.

Each forward pass with fresh Bernoulli masks :math:`z \sim \mathrm{Bernoulli}(1-p)` on the hidden units is one draw
from the approximate posterior of a variational family of the form :math:`W = W_0 \operatorname{diag}(z)`; S passes
give S predictive draws. Draws are vectorised: the input is broadcast to ``(S, N, n)`` and every hidden unit gets an
independent mask per draw and datum, in one pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pyro_lowrank._validation import check_last_dim, check_positive_int, check_probability

from .deterministic import DeterministicMLP

__all__ = ["MCDropoutMLP"]


class MCDropoutMLP(DeterministicMLP):
    """:class:`~pyro_lowrank.models.DeterministicMLP` with dropout (rate ``dropout``) after every hidden activation.

    Parameters
    ----------
    in_features, hidden_features, out_features, activation :
        As :class:`~pyro_lowrank.models.DeterministicMLP`.
    dropout : float
        Drop probability p in (0, 1).
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: Sequence[int],
        out_features: int,
        dropout: float = 0.1,
        activation: nn.Module | None = None,
    ) -> None:
        check_probability(dropout, "dropout")
        super().__init__(in_features, hidden_features, out_features, activation)
        self.dropout = float(dropout)

    def forward(self, x: torch.Tensor, *, sample: bool | None = None) -> torch.Tensor:
        """Output ``f``; dropout is applied when ``sample`` is True (default: in training mode only)."""
        check_last_dim(x, self.in_features, "x", f"MCDropoutMLP(in_features={self.in_features})")
        active = self.training if sample is None else sample
        h = x
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < len(self.layers) - 1:
                h = F.dropout(self.activation(h), self.dropout, training=active)
        return h

    def sample_outputs(self, x: torch.Tensor, num_samples: int) -> torch.Tensor:
        """``num_samples`` stochastic passes in one vectorised call: shape ``(S, N, out_features)``."""
        num_samples = check_positive_int(num_samples, "num_samples")
        return self(x.expand(num_samples, *x.shape), sample=True)
