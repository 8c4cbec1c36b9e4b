"""The weight-space-geometry methods behind the compared-methods interface."""

import pytest
import torch

from pyro_lowrank.inference.methods import make_method
from pyro_lowrank.metrics import accuracy
from toy_data import blobs

REGRESSION = {"in_features": 1, "hidden_features": [12], "likelihood": "gaussian", "noise_scale": 0.1, "rank": [1],
              "output_rank": 1, "num_epochs": 60, "batch_size": 32, "lr": 2e-2, "seed": 0}
CHEAP = {"laplace_factor": {"num_eigenpairs": 8}, "laplace_factor_glm": {"num_eigenpairs": 8},
         "laplace_diffusion": {"num_eigenpairs": 8, "num_steps": 2, "pool_size": 6},
         "fiber_walk": {"num_particles": 4, "walk_steps": 30, "flow_steps": 50}}


def _sine(n, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=gen) * 4 - 2
    return x, torch.sin(2 * x[:, 0]) + 0.1 * torch.randn(n, generator=gen)


@pytest.fixture(scope="module")
def sine():
    return _sine(120, 0), _sine(40, 1)


@pytest.mark.parametrize("name", sorted(CHEAP))
def test_each_method_fits_near_its_map_and_predicts(name, sine):
    train, val = sine
    method = make_method(name, **REGRESSION, **CHEAP[name]).fit(train, val)
    draws = method.predictive_draws(val[0], num_samples=6)
    assert draws["mean"].shape == draws["scale"].shape == (6, 40)
    assert torch.isfinite(draws["mean"]).all() and (draws["mean"].std(0) > 0).all()
    # every posterior is centred near the MAP network it was built around
    map_mean = method.outputs_at({k: v[None] for k, v in method.map_values.items()}, val[0])[0]
    assert (draws["mean"].mean(0) - map_mean).abs().mean() < 0.5
    assert method.training_seconds > method.posterior_seconds > 0
    assert method.num_parameters > method.map_parameters


def test_laplace_methods_share_the_map_and_tune_their_own_predictive(sine):
    train, val = sine
    sampled = make_method("laplace_factor", **REGRESSION, **CHEAP["laplace_factor"]).fit(train, val)
    linear = make_method("laplace_factor_glm", **REGRESSION, **CHEAP["laplace_factor_glm"]).fit(train, val)
    for name, value in sampled.map_values.items():
        torch.testing.assert_close(value, linear.map_values[name], rtol=0, atol=0)
    for method in (sampled, linear):
        curve = method.prior_precision_curve
        assert method.laplace.prior_precision == min(curve, key=curve.get)
    size, k = sampled.map_parameters, 8
    assert sampled.num_parameters == size + k * size + k + 1  # mean, eigenvectors, eigenvalues, alpha


def test_without_validation_data_alpha_stays_put(sine):
    train, _ = sine
    method = make_method("laplace_factor", **REGRESSION, prior_precision=3.0, structure="diag").fit(train)
    assert method.laplace.prior_precision == 3.0 and method.prior_precision_curve == {}


def test_diffusion_reuses_its_pool_and_extends_it(sine):
    train, val = sine
    method = make_method("laplace_diffusion", **REGRESSION, **CHEAP["laplace_diffusion"]).fit(train, val)
    first = method.predictive_draws(val[0], num_samples=4)["mean"]
    torch.testing.assert_close(method.predictive_draws(val[0], num_samples=4)["mean"], first)
    more = method.predictive_draws(val[0], num_samples=9)["mean"]
    assert method.pool.shape[0] == 9
    torch.testing.assert_close(more[:4], first)
    with pytest.raises(ValueError, match="variant"):
        make_method("laplace_diffusion", **REGRESSION, variant="sideways")
    with pytest.raises(ValueError, match="structure must be 'lowrank'"):
        make_method("laplace_diffusion", **REGRESSION, structure="diag")


def test_linearised_laplace_classifies():
    x, y = blobs()
    x_test, y_test = blobs(seed=1)
    method = make_method("laplace_factor_glm", in_features=2, hidden_features=[16], num_classes=3, rank=2,
                         num_epochs=40, lr=1e-2, batch_size=32, num_eigenpairs=10).fit((x, y), (x_test[:30],
                                                                                                 y_test[:30]))
    probs = method.predictive_draws(x_test, num_samples=8)["probs"]
    assert probs.shape == (8, 240, 3) and accuracy(probs, y_test) > 0.8
    torch.testing.assert_close(probs.sum(-1), torch.ones(8, 240))
