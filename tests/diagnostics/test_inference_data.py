import warnings

import arviz as az
import numpy as np
import pyro
import pytest
import torch
from pyro_lowrank.inference import fit
from pyro_lowrank.models import LowRankMLP

from pyro_lowrank.diagnostics import to_inference_data, weight_summaries
from pyro_lowrank.guides import FactorGuide
from pyro_lowrank.predictive import pointwise_log_likelihood, predict


@pytest.fixture(scope="module")
def fitted_regression():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    x = torch.linspace(-2, 2, 80).unsqueeze(-1)
    y = 0.8 * x[:, 0] + 0.1 * torch.randn(80)
    model = LowRankMLP(1, [16, 16], rank=[1, 4], likelihood="gaussian", learn_noise=True, init_scale_factor=0.01)
    guide = FactorGuide(model)
    fit(model, guide, (x, y), num_epochs=200, batch_size=80, lr=0.03, progress=False, seed=0)
    return model, guide, x, y


def test_groups_shapes_and_gauge_invariant_posterior(fitted_regression):
    model, guide, x, y = fitted_regression
    idata = to_inference_data(model, guide, x, y, num_samples=40, num_chains=2)
    assert set(idata.groups()) == {"posterior", "posterior_predictive", "log_likelihood", "observed_data"}
    post = idata.posterior
    assert post.sizes["chain"] == 2 and post.sizes["draw"] == 20
    # per-layer summaries of W, not raw factors
    assert not any(name.endswith((".A", ".B")) or name in ("A", "B") for name in post.data_vars)
    hidden, middle, output = (layer.site_name("A")[:-2] for layer in model.layers)
    assert post[f"{hidden}.weight.singular_values"].shape == (2, 20, 1)
    assert post[f"{middle}.weight.singular_values"].shape == (2, 20, 4)
    assert f"{middle}.weight" not in post  # 16 x 16 = 256 entries > 64: summaries only
    assert post[f"{output}.weight.singular_values"].shape == (2, 20, 1)
    assert f"{output}.weight" in post  # 1 x 16 = 16 entries <= 64: kept
    assert f"{hidden}.weight" in post  # 16 x 1 = 16 entries
    assert f"{hidden}.bias" in post
    sv4 = post[f"{middle}.weight.singular_values"].values
    assert np.all(np.diff(sv4, axis=-1) <= 1e-6) and np.all(sv4 >= 0)
    sv = post[f"{hidden}.weight.singular_values"].values
    w = post[f"{hidden}.weight"].values  # (chain, draw, 16, 1)
    np.testing.assert_allclose(sv[..., 0], np.linalg.norm(w, axis=(-2, -1)), rtol=1e-4)
    np.testing.assert_allclose(post[f"{hidden}.weight.frobenius_norm"].values, np.linalg.norm(w, axis=(-2, -1)),
                               rtol=1e-4)
    assert idata.posterior_predictive["obs"].shape == (2, 20, 80)
    assert idata.log_likelihood["obs"].shape == (2, 20, 80)
    np.testing.assert_array_equal(idata.observed_data["obs"].values, y.numpy())


def test_same_draws_for_log_likelihood_and_predictive(fitted_regression):
    model, guide, x, y = fitted_regression
    pyro.set_rng_seed(3)
    idata = to_inference_data(model, guide, x, y, num_samples=30)
    pyro.set_rng_seed(3)
    expected = pointwise_log_likelihood(model, guide, x, y, num_samples=30)
    np.testing.assert_allclose(idata.log_likelihood["obs"].values[0], expected.numpy(), rtol=1e-5, atol=1e-5)
    # posterior predictive draws scatter around the same networks' outputs with the noise scale 0.1
    pyro.set_rng_seed(3)
    f = predict(model, guide, x, num_samples=30)["f"]
    residual = idata.posterior_predictive["obs"].values[0] - f.numpy()
    noise = float(model.likelihood.noise_scale.detach())
    assert abs(residual.std() - noise) < 0.05 * noise and abs(residual.mean()) < 0.05 * noise


def test_loo_summary_and_ppc_run_on_the_result(fitted_regression):
    model, guide, x, y = fitted_regression
    idata = to_inference_data(model, guide, x, y, num_samples=200, num_chains=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loo = az.loo(idata)
    assert np.isfinite(loo.elpd_loo) and loo.n_data_points == 80
    # the fitted network predicts held-out points far better than the best constant Gaussian
    constant = torch.distributions.Normal(y.mean(), y.std()).log_prob(y).sum().item()
    assert loo.elpd_loo > constant + 0.5 * 80
    summary = az.summary(idata, var_names=["~weight$"], filter_vars="regex")
    assert any("singular_values" in index for index in summary.index)
    assert np.isfinite(summary["mean"]).all()
    axes = az.plot_ppc(idata, num_pp_samples=20, show=False)
    fig = np.ravel(axes)[0].figure
    assert len(np.ravel(axes)[0].lines) >= 21  # 20 predictive draws, the observed density, the mean
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_classifier_and_errors():
    model = LowRankMLP(3, [8], rank=2, output_rank=2, likelihood="categorical", num_classes=4)
    guide = FactorGuide(model)
    x, y = torch.randn(10, 3), torch.randint(0, 4, (10,))
    guide(x, y)
    idata = to_inference_data(model, guide, x, y, num_samples=8)
    pp = idata.posterior_predictive["obs"].values
    assert pp.shape == (1, 8, 10) and set(np.unique(pp)) <= {0, 1, 2, 3}
    assert np.all(idata.log_likelihood["obs"].values <= 0)
    with pytest.raises(ValueError, match="num_chains must divide num_samples=8"):
        to_inference_data(model, guide, x, y, num_samples=8, num_chains=3)
    with pytest.raises(ValueError, match="y must hold one target per input"):
        to_inference_data(model, guide, x, y[:5], num_samples=8)
    with pytest.raises(ValueError, match="obs_site must name the model's observed site"):
        to_inference_data(model, guide, x, y, num_samples=8, obs_site="y")
    with pytest.raises(TypeError, match="model must be a callable Pyro model"):
        to_inference_data("model", guide, x, y)
    with pytest.raises(ValueError, match="subsample_size must be None"):
        to_inference_data(model, guide, x, y, num_samples=8, subsample_size=4)
    with pytest.raises(ValueError, match="data_plate must name the plate of the observed site 'obs'"):
        to_inference_data(model, guide, x, y, num_samples=8, data_plate="batch")


def test_a_plain_pyro_model_with_an_autoguide():
    import pyro.distributions as dist
    from pyro.infer.autoguide import AutoNormal

    def model(x, y=None):
        slope = pyro.sample("slope", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("obs", dist.Normal(slope * x, 0.5), obs=y)

    x = torch.linspace(-1, 1, 12)
    y = 2 * x
    guide = AutoNormal(model)
    guide(x, y)
    idata = to_inference_data(model, guide, x, y, num_samples=16)
    assert idata.posterior["slope"].shape == (1, 16)
    np.testing.assert_allclose(idata.log_likelihood["obs"].values[0],
                               dist.Normal(torch.tensor(idata.posterior["slope"].values[0])[:, None] * x, 0.5)
                               .log_prob(y).numpy(), rtol=1e-5, atol=1e-5)


def test_weight_summaries_match_dense_svd_and_skip_large_weights():
    a, b = torch.randn(5, 30, 3, dtype=torch.float64), torch.randn(5, 20, 3, dtype=torch.float64)
    out = weight_summaries(a, b, "layer", max_weight_entries=64)
    dense = torch.linalg.svdvals(a @ b.transpose(-1, -2))[:, :3]
    torch.testing.assert_close(out["layer.singular_values"], dense)
    assert "layer" not in out  # 600 entries > 64
    # gauge invariance: (A G, B G^-T) gives the same summaries
    g = torch.randn(3, 3, dtype=torch.float64) + 3 * torch.eye(3, dtype=torch.float64)
    moved = weight_summaries(a @ g, b @ torch.linalg.inv(g).T, "layer")
    torch.testing.assert_close(moved["layer.singular_values"], out["layer.singular_values"])
