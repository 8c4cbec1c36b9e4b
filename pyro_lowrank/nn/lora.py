r"""LoRA adapters on frozen linear layers: plain (point estimates) and Bayesian (low-rank variational dropout).

A frozen pretrained layer :math:`y = x W_0^\top + b_0` (:math:`W_0 \in \mathbb R^{m\times n}`) gets a trainable
low-rank update (Hu et al. 2021),

.. math::

    y = x W_0^\top + b_0 + \frac{\alpha}{r_0}\, x\, (A B^\top)^\top
      = x W_0^\top + b_0 + \frac{\alpha}{r_0}\, (x B) A^\top,
    \qquad A \in \mathbb R^{m\times r},\ B \in \mathbb R^{n\times r},

in this library's convention :math:`\Delta W = \frac{\alpha}{r_0} A B^\top` (LoRA's papers write :math:`\frac{\alpha}{r}
B A` with their B of shape m x r and A of shape r x n: our A is their B, our B is their A transposed). :math:`r_0` is
the rank the adapter was built with; the scaling stays :math:`\alpha / r_0` when components are pruned away, so that
pruning never rescales the components that are kept.

* :class:`LoRALinear`: A and B are ``nn.Parameter`` s (plain LoRA, trained by any optimiser).
* :class:`BayesianLoRALinear`: A and B are Pyro sample sites (``PyroSample``, one ``to_event(2)`` site each) with a
  pluggable factor prior, by default the log-uniform prior of low-rank variational dropout
  (:class:`~pyro_lowrank.distributions.LogUniformPrior`): with :class:`~pyro_lowrank.guides.LRVDGuide` this is
  BayesLoRA, and :func:`~pyro_lowrank.guides.prune_ranks` removes the components the data does not need.
* :func:`add_lora_adapters` puts adapters on the linear layers of any module by name and freezes everything else.

Initialisation (as LoRA and BayesLoRA): :math:`B_{jk} \sim U(-1/\sqrt n, 1/\sqrt n)` (PyTorch's
``kaiming_uniform_(a=sqrt(5))`` on LoRA's r x n matrix) and :math:`A_{ik} \sim U(-10^{-3}, 10^{-3})`. LoRA starts A at
exactly zero so that :math:`\Delta W = 0`; here A is small but non-zero, so the initial update is negligible
(:math:`|\Delta W_{ij}| \lesssim 10^{-3}\,\alpha/r_0 \cdot r/\sqrt n`) while the noise-to-signal ratios
:math:`\log\alpha = \log\sigma^2 - \log\mu^2` that LRVD scores and prunes by stay finite (at :math:`\mu = 0` every
component would score :math:`+\infty` and be pruned at once), and the mean-field gradient of B, which is proportional
to A, is not identically zero.
"""

from __future__ import annotations

import copy
import fnmatch
import logging
import math
import numbers
from collections.abc import Iterable, Sequence

import torch
from pyro.nn import PyroModule, PyroSample
from pyro.poutine.runtime import get_plates
from torch import nn

from pyro_lowrank._validation import check_last_dim, check_positive, check_rank
from pyro_lowrank.distributions import FactorPrior, LogUniformPrior
from pyro_lowrank.guides.init import FactorInit
from pyro_lowrank.nn.linear import (
    LowRankLinear, align_to_plates, factor_matmul, select_rank_columns, vectorized_plate_depth,
)
from pyro_lowrank.nn.point_estimates import to_point_estimates_

__all__ = [
    "ADAPTER_TYPES", "A_INIT_RANGE", "BayesianLoRALinear", "LoRALinear", "add_lora_adapters", "adapter_parameter_count",
    "draw_batch_shape", "lora_init",
]

logger = logging.getLogger(__name__)

#: Half-width of the uniform initialisation of A (LoRA's B), small but non-zero (module docstring).
A_INIT_RANGE = 1e-3


def lora_init(
    out_features: int,
    in_features: int,
    rank: int,
    *,
    a_range: float = A_INIT_RANGE,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> FactorInit:
    r"""LoRA's initial factors in this library's convention: :math:`B \sim U(-1/\sqrt n, 1/\sqrt n)^{n\times r}`,
    :math:`A \sim U(-a, a)^{m\times r}` with :math:`a` = ``a_range`` (the module docstring says why not zero).

    Parameters
    ----------
    out_features, in_features : int
        m and n of the adapted layer.
    rank : int
        r in [1, min(m, n)].
    a_range : float
        Half-width of A's uniform initialisation (> 0).
    generator, dtype, device
        Passed to the random draws.

    Returns
    -------
    FactorInit
        ``(a_loc (m, r), b_loc (n, r), entry_scale)`` with ``entry_scale`` the standard deviation of B's entries,
        :math:`1/\sqrt{3n}`.
    """
    rank = check_rank(rank, out_features, in_features)
    check_positive(a_range, "a_range")
    kwargs = {"generator": generator, "dtype": dtype, "device": device}
    bound = 1.0 / math.sqrt(in_features)
    b_loc = (2.0 * torch.rand(in_features, rank, **kwargs) - 1.0) * bound
    a_loc = (2.0 * torch.rand(out_features, rank, **kwargs) - 1.0) * float(a_range)
    return FactorInit(a_loc, b_loc, bound / math.sqrt(3.0))


def _check_base(base: object) -> nn.Linear:
    if not isinstance(base, nn.Linear):
        raise TypeError(f"base must be a torch.nn.Linear, got {type(base).__name__}")
    return base


def _check_alpha(alpha: object) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be a finite number > 0 (the LoRA scaling is alpha / rank), got {alpha!r}")
    return float(alpha)


def _frozen(base: nn.Linear) -> nn.Linear:
    for parameter in base.parameters():
        parameter.requires_grad_(False)
    return base


class LoRALinear(nn.Module):
    r"""Plain LoRA on a frozen ``nn.Linear``: :math:`y = \mathrm{base}(x) + \frac{\alpha}{r} (x B) A^\top`.

    Parameters
    ----------
    base : nn.Linear
        The pretrained layer; its parameters are frozen (``requires_grad=False``) in place.
    rank : int
        r in [1, min(m, n)].
    alpha : float
        The LoRA alpha; the update is scaled by ``alpha / rank``.
    generator : torch.Generator, optional
        For the initialisation (:func:`lora_init`).

    Attributes
    ----------
    A, B : nn.Parameter
        The trainable factors, shapes ``(out_features, rank)`` and ``(in_features, rank)``.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float = 16.0, *,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.base = _frozen(_check_base(base))
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank = check_rank(rank, self.out_features, self.in_features)
        self.alpha = _check_alpha(alpha)
        self.scaling = self.alpha / self.rank
        weight = base.weight
        init = lora_init(self.out_features, self.in_features, self.rank, generator=generator)
        self.A = nn.Parameter(init.a_loc.to(dtype=weight.dtype, device=weight.device))
        self.B = nn.Parameter(init.b_loc.to(dtype=weight.dtype, device=weight.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``base(x) + (alpha / r) (x B) A^T`` for ``x`` of shape ``(..., in_features)``."""
        check_last_dim(x, self.in_features, "x", f"LoRALinear(in_features={self.in_features})")
        return self.base(x) + factor_matmul(x, self.A * self.scaling, self.B)

    def delta_weight(self) -> torch.Tensor:
        r""":math:`\Delta W = \frac{\alpha}{r} A B^\top` (m x n)."""
        return self.scaling * self.A @ self.B.T

    def num_adapter_parameters(self) -> int:
        """Learned numbers of the adapter: r (m + n)."""
        return self.rank * (self.in_features + self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"alpha={self.alpha:g}")


def _prior_a(layer: "BayesianLoRALinear"):
    return layer.prior((layer.out_features, layer.rank))


def _prior_b(layer: "BayesianLoRALinear"):
    return layer.prior((layer.in_features, layer.rank))


class BayesianLoRALinear(PyroModule):
    r"""Bayesian LoRA on a frozen ``nn.Linear``: :math:`y = \mathrm{base}(x) + \frac{\alpha}{r_0} (x B) A^\top` with
    random factors :math:`A \sim p` (m x r) and :math:`B \sim p` (n x r), the sample sites ``A`` and ``B``.

    With the default log-uniform prior and :class:`~pyro_lowrank.guides.LRVDGuide` this is BayesLoRA: one noise
    variance :math:`\sigma_k^2` per rank component, and :func:`~pyro_lowrank.guides.prune_ranks` drops the components
    whose noise-to-signal ratio grows (it calls :meth:`select_rank_components`).

    Parameters
    ----------
    base : nn.Linear
        The pretrained layer (a plain child module); its parameters are frozen in place.
    rank : int
        :math:`r_0` in [1, min(m, n)], the initial rank.
    alpha : float
        The LoRA alpha; the update is scaled by ``scaling = alpha / r_0`` at every rank (see the module docstring).
    prior : FactorPrior, optional
        Prior of every factor entry; default :class:`~pyro_lowrank.distributions.LogUniformPrior` (improper: the model
        can then be run only against a guide, never sampled from its prior).
    init_log_variance : float
        :math:`\log\sigma^2` whose square root :meth:`initial_scales` reports to mean-field guides
        (:class:`~pyro_lowrank.guides.FactorGuide`); the LRVD guide has its own (default -8, the same).
    sequence_dims : int or None
        As for :class:`~pyro_lowrank.nn.LowRankLinear`: per-datum dimensions between the data dimension and the
        features of the input (1 for token sequences ``(N, L, n)``); ``None`` infers it from calls made without
        vectorised particles.
    fold_draws : bool
        For wrapped networks that accept only ``(N, L, n)`` inputs (Hugging Face encoders): the input carries the
        P posterior draws folded into its first dimension, ``(P N, ..., n)`` draw-major (draw p owns rows
        ``p N .. (p + 1) N - 1``), and the output keeps that layout, ``(P N, ..., m)``. P is the number of factor
        draws (the product of their batch shape). Without it, factors with batch shape ``(P, 1)`` broadcast against
        ``(N, L, n)`` to ``(P, N, L, m)``.
    generator : torch.Generator, optional
        For the initial means (:func:`lora_init`).

    Notes
    -----
    The initial means live in the buffers ``a_init`` and ``b_init`` (read by guides through
    :meth:`initial_values`); pruning slices them and the rank, so the prior sites have the new shapes at the next call.
    """

    def __init__(
        self,
        base: nn.Linear,
        rank: int,
        alpha: float = 16.0,
        prior: FactorPrior | None = None,
        *,
        init_log_variance: float = -8.0,
        sequence_dims: int | None = None,
        fold_draws: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if sequence_dims is not None and (
            isinstance(sequence_dims, bool) or not isinstance(sequence_dims, int) or sequence_dims < 0
        ):
            raise ValueError(f"sequence_dims must be a non-negative integer or None (infer), got {sequence_dims!r}")
        if not math.isfinite(init_log_variance):
            raise ValueError(f"init_log_variance must be finite, got {init_log_variance!r}")
        self.base = _frozen(_check_base(base))
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank = check_rank(rank, self.out_features, self.in_features)
        self.initial_rank = self.rank
        self.alpha = _check_alpha(alpha)
        self.scaling = self.alpha / self.initial_rank
        prior = LogUniformPrior() if prior is None else prior
        if not isinstance(prior, nn.Module) or not callable(prior):
            raise TypeError(f"prior must be a FactorPrior module (shape -> distribution), got {type(prior).__name__}")
        self.prior = prior
        self.init_log_variance = float(init_log_variance)
        self.sequence_dims = sequence_dims
        self._inferred_sequence_dims: int | None = None
        self.fold_draws = bool(fold_draws)
        self.A = PyroSample(_prior_a)
        self.B = PyroSample(_prior_b)
        weight = base.weight
        init = lora_init(self.out_features, self.in_features, self.rank, generator=generator)
        self.register_buffer("a_init", init.a_loc.to(dtype=weight.dtype, device=weight.device))
        self.register_buffer("b_init", init.b_loc.to(dtype=weight.dtype, device=weight.device))

    # ------------------------------------------------------------------ guide interface
    def site_name(self, name: str) -> str:
        """Full Pyro site name of ``"A"`` or ``"B"`` (e.g. ``"encoder.layer.0.attention.self.query.A"``)."""
        return f"{self._pyro_name}.{name}" if self._pyro_name else name

    def factor_sites(self) -> dict[str, tuple[str, str]]:
        """``{"delta_weight": (site of A, site of B)}``: the factorised matrix :math:`A B^\\top` of the update."""
        return {"delta_weight": (self.site_name("A"), self.site_name("B"))}

    def initial_values(self) -> dict[str, torch.Tensor]:
        """Initial means of the factor sites, keyed by full site name (read by guides)."""
        return {self.site_name("A"): self.a_init, self.site_name("B"): self.b_init}

    def initial_scales(self) -> dict[str, float]:
        r"""Initial guide standard deviations :math:`\exp(\tfrac12 \log\sigma^2_\text{init})` of both sites (for
        mean-field guides; :class:`~pyro_lowrank.guides.LRVDGuide` sets its rank-wise variances itself)."""
        return {name: math.exp(0.5 * self.init_log_variance) for name in self.initial_values()}

    def select_rank_components(self, weight: str, keep: torch.Tensor) -> None:
        """Keep only the rank components ``keep`` (indices of columns of A and B): the rank becomes ``len(keep)``,
        ``a_init`` and ``b_init`` are sliced, and the prior sites take the new shapes at the next call. ``scaling``
        stays ``alpha / initial_rank``, so the kept components contribute exactly what they did before.

        Raises
        ------
        ValueError
            If ``weight`` is not ``"delta_weight"`` or ``keep`` is not 1 to ``rank`` distinct indices in
            ``[0, rank)``.
        """
        if weight != "delta_weight":
            raise ValueError(f"weight must be 'delta_weight' for BayesianLoRALinear, got {weight!r}")
        select_rank_columns(self, keep)

    def num_adapter_parameters(self, rankwise: bool = True) -> int:
        """Learned numbers of a guide over the adapter: r (m + n + 1) for the rank-wise LRVD guide (means plus one
        log-variance per component), 2 r (m + n) for a mean-field guide (``rankwise=False``)."""
        means = self.rank * (self.in_features + self.out_features)
        return means + self.rank if rankwise else 2 * means

    # ------------------------------------------------------------------ forward
    def resolve_sequence_dims(self, per_datum_dims: int, depth: int | None = None) -> int:
        """The per-datum dimensions to line the factors up with (``LowRankLinear.resolve_sequence_dims``)."""
        return LowRankLinear.resolve_sequence_dims(self, per_datum_dims, depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r"""``base(x) + (alpha / r_0) (x B) A^T`` for ``x`` of shape ``(..., in_features)``.

        The factors' batch dimensions (vectorised particles, posterior draws) broadcast against ``x.shape[:-1]`` as
        in :class:`~pyro_lowrank.nn.LowRankLinear`, or, with ``fold_draws``, index blocks of the first dimension
        of ``x`` (see the class docstring).
        """
        check_last_dim(x, self.in_features, "x", f"BayesianLoRALinear(in_features={self.in_features})")
        a, b = self.A, self.B
        out = self.base(x)
        if self.fold_draws:
            return out + self._folded_delta(x, a, b)
        depth = vectorized_plate_depth()
        seq = self.resolve_sequence_dims(x.dim() - 2, depth)
        a, b = align_to_plates(a, 2, seq, depth), align_to_plates(b, 2, seq, depth)
        return out + factor_matmul(x, a * self.scaling, b)

    def _folded_delta(self, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        draws = batch.numel()
        a = a.expand(batch + a.shape[-2:]).reshape((draws,) + a.shape[-2:]) * self.scaling
        b = b.expand(batch + b.shape[-2:]).reshape((draws,) + b.shape[-2:])
        if draws == 1:
            return factor_matmul(x, a[0], b[0])
        if x.dim() < 2 or x.shape[0] % draws:
            raise ValueError(
                f"BayesianLoRALinear '{self._pyro_name}' has fold_draws=True and {draws} factor draws, so x must have "
                f"its first dimension a multiple of {draws} (the draws folded into the batch), got shape "
                f"{tuple(x.shape)}")
        rows = x.reshape(draws, -1, self.in_features)  # (P, N * ..., n): each draw's rows against its own factors
        delta = factor_matmul(rows, a.unsqueeze(1), b.unsqueeze(1))
        return delta.reshape(x.shape[:-1] + (self.out_features,))

    def extra_repr(self) -> str:
        extra = ", fold_draws=True" if self.fold_draws else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"initial_rank={self.initial_rank}, alpha={self.alpha:g}, scaling={self.scaling:g}{extra}")


ADAPTER_TYPES: tuple[type[nn.Module], ...] = (LoRALinear, BayesianLoRALinear)


def draw_batch_shape() -> tuple[int, ...]:
    """The batch shape that global sample sites get from the active vectorised plates (posterior draws, ELBO
    particles): the plate sizes at dimensions ``-depth .. -1``, 1 where no plate sits; ``()`` outside plates.

    A model that folds the draws into the batch of a network that accepts no extra leading dimensions (adapters with
    ``fold_draws=True``) repeats its inputs ``prod(shape)`` times and reshapes the outputs to ``shape[:-1] + (N,
    ...)`` when the data plate sits at dimension -1.
    """
    depth = vectorized_plate_depth()
    shape = [1] * depth
    for frame in get_plates():
        if frame.vectorized and frame.dim is not None:
            shape[depth + frame.dim] = frame.size
    return tuple(shape)


def adapter_parameter_count(module: nn.Module) -> int:
    """Learned adapter numbers in ``module``: r (m + n) per :class:`LoRALinear`, r (m + n + 1) per
    :class:`BayesianLoRALinear` (its LRVD guide's means and rank-wise log-variances, at the current rank)."""
    return sum(m.num_adapter_parameters() for m in module.modules() if isinstance(m, ADAPTER_TYPES))


def _targets(target_names: str | Iterable[str]) -> tuple[str, ...]:
    names = (target_names,) if isinstance(target_names, str) else tuple(target_names)
    if not names or not all(isinstance(name, str) and name for name in names):
        raise ValueError(f"target_names must be a non-empty name or sequence of non-empty names (str), got "
                         f"{target_names!r}")
    return names


def _name_matches(name: str, target: str) -> bool:
    """A qualified module name matches a target that equals it, that is a suffix of it on a component boundary
    (``"query"`` and ``"self.query"`` match ``"encoder.layer.0.attention.self.query"``), or, when the target holds
    a wildcard (``*?[``), that matches it as a glob."""
    if any(char in target for char in "*?["):
        return fnmatch.fnmatchcase(name, target)
    return name == target or name.endswith("." + target)


def add_lora_adapters(
    module: nn.Module,
    target_names: str | Sequence[str] = ("query", "key", "value"),
    rank: int = 8,
    alpha: float = 16.0,
    bayesian: bool = True,
    prior: FactorPrior | None = None,
    *,
    fold_draws: bool = False,
    generator: torch.Generator | None = None,
) -> list[str]:
    r"""Put a LoRA adapter on every ``nn.Linear`` of ``module`` named by ``target_names`` and freeze everything else,
    in place.

    Every matched layer :math:`W_0` becomes :class:`BayesianLoRALinear` (``bayesian=True``) or :class:`LoRALinear`
    around it, computing :math:`x W_0^\top + b_0 + \frac{\alpha}{r} (x B) A^\top`; every parameter of ``module`` that
    is not an adapter factor gets ``requires_grad=False``. With ``bayesian=True`` the module tree is then made a
    ``PyroModule`` tree (:func:`~pyro_lowrank.nn.point_estimates.to_point_estimates_`, as
    :func:`~pyro_lowrank.nn.lowrankify` does), so the adapters' sample sites get unique path-based names
    (``encoder.layer.0.attention.self.query.A``) that follow the module into any parent ``PyroModule``; the frozen
    parameters become frozen real-valued ``PyroParam`` s (state-dict keys ending in ``_unconstrained``). The only
    latent sites are the adapters' A and B.

    Parameters
    ----------
    module : nn.Module
        Any module (a Hugging Face encoder, a torch Transformer).
    target_names : str or sequence of str
        Which linear layers to adapt, by qualified name: a target matches a name equal to it, a name ending in
        ``"." + target`` (``"query"`` matches ``encoder.layer.3.attention.self.query``), or, with a wildcard
        (``*?[``), a name it matches as a glob.
    rank : int
        r of every adapter, in [1, min(m, n)] of each matched layer.
    alpha : float
        LoRA alpha (> 0); the scaling is ``alpha / rank``.
    bayesian : bool
        Bayesian adapters (sample sites) or plain LoRA (parameters).
    prior : FactorPrior, optional
        Factor prior of the Bayesian adapters (each gets its own copy); default the log-uniform prior. Only with
        ``bayesian=True``.
    fold_draws : bool
        Set :attr:`BayesianLoRALinear.fold_draws` (the wrapped network accepts no extra leading dimensions).
    generator : torch.Generator, optional
        For the adapters' initialisation.

    Returns
    -------
    list of str
        The qualified names of the adapted layers, in module order.

    Raises
    ------
    TypeError
        If ``module`` is not an ``nn.Module``.
    ValueError
        If no ``nn.Linear`` matches ``target_names`` (the message lists the linear layers there are), a matched
        name is the module itself, ``rank`` is out of range for a matched layer, ``alpha`` is not positive, or a
        ``prior`` is given with ``bayesian=False``.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    targets = _targets(target_names)
    alpha = _check_alpha(alpha)
    if prior is not None and not bayesian:
        raise ValueError("prior applies to Bayesian adapters only: pass bayesian=True or prior=None, got "
                         f"bayesian=False and prior={type(prior).__name__}")
    inside_adapters = {f"{name}.{sub}" if name else sub
                       for name, child in module.named_modules() if isinstance(child, ADAPTER_TYPES)
                       for sub, _ in child.named_modules() if sub}
    linears = [(name, child) for name, child in module.named_modules()
               if isinstance(child, nn.Linear) and name not in inside_adapters]
    matched = [(name, child) for name, child in linears if any(_name_matches(name, t) for t in targets)]
    if not matched:
        shown = [name for name, _ in linears][:12]
        raise ValueError(f"target_names {list(targets)} match no torch.nn.Linear of the module; its linear layers are "
                         f"{shown}{' ...' if len(linears) > len(shown) else ''}")
    if any(name == "" for name, _ in matched):
        raise ValueError("target_names match the module itself: add_lora_adapters replaces submodules; wrap a bare "
                         "nn.Linear in LoRALinear or BayesianLoRALinear directly")
    for name, child in matched:
        check_rank(rank, child.out_features, child.in_features, name=f"rank (for '{name}')")
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    for name, child in matched:
        parent_name, _, leaf = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        if bayesian:
            adapter = BayesianLoRALinear(child, rank, alpha, None if prior is None else copy.deepcopy(prior),
                                         fold_draws=fold_draws, generator=generator)
        else:
            adapter = LoRALinear(child, rank, alpha, generator=generator)
        setattr(parent, leaf, adapter.train(child.training))
    if bayesian:
        to_point_estimates_(module)
    names = [name for name, _ in matched]
    logger.info("add_lora_adapters: %d %s adapters of rank %d on %s", len(names),
                "Bayesian" if bayesian else "LoRA", rank, names)
    return names
