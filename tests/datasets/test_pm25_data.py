"""Tests for load_pm25: row counts, missing values and sentinels, window alignment, chronological splits without
shared hours, and normalisation statistics recomputed here from the raw source-city CSV."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from pyro_lowrank.datasets.pm25 import PM25_ALL_FEATURES, PM25_FEATURES, load_pm25, read_city

HOURS = 52584  # MANIFEST.md: rows per city, 2010-01-01 00:00 .. 2015-12-31 23:00
YEAR_START = {2010: 0, 2011: 8760, 2012: 17520, 2013: 26304, 2014: 35064, 2015: 43824, 2016: HOURS}


@pytest.fixture(scope="module")
def pm25(data_root):
    return load_pm25(data_root)


def _column(data_root, city, name):
    """Independent reading of one column with the csv module (NaN for NA and the sentinels)."""
    with open(data_root / "pm25_five_cities" / f"{city}PM20100101_20151231.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        values = [math.nan if row[name] == "NA" else float(row[name]) for row in reader]
    return np.array([math.nan if v in (-9999.0, 999990.0) else v for v in values])


def _year(t):
    return np.searchsorted(np.array(list(YEAR_START.values())), np.asarray(t), side="right") - 1 + 2010


def test_row_counts_and_sentinels(data_root):
    for city in ("Beijing", "Guangzhou"):
        features, years = read_city(city, data_root)
        assert features.shape == (HOURS, 17) and years.shape == (HOURS,)
        assert [int((years == y).sum()) for y in range(2010, 2016)] == [8760, 8760, 8784, 8760, 8760, 8760]
    guangzhou, _ = read_city("Guangzhou", data_root)
    dewp, humi = PM25_ALL_FEATURES.index("DEWP"), PM25_ALL_FEATURES.index("HUMI")
    assert np.isnan(guangzhou[34636:34640, [dewp, humi]]).all()  # rows No 34637-34640 hold -9999
    beijing, _ = read_city("Beijing", data_root)
    assert np.nanmax(beijing[:, PM25_ALL_FEATURES.index("precipitation")]) < 1000  # the 999990 cell is missing
    assert (np.nansum(beijing[:, 8:13], axis=1)[~np.isnan(beijing[:, 8])] == 1).all()  # one-hot wind


def test_shapes_counts_and_finiteness(pm25):
    assert pm25.feature_names == PM25_FEATURES and len(PM25_FEATURES) == 15
    for split in ("train", "val", "test", "target"):
        x, y, t = getattr(pm25, f"x_{split}"), getattr(pm25, f"y_{split}"), getattr(pm25, f"t_{split}")
        counts = pm25.counts[split]
        assert x.dtype == y.dtype == torch.float32 and x.shape == (len(y), 24, 15) and t.shape == y.shape
        assert torch.isfinite(x).all() and torch.isfinite(y).all()
        assert counts["kept"] == len(y) and counts["windows"] == counts["kept"] + counts["dropped_missing"]
        assert 0.5 * counts["windows"] < counts["kept"]
    assert pm25.counts["train"]["windows"] == YEAR_START[2014] - 24  # windows inside 2010-2013
    assert pm25.counts["test"]["windows"] == 8760 - 24


def test_chronological_splits_share_no_hour(pm25):
    periods = {"train": (2010, 2013), "val": (2014, 2014), "test": (2015, 2015), "target": (2015, 2015)}
    hours = {}
    for split, (first, last) in periods.items():
        t = getattr(pm25, f"t_{split}").numpy()
        start = t - 1 - 23  # first input row (horizon 1, window 24)
        assert (_year(start) >= first).all() and (_year(t) <= last).all()
        hours[split] = set((start[:, None] + np.arange(25)).ravel().tolist())
    assert not (hours["train"] & hours["val"]) and not (hours["val"] & hours["test"])
    assert not (hours["train"] & hours["test"])


def test_windows_and_normalisation_match_the_raw_source_train_rows(data_root, pm25):
    pm = _column(data_root, "Beijing", "PM_US Post")
    train_pm = pm[: YEAR_START[2014]]
    y_mean, y_std = np.nanmean(train_pm), np.nanstd(train_pm)
    assert pm25.y_mean == pytest.approx(y_mean, rel=1e-12) and pm25.y_std == pytest.approx(y_std, rel=1e-12)
    # Target y at hour t; the last input row is t - 1 and the first t - 24, all de-standardised back to raw values.
    t = pm25.t_train.numpy()
    np.testing.assert_allclose(pm25.y_train.double().numpy() * y_std + y_mean, pm[t], rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(pm25.x_train[:, -1, 0].double().numpy() * y_std + y_mean, pm[t - 1], atol=1e-3)
    np.testing.assert_allclose(pm25.x_train[:, 0, 0].double().numpy() * y_std + y_mean, pm[t - 24], atol=1e-3)
    for name in ("DEWP", "PRES", "Iws", "precipitation"):
        raw = _column(data_root, "Beijing", name)
        j = PM25_FEATURES.index(name)
        mean, std = np.nanmean(raw[: YEAR_START[2014]]), np.nanstd(raw[: YEAR_START[2014]])
        assert pm25.feature_mean[j].item() == pytest.approx(mean, rel=1e-6)
        assert pm25.feature_std[j].item() == pytest.approx(std, rel=1e-6)
        np.testing.assert_allclose(pm25.x_test[:, -1, j].double().numpy() * std + mean, raw[pm25.t_test.numpy() - 1],
                                   atol=1e-3)
    # Guangzhou uses Beijing's statistics: its raw values come back with the SOURCE mean/std, and are not centred.
    gz = _column(data_root, "Guangzhou", "PM_US Post")
    np.testing.assert_allclose(pm25.y_target.double().numpy() * y_std + y_mean, gz[pm25.t_target.numpy()], atol=1e-3)
    assert pm25.y_target.mean() < -0.3  # Guangzhou is much cleaner than Beijing
    assert abs(pm25.x_train[:, -1, :].mean(0)).max() < 0.1  # train windows are close to centred


def test_options_and_validation(data_root):
    data = load_pm25(data_root, source="Guangzhou", target="Beijing", window=6, horizon=3,
                     features=("PM_US Post", "TEMP", "month_sin", "month_cos"), target_years=(2014, 2015))
    assert data.x_train.shape[1:] == (6, 4) and data.feature_names[2] == "month_sin"
    pm = _column(data_root, "Guangzhou", "PM_US Post")
    t = data.t_val.numpy()
    np.testing.assert_allclose(data.x_val[:, -1, 0].double().numpy() * data.y_std + data.y_mean, pm[t - 3], atol=1e-3)
    assert set(_year(data.t_target.numpy()).tolist()) == {2014, 2015}
    with pytest.raises(ValueError, match=r"target must be one of \['Beijing'.*got 'Paris'"):
        load_pm25(data_root, target="Paris")
    with pytest.raises(ValueError, match="features must be distinct names from"):
        load_pm25(data_root, features=("PM_US Post", "wind"))
    with pytest.raises(ValueError, match="window must be a positive integer, got 0"):
        load_pm25(data_root, window=0)
    with pytest.raises(ValueError, match=r"target_years must be a non-empty sequence of years in 2010..2015"):
        load_pm25(data_root, target_years=(2016,))
