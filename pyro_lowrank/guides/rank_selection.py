r"""Rank scores, the diagonal gauge fix and rank pruning for models trained with :class:`LRVDGuide`.

**Score.** For a factor pair with rank-wise variance :math:`\sigma_k^2` and means :math:`\mu_A` (m x r),
:math:`\mu_B` (n x r), the per-entry noise-to-signal ratios are :math:`\log\alpha_{A,ik} = \log\sigma_k^2 -
\log\mu_{A,ik}^2` and likewise for B. Component k is scored by the average of the two medians,

.. math::

    \log\alpha_k = \tfrac12\big[\operatorname{median}_i \log\alpha_{A,ik} + \operatorname{median}_j
    \log\alpha_{B,jk}\big]
    = \log\sigma_k^2 - \tfrac12\big[\operatorname{median}_i \log\mu_{A,ik}^2 + \operatorname{median}_j
    \log\mu_{B,jk}^2\big],

(medians, not means: robust to the few entries of a column that happen to be near zero), and kept when
:math:`\log\alpha_k < \tau` (default 3: the noise standard deviation exceeds :math:`e^{1.5} \approx 4.5` times the typical
mean). ``torch.median`` takes the lower of the two middle values for an even count. This is BayesLoRA's score
(``score="median"``, the default), with one difference: :math:`\log\sigma_k^2` is the clamped value the guide uses
(BayesLoRA scores the raw parameter, which may lie above the clamp's upper end of 2).

``score="norm"`` uses root-mean-square entries instead of medians,

.. math::

    \log\alpha_k^\text{norm} = \log\sigma_k^2 - \tfrac12\Big[\log\tfrac1m\sum_i \mu_{A,ik}^2
    + \log\tfrac1n\sum_j \mu_{B,jk}^2\Big]
    = \log\sigma_k^2 - \log\frac{\lVert\mu_{A,:k}\rVert\,\lVert\mu_{B,:k}\rVert}{\sqrt{mn}}.

Prefer it for ReLU networks trained from scratch: the per-entry log-uniform KL also sparsifies the entries of a
needed column (a few large entries, the rest near zero), which lifts its median score above :math:`\tau` while its
norm score stays low (docs/RESULTS.md, "Rank selection with LRVD").

**Gauge.** :math:`(A, B) \to (A\,\mathrm{diag}(c), B\,\mathrm{diag}(c)^{-1})` leaves :math:`A B^\top` unchanged. Before
scoring, :func:`fix_gauge` balances the column norms of the means with :math:`c_k = \sqrt{\lVert\mu_{B,:k}\rVert /
\lVert\mu_{A,:k}\rVert}` (after it, both columns have norm :math:`\sqrt{\lVert\mu_{A,:k}\rVert\,\lVert\mu_{B,:k}\rVert}`).
The score above is invariant under this move (the two medians shift by :math:`\pm 2\log c_k`), but the per-entry KL
is not: the KL of an unbalanced pair is dominated by its smaller factor, so the fix is applied before pruning and
periodically during training.

**Pruning.** :func:`prune_ranks` removes the columns of the discarded components from the guide's means and
log-variances and from the layer (its rank and init buffers), so the parameter count drops by exactly
:math:`|K|\,(m + n + 1)` for K removed components, and the posterior-mean weight changes by exactly
:math:`-\sum_{k \in K} \mu_{A,:k}\mu_{B,:k}^\top`. An optimiser is pointed at the new parameters, with its state
sliced to the kept components, by :func:`replace_in_optimizer`. For a LoRA adapter, whose weight is
:math:`(\alpha/r_0) A B^\top`, the change is that scale times the removed components' sum.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from pyro_lowrank.guides.rankwise import LRVDGuide, _deep_getattr

__all__ = [
    "RankPruning", "effective_rank", "effective_ranks", "fix_gauge", "prune_ranks", "rank_log_alpha",
    "removed_weight", "replace_in_optimizer", "resize_ranks",
]

logger = logging.getLogger(__name__)

_EPS = 1e-8  # as in noise_to_signal_log_ratio
SCORES = ("median", "norm")


def _check_guide(guide: LRVDGuide) -> None:
    if not isinstance(guide, LRVDGuide):
        raise TypeError(f"guide must be an LRVDGuide (rank-wise variances), got {type(guide).__name__}")
    if guide.prototype_trace is None:
        raise ValueError("the guide has not been set up yet: call it (or train it) once on data before scoring ranks")


def _layer_pairs(layer: nn.Module, guide: LRVDGuide) -> dict[str, str]:
    """``{weight name: pair key}`` for the layer's factor pairs that the guide treats rank-wise."""
    sites = getattr(layer, "factor_sites", None)
    if sites is None:
        raise TypeError(f"layer must be a low-rank layer with factor_sites(), got {type(layer).__name__}")
    return {weight: a_name for weight, (a_name, _) in sites().items() if a_name in guide.pairs}


def _check_score(score: str) -> str:
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    return score


def _pair_log_alpha(guide: LRVDGuide, pair: str, score: str = "median") -> torch.Tensor:
    a_name, b_name = guide.pairs[pair]
    with torch.no_grad():
        a_loc, b_loc = _deep_getattr(guide.locs, a_name), _deep_getattr(guide.locs, b_name)
        if score == "norm":
            a_typ, b_typ = (torch.log(loc.square().mean(dim=-2) + _EPS) for loc in (a_loc, b_loc))
        else:
            a_typ, b_typ = (torch.log(loc.square() + _EPS).median(dim=-2).values for loc in (a_loc, b_loc))
        return guide.log_variance(pair).detach() - 0.5 * (a_typ + b_typ)


def rank_log_alpha(layer: nn.Module, guide: LRVDGuide, score: str = "median") -> dict[str, torch.Tensor]:
    r"""Per-component scores :math:`\log\alpha_k` (module docstring) of each factorised weight of ``layer``.

    Parameters
    ----------
    layer : nn.Module
        A low-rank layer of the guide's model (``LowRankLinear``, an adapter, ...).
    guide : LRVDGuide
        The trained rank-wise guide.
    score : {"median", "norm"}
        Medians of the entries (BayesLoRA) or their root mean square (module docstring).

    Returns
    -------
    dict of str to torch.Tensor
        ``{weight name: log alpha of shape (r,)}`` (``"weight"`` for a ``LowRankLinear``).
    """
    _check_guide(guide)
    score = _check_score(score)
    return {weight: _pair_log_alpha(guide, pair, score) for weight, pair in _layer_pairs(layer, guide).items()}


def _check_tau(tau: float) -> float:
    if not (isinstance(tau, (int, float)) and math.isfinite(tau)):
        raise ValueError(f"tau must be a finite log-alpha threshold, got {tau!r}")
    return float(tau)


def effective_rank(layer: nn.Module, guide: LRVDGuide, tau: float = 3.0, weight: str | None = None,
                   score: str = "median") -> int:
    r"""Number of components of a layer's factorised weight with :math:`\log\alpha_k < \tau`.

    Parameters
    ----------
    layer : nn.Module
        A low-rank layer of the guide's model.
    guide : LRVDGuide
        The trained rank-wise guide (the variational parameters live in the guide, as Pyro's idiom has it).
    tau : float
        Threshold on :math:`\log\alpha_k` (3 by default, 4 for GLUE adapters and 2 for GPT-2 in BayesLoRA).
    weight : str, optional
        Which factorised weight, for layers with several (LSTM gates); default the layer's only one.
    score : {"median", "norm"}
        See :func:`rank_log_alpha`.

    Returns
    -------
    int
    """
    tau = _check_tau(tau)
    scores = rank_log_alpha(layer, guide, score)
    if not scores:
        raise ValueError(f"layer {type(layer).__name__} has no factor pair that the guide treats rank-wise (the guide's "
                         f"pairs: {sorted(guide.pairs)})")
    if weight is None:
        if len(scores) != 1:
            raise ValueError(f"layer has {len(scores)} rank-wise factorised weights {sorted(scores)}: pass weight=")
        weight = next(iter(scores))
    if weight not in scores:
        raise ValueError(f"weight must be one of {sorted(scores)}, got {weight!r}")
    return int((scores[weight] < tau).sum())


def effective_ranks(model: nn.Module, guide: LRVDGuide, tau: float = 3.0, score: str = "median") -> dict[str, int]:
    """:func:`effective_rank` of every rank-wise factor pair of ``model``, keyed by the pair's A site name."""
    _check_guide(guide)
    tau, score = _check_tau(tau), _check_score(score)
    return {pair: int((_pair_log_alpha(guide, pair, score) < tau).sum()) for pair in guide.pairs}


def fix_gauge(guide: LRVDGuide, eps: float = 1e-12) -> None:
    r"""Balance every pair's column norms: :math:`c_k = \sqrt{(\lVert\mu_{B,:k}\rVert + \epsilon) /
    (\lVert\mu_{A,:k}\rVert + \epsilon)}`, :math:`\mu_A \to \mu_A\mathrm{diag}(c)`, :math:`\mu_B \to
    \mu_B\mathrm{diag}(c)^{-1}` (the posterior mean :math:`\mu_A\mu_B^\top` is unchanged)."""
    _check_guide(guide)
    for pair, (a_name, b_name) in guide.pairs.items():
        with torch.no_grad():
            a_norm = _deep_getattr(guide.locs, a_name).norm(dim=-2)
            b_norm = _deep_getattr(guide.locs, b_name).norm(dim=-2)
            guide.rescale_components(pair, torch.sqrt((b_norm + eps) / (a_norm + eps)))


def removed_weight(guide: LRVDGuide, pair: str, keep: torch.Tensor) -> torch.Tensor:
    r""":math:`\sum_{k \notin \text{keep}} \mu_{A,:k}\mu_{B,:k}^\top`, what pruning to ``keep`` takes off the
    posterior-mean weight of a pair (m x n)."""
    a_name, b_name = guide.pairs[pair]
    with torch.no_grad():
        a_loc, b_loc = _deep_getattr(guide.locs, a_name), _deep_getattr(guide.locs, b_name)
        drop = torch.ones(a_loc.shape[-1], dtype=torch.bool, device=a_loc.device)
        drop[keep.to(a_loc.device)] = False
        return a_loc[..., drop] @ b_loc[..., drop].transpose(-1, -2)


@dataclass
class RankPruning:
    """What :func:`prune_ranks` (or :func:`resize_ranks`) did.

    Attributes
    ----------
    before, after : dict of str to int
        Rank of each rank-wise factor pair (keyed by its A site) before and after.
    kept : dict of str to torch.Tensor
        Indices of the kept components of each pair that changed.
    replaced : list of (old, new, keep)
        The guide parameters that were replaced, for :func:`replace_in_optimizer`.
    removed_parameters : int
        Learned numbers removed from the guide: :math:`|K| (m + n + 1)` per pair.
    """

    before: dict[str, int] = field(default_factory=dict)
    after: dict[str, int] = field(default_factory=dict)
    kept: dict[str, torch.Tensor] = field(default_factory=dict)
    replaced: list = field(default_factory=list)
    removed_parameters: int = 0

    @property
    def changed(self) -> bool:
        """Whether any component was removed."""
        return bool(self.kept)


def _apply_keep(model: nn.Module, guide: LRVDGuide, keeps: dict[str, torch.Tensor], result: RankPruning) -> None:
    keeps = dict(keeps)  # each pair is cut once, by the first module (in model.modules() order) that lists it
    cuts = []
    for module in model.modules():
        if getattr(module, "factor_sites", None) is None:
            continue
        for weight, pair in _layer_pairs(module, guide).items():
            if pair in keeps:
                if getattr(module, "select_rank_components", None) is None:
                    raise TypeError(f"{type(module).__name__} holding {pair} cannot drop rank components (it has no "
                                    "select_rank_components method); nothing was pruned")
                cuts.append((module, weight, pair, keeps.pop(pair)))
    if keeps:
        raise ValueError(f"no module of the model lists the factor pairs {sorted(keeps)} of the guide; nothing was "
                         "pruned")
    for module, weight, pair, keep in cuts:  # every check passed: now change the model and the guide
        select = module.select_rank_components
        per_component = sum(_deep_getattr(guide.locs, name).shape[-2] for name in guide.pairs[pair]) + 1
        result.removed_parameters += per_component * (result.before[pair] - keep.numel())
        select(weight, keep)
        result.replaced.extend(guide.select_components(pair, keep))
        result.kept[pair] = keep
        result.after[pair] = keep.numel()


def prune_ranks(
    model: nn.Module, guide: LRVDGuide, tau: float = 3.0, *, min_rank: int = 1, gauge_fix: bool = True,
    score: str = "median",
) -> RankPruning:
    r"""Physically remove the components with :math:`\log\alpha_k \geq \tau` from every prunable low-rank layer.

    Parameters
    ----------
    model : nn.Module
        The model; its layers with ``factor_sites()`` and ``select_rank_components(weight, keep)`` are pruned (a
        rank-wise pair held by a layer without the method raises ``TypeError``).
    guide : LRVDGuide
        Its trained rank-wise guide.
    tau : float
        Threshold on :math:`\log\alpha_k`.
    min_rank : int
        Keep at least this many components per pair (the lowest scores), >= 1.
    gauge_fix : bool
        Apply :func:`fix_gauge` first.
    score : {"median", "norm"}
        See :func:`rank_log_alpha`.

    Returns
    -------
    RankPruning
        Ranks before/after, kept indices, the replaced parameters (pass them to :func:`replace_in_optimizer` or
        rebuild the optimiser) and the number of removed guide parameters. A compiled ELBO re-traces by itself
        (its cache key holds the parameter tensors, which pruning replaces); call its ``clear_cache()`` to free the
        graphs of the old tensors (``fit`` does).
    """
    _check_guide(guide)
    tau, score = _check_tau(tau), _check_score(score)
    if isinstance(min_rank, bool) or not isinstance(min_rank, int) or min_rank < 1:
        raise ValueError(f"min_rank must be an integer >= 1, got {min_rank!r}")
    if gauge_fix:
        fix_gauge(guide)
    result = RankPruning()
    keeps = {}
    for pair in guide.pairs:
        scores = _pair_log_alpha(guide, pair, score)
        result.before[pair] = result.after[pair] = scores.numel()
        keep = torch.nonzero(scores < tau).flatten()
        if keep.numel() < min(min_rank, scores.numel()):
            keep = torch.sort(torch.argsort(scores)[:min_rank]).values
        if keep.numel() < scores.numel():
            keeps[pair] = keep
    _apply_keep(model, guide, keeps, result)
    if result.changed:
        logger.info("pruned ranks %s", {p: f"{result.before[p]}->{result.after[p]}" for p in result.kept})
    return result


def resize_ranks(model: nn.Module, guide: LRVDGuide, ranks: dict[str, int]) -> RankPruning:
    """Shrink each pair to its first ``ranks[pair]`` components (to give a fresh model and guide the shapes of a
    pruned checkpoint before ``load_state_dict``; the values are then overwritten)."""
    _check_guide(guide)
    result = RankPruning()
    keeps = {}
    for pair, rank in ranks.items():
        if pair not in guide.pairs:
            raise ValueError(f"ranks names {pair!r}, which is not a rank-wise factor pair of the guide "
                             f"({sorted(guide.pairs)})")
        current = _deep_getattr(guide.locs, pair).shape[-1]
        result.before[pair] = result.after[pair] = current
        if not 1 <= rank <= current:
            raise ValueError(f"ranks[{pair!r}] must be in [1, {current}], got {rank!r}")
        if rank < current:
            keeps[pair] = torch.arange(rank)
    _apply_keep(model, guide, keeps, result)
    return result


def replace_in_optimizer(optimizer: torch.optim.Optimizer, replaced: list) -> None:
    """Point ``optimizer`` at the new parameters of a pruning, keeping its state for the kept components.

    Every state tensor of an old parameter with the parameter's number of dimensions and its last dimension (the rank:
    Adam's moments, momentum buffers, Adafactor's column statistics of shape ``(1, r)``) is sliced along the last
    dimension to the kept components; other state (step counts, per-row statistics) is carried as it is.

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
        Any optimiser over the parameters, before the pruning.
    replaced : list of (old, new, keep)
        :attr:`RankPruning.replaced`.
    """
    for old, new, keep in replaced:
        found = False
        for group in optimizer.param_groups:
            for index, param in enumerate(group["params"]):
                if param is old:
                    group["params"][index] = new
                    found = True
        if not found:
            continue
        state = optimizer.state.pop(old, None)
        if state is not None:
            optimizer.state[new] = {
                key: value.index_select(-1, keep.to(value.device)).clone()
                if isinstance(value, torch.Tensor) and value.dim() == old.dim() and value.dim() > 0
                and value.shape[-1] == old.shape[-1] else value
                for key, value in state.items()
            }
