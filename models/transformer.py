r"""The paper's low-rank Bayesian Transformer text classifier (METHODS.md: pre-LN encoder, d = 256, 4 layers, 4 heads,
FFN 512, CLS pooling, max length 64, rank 16).

Network, for tokens :math:`t_{1:L}` whose first token is the classification token ([CLS]):

.. math::

    h^{(0)}_\ell = E_{t_\ell} + P_\ell, \qquad
    h^{(k)} = \mathrm{EncoderLayer}_k(h^{(k-1)}) \ (k = 1..K,\ \text{pre-LN}), \qquad
    f = \mathrm{LN}(h^{(K)}_1)\, (A_o B_o^\top)^\top + b_o,

with the token table :math:`E = A_E B_E^\top` (only rows of tokens in the batch are gathered), the Q, K, V, output and
both feed-forward projections of every layer, and the head all factorised (:mod:`pyro_lowrank.nn`); the learned
positional table :math:`P` and the layer norms are deterministic (point-estimated). Padding tokens are masked out of
the attention. The likelihood is :math:`y_i \mid f_i \sim \mathrm{Categorical}(\mathrm{softmax}\, f_i)`.
"""

from __future__ import annotations

import copy

import torch
from pyro.distributions import constraints
from pyro.nn import PyroModule, PyroParam
from torch import nn

from pyro_lowrank._validation import check_positive_int
from pyro_lowrank.distributions import FactorPrior
from pyro_lowrank.nn.embedding import LowRankEmbedding
from pyro_lowrank.nn.linear import LowRankLinear
from pyro_lowrank.nn.summary import num_variational_parameters
from pyro_lowrank.nn.transformer import LowRankTransformerEncoderLayer, layer_norm

from .supervised import SupervisedModel

__all__ = ["LowRankTransformerClassifier", "LowRankTransformerEncoder"]


class LowRankTransformerEncoder(PyroModule):
    """Tokens ``(N, L)`` to class logits ``(..., N, C)``: embedding, pre-LN encoder layers, CLS pooling, head.

    Parameters are those of :class:`LowRankTransformerClassifier`.
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        *,
        d_model: int = 256,
        num_layers: int = 4,
        num_heads: int = 4,
        dim_feedforward: int = 512,
        max_len: int = 64,
        rank: int = 16,
        embedding_rank: int | None = None,
        head_rank: int | None = None,
        dropout: float = 0.1,
        activation: str = "gelu",
        padding_idx: int = 0,
        prior: FactorPrior | None = None,
        prior_scale: float = 1.0,
        init_scale_factor: float = 0.1,
    ) -> None:
        super().__init__()
        self.vocab_size = check_positive_int(vocab_size, "vocab_size")
        self.num_classes = check_positive_int(num_classes, "num_classes")
        self.max_len = check_positive_int(max_len, "max_len")
        check_positive_int(num_layers, "num_layers")
        if not 0 <= padding_idx < vocab_size:
            raise ValueError(f"padding_idx must lie in [0, vocab_size) = [0, {vocab_size}), got {padding_idx}")
        self.padding_idx = int(padding_idx)
        common = {"prior_scale": prior_scale, "init_scale_factor": init_scale_factor}

        def own_prior() -> dict:
            return {} if prior is None else {"prior": copy.deepcopy(prior)}

        self.embedding = LowRankEmbedding(vocab_size, d_model, rank if embedding_rank is None else embedding_rank,
                                          padding_idx=padding_idx, sequence_dims=1, **common, **own_prior())
        self.position = PyroParam(0.02 * torch.randn(max_len, d_model), constraints.real, event_dim=2)
        self.dropout = nn.Dropout(dropout)
        self.layers = PyroModule[nn.ModuleList]([
            LowRankTransformerEncoderLayer(d_model, num_heads, dim_feedforward=dim_feedforward, rank=rank,
                                           dropout=dropout, activation=activation, norm_first=True,
                                           batch_first=True, **common, **own_prior())
            for _ in range(num_layers)
        ])
        self.norm = layer_norm(d_model)
        head_rank = min(rank, num_classes, d_model) if head_rank is None else head_rank
        self.head = LowRankLinear(d_model, num_classes, head_rank, **common, **own_prior())

    def check_tokens(self, tokens: torch.Tensor) -> None:
        """Validate a token batch: the embedding's checks (an integer tensor with ids in [0, vocab_size)), then
        shape ``(N, L)`` with 1 <= L <= ``max_len``.

        Raises
        ------
        TypeError
            If ``tokens`` is not an integer tensor (from :meth:`LowRankEmbedding.check_tokens`).
        ValueError
            For ids outside [0, vocab_size), a shape other than ``(N, L)`` or L outside [1, max_len].
        """
        self.embedding.check_tokens(tokens)
        self._check_shape(tokens)

    def _check_shape(self, tokens: torch.Tensor) -> None:
        if not isinstance(tokens, torch.Tensor):
            raise TypeError(f"tokens must be an integer torch.Tensor, got {type(tokens).__name__}")
        if tokens.dim() != 2:
            raise ValueError(f"tokens must have shape (N, L), got shape {tuple(tokens.shape)}")
        if not 1 <= tokens.shape[1] <= self.max_len:
            raise ValueError(f"tokens must have length L in [1, max_len={self.max_len}], got {tokens.shape[1]}")

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Class logits ``(..., N, num_classes)`` for ``tokens`` ``(N, L)`` whose first column is [CLS]."""
        self._check_shape(tokens)  # the embedding validates the dtype and the ids
        h = self.dropout(self.embedding(tokens) + self.position[: tokens.shape[1]])
        padding = tokens == self.padding_idx
        for layer in self.layers:
            h = layer(h, src_key_padding_mask=padding)
        return self.head(self.norm(h[..., 0, :]))

    def num_variational_parameters(self) -> int:
        """Learned numbers of a mean-field guide over every factor and bias (loc and scale)."""
        return num_variational_parameters(self)


class LowRankTransformerClassifier(SupervisedModel):
    """Low-rank Bayesian pre-LN Transformer encoder classifier (the module docstring has the model).

    Parameters
    ----------
    vocab_size, num_classes : int
        Vocabulary size V and number of classes C.
    d_model, num_layers, num_heads, dim_feedforward, max_len : int
        Architecture (defaults as in the paper: 256, 4, 4, 512, 64).
    rank : int
        Rank of every factorised projection (Q, K, V, output, both FFN matrices); default 16.
    embedding_rank, head_rank : int, optional
        Ranks of the token table (default ``rank``) and of the head (default ``min(rank, C)``).
    dropout : float
        Dropout on the embeddings and inside the encoder layers (training mode only).
    activation : {"gelu", "relu"}
        Feed-forward activation.
    padding_idx : int
        Padding token id: its embedding is zero and it is masked out of the attention.
    prior, prior_scale, init_scale_factor
        As for :class:`~pyro_lowrank.nn.LowRankLinear`.

    Notes
    -----
    ``forward(tokens, y=None, *, num_data=None, subsample_size=None)``; tokens ``(N, L)`` start with [CLS] (id of the
    tokenizer's choice) and are right-padded with ``padding_idx``. The logits are the deterministic site ``f``.
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        *,
        d_model: int = 256,
        num_layers: int = 4,
        num_heads: int = 4,
        dim_feedforward: int = 512,
        max_len: int = 64,
        rank: int = 16,
        embedding_rank: int | None = None,
        head_rank: int | None = None,
        dropout: float = 0.1,
        activation: str = "gelu",
        padding_idx: int = 0,
        prior: FactorPrior | None = None,
        prior_scale: float = 1.0,
        init_scale_factor: float = 0.1,
    ) -> None:
        encoder = LowRankTransformerEncoder(
            vocab_size, num_classes, d_model=d_model, num_layers=num_layers, num_heads=num_heads,
            dim_feedforward=dim_feedforward, max_len=max_len, rank=rank, embedding_rank=embedding_rank,
            head_rank=head_rank, dropout=dropout, activation=activation, padding_idx=padding_idx, prior=prior,
            prior_scale=prior_scale, init_scale_factor=init_scale_factor,
        )
        super().__init__(encoder, likelihood="categorical", num_classes=num_classes)

    def check_data(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """Validate the tokens and labels once (``fit`` calls this)."""
        self.network.check_tokens(x)
        super().check_data(x, y)

    def num_variational_parameters(self) -> int:
        """Learned numbers of a mean-field guide over every factor and bias (loc and scale)."""
        return self.network.num_variational_parameters()
