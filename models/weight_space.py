r"""Weight-space baselines for any torch network: full-rank mean-field BBB and the rank-1 multiplicative BNN.

Both wrappers take a plain ``torch.nn.Module`` and make the parameters of its ``nn.Linear``, ``nn.Embedding``,
``nn.LSTM`` and ``nn.MultiheadAttention`` modules (:data:`BAYESIAN_TYPES`, the types :func:`~pyro_lowrank.nn.lowrankify`
converts) random; every other parameter (normalisation layers, positional tables, plain ``nn.Parameter`` s) stays a
point estimate. The forward pass samples the global sites once and evaluates the torch network with the sampled
tensors through :func:`torch.func.functional_call`, so any architecture built from these modules works unchanged.

**Mean-field (Bayes by Backprop, Blundell et al. 2015).** Every Bayesian tensor :math:`\theta_k` (weights *and*
biases) is one sample site with i.i.d. prior :math:`p(\theta_k) = \prod_j \mathcal N(\theta_{kj} \mid 0, \sigma^2)`
(``prior_scale`` = :math:`\sigma`). With :func:`weight_space_guide` (an ``AutoNormal``) the posterior is
:math:`q(\theta_{kj}) = \mathcal N(\mu_{kj}, s_{kj}^2)`, 2 numbers per entry, and ``TraceMeanField_ELBO`` computes
the KL in closed form, :math:`\sum_{kj} \log\frac{\sigma}{s_{kj}} + \frac{s_{kj}^2 + \mu_{kj}^2}{2\sigma^2} - \frac12`.
The means start at the network's current values (``initial_values``). The padding row of an ``nn.Embedding`` with
``padding_idx`` is held at its initial value (torch never updates it; it is zero by default).

**Rank-1 (Dusenberry et al. 2020).** Every 2-D weight :math:`W_0 \in \mathbb R^{m\times n}` of those modules
(``Linear.weight``, ``Embedding.weight``, the LSTM's ``weight_ih_l{k}``/``weight_hh_l{k}``, the attention's
``in_proj_weight`` and ``out_proj.weight``) stays a point estimate and gets latent factors :math:`r \in \mathbb R^m`,
:math:`s \in \mathbb R^n` with i.i.d. prior :math:`\mathcal N(1, \sigma^2)`:

.. math:: W = W_0 \circ (r s^\top), \qquad \mathbb E W = W_0, \qquad
          \operatorname{Var} W_{ij} = W_{0,ij}^2\big((1+\sigma^2)^2 - 1\big)

(:math:`\mathbb E[r_i^2 s_j^2] = (1+\sigma^2)^2`). Biases and all other parameters are point estimates; an AutoNormal
over :math:`(r, s)` has :math:`2(m+n)` numbers per weight and the KL
:math:`\sum \log\frac{\sigma}{s} + \frac{s^2 + (\mu - 1)^2}{2\sigma^2} - \frac12` is analytic as well.

**Vectorised particles.** Under ``pyro.plate("particles", P, dim=-2)`` (``Trace_ELBO(vectorize_particles=True)``,
:func:`~pyro_lowrank.predictive.predict`) every site has batch shape ``(P, 1)``. Torch modules take unbatched
weights, so the wrappers loop over the flattened batch of the sites (their batch shapes broadcast; the trailing
data-plate dimension must be 1 and is dropped) and stack the outputs to ``(P, N, ...)``: P sequential forward passes,
P times the cost of one. Without particles there is one call. The inputs are shared by all draws (they carry no
particle dimension), so a wrapper is the whole network, not a layer inside a vectorised Bayesian stack.

**Storage.** The wrapped network is a deep copy (unless ``inplace=True``) whose Bayesian parameters are removed and
replaced by non-persistent buffers of the same name (mean-field: the initial means; rank-1: the initial weight), so
that ``functional_call`` finds the names and ``module.to(...)`` moves them; rank-1 keeps :math:`W_0` as the parameter
``<name>_base`` and the initial factor means as buffers ``<name>_r_init`` / ``<name>_s_init`` next to it. The tree is
made Pyro-ready with :func:`~pyro_lowrank.nn.point_estimates.to_point_estimates_`, exactly as
:class:`~pyro_lowrank.models.SupervisedModel` does (which therefore leaves it as it is). Tied parameters (one tensor
owned by several modules) stay tied: one site (one :math:`W_0` and one ``(r, s)``) feeds every owner.
"""

from __future__ import annotations

import copy
import logging
import math
import numbers
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoNormal, init_to_value
from pyro.nn import PyroModule
from torch import nn

from pyro_lowrank._validation import check_positive
from pyro_lowrank.nn.convert import LOW_RANK_TYPES, SUPPORTED_TYPES
from pyro_lowrank.nn.linear import align_to_plates
from pyro_lowrank.nn.point_estimates import to_point_estimates_

from .rank1 import _check_random_sign_init

__all__ = ["BAYESIAN_TYPES", "MeanFieldNetwork", "Rank1Network", "weight_space_guide"]

logger = logging.getLogger(__name__)

#: torch module types whose parameters the wrappers make Bayesian (those that ``lowrankify`` converts).
BAYESIAN_TYPES: tuple[type[nn.Module], ...] = SUPPORTED_TYPES


@dataclass(frozen=True)
class _Tensor:
    """One Bayesian tensor of the wrapped network: its qualified name and those of all its tied aliases."""

    path: str
    aliases: tuple[str, ...]
    shape: torch.Size


def _split(path: str) -> tuple[str, str]:
    owner, _, attr = path.rpartition(".")
    return owner, attr


def _bayesian_tensors(network: nn.Module, only_matrices: bool) -> list[_Tensor]:
    """Parameters owned by a module of :data:`BAYESIAN_TYPES` (MHA's ``out_proj`` counted once), in
    ``named_parameters`` order, with tied parameters grouped under their first name."""
    owned: set[int] = set()
    for module in network.modules():
        if isinstance(module, BAYESIAN_TYPES):
            owned.update(id(p) for p in module.parameters())
    groups: dict[int, list[str]] = {}
    shapes: dict[int, torch.Size] = {}
    for name, param in network.named_parameters(remove_duplicate=False):
        if id(param) in owned and (param.dim() == 2 or not only_matrices):
            groups.setdefault(id(param), []).append(name)
            shapes[id(param)] = param.shape
    return [_Tensor(names[0], tuple(names), shapes[key]) for key, names in groups.items()]


def _to_buffer(network: nn.Module, path: str, value: torch.Tensor) -> None:
    """Replace the parameter at ``path`` by a non-persistent buffer holding ``value`` (same name)."""
    owner, attr = _split(path)
    module = network.get_submodule(owner)
    delattr(module, attr)
    module.register_buffer(attr, value, persistent=False)


class _WeightSpaceNetwork(PyroModule):
    """Shared machinery: validation, copying, site naming and the per-draw ``functional_call`` loop."""

    def _setup(self, network: nn.Module, prior_loc: float, prior_scale: float, inplace: bool,
               only_matrices: bool) -> nn.Module:
        """Validate, copy, find the Bayesian tensors and register the prior constants; returns the network copy."""
        if not isinstance(network, nn.Module):
            raise TypeError(f"network must be a torch.nn.Module, got {type(network).__name__}")
        if not any(isinstance(m, BAYESIAN_TYPES) for m in network.modules()):
            found = sorted({type(m).__name__ for m in network.modules()})
            raise ValueError(
                "network must contain at least one module of BAYESIAN_TYPES "
                f"({', '.join('torch.nn.' + t.__name__ for t in BAYESIAN_TYPES)}), got only {found}"
            )
        if any(isinstance(m, LOW_RANK_TYPES) for m in network.modules()):
            raise ValueError("network must be a plain torch network, got one containing lowrankify layers "
                             f"({', '.join(t.__name__ for t in LOW_RANK_TYPES)})")
        self._matched = isinstance(prior_scale, str) and prior_scale == "matched" and not only_matrices
        if self._matched:
            prior_scale = 1.0  # the per-tensor scales are set below
        elif isinstance(prior_scale, bool) or not isinstance(prior_scale, numbers.Real):
            allowed = "a finite number > 0" + ("" if only_matrices else " or 'matched'")
            raise ValueError(f"prior_scale must be {allowed}, got {prior_scale!r}")
        check_positive(prior_scale, "prior_scale")
        network = network if inplace else copy.deepcopy(network)
        self._tensors = _bayesian_tensors(network, only_matrices)
        if not self._tensors:
            raise ValueError("network must have parameters in its modules of BAYESIAN_TYPES, got none")
        ref = network.get_parameter(self._tensors[0].path)
        self.register_buffer("prior_loc", torch.tensor(float(prior_loc), dtype=ref.dtype, device=ref.device))
        self.register_buffer("prior_scale", torch.tensor(float(prior_scale), dtype=ref.dtype, device=ref.device))
        # "matched": He's scale sqrt(2 / fan_in) per weight tensor (fan_in = its last dimension), 1 for biases
        scales = [math.sqrt(2.0 / t.shape[-1]) if self._matched and len(t.shape) >= 2 else float(prior_scale)
                  for t in self._tensors]
        self.register_buffer("prior_scales", torch.tensor(scales, dtype=ref.dtype, device=ref.device))
        return network

    def _finish(self, network: nn.Module) -> None:
        """Replace the Bayesian parameters (``_restructure``) and make the tree Pyro-ready."""
        with torch.no_grad():
            self._restructure(network)
        for module in network.modules():
            if isinstance(module, nn.RNNBase):
                module._init_flat_weights()  # its cache still holds the removed parameters
        self.network = to_point_estimates_(network, skip=LOW_RANK_TYPES)

    def _restructure(self, network: nn.Module) -> None:  # replace the Bayesian parameters (subclasses)
        raise NotImplementedError

    def _site(self, name: str) -> str:
        return f"{self._pyro_name}.{name}" if self._pyro_name else name

    def _prior(self, shape: torch.Size, index: int = 0) -> dist.Independent:
        """The prior of tensor ``index`` (of :attr:`_tensors`) or of a factor of that shape."""
        return dist.Normal(self.prior_loc, self.prior_scales[index]).expand(shape).to_event(len(shape))

    def _draw(self) -> list[torch.Tensor]:
        """Sample every site once, in :attr:`sites` order; values aligned to the active plates."""
        raise NotImplementedError

    def _constants(self) -> list[torch.Tensor]:
        """Tensors read once per forward pass and shared by all draws."""
        return []

    def _parameters_for(self, values: list[torch.Tensor], constants: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The ``functional_call`` tensors of one draw (unbatched site values)."""
        raise NotImplementedError

    def _event_shapes(self) -> list[torch.Size]:  # event shapes of the sites, in order (subclasses)
        raise NotImplementedError

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Sample the sites once and run the network on ``(x, *args)`` with keyword arguments ``kwargs``.

        Returns the network's output ``(N, ...)``, or ``batch + (N, ...)`` when the sites carry batch dimensions
        ``batch + (1,)`` (vectorised particles: ``(P, N, ...)``), computed by one network call per draw.
        """
        values = self._draw()
        constants = self._constants()
        events = self._event_shapes()
        batches = [v.shape[: v.dim() - len(e)] for v, e in zip(values, events)]
        batch = torch.broadcast_shapes(*batches)
        if len(batch) == 0:
            return self._call(self._parameters_for(values, constants), x, args, kwargs)
        if batch[-1] != 1:
            raise ValueError(
                f"the sites' batch shape must end in the data plate's singleton dimension (global sites under a "
                f"particle plate have batch shape (P, 1)), got {tuple(batch)}"
            )
        num = math.prod(batch)
        flat = [v.expand(batch + e).reshape((num,) + e) for v, e in zip(values, events)]
        outs = [self._call(self._parameters_for([v[i] for v in flat], constants), x, args, kwargs) for i in range(num)]
        out = torch.stack(outs)
        return out.reshape(batch[:-1] + out.shape[1:])

    def _call(self, params: dict[str, torch.Tensor], x: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
        out = torch.func.functional_call(self.network, params, (x, *args), kwargs)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the wrapped network must return a tensor, got {type(out).__name__}")
        return out

    def num_variational_parameters(self) -> int:
        """Learned numbers with a mean-field guide: 2 per latent entry plus every trainable point estimate."""
        latent = sum(math.prod(e) for e in self._event_shapes())
        return 2 * latent + sum(p.numel() for p in self.parameters() if p.requires_grad)


class MeanFieldNetwork(_WeightSpaceNetwork):
    """Full-rank mean-field Bayesian version of any torch network (see the module docstring).

    Parameters
    ----------
    network : nn.Module
        Any network containing modules of :data:`BAYESIAN_TYPES`; all their parameters (weights and biases) become
        sample sites named by their path (``"0.weight"``, or ``"network.0.weight"`` inside ``SupervisedModel``).
    prior_scale : float or "matched"
        sigma of the i.i.d. prior N(0, sigma^2) of every entry; ``"matched"``: He's sigma = sqrt(2 / fan_in) for
        every weight tensor (fan_in its last dimension: a Linear's or LSTM gate matrix's input width, an embedding's
        width) and 1 for biases, the prior the low-rank layers' ``prior_scale="matched"`` implies on W. Its
        constants are buffers.
    inplace : bool
        Modify ``network`` itself instead of a deep copy.

    Raises
    ------
    TypeError
        If ``network`` is not an ``nn.Module``.
    ValueError
        If it contains no module of :data:`BAYESIAN_TYPES` (or lowrankify layers), or ``prior_scale`` is not a
        finite positive number.
    """

    def __init__(self, network: nn.Module, *, prior_scale: float | str = 1.0, inplace: bool = False) -> None:
        super().__init__()
        self._finish(self._setup(network, 0.0, prior_scale, inplace, only_matrices=False))
        logger.debug("MeanFieldNetwork: %d sites, %d latent entries", len(self._tensors),
                     sum(math.prod(t.shape) for t in self._tensors))

    def _restructure(self, network: nn.Module) -> None:
        self._padding: dict[str, int] = {}
        for t in self._tensors:
            init = network.get_parameter(t.path).detach().clone()
            for alias in t.aliases:
                _to_buffer(network, alias, init)
                owner = network.get_submodule(_split(alias)[0])
                if isinstance(owner, nn.Embedding) and owner.padding_idx is not None:
                    self._padding[t.path] = owner.padding_idx

    @property
    def sites(self) -> list[str]:
        """The global sample sites, in order (one per Bayesian tensor)."""
        return [self._site(t.path) for t in self._tensors]

    def initial_values(self) -> dict[str, torch.Tensor]:
        """Site name -> initial mean (the wrapped network's values at construction), for ``init_to_value``."""
        return {self._site(t.path): self.network.get_buffer(t.path) for t in self._tensors}

    def _event_shapes(self) -> list[torch.Size]:
        return [t.shape for t in self._tensors]

    def _draw(self) -> list[torch.Tensor]:
        values = []
        for index, t in enumerate(self._tensors):
            value = pyro.sample(self._site(t.path), self._prior(t.shape, index))
            values.append(align_to_plates(value, len(t.shape)))
        return values

    def _parameters_for(self, values: list[torch.Tensor], constants: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        params = {}
        for t, value in zip(self._tensors, values):
            pad = self._padding.get(t.path)
            if pad is not None:  # the padding row stays at its initial value, as in torch
                init = self.network.get_buffer(t.path)
                rows = torch.arange(t.shape[0], device=value.device) == pad
                value = torch.where(rows.unsqueeze(-1), init, value)
            params.update({alias: value for alias in t.aliases})
        return params


class Rank1Network(_WeightSpaceNetwork):
    r"""Rank-1 multiplicative Bayesian version of any torch network: :math:`W = W_0 \circ (r s^\top)` for every 2-D
    weight of its :data:`BAYESIAN_TYPES` modules (see the module docstring).

    Parameters
    ----------
    network : nn.Module
        Any network containing modules of :data:`BAYESIAN_TYPES`. Each 2-D weight at path ``p`` gets the sites
        ``p + ".r"`` (m,) and ``p + ".s"`` (n,); :math:`W_0` (initialised at the weight) and the biases are point
        estimates.
    prior_scale : float
        sigma of the i.i.d. prior N(1, sigma^2) of every factor entry (0.1, as in
        :class:`~pyro_lowrank.models.Rank1MLP`).
    random_sign_init : float
        Initial factor means, as in :class:`~pyro_lowrank.models.Rank1Linear`: in (0, 1], +1 with this probability and
        -1 otherwise; <= 0, drawn from N(1, random_sign_init^2) (default -0.5; 0: all ones).
    inplace : bool
        Modify ``network`` itself instead of a deep copy.

    Raises
    ------
    TypeError
        If ``network`` is not an ``nn.Module``.
    ValueError
        If it contains no module of :data:`BAYESIAN_TYPES` with a 2-D weight, ``prior_scale`` is not a finite positive
        number, or ``random_sign_init`` is not a finite number <= 1.
    """

    def __init__(self, network: nn.Module, *, prior_scale: float = 0.1, random_sign_init: float = -0.5,
                 inplace: bool = False) -> None:
        super().__init__()
        network = self._setup(network, 1.0, prior_scale, inplace, only_matrices=True)
        self._random_sign_init = _check_random_sign_init(random_sign_init)
        self._finish(network)
        logger.debug("Rank1Network: %d weights, %d factor entries", len(self._tensors),
                     sum(sum(t.shape) for t in self._tensors))

    def _draw_init(self, size: int, like: torch.Tensor) -> torch.Tensor:
        if self._random_sign_init > 0:
            value = torch.where(torch.rand(size) < self._random_sign_init, 1.0, -1.0)
        else:
            value = 1.0 + abs(self._random_sign_init) * torch.randn(size)
        return value.to(dtype=like.dtype, device=like.device)

    def _restructure(self, network: nn.Module) -> None:
        for t in self._tensors:
            weight = network.get_parameter(t.path)
            owner, attr = _split(t.path)
            module = network.get_submodule(owner)
            for name in (f"{attr}_base", f"{attr}_r_init", f"{attr}_s_init"):
                if hasattr(module, name):
                    raise ValueError(f"network module {owner or 'network'!r} already has an attribute {name!r}")
            init = weight.detach().clone()
            for alias in t.aliases:
                _to_buffer(network, alias, init)
            module.register_parameter(f"{attr}_base", nn.Parameter(init.clone(), requires_grad=weight.requires_grad))
            module.register_buffer(f"{attr}_r_init", self._draw_init(t.shape[0], weight))
            module.register_buffer(f"{attr}_s_init", self._draw_init(t.shape[1], weight))

    def _get(self, path: str, suffix: str) -> torch.Tensor:
        owner, attr = _split(path)
        return getattr(self.network.get_submodule(owner), f"{attr}_{suffix}")

    @property
    def sites(self) -> list[str]:
        """The global sample sites, in order: ``r`` then ``s`` of each weight."""
        return [self._site(f"{t.path}.{f}") for t in self._tensors for f in ("r", "s")]

    def initial_values(self) -> dict[str, torch.Tensor]:
        """Site name -> initial factor mean (``random_sign_init``), for ``init_to_value``."""
        return {self._site(f"{t.path}.{f}"): self._get(t.path, f"{f}_init") for t in self._tensors
                for f in ("r", "s")}

    def _event_shapes(self) -> list[torch.Size]:
        return [torch.Size(t.shape[i : i + 1]) for t in self._tensors for i in (0, 1)]

    def _draw(self) -> list[torch.Tensor]:
        values = []
        for t in self._tensors:
            for f, size in zip(("r", "s"), t.shape):
                value = pyro.sample(self._site(f"{t.path}.{f}"), self._prior(torch.Size((size,))))
                values.append(align_to_plates(value, 1))
        return values

    def _constants(self) -> list[torch.Tensor]:
        return [self._get(t.path, "base") for t in self._tensors]  # W0, read once per forward

    def _parameters_for(self, values: list[torch.Tensor], constants: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        params = {}
        for k, (t, base) in enumerate(zip(self._tensors, constants)):
            r, s = values[2 * k], values[2 * k + 1]
            weight = base * r.unsqueeze(-1) * s.unsqueeze(-2)
            params.update({alias: weight for alias in t.aliases})
        return params


def weight_space_guide(model: nn.Module, init_scale: float = 1e-3) -> AutoNormal:
    """An ``AutoNormal`` guide whose means start at the ``initial_values()`` of every :class:`MeanFieldNetwork` and
    :class:`Rank1Network` inside ``model`` (``model`` itself included).

    Parameters
    ----------
    model : nn.Module
        A Pyro model containing weight-space wrappers (e.g. ``SupervisedModel(MeanFieldNetwork(net), ...)``).
    init_scale : float
        Initial standard deviation of every site entry.

    Returns
    -------
    AutoNormal
        ``AutoNormal(model, init_loc_fn=init_to_value(values=...), init_scale=init_scale)``; sites of other
        layers fall back to ``init_to_value``'s default.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_positive(init_scale, "init_scale")
    wrappers = [m for m in model.modules() if isinstance(m, _WeightSpaceNetwork)]
    if not wrappers:
        raise ValueError(f"model must contain a MeanFieldNetwork or Rank1Network, got {type(model).__name__} "
                         "without one")
    values = {name: value.detach().clone() for w in wrappers for name, value in w.initial_values().items()}
    return AutoNormal(model, init_loc_fn=init_to_value(values=values), init_scale=float(init_scale))
