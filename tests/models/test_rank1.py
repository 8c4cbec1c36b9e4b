import math

import pyro
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO
from pyro_lowrank.inference import fit
from pyro_lowrank.inference.methods import count_parameters
from pyro_lowrank.models.rank1 import Rank1Linear, Rank1MLP
from torch.distributions import kl_divergence

import pyro_lowrank  # noqa: F401  (module-local params)
from pyro_lowrank.guides import FactorGuide
from pyro_lowrank.predictive import (
    log_predictive_density,
    pointwise_log_likelihood,
    predict,
)
from toy_data import imbalanced_blobs


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny networks: one intra-op thread avoids thread contention on shared CPUs (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _dense(layer, x, r, s):
    """x (W0 o r s^T)^T + b with W formed explicitly."""
    w = layer.weight * r.unsqueeze(-1) * s.unsqueeze(-2)
    return (x.unsqueeze(-2) @ w.transpose(-1, -2).unsqueeze(-3)).squeeze(-2) + layer.bias


def _majority(y):
    return torch.bincount(y).max().item() / y.numel()


# ---------------------------------------------------------------------------------------------------- the layer
def test_forward_equals_dense_computation():
    layer = Rank1Linear(5, 4)
    x = torch.randn(7, 5)
    r, s = torch.randn(4), torch.randn(5)
    out = poutine.condition(layer, data={"r": r, "s": s})(x)
    torch.testing.assert_close(out, x @ (layer.weight * torch.outer(r, s)).T + layer.bias)


def test_unit_factors_give_the_deterministic_layer():
    layer = Rank1Linear(5, 4)
    x = torch.randn(7, 5)
    out = poutine.condition(layer, data={"r": torch.ones(4), "s": torch.ones(5)})(x)
    torch.testing.assert_close(out, F.linear(x, layer.weight, layer.bias))


def test_forward_with_particle_dims_matches_dense_per_particle():
    layer = Rank1Linear(5, 4)
    x = torch.randn(7, 5)
    with pyro.plate("particles", 3, dim=-2):  # vectorised ELBO particles: factors (P, 1, m)
        trace = poutine.trace(layer).get_trace(x)
    r, s = trace.nodes["r"]["value"], trace.nodes["s"]["value"]
    assert r.shape == (3, 1, 4) and s.shape == (3, 1, 5)
    out = trace.nodes["_RETURN"]["value"]
    assert out.shape == (3, 7, 4)
    torch.testing.assert_close(out, _dense(layer, x, r[:, 0], s[:, 0]))


def test_components_layer_opens_its_plate_and_matches_dense_per_component():
    layer = Rank1Linear(5, 4, num_components=3)
    x = torch.randn(7, 5)
    trace = poutine.trace(layer).get_trace(x)
    r, s = trace.nodes["r"]["value"], trace.nodes["s"]["value"]
    assert r.shape == (3, 1, 4) and s.shape == (3, 1, 5)
    assert [f.name for f in trace.nodes["r"]["cond_indep_stack"]] == ["components"]
    out = trace.nodes["_RETURN"]["value"]
    assert out.shape == (3, 7, 4)
    torch.testing.assert_close(out, _dense(layer, x, r[:, 0], s[:, 0]))
    with pyro.plate("particles", 2, dim=-3):
        out = layer(x)
    assert out.shape == (2, 3, 7, 4)


def test_prior_has_mean_one_and_the_closed_form_weight_variance():
    sigma, num = 0.5, 40000
    layer = Rank1Linear(4, 3, prior_scale=sigma)
    with pyro.plate("draws", num, dim=-1):
        trace = poutine.trace(layer).get_trace(torch.ones(4))
    r, s = trace.nodes["r"]["value"], trace.nodes["s"]["value"]
    torch.testing.assert_close(r.mean(0), torch.ones(3), atol=5 * sigma / math.sqrt(num), rtol=0)
    w = layer.weight_from_factors(r, s).detach().double()  # (num, 3, 4)
    w0 = layer.weight.detach().double()
    mean, var = w.mean(0), w.var(0)
    # E W = W0 within 5 Monte Carlo standard errors
    assert bool(((mean - w0).abs() <= 5 * (var / num).sqrt()).all())
    # Var W_ij = W0_ij^2 ((1 + sigma^2)^2 - 1) within 5 standard errors of the sample variance
    expected = w0.square() * ((1 + sigma**2) ** 2 - 1)
    fourth = ((w - mean) ** 4).mean(0)
    se = ((fourth - var.square()) / num).sqrt()
    assert bool(((var - expected).abs() <= 5 * se).all())
    # the sigma^4 term matters: 2 sigma^2 alone (the first-order formula) is rejected
    assert bool(((var - w0.square() * 2 * sigma**2).abs() > 5 * se).any())


@pytest.mark.parametrize("random_sign_init", [0.5, 0.0, -0.5])
def test_initial_values_and_guide_start(random_sign_init):
    model = Rank1MLP(3, [6], num_classes=2, num_components=3, random_sign_init=random_sign_init,
                     init_scale_factor=0.05)
    layer = model.layers[0]
    values = layer.initial_values()
    assert set(values) == {"layers.0.r", "layers.0.s"}
    assert values["layers.0.r"].shape == (3, 1, 6) and values["layers.0.s"].shape == (3, 1, 3)
    r0 = values["layers.0.r"]
    if random_sign_init > 0:
        assert set(r0.unique().tolist()) <= {-1.0, 1.0}
    elif random_sign_init == 0:
        assert bool((r0 == 1).all())
    else:
        assert not bool((r0 == 1).any())
    guide = FactorGuide(model)
    guide(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))
    loc, scale = guide._get_loc_and_scale("layers.0.r")
    torch.testing.assert_close(loc.detach(), r0)
    torch.testing.assert_close(scale.detach(), torch.full_like(r0, 0.05))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_components": 0}, "num_components must be a positive integer .* got 0"),
        ({"num_components": 1.5}, "num_components must be a positive integer .* got 1.5"),
        ({"num_components": True}, "num_components must be a positive integer .* got True"),
        ({"random_sign_init": 1.5}, "random_sign_init must be a finite number <= 1 .* got 1.5"),
        ({"random_sign_init": float("nan")}, "random_sign_init must be a finite number"),
        ({"prior_scale": 0.0}, "prior_scale must be finite and > 0"),
        ({"init_scale_factor": -1.0}, "init_scale_factor must be finite and > 0"),
        ({"component_dim": 0}, "component_dim must be a negative integer .* got 0"),
    ],
)
def test_bad_layer_configuration_is_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Rank1Linear(3, 2, **kwargs)


def test_mismatched_components_plate_is_refused():
    layer = Rank1Linear(3, 2, num_components=2)
    with (pytest.raises(ValueError, match="plate 'components' of size 3 .* num_components=2"),
          pyro.plate("components", 3, dim=-2)):
        layer(torch.randn(4, 3))
    with pytest.raises(ValueError, match="last dimension 3, got shape \\(4, 2\\)"):
        layer(torch.randn(4, 2))


def test_bad_mlp_configuration_is_rejected():
    with pytest.raises(ValueError, match="num_components must be a positive integer"):
        Rank1MLP(3, [4], num_classes=2, num_components=0)
    with pytest.raises(ValueError, match="num_classes"):
        Rank1MLP(3, [4])
    with pytest.raises(ValueError, match="num_classes is only used with likelihood='categorical'"):
        Rank1MLP(3, [4], likelihood="gaussian", num_classes=2)
    model = Rank1MLP(3, [4], likelihood="gaussian")
    with pytest.raises(ValueError, match="not both"):
        model(torch.randn(5, 3), num_data=10, subsample_size=2)
    with pytest.raises(ValueError, match="y must have shape \\(5,\\) to match x, got \\(4,\\)"):
        model(torch.randn(5, 3), torch.randn(4))


# ---------------------------------------------------------------------------------------------------- the model
def test_parameter_count_formula():
    model = Rank1MLP(3, [6, 5], num_classes=4, num_components=2)
    guide = FactorGuide(model)
    guide(torch.randn(4, 3), torch.tensor([0, 1, 2, 3]))

    def formula(m, n, k):
        return m * n + m + 2 * k * (m + n)

    expected = formula(6, 3, 2) + formula(5, 6, 2) + formula(4, 5, 2)
    assert model.num_variational_parameters() == expected
    assert count_parameters([model, guide]) == expected


def test_training_objective_averages_members_likelihood_and_sums_their_kl():
    num, batch, k = 50, 8, 3
    model = Rank1MLP(2, [5], num_classes=3, num_components=k)
    guide = FactorGuide(model)
    x, y = torch.randn(batch, 2), torch.randint(0, 3, (batch,))
    guide(x, y, num_data=num)
    pyro.set_rng_seed(1)
    loss = TraceMeanField_ELBO().differentiable_loss(model, guide, x, y, num_data=num)
    pyro.set_rng_seed(1)
    guide_trace = poutine.trace(guide).get_trace(x, y, num_data=num)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, y, num_data=num)
    obs = model_trace.nodes["obs"]
    assert obs["fn"].batch_shape == (k, batch)
    assert obs["scale"] == pytest.approx(num / batch / k)
    f = model_trace.nodes["f"]["value"]  # (K, B, C)
    log_lik = torch.log_softmax(f, -1).gather(-1, y.expand(k, batch).unsqueeze(-1)).sum()
    kl = sum(kl_divergence(guide_trace.nodes[name]["fn"], model_trace.nodes[name]["fn"]).sum()
             for name in ("layers.0.r", "layers.0.s", "layers.1.r", "layers.1.s"))
    torch.testing.assert_close(loss, -(num / batch) * log_lik / k + kl)


def test_predictive_obs_is_the_mixture_over_components():
    model = Rank1MLP(2, [5], num_classes=3, num_components=2)
    guide = FactorGuide(model)
    x, y = torch.randn(6, 2), torch.randint(0, 3, (6,))
    guide(x, y)
    pyro.set_rng_seed(3)
    f = predict(model, guide, x, 4)["f"]
    pyro.set_rng_seed(3)
    log_lik = pointwise_log_likelihood(model, guide, x, y, 4)
    assert f.shape == (4, 2, 6, 3) and log_lik.shape == (4, 6)
    probs = torch.softmax(f, -1).gather(-1, y.expand(4, 2, 6).unsqueeze(-1)).squeeze(-1)  # (S, K, N)
    torch.testing.assert_close(log_lik, probs.mean(1).log())
    assert predict(model, guide, x, 4, return_sites=("obs",))["obs"].shape == (4, 6)
    pyro.set_rng_seed(3)
    chunked = predict(model, guide, x, 4, batch_size=4)["f"]  # chunks concatenate along the data dimension
    torch.testing.assert_close(chunked, f)


def test_gaussian_predictive_density_is_the_mixture_over_components():
    model = Rank1MLP(2, [5], likelihood="gaussian", noise_scale=0.5, num_components=3)
    guide = FactorGuide(model)
    x, y = torch.randn(6, 2), torch.randn(6)
    guide(x, y)
    pyro.set_rng_seed(4)
    f = predict(model, guide, x, 5)["f"]  # (S, K, N)
    pyro.set_rng_seed(4)
    log_lik = pointwise_log_likelihood(model, guide, x, y, 5)
    expected = torch.distributions.Normal(f, 0.5).log_prob(y).logsumexp(1) - math.log(3)
    torch.testing.assert_close(log_lik, expected)


def test_single_component_has_lowrank_mlp_shapes():
    model = Rank1MLP(2, [5], likelihood="gaussian")
    guide = FactorGuide(model)
    x = torch.randn(6, 2)
    guide(x, torch.randn(6))
    assert predict(model, guide, x, 4)["f"].shape == (4, 6)
    trace = poutine.trace(model).get_trace(x)
    assert "components" not in trace.nodes
    assert trace.nodes["layers.0.r"]["value"].shape == (5,)


def test_fit_single_component_beats_majority_class():
    x, y = imbalanced_blobs(300)
    model = Rank1MLP(2, [16], num_classes=3)
    guide = FactorGuide(model)
    fit(model, guide, (x, y), num_epochs=10, batch_size=100, lr=0.03, seed=0, progress=False)
    x_test, y_test = imbalanced_blobs(200, seed=1)
    probs = torch.softmax(predict(model, guide, x_test, 16)["f"], -1).mean(0)
    accuracy = (probs.argmax(-1) == y_test).float().mean().item()
    assert accuracy > _majority(y_test) + 0.3


def test_fit_two_components_members_differ_and_draws_are_k_times_s():
    x, y = imbalanced_blobs(300)
    model = Rank1MLP(2, [16], num_classes=3, num_components=2)
    guide = FactorGuide(model)
    x_val, y_val = imbalanced_blobs(100, seed=2)
    result = fit(model, guide, (x, y), val_data=(x_val, y_val), num_epochs=10, batch_size=100, lr=0.03, seed=0,
                 progress=False)
    assert all(math.isfinite(v) for v in result.val_nll)
    # the members differ after training: factor means and member predictions
    for name in ("layers.0.r", "layers.0.s", "layers.1.r", "layers.1.s"):
        loc, _ = guide._get_loc_and_scale(name)
        assert loc.shape[0] == 2 and (loc[0] - loc[1]).abs().max() > 0.01
    x_test, y_test = imbalanced_blobs(200, seed=1)
    f = predict(model, guide, x_test, 8)["f"]
    assert f.shape == (8, 2, 200, 3)
    draws = torch.softmax(f, -1).reshape(16, 200, 3)  # K S draws of the mixture predictive
    member = torch.softmax(f, -1).mean(0)  # (K, N, C)
    assert (member[0] - member[1]).abs().max() > 0.02
    accuracy = (draws.mean(0).argmax(-1) == y_test).float().mean().item()
    assert accuracy > _majority(y_test) + 0.3
    nll = -log_predictive_density(model, guide, x_test, y_test, 8).mean()
    assert nll < math.log(3)
