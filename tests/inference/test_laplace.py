import copy
import functools
import math
import warnings

import pytest
import torch

pytest.importorskip("laplace")

from pyro_lowrank.inference.deterministic import train_deterministic
from pyro_lowrank.inference.laplace import LaplaceApproximation
from pyro_lowrank.models import DeterministicMLP
from toy_data import blobs

NOISE = 0.3


def _line(n, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=gen) * 4 - 2
    return x, 2 * x.squeeze(-1) + NOISE * torch.randn(n, generator=gen)


@functools.cache
def _trained_regression_net(n):
    torch.manual_seed(0)
    net = DeterministicMLP(1, [16], 1)
    x, y = _line(n, seed=n)
    train_deterministic(net, (x, y), likelihood="gaussian", num_epochs=max(20, 4000 // n), batch_size=32, lr=1e-2,
                        seed=0, progress=False)
    return net, (x, y)


@functools.cache
def _trained_classifier():
    torch.manual_seed(0)
    net = DeterministicMLP(2, [16], 3)
    train_deterministic(net, blobs(), num_epochs=20, batch_size=32, lr=1e-2, seed=0, progress=False)
    return net


def _regression_laplace(n, subset):
    net, (x, y) = _trained_regression_net(n)
    laplace = LaplaceApproximation(copy.deepcopy(net), likelihood="gaussian", subset_of_weights=subset,
                                   noise_scale=NOISE, tuning_method="marglik")
    assert laplace.fit((x, y)) > 0
    return laplace


@pytest.mark.parametrize("subset", ["last_layer", "all"])
def test_regression_predictive_variance_is_positive_and_shrinks_with_more_data(subset):
    x_test = torch.linspace(-1.5, 1.5, 7).unsqueeze(-1)
    f_var = {}
    for n in (20, 400):
        laplace = _regression_laplace(n, subset)
        f_mean, var = laplace.glm_moments(x_test)
        assert f_mean.shape == (7, 1) and var.shape == (7, 1, 1)
        assert (var > 0).all()
        f_var[n] = var.squeeze()
        if n == 400:
            torch.testing.assert_close(f_mean.squeeze(-1), 2 * x_test.squeeze(-1), atol=0.3, rtol=0)
            draws = laplace.predictive_draws(x_test, num_samples=4000, generator=torch.Generator().manual_seed(0))
            assert draws["mean"].shape == draws["scale"].shape == (4000, 7)
            assert (draws["scale"] == NOISE).all()
            # the draws' spread is the GLM functional variance (the predictive adds sigma^2 through "scale")
            torch.testing.assert_close(draws["mean"].var(0), f_var[n], rtol=0.15, atol=0)
    assert (f_var[400] < f_var[20]).all()
    assert f_var[400].mean() < 0.3 * f_var[20].mean()


def test_regression_draws_share_one_standard_normal_across_inputs():
    # documents laplace-torch's normal_samples: one (out, S) standard normal for the whole batch
    laplace = _regression_laplace(20, "last_layer")
    x_test = torch.linspace(-1.5, 1.5, 5).unsqueeze(-1)
    f_mean, var = laplace.glm_moments(x_test)
    f = laplace.functional_samples(x_test, num_samples=6)
    z = (f.squeeze(-1) - f_mean.squeeze(-1)) / var.squeeze().sqrt()
    torch.testing.assert_close(z, z[:, :1].expand_as(z), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("subset,structure", [("last_layer", None), ("all", None), ("last_layer", "diag")])
def test_classification_probs_are_normalised_draws_that_beat_the_majority_class(subset, structure):
    x, y = blobs()
    x_test, y_test = blobs(seed=1)
    laplace = LaplaceApproximation(copy.deepcopy(_trained_classifier()), subset_of_weights=subset,
                                   hessian_structure=structure)
    assert laplace.hessian_structure == (structure or {"last_layer": "kron", "all": "diag"}[subset])
    laplace.fit((x, y), blobs(seed=2))
    assert laplace.tuning_used == "gridsearch" and laplace.prior_precision.shape == (1,)
    assert 1e-2 <= laplace.prior_precision.item() <= 1e6  # a value of the default grid
    probs = laplace.predictive_draws(x_test, num_samples=12)["probs"]
    assert probs.shape == (12, 240, 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(12, 240))
    assert not torch.allclose(probs[0], probs[1])
    accuracy = (probs.mean(0).argmax(-1) == y_test).double().mean()
    assert accuracy > 0.8  # the majority class scores 1/3
    with torch.no_grad():
        _, f_var = laplace.glm_moments(x_test)
    assert f_var.shape == (240, 3, 3) and (f_var.diagonal(dim1=-2, dim2=-1) > 0).all()


@functools.cache
def _interpolating_classifier():
    """A 8-32-32-3 MLP trained without weight decay until it interpolates 120 noisy blobs (train NLL ~1e-4): the
    setting in which a post-hoc marglik prior precision makes the Laplace predictive badly under-confident (test NLL
    0.39 for the last layer and 0.66 for all weights vs. 0.17 for this MAP network)."""
    torch.manual_seed(0)
    net = DeterministicMLP(8, [32, 32], 3)
    train_deterministic(net, blobs(120, seed=0, dim=8), num_epochs=60, batch_size=32, lr=1e-2, seed=0,
                        progress=False)
    return net


def _nll(probs, y):
    return torch.nn.functional.nll_loss(probs.log(), y).item()


@pytest.mark.parametrize("subset", ["last_layer", "all"])
def test_tuned_laplace_is_not_less_calibrated_than_its_map_network_on_held_out_data(subset):
    train, val, (x_test, y_test) = blobs(120, seed=0, dim=8), blobs(240, seed=1, dim=8), blobs(600, seed=2, dim=8)
    net = _interpolating_classifier()
    with torch.no_grad():
        map_nll = _nll(torch.softmax(net(x_test), -1), y_test)
    laplace = LaplaceApproximation(copy.deepcopy(net), subset_of_weights=subset)
    laplace.fit(train, val)
    precision = laplace.prior_precision
    assert precision.shape == (1,) and laplace.tuning_used == "gridsearch"
    # strictly inside the grid: an optimum of the validation NLL, not the grid's end (which laplace-torch's running
    # metric, never reset between grid values, would always return)
    assert 1e-2 < precision.item() < 1e6
    probs = laplace.predictive_draws(x_test, num_samples=200, generator=torch.Generator().manual_seed(0))["probs"]
    la_nll = _nll(probs.mean(0), y_test)
    assert la_nll <= map_nll + 0.02, (la_nll, map_nll, precision.item())


def test_gridsearch_without_validation_data_falls_back_to_the_marginal_likelihood():
    x, y = blobs()
    laplace = LaplaceApproximation(copy.deepcopy(_trained_classifier()))
    with pytest.warns(UserWarning, match="falling back to the post-hoc marginal likelihood"):
        laplace.fit((x, y))
    assert laplace.tuning_used == "marglik"
    marglik = LaplaceApproximation(copy.deepcopy(_trained_classifier()), tuning_method="marglik")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an explicit marglik does not warn
        marglik.fit((x, y), blobs(seed=2))  # the validation data are not used by the marglik
    assert marglik.tuning_used == "marglik"
    torch.testing.assert_close(marglik.prior_precision, laplace.prior_precision)
    assert marglik.prior_precision.item() != 1.0  # the marglik moved it from its start
    fixed = LaplaceApproximation(copy.deepcopy(_trained_classifier()), prior_precision=2.5,
                                 tune_prior_precision=False)
    fixed.fit((x, y), blobs(seed=2))
    assert fixed.tuning_used is None and fixed.prior_precision.item() == 2.5


def test_regression_gridsearch_scores_the_gaussian_predictive():
    net, (x, y) = _trained_regression_net(20)
    val = _line(200, seed=7)
    laplace = LaplaceApproximation(copy.deepcopy(net), likelihood="gaussian", subset_of_weights="all",
                                   noise_scale=NOISE)
    laplace.fit((x, y), val)
    assert laplace.tuning_used == "gridsearch"

    def val_nll(precision):
        laplace.la.prior_precision = precision
        f_mean, f_var = laplace.glm_moments(val[0])
        var = f_var.reshape(-1) + NOISE**2
        return (0.5 * (torch.log(2 * math.pi * var) + (val[1] - f_mean.reshape(-1)) ** 2 / var)).mean().item()

    tuned = laplace.prior_precision.item()
    best = val_nll(tuned)
    # the tuned value minimises the validation Gaussian NLL (predictive variance J P^-1 J^T + sigma^2) over the grid
    assert all(best <= val_nll(10.0**k) + 1e-6 for k in (-2, -1, 0, 1, 2, 3, 4, 5, 6))


def test_settings_are_validated_and_use_requires_fit():
    net = DeterministicMLP(2, [4], 3)
    with pytest.raises(ValueError, match="hessian_structure"):
        LaplaceApproximation(net, hessian_structure="lowrank")
    with pytest.raises(ValueError, match="likelihood"):
        LaplaceApproximation(net, likelihood="bernoulli")
    with pytest.raises(ValueError, match="tuning_method"):
        LaplaceApproximation(net, tuning_method="cv")
    with pytest.raises(ValueError, match="prior_structure"):
        LaplaceApproximation(net, prior_structure="layerwise")  # the grid search tunes a scalar
    LaplaceApproximation(net, prior_structure="layerwise", tuning_method="marglik")
    with pytest.raises(ValueError, match="log_prior_prec_min"):
        LaplaceApproximation(net, log_prior_prec_min=3, log_prior_prec_max=3)
    with pytest.raises(ValueError, match="link_approx"):
        LaplaceApproximation(net, link_approx="bridge")
    with pytest.raises(RuntimeError, match="fit"):
        LaplaceApproximation(net).predictive_draws(torch.zeros(2, 2))
    with pytest.raises(RuntimeError, match="fit"):
        LaplaceApproximation(net).prior_precision
