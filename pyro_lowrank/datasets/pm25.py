r"""PM2.5 of five Chinese cities (UCI 394) as an hourly forecasting benchmark with a city shift.

Each city file has one row per hour from 2010-01-01 00:00 to 2015-12-31 23:00 (52,584 rows, no gaps), so the row
number is the time index :math:`t` (hours since 2010-01-01 00:00).

Series. The target is the ``PM_US Post`` column (the US consulate / embassy monitor, the only PM column present in
all five cities; Beijing also has Dongsi, Dongsihuan, Nongzhanguan, Guangzhou City Station and 5th Middle School).
Per hour the loader builds the 17 candidate features of :data:`PM25_ALL_FEATURES`:

* ``PM_US Post, DEWP, HUMI, PRES, TEMP, Iws, precipitation, Iprec`` (raw values);
* ``cbwd_NE, cbwd_NW, cbwd_SE, cbwd_SW, cbwd_cv``: one-hot combined wind direction (``cv`` = calm / variable;
  Beijing never reports ``SW``, so that column is constant 0 on Beijing);
* ``hour_sin, hour_cos`` :math:`= \sin, \cos(2\pi h / 24)` and ``month_sin, month_cos``
  :math:`= \sin, \cos(2\pi (m-1) / 12)`.

The default :data:`PM25_FEATURES` are the first 15 (PM2.5, 7 weather columns, 5 wind one-hots, hour of day): the
paper's 15 inputs are not listed, and 8 + 5 + 2 = 15 uses every measured column; ``month_*`` can be added through
``features``.

Missing values: ``NA`` cells and the sentinels ``-9999`` (Guangzhou DEWP/HUMI, 2013-12-14) and ``999990`` (Beijing
precipitation/Iprec, 2015-11-07 13:00) are missing; a missing ``cbwd`` makes all five one-hots missing.

Windows. For a window of length :math:`L` and horizon :math:`k`, the input is rows :math:`t-L+1, \dots, t` and the
target is PM2.5 at :math:`t+k`. A window is dropped when any input feature or the target is missing (the counts are
in ``counts`` and the log). A window belongs to a period only when its first input row and its target row both lie
in it (windows straddling a year boundary are dropped), so no hour is shared between splits.

Splits. Source city: train = 2010-2013, val = 2014, test = 2015. Target city: the years ``target_years`` (default
2015 only, the same period as the source test, so the shift is the city and not the time).

Normalisation. Every feature and the target are standardised with the mean and population std of the source city's
train-period hours (2010-2013) on which that value is present (a constant column gets std 1); the target uses the
statistics of ``PM_US Post``, returned as ``y_mean`` / ``y_std``: MAE in ug/m3 = ``y_std * MAE_normalised``.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from pyro_lowrank.datasets._files import fetch

__all__ = ["PM25_ALL_FEATURES", "PM25_CITIES", "PM25_FEATURES", "PM25Data", "load_pm25", "read_city"]

logger = logging.getLogger(__name__)

PM25_CITIES = ("Beijing", "Chengdu", "Guangzhou", "Shanghai", "Shenyang")
TARGET_COLUMN = "PM_US Post"
WEATHER = ("DEWP", "HUMI", "PRES", "TEMP", "Iws", "precipitation", "Iprec")
WIND = ("NE", "NW", "SE", "SW", "cv")
PM25_ALL_FEATURES = ((TARGET_COLUMN,) + WEATHER + tuple(f"cbwd_{d}" for d in WIND)
                     + ("hour_sin", "hour_cos", "month_sin", "month_cos"))
PM25_FEATURES = PM25_ALL_FEATURES[:15]
SENTINELS = (-9999.0, 999990.0)
TRAIN_YEARS = (2010, 2011, 2012, 2013)
VAL_YEARS = (2014,)
TEST_YEARS = (2015,)
NUM_HOURS = 52584


@dataclass(frozen=True)
class PM25Data:
    """PM2.5 windows. ``x_*`` float32 ``(N, window, F)``, ``y_*`` float32 ``(N,)`` (standardised).

    Attributes
    ----------
    x_train, y_train, x_val, y_val, x_test, y_test : Tensor
        Source city, 2010-2013 / 2014 / 2015.
    x_target, y_target : Tensor
        Target city, ``target_years``.
    y_mean, y_std : float
        Target normalisation (source train ``PM_US Post``): ``pm25 = y_mean + y_std * y``.
    feature_names : tuple of str
        The F features, in column order.
    feature_mean, feature_std : Tensor
        ``(F,)`` source-train statistics used to standardise the inputs.
    t_train, t_val, t_test, t_target : Tensor
        int64 hour index (rows since 2010-01-01 00:00) of each window's target.
    counts : dict
        Per split: ``{"windows": candidates, "kept": kept, "dropped_missing": dropped}``.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    x_target: torch.Tensor
    y_target: torch.Tensor
    y_mean: float
    y_std: float
    feature_names: tuple[str, ...]
    feature_mean: torch.Tensor
    feature_std: torch.Tensor
    t_train: torch.Tensor
    t_val: torch.Tensor
    t_test: torch.Tensor
    t_target: torch.Tensor
    source: str
    target: str
    window: int
    horizon: int
    counts: dict = field(default_factory=dict)


def read_city(city: str, root: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All 17 candidate features of one city, ``(52584, 17)`` float64 with NaN for missing, and the years ``(52584,)``.

    Columns are :data:`PM25_ALL_FEATURES`; the sentinels :data:`SENTINELS` and ``NA`` become NaN.
    """
    if city not in PM25_CITIES:
        raise ValueError(f"city must be one of {list(PM25_CITIES)}, got {city!r}")
    path = fetch(f"pm25_five_cities/{city}PM20100101_20151231.csv", root)
    with open(path, newline="", encoding="ascii") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        rows = [row for row in reader if row]
    if len(rows) != NUM_HOURS:
        raise ValueError(f"{path}: expected {NUM_HOURS} hourly rows, got {len(rows)}")
    column = {name: i for i, name in enumerate(header)}
    missing = [name for name in ("year", "month", "hour", "cbwd", TARGET_COLUMN) + WEATHER if name not in column]
    if missing:
        raise ValueError(f"{path}: columns {missing} are missing from the header {header}")

    def numbers(name: str) -> np.ndarray:
        values = np.array([np.nan if row[column[name]] == "NA" else float(row[column[name]]) for row in rows])
        values[np.isin(values, SENTINELS)] = np.nan
        return values

    year, month, hour = numbers("year"), numbers("month"), numbers("hour")
    wind = np.array([row[column["cbwd"]] for row in rows])
    one_hot = np.stack([(wind == d).astype(np.float64) for d in WIND], axis=1)
    one_hot[wind == "NA"] = np.nan
    features = np.column_stack(
        [numbers(TARGET_COLUMN)] + [numbers(name) for name in WEATHER] + [one_hot]
        + [np.sin(2 * np.pi * hour / 24), np.cos(2 * np.pi * hour / 24),
           np.sin(2 * np.pi * (month - 1) / 12), np.cos(2 * np.pi * (month - 1) / 12)]
    )
    return features, year.astype(np.int64)


def _windows(features: np.ndarray, target: np.ndarray, years: np.ndarray, period: Sequence[int], window: int,
             horizon: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Windows whose first input row and target row both lie in ``period``; drop those with a missing value."""
    n = len(target)
    ends = np.arange(window - 1, n - horizon)  # t: last input row
    starts, targets = ends - window + 1, ends + horizon
    in_period = np.isin(years[starts], period) & np.isin(years[targets], period)
    ends, starts, targets = ends[in_period], starts[in_period], targets[in_period]
    row_ok = ~np.isnan(features).any(axis=1)
    bad_before = np.concatenate([[0], np.cumsum(~row_ok)])  # bad rows among 0..i-1
    inputs_ok = bad_before[ends + 1] - bad_before[starts] == 0
    keep = inputs_ok & ~np.isnan(target[targets])
    counts = {"windows": int(len(ends)), "kept": int(keep.sum()), "dropped_missing": int((~keep).sum())}
    starts, targets = starts[keep], targets[keep]
    x = features[starts[:, None] + np.arange(window)[None, :]]
    return x, target[targets], targets, counts


def load_pm25(
    root: str | os.PathLike | None = None,
    source: str = "Beijing",
    target: str = "Guangzhou",
    window: int = 24,
    horizon: int = 1,
    *,
    features: Sequence[str] | None = None,
    target_years: Sequence[int] = (2015,),
) -> PM25Data:
    """Load hourly PM2.5 forecasting windows for a source city and a shifted target city.

    The module docstring documents the series, features, missing-value handling, windows, splits and normalisation.

    Parameters
    ----------
    root : str or os.PathLike, optional
        Data root holding ``pm25_five_cities/``.
    source, target : str
        Cities (:data:`PM25_CITIES`); the source provides train / val / test and every normalisation statistic.
    window, horizon : int
        Input length L (hours) and how many hours after the last input the target lies (>= 1).
    features : sequence of str, optional
        Subset of :data:`PM25_ALL_FEATURES` in the wanted order (default :data:`PM25_FEATURES`, 15 columns).
    target_years : sequence of int
        Years of the target city to return (default ``(2015,)``).
    """
    for name, city in (("source", source), ("target", target)):
        if city not in PM25_CITIES:
            raise ValueError(f"{name} must be one of {list(PM25_CITIES)}, got {city!r}")
    for name, value in (("window", window), ("horizon", horizon)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    features = tuple(PM25_FEATURES if features is None else features)
    unknown = [name for name in features if name not in PM25_ALL_FEATURES]
    if unknown or not features or len(set(features)) != len(features):
        raise ValueError(f"features must be distinct names from {list(PM25_ALL_FEATURES)}, got {list(features)}")
    bad_years = [year for year in target_years if year not in range(2010, 2016)]
    if bad_years or not len(target_years):
        raise ValueError(f"target_years must be a non-empty sequence of years in 2010..2015, got {list(target_years)}")
    columns = [PM25_ALL_FEATURES.index(name) for name in features]

    raw_source, years_source = read_city(source, root)
    raw_target, years_target = read_city(target, root)
    train_rows = np.isin(years_source, TRAIN_YEARS)
    stats = raw_source[train_rows]
    mean, std = np.nanmean(stats, axis=0), np.nanstd(stats, axis=0)
    std = np.where(np.nanmax(stats, axis=0) > np.nanmin(stats, axis=0), std, 1.0)  # constant on train: std 1
    y_mean, y_std = float(mean[0]), float(std[0])

    def prepare(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z = ((raw - mean) / std).astype(np.float32)
        return z[:, columns], z[:, 0]

    x_source, y_source = prepare(raw_source)
    x_shift, y_shift = prepare(raw_target)
    splits = {
        "train": (x_source, y_source, years_source, TRAIN_YEARS),
        "val": (x_source, y_source, years_source, VAL_YEARS),
        "test": (x_source, y_source, years_source, TEST_YEARS),
        "target": (x_shift, y_shift, years_target, tuple(target_years)),
    }
    out, counts = {}, {}
    for split, (x, y, years, period) in splits.items():
        xs, ys, ts, counts[split] = _windows(x, y, years, period, int(window), int(horizon))
        out[split] = (torch.as_tensor(xs, dtype=torch.float32), torch.as_tensor(ys, dtype=torch.float32),
                      torch.as_tensor(ts, dtype=torch.int64))
        logger.info("pm25 %s (%s, years %s): %d windows, %d kept, %d dropped for missing values", split,
                    target if split == "target" else source, list(period), counts[split]["windows"],
                    counts[split]["kept"], counts[split]["dropped_missing"])
    return PM25Data(
        x_train=out["train"][0], y_train=out["train"][1], x_val=out["val"][0], y_val=out["val"][1],
        x_test=out["test"][0], y_test=out["test"][1], x_target=out["target"][0], y_target=out["target"][1],
        y_mean=y_mean, y_std=y_std, feature_names=features,
        feature_mean=torch.as_tensor(mean[columns], dtype=torch.float32),
        feature_std=torch.as_tensor(std[columns], dtype=torch.float32),
        t_train=out["train"][2], t_val=out["val"][2], t_test=out["test"][2], t_target=out["target"][2],
        source=source, target=target, window=int(window), horizon=int(horizon), counts=counts,
    )
