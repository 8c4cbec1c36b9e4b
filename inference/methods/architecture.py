r"""The network every compared method is built on.

A :class:`Method` is "a way of being Bayesian" about one architecture. The architecture says what the inputs look
like and builds the plain torch network :math:`f_\theta`; each method then derives its own model from it:

=================  ===================================================================================================
deterministic,     the torch network itself (M independent copies for the ensemble; SWAG and Laplace around it)
ensemble, SWAG,
Laplace
MC dropout         the torch network built with dropout rate p, dropout kept on at prediction
low-rank (LR-SVD)  :func:`~pyro_lowrank.nn.lowrankify` of a fresh network (of a trained twin: truncated SVD)
mean-field, rank-1 :mod:`models.weight_space` around the torch network (MLPs keep their specialised models)
=================  ===================================================================================================

:class:`MLPArchitecture` (tabular data, the heart and UCI experiments) keeps the library's MLP models
(``DeterministicMLP``, ``LowRankMLP``, ``MeanFieldMLP`` with local reparameterisation, ``Rank1MLP``,
``MCDropoutMLP``); :class:`NetworkArchitecture` wraps any network factory (the LSTM forecaster and the Transformer
classifier of :mod:`models.torch_networks`) and builds the Bayesian versions generically.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from pyro_lowrank._validation import check_positive_int

__all__ = ["Architecture", "MLPArchitecture", "NetworkArchitecture"]


class Architecture(abc.ABC):
    """What the compared methods need to know about the network they share."""

    #: Whether inputs are integer token ids (then they are never cast to the network's floating dtype).
    integer_inputs: bool = False

    @abc.abstractmethod
    def input_shape(self) -> tuple[int | None, ...]:
        """Per-example input shape (``None``: any size along that dimension)."""

    @abc.abstractmethod
    def network(self, out_features: int, *, dropout: float = 0.0) -> nn.Module:
        """A freshly initialised torch network with ``out_features`` outputs (dropout rate ``dropout``)."""

    def check_inputs(self, x: object, name: str) -> torch.Tensor:
        """``x`` after checking its type, dtype and per-example shape against :meth:`input_shape`."""
        shape = self.input_shape()
        expected = "(N, " + ", ".join("L" if s is None else str(s) for s in shape) + ")"
        kind = "an integer (token id)" if self.integer_inputs else "a floating-point"
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be {kind} tensor of shape {expected}, got {type(x).__name__}")
        if x.is_floating_point() == self.integer_inputs or x.dtype == torch.bool:
            raise ValueError(f"{name} must be {kind} tensor of shape {expected}, got dtype {x.dtype}")
        ok = x.dim() == len(shape) + 1 and all(s is None or s == d for s, d in zip(shape, x.shape[1:]))
        if not ok:
            raise ValueError(f"{name} must have shape {expected}, got {tuple(x.shape)}")
        return x


class MLPArchitecture(Architecture):
    """A ReLU MLP ``in_features -> hidden_features -> out`` on inputs (N, in_features)."""

    def __init__(self, in_features: int, hidden_features: Sequence[int]) -> None:
        self.in_features = check_positive_int(in_features, "in_features")
        self.hidden_features = [check_positive_int(h, "hidden_features") for h in hidden_features]

    def input_shape(self) -> tuple[int, ...]:
        return (self.in_features,)

    def network(self, out_features: int, *, dropout: float = 0.0) -> nn.Module:
        from pyro_lowrank.models import DeterministicMLP
        from pyro_lowrank.models.mc_dropout import MCDropoutMLP

        if dropout > 0:
            return MCDropoutMLP(self.in_features, self.hidden_features, out_features, dropout=dropout)
        return DeterministicMLP(self.in_features, self.hidden_features, out_features)

    def __repr__(self) -> str:
        return f"MLPArchitecture({self.in_features}, {self.hidden_features})"


class NetworkArchitecture(Architecture):
    """Any torch network given by a factory.

    Parameters
    ----------
    factory : callable
        ``factory(out_features=..., dropout=...) -> nn.Module`` mapping inputs (N, *input_shape) to (N, out_features).
    input_shape : sequence of int or None
        Per-example input shape (``None`` for a free dimension, e.g. the token positions).
    integer_inputs : bool
        Inputs are token ids (int64).
    lowrank_rank : lowrankify rank specification
        The low-rank methods' default ``rank`` (see :func:`~pyro_lowrank.nn.lowrankify`).
    name : str
        For reprs and reports.
    """

    def __init__(self, factory: Callable[..., nn.Module], input_shape: Sequence[int | None], *,
                 integer_inputs: bool = False, lowrank_rank: Any = 0.5, name: str = "network") -> None:
        if not callable(factory):
            raise TypeError(f"factory must be callable, got {type(factory).__name__}")
        self.factory = factory
        self._input_shape = tuple(None if s is None else check_positive_int(s, "input_shape") for s in input_shape)
        self.integer_inputs = bool(integer_inputs)
        self.lowrank_rank = lowrank_rank
        self.name = name

    def input_shape(self) -> tuple[int | None, ...]:
        return self._input_shape

    def network(self, out_features: int, *, dropout: float = 0.0) -> nn.Module:
        net = self.factory(out_features=out_features, dropout=dropout)
        if not isinstance(net, nn.Module):
            raise TypeError(f"factory must return an nn.Module, got {type(net).__name__}")
        return net

    def __repr__(self) -> str:
        return f"NetworkArchitecture({self.name!r}, input_shape={self._input_shape})"
