r"""Rank-1 Bayesian neural networks (Dusenberry et al., ICML 2020, "Efficient and Scalable Bayesian Neural Nets with
Rank-1 Factors"): a point-estimated shared weight with Bayesian multiplicative rank-1 perturbations.

Layer model. :math:`W_0 \in \mathbb R^{m\times n}` and the bias :math:`b` are point estimates (plain parameters,
learned by maximising the ELBO); the rank-1 factors :math:`r \in \mathbb R^m`, :math:`s \in \mathbb R^n` are latent with
i.i.d. prior :math:`\mathcal N(1, \sigma^2)` (``prior_scale`` = :math:`\sigma`), and

.. math:: W = W_0 \circ (r s^\top), \qquad y = \big((x \circ s) W_0^\top\big) \circ r + b,

so W is never formed (cost batch * m * n per draw, the same as a deterministic layer). With independent
:math:`r_i, s_j \sim \mathcal N(1, \sigma^2)`: :math:`\mathbb E W = W_0` and
:math:`\operatorname{Var} W_{ij} = W_{0,ij}^2 \big((1+\sigma^2)^2 - 1\big)`.

Mixture posterior (``num_components = K > 1``). Each layer has K factor pairs :math:`(r_k, s_k)`, sampled inside
``pyro.plate("components", K, dim=-2)``; a mean-field guide over them (:class:`~pyro_lowrank.guides.FactorGuide`) is the
K components :math:`q_k` of the equal-weight mixture :math:`q = \frac1K\sum_k q_k`. Training follows the reference
implementation (google/uncertainty-baselines ``rank1_bnn.py``: the batch is tiled K times, the NLL is averaged over the
K B rows, the KL regulariser is summed over every member's factors): each component is an ensemble member trained on
the same minibatch, the likelihood carries a components batch dimension and is *averaged* over members (scale
:math:`1/K`, on top of the data plate's :math:`N/B`), and the KL is *summed* over members:

.. math:: \mathcal L = \frac1K\sum_{k=1}^K \frac NB \sum_{i\in\text{batch}}
          \mathbb E_{q_k}[\log p(y_i \mid x_i, \theta_k)] - \sum_{k=1}^K \mathrm{KL}(q_k \,\|\, p).

Since :math:`\mathrm{ELBO}(q) \ge \frac1K\sum_k \mathrm{ELBO}(q_k)` (concavity of the entropy), ``fit(...,
kl_weight=1/K)`` optimises exactly that lower bound on the mixture's ELBO; the default (``kl_weight=1``) is the
reference weighting, i.e. that bound with the KL weighted K times. ``fit``'s ``num_data`` scaling is unaffected: the
data plate still scales the (member-averaged) likelihood by N / B.

Prediction. The predictive is the mixture: every guide draw carries all K components, so S guide draws give S K
network draws (stratified over components). The deterministic site ``f`` keeps the components dimension,
``(..., K, N[, C])``, and when the model runs inside a vectorised predictive plate (``pyro_lowrank.predict``,
``log_predictive_density``, ``to_inference_data``, Pyro's ``Predictive(parallel=True)``) the observed site ``obs`` is
the equal-weight mixture :math:`\frac1K\sum_k p(y \mid f_k)` (one ``obs`` per datum), so pointwise log densities and
``obs`` draws are those of the mixture predictive. With ``K = 1`` there is no components plate: shapes are those of
:class:`~pyro_lowrank.models.LowRankMLP`.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule, PyroSample
from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import get_plates
from pyro.poutine.util import site_is_subsample
from torch import nn

from pyro_lowrank._validation import check_last_dim, check_positive, check_positive_int
from pyro_lowrank.distributions import FactorPrior, GaussianPrior
from pyro_lowrank.nn.linear import align_to_plates

from .bayesian_mlp import BayesianMLP
from .likelihoods import Likelihood

__all__ = ["COMPONENTS_PLATE", "Rank1Linear", "Rank1MLP"]

COMPONENTS_PLATE = "components"
"""Name of the plate over the K mixture components (ensemble members)."""

# pyro.infer.Predictive(parallel=True) and pyro_lowrank.predictive draw posterior samples inside a plate of this name.
_PREDICTIVE_PLATE = "_num_predictive_samples"


def _prior_r(layer: Rank1Linear):
    return layer.prior((layer.out_features,))


def _prior_s(layer: Rank1Linear):
    return layer.prior((layer.in_features,))


def _check_num_components(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"num_components must be a positive integer (1 = a single Gaussian posterior), got {value!r}")
    return int(value)


def _check_random_sign_init(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value > 1:
        raise ValueError(
            "random_sign_init must be a finite number <= 1 (in (0, 1]: means are +1 with that probability and -1 "
            f"otherwise; <= 0: means ~ N(1, random_sign_init^2)), got {value!r}"
        )
    return float(value)


def _active_components_frame():
    return next((frame for frame in get_plates() if frame.name == COMPONENTS_PLATE), None)


def _in_predictive_plate() -> bool:
    return any(frame.name == _PREDICTIVE_PLATE for frame in get_plates())


class Rank1Linear(PyroModule):
    r"""Rank-1 Bayesian linear layer: ``y = ((x * s) @ W0.T) * r + bias``, i.e. :math:`W = W_0\circ(r s^\top)`.

    Parameters
    ----------
    in_features, out_features : int
        n and m.
    bias : bool
        Whether to add a (point-estimated) bias.
    num_components : int
        K, the number of (r, s) pairs (mixture components / ensemble members), >= 1.
    prior : FactorPrior, optional
        Prior of every entry of r and s; default ``GaussianPrior(prior_scale, loc=1.0)``. Its constants are buffers.
    prior_scale : float
        sigma of the default prior N(1, sigma^2).
    gain : float
        He initialisation of the shared weight: :math:`W_{0,ij} \sim \mathcal N(0, \text{gain}/n)` (2 for ReLU).
    random_sign_init : float
        Initial means of r and s, as in the reference implementation: in (0, 1], each mean is +1 with this
        probability and -1 otherwise (Dusenberry et al.'s random-sign init, 0.5 in their CIFAR runs); <= 0, the
        means are drawn from :math:`\mathcal N(1, \text{random\_sign\_init}^2)` (-0.5 in several reference
        configurations; 0: all ones).
    init_scale_factor : float
        The guide's initial standard deviation of every factor entry (relative to the prior mean 1).
    component_dim : int
        Plate dimension of the components plate (K > 1), -2 by default (left of a data plate at -1).

    Notes
    -----
    Sites: ``r`` (event shape ``(m,)``) and ``s`` (``(n,)``). With K > 1 they are sampled inside
    ``pyro.plate("components", K, dim=component_dim)``: the caller's plate of that name if one is active (as in
    :class:`Rank1MLP`), else the layer opens it; their values then have shape ``(K, 1, ..., m)`` and an input
    ``(N, n)`` gives an output ``(K, N, m)``. Leading particle dimensions (vectorised ELBO particles, predictive draws)
    broadcast as for :class:`~pyro_lowrank.nn.LowRankLinear`. The initial means are the buffers ``r_init`` and
    ``s_init``, read by guides through :meth:`initial_values`.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        num_components: int = 1,
        prior: FactorPrior | None = None,
        prior_scale: float = 0.1,
        gain: float = 2.0,
        random_sign_init: float = -0.5,
        init_scale_factor: float = 0.1,
        component_dim: int = -2,
    ) -> None:
        super().__init__()
        self.in_features = check_positive_int(in_features, "in_features")
        self.out_features = check_positive_int(out_features, "out_features")
        self.num_components = _check_num_components(num_components)
        check_positive(prior_scale, "prior_scale")
        check_positive(gain, "gain")
        check_positive(init_scale_factor, "init_scale_factor")
        self.random_sign_init = _check_random_sign_init(random_sign_init)
        if isinstance(component_dim, bool) or not isinstance(component_dim, numbers.Integral) or component_dim > -1:
            raise ValueError(f"component_dim must be a negative integer (a plate dimension), got {component_dim!r}")
        self.component_dim = int(component_dim)
        if prior is None:
            prior = GaussianPrior(prior_scale, loc=1.0)
        if not isinstance(prior, nn.Module) or not callable(prior):
            raise TypeError(f"prior must be a FactorPrior module (shape -> distribution), got {type(prior).__name__}")
        self.prior = prior
        self.init_scale_factor = float(init_scale_factor)
        self.weight = nn.Parameter(torch.randn(out_features, in_features) * math.sqrt(gain / in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.r = PyroSample(_prior_r)
        self.s = PyroSample(_prior_s)
        self.register_buffer("r_init", self._draw_init(out_features))
        self.register_buffer("s_init", self._draw_init(in_features))

    # ------------------------------------------------------------------ initialisation
    def site_shape(self, size: int) -> tuple[int, ...]:
        """Shape of a factor site's value of length ``size``: ``(size,)``, or ``(K, 1, ..., 1, size)`` for K > 1."""
        if self.num_components == 1:
            return (size,)
        return (self.num_components,) + (1,) * (-self.component_dim - 1) + (size,)

    def _draw_init(self, size: int) -> torch.Tensor:
        shape = self.site_shape(size)
        if self.random_sign_init > 0:
            return torch.where(torch.rand(shape) < self.random_sign_init, 1.0, -1.0)
        return 1.0 + abs(self.random_sign_init) * torch.randn(shape)

    def initial_values(self) -> dict[str, torch.Tensor]:
        """Initial guide means of ``r`` and ``s``, keyed by full Pyro site name (read by ``init_to_factors``)."""
        return {self.site_name("r"): self.r_init, self.site_name("s"): self.s_init}

    def initial_scales(self) -> dict[str, float]:
        """Initial guide standard deviations of ``r`` and ``s``: ``init_scale_factor``."""
        return {name: self.init_scale_factor for name in self.initial_values()}

    def site_name(self, name: str) -> str:
        """Full Pyro site name of ``"r"`` or ``"s"`` for this layer (e.g. ``"layers.0.r"``)."""
        return f"{self._pyro_name}.{name}" if self._pyro_name else name

    # ------------------------------------------------------------------ forward
    def _components_plate(self):
        frame = _active_components_frame()
        if frame is not None:
            if frame.size != self.num_components or (self.num_components > 1 and frame.dim != self.component_dim):
                raise ValueError(
                    f"a plate {COMPONENTS_PLATE!r} of size {frame.size} at dim {frame.dim} is active, but this layer "
                    f"has num_components={self.num_components} and component_dim={self.component_dim}"
                )
            return contextlib.nullcontext()
        if self.num_components == 1:
            return contextlib.nullcontext()
        return pyro.plate(COMPONENTS_PLATE, self.num_components, dim=self.component_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``((x * s) @ W0.T) * r + bias`` for ``x`` of shape ``(..., in_features)``.

        The factors' batch dimensions (components, particles) broadcast against ``x.shape[:-1]``, right-aligned:
        factors of batch shape ``(P, K, 1)`` and ``x`` of shape ``(N, n)`` give ``(P, K, N, m)``.
        """
        check_last_dim(x, self.in_features, "x", f"Rank1Linear(in_features={self.in_features})")
        with self._components_plate():
            r = align_to_plates(self.r, 1)
            s = align_to_plates(self.s, 1)
        out = ((x * s) @ self.weight.transpose(0, 1)) * r
        if self.bias is not None:
            out = out + self.bias
        return out

    def weight_from_factors(self, r: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        r"""The weight :math:`W_0 \circ (r s^\top)`, shape ``batch + (m, n)``, for factors ``batch + (m,)``,
        ``batch + (n,)`` (diagnostics only: the forward pass never forms it)."""
        return self.weight * r.unsqueeze(-1) * s.unsqueeze(-2)

    def num_variational_parameters(self) -> int:
        """Learned numbers of this layer with a mean-field guide: m n + m (W0, bias) + 2 K (m + n)."""
        m, n = self.out_features, self.in_features
        count = m * n + (m if self.bias is not None else 0)
        return count + 2 * self.num_components * (m + n)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"num_components={self.num_components}, bias={self.bias is not None}")


class _ComponentMixture(Messenger):
    """Replace the distribution of each sample site emitted inside by the equal-weight mixture over its rightmost batch
    dimension (the components, moved there by :func:`_components_last`)."""

    def __init__(self, like: torch.Tensor) -> None:
        super().__init__()
        self.like = like

    def _process_message(self, msg: dict) -> None:
        if msg["type"] != "sample" or site_is_subsample(msg) or msg["infer"].get("_deterministic"):
            return
        num = msg["fn"].batch_shape[-1]
        weights = dist.Categorical(logits=torch.zeros(num, dtype=self.like.dtype, device=self.like.device))
        msg["fn"] = dist.MixtureSameFamily(weights, msg["fn"])


def _components_last(f: torch.Tensor, event_dim: int) -> torch.Tensor:
    """``(..., K, N, *event)`` -> ``(..., 1, N, K, *event)``: components as the rightmost batch dimension, a
    singleton left in their plate's place."""
    return f.unsqueeze(-1 - event_dim).transpose(-3 - event_dim, -1 - event_dim)


class Rank1MLP(BayesianMLP):
    """Rank-1 Bayesian MLP: :class:`Rank1Linear` layers, an activation, and a likelihood (see the module docstring).

    Parameters
    ----------
    in_features : int
        Input width.
    hidden_features : sequence of int
        Widths of the hidden layers.
    out_features : int, optional
        Output width; default the likelihood's (1 for Gaussian/Bernoulli, ``num_classes`` for categorical).
    likelihood : {"gaussian", "bernoulli", "categorical"} or Likelihood
        The observation model.
    num_classes : int, optional
        For ``likelihood="categorical"``.
    noise_scale, learn_noise : float, bool
        For ``likelihood="gaussian"``: fixed noise sigma, or its initial value when learned.
    prior : FactorPrior, optional
        Prior of the rank-1 factor entries shared by all layers (each layer gets its own copy); default
        ``GaussianPrior(prior_scale, loc=1.0)``.
    prior_scale : float
        sigma of the default prior N(1, sigma^2) (0.1, the reference implementation's default).
    num_components : int
        K, mixture components / ensemble members (1 = a single mean-field Gaussian posterior).
    random_sign_init : float
        Initial factor means (see :class:`Rank1Linear`); default -0.5: means ~ N(1, 0.5^2).
    activation : nn.Module
        Hidden activation (default ReLU).
    init_scale_factor : float
        The guide's initial standard deviation of every factor entry.

    Notes
    -----
    ``forward(x, y=None, *, num_data=None, subsample_size=None, mixture=None)`` follows
    :class:`~pyro_lowrank.models.LowRankMLP` (``num_data``: ``x`` is a minibatch of a dataset of this size;
    ``subsample_size``: the data plate draws a random minibatch). The network output is the deterministic site ``f``:
    ``(N,)`` / ``(N, C)`` per draw for K = 1, ``(K, N)`` / ``(K, N, C)`` for K > 1. ``mixture`` chooses the form of
    ``obs`` for K > 1: ``False``, one observation per member (the training likelihood, scaled by 1/K); ``True``, one
    per datum from the equal-weight mixture over members (the predictive); ``None`` (default), the mixture exactly
    when a vectorised predictive plate (``"_num_predictive_samples"``) is active. (Pyro's ``Predictive(parallel=True)``
    infers return shapes from an unvectorised run, so it returns that mixture draw of ``obs`` broadcast to
    ``(S, K, N)``; with ``parallel=False`` each member draws its own ``obs``.)
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
        prior_scale: float = 0.1,
        num_components: int = 1,
        random_sign_init: float = -0.5,
        activation: nn.Module | None = None,
        init_scale_factor: float = 0.1,
    ) -> None:
        num_components = _check_num_components(num_components)
        super().__init__(in_features, hidden_features, out_features, likelihood=likelihood, num_classes=num_classes,
                         noise_scale=noise_scale, learn_noise=learn_noise, activation=activation)
        self.num_components = num_components
        self.layers = self._make_layers(Rank1Linear, prior, num_components=num_components, prior_scale=prior_scale,
                                        random_sign_init=random_sign_init, init_scale_factor=init_scale_factor,
                                        component_dim=-2)

    def num_variational_parameters(self) -> int:
        """Learned numbers with a mean-field guide: sum over layers of m n + m + 2 K (m + n) (plus a learned noise)."""
        count = sum(layer.num_variational_parameters() for layer in self.layers)
        return count + sum(p.numel() for p in self.likelihood.parameters() if p.requires_grad)

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        num_data: int | None = None,
        subsample_size: int | None = None,
        mixture: bool | None = None,
    ) -> torch.Tensor:
        """Run the network on ``x`` (N, in_features) and observe ``y`` inside the data plate; returns ``f``.

        With K = 1 this is :meth:`BayesianMLP.forward <pyro_lowrank.models.BayesianMLP.forward>` (``mixture`` is
        ignored); with K > 1 the network runs inside the components plate and ``mixture`` chooses the form of ``obs``
        (see Notes).
        """
        num = self.num_components
        if num == 1:
            return super().forward(x, y, num_data=num_data, subsample_size=subsample_size)
        data, x, y = self._data_plate(x, y, num_data, subsample_size)
        event_dim = self.likelihood.event_dim
        components = pyro.plate(COMPONENTS_PLATE, num, dim=-2)
        with components:
            f = self.likelihood.link_input(self.network(x))
        use_mixture = _in_predictive_plate() if mixture is None else bool(mixture)
        with components, data:
            pyro.deterministic("f", f, event_dim=event_dim)
            if not use_mixture:
                with poutine.scale(scale=1.0 / num):  # the members' log-likelihoods are averaged
                    self.likelihood(f, y)
        if use_mixture:
            with data, _ComponentMixture(f):
                self.likelihood(_components_last(f, event_dim), y)
        return f
