"""The whole path (model, guide, fit, checkpoint, predict, q_W) follows the module's dtype and device."""

import pyro
import pytest
import torch

import pyro_lowrank  # noqa: F401
from pyro_lowrank.guides import FactorGuide
from pyro_lowrank.inference import fit, log_predictive_density, predict
from pyro_lowrank.models import LowRankMLP


def _end_to_end(device, dtype, tmp_path):
    pyro.set_rng_seed(0)
    x = torch.randn(40, 3, dtype=dtype, device=device)
    y = (x[:, 0] > 0).to(dtype)
    model = LowRankMLP(3, [8], rank=2, likelihood="bernoulli").to(device=device, dtype=dtype)
    guide = FactorGuide(model)
    result = fit(model, guide, (x, y), val_data=(x, y), num_epochs=3, batch_size=16, lr=1e-2, seed=0,
                 checkpoint_path=tmp_path / "c.pt", progress=False)
    assert result.epochs_run == 3
    for name, tensor in guide.state_dict().items():
        assert tensor.device.type == torch.device(device).type and tensor.dtype == dtype, name
    f = predict(model, guide, x, num_samples=5)["f"]
    assert f.shape == (5, 40) and f.dtype == dtype and f.device.type == torch.device(device).type
    lpd = log_predictive_density(model, guide, x, y, num_samples=5)
    assert lpd.dtype == dtype and torch.isfinite(lpd).all()
    q_w = model.layers[0].weight_posterior(guide)
    assert q_w.mean.dtype == dtype and q_w.rsample().device.type == torch.device(device).type
    resumed_model = LowRankMLP(3, [8], rank=2, likelihood="bernoulli").to(device=device, dtype=dtype)
    resumed_guide = FactorGuide(resumed_model)
    fit(resumed_model, resumed_guide, (x, y), val_data=(x, y), num_epochs=3, batch_size=16, lr=1e-2, seed=0,
        checkpoint_path=tmp_path / "c.pt", resume=True, progress=False)
    for key, value in guide.state_dict().items():
        assert torch.equal(resumed_guide.state_dict()[key], value), key


def test_float64_end_to_end(tmp_path):
    _end_to_end("cpu", torch.float64, tmp_path)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_end_to_end(tmp_path, dtype):
    _end_to_end("cuda", dtype, tmp_path)
