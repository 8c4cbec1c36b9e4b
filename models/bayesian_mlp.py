r"""The part shared by the Bayesian MLPs (:class:`~pyro_lowrank.models.LowRankMLP`,
:class:`~pyro_lowrank.models.MeanFieldMLP`, :class:`~pyro_lowrank.models.Rank1MLP`): likelihood and width validation,
the network pass, the data checks and the data plate.

Model: :math:`h_0 = x`, :math:`h_\ell = \phi(\mathrm{layer}_\ell(h_{\ell-1}))`, :math:`f = h_L` (no activation on the
output), and :math:`y_i \mid f_i \sim p(y \mid f_i)` inside a data plate. The layers' sites are global (sampled outside
the plate); only ``obs`` is inside it, so minibatches of size B from N data points scale the likelihood by N / B, which
keeps the ELBO an unbiased estimate of the full-data ELBO. Subclasses choose the layer type.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import pyro
import torch
from pyro.nn import PyroModule
from torch import nn

from pyro_lowrank._validation import check_last_dim, check_positive_int
from pyro_lowrank.distributions import FactorPrior

from .data_plate import data_plate
from .deterministic import layer_stack
from .likelihoods import Likelihood, make_likelihood

__all__ = ["BayesianMLP"]


class BayesianMLP(PyroModule):
    """Base class of the Bayesian MLPs: a likelihood, layer widths, an activation, and the data-plate ``forward``.

    The constructor validates the likelihood options and the widths and sets ``likelihood``, ``widths``,
    ``in_features`` and ``activation``; a subclass then builds ``self.layers`` (one layer per consecutive pair of
    ``widths``) with its own layer type, usually through :meth:`_make_layers`.

    Parameters
    ----------
    in_features : int
        Input width.
    hidden_features : sequence of int
        Widths of the hidden layers (empty: a Bayesian generalised linear model).
    out_features : int, optional
        Output width; default the likelihood's (1 for Gaussian/Bernoulli, ``num_classes`` for categorical).
    likelihood : {"gaussian", "bernoulli", "categorical"} or Likelihood
        The observation model.
    num_classes : int, optional
        For ``likelihood="categorical"``.
    noise_scale, learn_noise : float, bool
        For ``likelihood="gaussian"``: fixed noise sigma, or its initial value when learned.
    activation : nn.Module
        Hidden activation (default ReLU).

    Notes
    -----
    ``forward(x, y=None, *, num_data=None, subsample_size=None)``:

    * ``num_data``: ``x`` is a minibatch of a dataset of this size (the library's ``fit`` passes it);
    * ``subsample_size``: ``x`` is the full dataset and the data plate draws a random minibatch of this size
      (Pyro's tutorial idiom);
    * neither: ``x`` is the whole dataset.

    The network output is recorded as the deterministic site ``f`` (shape ``(N,)`` or ``(N, C)`` per draw).
    Subclasses that change the observation model reuse :meth:`_data_plate` and :meth:`network`.
    """

    layers: nn.ModuleList  # built by the subclass, one layer per consecutive pair of ``widths``

    def __init__(
        self,
        in_features: int,
        hidden_features: Sequence[int],
        out_features: int | None = None,
        *,
        likelihood: str | Likelihood = "categorical",
        num_classes: int | None = None,
        noise_scale: float = 1.0,
        learn_noise: bool = False,
        activation: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.likelihood = self._make_likelihood(likelihood, num_classes, out_features, noise_scale, learn_noise)
        self.widths = self._check_widths(in_features, hidden_features, self.likelihood.num_outputs)
        self.in_features = self.widths[0]
        self.activation = activation if activation is not None else nn.ReLU()

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _make_likelihood(
        likelihood: str | Likelihood,
        num_classes: int | None,
        out_features: int | None,
        noise_scale: float,
        learn_noise: bool,
    ) -> Likelihood:
        """The likelihood module, after checking ``num_classes`` and ``out_features`` against it.

        Parameters
        ----------
        likelihood : str or Likelihood
            Name of a built-in likelihood, or a likelihood module.
        num_classes : int, optional
            Number of classes; required (or given as ``out_features``) for, and only allowed with, ``"categorical"``.
        out_features : int, optional
            Requested output width; must equal the likelihood's ``num_outputs`` when given.
        noise_scale, learn_noise : float, bool
            Passed on for ``likelihood="gaussian"`` only.

        Returns
        -------
        Likelihood
        """
        if likelihood == "categorical":
            num_classes = out_features if num_classes is None else num_classes
            if num_classes is None:
                raise ValueError("likelihood='categorical' needs num_classes (or out_features), got None")
            num_classes = check_positive_int(num_classes, "num_classes")
        elif num_classes is not None:
            raise ValueError(f"num_classes is only used with likelihood='categorical', got likelihood={likelihood!r}")
        likelihood_kwargs = {"noise_scale": noise_scale, "learn_noise": learn_noise} if likelihood == "gaussian" else {}
        module = make_likelihood(likelihood, num_classes or 1, **likelihood_kwargs)
        if out_features is not None and out_features != module.num_outputs:
            raise ValueError(f"out_features must be {module.num_outputs} for this likelihood, got {out_features}")
        return module

    @staticmethod
    def _check_widths(in_features: int, hidden_features: Sequence[int], out_features: int) -> tuple[int, ...]:
        """``(in_features, *hidden_features, out_features)`` as ints, after checking that each is positive.

        Raises
        ------
        TypeError
            If ``hidden_features`` is not a sequence (a bare int or a string).
        ValueError
            If a width is not a positive integer (the message names it, e.g. ``hidden_features[1]``).
        """
        if isinstance(hidden_features, (str, bytes)) or not isinstance(hidden_features, Sequence):
            raise TypeError(
                f"hidden_features must be a sequence of positive ints (e.g. [128, 128]), got {hidden_features!r}"
            )
        widths = [check_positive_int(in_features, "in_features")]
        widths += [check_positive_int(h, f"hidden_features[{i}]") for i, h in enumerate(hidden_features)]
        widths.append(out_features)
        return tuple(widths)

    def _make_layers(
        self,
        layer_type: type[nn.Module],
        prior: FactorPrior | None,
        per_layer: Sequence[Mapping[str, Any]] | None = None,
        **kwargs: Any,
    ) -> nn.ModuleList:
        """One ``layer_type(n_in, n_out, prior=..., **kwargs, **per_layer[i])`` per consecutive pair of ``widths``.

        Parameters
        ----------
        layer_type : type
            The Bayesian layer class (its first two arguments are the input and output widths).
        prior : FactorPrior, optional
            Shared prior; every layer gets its own deep copy (``None``: each layer's default prior).
        per_layer : sequence of mapping, optional
            Extra keyword arguments of each layer (e.g. its rank), one mapping per layer.
        **kwargs
            Keyword arguments common to all layers.

        Returns
        -------
        PyroModule[nn.ModuleList]
        """
        pairs = list(itertools.pairwise(self.widths))
        per_layer = [{}] * len(pairs) if per_layer is None else per_layer
        return PyroModule[nn.ModuleList](
            [
                layer_type(n_in, n_out, prior=None if prior is None else copy.deepcopy(prior), **kwargs, **extra)
                for (n_in, n_out), extra in zip(pairs, per_layer, strict=True)
            ]
        )

    # ------------------------------------------------------------------ network and data
    def network(self, x: torch.Tensor) -> torch.Tensor:
        """The network output ``(..., N, out_features)`` for inputs ``(N, in_features)``.

        The leading ``...`` are the layers' batch dimensions (particles, and for a :class:`Rank1MLP` with K > 1 the
        components).
        """
        return layer_stack(x, self.layers, self.activation)

    def _check_shapes(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        check_last_dim(x, self.in_features, "x", f"{type(self).__name__}(in_features={self.in_features})")
        if x.dim() != 2:
            raise ValueError(f"x must have shape (N, {self.in_features}), got {tuple(x.shape)}")
        if y is not None and y.shape != x.shape[:1]:
            raise ValueError(f"y must have shape ({x.shape[0]},) to match x, got {tuple(y.shape)}")

    def check_data(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """Validate a dataset once (``fit`` calls this): shapes, and target values against the likelihood."""
        self._check_shapes(x, y)
        if y is not None:
            self.likelihood.check_targets(y)

    def _data_plate(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None,
        num_data: int | None,
        subsample_size: int | None,
    ) -> tuple[pyro.plate, torch.Tensor, torch.Tensor | None]:
        """Check shapes and build the data plate (dim -1).

        Parameters
        ----------
        x, y : Tensor
            Inputs ``(N, in_features)`` and optional targets ``(N,)``.
        num_data : int, optional
            ``x`` is a minibatch of a dataset of this size: the plate has this size and subsamples all of ``x``.
        subsample_size : int, optional
            The plate draws a random minibatch of this size from ``x`` (its indices are drawn here, once).

        Returns
        -------
        plate : pyro.plate
            The data plate, to be entered around ``f`` and the likelihood.
        x, y : Tensor
            The (possibly subsampled) inputs and targets.
        """
        self._check_shapes(x, y)
        return data_plate(x, y, num_data, subsample_size)

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        num_data: int | None = None,
        subsample_size: int | None = None,
    ) -> torch.Tensor:
        """Run the network on ``x`` (N, in_features) and observe ``y`` inside the data plate; returns ``f``.

        ``num_data``: ``x`` is a minibatch of a dataset of this size (likelihood scaled by N / B);
        ``subsample_size``: the plate draws a random minibatch of ``x``; neither: ``x`` is the whole dataset.
        """
        data, x, y = self._data_plate(x, y, num_data, subsample_size)
        f = self.likelihood.link_input(self.network(x))
        with data:
            pyro.deterministic("f", f, event_dim=self.likelihood.event_dim)
            self.likelihood(f, y)
        return f
