import pytest
import torch

import pyro_lowrank.inference.methods.swag  # registers "swag"
from pyro_lowrank.inference.methods import Method, make_method

HAS_LAPLACE = True
try:
    import laplace  # noqa: F401

    import pyro_lowrank.inference.methods.laplace  # noqa: F401  (registers "laplace", "laplace_full")
except ImportError:  # pragma: no cover - laplace-torch is an optional extra
    HAS_LAPLACE = False

needs_laplace = pytest.mark.skipif(not HAS_LAPLACE, reason="needs laplace-torch")


def _blobs(n=240, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.5]])
    y = torch.arange(n) % 3
    return centres[y] + 0.7 * torch.randn(n, 2, generator=gen), y


ARCH = {"in_features": 2, "hidden_features": [16], "num_classes": 3, "batch_size": 32, "seed": 0,
        "num_epochs": 20, "lr": 1e-2}
SETTINGS = {
    "swag": {"swag_epochs": 6, "swag_lr": 0.02, "max_rank": 5},
    "laplace": {},
    "laplace_full": {},
}
# 2-16-3 MLP: P = 2*16 + 16 + 16*3 + 3
P = 2 * 16 + 16 + 16 * 3 + 3
EXPECTED_PARAMETERS = {
    "swag": 2 * P + 5 * P,  # first and second moments + K = 5 deviation columns
    "laplace": P + (3 * 3 + 16 * 16) + 3 * 3 + 1,  # MAP + K-FAC factors of the 3x16 last weight and its bias + prior
    "laplace_full": P + P + 1,  # MAP + diagonal GGN + scalar prior precision
}
NAMES = ["swag", pytest.param("laplace", marks=needs_laplace), pytest.param("laplace_full", marks=needs_laplace)]


@pytest.mark.parametrize("name", NAMES)
def test_method_fits_and_beats_the_majority_class(name):
    x, y = _blobs()
    x_test, y_test = _blobs(seed=1)
    method = make_method(name, **ARCH, **SETTINGS[name]).fit((x, y), _blobs(seed=2))
    assert isinstance(method, Method) and method.name == name
    probs = method.predictive_draws(x_test, num_samples=8)["probs"]
    assert probs.shape == (8, 240, 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(8, 240))
    assert not torch.allclose(probs[0], probs[1])  # sampled draws differ
    assert (probs.mean(0).argmax(-1) == y_test).double().mean() > 0.8  # the majority class scores 1/3
    assert method.num_parameters == EXPECTED_PARAMETERS[name]
    assert method.training_seconds > 0
    if name != "swag":  # the prior precision is tuned on the validation data and reported
        assert method.laplace.tuning_used == "gridsearch"
        assert method.prior_precision.shape == (1,) and 1e-2 <= method.prior_precision.item() <= 1e6


@pytest.mark.parametrize("name", NAMES)
def test_regression_draws_are_gaussians_with_the_fixed_noise(name):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(120, 1, generator=gen) * 4 - 2
    y = 2 * x.squeeze(-1) + 0.3 * torch.randn(120, generator=gen)
    val = None  # swag does not use validation data; the Laplace methods tune the prior precision on it
    if name != "swag":
        x_val = torch.rand(60, 1, generator=gen) * 4 - 2
        val = (x_val, 2 * x_val.squeeze(-1) + 0.3 * torch.randn(60, generator=gen))
    method = make_method(name, in_features=1, hidden_features=[8], likelihood="gaussian", noise_scale=0.3,
                         num_epochs=40, batch_size=32, lr=1e-2, seed=0, **SETTINGS[name]).fit((x, y), val)
    x_test = torch.linspace(-1.5, 1.5, 9).unsqueeze(-1)
    draws = method.predictive_draws(x_test, num_samples=16)
    assert draws["mean"].shape == draws["scale"].shape == (16, 9)
    assert (draws["scale"] == 0.3).all() and (draws["mean"].var(0) > 0).all()
    assert (draws["mean"].mean(0) - 2 * x_test.squeeze(-1)).abs().max() < 0.5


def test_swag_counts_stored_columns_and_times_both_phases():
    x, y = _blobs()
    method = make_method("swag", **ARCH, swag_epochs=3, max_rank=5).fit((x, y))
    assert method.swag.rank == 3 and method.num_parameters == (2 + 3) * P  # fewer iterates than max_rank
    assert method.training_seconds == pytest.approx(method.pretrain_seconds + method.collection_seconds)
    torch.testing.assert_close(torch.nn.utils.parameters_to_vector(method.network.parameters()),
                               method.swag.swa_mean())  # the network holds the SWA solution


def test_bad_settings_fail_at_construction():
    with pytest.raises(ValueError, match="swag_schedule"):
        make_method("swag", **ARCH, swag_schedule="cosine")
    if HAS_LAPLACE:
        with pytest.raises(ValueError, match="hessian_structure"):
            make_method("laplace", **ARCH, hessian_structure="lowrank")
        with pytest.raises(ValueError, match="tuning_method"):
            make_method("laplace_full", **ARCH, tuning_method="cv")


@needs_laplace
def test_laplace_without_validation_data_warns_and_tunes_by_marginal_likelihood():
    x, y = _blobs()
    method = make_method("laplace", **ARCH)
    with pytest.raises(RuntimeError, match="fit"):
        method.prior_precision
    with pytest.warns(UserWarning, match="needs validation data"):
        method.fit((x, y))
    assert method.laplace.tuning_used == "marglik" and method.prior_precision.item() != 1.0
