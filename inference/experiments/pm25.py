r"""``pyro-lowrank experiment pm25``: the LSTM forecaster moved from Beijing to Guangzhou, with every compared method.

Data (:func:`pyro_lowrank.datasets.load_pm25`): hourly windows of L = 24 hours × 15 features, the target the US
monitor's PM2.5 one hour after the window; Beijing 2010–2013 train, 2014 validation, 2015 test; Guangzhou 2015 the
shifted city; every normalisation fitted on Beijing's training years. Consecutive windows share 23 of their 24 hours,
so ``train_stride`` (default 4) keeps every k-th training window and ``eval_stride`` (default 4) every k-th
validation, test and target window (a CPU budget: 7,405 / 1,920 / 1,550 / 1,936 windows); the loader's counts and the strides are recorded in the results.

Architecture (METHODS.md, SBNN Beijing): :class:`~pyro_lowrank.models.torch_networks.LSTMRegressor`, a batch-first
2-layer LSTM with H = 64, the last hidden state and a linear read-out. The low-rank BNN is its
:func:`~pyro_lowrank.nn.lowrankify` with every layer's W_ih at rank 14 and W_hh at rank 20 and a rank-1 read-out
(the paper's r = 14/20, read as W_ih/W_hh: 43,304 variational parameters against the paper's 47K), the factors
sampled once per minibatch; the other methods wrap the same network
(:mod:`..methods.architecture`): full-rank mean-field BBB and rank-1 through :mod:`pyro_lowrank.models.weight_space`,
MC dropout with p = 0.1 between the LSTM layers and before the read-out, SWAG, last-layer Laplace, deep ensemble
(5). Laplace over all weights is skipped (no Kronecker/diagonal GGN backend for LSTM layers).

Training: Adam 1e-3, batch 64, up to :data:`PM25_DEFAULTS` ``num_epochs`` (15) with validation early stopping
(patience 3),
the Bayesian methods with a fixed observation noise :data:`TRAIN_NOISE_SCALE` (standardised units) and KL annealing
over the first epoch; for prediction every method's homoscedastic noise is tuned on the validation windows (as in
the UCI protocol, :func:`~.runner.tune_noise_scale`). 150 predictive draws (the paper's count), evaluated in chunks
of 128 windows (a vectorised low-rank LSTM holds (S, N, L, 4H) input projections: 150 draws of 2,048 windows would be
7.5 GB).

Metrics (original units, µg/m³; :mod:`.runner`): MAE, RMSE, test log-likelihood, PICP and MPIW of the 95 % interval on
Beijing 2015 and on Guangzhou 2015; the MAE at 90 % and 80 % retention ranked by predictive standard deviation; and
detection of Guangzhou windows by the predictive standard deviation (AUROC-OOD, AUPR-OOD, AUPR-In).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pyro_lowrank._validation import check_positive_int

from ..methods.architecture import NetworkArchitecture
from .heart import DEFAULT_METHODS
from .runner import (ExperimentResult, TaskData, aggregate, check_seeds, method_config, resolve_methods, run_task,
                     timed)

__all__ = ["PM25_DEFAULTS", "PM25_SETTINGS", "TRAIN_NOISE_SCALE", "lstm_architecture", "load_pm25_task", "pm25_config",
           "run_pm25"]

logger = logging.getLogger(__name__)

#: Observation noise standard deviation of the Bayesian methods' training likelihood (standardised PM2.5).
TRAIN_NOISE_SCALE = 0.2

PM25_DEFAULTS: dict[str, Any] = {"hidden_size": 64, "num_layers": 2, "rank_ih": 14, "rank_hh": 20, "head_rank": 1,
                                 "lr": 1e-3, "batch_size": 64, "num_epochs": 15, "patience": 3, "num_samples": 150,
                                 "seeds": (0, 1, 2), "train_stride": 4, "eval_stride": 4, "kl_anneal_epochs": 1,
                                 "swag_epochs": 10, "predict_batch_size": 128}

PM25_SETTINGS: dict[str, dict[str, Any]] = {
    "deterministic": {"weight_decay": 1e-5},
    "ensemble": {"weight_decay": 1e-5, "num_members": 5},
    "mc_dropout": {"dropout": 0.1, "weight_decay": 1e-5},
    "swag": {"swag_lr": 1e-2},
    "laplace": {"weight_decay": 1e-5},
    "laplace_full": {"weight_decay": 1e-5},
    "mean_field": {"prior_scale": "matched"},
    "rank1": {},
    "lowrank": {"init_scale_factor": 0.01, "prior_scale": "matched"},
    "lowrank_svd": {"init_scale_factor": 0.01, "prior_scale": "matched"},
}


def lstm_architecture(in_features: int, window: int, *, hidden_size: int = PM25_DEFAULTS["hidden_size"],
                      num_layers: int = PM25_DEFAULTS["num_layers"]) -> NetworkArchitecture:
    """The shared LSTM regressor on windows (N, ``window``, ``in_features``), with the paper's low-rank ranks."""
    from pyro_lowrank.models.torch_networks import LSTMRegressor

    def factory(out_features: int, dropout: float = 0.0) -> LSTMRegressor:
        return LSTMRegressor(in_features, hidden_size, num_layers, out_features, dropout=dropout)

    ranks = {"lstm": (PM25_DEFAULTS["rank_ih"], PM25_DEFAULTS["rank_hh"]), "head": PM25_DEFAULTS["head_rank"]}
    return NetworkArchitecture(factory, (window, in_features), lowrank_rank=ranks,
                               name=f"LSTM({in_features}->{hidden_size}x{num_layers})")


def load_pm25_task(root: str | Path | None = None, *, train_stride: int = PM25_DEFAULTS["train_stride"],
                   eval_stride: int = PM25_DEFAULTS["eval_stride"]) -> TaskData:
    """Beijing train / val / test and Guangzhou 2015 as the shift set, every ``*_stride``-th window."""
    from pyro_lowrank.datasets import load_pm25

    train_stride = check_positive_int(train_stride, "train_stride")
    eval_stride = check_positive_int(eval_stride, "eval_stride")
    data = load_pm25(root)
    pick = lambda x, y, k: (x[::k].float().contiguous(), y[::k].float().reshape(-1))  # noqa: E731
    return TaskData(
        name="pm25", kind="regression",
        train=pick(data.x_train, data.y_train, train_stride),
        val=pick(data.x_val, data.y_val, eval_stride),
        test=pick(data.x_test, data.y_test, eval_stride),
        shift=pick(data.x_target, data.y_target, eval_stride),
        y_mean=float(data.y_mean), y_std=float(data.y_std),
        info={},
    )


def pm25_config(name: str, task: TaskData, *, seed: int, num_epochs: int = PM25_DEFAULTS["num_epochs"],
                progress: bool = False) -> dict[str, Any]:
    """``make_method`` keyword arguments of method ``name`` on the PM2.5 task (see the module docstring)."""
    window, in_features = (int(d) for d in task.train[0].shape[1:])
    common: dict[str, Any] = {
        "architecture": lstm_architecture(in_features, window), "likelihood": "gaussian",
        "noise_scale": TRAIN_NOISE_SCALE, "num_epochs": num_epochs, "batch_size": PM25_DEFAULTS["batch_size"],
        "lr": PM25_DEFAULTS["lr"], "patience": PM25_DEFAULTS["patience"], "seed": seed, "progress": progress,
        "predict_batch_size": PM25_DEFAULTS["predict_batch_size"],
    }
    config = method_config(name, common, PM25_SETTINGS, PM25_DEFAULTS, num_epochs)
    if name in ("lowrank", "lowrank_svd"):
        config["rank"] = config["architecture"].lowrank_rank  # recorded in the results' settings
    return config


def run_pm25(
    methods: Sequence[str] | str | None = None,
    *,
    seeds: Sequence[int] = PM25_DEFAULTS["seeds"],
    num_epochs: int = PM25_DEFAULTS["num_epochs"],
    num_samples: int = PM25_DEFAULTS["num_samples"],
    root: str | Path | None = None,
    train_stride: int = PM25_DEFAULTS["train_stride"],
    eval_stride: int = PM25_DEFAULTS["eval_stride"],
    task: TaskData | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    strict: bool = False,
    journal: str | Path | None = None,
) -> ExperimentResult:
    """Run ``methods`` (default: all ten; Laplace over all weights is skipped) for every seed on the PM2.5 task.

    ``task`` replaces the real data (tests use a small synthetic regression task with a shift set).
    """
    methods = resolve_methods(methods, DEFAULT_METHODS)
    seeds = check_seeds(seeds)
    num_samples = check_positive_int(num_samples, "num_samples")
    num_epochs = check_positive_int(num_epochs, "num_epochs")

    def config_fn(name: str, t: TaskData, seed: int) -> dict[str, Any]:
        return pm25_config(name, t, seed=seed, num_epochs=num_epochs)

    def go() -> ExperimentResult:
        data = task if task is not None else load_pm25_task(root, train_stride=train_stride,
                                                            eval_stride=eval_stride)
        if data.kind != "regression" or data.shift is None:
            raise ValueError(f"task must be a regression task with a shift set, got kind={data.kind!r}, "
                             f"shift={'None' if data.shift is None else 'given'}")
        result = run_task(data, methods, seeds, config_fn, num_samples=num_samples, experiment="pm25",
                          tune_noise=True, device=device, progress=progress, strict=strict,
                          journal=journal)
        result.metadata["data"] = {
            "source": "Beijing (train 2010-2013, val 2014, test 2015)", "shift": "Guangzhou 2015",
            "train_stride": train_stride if task is None else "given task",
            "eval_stride": eval_stride if task is None else "given task",
            "n_train": len(data.train[1]), "n_val": len(data.val[1]) if data.val is not None else 0,
            "n_test": len(data.test[1]), "n_shift": len(data.shift[1]), "window": tuple(data.train[0].shape[1:]),
            "y_mean": data.y_mean, "y_std": data.y_std}
        return result

    result = timed(go)
    result.aggregates = aggregate(result.rows)
    result.metadata.update({
        "methods": methods, "seeds": list(seeds), "num_epochs": num_epochs, "num_samples": num_samples,
        "train_noise_scale": TRAIN_NOISE_SCALE,
        "protocol": "2-layer LSTM H=64 on 24 h x 15 features, linear read-out; low-rank W_ih r=14, W_hh r=20, "
                    "read-out r=1; Adam 1e-3, batch 64, early stopping on Beijing 2014 (patience 3); predictive "
                    "noise tuned on validation; OOD score: predictive standard deviation (Guangzhou positive)",
    })
    return result
