import pyro
import pytest
import torch

import pyro_lowrank  # noqa: F401
from pyro_lowrank.guides import FactorGuide
from pyro_lowrank.predictive import log_predictive_density, pointwise_log_likelihood, predict
from pyro_lowrank.models import LowRankMLP


@pytest.fixture
def trained():
    pyro.set_rng_seed(0)
    model = LowRankMLP(3, [8], rank=2, output_rank=2, likelihood="categorical", num_classes=4)
    guide = FactorGuide(model)
    guide(torch.randn(2, 3), torch.randint(0, 4, (2,)))
    return model, guide


def test_predict_shapes_and_sites(trained):
    model, guide = trained
    x = torch.randn(11, 3)
    draws = predict(model, guide, x, num_samples=7, return_sites=["f", "obs"])
    assert draws["f"].shape == (7, 11, 4) and draws["obs"].shape == (7, 11)


def test_draws_differ_across_samples_but_are_shared_across_chunks(trained):
    model, guide = trained
    x = torch.randn(10, 3)
    pyro.set_rng_seed(1)
    whole = predict(model, guide, x, num_samples=5)["f"]
    pyro.set_rng_seed(1)
    chunked = predict(model, guide, x, num_samples=5, batch_size=3)["f"]
    assert torch.allclose(whole, chunked, atol=1e-6)
    assert not torch.allclose(whole[0], whole[1])


def test_predict_runs_the_model_once_per_chunk_not_per_draw(trained, monkeypatch):
    model, guide = trained
    calls = []
    original = LowRankMLP.forward

    def counting(self, *args, **kwargs):
        calls.append(args[0].shape[0])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LowRankMLP, "forward", counting)
    predict(model, guide, torch.randn(9, 3), num_samples=50, batch_size=5)
    # Predictive traces the model once to guess the plate nesting, then once vectorised per chunk
    assert len(calls) <= 2 * 2 and 50 not in calls


def test_log_predictive_density_matches_the_draws(trained):
    model, guide = trained
    x, y = torch.randn(6, 3), torch.randint(0, 4, (6,))
    pyro.set_rng_seed(2)
    log_lik = pointwise_log_likelihood(model, guide, x, y, num_samples=9)
    pyro.set_rng_seed(2)
    f = predict(model, guide, x, num_samples=9)["f"]
    expected = torch.log_softmax(f, -1).gather(-1, y.expand(9, 6).unsqueeze(-1)).squeeze(-1)
    assert log_lik.shape == (9, 6)
    assert torch.allclose(log_lik, expected, atol=1e-5)
    pyro.set_rng_seed(2)
    lpd = log_predictive_density(model, guide, x, y, num_samples=9)
    assert torch.allclose(lpd, torch.logsumexp(expected, 0) - torch.log(torch.tensor(9.0)), atol=1e-5)


def test_num_samples_must_be_positive(trained):
    model, guide = trained
    with pytest.raises(ValueError, match="num_samples must be a positive integer"):
        predict(model, guide, torch.randn(2, 3), num_samples=0)


def test_a_deterministic_site_whose_event_swallows_the_draws_is_a_clear_error():
    import pyro.distributions as dist
    from pyro.nn import PyroModule

    from pyro_lowrank import LowRankLinear

    class Careless(PyroModule):
        def __init__(self):
            super().__init__()
            self.fc = LowRankLinear(2, 1, 1)

        def forward(self, x, y=None):
            f = self.fc(x).squeeze(-1)
            with pyro.plate("data", x.shape[0]):
                pyro.deterministic("f", f)  # default event_dim = f.dim(): the draws become part of the event
                return pyro.sample("obs", dist.Normal(f, 1.0), obs=y)

    model = Careless()
    guide = FactorGuide(model)
    x = torch.randn(5, 2)
    guide(x, torch.randn(5))
    with pytest.raises(ValueError, match="site 'f' has event_dim=2.*event_dim=k"):
        predict(model, guide, x, num_samples=3)


def test_chunked_predict_keeps_global_sites_global(trained):
    model, guide = trained
    x = torch.randn(10, 3)
    pyro.set_rng_seed(4)
    whole = predict(model, guide, x, num_samples=6, return_sites=["f", "layers.0.A"])
    pyro.set_rng_seed(4)
    chunked = predict(model, guide, x, num_samples=6, return_sites=["f", "layers.0.A"], batch_size=4)
    assert whole["layers.0.A"].shape == chunked["layers.0.A"].shape == (6, 8, 2)
    assert torch.equal(whole["layers.0.A"], chunked["layers.0.A"])
    assert chunked["f"].shape == (6, 10, 4)


def test_unknown_data_plate_is_an_error_not_a_sum_over_the_data(trained):
    model, guide = trained
    x, y = torch.randn(6, 3), torch.randint(0, 4, (6,))
    with pytest.raises(ValueError, match="data_plate must name the plate of the observed site 'obs', one of \\['data'\\]"):
        pointwise_log_likelihood(model, guide, x, y, num_samples=4, data_plate="oops")


def test_max_plate_nesting_runs_models_with_an_improper_prior():
    """A log-uniform site cannot be sampled; the plate-depth trace gives it a zero placeholder instead of failing."""
    from pyro_lowrank.distributions import LogUniform
    from pyro_lowrank.predictive import max_plate_nesting

    def model(x):
        w = pyro.sample("w", LogUniform().expand([3]).to_event(1))
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("y", pyro.distributions.Normal(x @ w, 1.0))

    with pytest.raises(NotImplementedError):
        pyro.poutine.trace(model).get_trace(torch.randn(4, 3))
    x = torch.randn(4, 3)
    state = torch.get_rng_state()
    assert max_plate_nesting(model, x) == 1
    assert torch.equal(torch.get_rng_state(), state)  # the RNG is left untouched
