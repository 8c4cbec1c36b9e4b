"""Deterministic twin of the low-rank MLP: same widths and activation, point-estimated weights.

It is the accuracy and speed reference, and the source of SVD initialisation (``LowRankLinear.from_linear``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pyro_lowrank._validation import check_last_dim, check_positive_int

__all__ = ["DeterministicMLP", "layer_stack"]


def layer_stack(x: torch.Tensor, layers: Sequence[nn.Module], activation: nn.Module) -> torch.Tensor:
    """``layers[-1](act(... act(layers[0](x))))``: the activation between layers, none after the last."""
    h = x
    for i, layer in enumerate(layers):
        h = layer(h)
        if i < len(layers) - 1:
            h = activation(h)
    return h


class DeterministicMLP(nn.Module):
    """``nn.Linear`` layers with an activation between them; ``forward`` returns the raw output ``f``.

    Parameters
    ----------
    in_features : int
        Input width.
    hidden_features : sequence of int
        Hidden widths.
    out_features : int
        Output width (1 for regression or binary, C for C classes).
    activation : nn.Module
        Hidden activation (default ReLU).
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: Sequence[int],
        out_features: int,
        activation: nn.Module | None = None,
    ) -> None:
        super().__init__()
        widths = [check_positive_int(in_features, "in_features")]
        widths += [check_positive_int(h, "hidden_features") for h in hidden_features]
        widths.append(check_positive_int(out_features, "out_features"))
        self.in_features = widths[0]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.activation = activation if activation is not None else nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_last_dim(x, self.in_features, "x", f"DeterministicMLP(in_features={self.in_features})")
        return layer_stack(x, self.layers, self.activation)
