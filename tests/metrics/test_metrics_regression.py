"""Predictive moments, RMSE, MAE and the Gaussian-mixture NLL."""

import math

import pytest
import torch
from torch.distributions import Normal

from pyro_lowrank.metrics import (
    gaussian_mixture_nll,
    mae,
    regression_predictive_moments,
    rmse,
)


def test_moments_by_law_of_total_variance():
    means = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    scales = torch.tensor([[1.0, 1.0], [1.0, 3.0]])
    mean, std = regression_predictive_moments(means, scales)
    # E sigma^2 = [1, 5]; population variance of the means = [1, 1]
    assert mean.tolist() == [2.0, 3.0]
    assert torch.allclose(std, torch.tensor([2.0, 6.0], dtype=torch.float64).sqrt())
    assert mean.dtype == std.dtype == torch.float64


def test_moments_match_monte_carlo_of_the_mixture():
    gen = torch.Generator().manual_seed(0)
    means = torch.randn(3, 2, generator=gen, dtype=torch.float64) * 2
    scales = torch.rand(3, 2, generator=gen, dtype=torch.float64) + 0.5
    component = torch.randint(0, 3, (200000, 2), generator=gen)
    draws = means.gather(0, component) + scales.gather(0, component) * torch.randn(
        200000, 2, generator=gen, dtype=torch.float64
    )
    mean, std = regression_predictive_moments(means, scales)
    assert torch.allclose(mean, draws.mean(0), atol=0.03)
    assert torch.allclose(std, draws.std(0), rtol=0.01)


def test_rmse_and_mae_by_hand():
    means = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])  # predictive mean [2, 2, 2]
    y = torch.tensor([2.0, 4.0, -1.0])  # errors [0, -2, 3]
    assert rmse(means, y) == pytest.approx(math.sqrt(13 / 3))
    assert mae(means, y) == pytest.approx(5 / 3)
    assert rmse(means.mean(0, keepdim=True), y) == rmse(means, y)


def test_mixture_nll_matches_direct_computation():
    gen = torch.Generator().manual_seed(1)
    means = torch.randn(7, 50, generator=gen, dtype=torch.float64)
    scales = torch.rand(7, 50, generator=gen, dtype=torch.float64) + 0.2
    y = torch.randn(50, generator=gen, dtype=torch.float64) * 1.5
    direct = -Normal(means, scales).log_prob(y).exp().mean(0).log().mean()
    assert gaussian_mixture_nll(means, scales, y) == pytest.approx(float(direct), rel=1e-10)
    assert gaussian_mixture_nll(means.float(), scales.float(), y.float()) == pytest.approx(float(direct), rel=1e-5)


def test_mixture_nll_single_draw_is_gaussian_nll_and_stays_finite_far_away():
    means, scales = torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 2.0]])
    y = torch.tensor([0.5, 1e3])
    expected = -Normal(means[0].double(), scales[0].double()).log_prob(y.double()).mean()
    nll = gaussian_mixture_nll(means, scales, y)
    assert math.isfinite(nll) and nll == pytest.approx(float(expected))
    # a direct exp-then-log underflows for the far target; logsumexp does not
    far_means = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    far_scales = torch.ones(2, 1, dtype=torch.float64)
    far_y = torch.tensor([60.0], dtype=torch.float64)
    direct = -Normal(far_means, far_scales).log_prob(far_y).exp().mean(0).log().mean()
    assert math.isinf(direct)
    lp = Normal(far_means, far_scales).log_prob(far_y)
    assert gaussian_mixture_nll(far_means, far_scales, far_y) == pytest.approx(
        float(-(torch.logsumexp(lp, 0) - math.log(2)).mean())
    )
