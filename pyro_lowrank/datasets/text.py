r"""SST-2 (in-distribution) and AG News (out-of-distribution) as token tensors for the Transformer classifier.

Tokenizer. A WordPiece vocabulary is trained offline with the ``tokenizers`` library on the SST-2 *training*
sentences only (never on dev or AG News): BERT normalisation (clean text, Chinese-character spacing, lowercase,
strip accents), BERT pre-tokenisation (split on whitespace and punctuation), ``WordPieceTrainer`` with ``##``
continuation prefix and special tokens ``[PAD], [UNK], [CLS]`` with ids 0, 1, 2. Training is deterministic across
processes: the library's trainer numbers the ``##c`` continuation symbols in hash-map order, which changes how count
ties are broken, so they are registered first in sorted order (ids 3, 4, ...) before the single characters and the
merges. The result is cached as JSON (see ``cache_dir``).

Encoding (:func:`encode`): :math:`(\texttt{[CLS]}, w_1, \dots, w_{L-1})`, i.e. [CLS] first, the first ``max_len - 1``
word pieces (longer texts are truncated), then right-padding with ``[PAD] = 0`` to exactly ``max_len``.

SST-2: GLUE ``train.tsv`` (67,349 labelled phrases) and ``dev.tsv`` (872 sentences; the usual test set, GLUE's test
labels are private). Labels int64, 0 = negative, 1 = positive. ``val_size > 0`` moves a random subset (drawn with
``numpy.random.default_rng(seed)``) of the training phrases to a validation split; the tokenizer is still trained on
all training phrases. AG News: ``test.csv`` (7,600 news items); text = title + " " + description, with the corpus'
backslash line breaks replaced by spaces and HTML entities (written with or without their ``&``: ``#39;``,
``quot;``, ``&lt;``) decoded; labels int64 class - 1 (0 World, 1 Sports, 2 Business, 3 Sci/Tech).
"""

from __future__ import annotations

import csv
import html
import logging
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from pyro_lowrank.datasets._files import REGISTRY, default_root, fetch

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = ["AG_NEWS_CLASSES", "AGNewsData", "CLS_ID", "PAD_ID", "SPECIAL_TOKENS", "SST2Data", "UNK_ID", "clean_ag_news",
           "encode", "load_ag_news", "load_sst2", "read_sst2", "sst2_tokenizer", "train_wordpiece"]

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]")
PAD_ID, UNK_ID, CLS_ID = 0, 1, 2
AG_NEWS_CLASSES = ("World", "Sports", "Business", "Sci/Tech")
_CACHE_FORMAT = 1
_ENTITY = re.compile(r"(?<!&)(#\d+;|quot;|amp;|lt;|gt;)")


def _tokenizers():
    try:
        import tokenizers
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("the text datasets need the `tokenizers` package: "
                          "pip install 'pyro-lowrank[text]'") from error
    return tokenizers


@dataclass(frozen=True)
class SST2Data:
    """SST-2 token tensors. ``x_*`` int64 ``(N, max_len)`` starting with [CLS]; ``y_*`` int64 ``(N,)`` in {0, 1}.

    ``x_val`` / ``y_val`` are empty unless ``val_size > 0``; ``tokenizer`` is the trained ``tokenizers.Tokenizer``.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_dev: torch.Tensor
    y_dev: torch.Tensor
    tokenizer: Tokenizer
    vocab_size: int
    max_len: int
    pad_id: int = PAD_ID
    cls_id: int = CLS_ID
    unk_id: int = UNK_ID


@dataclass(frozen=True)
class AGNewsData:
    """AG News test items. ``x`` int64 ``(N, max_len)``; ``y`` int64 ``(N,)`` in {0..3}; ``texts`` the cleaned texts."""

    x: torch.Tensor
    y: torch.Tensor
    texts: tuple[str, ...]
    class_names: tuple[str, ...] = AG_NEWS_CLASSES


def train_wordpiece(sentences: Sequence[str], vocab_size: int) -> Tokenizer:
    """Train a BERT-style WordPiece tokenizer on ``sentences`` (see the module docstring); returns a
    ``tokenizers.Tokenizer`` whose ids 0, 1, 2 are ``[PAD], [UNK], [CLS]``."""
    integer = isinstance(vocab_size, (int, np.integer)) and not isinstance(vocab_size, bool)
    if not integer or vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be an integer > {len(SPECIAL_TOKENS)}, got {vocab_size!r}")
    if isinstance(sentences, str) or not all(isinstance(s, str) for s in sentences):
        raise TypeError("sentences must be a sequence of str")
    tk = _tokenizers()
    sentences = list(sentences)
    normalizer = tk.normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                               lowercase=True)
    pre_tokenizer = tk.pre_tokenizers.BertPreTokenizer()
    decoder = tk.decoders.WordPiece(prefix="##")
    # The trainer gives "##c" continuation symbols ids in hash-map order, which makes count ties (and so the
    # vocabulary) vary between processes; registering them first, sorted, makes training deterministic.
    alphabet = sorted(set(normalizer.normalize_str("\n".join(sentences))) - set(" \t\n\r"))
    continuation = [f"##{char}" for char in alphabet]
    trainer = tk.trainers.WordPieceTrainer(vocab_size=int(vocab_size),
                                           special_tokens=list(SPECIAL_TOKENS) + continuation,
                                           continuing_subword_prefix="##", show_progress=False)
    draft = tk.Tokenizer(tk.models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##"))
    draft.normalizer, draft.pre_tokenizer = normalizer, pre_tokenizer
    draft.train_from_iterator(sentences, trainer=trainer)
    # Rebuild with only [PAD], [UNK], [CLS] special (the "##c" entries become ordinary vocabulary); ids are kept:
    # specials, continuation symbols, alphabet, then the merges in order (capped at vocab_size).
    vocab = {token: i for token, i in draft.get_vocab().items() if i < vocab_size}
    tokenizer = tk.Tokenizer(tk.models.WordPiece(vocab=vocab, unk_token="[UNK]", continuing_subword_prefix="##"))
    tokenizer.normalizer, tokenizer.pre_tokenizer, tokenizer.decoder = normalizer, pre_tokenizer, decoder
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    _check_special(tokenizer)
    return tokenizer


def _check_special(tokenizer: Tokenizer) -> None:
    ids = [tokenizer.token_to_id(token) for token in SPECIAL_TOKENS]
    if ids != [PAD_ID, UNK_ID, CLS_ID]:
        raise ValueError(f"tokenizer must map {list(SPECIAL_TOKENS)} to {[PAD_ID, UNK_ID, CLS_ID]}, got {ids}")


def encode(tokenizer: Tokenizer, texts: Sequence[str], max_len: int) -> torch.Tensor:
    """int64 ``(len(texts), max_len)``: [CLS], the first ``max_len - 1`` word pieces, then [PAD] (= 0) padding."""
    if isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer)) or max_len < 2:
        raise ValueError(f"max_len must be an integer >= 2 ([CLS] plus at least one token), got {max_len!r}")
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of str, not a single str")
    _check_special(tokenizer)
    out = torch.full((len(texts), int(max_len)), PAD_ID, dtype=torch.int64)
    out[:, 0] = CLS_ID
    truncated = 0
    for row, encoding in enumerate(tokenizer.encode_batch(list(texts), add_special_tokens=False)):
        ids = encoding.ids[: max_len - 1]
        truncated += len(encoding.ids) > max_len - 1
        out[row, 1:1 + len(ids)] = torch.as_tensor(ids, dtype=torch.int64)
    if truncated:
        logger.info("encode: %d of %d texts truncated to %d tokens", truncated, len(texts), max_len)
    return out


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


def _cache_folder(cache_dir: str | os.PathLike | None) -> Path | None:
    """``cache_dir``, else ``<default_root()>/cache``, else a temporary folder: never a data root passed to a loader
    (``../shared/data`` is read-only)."""
    if cache_dir is not None:
        folder = Path(cache_dir).expanduser()
        if not _writable(folder):
            raise ValueError(f"cache_dir must be a writable folder, got {str(folder)!r}")
        return folder
    candidates = [default_root() / "cache", Path(tempfile.gettempdir()) / "pyro-lowrank-cache"]
    return next((folder for folder in candidates if _writable(folder)), None)


def _read_sst2(split: str, root: str | os.PathLike | None) -> tuple[list[str], np.ndarray]:
    path = fetch(f"sst2/{split}.tsv", root)
    lines = path.read_text(encoding="utf-8").split("\n")
    if lines[0] != "sentence\tlabel":
        raise ValueError(f"{path}: expected the header 'sentence\\tlabel', got {lines[0]!r}")
    sentences, labels = [], []
    for line in lines[1:]:
        if line:
            sentence, label = line.rsplit("\t", 1)
            sentences.append(sentence.strip())
            labels.append(int(label))
    return sentences, np.asarray(labels, dtype=np.int64)


def read_sst2(split: str, root: str | os.PathLike | None = None) -> tuple[list[str], np.ndarray]:
    """The raw SST-2 sentences (stripped) and int64 labels of ``split`` (``"train"``: 67,349 phrases, ``"dev"``: 872
    sentences), from the checksum-verified GLUE files under ``root`` (for models that bring their own tokenizer).

    Raises
    ------
    ValueError
        If ``split`` is not ``"train"`` or ``"dev"``.
    """
    if split not in ("train", "dev"):
        raise ValueError(f"split must be 'train' or 'dev', got {split!r}")
    return _read_sst2(split, root)


def sst2_tokenizer(root: str | os.PathLike | None = None, vocab_size: int = 8000,
                   cache_dir: str | os.PathLike | None = None) -> Tokenizer:
    """The WordPiece tokenizer trained on the SST-2 training sentences, loaded from the JSON cache when present.

    The cache file is keyed by the training file's digest, ``vocab_size`` and the ``tokenizers`` version; it lives
    in ``cache_dir``, else ``<default_root()>/cache``, else a temporary folder (the first that is writable). It is
    never written under ``root`` itself, which may be read-only (``../shared/data``).
    """
    tk = _tokenizers()
    digest = REGISTRY["sst2/train.tsv"].sha256[:16]
    name = f"sst2-wordpiece-{vocab_size}-{digest}-tokenizers{tk.__version__}-v{_CACHE_FORMAT}.json"
    folder = _cache_folder(cache_dir)
    if folder is not None and (folder / name).is_file():
        tokenizer = tk.Tokenizer.from_file(str(folder / name))
        try:
            _check_special(tokenizer)
            logger.debug("loaded cached tokenizer %s", folder / name)
            return tokenizer
        except ValueError:
            logger.warning("ignoring the invalid cached tokenizer %s", folder / name)
    sentences, _ = _read_sst2("train", root)
    tokenizer = train_wordpiece(sentences, vocab_size)
    if folder is not None:
        handle = tempfile.NamedTemporaryFile(dir=folder, prefix=f".{name}.", suffix=".part", delete=False)
        handle.close()
        try:
            tokenizer.save(handle.name)
            os.replace(handle.name, folder / name)
            logger.info("trained a %d-token WordPiece vocabulary on SST-2 train; cached at %s",
                        tokenizer.get_vocab_size(), folder / name)
        finally:
            Path(handle.name).unlink(missing_ok=True)
    return tokenizer


def load_sst2(
    root: str | os.PathLike | None = None,
    max_len: int = 64,
    vocab_size: int = 8000,
    seed: int = 0,
    *,
    val_size: int = 0,
    cache_dir: str | os.PathLike | None = None,
) -> SST2Data:
    """Load SST-2 train/dev as token tensors (the module docstring has the tokenizer and the encoding).

    Parameters
    ----------
    root : str or os.PathLike, optional
        Data root holding ``sst2/``.
    max_len : int
        Token length including [CLS] (default 64, as in the paper).
    vocab_size : int
        WordPiece vocabulary size (the trained vocabulary can be slightly smaller: ``SST2Data.vocab_size``).
    seed : int
        Seed of the train/val split when ``val_size > 0``.
    val_size : int
        Number of training phrases held out for validation (default 0: the paper's train/dev protocol).
    cache_dir : str or os.PathLike, optional
        Folder of the tokenizer cache (see :func:`sst2_tokenizer`).
    """
    if isinstance(val_size, bool) or not isinstance(val_size, (int, np.integer)) or val_size < 0:
        raise ValueError(f"val_size must be a non-negative integer, got {val_size!r}")
    tokenizer = sst2_tokenizer(root, vocab_size, cache_dir)
    train_text, train_y = _read_sst2("train", root)
    dev_text, dev_y = _read_sst2("dev", root)
    if val_size >= len(train_text):
        raise ValueError(f"val_size must be < the {len(train_text)} training phrases, got {val_size}")
    x_all = encode(tokenizer, train_text, max_len)
    order = np.random.default_rng(seed).permutation(len(train_text))
    val_rows, train_rows = np.sort(order[:val_size]), np.sort(order[val_size:])
    y_all = torch.as_tensor(train_y)
    return SST2Data(
        x_train=x_all[train_rows], y_train=y_all[train_rows], x_val=x_all[val_rows], y_val=y_all[val_rows],
        x_dev=encode(tokenizer, dev_text, max_len), y_dev=torch.as_tensor(dev_y),
        tokenizer=tokenizer, vocab_size=tokenizer.get_vocab_size(), max_len=int(max_len),
    )


def clean_ag_news(text: str) -> str:
    """Undo AG News' encoding artefacts: backslash line breaks -> spaces, HTML entities (``#39;``, ``&lt;``) decoded."""
    text = _ENTITY.sub(lambda match: "&" + match.group(1), text.replace("\\", " "))
    return " ".join(html.unescape(text).split())


def load_ag_news(
    tokenizer: Tokenizer,
    root: str | os.PathLike | None = None,
    max_len: int = 64,
    num: int | None = None,
    seed: int = 0,
) -> AGNewsData:
    """AG News test items as out-of-distribution token tensors, encoded with ``tokenizer`` (e.g. SST-2's).

    Parameters
    ----------
    tokenizer : tokenizers.Tokenizer
        With ``[PAD], [UNK], [CLS]`` at ids 0, 1, 2 (as from :func:`train_wordpiece`).
    root : str or os.PathLike, optional
        Data root holding ``ag_news/``.
    max_len : int
        Token length including [CLS].
    num : int, optional
        Keep a random subset of this many items (drawn with ``numpy.random.default_rng(seed)``, file order kept).
    seed : int
        Seed of the subset.
    """
    path = fetch("ag_news/test.csv", root)
    with open(path, newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.reader(handle) if row]
    if any(len(row) != 3 for row in rows):
        raise ValueError(f"{path}: every row must have 3 fields (class, title, description)")
    if num is not None:
        if isinstance(num, bool) or not isinstance(num, (int, np.integer)) or not 1 <= num <= len(rows):
            raise ValueError(f"num must be an integer in [1, {len(rows)}] or None, got {num!r}")
        keep = np.sort(np.random.default_rng(seed).choice(len(rows), size=int(num), replace=False))
        rows = [rows[i] for i in keep]
    texts = tuple(clean_ag_news(f"{title} {description}") for _, title, description in rows)
    labels = torch.as_tensor([int(label) - 1 for label, _, _ in rows], dtype=torch.int64)
    return AGNewsData(x=encode(tokenizer, texts, max_len), y=labels, texts=texts)
