r"""``pyro-lowrank experiment uci``: the standard UCI regression benchmark with every compared method.

Protocol (Hernández-Lobato & Adams 2015; Gal & Ghahramani 2016; METHODS.md): the published splits (20, protein 5,
90% train / 10% test), inputs and targets standardised with the training split's statistics, a d-50-1 ReLU MLP
(d-100-1 for protein) trained for the published number of epochs (40; protein 20). Inside the runner 10% of each
training split is held out as validation data (a fixed random subset per split, the same for every method and
seed), used by the methods that need one (best-epoch selection of the SVI methods, the Laplace prior precision) and
to tune the predictive noise; the methods are fitted on the remaining 90%.

Noise: every method is *trained* with the fixed observation noise :data:`TRAIN_NOISE_SCALE` on the standardised
scale (the Bayesian methods' likelihood weight; maximum-likelihood training is squared error and does not depend on
it); for *prediction* the homoscedastic noise of each (method, split, seed) is then tuned on the validation data by
the grid search of :func:`~.runner.tune_noise_scale` (the protocol's precision search), so methods are compared on
the same footing. Metrics in original units (:func:`~.runner.regression_metrics`): RMSE, test log-likelihood of the
mixture predictive, PICP and MPIW of the 95% interval.

Training settings: Adam at 1e-2 with batch 32 (at the protocol's 40 epochs a learning rate of 1e-3 leaves every
network far from convergence on the small datasets); low-rank ranks :math:`\min(15, m, n)` per hidden layer and
rank 1 for the output layer (the paper's MLP setting), with the variance-matched factor prior
(``prior_scale="matched"``, as in the heart experiment); per-method settings in :data:`UCI_SETTINGS`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .heart import DEFAULT_METHODS
from pyro_lowrank._validation import check_positive_int

from .runner import (ExperimentResult, TaskData, aggregate, check_seeds, method_config, resolve_methods, run_task,
                     timed)

__all__ = ["TRAIN_NOISE_SCALE", "UCI_DEFAULTS", "UCI_SETTINGS", "holdout", "load_uci_task", "resolve_datasets",
           "run_uci", "uci_config"]

logger = logging.getLogger(__name__)

#: Observation noise standard deviation used in training, on the standardised target scale.
TRAIN_NOISE_SCALE = 0.1

UCI_DEFAULTS: dict[str, Any] = {"hidden": 50, "hidden_protein": 100, "num_epochs": 40, "num_epochs_protein": 20,
                                "batch_size": 32, "lr": 1e-2, "rank": 15, "output_rank": 1, "num_samples": 100,
                                "val_fraction": 0.1, "seeds": (0,), "swag_epochs": 40, "kl_anneal_epochs": 5}

UCI_SETTINGS: dict[str, dict[str, Any]] = {
    "deterministic": {"weight_decay": 1e-4},
    "ensemble": {"weight_decay": 1e-4, "num_members": 5},
    "mc_dropout": {"dropout": 0.05, "weight_decay": 1e-4},
    "swag": {},
    "laplace": {"weight_decay": 1e-4},
    "laplace_full": {"weight_decay": 1e-4},
    "mean_field": {"init_scale_factor": 0.01},
    "rank1": {},
    "lowrank": {"init_scale_factor": 0.01, "prior_scale": "matched"},
    "lowrank_svd": {"init_scale_factor": 0.01, "prior_scale": "matched"},
}


def _datasets_module() -> Any:
    from pyro_lowrank import datasets

    return datasets


def resolve_datasets(datasets: Sequence[str] | str | None) -> list[str]:
    """UCI dataset names: all of ``pyro_lowrank.datasets.UCI_DATASETS`` when ``None``; a comma-separated string or
    a sequence otherwise. Raises ``ValueError`` naming the known datasets for an unknown name."""
    known = list(_datasets_module().UCI_DATASETS)
    if datasets is None:
        return known
    if isinstance(datasets, str):
        datasets = [d.strip() for d in datasets.split(",") if d.strip()]
    datasets = list(datasets)
    unknown = [d for d in datasets if d not in known]
    if unknown or not datasets:
        raise ValueError(f"datasets must be a non-empty list of UCI dataset names {known}, got unknown {unknown}"
                         if unknown else f"datasets must be a non-empty list of UCI dataset names {known}, got []")
    return datasets


def _published(dataset: str, data: Any, key: str) -> int:
    """The protocol's hidden width / epochs: the loader's ``n_hidden`` / ``n_epochs`` if it gives them."""
    value = getattr(data, f"n_{key}", None)
    if value is not None:
        return int(value)
    suffix = "_protein" if dataset.startswith("protein") else ""
    return int(UCI_DEFAULTS[("hidden" if key == "hidden" else "num_epochs") + suffix])


def holdout(data: tuple[torch.Tensor, torch.Tensor], fraction: float, seed: int
            ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor] | None]:
    """Split ``(x, y)`` into ``(train, val)`` with ``round(fraction * N)`` (at least 1) random rows in ``val``,
    chosen by a generator seeded with ``seed``; ``fraction = 0`` returns ``(data, None)``."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction!r}")
    if fraction == 0.0:
        return data, None
    x, y = data
    n_val = max(1, round(fraction * x.shape[0]))
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed)).to(x.device)
    val, train = perm[:n_val], perm[n_val:]
    return (x[train], y[train]), (x[val], y[val])


def load_uci_task(dataset: str, split: int, root: str | Path | None = None,
                  val_fraction: float = UCI_DEFAULTS["val_fraction"]) -> TaskData:
    """Split ``split`` of ``dataset`` as a regression task with a held-out validation set (seeded by ``split``);
    ``info`` carries the split and the protocol's hidden width and epochs."""
    data = _datasets_module().load_uci(dataset, split, root=root)
    as_float = lambda t: torch.as_tensor(t, dtype=torch.float32)  # noqa: E731
    train, val = holdout((as_float(data.x_train), as_float(data.y_train).reshape(-1)), val_fraction, seed=split)
    return TaskData(name=dataset, kind="regression", train=train, val=val,
                    test=(as_float(data.x_test), as_float(data.y_test).reshape(-1)),
                    y_mean=float(data.y_mean), y_std=float(data.y_std),
                    info={"split": split, "n_hidden": _published(dataset, data, "hidden"),
                          "n_epochs": _published(dataset, data, "epochs")})


def uci_config(name: str, task: TaskData, *, seed: int, num_epochs: int | None = None,
               noise_scale: float = TRAIN_NOISE_SCALE, progress: bool = False) -> dict[str, Any]:
    """``make_method`` keyword arguments of method ``name`` on a UCI task (see the module docstring);
    ``num_epochs`` overrides the protocol's epochs."""
    hidden = [int(task.info.get("n_hidden", UCI_DEFAULTS["hidden"]))]
    epochs = int(num_epochs if num_epochs is not None else task.info.get("n_epochs", UCI_DEFAULTS["num_epochs"]))
    common: dict[str, Any] = {"in_features": task.in_features, "hidden_features": hidden, "likelihood": "gaussian",
                              "noise_scale": noise_scale, "num_epochs": epochs,
                              "batch_size": UCI_DEFAULTS["batch_size"], "lr": UCI_DEFAULTS["lr"], "seed": seed,
                              "progress": progress}
    config = method_config(name, common, UCI_SETTINGS, UCI_DEFAULTS, epochs)
    if name in ("lowrank", "lowrank_svd"):
        widths = [task.in_features, *hidden]
        config["rank"] = [min(UCI_DEFAULTS["rank"], n_in, n_out) for n_in, n_out in zip(widths[:-1], widths[1:])]
        config["output_rank"] = UCI_DEFAULTS["output_rank"]
    return config


def run_uci(
    datasets: Sequence[str] | str | None = None,
    methods: Sequence[str] | str | None = None,
    *,
    splits: int | Sequence[int] | None = None,
    seeds: Sequence[int] = UCI_DEFAULTS["seeds"],
    num_epochs: int | None = None,
    num_samples: int = UCI_DEFAULTS["num_samples"],
    root: str | Path | None = None,
    val_fraction: float = UCI_DEFAULTS["val_fraction"],
    noise_scale: float = TRAIN_NOISE_SCALE,
    tune_noise: bool = True,
    tasks: Sequence[TaskData] | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    strict: bool = False,
    journal: str | Path | None = None,
) -> ExperimentResult:
    """Run ``methods`` (default: all ten) on ``splits`` of every dataset in ``datasets`` (default: all) for every
    seed; aggregates are over splits and seeds per (dataset, method).

    ``splits``: ``None`` = all of the dataset's splits, an int K = the first K, or explicit split indices.
    ``tasks`` replaces the real data (tests use small synthetic tasks; ``datasets`` and ``splits`` are then ignored).
    """
    methods = resolve_methods(methods, DEFAULT_METHODS)
    seeds = check_seeds(seeds)
    num_samples = check_positive_int(num_samples, "num_samples")
    if num_epochs is not None:
        num_epochs = check_positive_int(num_epochs, "num_epochs")
    if tasks is None:
        datasets = resolve_datasets(datasets)
        num_splits = {d: int(_datasets_module().num_splits(d)) for d in datasets}
        split_lists = {d: _resolve_splits(splits, n, d) for d, n in num_splits.items()}
    else:
        datasets = list(dict.fromkeys(t.name for t in tasks))

    def go() -> ExperimentResult:
        result = ExperimentResult("uci")

        def config_fn(name: str, t: TaskData, seed: int) -> dict[str, Any]:
            return uci_config(name, t, seed=seed, num_epochs=num_epochs, noise_scale=noise_scale)

        todo = tasks if tasks is not None else (
            (load_uci_task(d, k, root, val_fraction) for d in datasets for k in split_lists[d]))
        for task in todo:
            if task.kind != "regression":
                raise ValueError(f"tasks must be regression tasks, got kind={task.kind!r} for {task.name!r}")
            run_task(task, methods, seeds, config_fn, num_samples=num_samples, experiment="uci", result=result,
                     tune_noise=tune_noise, device=device, progress=progress, strict=strict,
                          journal=journal)
        return result

    result = timed(go)
    result.aggregates = aggregate(result.rows)
    result.metadata.update({
        "methods": methods, "datasets": datasets, "seeds": list(seeds), "num_epochs": num_epochs or "published",
        "num_samples": num_samples, "val_fraction": val_fraction, "train_noise_scale": noise_scale,
        "tune_noise": tune_noise,
        "splits": {d: split_lists[d] for d in datasets} if tasks is None else "given tasks",
        "protocol": "d-50-1 MLP (protein d-100-1), published epochs, Adam 1e-2, batch 32; 10% of each training "
                    "split held out for validation; training noise fixed, predictive noise tuned on validation; "
                    "metrics in original units",
    })
    return result


def _resolve_splits(splits: int | Sequence[int] | None, available: int, dataset: str) -> list[int]:
    if splits is None:
        return list(range(available))
    if isinstance(splits, int) and not isinstance(splits, bool):
        if splits < 1:
            raise ValueError(f"splits must be a positive int or a list of split indices, got {splits}")
        if splits > available:
            logger.warning("%s has %d splits; running all of them instead of the %d asked for", dataset, available,
                           splits)
        return list(range(min(splits, available)))
    splits = list(splits)
    bad = [k for k in splits if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < available]
    if bad or not splits:
        raise ValueError(f"splits of {dataset} must be indices in [0, {available}), got {splits}")
    return splits
