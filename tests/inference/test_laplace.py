import copy
import functools

import pytest
import torch

pytest.importorskip("laplace")

from pyro_lowrank.inference.deterministic import train_deterministic
from pyro_lowrank.inference.laplace import LaplaceApproximation
from pyro_lowrank.models import DeterministicMLP

NOISE = 0.3


def _line(n, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=gen) * 4 - 2
    return x, 2 * x.squeeze(-1) + NOISE * torch.randn(n, generator=gen)


def _blobs(n=240, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.5]])
    y = torch.arange(n) % 3
    return centres[y] + 0.7 * torch.randn(n, 2, generator=gen), y


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
    train_deterministic(net, _blobs(), num_epochs=20, batch_size=32, lr=1e-2, seed=0, progress=False)
    return net


def _regression_laplace(n, subset):
    net, (x, y) = _trained_regression_net(n)
    laplace = LaplaceApproximation(copy.deepcopy(net), likelihood="gaussian", subset_of_weights=subset,
                                   noise_scale=NOISE)
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
    x, y = _blobs()
    x_test, y_test = _blobs(seed=1)
    laplace = LaplaceApproximation(copy.deepcopy(_trained_classifier()), subset_of_weights=subset,
                                   hessian_structure=structure)
    assert laplace.hessian_structure == (structure or {"last_layer": "kron", "all": "diag"}[subset])
    laplace.fit((x, y))
    assert laplace.la.prior_precision.numel() == 1 and laplace.la.prior_precision.item() != 1.0  # marglik moved it
    probs = laplace.predictive_draws(x_test, num_samples=12)["probs"]
    assert probs.shape == (12, 240, 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(12, 240))
    assert not torch.allclose(probs[0], probs[1])
    accuracy = (probs.mean(0).argmax(-1) == y_test).double().mean()
    assert accuracy > 0.8  # the majority class scores 1/3
    with torch.no_grad():
        _, f_var = laplace.glm_moments(x_test)
    assert f_var.shape == (240, 3, 3) and (f_var.diagonal(dim1=-2, dim2=-1) > 0).all()


def test_settings_are_validated_and_use_requires_fit():
    net = DeterministicMLP(2, [4], 3)
    with pytest.raises(ValueError, match="hessian_structure"):
        LaplaceApproximation(net, hessian_structure="lowrank")
    with pytest.raises(ValueError, match="likelihood"):
        LaplaceApproximation(net, likelihood="bernoulli")
    with pytest.raises(RuntimeError, match="fit"):
        LaplaceApproximation(net).predictive_draws(torch.zeros(2, 2))
