"""LoRASequenceClassifier on a toy encoder (no transformers needed): pooling, padding, draws folded into the batch."""

from __future__ import annotations

import math

import pytest
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch import nn

from pyro_lowrank.distributions import GaussianPrior
from pyro_lowrank.guides import FactorGuide, LRVDGuide
from pyro_lowrank.inference import fit, predict
from pyro_lowrank.models import LoRASequenceClassifier
from pyro_lowrank.models.lora_classifier import _require
from pyro_lowrank.nn import BayesianLoRALinear, add_lora_adapters

PAD = 0


class ToyBert(nn.Module):
    """(input_ids (N, L), attention_mask (N, L)) -> last hidden state (N, L, d), like a Hugging Face encoder: it
    accepts no extra leading dimensions (the reshapes below assume a 3-D hidden state)."""

    def __init__(self, vocab: int = 30, d: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor]:
        n, length = input_ids.shape
        h = self.embed(input_ids)
        q, k, v = (proj(h).reshape(n, length, 2, -1).transpose(1, 2) for proj in (self.query, self.key, self.value))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        scores = scores.masked_fill(~attention_mask.bool()[:, None, None, :], -1e9)
        out = (torch.softmax(scores, -1) @ v).transpose(1, 2).reshape(n, length, -1)
        return (h + out,)


def tokens_with_padding(n: int = 6, length: int = 10) -> torch.Tensor:
    tokens = torch.randint(1, 30, (n, length))
    lengths = torch.tensor([2, 5, 3, 4, 1, 5])[:n]
    tokens[torch.arange(length) >= lengths[:, None]] = PAD  # right padding; the longest row has 5 tokens
    return tokens


def bayesian_classifier(pooling: str = "mean", prior=None) -> LoRASequenceClassifier:
    encoder = ToyBert()
    add_lora_adapters(encoder, rank=2, prior=prior)
    return LoRASequenceClassifier(encoder, hidden_size=8, num_classes=3, pooling=pooling, dropout=0.0)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_padding_is_exact_and_mean_pooling_ignores_it(pooling):
    torch.manual_seed(0)
    encoder = ToyBert()
    model = LoRASequenceClassifier(encoder, 8, 3, pooling=pooling, dropout=0.0).eval()
    tokens = tokens_with_padding()
    logits = model.logits(tokens)
    assert logits.shape == (6, 3)
    torch.testing.assert_close(model.logits(tokens[:, :5]), logits)  # the trailing padding is cut off
    wider = torch.cat([tokens, torch.zeros(6, 7, dtype=torch.long)], 1)
    torch.testing.assert_close(model.logits(wider), logits)
    hidden = encoder(tokens[:, :5], (tokens[:, :5] != PAD).long())[0]
    mask = (tokens[:, :5] != PAD).unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1) if pooling == "mean" else hidden[:, 0]
    torch.testing.assert_close(logits, model.network.head(pooled))


def test_only_adapters_are_latent_and_head_is_trainable():
    model = bayesian_classifier(prior=GaussianPrior(1.0))
    assert all(m.fold_draws for m in model.network.encoder.modules() if isinstance(m, BayesianLoRALinear))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"network.head.weight_unconstrained", "network.head.bias_unconstrained"}
    assert model.adapter_ranks() == {"query": 2, "key": 2, "value": 2}
    trace = poutine.trace(model).get_trace(tokens_with_padding(), torch.zeros(6, dtype=torch.long))
    latent = {name for name, site in trace.nodes.items() if site["type"] == "sample" and not site["is_observed"]
              and not site_is_subsample(site)}
    assert latent == {f"network.encoder.{p}.{f}" for p in ("query", "key", "value") for f in "AB"}


def test_predictive_draws_equal_per_draw_networks():
    torch.manual_seed(0)
    model = bayesian_classifier(prior=GaussianPrior(1.0)).eval()
    guide = FactorGuide(model, init_scale=0.5)
    tokens = tokens_with_padding()
    guide(tokens, torch.zeros(6, dtype=torch.long))
    sites = [f"network.encoder.{p}.{f}" for p in ("query", "key", "value") for f in "AB"]
    draws = predict(model, guide, tokens, num_samples=4, return_sites=["f", *sites])
    assert draws["f"].shape == (4, 6, 3)
    assert draws["network.encoder.query.A"].shape == (4, 8, 2)
    assert not torch.allclose(draws["f"][0], draws["f"][1])  # the draws differ
    for s in range(4):
        conditioned = poutine.condition(model.network, data={name: draws[name][s] for name in sites})
        torch.testing.assert_close(conditioned(tokens), draws["f"][s], rtol=1e-5, atol=1e-5)


def test_vectorised_particles_fold_into_the_batch():
    torch.manual_seed(0)
    model = bayesian_classifier(prior=GaussianPrior(1.0))
    tokens, y = tokens_with_padding(), torch.tensor([0, 1, 2, 0, 1, 2])
    guide = FactorGuide(model)
    result = fit(model, guide, (tokens, y), num_epochs=2, batch_size=3, num_particles=3, progress=False, seed=0)
    assert all(math.isfinite(v) for v in result.train_loss)


def test_lrvd_training_and_data_checks():
    torch.manual_seed(0)
    model = bayesian_classifier()
    tokens, y = tokens_with_padding(), torch.tensor([0, 1, 2, 0, 1, 2])
    guide = LRVDGuide(model)
    result = fit(model, guide, (tokens, y), num_epochs=2, batch_size=3, lr=1e-2, kl_weight=1e-3, progress=False,
                 prune_every=1, prune_start=1, seed=0)
    assert len(result.ranks) == 2 and all(1 <= r <= 2 for r in result.ranks[-1].values())
    with pytest.raises(TypeError, match="tokens must be an integer"):
        model.check_data(tokens.float(), y)
    with pytest.raises(ValueError, match="non-negative ids"):
        model.check_data(tokens - 5, y)
    with pytest.raises(ValueError, match=r"x must hold token ids of shape \(N, L\)"):
        model(tokens[0])


def test_constructor_errors_and_missing_extra_message():
    with pytest.raises(ValueError, match="pooling must be one of"):
        LoRASequenceClassifier(ToyBert(), 8, 2, pooling="max")
    with pytest.raises(TypeError, match="encoder must be a torch.nn.Module"):
        LoRASequenceClassifier("bert", 8, 2)
    with pytest.raises(ImportError, match=r"pip install 'pyro-lowrank\[bayeslora\]'"):
        _require("a_module_that_is_not_installed_anywhere")
