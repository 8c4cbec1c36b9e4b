r"""Transformer blocks with low-rank Bayesian weights: a position-wise feed-forward network and an encoder layer.

Feed-forward: :math:`\mathrm{FFN}(x) = W_2\, \mathrm{drop}(\phi(W_1 x + b_1)) + b_2` with :math:`W_1 = A_1 B_1^\top`
(:math:`F \times d`), :math:`W_2 = A_2 B_2^\top` (:math:`d \times F`), :math:`\phi` = GELU or ReLU.

Encoder layer (the arithmetic of :class:`torch.nn.TransformerEncoderLayer`), pre-LN (``norm_first=True``, default):

.. math::
    x \leftarrow x + \mathrm{drop}(\mathrm{MHA}(\mathrm{LN}_1 x)),\qquad
    x \leftarrow x + \mathrm{drop}(\mathrm{FFN}(\mathrm{LN}_2 x)),

post-LN (``norm_first=False``): :math:`x \leftarrow \mathrm{LN}_1(x + \mathrm{drop}(\mathrm{MHA}(x)))`,
:math:`x \leftarrow \mathrm{LN}_2(x + \mathrm{drop}(\mathrm{FFN}(x)))`. The six projection matrices are factorised
(four in :class:`~pyro_lowrank.nn.attention.LowRankMultiheadAttention`, two in the FFN); the LayerNorms are
deterministic ``PyroModule[nn.LayerNorm]`` whose affine parameters are point estimates (real ``PyroParam`` s, see
:func:`layer_norm`). A mean-field
guide learns :math:`\sum 2 r (m + n)` factor numbers plus twice the bias sizes per layer.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from pyro.nn import PyroModule
from torch import nn

from pyro_lowrank._validation import check_choice, check_positive, check_positive_int, check_probability
from pyro_lowrank.distributions import FactorPrior
from pyro_lowrank.guides.init import svd_init
from pyro_lowrank.nn.attention import LowRankMultiheadAttention, check_multihead_attention, resolve_ranks
from pyro_lowrank.nn.linear import LowRankLinear
from pyro_lowrank.nn.point_estimates import to_point_estimates_

__all__ = ["LowRankFeedForward", "LowRankTransformerEncoderLayer", "copy_layer_norm", "layer_norm"]

_ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu}
_ATTENTION_KEYS = ("q", "k", "v", "out")


def _activation_name(activation: Any) -> str:
    """``"relu"`` or ``"gelu"`` for torch's activation spellings (string, functional, exact module)."""
    if isinstance(activation, str):
        return check_choice(activation, "activation", tuple(_ACTIVATIONS))
    if activation is F.relu or isinstance(activation, nn.ReLU):
        return "relu"
    if activation is F.gelu or (isinstance(activation, nn.GELU) and activation.approximate == "none"):
        return "gelu"
    raise ValueError(f"activation must be 'relu' or 'gelu' (string, F.relu/F.gelu or nn.ReLU/nn.GELU()), "
                     f"got {activation!r}")


def layer_norm(normalized_shape: int, eps: float = 1e-5, bias: bool = True) -> PyroModule:
    r"""A deterministic LayerNorm, :math:`\mathrm{LN}(x) = \gamma \odot (x - \bar x) / \sqrt{s^2_x + \epsilon} + \beta`
    over the last dimension, whose affine parameters :math:`\gamma, \beta` are point estimates.

    Built as ``to_point_estimates_(nn.LayerNorm(...))``: a ``PyroModule[nn.LayerNorm]`` whose ``weight`` and
    ``bias`` are real-valued ``PyroParam`` s (param sites named like ``encoder.norm1.weight``). With
    ``module_local_params=True`` (set by ``import pyro_lowrank``) they are the module parameters
    ``weight_unconstrained``/``bias_unconstrained`` that ``ELBOModule.parameters()`` returns, and, unlike plain
    ``nn.Parameter`` s of a ``PyroModule``, they also work with plain :class:`~pyro.infer.SVI` (which needs the
    ``unconstrained`` handle of every param site); with ``module_local_params=False`` they live in the param store.

    Parameters
    ----------
    normalized_shape : int
        d, the width normalised over.
    eps : float
        :math:`\epsilon`, added to the variance.
    bias : bool
        Whether there is an additive :math:`\beta` (as ``nn.LayerNorm(bias=...)``).

    Returns
    -------
    PyroModule
        The LayerNorm, initialised to :math:`\gamma = 1`, :math:`\beta = 0` on the default dtype and device.
    """
    return cast(PyroModule, to_point_estimates_(nn.LayerNorm(normalized_shape, eps=eps, bias=bias)))


def copy_layer_norm(target: PyroModule, source: nn.LayerNorm) -> None:
    r"""Copy the affine parameters :math:`\gamma, \beta` of a torch ``LayerNorm`` into one made by :func:`layer_norm`,
    in place (the values are cast to the target's dtype and device).

    Parameters
    ----------
    target : PyroModule
        A LayerNorm built by :func:`layer_norm`.
    source : nn.LayerNorm
        The trained LayerNorm to copy from.

    Returns
    -------
    None

    Raises
    ------
    ValueError
        If the shapes or epsilons differ, or only one of the two has a weight (bias).
    """
    if tuple(target.normalized_shape) != tuple(source.normalized_shape) or target.eps != source.eps:
        raise ValueError(f"LayerNorm shapes/eps differ: {tuple(target.normalized_shape)}, eps={target.eps} vs "
                         f"{tuple(source.normalized_shape)}, eps={source.eps}")
    with torch.no_grad():
        for name in ("weight", "bias"):
            value = getattr(source, name)
            if (value is None) != (f"{name}_unconstrained" not in target._parameters):
                raise ValueError(f"LayerNorm {name}: one of the two norms has it and the other does not")
            if value is not None:
                getattr(target, f"{name}_unconstrained").copy_(value)


class LowRankFeedForward(PyroModule):
    r"""Position-wise feed-forward block ``linear2(dropout(act(linear1(x))))`` with low-rank Bayesian weights.

    Parameters
    ----------
    d_model, dim_feedforward : int
        d and F: ``linear1`` is ``LowRankLinear(d, F)``, ``linear2`` is ``LowRankLinear(F, d)``, both with
        ``sequence_dims=1`` (inputs ``(..., N, L, d)``).
    rank : int or (int, int)
        Rank of both matrices, or ``(rank1, rank2)``; each in [1, min(d, F)].
    activation : {"gelu", "relu"}
        phi.
    dropout : float
        Dropout after the activation (training mode only), in [0, 1].
    bias : bool
        Bayesian biases.
    prior, prior_scale, init_scale_factor
        As in :class:`~pyro_lowrank.nn.linear.LowRankLinear`; each matrix gets its own copy of ``prior``.

    Notes
    -----
    Random init matches :class:`torch.nn.Linear` in variance (:math:`\operatorname{Var} W = 1/(3 n_\text{in})`).
    """

    def __init__(
        self,
        d_model: int,
        dim_feedforward: int,
        rank: int | Sequence[int],
        activation: str = "gelu",
        dropout: float = 0.0,
        bias: bool = True,
        prior: FactorPrior | None = None,
        prior_scale: float = 1.0,
        init_scale_factor: float = 0.1,
    ) -> None:
        super().__init__()
        self.d_model = check_positive_int(d_model, "d_model")
        self.dim_feedforward = check_positive_int(dim_feedforward, "dim_feedforward")
        self.activation = _activation_name(activation)
        check_probability(float(dropout), "dropout", open_interval=False)
        check_positive(init_scale_factor, "init_scale_factor")
        if isinstance(rank, Sequence) and not isinstance(rank, str):
            if len(rank) != 2:
                raise ValueError(f"rank must be an int or a pair (rank1, rank2), got {list(rank)}")
            rank = {"linear1": rank[0], "linear2": rank[1]}
        shapes = {"linear1": (dim_feedforward, d_model), "linear2": (d_model, dim_feedforward)}
        ranks = resolve_ranks(rank, shapes, "LowRankFeedForward")
        common = {"bias": bias, "prior_scale": prior_scale, "gain": 1 / 3, "init_scale_factor": init_scale_factor,
                  "sequence_dims": 1}
        self.linear1 = LowRankLinear(d_model, dim_feedforward, ranks["linear1"], prior=copy.deepcopy(prior), **common)
        self.dropout = nn.Dropout(float(dropout))
        self.linear2 = LowRankLinear(dim_feedforward, d_model, ranks["linear2"], prior=copy.deepcopy(prior), **common)

    @classmethod
    def from_linears(
        cls, linear1: nn.Linear, linear2: nn.Linear, rank: int | Sequence[int], **kwargs: Any
    ) -> "LowRankFeedForward":
        r"""SVD-initialised block from the two trained ``nn.Linear`` of a feed-forward network.

        Each matrix gets :math:`\mu_A = U_r \Sigma_r^{1/2}`, :math:`\mu_B = V_r \Sigma_r^{1/2}` (its best rank-r
        approximation :math:`\mu_A \mu_B^\top`); the bias means are the linears' biases. Dtype and device are copied.

        Parameters
        ----------
        linear1, linear2 : nn.Linear
            ``linear1``: d -> F and ``linear2``: F -> d, both with or both without a bias.
        rank : int or (int, int)
            As in the constructor.
        **kwargs
            Further constructor arguments (``activation``, ``dropout``, ``prior``, ``prior_scale``,
            ``init_scale_factor``).

        Returns
        -------
        LowRankFeedForward

        Raises
        ------
        TypeError
            If either argument is not an ``nn.Linear``.
        ValueError
            For mismatched widths, a bias on only one of them, or ranks out of range.
        """
        for name, linear in (("linear1", linear1), ("linear2", linear2)):
            if not isinstance(linear, nn.Linear):
                raise TypeError(f"{name} must be a torch.nn.Linear, got {type(linear).__name__}")
        if linear2.in_features != linear1.out_features or linear2.out_features != linear1.in_features:
            raise ValueError(f"linear2 must map {linear1.out_features} -> {linear1.in_features} features, got "
                             f"{linear2.in_features} -> {linear2.out_features}")
        if (linear1.bias is None) != (linear2.bias is None):
            raise ValueError("linear1 and linear2 must both have a bias or both have none")
        block = cls(linear1.in_features, linear1.out_features, rank, bias=linear1.bias is not None, **kwargs)
        block = block.to(dtype=linear1.weight.dtype, device=linear1.weight.device)
        for proj, linear in ((block.linear1, linear1), (block.linear2, linear2)):
            proj.set_factor_init(svd_init(linear.weight, proj.rank), linear.bias)
        return block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``linear2(dropout(act(linear1(x))))`` for ``x`` of shape ``(..., d_model)``."""
        return self.linear2(self.dropout(_ACTIVATIONS[self.activation](self.linear1(x))))

    def num_variational_parameters(self) -> int:
        """2 r1 (F + d) + 2 r2 (d + F), plus 2 (F + d) for the biases."""
        return self.linear1.num_variational_parameters() + self.linear2.num_variational_parameters()

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, dim_feedforward={self.dim_feedforward}, "
                f"rank=({self.linear1.rank}, {self.linear2.rank}), activation={self.activation!r}")


class LowRankTransformerEncoderLayer(PyroModule):
    r"""Transformer encoder layer with low-rank Bayesian attention and feed-forward weights (see the module docs).

    Parameters
    ----------
    d_model, nhead, dim_feedforward : int
        Width, heads, feed-forward width.
    rank : int or mapping
        Rank of all six matrices, or ``{"q", "k", "v", "out", "linear1", "linear2"}`` -> rank.
    dropout : float
        Dropout on the attention weights, after the FFN activation and on both residual branches (training only).
    activation : {"gelu", "relu"}
        FFN activation.
    layer_norm_eps : float
        LayerNorm epsilon.
    norm_first : bool
        Pre-LN (default) or post-LN.
    batch_first : bool
        ``(N, L, d)`` (default) or ``(L, N, d)`` inputs.
    bias : bool
        Biases of the projections and the LayerNorms, as ``nn.TransformerEncoderLayer(bias=...)``.
    prior, prior_scale, init_scale_factor
        As in :class:`~pyro_lowrank.nn.linear.LowRankLinear` (each matrix gets its own copy of ``prior``).

    Notes
    -----
    Submodules ``self_attn``, ``ffn`` (with ``linear1``, ``linear2``), ``norm1``, ``norm2``, ``dropout1``,
    ``dropout2``; sample sites are e.g. ``self_attn.q_proj.A`` and ``ffn.linear1.B``. With particle dimensions on
    the factors (or on the input) the output is ``(P, N, L, d)``.
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 512,
        rank: int | Mapping[str, int] = 16,
        dropout: float = 0.1,
        activation: str = "gelu",
        layer_norm_eps: float = 1e-5,
        norm_first: bool = True,
        batch_first: bool = True,
        bias: bool = True,
        prior: FactorPrior | None = None,
        prior_scale: float = 1.0,
        init_scale_factor: float = 0.1,
    ) -> None:
        super().__init__()
        d_model = check_positive_int(d_model, "d_model")
        dim_feedforward = check_positive_int(dim_feedforward, "dim_feedforward")
        check_positive(layer_norm_eps, "layer_norm_eps")
        keys = (*_ATTENTION_KEYS, "linear1", "linear2")
        if isinstance(rank, Mapping):
            if set(rank) != set(keys):
                raise ValueError(f"rank of LowRankTransformerEncoderLayer must be an int or a mapping with exactly "
                                 f"the keys {list(keys)}, got keys {list(rank)}")
            attn_rank: Any = {key: rank[key] for key in _ATTENTION_KEYS}
            ffn_rank: Any = (rank["linear1"], rank["linear2"])
        else:
            attn_rank = ffn_rank = rank
        common = {"bias": bias, "prior": prior, "prior_scale": prior_scale, "init_scale_factor": init_scale_factor}
        self.self_attn = LowRankMultiheadAttention(d_model, nhead, attn_rank, dropout=dropout, batch_first=batch_first,
                                                   **common)
        self.ffn = LowRankFeedForward(d_model, dim_feedforward, ffn_rank, activation=activation, dropout=dropout,
                                      **common)
        self.norm_first = bool(norm_first)
        self.norm1 = layer_norm(d_model, eps=layer_norm_eps, bias=bias)
        self.norm2 = layer_norm(d_model, eps=layer_norm_eps, bias=bias)
        self.dropout1 = nn.Dropout(float(dropout))
        self.dropout2 = nn.Dropout(float(dropout))

    @property
    def batch_first(self) -> bool:
        """Whether inputs are ``(N, L, d)`` (``True``) or ``(L, N, d)``; that of ``self_attn``."""
        return self.self_attn.batch_first

    @classmethod
    def from_transformer_encoder_layer(
        cls, layer: nn.TransformerEncoderLayer, rank: int | Mapping[str, int], **kwargs: Any
    ) -> "LowRankTransformerEncoderLayer":
        """SVD-initialised layer from a trained :class:`torch.nn.TransformerEncoderLayer`.

        The attention's four projections (:meth:`LowRankMultiheadAttention.set_factor_init_from`), ``linear1`` and
        ``linear2`` get the balanced truncated SVD init; the LayerNorm parameters are copied. ``nhead``,
        ``dim_feedforward``, dropout, activation (ReLU or exact GELU), ``layer_norm_eps``, ``norm_first``,
        ``batch_first``, bias, dtype and device are copied; ``kwargs`` set ``prior``, ``prior_scale``,
        ``init_scale_factor``.

        Parameters
        ----------
        layer : nn.TransformerEncoderLayer
            The trained layer (``self_attn`` without ``add_bias_kv``/``add_zero_attn``, ReLU or exact GELU).
        rank : int or mapping
            As in the constructor.
        **kwargs
            ``prior``, ``prior_scale``, ``init_scale_factor``.

        Returns
        -------
        LowRankTransformerEncoderLayer
            Its forward at the factor means reproduces ``layer`` exactly at full rank.

        Raises
        ------
        TypeError
            If ``layer`` or its ``self_attn`` has the wrong type.
        ValueError
            For unsupported settings (differing LayerNorm epsilons, other activations) or ranks out of range.
        """
        if not isinstance(layer, nn.TransformerEncoderLayer):
            raise TypeError(f"layer must be a torch.nn.TransformerEncoderLayer, got {type(layer).__name__}")
        if not isinstance(layer.self_attn, nn.MultiheadAttention):
            raise TypeError(f"layer.self_attn must be a torch.nn.MultiheadAttention, got "
                            f"{type(layer.self_attn).__name__}")
        if layer.norm1.eps != layer.norm2.eps:
            raise ValueError(f"norm1 and norm2 must share eps, got {layer.norm1.eps} and {layer.norm2.eps}")
        attn = layer.self_attn
        check_multihead_attention(attn)
        new = cls(
            attn.embed_dim, attn.num_heads, layer.linear1.out_features, rank, dropout=layer.dropout.p,
            activation=_activation_name(layer.activation), layer_norm_eps=layer.norm1.eps,
            norm_first=layer.norm_first, batch_first=attn.batch_first, bias=layer.linear1.bias is not None, **kwargs,
        )
        weight = layer.linear1.weight
        new = new.to(dtype=weight.dtype, device=weight.device)
        new.self_attn.set_factor_init_from(attn)
        new.self_attn.dropout = float(attn.dropout)
        new.ffn.dropout.p = layer.dropout.p
        for proj, linear in ((new.ffn.linear1, layer.linear1), (new.ffn.linear2, layer.linear2)):
            proj.set_factor_init(svd_init(linear.weight, proj.rank), linear.bias)
        copy_layer_norm(new.norm1, layer.norm1)
        copy_layer_norm(new.norm2, layer.norm2)
        new.dropout1.p, new.dropout2.p = layer.dropout1.p, layer.dropout2.p
        return new

    def forward(
        self,
        src: torch.Tensor,
        src_mask: torch.Tensor | None = None,
        src_key_padding_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        """One encoder layer on ``src`` ``(..., N, L, d)`` (``(..., L, N, d)`` if not ``batch_first``, ``(L, d)``
        unbatched); ``src_mask`` ``(L, L)`` or ``(N * nhead, L, L)`` and ``src_key_padding_mask`` ``(N, L)``,
        bool (``True`` = not allowed) or float (added), as in :class:`torch.nn.TransformerEncoderLayer`."""
        x = src
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal)
            x = x + self.dropout2(self.ffn(self.norm2(x)))
        else:
            x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal))
            x = self.norm2(x + self.dropout2(self.ffn(x)))
        return x

    def _sa_block(self, x: torch.Tensor, attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None,
                  is_causal: bool) -> torch.Tensor:
        out = self.self_attn(x, x, x, attn_mask=attn_mask, key_padding_mask=key_padding_mask, need_weights=False,
                             is_causal=is_causal)[0]
        return self.dropout1(out)

    def num_variational_parameters(self) -> int:
        """Sum of the attention's and the FFN's counts (the LayerNorm parameters are point estimates)."""
        return self.self_attn.num_variational_parameters() + self.ffn.num_variational_parameters()

    def extra_repr(self) -> str:
        return f"norm_first={self.norm_first}"
