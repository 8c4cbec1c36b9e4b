"""LRVDGuide: one log-variance per rank component shared by A and B, its clamp, and SVI with the log-uniform prior."""

import pyro
import pytest
import torch
from pyro.infer import TraceMeanField_ELBO

from pyro_lowrank.distributions import LogUniformPrior
from pyro_lowrank.guides import FactorGuide, LRVDGuide
from pyro_lowrank.models import LowRankMLP, LowRankRegression


def _regression(rank=4, n=6, m=5, seed=0):
    torch.manual_seed(seed)
    model = LowRankRegression(n, m, rank, noise_scale=0.5, prior=LogUniformPrior())
    guide = LRVDGuide(model)
    x, y = torch.randn(20, n), torch.randn(20, m)
    guide(x, y)
    return model, guide, x, y


def test_parameters_are_means_plus_one_log_variance_per_component():
    model, guide, _, _ = _regression()
    names = {name: p.shape for name, p in guide.named_parameters()}
    assert names["log_variances.layer.A_unconstrained"] == (4,)
    assert names["locs.layer.A_unconstrained"] == (5, 4) and names["locs.layer.B_unconstrained"] == (6, 4)
    assert "scales.layer.A_unconstrained" not in names and "scales.layer.B_unconstrained" not in names
    assert names["scales.layer.bias_unconstrained"] == (5,)  # the bias stays mean-field
    assert sum(p.numel() for p in guide.parameters()) == 4 * (5 + 6) + 4 + 2 * 5
    assert torch.equal(guide.log_variance("layer.A"), torch.full((4,), -8.0))
    assert guide.pairs == {"layer.A": ("layer.A", "layer.B")}


def test_draws_share_one_standard_deviation_per_column_of_a_and_b():
    model, guide, x, y = _regression()
    with torch.no_grad():
        guide.log_variances.layer.A = torch.log(torch.tensor([0.01, 0.04, 0.25, 1.0]))
        draws = [guide(x, y) for _ in range(4000)]
    for site, loc_name in (("layer.A", "A"), ("layer.B", "B")):
        values = torch.stack([d[site] for d in draws])
        std = values.std(0)  # (rows, r): every row of column k has sigma_k
        expected = torch.tensor([0.1, 0.2, 0.5, 1.0]).expand_as(std)
        assert torch.allclose(std, expected, rtol=0.08), loc_name
        assert torch.allclose(values.mean(0), getattr(guide.locs.layer, loc_name), atol=0.06)


def test_log_variance_is_clamped():
    model, guide, _, _ = _regression()
    with torch.no_grad():
        guide.log_variances.layer.A = torch.tensor([-30.0, -8.0, 1.0, 9.0])
    assert torch.equal(guide.log_variance("layer.A"), torch.tensor([-20.0, -8.0, 1.0, 2.0]))
    loc, scale = guide._get_loc_and_scale("layer.B")
    assert scale.shape == loc.shape == (6, 4)
    assert torch.allclose(scale[0], torch.exp(0.5 * torch.tensor([-20.0, -8.0, 1.0, 2.0])))


def test_svi_step_reaches_the_log_variances_under_vectorised_particles():
    pyro.clear_param_store()
    torch.manual_seed(1)
    model = LowRankMLP(5, [8], rank=3, output_rank=1, likelihood="gaussian", prior=LogUniformPrior())
    guide = LRVDGuide(model)
    x, y = torch.randn(16, 5), torch.randn(16)
    loss_fn = TraceMeanField_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1)(model, guide)
    loss = loss_fn(x, y)
    loss.backward()
    assert torch.isfinite(loss)
    grads = {name: p.grad for name, p in guide.named_parameters() if "log_variances" in name}
    assert set(grads) == {"log_variances.layers.0.A_unconstrained", "log_variances.layers.1.A_unconstrained"}
    assert all(g is not None and bool(g.abs().sum() > 0) for g in grads.values())


def test_kl_of_the_factor_sites_is_the_log_uniform_approximation():
    from pyro_lowrank.distributions import log_uniform_kl

    model, guide, x, y = _regression()
    guide_trace = pyro.poutine.trace(guide).get_trace(x, y)
    model_trace = pyro.poutine.trace(pyro.poutine.replay(model, trace=guide_trace)).get_trace(x, y)
    kl = torch.distributions.kl_divergence(guide_trace.nodes["layer.A"]["fn"], model_trace.nodes["layer.A"]["fn"])
    loc = guide.locs.layer.A
    expected = log_uniform_kl(-8.0 - torch.log(loc.square() + 1e-8)).sum()
    assert torch.allclose(kl, expected)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"log_variance_bounds": (2.0, -20.0)}, "log_variance_bounds"), ({"init_log_variance": 5.0}, "init_log_variance")],
)
def test_bad_arguments(kwargs, match):
    model = LowRankRegression(4, 3, 2, prior=LogUniformPrior())
    with pytest.raises(ValueError, match=match):
        LRVDGuide(model, **kwargs)


def test_needs_a_module_model():
    with pytest.raises(TypeError, match="nn.Module"):
        LRVDGuide(lambda x: None)


def test_is_a_factor_guide():
    model, guide, _, _ = _regression()
    assert isinstance(guide, FactorGuide)
    median = guide.median()
    assert torch.equal(median["layer.A"], guide.locs.layer.A)


def test_weight_posterior_reads_the_rankwise_scales():
    model, guide, _, _ = _regression()
    with torch.no_grad():
        guide.log_variances.layer.A = torch.log(torch.tensor([0.01, 0.04, 0.25, 1.0]))
    q_w = model.layer.weight_posterior(guide)
    sigma = torch.tensor([0.1, 0.2, 0.5, 1.0])
    assert torch.allclose(q_w.a_scale, sigma.expand(5, 4)) and torch.allclose(q_w.b_scale, sigma.expand(6, 4))
    assert torch.allclose(q_w.mean, guide.locs.layer.A @ guide.locs.layer.B.T)
