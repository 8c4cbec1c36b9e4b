"""Tests for load_heart_disease: MANIFEST row counts, shapes, finiteness, a leak-free stratified split, and
preprocessing statistics that are recomputed here from the raw source-train rows."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from pyro_lowrank.datasets.heart import (
    CATEGORIES,
    FEATURE_NAMES,
    HOSPITALS,
    MISSING_INDICATORS,
    NUMERIC,
    load_heart_disease,
    read_hospital,
)

ROWS = {"cleveland": 303, "hungarian": 294, "switzerland": 123, "va": 200}  # MANIFEST.md
POSITIVES = {"cleveland": 139, "hungarian": 106, "switzerland": 115, "va": 149}  # num > 0


@pytest.fixture(scope="module")
def heart(data_root):
    return load_heart_disease(data_root, seed=0)


def _raw(data_root, hospital):
    """Independent reading of a file with the csv module: list of dicts, None for '?' and the impossible zeros."""
    names = ("age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalach", "exang", "oldpeak", "slope", "ca",
             "thal", "num")
    rows = []
    with open(data_root / "heart_disease" / f"processed.{hospital}.data", newline="") as handle:
        for cells in csv.reader(handle):
            row = {name: (None if cell == "?" else float(cell)) for name, cell in zip(names, cells)}
            for name in ("chol", "trestbps"):
                if row[name] == 0:
                    row[name] = None
            rows.append(row)
    return rows


def test_row_counts_and_labels_match_the_manifest(data_root, heart):
    for hospital in HOSPITALS:
        table = read_hospital(hospital, data_root)
        assert table.shape == (ROWS[hospital], 14)
        assert int((table[:, -1] > 0).sum()) == POSITIVES[hospital]
    n_source = ROWS["cleveland"] + ROWS["hungarian"]
    assert len(heart.y_train) + len(heart.y_val) + len(heart.y_test) == n_source
    assert heart.x_shift.shape == (ROWS["switzerland"] + ROWS["va"], 32)
    assert int(heart.y_shift.sum()) == POSITIVES["switzerland"] + POSITIVES["va"]
    assert (heart.hospital_shift == 2).sum() == 123 and (heart.hospital_shift == 3).sum() == 200


def test_shapes_dtypes_and_finiteness(heart):
    assert len(heart.feature_names) == 32 == len(FEATURE_NAMES)
    for x, y in ((heart.x_train, heart.y_train), (heart.x_val, heart.y_val), (heart.x_test, heart.y_test),
                 (heart.x_shift, heart.y_shift)):
        assert x.dtype == torch.float32 and y.dtype == torch.float32
        assert x.shape == (len(y), 32) and torch.isfinite(x).all()
        assert set(y.unique().tolist()) <= {0.0, 1.0}


def test_split_is_disjoint_covering_and_stratified(heart):
    parts = [set(heart.idx_train.tolist()), set(heart.idx_val.tolist()), set(heart.idx_test.tolist())]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert set().union(*parts) == set(range(597))
    assert (len(parts[1]), len(parts[2])) == (120, 120)  # round(0.2 n) in each (hospital, label) group
    hospital = (torch.arange(597) >= 303).long()
    labels = torch.cat([heart.y_train, heart.y_val, heart.y_test])[torch.cat([heart.idx_train, heart.idx_val,
                                                                               heart.idx_test]).argsort()]
    for idx in (heart.idx_val, heart.idx_test):  # each group loses 20% to val and 20% to test
        for h in (0, 1):
            for label in (0, 1):
                group = int(((hospital == h) & (labels == label)).sum())
                got = int(((hospital[idx] == h) & (labels[idx] == label)).sum())
                assert got == round(0.2 * group)


def test_seed_controls_the_split(data_root, heart):
    again = load_heart_disease(data_root, seed=0)
    other = load_heart_disease(data_root, seed=1)
    assert torch.equal(again.idx_train, heart.idx_train) and torch.equal(again.x_train, heart.x_train)
    assert not torch.equal(other.idx_train, heart.idx_train)


def test_standardisation_is_fitted_on_train_only(heart):
    mean, std = heart.x_train.double().mean(0), heart.x_train.double().std(0, unbiased=False)
    constant = heart.std == 1.0
    torch.testing.assert_close(mean, torch.zeros(32, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(std[~constant], torch.ones(int((~constant).sum()), dtype=torch.float64), atol=1e-5,
                               rtol=0)
    # The shifted hospitals are not forced to zero mean: cholesterol is unrecorded in Switzerland, etc.
    assert heart.x_shift.mean(0).abs().max() > 1.0


def test_statistics_recomputed_from_the_raw_train_rows(data_root, heart):
    source = _raw(data_root, "cleveland") + _raw(data_root, "hungarian")
    train = [source[i] for i in heart.idx_train.tolist()]
    medians = [float(np.median([row[name] for row in train if row[name] is not None])) for name in NUMERIC]
    torch.testing.assert_close(heart.medians, torch.tensor(medians, dtype=torch.float32))
    design = np.array([[row[name] if row[name] is not None else med for name, med in zip(NUMERIC, medians)]
                       + [float(row[name] == value) for name, values in CATEGORIES.items() for value in values]
                       + [float(row[name] is None) for name in MISSING_INDICATORS] for row in train])
    torch.testing.assert_close(heart.mean, torch.tensor(design.mean(0), dtype=torch.float32))
    std = design.std(0)
    torch.testing.assert_close(heart.std, torch.tensor(np.where(std > 0, std, 1.0), dtype=torch.float32))
    # Test rows: observed values come back exactly; missing ones are the TRAIN median (not a test statistic).
    test = [source[i] for i in heart.idx_test.tolist()]
    restored = (heart.x_test * heart.std + heart.mean).double()
    for r, row in enumerate(test):
        for j, name in enumerate(NUMERIC):
            expected = row[name] if row[name] is not None else medians[j]
            assert restored[r, j].item() == pytest.approx(expected, abs=1e-3)


def test_missing_indicator_list_is_every_column_missing_somewhere(data_root, heart):
    rows = [row for hospital in HOSPITALS for row in _raw(data_root, hospital)]
    names = ("age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalach", "exang", "oldpeak", "slope", "ca",
             "thal")
    assert MISSING_INDICATORS == tuple(name for name in names if any(row[name] is None for row in rows))
    chol_missing = heart.feature_names.index("chol_missing")
    shift_flags = (heart.x_shift[:, chol_missing] * heart.std[chol_missing] + heart.mean[chol_missing]).round()
    assert int(shift_flags[:123].sum()) == 123  # every Switzerland chol is 0 -> missing


def test_invalid_arguments_raise(data_root):
    with pytest.raises(ValueError, match=r"val_fraction \+ test_fraction must be < 1, got 0.5 \+ 0.5"):
        load_heart_disease(data_root, val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match="test_fraction must lie in \\[0, 1\\), got -0.1"):
        load_heart_disease(data_root, test_fraction=-0.1)
    with pytest.raises(ValueError, match="seed must be a non-negative integer, got 'a'"):
        load_heart_disease(data_root, seed="a")
    with pytest.raises(ValueError, match="hospital must be one of"):
        read_hospital("zurich", data_root)
