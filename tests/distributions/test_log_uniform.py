"""The log-uniform prior: Molchanov et al.'s KL approximation against quadrature, the registered KL, the ELBO."""

import math

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import TraceMeanField_ELBO
from torch.distributions import kl_divergence

from pyro_lowrank.distributions import (
    FactorNormal, LogUniform, LogUniformPrior, log_uniform_kl, log_uniform_kl_reference, noise_to_signal_log_ratio,
)

GRID = np.linspace(-8.0, 8.0, 161)
# The approximation's error is of order 0.01 nats per weight (Molchanov et al. 2017); its largest value over the range,
# measured against the quadrature, is 0.0094 at log alpha ~ -3.5.
APPROXIMATION_ERROR = 0.01


def test_kl_approximation_matches_quadrature_over_the_published_range():
    reference = np.array([log_uniform_kl_reference(v) for v in GRID])
    approx = log_uniform_kl(torch.tensor(GRID, dtype=torch.float64)).numpy()
    error = np.abs(approx - reference)
    assert error.max() < APPROXIMATION_ERROR
    assert error.max() > 0.005  # the comparison is sharp: an approximation, not the reference again
    assert -4.5 < GRID[error.argmax()] < -2.5
    assert np.all(np.diff(reference) < 0)  # KL decreases in alpha ...
    assert reference[-1] < 1e-3 and reference[0] > 3.0  # ... towards 0 for pure noise


def test_quadrature_reference_matches_the_closed_form():
    mpmath = pytest.importorskip("mpmath")
    for log_alpha in (-6.0, -1.3, 0.0, 2.5, 7.0):
        alpha = mpmath.e ** log_alpha
        closed = float((1 / (2 * alpha)) * mpmath.hyp2f2(1, 1, 1.5, 2, -1 / (2 * alpha)))  # KL = z 2F2(1,1;3/2,2;-z)
        assert log_uniform_kl_reference(log_alpha) == pytest.approx(closed, abs=1e-9)


def test_reference_rejects_non_finite_input():
    with pytest.raises(ValueError, match="log_alpha must be finite"):
        log_uniform_kl_reference(float("nan"))


def test_registered_kl_is_the_approximation_of_the_noise_to_signal_ratio():
    loc = torch.tensor([[0.5, -2.0], [1e-3, 3.0]], dtype=torch.float64)
    scale = torch.tensor([[0.1, 1.0], [0.2, 0.01]], dtype=torch.float64)
    expected = log_uniform_kl(torch.log(scale**2) - torch.log(loc**2 + 1e-8))
    assert torch.allclose(kl_divergence(pyro.distributions.Normal(loc, scale), LogUniform((2, 2))), expected)
    q = FactorNormal(loc, scale).to_event(2)
    p = LogUniformPrior().double()((2, 2))
    assert torch.allclose(kl_divergence(q, p), expected.sum())
    assert torch.allclose(noise_to_signal_log_ratio(loc, torch.log(scale**2)), torch.log(scale**2 / (loc**2 + 1e-8)))


def test_scale_invariance_of_the_kl():
    loc, scale = torch.randn(50).abs() + 0.1, torch.rand(50) + 0.05
    kl = kl_divergence(pyro.distributions.Normal(loc, scale), LogUniform((50,)))
    rescaled = kl_divergence(pyro.distributions.Normal(7.0 * loc, 7.0 * scale), LogUniform((50,)))
    assert torch.allclose(kl, rescaled, atol=1e-5)


def test_trace_mean_field_elbo_reads_the_approximation():
    loc, scale = torch.tensor([[0.3, -1.0, 2.0]]), torch.tensor([[0.2, 0.5, 0.1]])
    prior = LogUniformPrior()

    def model():
        pyro.sample("w", prior((1, 3)))

    def guide():
        pyro.sample("w", FactorNormal(loc, scale).to_event(2))

    loss = TraceMeanField_ELBO().differentiable_loss(model, guide)
    assert torch.allclose(loss, log_uniform_kl(torch.log(scale**2 / (loc**2 + 1e-8))).sum())


def test_improper_prior_has_a_log_density_but_no_samples_or_moments():
    p = LogUniform((3,))
    value = torch.tensor([0.5, -2.0, 4.0])
    assert torch.allclose(p.log_prob(value), -torch.log(value.abs()))
    assert p.expand((4, 3)).batch_shape == (4, 3)
    with pytest.raises(NotImplementedError, match="improper"):
        p.sample()
    with pytest.raises(NotImplementedError, match="improper"):
        p.mean
    assert math.isinf(LogUniformPrior().entry_second_moment)
    with pytest.raises(NotImplementedError, match="improper"):
        pyro.poutine.trace(lambda: pyro.sample("w", LogUniformPrior()((2, 2)))).get_trace()


def test_kl_accepts_integer_log_alpha():
    assert torch.allclose(log_uniform_kl(torch.tensor(-6)), log_uniform_kl(torch.tensor(-6.0)))
