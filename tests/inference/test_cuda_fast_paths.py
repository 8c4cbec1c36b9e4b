"""The fast paths on CUDA tensors (skipped without a GPU; CI is CPU-only)."""

import pyro
import pytest
import torch
from pyro.infer import TraceMeanField_ELBO

import pyro_lowrank  # noqa: F401
from pyro_lowrank.guides import FactorGuide
from pyro_lowrank.inference import JitTraceMeanField_ELBO, KLWeight, fit
from pyro_lowrank.inference.demo import run_demo
from pyro_lowrank.models import LowRankMLP
from pyro_lowrank.predictive import predict

pytestmark = pytest.mark.cuda


def _pair(device):
    model = LowRankMLP(5, [16, 16], rank=3, output_rank=3, num_classes=3).to(device)
    return model, FactorGuide(model)


def test_compiled_elbo_on_cuda_equals_the_eager_one():
    x = torch.randn(32, 5, device="cuda")
    y = torch.randint(0, 3, (32,), device="cuda")
    model, guide = _pair("cuda")
    jit_loss = JitTraceMeanField_ELBO(max_plate_nesting=1)(model, guide)
    eager_loss = TraceMeanField_ELBO(max_plate_nesting=1)(model, guide)
    jit_loss(x, y, num_data=320)
    with KLWeight(0.3):
        torch.manual_seed(1)
        a = jit_loss(x, y, num_data=320)
        torch.manual_seed(1)
        b = eager_loss(x, y, num_data=320)
    assert a.device.type == "cuda" and torch.allclose(a, b, rtol=1e-4)


def test_fit_and_tiled_predict_on_cuda():
    x = torch.randn(200, 5, device="cuda")
    y = (x[:, 0] > 0).long()
    pyro.set_rng_seed(0)
    model, guide = _pair("cuda")
    fit(model, guide, (x, y), num_epochs=5, batch_size=50, seed=0, progress=False,
        elbo=JitTraceMeanField_ELBO(max_plate_nesting=1))
    draws = predict(model, guide, x, 16, return_sites=("f", "obs"))
    assert draws["f"].device.type == "cuda" and draws["f"].shape == (16, 200, 3)
    assert draws["obs"].device.type == "cuda"


def test_demo_runs_on_cuda(tmp_path):
    results = run_demo(tmp_path, num_epochs=1, num_samples=4, progress=False, device="cuda")
    assert set(results) == {"deterministic", "low-rank BNN"}
