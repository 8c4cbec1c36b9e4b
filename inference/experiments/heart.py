r"""``pyro-lowrank experiment heart``: the paper's clinical MLP experiment on open data (MIMIC-III translated).

Data (:func:`pyro_lowrank.datasets.load_heart_disease`): the UCI Heart Disease hospitals, Cleveland + Hungary as the
source population (split into train / validation / test by ``data_seed``, preprocessing fitted on the source training
rows only) and Switzerland + VA Long Beach as the shifted population; the label is the presence of heart disease
(:math:`y = 1[\text{num} > 0]`). By default seed s also draws split s, so the standard error over seeds covers the
split and the small test set (120 patients) as well as training; ``data_seed`` fixes one split for all seeds.

Caveats for reading the shift results: Switzerland records no cholesterol (``chol = 0``, treated as missing), so a
missing-indicator column alone separates most shifted patients from the source test set; and the label prevalence
differs (about 0.41 in the source test set, 0.82 in the shifted hospitals), so shift accuracy and NLL mix label
shift with covariate shift.

Protocol (the paper's MIMIC settings, METHODS.md): a d-128-128-2 ReLU MLP for every method (two-class softmax, so
:math:`P(y = 1 \mid x)` is the second probability), Adam at 1e-3, batch 64, 256 epochs, 512 predictive draws, 5
seeds; the low-rank networks use rank 15 in the hidden layers (capped at the layer's :math:`\min(m, n)`) and rank 1
in the output layer. Metrics (:mod:`.runner`): AUROC of :math:`P(y = 1)`, accuracy, NLL, ECE (15 bins) and Brier on
the source test set and on the shifted hospitals, and detection of shifted vs source-test patients by the mutual
information (AUROC, AUPR-OOD, AUPR-In, MI ratio). Per-method settings are :data:`HEART_SETTINGS`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pyro_lowrank._validation import check_positive_int

from .runner import (ExperimentResult, TaskData, aggregate, check_seeds, method_config, resolve_methods, run_task,
                     timed)

__all__ = ["DEFAULT_METHODS", "HEART_DEFAULTS", "HEART_SETTINGS", "heart_config", "load_heart_task", "run_heart"]

logger = logging.getLogger(__name__)

DEFAULT_METHODS = ("deterministic", "ensemble", "mc_dropout", "swag", "laplace", "laplace_full", "mean_field",
                   "rank1", "lowrank", "lowrank_svd")

#: The paper's MIMIC protocol (METHODS.md).
HEART_DEFAULTS: dict[str, Any] = {"hidden_features": (128, 128), "rank": 15, "output_rank": 1, "lr": 1e-3,
                                  "batch_size": 64, "num_epochs": 256, "num_samples": 512, "seeds": (0, 1, 2, 3, 4),
                                  "swag_epochs": 40, "kl_anneal_epochs": 5, "patience": 30}

#: Method-specific settings on top of the shared ones (weight decay 1e-4 for the maximum-likelihood networks and
#: the MAP of the Laplace methods, dropout 0.1, 5 ensemble members, initial posterior scales 0.01 times the init
#: scale for the variational networks as in the paper; rank-1 keeps its reference defaults). The low-rank networks
#: use the variance-matched factor prior (``prior_scale="matched"``: the implied prior on W has the He variance
#: 2/n, where N(0, 1) factors would give Var W = r = 15).
HEART_SETTINGS: dict[str, dict[str, Any]] = {
    "deterministic": {"weight_decay": 1e-4},
    "ensemble": {"weight_decay": 1e-4, "num_members": 5},
    "mc_dropout": {"dropout": 0.1, "weight_decay": 1e-4},
    "swag": {},
    "laplace": {"weight_decay": 1e-4},
    "laplace_full": {"weight_decay": 1e-4},
    "mean_field": {"init_scale_factor": 0.01},
    "rank1": {},
    "lowrank": {"init_scale_factor": 0.01, "prior_scale": "matched"},
    "lowrank_svd": {"init_scale_factor": 0.01, "prior_scale": "matched"},
}


def heart_config(name: str, in_features: int, *, seed: int, num_epochs: int = HEART_DEFAULTS["num_epochs"],
                 num_classes: int = 2, progress: bool = False) -> dict[str, Any]:
    """``make_method`` keyword arguments of method ``name`` on the heart task (see the module docstring).

    SWAG collects for ``min(40, num_epochs)`` epochs after its ``num_epochs`` of Adam pre-training. Every method
    keeps its best validation epoch and stops after ``patience`` (30) epochs without improvement (SWAG: its
    pre-training; LR-SVD: its deterministic twin as well), so that no method is compared at an overfitted epoch.
    """
    hidden = list(HEART_DEFAULTS["hidden_features"])
    common: dict[str, Any] = {"in_features": in_features, "hidden_features": hidden, "likelihood": "categorical",
                              "num_classes": num_classes, "num_epochs": num_epochs,
                              "batch_size": HEART_DEFAULTS["batch_size"], "lr": HEART_DEFAULTS["lr"], "seed": seed,
                              "progress": progress, "patience": HEART_DEFAULTS["patience"]}
    config = method_config(name, common, HEART_SETTINGS, HEART_DEFAULTS, num_epochs)
    if name in ("lowrank", "lowrank_svd"):
        widths = [in_features, *hidden]
        config["rank"] = [min(HEART_DEFAULTS["rank"], n_in, n_out) for n_in, n_out in zip(widths[:-1], widths[1:])]
        config["output_rank"] = HEART_DEFAULTS["output_rank"]
    return config


def load_heart_task(root: str | Path | None = None, data_seed: int = 0) -> TaskData:
    """The heart task: source train / validation / test (split by ``data_seed``) and the shifted hospitals, labels as
    ``torch.long``; rows of results record the ``data_seed``."""
    from pyro_lowrank.datasets import load_heart_disease

    data = load_heart_disease(root=root, seed=data_seed)
    pair = lambda x, y: (torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y).long())  # noqa: E731
    return TaskData(
        name="heart",
        kind="classification",
        train=pair(data.x_train, data.y_train),
        val=pair(data.x_val, data.y_val),
        test=pair(data.x_test, data.y_test),
        shift=pair(data.x_shift, data.y_shift),
        num_classes=2,
        info={"data_seed": data_seed},
    )


def run_heart(
    methods: Sequence[str] | str | None = None,
    *,
    seeds: Sequence[int] = HEART_DEFAULTS["seeds"],
    num_epochs: int = HEART_DEFAULTS["num_epochs"],
    num_samples: int = HEART_DEFAULTS["num_samples"],
    root: str | Path | None = None,
    data_seed: int | None = None,
    task: TaskData | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    strict: bool = False,
    journal: str | Path | None = None,
) -> ExperimentResult:
    """Run every method of ``methods`` (default :data:`DEFAULT_METHODS`) for every seed on the heart task.

    ``data_seed=None`` (default): seed s also draws its own train/val/test split of the source hospitals
    (``data_seed = s``), so the standard error over seeds covers the split and the 120-patient test set as well as
    training; an int fixes one split for every seed (training variation only). ``task`` replaces the real data
    (tests use small synthetic tasks). Returns an
    :class:`~pyro_lowrank.inference.experiments.runner.ExperimentResult` with one row per (method, seed) and the
    per-method mean and standard error over seeds.
    """
    methods = resolve_methods(methods, DEFAULT_METHODS)
    seeds = check_seeds(seeds)
    num_samples = check_positive_int(num_samples, "num_samples")
    if num_epochs is not None:
        num_epochs = check_positive_int(num_epochs, "num_epochs")

    def config_fn(name: str, t: TaskData, seed: int) -> dict[str, Any]:
        return heart_config(name, t.in_features, seed=seed, num_epochs=num_epochs, num_classes=t.num_classes)

    def go() -> ExperimentResult:
        if task is not None or data_seed is not None:
            splits = [(task if task is not None else load_heart_task(root, data_seed), seeds)]
        else:  # one split per seed
            splits = [(load_heart_task(root, seed), [seed]) for seed in seeds]
        result = None
        for data, split_seeds in splits:
            if data.kind != "classification":
                raise ValueError(f"task must be a classification task, got kind={data.kind!r}")
            result = run_task(data, methods, split_seeds, config_fn, num_samples=num_samples, experiment="heart",
                              result=result, device=device, progress=progress, strict=strict,
                          journal=journal)
        data = splits[0][0]
        result.metadata.update({
            "data": {"source": "Cleveland + Hungary", "shift": "Switzerland + VA Long Beach",
                     "data_seed": "the run's seed" if task is None and data_seed is None else data_seed,
                     "n_train": len(data.train[1]),
                     "n_val": 0 if data.val is None else len(data.val[1]), "n_test": len(data.test[1]),
                     "n_shift": 0 if data.shift is None else len(data.shift[1]), "in_features": data.in_features},
            "protocol": "d-128-128-2 MLP, Adam 1e-3, batch 64; low-rank: rank 15 (capped at min(m, n)), output "
                        "rank 1; OOD score: mutual information (shift positive)",
        })
        return result

    result = timed(go)
    result.aggregates = aggregate(result.rows)
    result.metadata.update({"methods": methods, "seeds": list(seeds), "num_epochs": num_epochs,
                            "num_samples": num_samples})
    return result
