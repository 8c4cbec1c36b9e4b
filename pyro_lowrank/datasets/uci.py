r"""The UCI regression benchmark with the fixed splits of Hernandez-Lobato & Adams (2015) / Gal & Ghahramani (2016).

Files per dataset (``uci_regression/<name>/data/``): ``data.txt`` (whitespace-separated, no header),
``index_features.txt`` / ``index_target.txt`` (column indices), ``index_train_<k>.txt`` / ``index_test_<k>.txt``
(0-based row indices; the two are disjoint and cover every row), ``n_splits.txt``, ``n_hidden.txt``,
``n_epochs.txt`` (the protocol's hidden width and epochs).

Normalisation, as in Gal's ``net.py``: with the train rows of split :math:`k`,

.. math:: \tilde x = (x - \bar x_{\text{train}}) / s_{x,\text{train}}, \qquad
          \tilde y = (y - \bar y_{\text{train}}) / s_{y,\text{train}},

population std, and a feature constant on the train rows (naval has two) gets :math:`s = 1` (constancy is
tested with max = min, since the computed std of a constant column can be a rounding residue). Predictions return to
the original units as :math:`y = \bar y + s_y \tilde y` (RMSE scales by :math:`s_y`; a Gaussian log likelihood
gains :math:`-\log s_y`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import torch

from pyro_lowrank.datasets._files import fetch

__all__ = ["UCI_DATASETS", "UCIData", "load_uci", "num_splits"]

logger = logging.getLogger(__name__)

UCI_DATASETS = ("concrete", "energy", "kin8nm", "naval-propulsion-plant", "power-plant",
                "protein-tertiary-structure", "wine-quality-red", "yacht")
_NUM_SPLITS = {name: 5 if name == "protein-tertiary-structure" else 20 for name in UCI_DATASETS}


@dataclass(frozen=True)
class UCIData:
    """One split of one UCI dataset. ``x_*`` float32 ``(n, d)``, ``y_*`` float32 ``(n,)`` (normalised).

    Attributes
    ----------
    x_train, y_train, x_test, y_test : Tensor
        Normalised with the train statistics.
    x_mean, x_std : Tensor
        ``(d,)`` train statistics of the features.
    y_mean, y_std : float
        Train statistics of the target: ``y = y_mean + y_std * y_normalised``.
    train_index, test_index : Tensor
        int64 rows of ``data.txt`` (the split files).
    n_hidden, n_epochs : int
        Hidden width and number of epochs of the protocol (``n_hidden.txt``, ``n_epochs.txt``).
    name : str
    split : int
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    x_mean: torch.Tensor
    x_std: torch.Tensor
    y_mean: float
    y_std: float
    train_index: torch.Tensor
    test_index: torch.Tensor
    n_hidden: int
    n_epochs: int
    name: str
    split: int


def _check_name(name: object) -> str:
    if name not in UCI_DATASETS:
        raise ValueError(f"name must be one of {list(UCI_DATASETS)}, got {name!r}")
    return str(name)


def num_splits(name: str) -> int:
    """Number of fixed train/test splits of a dataset: 20, except ``protein-tertiary-structure`` (5)."""
    return _NUM_SPLITS[_check_name(name)]


def _integers(path: os.PathLike) -> np.ndarray:
    return np.loadtxt(path, dtype=np.float64, ndmin=1).astype(np.int64)


def load_uci(name: str, split: int, root: str | os.PathLike | None = None) -> UCIData:
    """Load split ``split`` of UCI regression dataset ``name`` (the module docstring has the normalisation).

    Parameters
    ----------
    name : str
        One of :data:`UCI_DATASETS`.
    split : int
        In ``[0, num_splits(name))``.
    root : str or os.PathLike, optional
        Data root holding ``uci_regression/``.
    """
    name = _check_name(name)
    count = num_splits(name)
    if isinstance(split, bool) or not isinstance(split, (int, np.integer)) or not 0 <= split < count:
        raise ValueError(f"split must be an integer in [0, {count}) for {name!r}, got {split!r}")
    split = int(split)
    folder = f"uci_regression/{name}/data"

    def path(file: str):
        return fetch(f"{folder}/{file}", root)

    data = np.loadtxt(path("data.txt"), dtype=np.float64, ndmin=2)
    features = _integers(path("index_features.txt"))
    target = int(_integers(path("index_target.txt"))[0])
    train_index = _integers(path(f"index_train_{split}.txt"))
    test_index = _integers(path(f"index_test_{split}.txt"))
    n_hidden = int(_integers(path("n_hidden.txt"))[0])
    n_epochs = int(_integers(path("n_epochs.txt"))[0])

    x, y = data[:, features], data[:, target]
    x_mean, x_std = x[train_index].mean(axis=0), x[train_index].std(axis=0)
    x_std = np.where(np.ptp(x[train_index], axis=0) > 0, x_std, 1.0)  # constant: std may be a rounding residue
    y_mean, y_std = float(y[train_index].mean()), float(y[train_index].std())
    if np.ptp(y[train_index]) == 0:
        raise ValueError(f"{name} split {split}: the train targets are constant, cannot normalise")

    def tensor(array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(array), dtype=torch.float32)

    logger.info("uci %s split %d: %d train, %d test rows, %d features", name, split, len(train_index),
                len(test_index), len(features))
    return UCIData(
        x_train=tensor((x[train_index] - x_mean) / x_std), y_train=tensor((y[train_index] - y_mean) / y_std),
        x_test=tensor((x[test_index] - x_mean) / x_std), y_test=tensor((y[test_index] - y_mean) / y_std),
        x_mean=tensor(x_mean), x_std=tensor(x_std), y_mean=y_mean, y_std=y_std,
        train_index=torch.as_tensor(train_index), test_index=torch.as_tensor(test_index),
        n_hidden=n_hidden, n_epochs=n_epochs, name=name, split=split,
    )
