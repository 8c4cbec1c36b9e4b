r"""Multi-head attention whose four projection matrices are low-rank Bayesian, a drop-in for
:class:`torch.nn.MultiheadAttention`.

With :math:`W_\bullet = A_\bullet B_\bullet^\top` (:math:`\bullet \in \{q, k, v, o\}`, each a
:class:`~pyro_lowrank.nn.linear.LowRankLinear` with its own rank), H heads of width :math:`d_h = E / H`:

.. math::
    Q = X_q W_q^\top + b_q,\quad K = X_k W_k^\top + b_k,\quad V = X_v W_v^\top + b_v,\qquad
    \mathrm{head}_h = \operatorname{softmax}\!\Big(\frac{Q_h K_h^\top}{\sqrt{d_h}} + M\Big) V_h,\qquad
    Y = [\mathrm{head}_1, \dots, \mathrm{head}_H]\, W_o^\top + b_o,

where :math:`M` is the additive mask: ``attn_mask`` and ``key_padding_mask``, boolean masks mapped to
:math:`-\infty` where ``True`` (not allowed) and 0 elsewhere, float masks added as they are. Each projection costs
:math:`N L r (m + n)` instead of :math:`N L m n`. The factors are sampled once per forward pass; with vectorised
particles (factors of batch shape ``(P, 1)``) every particle applies its own four matrices and outputs get the
particle dimensions first.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from pyro.nn import PyroModule
from torch import nn

from pyro_lowrank._validation import check_last_dim, check_positive, check_positive_int, check_probability, check_rank
from pyro_lowrank.distributions import FactorPrior
from pyro_lowrank.guides.init import svd_init
from pyro_lowrank.nn.linear import LowRankLinear, check_batched_under_plates

__all__ = [
    "LowRankMultiheadAttention",
    "additive_mask",
    "check_multihead_attention",
    "resolve_ranks",
]


def resolve_ranks(rank: object, shapes: Mapping[str, tuple[int, int]], owner: str) -> dict[str, int]:
    r"""Ranks of several factorised matrices from one int (used for all) or a mapping with exactly the keys of
    ``shapes``.

    Parameters
    ----------
    rank : int or mapping
        One rank for every matrix, or ``{key: rank}`` with exactly the keys of ``shapes``.
    shapes : mapping of str to (int, int)
        ``shapes[key] = (m, n)``, the shape of the ``m x n`` matrix :math:`W_\text{key} = A B^\top`.
    owner : str
        The module named in error messages.

    Returns
    -------
    dict of str to int
        ``{key: r_key}`` with every :math:`r_\text{key} \in [1, \min(m, n)]`.

    Raises
    ------
    ValueError
        For a mapping with other keys, or a rank outside ``[1, min(m, n)]`` (the error names the matrix and the
        limit).
    """
    keys = list(shapes)
    if isinstance(rank, Mapping):
        if set(rank) != set(keys):
            raise ValueError(
                f"rank of {owner} must be an int or a mapping with exactly the keys {keys}, got keys {list(rank)}"
            )
        values = dict(rank)
    else:
        values = dict.fromkeys(keys, rank)
    return {
        key: check_rank(values[key], m, n, name=f"rank[{key!r}] (the {key} matrix of {owner})")
        for key, (m, n) in shapes.items()
    }


def additive_mask(mask: torch.Tensor | None, name: str, dtype: torch.dtype) -> torch.Tensor | None:
    r"""An attention mask in additive form, :math:`M` in :math:`\operatorname{softmax}(Q K^\top / \sqrt{d_h} + M)`.

    Parameters
    ----------
    mask : Tensor or None
        A boolean mask (``True`` = not allowed) or a floating-point mask (added to the logits as it is).
    name : str
        The argument named in error messages (``"attn_mask"``, ``"key_padding_mask"``).
    dtype : torch.dtype
        The floating dtype of the attention logits.

    Returns
    -------
    Tensor or None
        ``None`` for ``None``; for a boolean mask :math:`M_{ij} = -\infty` where ``mask`` is ``True`` and 0
        elsewhere; a float mask converted to ``dtype``. Same shape and device as ``mask``.

    Raises
    ------
    TypeError
        If ``mask`` is not a tensor, or is neither boolean nor floating-point.
    """
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be None or a torch.Tensor, got {type(mask).__name__}")
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))
    if not mask.is_floating_point():
        raise TypeError(f"{name} must be a bool or floating-point tensor, got dtype {mask.dtype}")
    return mask.to(dtype)


def check_multihead_attention(mha: object) -> None:
    """Check that ``mha`` is an ``nn.MultiheadAttention`` that :class:`LowRankMultiheadAttention` can reproduce.

    Parameters
    ----------
    mha : object
        The module to check.

    Returns
    -------
    None

    Raises
    ------
    TypeError
        If ``mha`` is not a :class:`torch.nn.MultiheadAttention`.
    ValueError
        If it has ``add_bias_kv=True`` or ``add_zero_attn=True`` (not supported).
    """
    if not isinstance(mha, nn.MultiheadAttention):
        raise TypeError(f"mha must be a torch.nn.MultiheadAttention, got {type(mha).__name__}")
    if mha.bias_k is not None or mha.bias_v is not None:
        raise ValueError("LowRankMultiheadAttention supports only add_bias_kv=False, got add_bias_kv=True")
    if mha.add_zero_attn:
        raise ValueError("LowRankMultiheadAttention supports only add_zero_attn=False, got add_zero_attn=True")


class LowRankMultiheadAttention(PyroModule):
    r"""Low-rank Bayesian multi-head attention with the interface of :class:`torch.nn.MultiheadAttention`.

    Parameters
    ----------
    embed_dim : int
        E, the width of queries and outputs; divisible by ``num_heads``.
    num_heads : int
        H.
    rank : int or mapping
        Rank of every projection, or ``{"q": r_q, "k": r_k, "v": r_v, "out": r_o}``; each in [1, min(m, n)].
    bias : bool
        Bayesian biases on the four projections.
    dropout : float
        Dropout probability on the attention weights, in [0, 1], applied in training mode only.
    batch_first : bool
        Inputs (and outputs) ``(N, L, E)`` instead of ``(L, N, E)``.
    kdim, vdim : int, optional
        Widths of keys and values (default E).
    prior, prior_scale, init_scale_factor
        As in :class:`~pyro_lowrank.nn.linear.LowRankLinear`; each projection gets its own copy of ``prior``.

    Notes
    -----
    The submodules ``q_proj``, ``k_proj``, ``v_proj`` (``LowRankLinear(kdim, E)``, ...) and ``out_proj`` hold the
    sample sites, e.g. ``attn.q_proj.A``. Random init matches torch's in variance: Xavier-uniform for the input
    projections (:math:`\operatorname{Var} W = 1/(2E)` for the packed ``(3E, E)`` matrix, :math:`2/(E + k)` for separate
    ones), :math:`1/(3E)` for ``out_proj``, zero biases.

    For torch's containers (:class:`torch.nn.TransformerEncoderLayer`, :class:`torch.nn.TransformerEncoder`), the
    attributes ``in_proj_weight = in_proj_bias = None``, ``_qkv_same_embed_dim = False``, ``bias_k = bias_v = None``,
    ``add_zero_attn = False`` and ``batch_first`` make them refuse their fused fast path and call :meth:`forward`.

    Inputs may carry leading particle dimensions (``(P, N, L, E)`` from an earlier Bayesian layer); a 2-D query is
    unbatched ``(L, E)``, accepted as in torch outside vectorised plates and rejected (``ValueError``: add a batch
    dimension) inside them, where the output would get the particle dimension in place of N. ``is_causal=True``
    without ``attn_mask`` applies the causal mask (torch raises there); with ``attn_mask`` it is the same hint as in
    torch (the mask is skipped only when there is no key padding mask and no weights are returned).
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        rank: int | Mapping[str, int],
        bias: bool = True,
        dropout: float = 0.0,
        batch_first: bool = False,
        kdim: int | None = None,
        vdim: int | None = None,
        prior: FactorPrior | None = None,
        prior_scale: float = 1.0,
        init_scale_factor: float = 0.1,
    ) -> None:
        super().__init__()
        self.embed_dim = check_positive_int(embed_dim, "embed_dim")
        self.num_heads = check_positive_int(num_heads, "num_heads")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim must be divisible by num_heads, got embed_dim={embed_dim} and "
                             f"num_heads={num_heads}")
        self.kdim = embed_dim if kdim is None else check_positive_int(kdim, "kdim")
        self.vdim = embed_dim if vdim is None else check_positive_int(vdim, "vdim")
        self.head_dim = embed_dim // num_heads
        check_probability(float(dropout), "dropout", open_interval=False)
        check_positive(init_scale_factor, "init_scale_factor")
        self.dropout = float(dropout)
        self.batch_first = bool(batch_first)
        shapes = {"q": (embed_dim, embed_dim), "k": (embed_dim, self.kdim), "v": (embed_dim, self.vdim),
                  "out": (embed_dim, embed_dim)}
        ranks = resolve_ranks(rank, shapes, "LowRankMultiheadAttention")
        same = self.kdim == embed_dim and self.vdim == embed_dim
        gains = {  # LowRankLinear's variance matching gives Var W = gain / in_features
            "q": 0.5 if same else 1.0,
            "k": 0.5 if same else 2 * self.kdim / (embed_dim + self.kdim),
            "v": 0.5 if same else 2 * self.vdim / (embed_dim + self.vdim),
            "out": 1 / 3,
        }
        for key, (m, n) in shapes.items():
            proj = LowRankLinear(
                n, m, ranks[key], bias=bias, prior=copy.deepcopy(prior), prior_scale=prior_scale, gain=gains[key],
                init_scale_factor=init_scale_factor, sequence_dims=1,
            )
            setattr(self, f"{key}_proj", proj)
        # attributes that torch's containers inspect before choosing a fused kernel: refuse it
        self._qkv_same_embed_dim = False
        self.in_proj_weight = None
        self.in_proj_bias = None
        self.bias_k = None
        self.bias_v = None
        self.add_zero_attn = False

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_multihead_attention(
        cls, mha: nn.MultiheadAttention, rank: int | Mapping[str, int], **kwargs: Any
    ) -> "LowRankMultiheadAttention":
        r"""SVD-initialised attention from a trained :class:`torch.nn.MultiheadAttention`.

        The packed ``in_proj_weight`` (or ``q/k/v_proj_weight`` when ``kdim``/``vdim`` differ from E) is split into
        :math:`W_q, W_k, W_v`; each of them and ``out_proj.weight`` gets the balanced truncated SVD init
        (:math:`\mu_A\mu_B^\top` = best rank-r approximation), the bias means are the module's biases. ``num_heads``,
        ``kdim``, ``vdim``, ``bias``, ``dropout``, ``batch_first``, dtype and device are copied (``kwargs`` may
        override ``dropout``/``batch_first`` and set ``prior``, ``prior_scale``, ``init_scale_factor``).

        Parameters
        ----------
        mha : nn.MultiheadAttention
            The trained attention.
        rank : int or mapping
            As in the constructor.
        **kwargs
            Further constructor arguments.

        Returns
        -------
        LowRankMultiheadAttention
            At full rank, its forward at the factor means reproduces ``mha``.

        Raises
        ------
        TypeError
            If ``mha`` is not an ``nn.MultiheadAttention``.
        ValueError
            For ``add_bias_kv=True`` or ``add_zero_attn=True`` (not supported), or a rank above ``min(m, n)``.
        """
        check_multihead_attention(mha)
        options = {"dropout": mha.dropout, "batch_first": mha.batch_first, **kwargs}
        weight = mha.out_proj.weight
        layer = cls(mha.embed_dim, mha.num_heads, rank, bias=mha.in_proj_bias is not None, kdim=mha.kdim,
                    vdim=mha.vdim, **options)
        layer = layer.to(dtype=weight.dtype, device=weight.device)
        layer.set_factor_init_from(mha)
        return layer

    def set_factor_init_from(self, mha: nn.MultiheadAttention) -> None:
        """Set the four projections' initial means to the balanced truncated SVDs of ``mha``'s weights (at each
        projection's rank) and the bias means to its biases."""
        check_multihead_attention(mha)
        expected = (self.embed_dim, self.num_heads, self.kdim, self.vdim, self.q_proj.bias is not None)
        actual = (mha.embed_dim, mha.num_heads, mha.kdim, mha.vdim, mha.in_proj_bias is not None)
        if expected != actual:
            raise ValueError(f"mha must have (embed_dim, num_heads, kdim, vdim, bias) = {expected}, got {actual}")
        if mha._qkv_same_embed_dim:
            weights = mha.in_proj_weight.detach().chunk(3)
        else:
            weights = (mha.q_proj_weight.detach(), mha.k_proj_weight.detach(), mha.v_proj_weight.detach())
        biases = mha.in_proj_bias.detach().chunk(3) if mha.in_proj_bias is not None else (None, None, None)
        out_bias = mha.out_proj.bias.detach() if mha.out_proj.bias is not None else None
        for proj, w, b in zip(
            (self.q_proj, self.k_proj, self.v_proj, self.out_proj),
            (*weights, mha.out_proj.weight.detach()),
            (*biases, out_bias),
        ):
            proj.set_factor_init(svd_init(w.to(proj.a_init), proj.rank), None if b is None else b.to(proj.a_init))

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attention output and, when ``need_weights``, the attention weights, as
        :meth:`torch.nn.MultiheadAttention.forward`.

        Shapes (E = ``embed_dim``, P = leading particle dims, if any): query ``(..., N, L, E)`` when
        ``batch_first`` else ``(..., L, N, E)``, or unbatched ``(L, E)``; key/value likewise with S and
        ``kdim``/``vdim``; ``key_padding_mask`` ``(N, S)`` (``(S,)`` unbatched); ``attn_mask`` ``(L, S)`` or
        ``(N * num_heads, L, S)``. Returns the output in the query's layout with E features, and weights
        ``(..., N, L, S)`` averaged over heads or ``(..., N, num_heads, L, S)`` (N dropped when unbatched).
        The weights returned are those after attention dropout, as in torch.
        """
        owner = f"LowRankMultiheadAttention(embed_dim={self.embed_dim}, kdim={self.kdim}, vdim={self.vdim})"
        check_last_dim(query, self.embed_dim, "query", owner)
        check_last_dim(key, self.kdim, "key", owner)
        check_last_dim(value, self.vdim, "value", owner)
        batched = query.dim() != 2
        if not batched:
            if key.dim() != 2 or value.dim() != 2:
                raise ValueError(f"for an unbatched (2-D) query, key and value must be 2-D, got key shape "
                                 f"{tuple(key.shape)} and value shape {tuple(value.shape)}")
            check_batched_under_plates(query.shape, "query", owner, "(1, L, E)" if self.batch_first else "(L, 1, E)")
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                if key_padding_mask.dim() != 1:
                    raise ValueError(f"for an unbatched query, key_padding_mask must be 1-D (S,), got shape "
                                     f"{tuple(key_padding_mask.shape)}")
                key_padding_mask = key_padding_mask.unsqueeze(0)
        else:
            if query.dim() < 3 or key.dim() < 3 or value.dim() < 3:
                raise ValueError(f"query, key and value must all be 3-D (or carry more leading dims) when batched, "
                                 f"got shapes {tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}")
            if not self.batch_first:
                query, key, value = (t.transpose(-2, -3) for t in (query, key, value))
        num_batch, tgt_len, src_len = query.shape[-3], query.shape[-2], key.shape[-2]
        if key.shape[-3:-1] != (num_batch, src_len) or value.shape[-3:-1] != (num_batch, src_len):
            raise ValueError(
                f"key and value must have batch size {num_batch} and equal sequence lengths, got key shape "
                f"{tuple(key.shape)} and value shape {tuple(value.shape)} (batch-first view)"
            )
        mask, causal = self._attention_mask(
            attn_mask, key_padding_mask, num_batch, tgt_len, src_len, is_causal, need_weights, query
        )
        dropout_p = self.dropout if self.training else 0.0

        def heads(t: torch.Tensor) -> torch.Tensor:  # (..., N, L, E) -> (..., N, H, L, d_h)
            return t.reshape(t.shape[:-1] + (self.num_heads, self.head_dim)).transpose(-2, -3)

        q, k, v = heads(self.q_proj(query)), heads(self.k_proj(key)), heads(self.v_proj(value))
        batch = torch.broadcast_shapes(q.shape[:-3], k.shape[:-3], v.shape[:-3])
        q, k, v = (t.expand(batch + t.shape[-3:]) for t in (q, k, v))
        weights = None
        if need_weights:
            scores = (q * math.sqrt(1.0 / self.head_dim)) @ k.transpose(-1, -2)
            if mask is not None:
                scores = scores + mask
            weights = torch.softmax(scores, dim=-1)
            if dropout_p > 0.0:
                weights = F.dropout(weights, p=dropout_p)
            out = weights @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal)
        out = out.transpose(-2, -3)
        out = self.out_proj(out.reshape(out.shape[:-2] + (self.embed_dim,)))  # (..., N, L, E)
        if weights is not None and average_attn_weights:
            weights = weights.mean(dim=-3)
        if not batched:
            out = out.squeeze(-3)
            if weights is not None:
                weights = weights.squeeze(-3 if average_attn_weights else -4)
        elif not self.batch_first:
            out = out.transpose(-2, -3)
        return out, weights

    def _attention_mask(
        self,
        attn_mask: torch.Tensor | None,
        key_padding_mask: torch.Tensor | None,
        num_batch: int,
        tgt_len: int,
        src_len: int,
        is_causal: bool,
        need_weights: bool,
        query: torch.Tensor,
    ) -> tuple[torch.Tensor | None, bool]:
        """The additive mask, broadcastable to ``(N, H, L, S)``, and whether to use SDPA's causal flag instead."""
        dtype = query.dtype
        padding = additive_mask(key_padding_mask, "key_padding_mask", dtype)
        if padding is not None:
            if padding.shape != (num_batch, src_len):
                raise ValueError(f"key_padding_mask must have shape (N, S) = {(num_batch, src_len)}, got "
                                 f"{tuple(padding.shape)}")
            padding = padding.reshape(num_batch, 1, 1, src_len)
        if is_causal and padding is None and not need_weights:
            return None, True  # torch's hint: the causal flag replaces attn_mask
        if is_causal and attn_mask is None:
            attn_mask = torch.ones(tgt_len, src_len, dtype=torch.bool, device=query.device).triu(1)
        mask = additive_mask(attn_mask, "attn_mask", dtype)
        if mask is not None:
            if mask.dim() == 2 and mask.shape == (tgt_len, src_len):
                pass
            elif mask.dim() == 3 and mask.shape == (num_batch * self.num_heads, tgt_len, src_len):
                mask = mask.reshape(num_batch, self.num_heads, tgt_len, src_len)
            else:
                raise ValueError(
                    f"attn_mask must have shape (L, S) = {(tgt_len, src_len)} or (N * num_heads, L, S) = "
                    f"{(num_batch * self.num_heads, tgt_len, src_len)}, got {tuple(mask.shape)}"
                )
        if padding is not None:
            mask = padding if mask is None else mask + padding
        return mask, False

    # ------------------------------------------------------------------ bookkeeping
    def projections(self) -> dict[str, LowRankLinear]:
        """The four low-rank projections, ``{"q": q_proj, "k": k_proj, "v": v_proj, "out": out_proj}``."""
        return {"q": self.q_proj, "k": self.k_proj, "v": self.v_proj, "out": self.out_proj}

    def num_variational_parameters(self) -> int:
        """Learned numbers of a mean-field guide: sum over the projections of 2 r (m + n) (+ 2 m per bias)."""
        return sum(proj.num_variational_parameters() for proj in self.projections().values())

    def extra_repr(self) -> str:
        ranks = {key: proj.rank for key, proj in self.projections().items()}
        dims = f", kdim={self.kdim}, vdim={self.vdim}" if (self.kdim, self.vdim) != (self.embed_dim,) * 2 else ""
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, rank={ranks}{dims}, "
                f"dropout={self.dropout}, batch_first={self.batch_first}")
