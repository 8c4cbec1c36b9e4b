r"""Plain PyTorch networks of the paper's sequence experiments, the common architecture every compared method is
built from (the low-rank BNN by :func:`~pyro_lowrank.nn.lowrankify`, the mean-field and rank-1 BNNs by
:mod:`models.weight_space`, the deterministic, ensemble, MC-dropout, SWAG and Laplace baselines as they are).

* :class:`LSTMRegressor` (Beijing PM2.5): a batch-first ``nn.LSTM`` over windows ``(N, L, d)``, the last hidden state
  :math:`h_L`, dropout and a linear read-out, :math:`f(x) = W_o\,\mathrm{drop}(h_L(x)) + b_o` of width ``horizon``.
* :class:`TransformerTextClassifier` (SST-2): token and learned positional embeddings, a pre-LN
  ``nn.TransformerEncoder`` with the padding positions masked out of attention, a final LayerNorm on the [CLS]
  position (index 0) and a linear head, :math:`f(t) = W_o\,\mathrm{LN}(h_0(t)) + b_o`.

Both index time / positions from the right (``h[..., -1, :]``, ``h[..., 0, :]``), so leading particle dimensions of
Bayesian weights (vectorised predictive draws) pass through.
"""

from __future__ import annotations

import torch
from torch import nn

from pyro_lowrank._validation import check_positive_int

__all__ = ["LSTMRegressor", "TransformerTextClassifier"]


def _check_dropout(dropout: float) -> float:
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be a float in [0, 1), got {dropout!r}")
    return float(dropout)


class LSTMRegressor(nn.Module):
    """``nn.LSTM`` (batch first) -> last hidden state -> dropout -> ``nn.Linear(hidden_size, horizon)``.

    Parameters
    ----------
    in_features : int
        Features per time step d.
    hidden_size, num_layers : int
        LSTM width H and depth (the paper: 64 and 2).
    out_features : int
        Read-out width (the forecast horizon; 1 in the paper).
    dropout : float
        Dropout between LSTM layers (``nn.LSTM``'s ``dropout``) and before the read-out.
    """

    def __init__(self, in_features: int, hidden_size: int = 64, num_layers: int = 2, out_features: int = 1,
                 dropout: float = 0.0) -> None:
        super().__init__()
        dropout = _check_dropout(dropout)
        self.lstm = nn.LSTM(check_positive_int(in_features, "in_features"), check_positive_int(hidden_size,
                            "hidden_size"), check_positive_int(num_layers, "num_layers"), batch_first=True,
                            dropout=dropout if num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, check_positive_int(out_features, "out_features"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (N, L, d) -> (N, out_features)."""
        out, _ = self.lstm(x)
        return self.head(self.dropout(out[..., -1, :]))


class TransformerTextClassifier(nn.Module):
    """Token + positional embeddings -> pre-LN ``nn.TransformerEncoder`` -> LayerNorm of [CLS] -> linear head.

    Parameters
    ----------
    vocab_size, num_classes : int
    d_model, num_layers, num_heads, dim_feedforward : int
        The paper's SST-2 encoder: 256, 4, 4, 512.
    max_len : int
        Longest token sequence (positional table rows; the paper: 64).
    dropout : float
        Dropout inside the encoder layers (attention and feed-forward) and before the head.
    padding_idx : int
        The padding token: its positions are masked out of attention and its embedding row is zero.
    trim_padding : bool
        Drop trailing all-padding columns of a batch before the encoder (exact; batches padded to ``max_len`` cost
        only their longest sentence).
    """

    def __init__(self, vocab_size: int, num_classes: int = 2, *, d_model: int = 256, num_layers: int = 4,
                 num_heads: int = 4, dim_feedforward: int = 512, max_len: int = 64, dropout: float = 0.1,
                 padding_idx: int = 0, trim_padding: bool = True) -> None:
        super().__init__()
        dropout = _check_dropout(dropout)
        self.padding_idx = int(padding_idx)
        self.trim_padding = bool(trim_padding)
        self.max_len = check_positive_int(max_len, "max_len")
        self.embed = nn.Embedding(check_positive_int(vocab_size, "vocab_size"), check_positive_int(d_model, "d_model"),
                                  padding_idx=self.padding_idx)
        self.position = nn.Parameter(0.02 * torch.randn(max_len, d_model))
        layer = nn.TransformerEncoderLayer(d_model, check_positive_int(num_heads, "num_heads"),
                                           check_positive_int(dim_feedforward, "dim_feedforward"), dropout=dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, check_positive_int(num_layers, "num_layers"),
                                             enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(d_model, check_positive_int(num_classes, "num_classes"))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens`` int64 (N, L) with L <= max_len, [CLS] first -> logits (N, num_classes)."""
        if tokens.shape[-1] > self.max_len:
            raise ValueError(f"tokens must have at most max_len={self.max_len} positions, got {tokens.shape[-1]}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.embed.num_embeddings):
            raise ValueError(f"tokens must be ids in [0, {self.embed.num_embeddings}), got values in "
                             f"[{int(tokens.min())}, {int(tokens.max())}]")
        if self.trim_padding and tokens.dim() == 2 and tokens.shape[-1] > 1:
            # drop trailing columns that are padding in every row: attention masks them out and every other
            # operation is per position, so [CLS]'s output is unchanged and a batch of short sentences is cheap
            used = (tokens != self.padding_idx).any(dim=0).nonzero()
            tokens = tokens[:, : max(int(used.max()) + 1, 1) if used.numel() else 1]
        h = self.embed(tokens) + self.position[: tokens.shape[-1]]
        h = self.encoder(h, src_key_padding_mask=tokens == self.padding_idx)
        return self.head(self.dropout(self.norm(h[..., 0, :])))
