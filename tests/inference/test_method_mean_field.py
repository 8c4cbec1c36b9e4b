"""The full-rank mean-field BBB baseline through the method registry."""

import itertools

import pyro_lowrank.inference.methods.mean_field  # noqa: F401  (registers "mean_field")
import pytest
import torch
from pyro_lowrank.inference.methods import available_methods, make_method
from pyro_lowrank.inference.methods.mean_field import MeanFieldBBB
from pyro_lowrank.models.mean_field import MeanFieldMLP

from pyro_lowrank.metrics import accuracy
from toy_data import blobs


ARCH = {"in_features": 2, "hidden_features": [16], "num_classes": 3, "batch_size": 32, "seed": 0}


def _expected_parameters(widths):
    """2 sum_layers (m n + m): a mean and a scale for every weight and bias entry."""
    return 2 * sum(m * n + m for n, m in itertools.pairwise(widths))


@pytest.mark.parametrize("local_reparameterization", [True, False])
def test_mean_field_method_fits_and_beats_the_majority_class(local_reparameterization):
    assert "mean_field" in available_methods()
    x, y = blobs()
    x_test, y_test = blobs(seed=1)
    method = make_method("mean_field", **ARCH, num_epochs=10, lr=3e-2,
                         local_reparameterization=local_reparameterization)
    assert isinstance(method, MeanFieldBBB) and method.name == "mean_field"
    method.fit((x, y), (x_test[:30], y_test[:30]) if local_reparameterization else None)
    assert isinstance(method.model, MeanFieldMLP)
    assert method.model.local_reparameterization is local_reparameterization
    probs = method.predictive_draws(x_test, 8)["probs"]
    assert probs.shape == (8, 240, 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(8, 240))
    assert accuracy(probs, y_test) > 0.8  # the majority class scores 1/3
    assert method.num_parameters == _expected_parameters([2, 16, 3]) == method.model.num_variational_parameters()
    assert method.training_seconds > 0


def test_config_arguments_reach_the_model_and_guide():
    method = make_method("mean_field", **ARCH, num_epochs=1, prior_scale=0.5, init_scale_factor=0.2)
    assert method.prior_scale == 0.5 and method.init_scale_factor == 0.2 and method.local_reparameterization
    x, y = blobs(64)
    method.fit((x.double(), y))  # the model follows the data's dtype
    layer = method.model.layers[0]
    assert layer.prior.scale.item() == 0.5 and layer.weight_init.dtype == torch.float64
    scale = method.guide._get_loc_and_scale("layers.0.weight")[1]
    assert scale.dtype == torch.float64
    with pytest.raises(TypeError):
        make_method("mean_field", **ARCH, rank=3)


def test_regression_draws_and_parameter_count():
    torch.manual_seed(0)
    x = torch.randn(96, 3)
    y = x @ torch.tensor([1.0, -1.0, 0.5]) + 0.1 * torch.randn(96)
    method = make_method("mean_field", in_features=3, hidden_features=[8, 4], likelihood="gaussian",
                         noise_scale=0.2, num_epochs=3, batch_size=32, lr=1e-2).fit((x, y))
    draws = method.predictive_draws(x[:10], 5)
    assert draws["mean"].shape == draws["scale"].shape == (5, 10)
    assert torch.all(draws["scale"] == 0.2)
    assert method.num_parameters == _expected_parameters([3, 8, 4, 1])
