import pytest
import torch
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from pyro_lowrank.inference.deterministic import train_deterministic
from pyro_lowrank.inference.swag import SWAG
from pyro_lowrank.models import DeterministicMLP
from toy_data import blobs


def _spy_on_collect(swag):
    """Record the module's parameter vector each time SWAG collects (a hook on the instance)."""
    iterates = []
    original = swag.collect

    def collect():
        iterates.append(parameters_to_vector(swag.module.parameters()).detach().clone())
        original()

    swag.collect = collect
    return iterates


def _regression(n=64, dtype=torch.float64):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, generator=gen, dtype=dtype)
    y = x @ torch.tensor([1.0, -2.0, 0.5], dtype=dtype) + 0.3 * torch.randn(n, generator=gen, dtype=dtype)
    return x, y


def test_moments_and_deviations_are_those_of_the_collected_iterates():
    torch.manual_seed(0)
    net = nn.Linear(3, 1).double()
    swag = SWAG(net, max_rank=4)
    iterates = _spy_on_collect(swag)
    swag.fit(_regression(), likelihood="gaussian", num_epochs=7, batch_size=16, lr=0.05, seed=0)
    thetas = torch.stack(iterates)  # (7, P): one per epoch
    assert thetas.shape == (7, 4) and swag.num_collected == 7 and swag.rank == 4
    assert swag.mean.dtype == torch.float64
    assert not torch.allclose(thetas[0], thetas[-1])  # SGD moved
    torch.testing.assert_close(swag.swa_mean(), thetas.mean(0))
    torch.testing.assert_close(swag.sq_mean, thetas.square().mean(0))
    torch.testing.assert_close(swag.variance(), thetas.var(0, unbiased=False))
    # column i: theta_i minus the running mean of the first i iterates; the last K = 4 are kept, oldest first
    running = torch.stack([thetas[: i + 1].mean(0) for i in range(7)])
    torch.testing.assert_close(swag.deviations, (thetas - running)[-4:].T)
    assert swag.num_parameters == 2 * 4 + 4 * 4


def test_collect_every_counts_steps_across_epochs_and_cyclic_needs_lr_max():
    net = nn.Linear(3, 1).double()
    swag = SWAG(net, max_rank=20)
    swag.fit(_regression(), likelihood="gaussian", num_epochs=3, batch_size=16, lr=0.05, collect_every=3, seed=0)
    assert swag.num_collected == (3 * 4) // 3
    with pytest.raises(ValueError, match="lr_max"):
        swag.fit(_regression(), likelihood="gaussian", schedule="cyclic", lr=0.01)
    swag.fit(_regression(), likelihood="gaussian", num_epochs=2, schedule="cyclic", lr=0.01, lr_max=0.1, seed=0)
    assert swag.num_collected == 4 + 2


def _swag_from_iterates(thetas):
    net = nn.Linear(2, 1).double()
    swag = SWAG(net, max_rank=thetas.shape[0])
    for theta in thetas:
        vector_to_parameters(theta, net.parameters())
        swag.collect()
    return swag


@pytest.mark.parametrize("scale", [0.5, 1.0])
def test_samples_have_the_swag_mean_and_covariance(scale):
    gen = torch.Generator().manual_seed(3)
    thetas = torch.randn(5, 3, generator=gen, dtype=torch.float64) * torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    swag = _swag_from_iterates(thetas)
    K = 5
    mean = thetas.mean(0)
    diag = thetas.var(0, unbiased=False)
    D = (thetas - torch.stack([thetas[: i + 1].mean(0) for i in range(K)])).T  # (P, K)
    # reference convention: scale multiplies the covariance; scale = 0.5 is the paper's (Sigma_diag + DD^T/(K-1)) / 2
    expected = scale * (torch.diag(diag) + D @ D.T / (K - 1))
    torch.testing.assert_close(swag.covariance(scale), expected)
    draws = swag.sample(200_000, scale=scale, generator=torch.Generator().manual_seed(0))
    assert draws.shape == (200_000, 3)
    torch.testing.assert_close(draws.mean(0), mean, atol=0.02, rtol=0)
    torch.testing.assert_close(torch.cov(draws.T), expected, atol=0.03 * expected.abs().max().item(), rtol=0.02)
    diagonal_only = swag.sample(200_000, scale=scale, cov=False, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(torch.cov(diagonal_only.T), scale * torch.diag(diag),
                               atol=0.03 * diag.max().item() * scale, rtol=0.02)


def test_sampled_outputs_fit_a_toy_classification_problem_and_restore_the_weights():
    x, y = blobs()
    x_test, y_test = blobs(seed=1)
    torch.manual_seed(0)
    net = DeterministicMLP(2, [16], 3)
    train_deterministic(net, (x, y), num_epochs=15, batch_size=32, lr=1e-2, seed=0, progress=False)
    swag = SWAG(net, max_rank=10)
    swag.fit((x, y), num_epochs=12, batch_size=32, lr=0.02, seed=0)
    before = parameters_to_vector(net.parameters()).clone()
    f = swag.sample_outputs(x_test, num_samples=20, generator=torch.Generator().manual_seed(0))
    assert f.shape == (20, 240, 3)
    torch.testing.assert_close(parameters_to_vector(net.parameters()), before)
    assert not torch.allclose(f[0], f[1])  # distinct draws
    accuracy = (torch.softmax(f, -1).mean(0).argmax(-1) == y_test).double().mean()
    assert accuracy > 0.8  # the majority class scores 1/3
    swag.load_sample()
    torch.testing.assert_close(parameters_to_vector(net.parameters()), swag.swa_mean())


def test_state_dict_round_trip_restores_the_deviation_columns():
    gen = torch.Generator().manual_seed(0)
    swag = _swag_from_iterates(torch.randn(4, 3, generator=gen, dtype=torch.float64))
    fresh = SWAG(nn.Linear(2, 1).double(), max_rank=4)
    fresh.load_state_dict(swag.state_dict())
    assert fresh.num_collected == 4 and fresh.rank == 4
    torch.testing.assert_close(fresh.deviations, swag.deviations)
    torch.testing.assert_close(fresh.variance(), swag.variance())


def test_rejects_batchnorm_and_sampling_before_collection():
    with pytest.raises(TypeError, match="BatchNorm"):
        SWAG(nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4)))
    swag = SWAG(nn.Linear(2, 1))
    with pytest.raises(RuntimeError, match="collected no iterates"):
        swag.sample()
    with pytest.raises(ValueError, match="schedule"):
        swag.fit(blobs(), schedule="cosine")
