"""Tests for LowRankLSTMForecaster: fitting a synthetic forecasting task, predictive calibration, shapes, sites,
parameter counts and input validation."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO
from pyro.poutine.util import site_is_subsample

import pyro_lowrank  # noqa: F401  (module-local params)
from pyro_lowrank.guides import FactorGuide, factor_initial_values
from pyro_lowrank.inference.fit import fit
from pyro_lowrank.models.lstm_forecaster import ForecastGaussianLikelihood, LowRankLSTMForecaster
from pyro_lowrank.models.supervised import SupervisedModel
from pyro_lowrank.predictive import predict


def sine_windows(n: int, length: int = 12, horizon: int = 1, seed: int = 0):
    """Noisy sines of random frequency and phase: windows (n, L, 1) and the next ``horizon`` values."""
    gen = torch.Generator().manual_seed(seed)
    freq = 0.3 + 0.5 * torch.rand(n, 1, generator=gen)
    phase = 2 * math.pi * torch.rand(n, 1, generator=gen)
    t = torch.arange(length + horizon, dtype=torch.float32)
    series = torch.sin(freq * t + phase) + 0.1 * torch.randn(n, length + horizon, generator=gen)
    y = series[:, length:]
    return series[:, :length, None], (y.squeeze(-1) if horizon == 1 else y)


def latent_sites(trace) -> set[str]:
    return {name for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)}


@pytest.fixture
def one_thread():
    """Tiny per-step matrices: one intra-op thread is fastest and robust to a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_fit_beats_climatology_and_intervals_cover(one_thread):
    x, y = sine_windows(256, seed=0)
    x_test, y_test = sine_windows(256, seed=1)
    pyro.set_rng_seed(0)
    model = LowRankLSTMForecaster(1, hidden_size=8, num_layers=1, rank_ih=1, rank_hh=2, noise_scale=0.15)
    guide = FactorGuide(model)
    result = fit(model, guide, (x, y), num_epochs=40, batch_size=32, lr=0.02, progress=False, seed=0)
    assert result.train_loss[-1] < result.train_loss[0]
    f = predict(model, guide, x_test, num_samples=32)["f"]
    assert f.shape == (32, 256)
    mean, var_f = f.mean(0), f.var(0)
    rmse = (mean - y_test).square().mean().sqrt()
    climatology = (y.mean() - y_test).square().mean().sqrt()
    assert rmse < 0.5 * climatology
    sigma = model.noise_scale.detach()
    assert 0.05 < sigma < 0.5  # learned down from a wrong start towards the noise + model error
    predictive_sd = (var_f + sigma**2).sqrt()
    coverage = ((y_test - mean).abs() <= 1.96 * predictive_sd).float().mean()
    assert 0.8 <= coverage <= 1.0
    assert predictive_sd.mean() < 0.5 * y_test.std()  # sharper than the marginal spread
    assert (var_f > 0).all()  # epistemic spread from the factor posterior


@pytest.mark.parametrize("horizon", [1, 3])
def test_shapes_sites_and_likelihood(horizon):
    torch.manual_seed(0)
    model = LowRankLSTMForecaster(4, hidden_size=6, num_layers=2, rank_ih=2, rank_hh=3, horizon=horizon,
                                  head_rank=1)
    x, y = torch.randn(10, 5, 4), torch.randn((10,) if horizon == 1 else (10, horizon))
    trace = poutine.trace(model).get_trace(x, y, num_data=100)
    per_datum = (10,) if horizon == 1 else (10, horizon)
    assert trace.nodes["_RETURN"]["value"].shape == per_datum
    expected = {f"network.lstm.{kind}.{l}.{s}" for l in range(2) for kind, sites in
                (("ih", ("A", "B", "bias")), ("hh", ("A", "B"))) for s in sites}
    expected |= {"network.head.A", "network.head.B", "network.head.bias"}
    assert latent_sites(trace) == expected and len(expected) == 13
    samples = {name for name, site in trace.nodes.items() if site["type"] == "sample" and not site_is_subsample(site)}
    assert samples == expected | {"f", "obs"}  # f is pyro.deterministic, obs the likelihood
    assert trace.nodes["f"]["infer"].get("_deterministic")
    obs = trace.nodes["obs"]
    assert obs["is_observed"] and obs["fn"].event_dim == (0 if horizon == 1 else 1)
    assert obs["scale"] == pytest.approx(10.0)  # minibatch of 10 from 100
    assert trace.nodes["f"]["value"].shape == per_datum
    assert trace.nodes["network.head.A"]["value"].shape == (horizon, 1)
    # vectorised prediction puts the draws first
    guide = FactorGuide(model)
    guide(x, y)  # set up with y observed, so obs is not a latent of the guide
    draws = predict(model, guide, x, num_samples=5, return_sites=("f", "obs"))
    assert draws["f"].shape == draws["obs"].shape == (5,) + per_datum
    # vectorised ELBO particles give one likelihood term per particle and datum
    elbo = TraceMeanField_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1)
    loss = elbo.differentiable_loss(model, guide, x, y)
    assert torch.isfinite(loss)


def test_learned_and_fixed_noise():
    learned = LowRankLSTMForecaster(2, hidden_size=4, num_layers=1, rank_ih=1, rank_hh=1, noise_scale=0.3)
    names = dict(learned.named_parameters())
    assert any("noise_scale" in name for name in names)
    assert learned.noise_scale.item() == pytest.approx(0.3)
    fixed = LowRankLSTMForecaster(2, hidden_size=4, num_layers=1, rank_ih=1, rank_hh=1, noise_scale=0.3,
                                  learn_noise=False)
    assert not any("noise_scale" in name for name, _ in fixed.named_parameters())
    assert "likelihood.noise_scale" in dict(fixed.named_buffers())


def test_default_forecaster_parameter_count():
    """The paper's Beijing forecaster (15 features, H = 64, 2 layers, ranks 14/20, rank-1 head)."""
    model = LowRankLSTMForecaster(15)
    h4 = 4 * 64
    lstm = (2 * 14 * (15 + h4) + 2 * h4) + 2 * 20 * (64 + h4) + (2 * 14 * (64 + h4) + 2 * h4) + 2 * 20 * (64 + h4)
    head = 2 * 1 * (64 + 1) + 2 * 1
    assert model.num_variational_parameters() == lstm + head == 43304
    full_rank_mean_field = 2 * ((h4 * (15 + 64) + h4) + (h4 * (64 + 64) + h4) + (64 + 1))
    assert full_rank_mean_field == 107138
    assert model.num_variational_parameters() < 0.45 * full_rank_mean_field


def test_bad_inputs_name_the_argument():
    model = LowRankLSTMForecaster(3, hidden_size=4, num_layers=1, rank_ih=1, rank_hh=1, horizon=2, head_rank=2)
    x = torch.randn(5, 6, 3)
    with pytest.raises(ValueError, match=r"x must have shape \(N, L, input_size=3\) with L >= 1, got \(5, 3\)"):
        model(torch.randn(5, 3))
    with pytest.raises(ValueError, match=r"x must have shape .*got \(5, 6, 4\)"):
        model(torch.randn(5, 6, 4))
    with pytest.raises(ValueError, match=r"y must have shape \(5, 2\) to match x .*got \(5,\)"):
        model(x, torch.randn(5))
    with pytest.raises(ValueError, match=r"y must have shape \(5, 2\) .*got \(4, 2\)"):
        model.check_data(x, torch.randn(4, 2))
    with pytest.raises(ValueError, match=r"x must contain only finite values, got 1 NaN"):
        model.check_data(torch.where(torch.arange(90).reshape(5, 6, 3) == 7, math.nan, x), torch.randn(5, 2))
    with pytest.raises(ValueError, match=r"y must be real-valued"):
        model.check_data(x, torch.ones(5, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"head_rank must be an integer in \[1, min\(m, n\)\] = \[1, 1\]"):
        LowRankLSTMForecaster(3, hidden_size=4, horizon=1, head_rank=2)
    one_step = LowRankLSTMForecaster(3, hidden_size=4, num_layers=1, rank_ih=1, rank_hh=1)
    with pytest.raises(ValueError, match=r"y must have shape \(5,\) .*horizon=1.*got \(5, 1\)"):
        one_step(x, torch.randn(5, 1))
    guide = FactorGuide(one_step)
    with pytest.raises(ValueError, match=r"y must have shape \(5,\)"):  # fit runs check_data first
        fit(one_step, guide, (x, torch.randn(5, 2)), num_epochs=1, progress=False)


def test_is_a_supervised_model_with_the_forecast_likelihood():
    model = LowRankLSTMForecaster(2, hidden_size=4, num_layers=1, rank_ih=1, rank_hh=1, horizon=2, head_rank=1)
    assert isinstance(model, SupervisedModel) and isinstance(model.likelihood, ForecastGaussianLikelihood)
    assert model.lstm is model.network.lstm and model.head is model.network.head
    assert model.lstm.batch_first and model.network(torch.randn(3, 5, 2)).shape == (3, 2)


def test_fit_with_validation_data_and_two_vectorised_particles(one_thread):
    x, y = sine_windows(48, length=6, horizon=2, seed=2)
    x_val, y_val = sine_windows(16, length=6, horizon=2, seed=3)
    pyro.set_rng_seed(0)
    model = LowRankLSTMForecaster(1, hidden_size=4, num_layers=1, rank_ih=1, rank_hh=1, horizon=2, head_rank=1)
    guide = FactorGuide(model)
    result = fit(model, guide, (x, y), val_data=(x_val, y_val), num_particles=2, num_epochs=3, batch_size=16,
                 lr=0.01, val_num_samples=4, progress=False, seed=0)
    assert result.epochs_run == 3 and len(result.train_loss) == len(result.val_nll) == 3
    assert all(math.isfinite(v) for v in result.train_loss + result.val_nll)
    assert result.best_val_nll == min(result.val_nll)
    with pytest.raises(ValueError, match=r"y must have shape \(16, 2\)"):  # val_data goes through check_data too
        fit(model, guide, (x, y), val_data=(x_val, y_val[:, 0]), num_epochs=1, progress=False)


@pytest.mark.parametrize("horizon", [1, 2])
def test_float64_forward_matches_a_hand_computation(horizon):
    """In float64, f at the factor means is the head applied to the LSTM's last hidden state (torch LSTM cell)."""
    torch.manual_seed(0)
    model = LowRankLSTMForecaster(2, hidden_size=3, num_layers=1, rank_ih=2, rank_hh=2, horizon=horizon,
                                  head_rank=1).to(torch.float64)
    x = torch.randn(4, 5, 2, dtype=torch.float64)
    y = torch.randn((4,) if horizon == 1 else (4, horizon), dtype=torch.float64)
    values = factor_initial_values(model)
    trace = poutine.trace(poutine.condition(model, data=values)).get_trace(x, y)
    f = trace.nodes["_RETURN"]["value"]
    assert f.shape == y.shape
    assert f.dtype == trace.nodes["obs"]["fn"].mean.dtype == torch.float64
    w_ih = values["network.lstm.ih.0.A"] @ values["network.lstm.ih.0.B"].T
    w_hh = values["network.lstm.hh.0.A"] @ values["network.lstm.hh.0.B"].T
    h = c = torch.zeros(4, 3, dtype=torch.float64)
    for t in range(5):
        i, g_f, g, o = (x[:, t] @ w_ih.T + h @ w_hh.T + values["network.lstm.ih.0.bias"]).chunk(4, dim=-1)
        c = torch.sigmoid(g_f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
    expected = h @ (values["network.head.A"] @ values["network.head.B"].T).T + values["network.head.bias"]
    expected = expected.reshape(y.shape)
    torch.testing.assert_close(f, expected, rtol=1e-12, atol=1e-12)
    trace.compute_log_prob()
    manual = torch.distributions.Normal(expected, model.noise_scale.detach()).log_prob(y).sum()
    torch.testing.assert_close(trace.nodes["obs"]["log_prob_sum"], manual, rtol=1e-12, atol=1e-12)
