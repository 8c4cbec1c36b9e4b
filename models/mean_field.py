r"""The full-rank mean-field baseline: Bayes by Backprop (Blundell et al. 2015) with the local reparameterisation trick.

Every weight matrix is one Pyro sample site :math:`W \in \mathbb R^{m\times n}` (``Normal(...).to_event(2)``) with an
i.i.d. prior per entry and, under :class:`~pyro_lowrank.guides.FactorGuide`, the fully factorised posterior
:math:`q(W) = \prod_{jk}\mathcal N(\mu_{jk}, \sigma_{jk}^2)`, :math:`\sigma = \operatorname{softplus}(\rho)`:
2 m n + 2 m variational parameters per layer (with its bias), against 2 r (m + n) + 2 m for the low-rank layer.
The network and the data plate follow :class:`~pyro_lowrank.models.LowRankMLP` exactly, so both are trained by the
same :func:`~pyro_lowrank.inference.fit` and predicted by the same :func:`~pyro_lowrank.predictive.predict`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import Any

import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoNormal
from pyro.nn import PyroModule, PyroSample
from torch import nn

from pyro_lowrank._validation import check_last_dim, check_positive, check_positive_int
from pyro_lowrank.distributions import FactorPrior, GaussianPrior
from pyro_lowrank.nn.linear import align_to_plates

from .bayesian_mlp import BayesianMLP
from .likelihoods import Likelihood
from .local_reparameterization import (
    GaussianStats,
    LocalReparameterization,
    active_handler,
    batched_linear,
    gaussian_stats,
    local_reparameterized_linear,
)

__all__ = ["MeanFieldLinear", "MeanFieldMLP"]


def _prior_weight(layer: MeanFieldLinear):
    return layer.prior((layer.out_features, layer.in_features))


def _prior_bias(layer: MeanFieldLinear):
    return layer.prior((layer.out_features,))


class MeanFieldLinear(PyroModule):
    r"""Bayesian linear layer ``y = x W^T + bias`` with one sample site per weight tensor: ``weight`` (m x n) and
    ``bias`` (m).

    Parameters
    ----------
    in_features, out_features : int
        n and m.
    bias : bool
        Whether to add a Bayesian bias.
    prior : FactorPrior, optional
        Prior of every weight and bias entry; default ``GaussianPrior(prior_scale)``. Its constants are buffers.
    prior_scale : float
        Standard deviation of the default Gaussian prior.
    gain : float
        Variance of the initial weight means is ``gain / in_features`` (2 = He, for ReLU).
    init_scale_factor : float
        eta: the guide's initial standard deviation is ``eta * sqrt(gain / in_features)``.

    Notes
    -----
    **Forward.** Inputs ``(..., n)`` broadcast against the weight's leading (particle, plate) dimensions, as for
    :class:`~pyro_lowrank.nn.LowRankLinear`: a weight of batch shape ``(P, 1)`` and ``x`` of shape ``(N, n)`` give
    ``(P, N, m)``. When an active :class:`~pyro_lowrank.models.LocalReparameterization` knows the Gaussian the weight
    tensor was drawn from, the layer samples its pre-activations instead of using the weight,

    .. math:: a = x\mu^\top + \mu_b + \sqrt{x^2(\sigma^2)^\top + \sigma_b^2}\odot\varepsilon,

    which has the same distribution per datum as :math:`x W^\top + b` with :math:`W\sim q` (see
    :mod:`~pyro_lowrank.models.local_reparameterization`); otherwise it uses the sampled weight.

    **Guides.** The initial means live in the buffers ``weight_init`` and ``bias_init`` and are exposed with the
    initial scales through :meth:`initial_values` / :meth:`initial_scales`, which
    :class:`~pyro_lowrank.guides.FactorGuide` and :func:`~pyro_lowrank.guides.init_to_factors` read.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        prior: FactorPrior | None = None,
        prior_scale: float = 1.0,
        gain: float = 2.0,
        init_scale_factor: float = 0.1,
    ) -> None:
        super().__init__()
        self.in_features = check_positive_int(in_features, "in_features")
        self.out_features = check_positive_int(out_features, "out_features")
        check_positive(gain, "gain")
        check_positive(init_scale_factor, "init_scale_factor")
        if prior is None:
            prior = GaussianPrior(prior_scale)
        if not isinstance(prior, nn.Module) or not callable(prior):
            raise TypeError(f"prior must be a FactorPrior module (shape -> distribution), got {type(prior).__name__}")
        self.prior = prior
        self.init_scale_factor = float(init_scale_factor)
        self.weight = PyroSample(_prior_weight)
        self.bias = PyroSample(_prior_bias) if bias else None
        self.register_buffer("weight_init", torch.empty(self.out_features, self.in_features))
        self.register_buffer("bias_init", torch.zeros(self.out_features) if bias else None)
        entry_scale = math.sqrt(gain / self.in_features)
        self.set_init(entry_scale * torch.randn(self.out_features, self.in_features), entry_scale=entry_scale)

    # ------------------------------------------------------------------ initialisation
    def set_init(self, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                 entry_scale: float | None = None) -> None:
        """Set the initial weight means (and optionally bias means) that guides start from.

        ``entry_scale`` sizes the guide's initial standard deviations (``init_scale_factor * entry_scale``); default
        the root mean square of ``weight``.
        """
        if weight.shape != self.weight_init.shape:
            raise ValueError(f"weight must have shape {tuple(self.weight_init.shape)}, got {tuple(weight.shape)}")
        with torch.no_grad():
            self.weight_init.copy_(weight.detach())
            if bias is not None and self.bias_init is not None:
                self.bias_init.copy_(bias.detach().reshape(self.bias_init.shape))
        if entry_scale is None:
            entry_scale = math.sqrt(max(float(weight.detach().square().mean()), torch.finfo(weight.dtype).tiny))
        self.init_scale = self.init_scale_factor * float(entry_scale)

    @classmethod
    def from_linear(cls, linear: nn.Linear, **kwargs: Any) -> MeanFieldLinear:
        """A layer whose guide starts at a trained ``nn.Linear``'s weight and bias; ``kwargs`` go to the
        constructor (``prior``, ``init_scale_factor``, ...)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be a torch.nn.Linear, got {type(linear).__name__}")
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, **kwargs)
        layer = layer.to(dtype=linear.weight.dtype, device=linear.weight.device)
        layer.set_init(linear.weight, linear.bias)
        return layer

    def initial_values(self) -> dict[str, torch.Tensor]:
        """Initial means of this layer's sites, keyed by full Pyro site name (read by guides)."""
        values = {self.site_name("weight"): self.weight_init}
        if self.bias_init is not None:
            values[self.site_name("bias")] = self.bias_init
        return values

    def initial_scales(self) -> dict[str, float]:
        """Initial guide standard deviations of this layer's sites, ``init_scale_factor * entry_scale``."""
        return {name: self.init_scale for name in self.initial_values()}

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x W^T + bias`` for ``x`` of shape ``(..., in_features)``; returns ``(..., out_features)`` (see Notes)."""
        check_last_dim(x, self.in_features, "x", f"MeanFieldLinear(in_features={self.in_features})")
        weight = self.weight
        bias = self.bias
        stats = gaussian_stats(weight)
        w = align_to_plates(weight, 2)
        if stats is None:
            out = batched_linear(x, w)
            return out if bias is None else out + align_to_plates(bias, 1)
        w_stats = GaussianStats(*(align_to_plates(t.expand(weight.shape), 2) for t in stats))
        b_arg: GaussianStats | torch.Tensor | None = None
        if bias is not None:
            b_stats = gaussian_stats(bias)
            if b_stats is None:
                b_arg = align_to_plates(bias, 1)
            else:
                b_arg = GaussianStats(*(align_to_plates(t.expand(bias.shape), 1) for t in b_stats))
        return local_reparameterized_linear(x, w_stats, b_arg, particle_shape=w.shape[:-2])

    # ------------------------------------------------------------------ posterior
    def site_name(self, name: str) -> str:
        """Full Pyro site name of ``"weight"`` or ``"bias"`` for this layer (e.g. ``"layers.0.weight"``)."""
        return f"{self._pyro_name}.{name}" if self._pyro_name else name

    def weight_posterior(self, guide: Any) -> dist.Independent:
        """q(W) = Normal(mu, sigma^2) over the (m, n) weight, read from a trained FactorGuide / AutoNormal."""
        name = self.site_name("weight")
        if not isinstance(guide, AutoNormal):
            raise TypeError(f"weight_posterior supports FactorGuide and AutoNormal, got {type(guide).__name__}")
        if guide.prototype_trace is None or name not in guide.prototype_trace.nodes:
            raise ValueError(f"guide has no site {name!r}: call it once (or train it) before reading the posterior")
        loc, scale = guide._get_loc_and_scale(name)
        return dist.Normal(loc.detach(), scale.detach()).to_event(2)

    def num_variational_parameters(self) -> int:
        """Learned numbers of a mean-field guide over this layer: 2 m n, plus 2 m for the bias."""
        count = 2 * self.out_features * self.in_features
        return count + (2 * self.out_features if self.bias is not None else 0)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class MeanFieldMLP(BayesianMLP):
    """Full-rank mean-field Bayesian MLP (BBB): ``MeanFieldLinear`` layers, an activation and a likelihood.

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
    prior : FactorPrior, optional
        Prior of every weight and bias entry, shared by all layers (each gets its own copy); default Gaussian with
        ``prior_scale``.
    prior_scale : float
        Scale of the default Gaussian prior.
    activation : nn.Module
        Hidden activation (default ReLU).
    init_scale_factor : float
        eta, the guide's initial standard deviation relative to the He init scale ``sqrt(2 / n_in)``.
    local_reparameterization : bool
        Apply the local reparameterisation trick automatically (see Notes).

    Notes
    -----
    ``forward(x, y=None, *, num_data=None, subsample_size=None)`` has exactly the conventions of
    :class:`~pyro_lowrank.models.LowRankMLP` (its data plate, minibatch scaling and the deterministic site ``f``;
    the implementation is shared through :class:`~pyro_lowrank.models.BayesianMLP`).

    **Local reparameterisation.** With ``local_reparameterization=True`` (the default) the forward pass runs inside a
    :class:`~pyro_lowrank.models.LocalReparameterization` handler whenever the caller has not entered one, so
    ``fit``, ``predict``, ``TraceMeanField_ELBO()(model, guide)`` and ``SVI`` use the trick with no wrapping: every
    layer whose weight was drawn by the guide from a Gaussian samples its pre-activations from their exact Gaussian
    instead. Values are resolved through the replayed guide trace, so the statistics are the guide's, never the
    prior's; the ELBO's KL term is computed from the sites as usual (analytically by ``TraceMeanField_ELBO``).
    Each datum then gets its own weight noise: the predictive distribution of every single input, and with it every
    per-input metric (predictive mean, entropy, mutual information, NLL, intervals), is the same as with weight
    sampling, and training gradients have lower variance. What is lost is the coupling between inputs: a draw of
    ``predict(...)["f"]`` is not one network evaluated at all inputs. For coherent function draws (joint samples
    over inputs), set ``model.local_reparameterization = False`` before predicting; a
    ``LocalReparameterization`` entered by the caller applies either way. With ``False`` the layers use sampled
    weights unless the caller enters a handler.
    """

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
        prior: FactorPrior | None = None,
        prior_scale: float = 1.0,
        activation: nn.Module | None = None,
        init_scale_factor: float = 0.1,
        local_reparameterization: bool = True,
    ) -> None:
        super().__init__(in_features, hidden_features, out_features, likelihood=likelihood, num_classes=num_classes,
                         noise_scale=noise_scale, learn_noise=learn_noise, activation=activation)
        self.local_reparameterization = bool(local_reparameterization)
        self.layers = self._make_layers(MeanFieldLinear, prior, prior_scale=prior_scale,
                                        init_scale_factor=init_scale_factor)

    def num_variational_parameters(self) -> int:
        """2 sum_layers (m n + m): the learned numbers of a mean-field guide over all weights and biases."""
        return sum(layer.num_variational_parameters() for layer in self.layers)

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
        ``subsample_size``: the plate draws a random minibatch of ``x``; neither: ``x`` is the whole dataset. Runs inside
        a :class:`~pyro_lowrank.models.LocalReparameterization` handler when ``local_reparameterization`` is set and the
        caller has entered none.
        """
        use_handler = self.local_reparameterization and active_handler() is None
        with LocalReparameterization() if use_handler else contextlib.nullcontext():
            return super().forward(x, y, num_data=num_data, subsample_size=subsample_size)

    def extra_repr(self) -> str:
        return f"widths={self.widths}, local_reparameterization={self.local_reparameterization}"
