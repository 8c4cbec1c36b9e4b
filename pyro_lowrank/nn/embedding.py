r"""A Bayesian embedding whose table is the product of two random factors, :math:`W = A B^\top`.

Model: :math:`A \sim p_A` on :math:`\mathbb R^{V\times r}` (one row per token), :math:`B \sim p_B` on
:math:`\mathbb R^{d\times r}`, and the embedding of token :math:`t` is row :math:`t` of :math:`W`,
:math:`e_t = W_{t,:} = A_{t,:} B^\top`. A and B are one Pyro sample site each, exactly as in
:class:`~pyro_lowrank.nn.linear.LowRankLinear` with ``out_features = V`` and ``in_features = d`` (no bias).

Forward pass for a token batch with :math:`U` distinct tokens :math:`u_1 < \dots < u_U`: gather the rows
:math:`A_{u,:}` (:math:`U \times r`), form :math:`E_u = A_{u,:} B^\top` (:math:`U \times d`, :math:`2 U r d` flops)
and scatter the rows of :math:`E_u` to the token positions. The :math:`V \times d` table is never formed, so the cost
does not depend on the vocabulary size V. A padding token gets the exact zero vector and passes no gradient.

Random initialisation matches :class:`torch.nn.Embedding` (:math:`W_{ij} \sim \mathcal N(0, 1)`) in variance: factor
means :math:`\sim \mathcal N(0, s^2)` with :math:`s = r^{-1/4}`, so :math:`\operatorname{Var} W_{ij} = r s^4 = 1`.
"""

from __future__ import annotations

import warnings

from typing import Any, NoReturn

import torch
from torch import nn

from pyro_lowrank._validation import check_positive_int
from pyro_lowrank.distributions import FactorPrior
from pyro_lowrank.guides.init import FactorInit, svd_init
from pyro_lowrank.nn.linear import LowRankLinear, align_to_plates, vectorized_plate_depth

__all__ = ["LowRankEmbedding", "check_embedding", "gather_rows"]


def check_embedding(embedding: nn.Module) -> None:
    """Raise unless ``embedding`` is an ``nn.Embedding`` that a :class:`LowRankEmbedding` can replace.

    Parameters
    ----------
    embedding : nn.Module
        The module to check.

    Raises
    ------
    TypeError
        If it is not an ``nn.Embedding`` (``nn.EmbeddingBag`` included).
    ValueError
        If it uses ``max_norm``, ``sparse`` or ``scale_grad_by_freq`` (the factorised table has no such options).
    """
    if not isinstance(embedding, nn.Embedding):
        raise TypeError(f"embedding must be a torch.nn.Embedding, got {type(embedding).__name__}")
    if embedding.max_norm is not None or embedding.sparse or embedding.scale_grad_by_freq:
        raise ValueError(
            "LowRankEmbedding supports nn.Embedding without max_norm, sparse or scale_grad_by_freq, got "
            f"max_norm={embedding.max_norm}, sparse={embedding.sparse}, "
            f"scale_grad_by_freq={embedding.scale_grad_by_freq}"
        )


def gather_rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``out[..., t, :] = table[..., index[t], :]`` with the table's batch dims broadcast against ``index``'s dims.

    ``table`` has shape ``bt + (U, d)`` and ``index`` (integer) shape ``T``; the result has shape
    ``broadcast(bt, T) + (d,)``, right-aligned as for any Pyro sample (a table of batch shape ``(P, 1, 1)`` and
    indices ``(N, L)`` give ``(P, N, L, d)``). When the table is constant over the dimensions it shares with
    ``index`` (the usual case: global factors), this is one indexing op on the table without copies of it.
    """
    bt, shape = table.shape[:-2], index.shape
    k = min(len(bt), len(shape))
    if all(size == 1 for size in bt[len(bt) - k:]):
        lead = table.reshape(tuple(bt[: len(bt) - k]) + tuple(table.shape[-2:]))
        return lead[..., index, :]
    length = max(len(bt), len(shape))
    table = table.reshape((1,) * (length - len(bt)) + tuple(table.shape))
    index = index.reshape((1,) * (length - len(shape)) + tuple(shape) + (1, 1))
    return torch.take_along_dim(table, index, dim=-2).squeeze(-2)


class LowRankEmbedding(LowRankLinear):
    r"""Low-rank Bayesian embedding, ``out[..., :] = (A B^T)[tokens[...], :]``, with sample sites ``A`` and ``B``.

    A :class:`~pyro_lowrank.nn.linear.LowRankLinear` (``out_features = num_embeddings``, ``in_features =
    embedding_dim``, no bias) whose forward pass looks rows up instead of multiplying, so guides, ``factor_sites``,
    ``weight_posterior`` (event shape ``(V, d)``), ``initial_values`` and ``num_variational_parameters``
    (:math:`2 r (V + d)`) work unchanged.

    What follows the batch and what does not: the forward pass costs :math:`O(U r d)` for the :math:`U` distinct
    tokens of a batch, never forming the :math:`V \times d` table; a mean-field guide still draws all of :math:`A`
    (:math:`V r` Gaussian entries, elementwise work) and its KL term covers every row on each step.

    Parameters
    ----------
    num_embeddings : int
        Vocabulary size V.
    embedding_dim : int
        Embedding width d.
    rank : int
        r in [1, min(V, d)].
    padding_idx : int, optional
        Token whose embedding is the zero vector (no gradient flows through it), as in :class:`torch.nn.Embedding`;
        negative values count from the end, in [-V, V).
    prior : FactorPrior, optional
        Prior of every factor entry; default ``GaussianPrior(prior_scale)``.
    prior_scale : float
        Standard deviation of the default Gaussian prior.
    init_scale_factor : float
        eta: the guide's initial standard deviation is eta * s, s the factor entry scale of the init.
    sequence_dims : int or None
        Per-datum dimensions of the token tensor after the data dimension: 1 for tokens ``(N, L)``, 0 for ``(N,)``.
        It only matters when the factors carry particle dimensions (see
        :func:`~pyro_lowrank.nn.linear.align_to_plates`). ``None`` (default): inferred as ``tokens.dim() - 1`` from
        calls made without vectorised particles, as for :class:`~pyro_lowrank.nn.LowRankLinear`.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        rank: int,
        padding_idx: int | None = None,
        prior: FactorPrior | None = None,
        prior_scale: float = 1.0,
        init_scale_factor: float = 0.1,
        sequence_dims: int | None = None,
    ) -> None:
        num_embeddings = check_positive_int(num_embeddings, "num_embeddings")
        embedding_dim = check_positive_int(embedding_dim, "embedding_dim")
        # variance matching: Var W = gain / in_features = 1 for gain = d (torch's N(0, 1) embedding init)
        super().__init__(
            embedding_dim, num_embeddings, rank, bias=False, prior=prior, prior_scale=prior_scale,
            gain=float(embedding_dim), init_scale_factor=init_scale_factor, sequence_dims=sequence_dims,
        )
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        if padding_idx is not None:
            if isinstance(padding_idx, bool) or not isinstance(padding_idx, int) or not (
                -num_embeddings <= padding_idx < num_embeddings
            ):
                raise ValueError(
                    f"padding_idx must be None or an integer in [-{num_embeddings}, {num_embeddings}) "
                    f"(num_embeddings={num_embeddings}), got {padding_idx!r}"
                )
            padding_idx = padding_idx % num_embeddings
        self.padding_idx = padding_idx
        if padding_idx is not None:
            with torch.no_grad():
                self.a_init[padding_idx].zero_()

    def set_factor_init(self, init: FactorInit, bias: torch.Tensor | None = None) -> None:
        """Set the initial factor means; the padding token's row of ``a_init`` is set to zero (its output is zero)."""
        super().set_factor_init(init, bias)
        padding_idx = getattr(self, "padding_idx", None)
        if padding_idx is not None:
            with torch.no_grad():
                self.a_init[padding_idx].zero_()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_embedding(cls, embedding: nn.Embedding, rank: int, **kwargs: Any) -> "LowRankEmbedding":
        r"""SVD-initialised layer from a trained :class:`torch.nn.Embedding`.

        :math:`\mu_A \mu_B^\top` is the best rank-r approximation of the embedding table with its padding row set
        to zero: the low-rank layer's padding output is always zero (torch initialises that row to zero and never
        updates it; a pretrained non-zero padding row is not reproduced, and a ``UserWarning`` says so). ``padding_idx``, dtype and device are copied;
        ``kwargs`` go to the constructor (``prior``, ``init_scale_factor``, ``sequence_dims``).

        Raises
        ------
        TypeError
            If ``embedding`` is not an ``nn.Embedding`` (``nn.EmbeddingBag`` included).
        ValueError
            If it uses ``max_norm``, ``scale_grad_by_freq`` or ``sparse`` (not supported by the factorised table).
        """
        check_embedding(embedding)
        if "padding_idx" in kwargs:
            raise TypeError("padding_idx is copied from the embedding; do not pass it to from_embedding")
        weight = embedding.weight.detach()
        layer = cls(embedding.num_embeddings, embedding.embedding_dim, rank, padding_idx=embedding.padding_idx,
                    **kwargs)
        layer = layer.to(dtype=weight.dtype, device=weight.device)
        if embedding.padding_idx is not None:
            if bool(weight[embedding.padding_idx].any()):
                warnings.warn(
                    f"the padding row {embedding.padding_idx} of the embedding is not zero (norm "
                    f"{float(weight[embedding.padding_idx].norm()):.3g}); LowRankEmbedding outputs zero for padding "
                    "tokens, so the converted layer differs from the original there", UserWarning, stacklevel=2)
            weight = weight.clone()
            weight[embedding.padding_idx] = 0
        layer.set_factor_init(svd_init(weight, layer.rank))
        return layer

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int, **kwargs: Any) -> NoReturn:
        """Not available for embeddings: use :meth:`from_embedding`."""
        raise TypeError("LowRankEmbedding is built from an nn.Embedding: use LowRankEmbedding.from_embedding")

    # ------------------------------------------------------------------ forward
    def check_tokens(self, tokens: torch.Tensor) -> None:
        if not isinstance(tokens, torch.Tensor):
            raise TypeError(f"tokens must be an integer torch.Tensor, got {type(tokens).__name__}")
        if tokens.dtype == torch.bool or tokens.is_floating_point() or tokens.is_complex():
            raise TypeError(f"tokens must have an integer dtype (e.g. torch.long), got {tokens.dtype}")
        if tokens.numel():
            low, high = int(tokens.min()), int(tokens.max())
            if low < 0 or high >= self.num_embeddings:
                raise ValueError(
                    f"tokens must lie in [0, num_embeddings) = [0, {self.num_embeddings}), "
                    f"got values in [{low}, {high}]"
                )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        r"""Embeddings ``(A B^T)[tokens]`` of shape ``tokens.shape + (d,)`` (with the factors' particle dims first).

        Only the :math:`U` distinct tokens of the batch are embedded: ``uniq, inverse = unique(tokens)``,
        :math:`E_u = A_{\mathrm{uniq},:} B^\top` (:math:`U \times d` per particle), ``out = E_u[inverse]``. Factors
        of batch shape ``(P, 1)`` (vectorised particles) and tokens ``(N, L)`` give ``(P, N, L, d)``.
        """
        self.check_tokens(tokens)
        depth = vectorized_plate_depth()
        seq = self.resolve_sequence_dims(tokens.dim() - 1, depth)
        a = align_to_plates(self.A, 2, seq, depth)
        b = align_to_plates(self.B, 2, seq, depth)
        uniq, inverse = torch.unique(tokens, return_inverse=True)
        rows = a[..., uniq, :]  # (..., U, r)
        table = rows @ b.transpose(-1, -2)  # (..., U, d): 2 U r d flops, independent of V
        if self.padding_idx is not None:
            keep = (uniq != self.padding_idx).unsqueeze(-1)
            table = torch.where(keep, table, torch.zeros((), dtype=table.dtype, device=table.device))
        return gather_rows(table, inverse)

    def extra_repr(self) -> str:
        extra = f", padding_idx={self.padding_idx}" if self.padding_idx is not None else ""
        extra += f", sequence_dims={self.sequence_dims}" if self.sequence_dims is not None else ""
        return f"num_embeddings={self.num_embeddings}, embedding_dim={self.embedding_dim}, rank={self.rank}{extra}"
