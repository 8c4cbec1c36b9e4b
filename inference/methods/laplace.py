r"""Laplace baselines on the shared MLP through laplace-torch: ``"laplace"`` (last layer, K-FAC) and
``"laplace_full"`` (all weights, diagonal GGN), both with the GGN summed over the training set, a prior precision tuned
on the validation data (grid search of the validation NLL; marginal likelihood when no validation data are given) and
the linearised (GLM) predictive (:class:`pyro_lowrank.inference.laplace.LaplaceApproximation`, whose module docstring
has the math and why the post-hoc marginal likelihood is not the default).

With validation data the MAP network is trained with validation early stopping (its best epoch by validation
NLL / MSE is restored; ``patience`` stops it early), so the same ``val`` serves both the MAP's epoch selection and the
prior-precision tuning.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from pyro_lowrank.models import DeterministicMLP

from ..deterministic import DeterministicFitResult, fit_deterministic
from ..laplace import (DEFAULT_GRID_SIZE, DEFAULT_LOG_PRIOR_PREC_MAX, DEFAULT_LOG_PRIOR_PREC_MIN,
                       LaplaceApproximation)
from .base import Data, Method
from .registry import register_method

__all__ = ["FullLaplaceMethod", "LastLayerLaplaceMethod"]

logger = logging.getLogger(__name__)


@register_method("laplace")
class LastLayerLaplaceMethod(Method):
    r"""A :class:`~pyro_lowrank.models.DeterministicMLP` trained with ``fit_deterministic`` (its weights are the
    MAP; ``weight_decay`` optional; with ``val`` the best validation epoch, ``patience`` for early stopping; the
    record is :attr:`fit_result`), then a laplace-torch posterior over the last layer's weights.

    :meth:`fit` ``(train, val)`` builds the GGN on ``train`` and, by default, picks the prior precision
    :math:`\lambda` that minimises the NLL of ``val`` under the GLM predictive (``tuning_method="gridsearch"``, a log
    grid :math:`10^{-2} \dots 10^{6}`, three values per decade); without ``val`` it falls back to the marginal
    likelihood with a warning. The tuned value is :attr:`prior_precision`.

    Extra parameters
    ----------------
    hessian_structure : {"kron", "diag", "full"}, optional
        Default ``"kron"`` (last layer) / ``"diag"`` (all weights).
    prior_precision : float
        Initial prior precision (marglik start; the value used without tuning).
    tuning_method : {"gridsearch", "marglik"}
        How the prior precision is tuned.
    log_prior_prec_min, log_prior_prec_max, grid_size, link_approx, n_samples :
        Grid-search settings (see :class:`~pyro_lowrank.inference.laplace.LaplaceApproximation`).
    prior_structure : {"scalar", "layerwise", "diag"}
        Structure of a marglik-tuned prior precision.
    marglik_steps, marglik_lr : int, float
        ``optimize_prior_precision(method="marglik")`` settings.
    weight_decay : float
        Adam weight decay of the MAP training (with the ``deterministic`` method's value and seed, the MAP is that
        method's network).

    ``training_seconds`` is MAP training plus the Laplace fit (curvature pass and prior tuning). ``num_parameters``
    is the :math:`P` MLP weights plus the stored Hessian approximation (``"kron"``: :math:`m^2 + n^2` per
    :math:`m \times n` weight and :math:`m^2` per bias of the modelled layers; ``"diag"``: one per modelled weight;
    ``"full"``: :math:`P_s^2`) plus the prior-precision entries (1 for a scalar prior). For classification the draws
    are ``predictive_samples(pred_type="glm")`` softmax probabilities; for regression GLM f-samples with the fixed
    ``noise_scale``.
    """

    subset_of_weights = "last_layer"

    def __init__(
        self,
        *args: Any,
        hessian_structure: str | None = None,
        prior_precision: float = 1.0,
        tuning_method: str = "gridsearch",
        log_prior_prec_min: float = DEFAULT_LOG_PRIOR_PREC_MIN,
        log_prior_prec_max: float = DEFAULT_LOG_PRIOR_PREC_MAX,
        grid_size: int = DEFAULT_GRID_SIZE,
        link_approx: str = "probit",
        n_samples: int = 100,
        prior_structure: str = "scalar",
        marglik_steps: int = 100,
        marglik_lr: float = 0.1,
        weight_decay: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.weight_decay = float(weight_decay)
        self._laplace_settings = {
            "subset_of_weights": self.subset_of_weights,
            "hessian_structure": hessian_structure,
            "prior_precision": prior_precision,
            "tuning_method": tuning_method,
            "log_prior_prec_min": log_prior_prec_min,
            "log_prior_prec_max": log_prior_prec_max,
            "grid_size": grid_size,
            "link_approx": link_approx,
            "n_samples": n_samples,
            "prior_structure": prior_structure,
            "marglik_steps": marglik_steps,
            "marglik_lr": marglik_lr,
        }
        # validate the settings now rather than after training
        LaplaceApproximation(torch.nn.Linear(1, 1), likelihood=self.likelihood, noise_scale=self.noise_scale,
                             batch_size=self.batch_size, **self._laplace_settings)
        self.network: DeterministicMLP | None = None
        self.fit_result: DeterministicFitResult | None = None
        self.laplace: LaplaceApproximation | None = None

    def _fit(self, train: Data, val: Data | None) -> float:
        torch.manual_seed(self.seed)
        net = self.build_network()
        self.fit_result = fit_deterministic(net, train, likelihood=self.likelihood, num_epochs=self.num_epochs,
                                            batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay,
                                            seed=self.seed, progress=self.progress, **self._early_stopping(val))
        map_seconds = self.fit_result.seconds
        laplace = LaplaceApproximation(net, likelihood=self.likelihood, noise_scale=self.noise_scale,
                                       batch_size=self.batch_size, **self._laplace_settings)
        laplace_seconds = laplace.fit(train, val)
        self.network, self.laplace = net, laplace
        self.map_seconds, self.laplace_seconds = map_seconds, laplace_seconds
        logger.info("%s: prior precision %s (%s)", self.name, laplace.prior_precision.tolist()[:8], laplace.tuning_used)
        return map_seconds + laplace_seconds

    def _predictive_draws(self, x: torch.Tensor, num_samples: int) -> dict[str, torch.Tensor]:
        return self.laplace.predictive_draws(x, num_samples)

    def _require_laplace(self, what: str) -> LaplaceApproximation:
        if self.laplace is None:
            raise RuntimeError(f"{self.name}: the posterior is built by fit(); {what} is known after fitting")
        return self.laplace

    @property
    def prior_precision(self) -> torch.Tensor:
        """The tuned prior precision (laplace-torch's ``prior_precision``; shape (1,) for a scalar prior)."""
        return self._require_laplace("prior_precision").prior_precision

    @property
    def num_parameters(self) -> int:
        return self._require_laplace("num_parameters").num_parameters


@register_method("laplace_full")
class FullLaplaceMethod(LastLayerLaplaceMethod):
    """:class:`LastLayerLaplaceMethod` over all weights (``subset_of_weights="all"``, default diagonal GGN)."""

    subset_of_weights = "all"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # a GGN over every weight of a recurrent or attention network is beyond laplace-torch's Kronecker and
        # diagonal backends (Linear/Conv layers only) and far beyond a dense P x P matrix
        self._mlp_only("Laplace over all weights")
