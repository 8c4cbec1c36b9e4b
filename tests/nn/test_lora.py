"""Tests for the LoRA adapters (plain and Bayesian) and add_lora_adapters; no transformers needed."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.nn import PyroModule
from pyro.poutine.util import site_is_subsample
from torch import nn

from pyro_lowrank.distributions import GaussianPrior, LogUniformPrior
from pyro_lowrank.guides import LRVDGuide, effective_rank, prune_ranks, rank_log_alpha
from pyro_lowrank.inference import fit, predict
from pyro_lowrank.models import SupervisedModel
from pyro_lowrank.nn import (
    BayesianLoRALinear, LoRALinear, add_lora_adapters, adapter_parameter_count, draw_batch_shape, lora_init,
)


def sample_values(trace) -> dict[str, torch.Tensor]:
    return {name: site["value"] for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)}


class Block(nn.Module):
    """A tiny single-head self-attention block with named projections (query/key/value/output), as in BERT."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.query, self.key, self.value, self.output = (nn.Linear(d, d) for _ in range(4))
        self.norm = nn.LayerNorm(d)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        q, k, v = self.query(h), self.key(h), self.value(h)
        attention = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(h.shape[-1]), dim=-1)
        return self.norm(h + self.output(attention @ v))


class ToyEncoder(nn.Module):
    """Tokens (N, L) -> class logits (..., N, C) by mean pooling; extra leading dims broadcast through."""

    def __init__(self, vocab: int = 20, d: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList([Block(d) for _ in range(2)])
        self.head = nn.Linear(d, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens)
        for layer in self.layers:
            h = layer(h)
        return self.head(h.mean(-2))


# ---------------------------------------------------------------------------------------------- plain LoRA
def test_lora_init_ranges_and_nonzero():
    init = lora_init(6, 25, 4, generator=torch.Generator().manual_seed(0))
    assert init.a_loc.shape == (6, 4) and init.b_loc.shape == (25, 4)
    assert init.a_loc.abs().max() <= 1e-3 and bool((init.a_loc != 0).all())
    assert init.b_loc.abs().max() <= 1 / 5 and init.b_loc.abs().max() > 0.1  # U(-1/sqrt(n), 1/sqrt(n))
    assert init.entry_scale == pytest.approx(1 / 5 / math.sqrt(3))


def test_lora_linear_output_is_base_plus_scaled_update():
    base = nn.Linear(5, 4)
    layer = LoRALinear(base, rank=3, alpha=6.0)
    with torch.no_grad():
        layer.A.normal_()
        layer.B.normal_()
    x = torch.randn(2, 7, 5)
    expected = base(x) + 2.0 * x @ layer.B @ layer.A.T
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer.delta_weight(), 2.0 * layer.A @ layer.B.T)
    assert layer.num_adapter_parameters() == 3 * (5 + 4)


def test_lora_linear_frozen_base_gets_no_gradient():
    base = nn.Linear(5, 4)
    layer = LoRALinear(base, rank=2)
    assert not base.weight.requires_grad and not base.bias.requires_grad
    layer(torch.randn(3, 5)).square().sum().backward()
    assert base.weight.grad is None and base.bias.grad is None
    assert layer.A.grad is not None and layer.B.grad is not None and bool(layer.B.grad.abs().sum() > 0)
    assert {name for name, p in layer.named_parameters() if p.requires_grad} == {"A", "B"}


@pytest.mark.parametrize("kwargs, match", [({"rank": 0}, "rank"), ({"rank": 5}, "rank"), ({"rank": 2.0}, "rank"),
                                           ({"rank": 2, "alpha": 0.0}, "alpha"),
                                           ({"rank": 2, "alpha": float("nan")}, "alpha")])
def test_adapter_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LoRALinear(nn.Linear(4, 6), **kwargs)
    with pytest.raises(ValueError, match=match):
        BayesianLoRALinear(nn.Linear(4, 6), **kwargs)


def test_adapters_need_a_linear_base():
    with pytest.raises(TypeError, match="base must be a torch.nn.Linear"):
        LoRALinear(nn.Conv1d(2, 2, 1), 1)
    with pytest.raises(TypeError, match="base must be a torch.nn.Linear"):
        BayesianLoRALinear(nn.Identity(), 1)


# ---------------------------------------------------------------------------------------------- Bayesian LoRA
def test_bayesian_adapter_forward_with_given_factors():
    base = nn.Linear(5, 4)
    layer = BayesianLoRALinear(base, rank=2, alpha=8.0, prior=GaussianPrior(1.0))
    assert layer.scaling == 4.0
    x = torch.randn(3, 6, 5)
    trace = poutine.trace(layer).get_trace(x)
    values = sample_values(trace)
    assert set(values) == {"A", "B"}
    assert values["A"].shape == (4, 2) and values["B"].shape == (5, 2)
    expected = base(x) + 4.0 * x @ values["B"] @ values["A"].T
    torch.testing.assert_close(trace.nodes["_RETURN"]["value"], expected)
    assert layer.factor_sites() == {"delta_weight": ("A", "B")}


def test_bayesian_adapter_frozen_base_gets_no_gradient_under_the_elbo():
    base = nn.Linear(5, 4)
    layer = BayesianLoRALinear(base, rank=2, prior=GaussianPrior(1.0))
    x = torch.randn(3, 5)
    conditioned = poutine.condition(layer, data={"A": torch.randn(4, 2, requires_grad=True),
                                                 "B": torch.randn(5, 2, requires_grad=True)})
    conditioned(x).sum().backward()
    assert base.weight.grad is None and base.bias.grad is None
    assert not any(p.requires_grad for p in layer.parameters())


def test_bayesian_adapter_per_particle_outputs_for_token_sequences():
    base = nn.Linear(5, 4)
    layer = BayesianLoRALinear(base, rank=3, prior=GaussianPrior(1.0), sequence_dims=1)
    x = torch.randn(2, 7, 5)  # (N, L, n)
    with pyro.plate("particles", 6, dim=-2):
        trace = poutine.trace(layer).get_trace(x)
    a, b = trace.nodes["A"]["value"], trace.nodes["B"]["value"]
    assert a.shape == (6, 1, 4, 3) and b.shape == (6, 1, 5, 3)
    out = trace.nodes["_RETURN"]["value"]
    assert out.shape == (6, 2, 7, 4)
    for p in range(6):
        expected = base(x) + layer.scaling * x @ b[p, 0] @ a[p, 0].T
        torch.testing.assert_close(out[p], expected)


def test_bayesian_adapter_infers_sequence_dims_from_an_unbatched_call():
    layer = BayesianLoRALinear(nn.Linear(5, 4), rank=2, prior=GaussianPrior(1.0))
    x = torch.randn(2, 7, 5)
    layer(x)  # no particles: records one per-datum dimension
    with pyro.plate("particles", 3, dim=-2):
        assert layer(x).shape == (3, 2, 7, 4)


def test_fold_draws_matches_per_draw_computation():
    base = nn.Linear(5, 4)
    layer = BayesianLoRALinear(base, rank=3, prior=GaussianPrior(1.0), fold_draws=True)
    x = torch.randn(2, 7, 5)
    folded = x.repeat(6, 1, 1)  # draw-major: rows p*N .. (p+1)*N-1 belong to draw p
    with pyro.plate("particles", 6, dim=-2):
        assert draw_batch_shape() == (6, 1)
        trace = poutine.trace(layer).get_trace(folded)
    a, b = trace.nodes["A"]["value"], trace.nodes["B"]["value"]
    out = trace.nodes["_RETURN"]["value"]
    assert out.shape == (12, 7, 4)
    for p in range(6):
        expected = base(x) + layer.scaling * x @ b[p, 0] @ a[p, 0].T
        torch.testing.assert_close(out[2 * p: 2 * p + 2], expected)
    with pyro.plate("particles", 4, dim=-2), pytest.raises(ValueError, match="multiple of 4"):
        layer(torch.randn(7, 3, 5))
    assert draw_batch_shape() == ()


def test_select_rank_components_slices_and_prior_shapes_follow():
    layer = BayesianLoRALinear(nn.Linear(6, 5), rank=4, alpha=8.0, prior=GaussianPrior(1.0))
    a0, b0 = layer.a_init.clone(), layer.b_init.clone()
    keep = torch.tensor([0, 3])
    layer.select_rank_components("delta_weight", keep)
    assert layer.rank == 2 and layer.initial_rank == 4 and layer.scaling == 2.0  # scaling fixed at alpha / r_0
    torch.testing.assert_close(layer.a_init, a0[:, keep])
    torch.testing.assert_close(layer.b_init, b0[:, keep])
    values = sample_values(poutine.trace(layer).get_trace(torch.randn(3, 6)))
    assert values["A"].shape == (5, 2) and values["B"].shape == (6, 2)
    assert layer.num_adapter_parameters() == 2 * (6 + 5 + 1)
    assert layer.num_adapter_parameters(rankwise=False) == 2 * 2 * (6 + 5)
    for bad in (torch.tensor([2]), torch.tensor([], dtype=torch.long), torch.tensor([0, 0]), torch.tensor([-1])):
        with pytest.raises(ValueError, match="keep must hold"):
            layer.select_rank_components("delta_weight", bad)
    with pytest.raises(ValueError, match="weight must be 'delta_weight'"):
        layer.select_rank_components("weight", torch.tensor([0]))


def test_log_uniform_is_the_default_prior_and_initial_scales():
    layer = BayesianLoRALinear(nn.Linear(6, 5), rank=2)
    assert isinstance(layer.prior, LogUniformPrior)
    assert layer.initial_scales() == {"A": pytest.approx(math.exp(-4.0)), "B": pytest.approx(math.exp(-4.0))}
    assert set(layer.initial_values()) == {"A", "B"}
    assert "initial_rank=2" in repr(layer) and "scaling=8" in repr(layer)


# ---------------------------------------------------------------------------------------------- add_lora_adapters
def test_add_lora_adapters_replaces_exactly_the_named_layers():
    torch.manual_seed(0)
    net = ToyEncoder()
    tokens = torch.randint(0, 20, (3, 5))
    before = net(tokens).detach()
    names = add_lora_adapters(net, ("query", "value"), rank=2, bayesian=False)
    assert names == ["layers.0.query", "layers.0.value", "layers.1.query", "layers.1.value"]
    for name, module in net.named_modules():
        if name in names:
            assert isinstance(module, LoRALinear)
        elif name.endswith(("key", "output", "head")):
            assert type(module) is nn.Linear
    trainable = {name for name, p in net.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.{f}" for n in names for f in ("A", "B")}
    assert adapter_parameter_count(net) == 4 * 2 * (8 + 8)
    # A starts at U(-1e-3, 1e-3): the adapted network is a small perturbation of the pretrained one.
    torch.testing.assert_close(net(tokens), before, atol=5e-3, rtol=0)
    # a second call does not wrap the adapters' frozen bases again
    assert add_lora_adapters(net, "key", rank=1, bayesian=False) == ["layers.0.key", "layers.1.key"]


def test_add_lora_adapters_glob_and_suffix_matching():
    net = ToyEncoder()
    assert add_lora_adapters(net, "layers.1.*", rank=1, bayesian=False) == [
        "layers.1.query", "layers.1.key", "layers.1.value", "layers.1.output"]
    net = ToyEncoder()
    assert add_lora_adapters(net, "0.key", rank=1, bayesian=False) == ["layers.0.key"]
    with pytest.raises(ValueError, match="target_names"):
        add_lora_adapters(ToyEncoder(), "uery", rank=1, bayesian=False)  # suffixes match whole components only


@pytest.mark.parametrize("kwargs, error, match", [
    ({"target_names": ("attn",)}, ValueError, r"target_names \['attn'\] match no torch.nn.Linear.*layers.0.query"),
    ({"target_names": ()}, ValueError, "target_names must be a non-empty"),
    ({"rank": 9}, ValueError,
     r"rank \(for 'layers.0.query'\) must be an integer in \[1, min\(m, n\)\] = \[1, 8\] for a 8x8 matrix, got 9"),
    ({"rank": 0}, ValueError, "rank"),
    ({"alpha": -1.0}, ValueError, "alpha"),
    ({"bayesian": False, "prior": GaussianPrior(1.0)}, ValueError, "prior applies to Bayesian adapters only"),
])
def test_add_lora_adapters_errors(kwargs, error, match):
    net = ToyEncoder()
    with pytest.raises(error, match=match):
        add_lora_adapters(net, **kwargs)
    assert all(type(m) is not LoRALinear and type(m) is not BayesianLoRALinear for m in net.modules())


def test_add_lora_adapters_rejects_the_root_and_non_modules():
    with pytest.raises(ValueError, match="match the module itself"):
        add_lora_adapters(nn.Linear(3, 3), "*", rank=1)
    with pytest.raises(TypeError, match="module must be a torch.nn.Module"):
        add_lora_adapters("bert", rank=1)


def test_bayesian_adapters_have_path_names_and_are_the_only_latents():
    torch.manual_seed(0)
    net = ToyEncoder()
    add_lora_adapters(net, rank=2, prior=GaussianPrior(1.0))
    assert isinstance(net, PyroModule)
    model = SupervisedModel(net, likelihood="categorical", num_classes=3)
    tokens, y = torch.randint(0, 20, (4, 5)), torch.tensor([0, 1, 2, 0])
    latents = sample_values(poutine.trace(model).get_trace(tokens, y))
    expected = {f"network.layers.{i}.{p}.{f}" for i in range(2) for p in ("query", "key", "value") for f in "AB"}
    assert set(latents) == expected
    assert not any(p.requires_grad for p in model.parameters())  # the frozen head too: only the adapters learn


def test_lrvd_guide_trains_prunes_and_predicts_bayesian_adapters():
    torch.manual_seed(0)
    net = ToyEncoder(vocab=12, d=8, classes=2)
    names = add_lora_adapters(net, ("query", "value"), rank=4)
    net.head.weight_unconstrained.requires_grad_(True)  # a trainable head, as in a fine-tuned classifier
    model = SupervisedModel(net, likelihood="categorical", num_classes=2)
    tokens = torch.randint(0, 12, (64, 6))
    y = (tokens[:, 0] < 6).long()
    guide = LRVDGuide(model)
    result = fit(model, guide, (tokens, y), num_epochs=2, batch_size=32, lr=1e-2, kl_weight=1e-3, progress=False,
                 seed=0)
    assert len(result.train_loss) == 2 and all(math.isfinite(v) for v in result.train_loss)
    layer = net.get_submodule(names[0])
    scores = rank_log_alpha(layer, guide)["delta_weight"]
    assert scores.shape == (4,) and bool(torch.isfinite(scores).all())
    assert 0 <= effective_rank(layer, guide, tau=3.0) <= 4
    ordered = scores.sort().values
    tau = float(ordered[1] + ordered[2]) / 2  # keep the 2 best components of layer 0
    pruning = prune_ranks(model, guide, tau=tau, min_rank=1, gauge_fix=False)
    assert layer.rank == 2 == pruning.after[layer.site_name("A")]
    assert getattr(guide.locs.network.layers, "0").query.A.shape == (8, 2)
    draws = predict(model.eval(), guide, tokens[:5], num_samples=3)["f"]
    assert draws.shape == (3, 5, 2) and bool(torch.isfinite(draws).all())
