r"""Mean-field Gaussian guide over the factors, and an init function that starts any autoguide at the layers' inits.

For every latent site :math:`\theta` (the factors A, B and the biases of the low-rank layers, plus any other latent of
the model), :math:`q(\theta) = \mathcal N(\mu, \operatorname{diag}\sigma^2)` with :math:`\sigma = \operatorname{softplus}
(\rho)` (the paper's parameterisation). Unlike :class:`~pyro.infer.autoguide.AutoNormal`, which samples an auxiliary
unconstrained site and emits a ``Delta``, this guide emits the ``Normal(...).to_event(k)`` site itself for
real-valued latents, so :class:`~pyro.infer.TraceMeanField_ELBO` uses the closed-form Gaussian KL against Gaussian
priors (one sample site per factor, no auxiliary sites). Latents with a constrained support get the pushforward of
the same Normal through :func:`torch.distributions.biject_to` of their support.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any, Callable

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.infer.autoguide import AutoNormal
from pyro.infer.autoguide.initialization import init_to_median
from pyro.infer.autoguide.utils import deep_setattr
from pyro.nn import PyroParam
from torch import nn
from torch.distributions import biject_to

from pyro_lowrank._validation import check_positive
from pyro_lowrank.distributions.factor_normal import FactorNormal

__all__ = ["FactorGuide", "factor_initial_scales", "factor_initial_values", "init_to_factors"]


def factor_initial_values(model: nn.Module) -> dict[str, torch.Tensor]:
    """Initial means of every low-rank layer in ``model``, keyed by full Pyro site name.

    Any submodule with an ``initial_values()`` method (returning ``{site_name: tensor}``) contributes.
    """
    values: dict[str, torch.Tensor] = {}
    for module in model.modules():
        if hasattr(module, "initial_values"):
            values.update(module.initial_values())
    return values


def factor_initial_scales(model: nn.Module) -> dict[str, float]:
    """Initial guide standard deviations of every low-rank layer in ``model``, keyed by full site name."""
    scales: dict[str, float] = {}
    for module in model.modules():
        if hasattr(module, "initial_scales"):
            scales.update(module.initial_scales())
    return scales


def init_to_factors(model: nn.Module, fallback: Callable[[dict], torch.Tensor] = init_to_median) -> Callable:
    """An ``init_loc_fn`` for any Pyro autoguide: low-rank factor sites start at the layer's init (variance
    matching or SVD), every other site at ``fallback``.

    The factor means are read when the guide is set up (its first call), so a ``model.to(device)`` done in between is
    honoured. Starting a mean-field guide at A = B = 0 (``init_to_feasible``) would sit on a saddle point of the ELBO:
    the gradient of A B^T with respect to A is B.

    Examples
    --------
    >>> guide = AutoNormal(model, init_loc_fn=init_to_factors(model))  # doctest: +SKIP
    """

    def init_fn(site: dict) -> torch.Tensor:
        values = factor_initial_values(model)
        if site["name"] in values:
            return values[site["name"]].detach().clone()
        return fallback(site)

    return init_fn


def _is_real(support: constraints.Constraint) -> bool:
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support is constraints.real


class FactorGuide(AutoNormal):
    """Mean-field Gaussian guide over the factor sites of low-rank layers (see the module docstring).

    Parameters
    ----------
    model : PyroModule
        The model; its low-rank layers provide the initial means and scales.
    init_loc_fn : callable, optional
        Per-site init; default :func:`init_to_factors` ``(model)``.
    init_scale : float
        Initial standard deviation of sites that are not low-rank factors (low-rank sites use each layer's
        ``init_scale_factor * s``).
    create_plates : callable, optional
        As in :class:`~pyro.infer.autoguide.AutoNormal`.
    """

    def __init__(
        self,
        model: Callable,
        *,
        init_loc_fn: Callable | None = None,
        init_scale: float = 0.1,
        create_plates: Callable | None = None,
    ) -> None:
        check_positive(init_scale, "init_scale")
        self._scale_source = (model,)  # a tuple, so the model is not registered as a submodule
        if init_loc_fn is None:
            if not isinstance(model, nn.Module):
                raise TypeError("FactorGuide needs init_loc_fn when the model is not an nn.Module")
            init_loc_fn = init_to_factors(model)
        super().__init__(model, init_loc_fn=init_loc_fn, init_scale=float(init_scale), create_plates=create_plates)

    def _setup_prototype(self, *args: Any, **kwargs: Any) -> None:
        super()._setup_prototype(*args, **kwargs)
        source = self._scale_source[0]
        scales = factor_initial_scales(source) if isinstance(source, nn.Module) else {}
        for name, _ in self.prototype_trace.iter_stochastic_nodes():
            if name in scales:
                loc, _ = self._get_loc_and_scale(name)
                init = torch.full_like(loc.detach(), scales[name])
                deep_setattr(self.scales, name, PyroParam(init, self.scale_constraint, self._event_dims[name]))

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Sample every latent site of the model from its Normal (or transformed Normal) factor."""
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        plates = self._create_plates(*args, **kwargs)
        result = {}
        for name, site in self.prototype_trace.iter_stochastic_nodes():
            with ExitStack() as stack:
                for frame in site["cond_indep_stack"]:
                    if frame.vectorized:
                        stack.enter_context(plates[frame.name])
                loc, scale = self._get_loc_and_scale(name)
                fn = FactorNormal(loc, scale).to_event(self._event_dims[name])
                support = site["fn"].support
                if not _is_real(support):
                    fn = dist.TransformedDistribution(fn, biject_to(support))
                result[name] = pyro.sample(name, fn)
        return result
