r"""UCI Heart Disease (four hospitals) as a population-shift benchmark.

Data: the ``processed.{cleveland,hungarian,switzerland,va}.data`` files of UCI dataset 45 (303, 294, 123 and 200
rows; 14 comma-separated columns, ``?`` = missing). Target :math:`y = \mathbb 1[\text{num} > 0]` (any angiographic
disease). **Source** = Cleveland + Hungary, split stratified-random into train / val / test; **shift** = Switzerland +
VA, all rows, never used to fit anything.

Preprocessing (every statistic is computed on the source TRAIN rows only and then applied unchanged to val, test and
shift):

1. Missing values: ``?`` cells, and the physiologically impossible zeros ``chol = 0`` (all of Switzerland, 49 VA
   rows) and ``trestbps = 0`` (one VA row), are missing.
2. Numeric columns ``age, sex, trestbps, chol, fbs, thalach, exang, oldpeak, ca`` (``ca`` is a count, kept numeric;
   ``sex, fbs, exang`` are 0/1): missing -> the train median :math:`\tilde x_j`.
3. Categorical columns -> one-hot over the categories of ``heart-disease.names``: ``cp`` {1,2,3,4}, ``restecg``
   {0,1,2}, ``slope`` {1,2,3}, ``thal`` {3,6,7}; a missing value is the all-zero code.
4. Missing indicators :math:`m_j = \mathbb 1[x_j \text{ missing}]` for the fixed list :data:`MISSING_INDICATORS`: the
   10 columns with a missing value in *any* of the four files. The list depends only on which input cells are
   missing (never on labels), and is fixed so that every seed has the same 32 features.
5. Standardisation of all 32 columns: :math:`z = (x - \mu_{\text{train}}) / \sigma_{\text{train}}` (population
   std; a column constant on train gets :math:`\sigma = 1`).

Split: rows are grouped by (hospital, label); each group is permuted with ``numpy.random.default_rng(seed)`` and
``round(test_fraction * n)`` rows go to test, ``round(val_fraction * n)`` to val and the rest to train.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import torch

from pyro_lowrank.datasets._files import fetch

__all__ = ["HEART_COLUMNS", "HOSPITALS", "HeartDiseaseData", "MISSING_INDICATORS", "load_heart_disease"]

logger = logging.getLogger(__name__)

HEART_COLUMNS = ("age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalach", "exang", "oldpeak", "slope",
                 "ca", "thal", "num")
HOSPITALS = ("cleveland", "hungarian", "switzerland", "va")
SOURCE_HOSPITALS = ("cleveland", "hungarian")
SHIFT_HOSPITALS = ("switzerland", "va")
NUMERIC = ("age", "sex", "trestbps", "chol", "fbs", "thalach", "exang", "oldpeak", "ca")
CATEGORIES = {"cp": (1, 2, 3, 4), "restecg": (0, 1, 2), "slope": (1, 2, 3), "thal": (3, 6, 7)}
ZERO_IS_MISSING = ("trestbps", "chol")
MISSING_INDICATORS = ("trestbps", "chol", "fbs", "restecg", "thalach", "exang", "oldpeak", "slope", "ca", "thal")
FEATURE_NAMES = (
    NUMERIC
    + tuple(f"{column}={value}" for column, values in CATEGORIES.items() for value in values)
    + tuple(f"{column}_missing" for column in MISSING_INDICATORS)
)


@dataclass(frozen=True)
class HeartDiseaseData:
    """Heart disease splits. ``x_*`` float32 ``(n, 32)``, ``y_*`` float32 ``(n,)`` in {0, 1}.

    Attributes
    ----------
    x_train, y_train, x_val, y_val, x_test, y_test : Tensor
        Source (Cleveland + Hungary) splits.
    x_shift, y_shift : Tensor
        Shifted target population (Switzerland then VA, file order).
    feature_names : tuple of str
        Names of the 32 columns of ``x``.
    mean, std : Tensor
        ``(32,)`` standardisation statistics of the train rows (before standardisation).
    medians : Tensor
        ``(9,)`` train medians used to impute the numeric columns :data:`NUMERIC`.
    idx_train, idx_val, idx_test : Tensor
        int64 rows of each split in the source table (Cleveland rows ``0..302``, then Hungary ``303..596``).
    hospital_shift : Tensor
        int64 hospital of each shift row: 2 = Switzerland, 3 = VA (indices into :data:`HOSPITALS`).
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    x_shift: torch.Tensor
    y_shift: torch.Tensor
    feature_names: tuple[str, ...]
    mean: torch.Tensor
    std: torch.Tensor
    medians: torch.Tensor
    idx_train: torch.Tensor
    idx_val: torch.Tensor
    idx_test: torch.Tensor
    hospital_shift: torch.Tensor


def read_hospital(hospital: str, root: str | os.PathLike | None = None) -> np.ndarray:
    """Raw ``(n, 14)`` float64 table of one hospital, ``NaN`` for ``?``; columns :data:`HEART_COLUMNS`."""
    if hospital not in HOSPITALS:
        raise ValueError(f"hospital must be one of {list(HOSPITALS)}, got {hospital!r}")
    path = fetch(f"heart_disease/processed.{hospital}.data", root)
    rows = []
    for number, line in enumerate(path.read_text(encoding="ascii").splitlines(), start=1):
        if not line.strip():
            continue
        cells = line.strip().split(",")
        if len(cells) != len(HEART_COLUMNS):
            raise ValueError(f"{path}: line {number} has {len(cells)} fields, expected {len(HEART_COLUMNS)}")
        rows.append([np.nan if cell.strip() == "?" else float(cell) for cell in cells])
    return np.asarray(rows, dtype=np.float64)


def _raw_features(table: np.ndarray) -> np.ndarray:
    """Unstandardised, unimputed ``(n, 32)`` design matrix (NaN where a numeric value is missing)."""
    col = {name: table[:, i].copy() for i, name in enumerate(HEART_COLUMNS)}
    for name in ZERO_IS_MISSING:
        col[name][col[name] == 0] = np.nan
    parts = [col[name] for name in NUMERIC]
    for name, values in CATEGORIES.items():
        parts += [(col[name] == value).astype(np.float64) for value in values]  # NaN compares False: all-zero code
    parts += [np.isnan(col[name]).astype(np.float64) for name in MISSING_INDICATORS]
    return np.stack(parts, axis=1)


def _stratified_split(groups: np.ndarray, seed: int, val_fraction: float, test_fraction: float):
    rng = np.random.default_rng(seed)
    train, val, test = [], [], []
    for group in np.unique(groups):
        rows = rng.permutation(np.flatnonzero(groups == group))
        n_test = int(round(test_fraction * len(rows)))
        n_val = int(round(val_fraction * len(rows)))
        test.append(rows[:n_test])
        val.append(rows[n_test:n_test + n_val])
        train.append(rows[n_test + n_val:])
    return tuple(np.sort(np.concatenate(part)) for part in (train, val, test))


def load_heart_disease(
    root: str | os.PathLike | None = None,
    seed: int = 0,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
) -> HeartDiseaseData:
    """Load the heart disease population-shift benchmark (the module docstring lists every preprocessing step).

    Parameters
    ----------
    root : str or os.PathLike, optional
        Data root holding ``heart_disease/`` (default :func:`~pyro_lowrank.datasets.default_root`).
    seed : int
        Seed of the stratified (hospital x label) train / val / test split of the source rows.
    val_fraction, test_fraction : float
        Fractions of each (hospital, label) group sent to val and test; both >= 0 with sum < 1.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= float(value) < 1.0:
            raise ValueError(f"{name} must lie in [0, 1), got {value!r}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}")

    tables = {hospital: read_hospital(hospital, root) for hospital in HOSPITALS}
    source = np.concatenate([tables[h] for h in SOURCE_HOSPITALS])
    shift = np.concatenate([tables[h] for h in SHIFT_HOSPITALS])
    source_hospital = np.repeat(np.arange(2), [len(tables[h]) for h in SOURCE_HOSPITALS])
    shift_hospital = np.repeat(np.arange(2, 4), [len(tables[h]) for h in SHIFT_HOSPITALS])
    y_source = (source[:, -1] > 0).astype(np.float64)
    y_shift = (shift[:, -1] > 0).astype(np.float64)

    idx_train, idx_val, idx_test = _stratified_split(source_hospital * 2 + y_source.astype(int), int(seed),
                                                     float(val_fraction), float(test_fraction))
    raw_source, raw_shift = _raw_features(source), _raw_features(shift)
    numeric = slice(0, len(NUMERIC))
    medians = np.nanmedian(raw_source[idx_train, numeric], axis=0)
    if np.isnan(medians).any():
        empty = [NUMERIC[i] for i in np.flatnonzero(np.isnan(medians))]
        raise ValueError(f"the train split has no observed value for {empty}; use a smaller val/test fraction")

    def impute(raw: np.ndarray) -> np.ndarray:
        out = raw.copy()
        block = out[:, numeric]
        out[:, numeric] = np.where(np.isnan(block), medians, block)
        return out

    filled_source, filled_shift = impute(raw_source), impute(raw_shift)
    mean = filled_source[idx_train].mean(axis=0)
    std = filled_source[idx_train].std(axis=0)
    std = np.where(np.ptp(filled_source[idx_train], axis=0) > 0, std, 1.0)  # constant on train: std 1

    def tensor(array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(array), dtype=torch.float32)

    def standardise(array: np.ndarray) -> torch.Tensor:
        return tensor((array - mean) / std)

    logger.info("heart disease: %d train, %d val, %d test source rows (seed %d), %d shift rows; %d features",
                len(idx_train), len(idx_val), len(idx_test), seed, len(shift), len(FEATURE_NAMES))
    return HeartDiseaseData(
        x_train=standardise(filled_source[idx_train]), y_train=tensor(y_source[idx_train]),
        x_val=standardise(filled_source[idx_val]), y_val=tensor(y_source[idx_val]),
        x_test=standardise(filled_source[idx_test]), y_test=tensor(y_source[idx_test]),
        x_shift=standardise(filled_shift), y_shift=tensor(y_shift),
        feature_names=FEATURE_NAMES, mean=tensor(mean), std=tensor(std), medians=tensor(medians),
        idx_train=torch.as_tensor(idx_train, dtype=torch.int64), idx_val=torch.as_tensor(idx_val, dtype=torch.int64),
        idx_test=torch.as_tensor(idx_test, dtype=torch.int64),
        hospital_shift=torch.as_tensor(shift_hospital, dtype=torch.int64),
    )
