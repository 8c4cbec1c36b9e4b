r"""``pyro-lowrank experiment sst2``: a Transformer sentiment classifier on SST-2 with AG News as OOD inputs.

Data (:func:`pyro_lowrank.datasets.load_sst2`, :func:`~pyro_lowrank.datasets.load_ag_news`): a WordPiece vocabulary
(8,000 entries) trained offline with the ``tokenizers`` library on the SST-2 training sentences only; sequences are
[CLS] + at most 63 word pieces. ``val_size`` training sentences are held out for early stopping and the SST-2 dev set
(872 sentences, the labelled public test set) is the test set; AG News test items (titles + descriptions, encoded
with the SST-2 vocabulary) are the OOD inputs (``ood_size`` of them, a seeded random subset; all 7,600 when None).

Architecture (METHODS.md, SBNN SST-2): :class:`~pyro_lowrank.models.torch_networks.TransformerTextClassifier`, a
pre-LN encoder with d = 256, 4 layers, 4 heads, FFN 512, CLS pooling and max length 64 by default (``d_model``,
``num_layers``, ``dim_feedforward`` make it smaller for a CPU budget). The low-rank BNN is its
:func:`~pyro_lowrank.nn.lowrankify` at rank 16 (token table, Q/K/V/O, both FFN matrices) with a full-rank (rank-2)
head, the positional table and layer norms point estimates; mean-field BBB and rank-1 through
:mod:`pyro_lowrank.models.weight_space`; MC dropout, SWAG, last-layer Laplace and the deep ensemble (5) around the
same network.

Training: Adam (``lr``), batch 64, ``num_epochs`` epochs with validation early stopping, KL annealing over the first
epoch (the paper anneals the KL). Prediction: ``num_samples`` draws (the paper: 200). Metrics: accuracy, NLL, ECE
(15 bins) and Brier on SST-2 dev; OOD detection of AG News by mutual information (AUROC-OOD, AUPR-OOD, AUPR-In, MI
ratio).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pyro_lowrank._validation import check_positive_int

from ..methods.architecture import NetworkArchitecture
from .heart import DEFAULT_METHODS
from .runner import (VARIATIONAL_METHODS, ExperimentResult, TaskData, aggregate, check_seeds, method_config, resolve_methods, run_task,
                     timed)

__all__ = ["SST2_DEFAULTS", "SST2_SETTINGS", "load_sst2_task", "run_sst2", "sst2_config", "transformer_architecture"]

logger = logging.getLogger(__name__)

SST2_DEFAULTS: dict[str, Any] = {"d_model": 256, "num_layers": 4, "num_heads": 4, "dim_feedforward": 512,
                                 "max_len": 64, "vocab_size": 8000, "rank": 16, "dropout": 0.1, "lr": 5e-4,
                                 "batch_size": 64, "num_epochs": 3, "patience": 1, "num_samples": 200,
                                 "seeds": (0,), "val_size": 2000, "ood_size": None, "train_size": None,
                                 "kl_anneal_epochs": 1, "swag_epochs": 1, "predict_batch_size": 256,
                                 "val_num_samples": 4}

SST2_SETTINGS: dict[str, dict[str, Any]] = {
    "deterministic": {"weight_decay": 1e-5},
    "ensemble": {"weight_decay": 1e-5, "num_members": 5},
    "mc_dropout": {"weight_decay": 1e-5},
    "swag": {"swag_lr": 1e-3},
    "laplace": {"weight_decay": 1e-5},
    "laplace_full": {"weight_decay": 1e-5},
    "mean_field": {"prior_scale": "matched"},
    "rank1": {},
    "lowrank": {"init_scale_factor": 0.01, "prior_scale": "matched"},
    "lowrank_svd": {"init_scale_factor": 0.01, "prior_scale": "matched"},
}

#: SWAG collects this many iterates over its ``swag_epochs`` (one every ``steps // SWAG_ITERATES`` SGD steps).
SWAG_ITERATES = 20
_SIZE_KEYS = ("d_model", "num_layers", "num_heads", "dim_feedforward")


def transformer_architecture(vocab_size: int, *, max_len: int = SST2_DEFAULTS["max_len"],
                             rank: int = SST2_DEFAULTS["rank"], num_classes: int = 2,
                             **sizes: int) -> NetworkArchitecture:
    """The shared Transformer classifier on token ids (N, L <= ``max_len``); ``sizes`` override ``d_model``,
    ``num_layers``, ``num_heads``, ``dim_feedforward`` (defaults: the paper's). The low-rank rank is capped at
    ``d_model`` (every factorised matrix has a side of at least ``d_model``)."""
    from pyro_lowrank.models.torch_networks import TransformerTextClassifier

    unknown = set(sizes) - set(_SIZE_KEYS)
    if unknown:
        raise TypeError(f"sizes must be among {list(_SIZE_KEYS)}, got {sorted(unknown)}")
    dims = {k: check_positive_int(sizes.get(k, SST2_DEFAULTS[k]), k) for k in _SIZE_KEYS}
    if dims["d_model"] % dims["num_heads"]:
        raise ValueError(f"d_model must be divisible by num_heads, got d_model={dims['d_model']} and "
                         f"num_heads={dims['num_heads']}")

    def factory(out_features: int, dropout: float = 0.0) -> TransformerTextClassifier:
        return TransformerTextClassifier(vocab_size, out_features, max_len=max_len, dropout=dropout, **dims)

    rank = min(check_positive_int(rank, "rank"), dims["d_model"])  # capped at min(m, n), as in the heart experiment
    return NetworkArchitecture(factory, (None,), integer_inputs=True, lowrank_rank={"head": num_classes, "*": rank},
                               name="Transformer(" + ", ".join(f"{k}={v}" for k, v in dims.items()) + ")")


def load_sst2_task(root: str | Path | None = None, *, val_size: int = SST2_DEFAULTS["val_size"],
                   ood_size: int | None = SST2_DEFAULTS["ood_size"], train_size: int | None = None,
                   vocab_size: int = SST2_DEFAULTS["vocab_size"], max_len: int = SST2_DEFAULTS["max_len"],
                   seed: int = 0) -> tuple[TaskData, int]:
    """SST-2 train (minus ``val_size`` held out) / val / dev as test, AG News as the unlabelled-for-this-task
    shift set; returns the task and the vocabulary size. ``train_size`` keeps a seeded random subset of the
    training sentences (None: all)."""
    from pyro_lowrank.datasets import load_ag_news, load_sst2

    data = load_sst2(root, max_len=max_len, vocab_size=vocab_size, seed=seed, val_size=val_size)
    ood = load_ag_news(data.tokenizer, root, max_len=max_len, num=ood_size, seed=seed)
    x_train, y_train = data.x_train, data.y_train
    if train_size is not None:
        keep = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(seed))[
            : check_positive_int(train_size, "train_size")]
        x_train, y_train = x_train[keep], y_train[keep]
    task = TaskData(name="sst2", kind="classification", train=(x_train, y_train),
                    val=(data.x_val, data.y_val) if val_size else None, test=(data.x_dev, data.y_dev),
                    shift=(ood.x, ood.y), shift_labelled=False, num_classes=2, info={})
    return task, int(data.vocab_size)


def sst2_config(name: str, task: TaskData, *, seed: int, vocab_size: int,
                num_epochs: int = SST2_DEFAULTS["num_epochs"], progress: bool = False,
                **sizes: int) -> dict[str, Any]:
    """``make_method`` keyword arguments of method ``name`` on the SST-2 task (module docstring)."""
    common: dict[str, Any] = {
        "architecture": transformer_architecture(vocab_size, num_classes=task.num_classes, **sizes),
        "likelihood": "categorical", "num_classes": task.num_classes, "num_epochs": num_epochs,
        "batch_size": SST2_DEFAULTS["batch_size"], "lr": SST2_DEFAULTS["lr"], "patience": SST2_DEFAULTS["patience"],
        "seed": seed, "progress": progress, "predict_batch_size": SST2_DEFAULTS["predict_batch_size"],
    }
    config = method_config(name, common, SST2_SETTINGS, SST2_DEFAULTS, num_epochs)
    if name == "mc_dropout":
        config["dropout"] = SST2_DEFAULTS["dropout"]
    if name in VARIATIONAL_METHODS:
        config["val_num_samples"] = SST2_DEFAULTS["val_num_samples"]
    if name in ("lowrank", "lowrank_svd"):
        config["rank"] = config["architecture"].lowrank_rank  # recorded in the results' settings
    if name == "swag":
        steps = math.ceil(len(task.train[1]) / config["batch_size"]) * config["swag_epochs"]
        config["swag_collect_every"] = max(1, steps // SWAG_ITERATES)
    return config


def run_sst2(
    methods: Sequence[str] | str | None = None,
    *,
    seeds: Sequence[int] = SST2_DEFAULTS["seeds"],
    num_epochs: int = SST2_DEFAULTS["num_epochs"],
    num_samples: int = SST2_DEFAULTS["num_samples"],
    root: str | Path | None = None,
    val_size: int = SST2_DEFAULTS["val_size"],
    ood_size: int | None = SST2_DEFAULTS["ood_size"],
    train_size: int | None = SST2_DEFAULTS["train_size"],
    sizes: dict[str, int] | None = None,
    task: TaskData | None = None,
    vocab_size: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    strict: bool = False,
    journal: str | Path | None = None,
) -> ExperimentResult:
    """Run ``methods`` (default: all ten; Laplace over all weights is skipped) for every seed on SST-2.

    ``sizes`` overrides the encoder's ``d_model``/``num_layers``/``num_heads``/``dim_feedforward``. ``task`` (with
    its ``vocab_size``) replaces the real data (tests use a small synthetic token task).
    """
    methods = resolve_methods(methods, DEFAULT_METHODS)
    seeds = check_seeds(seeds)
    num_samples = check_positive_int(num_samples, "num_samples")
    num_epochs = check_positive_int(num_epochs, "num_epochs")
    sizes = dict(sizes or {})
    transformer_architecture(2, **sizes)  # validate the sizes before loading anything
    if task is not None and vocab_size is None:
        raise ValueError("vocab_size is required with a given task, got None")

    def go() -> ExperimentResult:
        data, vocab = (task, vocab_size) if task is not None else load_sst2_task(
            root, val_size=val_size, ood_size=ood_size, train_size=train_size)

        def config_fn(name: str, t: TaskData, seed: int) -> dict[str, Any]:
            return sst2_config(name, t, seed=seed, vocab_size=vocab, num_epochs=num_epochs, **sizes)

        result = run_task(data, methods, seeds, config_fn, num_samples=num_samples, experiment="sst2",
                          device=device, progress=progress, strict=strict,
                          journal=journal)
        result.metadata["data"] = {
            "train": "SST-2 train" + ("" if task is None else " (given task)"), "test": "SST-2 dev",
            "ood": "AG News test (title + description)", "vocab_size": vocab,
            "tokenizer": "WordPiece trained with `tokenizers` on the SST-2 training sentences",
            "n_train": len(data.train[1]), "n_val": 0 if data.val is None else len(data.val[1]),
            "n_test": len(data.test[1]), "n_ood": len(data.shift[1])}
        return result

    result = timed(go)
    result.aggregates = aggregate(result.rows)
    dims = {k: sizes.get(k, SST2_DEFAULTS[k]) for k in _SIZE_KEYS}
    result.metadata.update({
        "methods": methods, "seeds": list(seeds), "num_epochs": num_epochs, "num_samples": num_samples,
        "encoder": dims,
        "protocol": f"pre-LN Transformer {dims}, CLS pooling, max length 64; low-rank rank 16 (head 2); Adam "
                    f"{SST2_DEFAULTS['lr']}, batch 64, early stopping on {val_size} held-out training sentences; "
                    "OOD score: mutual information (AG News positive)",
    })
    return result
