"""Tests for load_uci: MANIFEST shapes and protocol settings, disjoint and covering split files, and train-only
normalisation that maps back to the raw data.txt values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pyro_lowrank.datasets._files import fetch
from pyro_lowrank.datasets.uci import UCI_DATASETS, load_uci, num_splits

# MANIFEST.md: data rows, features, train/test per split, n_hidden, n_epochs
MANIFEST = {
    "concrete": (1030, 8, 927, 103, 50, 40),
    "energy": (768, 8, 691, 77, 50, 40),
    "kin8nm": (8192, 8, 7373, 819, 50, 40),
    "naval-propulsion-plant": (11934, 16, 10741, 1193, 50, 40),
    "power-plant": (9568, 4, 8611, 957, 50, 40),
    "protein-tertiary-structure": (45730, 9, 41157, 4573, 100, 20),
    "wine-quality-red": (1599, 11, 1439, 160, 50, 40),
    "yacht": (308, 6, 277, 31, 50, 40),
}


def test_dataset_list_and_split_counts(data_root):
    assert set(UCI_DATASETS) == set(MANIFEST)
    for name in UCI_DATASETS:
        expected = int(fetch(f"uci_regression/{name}/data/n_splits.txt", data_root).read_text())
        assert num_splits(name) == expected == (5 if name == "protein-tertiary-structure" else 20)


@pytest.mark.parametrize("name", UCI_DATASETS)
def test_shapes_protocol_and_normalisation(data_root, name):
    rows, features, n_train, n_test, n_hidden, n_epochs = MANIFEST[name]
    split = num_splits(name) - 1
    data = load_uci(name, split, data_root)
    assert data.x_train.shape == (n_train, features) and data.x_test.shape == (n_test, features)
    assert data.y_train.shape == (n_train,) and data.y_test.shape == (n_test,)
    assert (data.n_hidden, data.n_epochs, data.name, data.split) == (n_hidden, n_epochs, name, split)
    for tensor in (data.x_train, data.y_train, data.x_test, data.y_test):
        assert tensor.dtype == torch.float32 and torch.isfinite(tensor).all()
    # Train statistics only: train is centred with unit std (constant columns stay 0); test is not forced.
    x = data.x_train.double()
    assert x.mean(0).abs().max() < 1e-4
    varying = data.x_std != 1.0
    torch.testing.assert_close(x.std(0, unbiased=False)[varying], torch.ones(int(varying.sum()), dtype=x.dtype),
                               atol=1e-4, rtol=0)
    assert abs(data.y_train.double().mean()) < 1e-5 and abs(data.y_train.double().std(unbiased=False) - 1) < 1e-5
    # Mapping back with the returned statistics gives the raw data.txt rows of the split files.
    raw = np.loadtxt(data_root / "uci_regression" / name / "data" / "data.txt")
    assert raw.shape == (rows, features + (2 if name == "naval-propulsion-plant" else 1))
    target = int(np.loadtxt(data_root / "uci_regression" / name / "data" / "index_target.txt"))
    np.testing.assert_allclose(data.y_test.double().numpy() * data.y_std + data.y_mean,
                               raw[data.test_index.numpy(), target], rtol=1e-5, atol=1e-5 * data.y_std)
    assert data.y_mean == pytest.approx(raw[data.train_index.numpy(), target].mean(), rel=1e-12)
    columns = np.loadtxt(data_root / "uci_regression" / name / "data" / "index_features.txt", dtype=int)
    np.testing.assert_allclose(data.x_mean.double().numpy(), raw[data.train_index.numpy()][:, columns].mean(0),
                               rtol=1e-6)


@pytest.mark.parametrize("name", UCI_DATASETS)
def test_every_split_is_disjoint_and_covering(data_root, name):
    rows = MANIFEST[name][0]
    folder = data_root / "uci_regression" / name / "data"
    for split in range(num_splits(name)):
        train = np.loadtxt(fetch(f"uci_regression/{name}/data/index_train_{split}.txt", data_root), dtype=int)
        test = np.loadtxt(folder / f"index_test_{split}.txt", dtype=int)
        assert len(np.intersect1d(train, test)) == 0
        assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(rows))


def test_loader_returns_the_split_file_indices(data_root):
    data = load_uci("yacht", 3, data_root)
    folder = data_root / "uci_regression" / "yacht" / "data"
    assert data.train_index.tolist() == np.loadtxt(folder / "index_train_3.txt", dtype=int).tolist()
    assert data.test_index.tolist() == np.loadtxt(folder / "index_test_3.txt", dtype=int).tolist()


def test_unknown_name_and_split_raise(data_root):
    with pytest.raises(ValueError, match=r"name must be one of \['concrete'.*got 'boston'"):
        load_uci("boston", 0, data_root)
    with pytest.raises(ValueError, match=r"name must be one of .* got 'housing'"):
        num_splits("housing")
    with pytest.raises(ValueError, match=r"split must be an integer in \[0, 5\) for 'protein-tertiary-str.*got 5"):
        load_uci("protein-tertiary-structure", 5, data_root)
    with pytest.raises(ValueError, match=r"split must be an integer in \[0, 20\) for 'yacht', got True"):
        load_uci("yacht", True, data_root)
