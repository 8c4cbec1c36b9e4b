"""Selective prediction curves: keep the least uncertain examples, average the rest."""

import pytest
import torch

from pyro_lowrank.metrics import selective_prediction, selective_prediction_curve


def test_selective_curve_by_hand():
    values = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0])
    uncertainty = torch.tensor([0.1, 0.9, 0.2, 0.3, 0.8])
    curve = selective_prediction_curve(values, uncertainty, retention=[0.4, 0.6, 0.8, 1.0])
    # kept: 2 -> {1, 1}; 3 -> {1, 1, 1}; 4 -> {1, 1, 1, 0}; 5 -> all
    assert curve["value"].tolist() == pytest.approx([1.0, 1.0, 0.75, 0.6])
    assert curve["retention"].tolist() == pytest.approx([0.4, 0.6, 0.8, 1.0])
    assert selective_prediction(values, uncertainty, 0.8) == pytest.approx(0.75)
    # ceil(r N): 0.3 of 5 examples keeps 2
    assert selective_prediction(values, uncertainty, 0.3) == 1.0


def test_kept_count_is_ceil_without_round_off():
    values = torch.arange(10.0)
    # 0.3 * 10 = 3.0000000000000004 in floating point; ceil must still keep 3 (mean 1), not 4 (mean 1.5)
    assert selective_prediction(values, values, 0.3) == 1.0
    assert selective_prediction(values, values, 0.31) == 1.5
    assert selective_prediction(values, values, 0.01) == 0.0  # at least one example is kept


def test_ties_are_averaged_so_the_data_order_does_not_matter():
    values = torch.tensor([1.0, 0.0, 0.0, 0.0])
    # one tie group: V(r) is the group mean whatever the order (a deterministic net's MI = 0 everywhere)
    assert selective_prediction(values, torch.zeros(4), 0.25) == 0.25
    assert selective_prediction(values.flip(0), torch.zeros(4), 0.25) == 0.25
    # cut inside a group: v = [5 | 1, 0, 0, 1] with u = [0 | 1, 1, 1, 1]; k = 3 keeps 5 and two of the group (mean 0.5)
    values = torch.tensor([1.0, 0.0, 5.0, 0.0, 1.0])
    uncertainty = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0])
    assert selective_prediction(values, uncertainty, 0.6) == pytest.approx((5 + 2 * 0.5) / 3)
    perm = torch.randperm(5)
    assert selective_prediction(values[perm], uncertainty[perm], 0.6) == pytest.approx((5 + 2 * 0.5) / 3)


def test_default_grid_and_full_retention_is_the_mean():
    gen = torch.Generator().manual_seed(0)
    values = torch.rand(37, generator=gen)
    uncertainty = torch.rand(37, generator=gen)
    curve = selective_prediction_curve(values, uncertainty)
    assert curve["retention"].shape == (20,)
    assert curve["retention"][0].item() == pytest.approx(0.05) and curve["retention"][-1].item() == 1.0
    assert curve["value"][-1].item() == pytest.approx(values.double().mean().item())
    assert selective_prediction(values, uncertainty, 1.0) == pytest.approx(values.double().mean().item())
    assert curve["value"].dtype == torch.float64


def test_curve_is_monotone_when_values_track_uncertainty():
    gen = torch.Generator().manual_seed(1)
    uncertainty = torch.rand(1000, generator=gen)
    # absolute error increasing in the uncertainty: the error of the kept set grows with retention
    error = uncertainty**2 + 0.1
    curve = selective_prediction_curve(error, uncertainty)["value"]
    assert (curve.diff() >= 0).all() and curve[0] < curve[-1]
    # correctness decreasing in the uncertainty (bool values): accuracy falls as retention grows
    correct = uncertainty < 0.7
    accuracy = selective_prediction_curve(correct, uncertainty)["value"]
    assert (accuracy.diff() <= 0).all() and accuracy[0] == 1.0
    assert accuracy[-1].item() == pytest.approx(correct.double().mean().item())
