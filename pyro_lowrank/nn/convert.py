r"""``lowrankify``: turn the dense layers of any ``torch.nn.Module`` into low-rank Bayesian layers.

Every converted weight matrix :math:`W \in \mathbb R^{m\times n}` becomes :math:`W = A B^\top` with random factors
:math:`A \in \mathbb R^{m\times r}`, :math:`B \in \mathbb R^{n\times r}` (Pyro sample sites ``A`` and ``B``), and every
converted bias a random vector. With ``init="svd"`` the factor means start at the balanced truncated SVD of the
module's current weight, :math:`\mu_A = U_r\Sigma_r^{1/2}`, :math:`\mu_B = V_r\Sigma_r^{1/2}` (so
:math:`\mu_A\mu_B^\top` is the best rank-r approximation of W, Eckart-Young-Mirsky) and the bias means at its biases;
with ``init="random"`` they start at the variance-matching initialisation of each layer. At full rank
:math:`r = \min(m, n)` and posterior scales of zero the SVD-initialised module computes exactly what the original did.

Supported types and what is factorised:

=============================  ==========================================================================
``nn.Linear``                  :class:`LowRankLinear`: W (out x in)
``nn.Embedding``               :class:`LowRankEmbedding`: the table (V x d); only rows of tokens in the batch
``nn.LSTM``                    :class:`LowRankLSTM`: each layer's packed W_ih (4H x in) and W_hh (4H x H)
``nn.MultiheadAttention``      :class:`LowRankMultiheadAttention`: the Q, K, V and output projections
=============================  ==========================================================================

Every other module is kept as it is: its parameters (normalisation layers, positional tables, ...) stay
deterministic and are point-estimated by SVI alongside the variational parameters. The whole tree is converted to
:class:`~pyro.nn.PyroModule` (:func:`~pyro_lowrank.nn.point_estimates.to_point_estimates_`) so that sample sites get
unique, path-based names (``encoder.layers.0.linear1.A``) and deterministic parameters are real-valued ``PyroParam``
point estimates, which both the ``ELBOModule`` route and plain ``SVI`` train (their state-dict keys end in
``_unconstrained``).
"""

from __future__ import annotations

import copy
import fnmatch
import logging
import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Union

from pyro.nn import PyroModule
from torch import nn

from pyro_lowrank._validation import check_choice, check_rank
from pyro_lowrank.nn.attention import LowRankMultiheadAttention, check_multihead_attention
from pyro_lowrank.nn.embedding import LowRankEmbedding, check_embedding
from pyro_lowrank.nn.linear import LowRankLinear
from pyro_lowrank.nn.lstm import LowRankLSTM, check_lstm
from pyro_lowrank.nn.point_estimates import to_point_estimates_

__all__ = ["LOW_RANK_TYPES", "SUPPORTED_TYPES", "RankSpec", "lowrankify"]

logger = logging.getLogger(__name__)

RankValue = Union[int, float, tuple[Union[int, float], Union[int, float]]]
RankSpec = Union[int, float, Mapping[str, RankValue], Callable[[str, nn.Module], Union[RankValue, None]]]

#: torch module types that :func:`lowrankify` converts.
SUPPORTED_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Embedding, nn.LSTM, nn.MultiheadAttention)

#: The library's layers that ``lowrankify`` produces (their subtrees are never converted again).
LOW_RANK_TYPES: tuple[type[nn.Module], ...] = (LowRankLinear, LowRankEmbedding, LowRankLSTM, LowRankMultiheadAttention)

# Weight-carrying torch layers we cannot factorise: matching one of them is an error, not a silent skip.
_UNSUPPORTED_WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (
    nn.modules.conv._ConvNd,
    nn.RNNBase,  # GRU, RNN (nn.LSTM is supported unless bidirectional or projected)
    nn.RNNCellBase,
    nn.Bilinear,
    nn.EmbeddingBag,
)


def _supported_names() -> str:
    return ", ".join(f"torch.nn.{t.__name__}" for t in SUPPORTED_TYPES)


def _patterns(value: str | Iterable[str] | None, name: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    patterns = tuple(value)
    if not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"{name} must be a glob pattern or a sequence of glob patterns (str), got {value!r}")
    return patterns


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def _resolve_rank(spec: int | float, rows: int, cols: int, where: str) -> int:
    """An int rank for an ``rows x cols`` matrix: an int is taken as is, a float in (0, 1] is a fraction of
    ``min(rows, cols)`` (rounded up); either must land in [1, min(rows, cols)]."""
    limit = min(rows, cols)
    if isinstance(spec, float):
        if not 0.0 < spec <= 1.0 or math.isnan(spec):
            raise ValueError(f"rank for {where} as a float is a fraction of min(m, n) in (0, 1], got {spec!r}")
        spec = max(1, math.ceil(spec * limit - 1e-9))
    return check_rank(spec, rows, cols, name=f"rank for {where}")


def _rank_for(rank: RankSpec, name: str, module: nn.Module) -> int | float | None:
    """The user's rank specification for the module at ``name`` (None: leave it as it is)."""
    if isinstance(rank, Mapping):
        for pattern, value in rank.items():
            if fnmatch.fnmatchcase(name, pattern):
                return value
        return None
    if callable(rank):
        return rank(name, module)
    return rank


def _check_rank_value(value: Any, name: str, module: nn.Module) -> int | float | tuple[int | float, int | float]:
    if isinstance(module, nn.LSTM) and isinstance(value, (tuple, list)):
        value = tuple(value)
        if len(value) != 2:
            raise ValueError(f"rank for the LSTM '{name}' as a tuple must be (rank_ih, rank_hh), got {value!r}")
        return (_check_rank_value(value[0], name, nn.Identity()), _check_rank_value(value[1], name, nn.Identity()))
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"rank for '{name}' must be an int or a float fraction in (0, 1]"
                         f"{' (or a pair (rank_ih, rank_hh) for an LSTM)' if isinstance(module, nn.LSTM) else ''}, "
                         f"got {value!r}")
    return value if isinstance(value, numbers.Integral) else float(value)


def _check_convertible(name: str, module: nn.Module) -> None:
    """Raise ``ValueError`` for a supported type in a configuration we cannot factorise: the layer classes' own
    checks (the same for ``init="svd"`` and ``init="random"``), with the module's name and a way out."""
    where = f"'{name}'" if name else "the module"
    if isinstance(module, nn.modules.lazy.LazyModuleMixin) and module.has_uninitialized_params():
        raise ValueError(f"{where} has uninitialised lazy parameters: run one forward pass before lowrankify")
    check = {nn.LSTM: check_lstm, nn.MultiheadAttention: check_multihead_attention,
             nn.Embedding: check_embedding}.get(next((t for t in SUPPORTED_TYPES if isinstance(module, t)), None))
    if check is None:
        return
    try:
        check(module)
    except ValueError as err:
        raise ValueError(f"lowrankify cannot convert {where}: {err}; leave it deterministic with "
                         f"exclude=[{name!r}]") from err


def _selected(name: str, patterns: tuple[str, ...]) -> bool:
    """Whether ``name`` or one of its ancestors (``a`` and ``a.b`` for ``a.b.c``) matches a pattern: selecting a
    container selects its subtree."""
    parts = name.split(".") if name else [""]
    return any(_matches(".".join(parts[:i]), patterns) for i in range(1, len(parts) + 1))


def _convert(module: nn.Module, spec: int | float | tuple, name: str, init: str, kwargs: dict[str, Any]) -> nn.Module:
    """The low-rank Bayesian version of one supported module, on its device and dtype and in its train/eval mode."""
    new = _build(module, spec, name, init, kwargs)
    return new.train(module.training)


def _build(module: nn.Module, spec: int | float | tuple, name: str, init: str, kwargs: dict[str, Any]) -> nn.Module:
    svd = init == "svd"
    where = f"'{name}'" if name else "the module"
    weight = next(module.parameters())
    if isinstance(module, nn.Linear):
        rank = _resolve_rank(spec, module.out_features, module.in_features, where)
        if svd:
            return LowRankLinear.from_linear(module, rank, **kwargs)
        new = LowRankLinear(module.in_features, module.out_features, rank, bias=module.bias is not None, **kwargs)
    elif isinstance(module, nn.Embedding):
        rank = _resolve_rank(spec, module.num_embeddings, module.embedding_dim, where)
        if svd:
            return LowRankEmbedding.from_embedding(module, rank, **kwargs)
        new = LowRankEmbedding(module.num_embeddings, module.embedding_dim, rank, padding_idx=module.padding_idx,
                               **kwargs)
    elif isinstance(module, nn.LSTM):
        kwargs = {k: v for k, v in kwargs.items() if k != "sequence_dims"}
        four_h, hidden = 4 * module.hidden_size, module.hidden_size
        sizes = [module.input_size] + [hidden] * (module.num_layers - 1)
        spec_ih, spec_hh = spec if isinstance(spec, tuple) else (spec, spec)
        rank_ih = [_resolve_rank(spec_ih, four_h, n, f"{where} (W_ih of layer {i})") for i, n in enumerate(sizes)]
        rank_hh = [_resolve_rank(spec_hh, four_h, hidden, f"{where} (W_hh of layer {i})") for i in range(len(sizes))]
        if svd:
            return LowRankLSTM.from_lstm(module, rank_ih, rank_hh, **kwargs)
        new = LowRankLSTM(module.input_size, hidden, module.num_layers, rank_ih=rank_ih, rank_hh=rank_hh,
                          bias=module.bias, batch_first=module.batch_first, dropout=module.dropout, **kwargs)
    else:  # nn.MultiheadAttention
        kwargs = {k: v for k, v in kwargs.items() if k != "sequence_dims"}
        e = module.embed_dim
        shapes = {"q": (e, e), "k": (e, module.kdim), "v": (e, module.vdim), "out": (e, e)}
        rank = {key: _resolve_rank(spec, m, n, f"{where} ({key} projection)") for key, (m, n) in shapes.items()}
        if svd:
            return LowRankMultiheadAttention.from_multihead_attention(module, rank, **kwargs)
        new = LowRankMultiheadAttention(e, module.num_heads, rank, bias=module.in_proj_bias is not None,
                                        dropout=module.dropout, batch_first=module.batch_first,
                                        kdim=module.kdim, vdim=module.vdim, **kwargs)
    return new.to(device=weight.device, dtype=weight.dtype)


def lowrankify(
    module: nn.Module,
    rank: RankSpec,
    *,
    init: str = "svd",
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
    sequence_dims: int | None | Mapping[str, int | None] = None,
    inplace: bool = False,
    **layer_kwargs: Any,
) -> PyroModule:
    r"""Convert the ``nn.Linear``, ``nn.LSTM``, ``nn.Embedding`` and ``nn.MultiheadAttention`` inside ``module``
    into low-rank Bayesian layers (see the module docstring for the mathematics).

    Parameters
    ----------
    module : nn.Module
        Any torch module (a supported layer itself, or a network containing them).
    rank : int, float, mapping or callable
        Rank r of every factorised matrix. An ``int`` must lie in [1, min(m, n)] for each converted matrix (a
        ``ValueError`` names the module and the limit otherwise); a ``float`` in (0, 1] is a fraction of
        ``min(m, n)``, rounded up. A mapping ``{glob pattern: int or float}`` gives ranks by qualified module name
        (first matching pattern; modules matching none are left as they are); a callable ``(name, module) -> rank
        or None`` decides per module (``None``: leave it). For an ``nn.LSTM`` the value may be a pair
        ``(rank_ih, rank_hh)``: the ranks of every layer's input and recurrent gate matrices (the paper's
        forecaster: ``(14, 20)``).
    init : {"svd", "random"}
        Factor means from the truncated SVD of the module's current weights (and bias means from its biases), or
        the layers' variance-matching random initialisation (a fresh Bayesian network of the same architecture).
    include, exclude : glob pattern or sequence of patterns, optional
        Convert only modules whose qualified name (as in ``module.named_modules()``, ``""`` for ``module`` itself),
        or the name of one of their ancestors, matches an ``include`` pattern and no ``exclude`` pattern: selecting
        a container (``exclude="encoder"``) selects its whole subtree.
    sequence_dims : int, None or mapping
        Per-datum dimensions between the data dimension and the features of the inputs that converted
        ``nn.Linear`` and ``nn.Embedding`` layers see (0 for ``(N, n)``, 1 for ``(N, L, n)`` token or time-step
        inputs); it lines the factors' particle dimensions up with the inputs under vectorised particles (see
        :func:`pyro_lowrank.nn.linear.align_to_plates`) and changes nothing otherwise. ``None`` (default): each
        layer infers it from the inputs it sees when called without vectorised particles (a guide's first call
        does this), which is right whatever the layout. An int for all layers, or ``{glob pattern: int or None}`` by
        qualified name (first match; ``None`` for names matching none). LSTM and attention layers handle their own
        layout.
    inplace : bool
        Convert ``module`` itself (its class becomes a ``PyroModule`` subclass) instead of a deep copy.
    **layer_kwargs
        Passed to every new layer: ``prior`` (each layer gets its own copy), ``prior_scale``,
        ``init_scale_factor``.

    Returns
    -------
    PyroModule
        The converted module: call it inside a Pyro model (for example :class:`pyro_lowrank.models.SupervisedModel`)
        and train it with :class:`~pyro_lowrank.guides.FactorGuide` or any autoguide started with
        :func:`~pyro_lowrank.guides.init_to_factors`.

    Raises
    ------
    TypeError
        If ``module`` is not an ``nn.Module``, or a selected module is a weight layer that cannot be factorised
        (convolutions, GRU/RNN, bidirectional or projected LSTMs, ...): the message names it and lists the
        supported types.
    ValueError
        If a rank is out of range, ``init`` is unknown, or nothing was selected for conversion.

    Notes
    -----
    Weight tying between converted modules is not preserved: each converted module gets its own factors (tying
    between modules that stay deterministic is kept). Sub-modules of a converted ``nn.MultiheadAttention`` (its
    ``out_proj``) are converted with it, never alone. The converted modules keep the train/eval mode of the ones
    they replace.

    Vectorised particles (``fit`` with ``num_particles > 1``, ``fit``'s validation pass, :func:`predict`) run every
    posterior draw in one pass, so all activations after the first Bayesian layer carry a leading particle
    dimension. The network's own code must accept it: index from the right (``h[..., 0, :]``, ``mean(-2)``) rather
    than from the left, and deterministic torch layers that insist on a fixed number of dimensions (a torch
    ``nn.LSTM``, ``BatchNorm``, ``Flatten()`` with its default ``start_dim=1``) must not follow a converted layer.
    Where that is unavoidable, draw sequentially (``pyro.infer.Predictive(model, guide=guide, num_samples=S,
    parallel=False)``) and train with one particle.

    Examples
    --------
    >>> net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    >>> bnn = lowrankify(net, rank={"0": 4, "2": 1})
    >>> type(bnn[0]).__name__
    'LowRankLinear'
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    check_choice(init, "init", ("svd", "random"))
    include_patterns = _patterns(include, "include")
    exclude_patterns = _patterns(exclude, "exclude")
    seq_spec = sequence_dims if isinstance(sequence_dims, Mapping) else {"*": sequence_dims}
    for pattern, value in seq_spec.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"sequence_dims must be a non-negative integer (or a mapping to them), got "
                             f"{value!r} for {pattern!r}")
    if not isinstance(rank, (Mapping, numbers.Real)) and not callable(rank) or isinstance(rank, bool):
        raise TypeError(f"rank must be an int, a float fraction, a mapping or a callable, got {rank!r}")
    root = module if inplace else copy.deepcopy(module)

    replacements: dict[int, nn.Module] = {}
    skip_below: list[str] = []  # converted modules' children are converted with them
    for name, sub in root.named_modules():
        if any(name.startswith(prefix + ".") or prefix == "" for prefix in skip_below):
            continue
        if isinstance(sub, (nn.MultiheadAttention, *LOW_RANK_TYPES)):
            skip_below.append(name)  # never convert an attention's out_proj alone: its forward reads the weight
        if include_patterns is not None and not _selected(name, include_patterns):
            continue
        if exclude_patterns is not None and _selected(name, exclude_patterns):
            continue
        if isinstance(sub, LOW_RANK_TYPES):
            continue
        supported = isinstance(sub, SUPPORTED_TYPES)
        if not supported and not isinstance(sub, _UNSUPPORTED_WEIGHT_LAYERS):
            continue  # norms, activations, containers: kept deterministic
        spec = _rank_for(rank, name, sub)
        if spec is None:
            continue  # not selected by the rank mapping or callable
        if not supported:
            where = f"'{name}'" if name else "the module itself"
            raise TypeError(
                f"lowrankify cannot convert {where} of type {type(sub).__module__}.{type(sub).__name__}; "
                f"supported types are {_supported_names()}. Leave it deterministic with exclude=[{name!r}]"
            )
        _check_convertible(name, sub)
        spec = _check_rank_value(spec, name, sub)
        kwargs = dict(layer_kwargs)
        if "prior" in kwargs and kwargs["prior"] is not None:
            kwargs["prior"] = copy.deepcopy(kwargs["prior"])
        kwargs["sequence_dims"] = next((v for p, v in seq_spec.items() if fnmatch.fnmatchcase(name, p)), None)
        replacements[id(sub)] = _convert(sub, spec, name, init, kwargs)
        logger.info("lowrankify: %s (%s) -> %s", name or "<root>", type(sub).__name__, replacements[id(sub)])

    if not replacements:
        raise ValueError(
            f"lowrankify found nothing to convert in {type(module).__name__} (include={include!r}, "
            f"exclude={exclude!r}); supported types are {_supported_names()}"
        )
    if id(root) in replacements:
        return replacements[id(root)]
    for parent in list(root.modules()):
        for child_name, child in list(parent._modules.items()):
            if child is not None and id(child) in replacements:
                parent._modules[child_name] = replacements[id(child)]
    for sub in root.modules():
        if isinstance(sub, nn.TransformerEncoder):
            sub.use_nested_tensor = False  # its nested-tensor fast path reads self_attn.out_proj.weight
    return to_point_estimates_(root, skip=LOW_RANK_TYPES)
