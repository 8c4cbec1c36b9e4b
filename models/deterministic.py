"""Deterministic twin of the low-rank MLP: same widths and activation, point-estimated weights.

It is the accuracy and speed reference, and the source of SVD initialisation (``LowRankLinear.from_linear``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pyro_lowrank._validation import check_last_dim, check_positive_int
from pyro_lowrank.nn.linear import LowRankLinear

__all__ = ["DeterministicMLP", "layer_stack"]


TILE_BYTES = 16 * 2**20
"""Target size of the widest hidden activation of one row tile in :func:`layer_stack` without autograd."""


def layer_stack(x: torch.Tensor, layers: Sequence[nn.Module], activation: nn.Module) -> torch.Tensor:
    """``layers[-1](act(... act(layers[0](x))))``: the activation between layers, none after the last.

    Without autograd (prediction) the same function is computed with less memory traffic: the hidden activations
    (draws x inputs x width, the largest tensors of a vectorised predictive pass) are produced in row tiles of about
    :data:`TILE_BYTES` that stay in cache, a ReLU is applied in place, and a square hidden layer that supports it
    (``out=``, as :class:`~pyro_lowrank.nn.LowRankLinear`) writes its output over its input. Rows (dimension -2 of
    ``x``, the data points) are independent, so tiling changes no value when every layer is deterministic given its
    weights and the activation acts on each row alone; it is used only then (all layers
    :class:`~pyro_lowrank.nn.LowRankLinear`, inside a ``PyroModule`` call so that every tile sees the same draws).

    Parameters
    ----------
    x : torch.Tensor
        Inputs ``(..., N, n)``.
    layers : sequence of nn.Module
        The layers, first to last.
    activation : nn.Module
        Applied between layers (not after the last).

    Returns
    -------
    torch.Tensor
        The output of the last layer.
    """
    if torch.is_grad_enabled():
        h = x
        for i, layer in enumerate(layers):
            h = layer(h)
            if i < len(layers) - 1:
                h = activation(h)
        return h
    # Tiles must see the same weight draws: only inside a PyroModule call, whose context caches each sample site
    # (outside one, every access of a layer's A and B would draw them anew).
    cached = all(isinstance(layer, LowRankLinear) and layer._pyro_context.active for layer in layers)
    if x.dim() < 2 or not cached:
        return _stack_no_grad(x, layers, activation)[0]
    rows = x.shape[-2]
    first, widest = _stack_no_grad(x[..., : min(rows, 32), :], layers, activation)
    if rows <= 32:
        return first
    per_row = max(widest // min(rows, 32), 1)
    tile = max(32, TILE_BYTES // per_row)
    pieces = [first] + [_stack_no_grad(x[..., start : start + tile, :], layers, activation)[0]
                        for start in range(32, rows, tile)]
    return torch.cat(pieces, dim=-2)


def _stack_no_grad(x: torch.Tensor, layers: Sequence[nn.Module], activation: nn.Module) -> tuple[torch.Tensor, int]:
    """The layer stack without autograd, and the size in bytes of its widest hidden activation."""
    relu = type(activation) is nn.ReLU
    widest = 0
    h = x
    for i, layer in enumerate(layers):
        owned = i > 0  # h was created here, so it may be overwritten
        if owned and isinstance(layer, LowRankLinear) and layer.in_features == layer.out_features:
            out = layer(h, out=h)
        else:
            out = layer(h)
        if i < len(layers) - 1:
            # In place only on a LowRankLinear's output, a fresh product; other layers may return a tensor that a
            # Pyro trace records (local reparameterisation samples the pre-activations as a site).
            fresh = isinstance(layer, LowRankLinear)
            shares_input = out.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
            out = torch.relu_(out) if relu and fresh and not shares_input else activation(out)
            widest = max(widest, out.numel() * out.element_size())
        h = out
    return h, widest


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
