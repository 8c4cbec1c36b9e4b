"""The inference-only fast paths of prediction compute the same function as the autograd path."""

import pyro
import pytest
import torch

import pyro_lowrank  # noqa: F401
import pyro_lowrank.models.deterministic as deterministic
from pyro_lowrank.guides import FactorGuide
from pyro_lowrank.models import LowRankMLP
from pyro_lowrank.nn.linear import factor_matmul
from pyro_lowrank.predictive import predict


def _reference(x, a, b, bias=None):
    """x (A B^T)^T + bias by forming W, draw by draw in a loop."""
    out = x @ (a @ b.transpose(-1, -2)).transpose(-1, -2)
    return out if bias is None else out + bias.unsqueeze(-2)


@pytest.mark.parametrize("rows", [5, 300])
@pytest.mark.parametrize("draws", [None, 4])
@pytest.mark.parametrize("with_bias", [False, True])
def test_factor_matmul_with_a_fused_bias_and_shared_inputs_matches_forming_w(rows, draws, with_bias):
    gen = torch.Generator().manual_seed(0)
    batch = () if draws is None else (draws,)
    x = torch.randn(rows, 7, generator=gen, dtype=torch.float64)
    a = torch.randn(*batch, 6, 3, generator=gen, dtype=torch.float64)
    b = torch.randn(*batch, 7, 3, generator=gen, dtype=torch.float64)
    bias = torch.randn(*batch, 6, generator=gen, dtype=torch.float64) if with_bias else None
    # factors of batch (P, 1) against inputs (N, n): the library's vectorised-particle layout
    a_in = a if draws is None else a.unsqueeze(1)
    b_in = b if draws is None else b.unsqueeze(1)
    bias_in = None if bias is None else (bias if draws is None else bias.unsqueeze(1))
    got = factor_matmul(x, a_in, b_in, bias_in)
    expected = _reference(x, a, b, bias)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-10)
    with torch.no_grad():
        assert torch.allclose(factor_matmul(x, a_in, b_in, bias_in), expected, atol=1e-10)


def test_factor_matmul_out_may_overwrite_its_input_and_refuses_autograd_and_wrong_shapes():
    gen = torch.Generator().manual_seed(1)
    h = torch.randn(4, 50, 8, generator=gen, dtype=torch.float64)
    a = torch.randn(4, 1, 8, 2, generator=gen, dtype=torch.float64)
    b = torch.randn(4, 1, 8, 2, generator=gen, dtype=torch.float64)
    bias = torch.randn(4, 1, 8, generator=gen, dtype=torch.float64)
    expected = _reference(h, a.squeeze(1), b.squeeze(1), bias.squeeze(1))
    with torch.no_grad():
        result = factor_matmul(h, a, b, bias, out=h)
    assert result is h
    assert torch.allclose(h, expected, atol=1e-10)
    with pytest.raises(ValueError, match="out must have shape"):
        with torch.no_grad():
            factor_matmul(h, a, b, bias, out=torch.empty(4, 50, 9, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="does not support autograd"):
        factor_matmul(h, a.requires_grad_(), b, bias, out=torch.empty_like(h))


def _trained_pair(seed=0):
    pyro.set_rng_seed(seed)
    model = LowRankMLP(6, [40, 40], rank=4, output_rank=3, num_classes=3)
    guide = FactorGuide(model)
    guide(torch.randn(2, 6), torch.tensor([0, 1]))
    return model, guide


def test_tiled_in_place_network_pass_equals_the_autograd_pass(monkeypatch):
    model, guide = _trained_pair()
    x = torch.randn(300, 6, dtype=torch.float32)
    monkeypatch.setattr(deterministic, "TILE_BYTES", 2048)  # force many tiles
    pyro.set_rng_seed(3)
    with torch.no_grad():
        fast = predict(model, guide, x, 8)["f"]
    pyro.set_rng_seed(3)
    with torch.enable_grad():  # predict runs under no_grad; the autograd path is the reference
        slow = _predict_with_grad(model, guide, x, 8)
    assert fast.shape == slow.shape == (8, 300, 3)
    assert torch.allclose(fast, slow, atol=1e-5)


def _predict_with_grad(model, guide, x, num_samples):
    from pyro import poutine
    from pyro_lowrank.predictive import max_plate_nesting

    depth = max_plate_nesting(model, x[:1])
    with pyro.plate("_num_predictive_samples", num_samples, dim=-depth - 1):
        guide_trace = poutine.trace(guide).get_trace(x)
        trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    return trace.nodes["f"]["value"].detach().reshape(num_samples, x.shape[0], -1)


def test_predict_skips_drawing_y_unless_it_is_requested():
    model, guide = _trained_pair()
    x = torch.randn(50, 6)
    pyro.set_rng_seed(0)
    only_f = predict(model, guide, x, 16)
    pyro.set_rng_seed(0)
    both = predict(model, guide, x, 16, return_sites=("f", "obs"))
    assert set(only_f) == {"f"}
    assert torch.equal(only_f["f"], both["f"])  # skipping y changes no draw of the network
    obs = both["obs"]
    assert obs.shape == (16, 50) and obs.dtype == torch.int64
    # y is drawn from its likelihood given f: class frequencies follow softmax(f)
    probs = torch.softmax(both["f"], -1).mean((0, 1))
    freq = torch.bincount(obs.flatten(), minlength=3).float() / obs.numel()
    assert torch.allclose(freq, probs, atol=0.05)


def test_draw_chunks_give_the_same_number_of_draws_and_the_same_distribution():
    model, guide = _trained_pair()
    x = torch.randn(40, 6)
    pyro.set_rng_seed(0)
    whole = predict(model, guide, x, 400)["f"]
    pyro.set_rng_seed(1)
    chunked = predict(model, guide, x, 400, draw_batch_size=64, batch_size=16)["f"]
    assert chunked.shape == whole.shape == (400, 40, 3)
    se = (whole.var(0) / 400 + chunked.var(0) / 400).sqrt()
    assert ((whole.mean(0) - chunked.mean(0)).abs() < 5 * se + 1e-6).float().mean() > 0.99
    # within one chunk of draws every input chunk sees the same networks
    pyro.set_rng_seed(2)
    one = predict(model, guide, x, 64, draw_batch_size=64)["f"]
    pyro.set_rng_seed(2)
    split = predict(model, guide, x, 64, draw_batch_size=64, batch_size=7)["f"]
    assert torch.allclose(one, split, atol=1e-6)
    with pytest.raises(ValueError, match="draw_batch_size"):
        predict(model, guide, x, 8, draw_batch_size=0)


def test_network_called_outside_a_model_call_uses_one_draw_for_every_row():
    model, _ = _trained_pair()
    x = torch.randn(1, 6).expand(300, 6).contiguous()
    with torch.no_grad():
        out = model.network(x)  # no PyroModule context: no tiling, so one draw of the weights for all rows
    assert torch.allclose(out, out[:1].expand_as(out))


@pytest.mark.parametrize("kind", ["gaussian-lowrank", "mean-field-local", "rank1"])
def test_prediction_without_autograd_equals_the_autograd_pass(kind):
    from pyro_lowrank.models import MeanFieldMLP, Rank1MLP

    pyro.set_rng_seed(0)
    if kind == "gaussian-lowrank":
        model = LowRankMLP(6, [40, 40], rank=4, likelihood="gaussian")
        y = torch.zeros(2)
    elif kind == "mean-field-local":
        model = MeanFieldMLP(6, [40, 40], num_classes=3)
        y = torch.tensor([0, 1])
    else:
        model = Rank1MLP(6, [40, 40], num_classes=3)
        y = torch.tensor([0, 1])
    guide = FactorGuide(model)
    guide(torch.randn(2, 6), y)
    x = torch.randn(200, 6)
    pyro.set_rng_seed(4)
    with torch.no_grad():
        fast = predict(model, guide, x, 6)["f"]
    pyro.set_rng_seed(4)
    with torch.enable_grad():
        slow = _predict_with_grad(model, guide, x, 6).reshape(fast.shape)
    assert torch.allclose(fast, slow, atol=1e-5)
