import itertools

import pyro_lowrank.inference.methods.rank1  # noqa: F401  (registers "rank1")
import pytest
import torch
from pyro_lowrank.inference.methods import available_methods, make_method
from pyro_lowrank.inference.methods.rank1 import Rank1BNN
from toy_data import imbalanced_blobs


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny networks: one intra-op thread avoids thread contention on shared CPUs (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _formula(widths, k):
    return sum(m * n + m + 2 * k * (m + n) for n, m in itertools.pairwise(widths))


def test_registered():
    assert "rank1" in available_methods()


def test_two_component_classification_fits_and_returns_k_times_s_draws():
    train, val, (x_test, y_test) = imbalanced_blobs(300), imbalanced_blobs(100, seed=2), imbalanced_blobs(200, seed=1)
    method = make_method("rank1", in_features=2, hidden_features=[16], num_classes=3, num_epochs=10, batch_size=100,
                         lr=0.03, num_components=2)
    assert isinstance(method, Rank1BNN)
    method.fit(train, val)
    probs = method.predictive_draws(x_test, 8)["probs"]
    assert probs.shape == (16, 200, 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(16, 200))
    accuracy = (probs.mean(0).argmax(-1) == y_test).float().mean().item()
    majority = torch.bincount(y_test).max().item() / y_test.numel()
    assert accuracy > majority + 0.3
    assert method.num_parameters == _formula([2, 16, 3], 2) == 2 * 16 + 16 + 4 * 18 + 16 * 3 + 3 + 4 * 19
    assert method.training_seconds > 0
    assert len(method.fit_result.val_nll) >= 1  # validation NLL of the mixture predictive was computed


def test_single_component_returns_s_draws():
    method = make_method("rank1", in_features=2, hidden_features=[8], num_classes=3, num_epochs=2, batch_size=100)
    method.fit(imbalanced_blobs(200))
    assert method.predictive_draws(torch.randn(5, 2), 7)["probs"].shape == (7, 5, 3)
    assert method.num_parameters == _formula([2, 8, 3], 1)


def test_regression_draws_have_k_times_s_means_and_the_fixed_noise():
    x = torch.randn(120, 3)
    y = x.sum(-1)
    method = make_method("rank1", in_features=3, hidden_features=[8, 4], likelihood="gaussian", noise_scale=0.3,
                         num_epochs=2, batch_size=60, num_components=3)
    method.fit((x, y))
    draws = method.predictive_draws(x[:10], 4)
    assert draws["mean"].shape == (12, 10) and draws["scale"].shape == (12, 10)
    assert bool((draws["scale"] == 0.3).all())
    assert method.num_parameters == _formula([3, 8, 4, 1], 3)


@pytest.mark.parametrize("kwargs, match", [
    ({"num_components": 0}, "num_components must be a positive integer"),
    ({"prior_scale": -1.0}, "prior_scale must be finite and > 0"),
    ({"random_sign_init": 2.0}, "random_sign_init must be a finite number <= 1"),
])
def test_bad_configuration_is_rejected_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_method("rank1", in_features=2, hidden_features=[4], num_classes=2, **kwargs)


def test_predictive_draws_before_fit_is_refused():
    method = make_method("rank1", in_features=2, hidden_features=[4], num_classes=2)
    with pytest.raises(RuntimeError, match="call fit"):
        method.predictive_draws(torch.randn(3, 2), 2)
