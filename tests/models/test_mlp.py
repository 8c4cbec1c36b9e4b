import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import TraceMeanField_ELBO

import pyro_lowrank  # noqa: F401  (module-local params)
from pyro_lowrank.guides import FactorGuide
from pyro_lowrank.models import DeterministicMLP, LowRankMLP


def _trace(model, *args, **kwargs):
    return poutine.trace(model).get_trace(*args, **kwargs)


def test_ranks_per_layer_and_rank_one_output_by_default():
    model = LowRankMLP(6, [8, 5], rank=[4, 3], likelihood="bernoulli")
    assert model.ranks == (4, 3, 1)
    assert [layer.rank for layer in model.layers] == [4, 3, 1]
    assert [(l.in_features, l.out_features) for l in model.layers] == [(6, 8), (8, 5), (5, 1)]
    model = LowRankMLP(6, [8], rank=2, output_rank=3, likelihood="categorical", num_classes=4)
    assert model.ranks == (2, 3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rank": [2]}, "one per hidden layer"),
        ({"rank": 7}, "rank\\[0\\] must be an integer in \\[1, min\\(m, n\\)\\] = \\[1, 6\\]"),
        ({"rank": [3, 9]}, "rank\\[1\\] must be an integer in \\[1, min\\(m, n\\)\\] = \\[1, 8\\] .* got 9"),
        ({"rank": 2.5}, "rank\\[0\\] must be an integer .* got 2.5 of type float"),
        ({"num_classes": 3}, "num_classes is only used with likelihood='categorical'"),
        ({"output_rank": 2}, "output_rank must be an integer in \\[1, min\\(m, n\\)\\] = \\[1, 1\\]"),
        ({"likelihood": "poisson"}, "likelihood must be"),
    ],
)
def test_bad_configuration_is_rejected(kwargs, match):
    base = {"rank": 2, "likelihood": "gaussian"}
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        LowRankMLP(6, [8, 8], **base)


def test_categorical_needs_num_classes():
    with pytest.raises(ValueError, match="num_classes"):
        LowRankMLP(3, [4], rank=2, likelihood="categorical")
    with pytest.raises(ValueError, match="num_classes must be a positive integer, got 0"):
        LowRankMLP(3, [4], rank=2, likelihood="categorical", num_classes=0)


def test_numpy_integer_ranks_are_accepted():
    import numpy as np

    model = LowRankMLP(6, [8], rank=np.int64(3), likelihood="gaussian")
    assert model.ranks == (3, 1)


def test_num_data_and_subsample_size_together_are_refused():
    model = LowRankMLP(3, [4], rank=2, likelihood="gaussian")
    with pytest.raises(ValueError, match="not both; got num_data=10 and subsample_size=2"):
        model(torch.randn(5, 3), num_data=10, subsample_size=2)


@pytest.mark.parametrize("likelihood, y, match", [
    ("categorical", torch.tensor([0, 1, 5]), "y must hold integer class labels in \\[0, 3\\), got dtype torch.int64 and range \\[0, 5\\]"),
    ("categorical", torch.tensor([0.0, 1.0, 2.0]), "y must hold integer class labels"),
    ("bernoulli", torch.tensor([0.0, 1.0, 2.0]), "y must contain only 0 and 1"),
    ("gaussian", torch.randn(3, 1), "y must have shape \\(3,\\) to match x, got \\(3, 1\\)"),
])
def test_check_data_names_bad_targets(likelihood, y, match):
    model = LowRankMLP(2, [4], rank=2, likelihood=likelihood, num_classes=3 if likelihood == "categorical" else None)
    with pytest.raises(ValueError, match=match):
        model.check_data(torch.randn(3, 2), y)


def test_bad_inputs_name_the_argument():
    model = LowRankMLP(3, [4], rank=2, likelihood="gaussian")
    with pytest.raises(ValueError, match="last dimension 3, got shape \\(5, 2\\)"):
        model(torch.randn(5, 2))
    with pytest.raises(ValueError, match="y must have shape \\(5,\\) to match x, got \\(4,\\)"):
        model(torch.randn(5, 3), torch.randn(4))


@pytest.mark.parametrize("likelihood, y", [
    ("gaussian", torch.randn(10)),
    ("bernoulli", torch.randint(0, 2, (10,)).float()),
    ("categorical", torch.randint(0, 3, (10,))),
])
def test_likelihood_sites_and_shapes(likelihood, y):
    model = LowRankMLP(4, [6], rank=2, likelihood=likelihood, num_classes=3 if likelihood == "categorical" else None)
    x = torch.randn(10, 4)
    tr = _trace(model, x, y)
    obs = tr.nodes["obs"]
    assert obs["is_observed"] and torch.equal(obs["value"], y.to(obs["value"].dtype))
    f = tr.nodes["f"]["value"]
    assert f.shape == ((10, 3) if likelihood == "categorical" else (10,))
    latent = [n for n, s in tr.nodes.items() if s["type"] == "sample" and not s["is_observed"] and n != "data"]
    assert sorted(latent) == sorted(f"layers.{i}.{s}" for i in range(2) for s in ("A", "B", "bias"))
    # factor sites are global: no plate around them
    assert all(not tr.nodes[n]["cond_indep_stack"] for n in latent)


def test_learned_noise_is_a_parameter_and_fixed_noise_is_a_buffer():
    learned = LowRankMLP(3, [4], rank=2, likelihood="gaussian", learn_noise=True, noise_scale=0.5)
    fixed = LowRankMLP(3, [4], rank=2, likelihood="gaussian", noise_scale=0.5)
    assert "likelihood.noise_scale_unconstrained" in dict(learned.named_parameters())
    assert "likelihood.noise_scale" in dict(fixed.named_buffers())
    assert float(learned.likelihood.noise_scale.detach()) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="noise_scale"):
        LowRankMLP(3, [4], rank=2, likelihood="gaussian", noise_scale=0.0)


def test_minibatch_scaling_by_num_data_and_by_subsampling_plate():
    model = LowRankMLP(3, [4], rank=2, likelihood="gaussian")
    x, y = torch.randn(8, 3), torch.randn(8)
    tr = _trace(model, x, y, num_data=100)
    assert tr.nodes["obs"]["scale"] == pytest.approx(100 / 8)
    tr = _trace(model, torch.randn(40, 3), torch.randn(40), subsample_size=10)
    assert tr.nodes["obs"]["scale"] == pytest.approx(4.0)
    assert tr.nodes["obs"]["value"].shape == (10,)
    tr = _trace(model, x, y)
    assert tr.nodes["obs"]["scale"] == 1.0


def test_subsampling_plate_uses_matching_x_and_y_rows():
    model = LowRankMLP(1, [2], rank=1, likelihood="gaussian")
    x = torch.arange(30.0).unsqueeze(-1)
    y = torch.arange(30.0) * 10
    pyro.set_rng_seed(3)
    tr = _trace(model, x, y, subsample_size=7)
    index = tr.nodes["data"]["value"]
    assert torch.equal(tr.nodes["obs"]["value"], y[index])


def test_vectorised_particles_give_a_finite_elbo_and_gradients():
    model = LowRankMLP(4, [6, 6], rank=3, likelihood="categorical", num_classes=3, output_rank=2)
    guide = FactorGuide(model)
    x, y = torch.randn(12, 4), torch.randint(0, 3, (12,))
    loss_fn = TraceMeanField_ELBO(num_particles=5, vectorize_particles=True, max_plate_nesting=1)(model, guide)
    loss = loss_fn(x, y, num_data=50)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in loss_fn.parameters()]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


def test_deterministic_twin_has_the_same_widths():
    net = DeterministicMLP(6, [8, 5], 3)
    assert [(l.in_features, l.out_features) for l in net.layers] == [(6, 8), (8, 5), (5, 3)]
    assert net(torch.randn(2, 6)).shape == (2, 3)
    with pytest.raises(ValueError, match="last dimension 6"):
        net(torch.randn(2, 5))
