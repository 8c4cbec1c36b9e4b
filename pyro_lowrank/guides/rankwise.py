r"""The rank-wise guide of low-rank variational dropout (LRVD; the guide of BayesLoRA).

For every factorised weight :math:`W = A B^\top` of the model (A: m x r, B: n x r; any layer with a ``factor_sites()``
method), the guide is additive Gaussian noise on the factors with **one variance per rank component**, shared by
column k of A and column k of B:

.. math::

    A_{ik} = \mu_{A,ik} + \sigma_k \varepsilon_{ik}, \qquad B_{jk} = \mu_{B,jk} + \sigma_k \varepsilon'_{jk}, \qquad
    \log\sigma_k^2 \in [-20, 2] \ (\text{clamped}), \ \text{initialised at } -8,

so a layer has :math:`r (m + n)` means plus only :math:`r` noise parameters (mean-field would have :math:`2 r (m+n)`).
Under the log-uniform prior (:class:`~pyro_lowrank.distributions.LogUniformPrior`) the KL is Molchanov et al.'s
approximation per entry, with :math:`\log\alpha_{ik} = \log\sigma_k^2 - \log\mu_{A,ik}^2` (and likewise for B). The
data term favours small :math:`\sigma_k` only where component k carries signal; for a component the data does not
need, the KL (decreasing in :math:`\alpha`) drives :math:`\alpha` up, which is what the rank scores of
:mod:`pyro_lowrank.guides.rank_selection` read and what :func:`~pyro_lowrank.guides.prune_ranks` acts on.

Every other latent site (biases, other latents) gets the mean-field Normal of :class:`FactorGuide`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch
from pyro.distributions import constraints
from pyro.nn import PyroModule, PyroParam
from pyro.infer.autoguide.utils import deep_setattr
from torch import nn

from pyro_lowrank.guides.factor_guide import FactorGuide

__all__ = ["LRVDGuide"]


def _deep_getattr(obj: Any, key: str) -> Any:
    return functools.reduce(getattr, [obj] + key.split("."))


def _unconstrained(container: nn.Module, key: str) -> nn.Parameter:
    """The nn.Parameter behind the PyroParam ``container.<key>`` (dotted key)."""
    parent, _, leaf = key.rpartition(".")
    module = _deep_getattr(container, parent) if parent else container
    return module._parameters[leaf + "_unconstrained"]


class LRVDGuide(FactorGuide):
    r"""Rank-wise additive-noise guide of low-rank variational dropout (see the module docstring).

    Parameters
    ----------
    model : PyroModule
        The model. Every submodule with ``factor_sites()`` (``{weight name: (site of A, site of B)}``) contributes its
        factor pairs; both factors of a pair must have the same rank (last dimension).
    init_log_variance : float
        Initial :math:`\log\sigma_k^2` (default -8, as in BayesLoRA).
    log_variance_bounds : (float, float)
        The clamp applied to :math:`\log\sigma_k^2` in every use (default (-20, 2)). Outside it the gradient is zero.
    init_loc_fn, init_scale, create_plates
        As for :class:`FactorGuide` (the mean-field part and the initial means).

    Attributes
    ----------
    log_variances : PyroModule
        The parameters :math:`\log\sigma^2` (shape ``(r,)``), one per factor pair, stored under the name of the
        pair's A site (``guide.log_variances.layers.0.A``).
    """

    def __init__(
        self,
        model: Callable,
        *,
        init_log_variance: float = -8.0,
        log_variance_bounds: tuple[float, float] = (-20.0, 2.0),
        init_loc_fn: Callable | None = None,
        init_scale: float = 0.1,
        create_plates: Callable | None = None,
    ) -> None:
        low, high = (float(v) for v in log_variance_bounds)
        if not low < high:
            raise ValueError(f"log_variance_bounds must be (low, high) with low < high, got {log_variance_bounds!r}")
        if not low <= float(init_log_variance) <= high:
            raise ValueError(f"init_log_variance must lie in log_variance_bounds [{low}, {high}], got "
                             f"{init_log_variance!r}")
        if not isinstance(model, nn.Module):
            raise TypeError(f"LRVDGuide needs the model as an nn.Module (it reads factor_sites()), got "
                            f"{type(model).__name__}")
        self.init_log_variance = float(init_log_variance)
        self.log_variance_bounds = (low, high)
        self.pairs: dict[str, tuple[str, str]] = {}  # pair key (the A site) -> (A site, B site)
        self._pair_of_site: dict[str, str] = {}
        super().__init__(model, init_loc_fn=init_loc_fn, init_scale=init_scale, create_plates=create_plates)

    # ------------------------------------------------------------------ set-up
    def _setup_prototype(self, *args: Any, **kwargs: Any) -> None:
        super()._setup_prototype(*args, **kwargs)
        model = self._scale_source[0]
        latent = {name: site for name, site in self.prototype_trace.iter_stochastic_nodes()}
        self.log_variances = PyroModule()
        for module in model.modules():
            sites = getattr(module, "factor_sites", None)
            if sites is None:
                continue
            for a_name, b_name in sites().values():
                if a_name not in latent or b_name not in latent:
                    continue
                a_loc, b_loc = _deep_getattr(self.locs, a_name), _deep_getattr(self.locs, b_name)
                if a_loc.dim() != 2 or b_loc.dim() != 2 or a_loc.shape[-1] != b_loc.shape[-1]:
                    raise ValueError(f"factor pair ({a_name}, {b_name}) must be matrices (no plate dimensions) with the "
                                     f"same rank (last dimension), got shapes {tuple(a_loc.shape)} and "
                                     f"{tuple(b_loc.shape)}")
                init = torch.full(a_loc.shape[-1:], self.init_log_variance, dtype=a_loc.dtype, device=a_loc.device)
                deep_setattr(self.log_variances, a_name, PyroParam(init, constraints.real, 1))
                self.pairs[a_name] = (a_name, b_name)
                for name in (a_name, b_name):
                    self._pair_of_site[name] = a_name
                    parent, _, leaf = name.rpartition(".")
                    delattr(_deep_getattr(self.scales, parent) if parent else self.scales, leaf)

    # ------------------------------------------------------------------ the guide's law
    def log_variance(self, pair: str) -> torch.Tensor:
        r"""The clamped :math:`\log\sigma_k^2` (shape ``(r,)``) of the factor pair keyed by its A site name."""
        low, high = self.log_variance_bounds
        return _deep_getattr(self.log_variances, pair).clamp(low, high)

    def _get_loc_and_scale(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        pair = self._pair_of_site.get(name)
        if pair is None:
            return super()._get_loc_and_scale(name)
        loc = _deep_getattr(self.locs, name)
        return loc, torch.exp(0.5 * self.log_variance(pair)).expand(loc.shape)

    # ------------------------------------------------------------------ rank surgery
    def rescale_components(self, pair: str, scale: torch.Tensor) -> None:
        r"""The diagonal gauge move :math:`\mu_A \to \mu_A \operatorname{diag}(c)`, :math:`\mu_B \to \mu_B
        \operatorname{diag}(c)^{-1}` on the means of one pair (``scale`` = c, shape ``(r,)``, positive). The mean
        :math:`\mu_A\mu_B^\top` is unchanged; :math:`\sigma_k` is shared by A and B and stays as it is."""
        a_name, b_name = self.pairs[pair]
        with torch.no_grad():
            _unconstrained(self.locs, a_name).mul_(scale)
            _unconstrained(self.locs, b_name).div_(scale)

    def select_components(self, pair: str, keep: torch.Tensor) -> list[tuple[nn.Parameter, nn.Parameter, torch.Tensor]]:
        """Keep only the rank components ``keep`` (indices into the last dimension) of one pair.

        Replaces the means of A and B and the log-variances by new parameters holding the kept columns and slices the
        values recorded in the prototype trace (its distributions keep their old shapes; nothing reads them). Returns ``[(old parameter, new parameter, keep)]`` so that an optimiser can be pointed at the
        new parameters with its state sliced (:func:`~pyro_lowrank.guides.rank_selection.replace_in_optimizer`).
        """
        a_name, b_name = self.pairs[pair]
        replaced = []
        for container, name, event_dim in ((self.locs, a_name, 2), (self.locs, b_name, 2),
                                           (self.log_variances, pair, 1)):
            old = _unconstrained(container, name)
            value = old.detach().index_select(-1, keep.to(old.device)).clone()
            deep_setattr(container, name, PyroParam(value, constraints.real, event_dim))
            replaced.append((old, _unconstrained(container, name), keep))
        for name in (a_name, b_name):
            node = self.prototype_trace.nodes[name]
            node["value"] = node["value"].detach().index_select(-1, keep.to(node["value"].device))
        return replaced
