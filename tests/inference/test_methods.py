import pytest
import torch

from pyro_lowrank.inference.methods import Method, available_methods, make_method, register_method
from pyro_lowrank.metrics import accuracy
from toy_data import blobs


ARCH = {"in_features": 2, "hidden_features": [16], "num_classes": 3, "batch_size": 32, "seed": 0}
SETTINGS = {
    "deterministic": {"num_epochs": 30, "lr": 1e-2},
    "ensemble": {"num_epochs": 30, "lr": 1e-2, "num_members": 3},
    "mc_dropout": {"num_epochs": 30, "lr": 1e-2, "dropout": 0.2},
    "lowrank": {"num_epochs": 60, "lr": 2e-2, "rank": 2},
    "lowrank_svd": {"num_epochs": 60, "lr": 2e-2, "rank": 2, "pretrain_epochs": 30},
}
# learned scalars of a 2-16-3 MLP: 2*16 + 16 + 16*3 + 3
DENSE = 2 * 16 + 16 + 16 * 3 + 3
EXPECTED_PARAMETERS = {
    "deterministic": DENSE,
    "ensemble": 3 * DENSE,
    "mc_dropout": DENSE,
    # 2 r (m + n) + 2 m per layer: hidden 16x2 at r=2, output 3x16 at r=3 (full rank for 3 classes)
    "lowrank": 2 * 2 * (16 + 2) + 2 * 16 + 2 * 3 * (3 + 16) + 2 * 3,
    "lowrank_svd": 2 * 2 * (16 + 2) + 2 * 16 + 2 * 3 * (3 + 16) + 2 * 3,
}
NUM_DRAWS = {"deterministic": 1, "ensemble": 3, "mc_dropout": 8, "lowrank": 8, "lowrank_svd": 8}


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_each_method_fits_and_beats_the_majority_class(name):
    x, y = blobs()
    x_test, y_test = blobs(seed=1)
    method = make_method(name, **ARCH, **SETTINGS[name]).fit((x, y), (x_test[:30], y_test[:30]))
    assert isinstance(method, Method) and method.name == name
    draws = method.predictive_draws(x_test, num_samples=8)
    probs = draws["probs"]
    assert probs.shape == (NUM_DRAWS[name], 240, 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:2]))
    assert accuracy(probs, y_test) > 0.8  # the majority class scores 1/3
    assert method.num_parameters == EXPECTED_PARAMETERS[name]
    assert method.training_seconds > 0


def test_stochastic_methods_give_distinct_draws_and_deterministic_ones_repeat():
    x, y = blobs()
    dropout = make_method("mc_dropout", **ARCH, **SETTINGS["mc_dropout"]).fit((x, y))
    probs = dropout.predictive_draws(x[:10], num_samples=4)["probs"]
    assert not torch.allclose(probs[0], probs[1])
    det = make_method("deterministic", **ARCH, **SETTINGS["deterministic"]).fit((x, y))
    torch.testing.assert_close(det.predictive_draws(x[:10], 4)["probs"], det.predictive_draws(x[:10], 4)["probs"])


def test_ensemble_members_differ_and_their_mean_is_the_prediction():
    x, y = blobs()
    ensemble = make_method("ensemble", **ARCH, **SETTINGS["ensemble"]).fit((x, y))
    first, second = (net.layers[0].weight for net in ensemble.networks[:2])
    assert not torch.allclose(first, second)  # independent initialisations
    probs = ensemble.predictive_draws(x[:5])["probs"]
    members = torch.stack([torch.softmax(net(x[:5]), -1) for net in ensemble.networks])
    torch.testing.assert_close(probs, members)


def test_svd_init_starts_at_the_twins_best_rank_r_approximation():
    x, y = blobs()
    method = make_method("lowrank_svd", **ARCH, **SETTINGS["lowrank_svd"])
    model, _ = method.build((x, y))
    hidden, twin_hidden = model.layers[0], method.twin.layers[0]
    u, s, vh = torch.linalg.svd(twin_hidden.weight.detach())
    best = (u[:, :2] * s[:2]) @ vh[:2]
    torch.testing.assert_close(hidden.a_init @ hidden.b_init.T, best, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(hidden.bias_init, twin_hidden.bias.detach())
    assert method.pretrain_seconds > 0


def test_regression_draws_carry_the_noise_scale():
    gen = torch.Generator().manual_seed(0)
    x = torch.linspace(-2, 2, 100).unsqueeze(-1)
    y = 0.5 * x[:, 0] + 0.1 * torch.randn(100, generator=gen)
    method = make_method("lowrank", in_features=1, hidden_features=[8], likelihood="gaussian", noise_scale=0.1,
                         rank=1, num_epochs=5, batch_size=50).fit((x, y))
    draws = method.predictive_draws(x, num_samples=6)
    assert draws["mean"].shape == draws["scale"].shape == (6, 100)
    assert torch.all(draws["scale"] == 0.1)
    dropout = make_method("mc_dropout", in_features=1, hidden_features=[8], likelihood="gaussian", noise_scale=0.1,
                          num_epochs=5).fit((x, y))
    assert dropout.predictive_draws(x, 3)["mean"].shape == (3, 100)


def test_registry_and_configuration_errors():
    assert {"deterministic", "ensemble", "mc_dropout", "lowrank", "lowrank_svd"} <= set(available_methods())
    with pytest.raises(ValueError, match="name must be one of the registered methods .*got 'bbb'"):
        make_method("bbb", **ARCH)
    with pytest.raises(TypeError, match="rank"):
        make_method("deterministic", **ARCH, rank=3)
    with pytest.raises(ValueError, match="num_classes is required for likelihood='categorical'"):
        make_method("deterministic", in_features=2, hidden_features=[4])
    with pytest.raises(ValueError, match="likelihood must be one of \\['categorical', 'gaussian'\\]"):
        make_method("deterministic", in_features=2, hidden_features=[4], likelihood="poisson")
    with pytest.raises(ValueError, match="num_members must be a positive integer"):
        make_method("ensemble", **ARCH, num_members=0)
    method = make_method("deterministic", **ARCH)
    with pytest.raises(RuntimeError, match="call fit\\(train, val\\) before predictive_draws"):
        method.predictive_draws(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="train x must have shape \\(N, 2\\), got \\(5, 3\\)"):
        method.fit((torch.zeros(5, 3), torch.zeros(5, dtype=torch.long)))
    with pytest.raises(ValueError, match="method name 'lowrank' is already registered"):
        register_method("lowrank")(type("Other", (Method,), {}))


CHEAP = {"num_epochs": 2}
EXTRA = {"ensemble": {"num_members": 2}, "lowrank": {"rank": 2}, "lowrank_svd": {"rank": 2}, "swag": {"swag_epochs": 2},
         "rank1": {"num_components": 2}, "laplace_factor": {"rank": 2}, "laplace_factor_glm": {"rank": 2},
         "laplace_diffusion": {"rank": 2, "num_steps": 2, "pool_size": 3, "num_eigenpairs": 4},
         "fiber_walk": {"rank": 2, "num_particles": 3, "walk_steps": 30, "flow_steps": 10}}


@pytest.mark.parametrize("name", sorted(available_methods()))
def test_every_method_runs_in_float64_and_predicts_any_float_input(name):
    x, y = blobs(60)
    x64 = x.double()
    method = make_method(name, **ARCH, **CHEAP, **EXTRA.get(name, {})).fit((x64, y), (x64[:20], y[:20]))
    assert method.dtype == torch.float64
    probs = method.predictive_draws(x64[:7], num_samples=3)["probs"]
    assert probs.dtype == torch.float64 and probs.shape[1:] == (7, 3)
    assert method.predictive_draws(x[:7], num_samples=3)["probs"].dtype == torch.float64  # float32 input is cast


@pytest.mark.parametrize("name", ["deterministic", "lowrank", "mc_dropout"])
def test_same_seed_same_draws(name):
    x, y = blobs(60)
    draws = []
    for _ in range(2):
        method = make_method(name, **ARCH, **CHEAP, **EXTRA.get(name, {})).fit((x, y))
        torch.manual_seed(1)
        draws.append(method.predictive_draws(x[:5], num_samples=4)["probs"])
    torch.testing.assert_close(draws[0], draws[1], rtol=0, atol=0)


def test_data_checks_name_the_argument():
    x, y = blobs(30)
    method = make_method("deterministic", **ARCH, **CHEAP)
    with pytest.raises(ValueError, match="train y must hold integer class labels in \\[0, 3\\), got values in \\[0, 5\\]"):
        method.fit((x, torch.where(y == 2, 5, y)))
    with pytest.raises(ValueError, match="val x must have shape \\(N, 2\\), got \\(4, 3\\)"):
        method.fit((x, y), (torch.zeros(4, 3), torch.zeros(4, dtype=torch.long)))
    with pytest.raises(ValueError, match="train x must be a floating-point tensor"):
        method.fit((x.long(), y))
    method.fit((x, y))
    with pytest.raises(ValueError, match="x must have shape \\(N, 2\\), got \\(2,\\)"):
        method.predictive_draws(torch.zeros(2))
    with pytest.raises(ValueError, match="num_classes is only used with likelihood='categorical'"):
        make_method("deterministic", in_features=2, hidden_features=[4], likelihood="gaussian", num_classes=3)
    with pytest.raises(ValueError, match="rank\\[0\\] must be an integer in .* = \\[1, 2\\] for a 7x2 matrix, got 15"):
        make_method("lowrank", in_features=2, hidden_features=[7], num_classes=3)  # default rank 15, checked at once


def test_lowrank_prior_choice_reaches_every_layer():
    from pyro_lowrank.distributions import GaussianPrior, ScaleMixturePrior

    x, y = blobs(90)
    method = make_method("lowrank", in_features=2, hidden_features=[8], num_classes=3, num_epochs=2, rank=2,
                         prior="scale_mixture")
    model = method.make_model()
    assert all(isinstance(layer.prior, ScaleMixturePrior) for layer in model.layers)
    assert model.layers[0].prior is not model.layers[1].prior
    method.fit((x, y))  # the mixture has no closed-form KL: TraceMeanField_ELBO falls back to Monte Carlo
    assert torch.isfinite(method.predictive_draws(x, 4)["probs"]).all()
    plain = make_method("lowrank", in_features=2, hidden_features=[8], num_classes=3, rank=2,
                        prior_scale=0.3).make_model()
    assert isinstance(plain.layers[0].prior, GaussianPrior) and float(plain.layers[0].prior.scale) == pytest.approx(0.3)
    with pytest.raises(ValueError, match=r"prior must be one of \['gaussian', 'scale_mixture'\], got 'laplace'"):
        make_method("lowrank", in_features=2, hidden_features=[8], num_classes=3, rank=2, prior="laplace")
