"""Tests for SupervisedModel: a likelihood and a data plate around any network."""

from __future__ import annotations

import pyro
import pyro.optim
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from toy_data import blobs
from torch import nn

from pyro_lowrank.guides import FactorGuide
from pyro_lowrank.models import SupervisedModel
from pyro_lowrank.nn import LowRankLinear


def hand_built() -> nn.Module:
    return nn.Sequential(LowRankLinear(2, 16, 2), nn.ReLU(), nn.LayerNorm(16), LowRankLinear(16, 3, 2))


def test_plain_svi_trains_a_hand_built_network_with_deterministic_layers():
    """Plain nn.Parameters inside a PyroModule break plain SVI under module-local params; SupervisedModel turns them
    into point-estimated PyroParams, so the LayerNorm trains alongside the guide."""
    pyro.set_rng_seed(0)
    x, y = blobs(240)
    model = SupervisedModel(hand_built(), num_classes=3)
    guide = FactorGuide(model)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.02}), Trace_ELBO())
    losses = [svi.step(x, y) for _ in range(200)]
    assert sum(losses[-20:]) < 0.5 * sum(losses[:20])
    assert not torch.allclose(model.network[2].weight.detach(), torch.ones(16))
    assert [type(m).__name__ for m in model.network] == ["LowRankLinear", "PyroReLU", "PyroLayerNorm", "LowRankLinear"]


def test_sites_minibatch_scaling_and_gaussian_likelihood():
    model = SupervisedModel(nn.Sequential(LowRankLinear(3, 1, 1)), likelihood="gaussian", noise_scale=0.5)
    x, y = torch.randn(8, 3), torch.randn(8)
    trace = poutine.trace(model).get_trace(x, y, num_data=80)
    assert trace.nodes["obs"]["scale"] == pytest.approx(10.0)
    assert trace.nodes["f"]["value"].shape == (8,)
    assert set(n for n, s in trace.nodes.items() if s["type"] == "sample") >= {"network.0.A", "network.0.B", "obs"}


def test_bad_data_is_rejected_with_clear_messages():
    model = SupervisedModel(hand_built(), num_classes=3)
    with pytest.raises(ValueError, match=r"y must have shape \(4,\) to match x of shape \(4, 2\), got \(3,\)"):
        model.check_data(torch.randn(4, 2), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"x must contain only finite values, got 1 NaN"):
        model.check_data(torch.tensor([[0.0, float("nan")]]), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels in \[0, 3\)"):
        model.check_data(torch.randn(2, 2), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"needs num_classes"):
        SupervisedModel(hand_built())
    with pytest.raises(TypeError, match=r"network must be a torch.nn.Module, got function"):
        SupervisedModel(lambda x: x, num_classes=2)
