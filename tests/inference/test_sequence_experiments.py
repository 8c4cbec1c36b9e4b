"""Methods on LSTM / Transformer architectures and the pm25 / sst2 experiments (smoke runs on the shared data)."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from pyro_lowrank.inference.cli import main
from pyro_lowrank.inference.experiments import DEFAULT_METHODS
from pyro_lowrank.inference.experiments.pm25 import lstm_architecture
from pyro_lowrank.inference.experiments.runner import predictive_std, selective_regression_metrics
from pyro_lowrank.inference.experiments.sst2 import transformer_architecture
from pyro_lowrank.inference.methods import make_method
from pyro_lowrank.inference.methods.architecture import MLPArchitecture, NetworkArchitecture
from pyro_lowrank.inference.methods.mc_dropout import dropout_samples
from pyro_lowrank.models.torch_networks import LSTMRegressor, TransformerTextClassifier

ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not (ROOT / "pm25_five_cities").is_dir(), reason=f"shared data not found at {ROOT}")
needs_tokenizers = pytest.mark.skipif(importlib.util.find_spec("tokenizers") is None,
                                      reason="the text extra (tokenizers) is not installed")
SEQUENCE_METHODS = [m for m in DEFAULT_METHODS if m != "laplace_full"]


def _windows(n, seed=0, length=6, d=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, length, d, generator=g)
    return x, x[:, -2:, 0].mean(1) + 0.1 * torch.randn(n, generator=g)


def _common(**extra):
    return {"num_epochs": 2, "batch_size": 16, "lr": 1e-2, "seed": 0, **extra}


def test_lowrank_lstm_counts_the_papers_variational_parameters():
    arch = lstm_architecture(15, 24)
    method = make_method("lowrank", architecture=arch, likelihood="gaussian", noise_scale=0.2, **_common())
    method.fit(_windows(32, length=24, d=15))
    # per layer W_ih 2*14*(256 + n), W_hh 2*20*(256 + 64), bias 2*256; read-out rank 1: 2*(1 + 64) + 2
    expected = (2 * 14 * 271 + 2 * 20 * 320 + 512) + (2 * 14 * 320 + 2 * 20 * 320 + 512) + 2 * 65 + 2
    assert method.num_parameters == expected == 43304
    full = make_method("mean_field", architecture=arch, likelihood="gaussian", noise_scale=0.2, **_common())
    full.fit(_windows(32, length=24, d=15))
    assert full.num_parameters == 2 * sum(p.numel() for p in LSTMRegressor(15).parameters())


@pytest.mark.parametrize("name", SEQUENCE_METHODS)
def test_every_method_fits_and_draws_on_an_lstm(name):
    arch = NetworkArchitecture(lambda out_features, dropout=0.0: LSTMRegressor(3, 8, 2, out_features, dropout=dropout),
                               (6, 3), lowrank_rank={"lstm": (2, 3), "head": 1})
    extra = {"dropout": 0.2} if name == "mc_dropout" else {}
    extra.update({"swag_epochs": 2} if name == "swag" else {})
    method = make_method(name, architecture=arch, likelihood="gaussian", noise_scale=0.3, **_common(**extra))
    train, val = _windows(48), _windows(16, seed=1)
    method.fit(train, val)
    draws = method.predictive_draws(_windows(10, seed=2)[0], num_samples=4)
    members = {"deterministic": 1, "ensemble": 5}.get(name, 4)
    assert draws["mean"].shape == draws["scale"].shape == (members, 10)
    assert torch.isfinite(draws["mean"]).all()
    if members > 1:
        assert draws["mean"].std(0).max() > 0  # the draws differ
    with pytest.raises(ValueError, match=r"x must have shape \(N, 6, 3\), got \(10, 3\)"):
        method.predictive_draws(torch.randn(10, 3))


def test_full_laplace_refuses_non_mlp_architectures():
    arch = lstm_architecture(3, 6)
    with pytest.raises(NotImplementedError, match="laplace_full: Laplace over all weights is implemented for MLP"):
        make_method("laplace_full", architecture=arch, likelihood="gaussian", **_common())


def test_transformer_methods_take_token_ids_and_chunk_predictions():
    arch = transformer_architecture(50, d_model=16, num_layers=1, num_heads=2, dim_feedforward=32)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(3, 50, (40, 12), generator=g)
    x[:, 0], x[20:, 8:] = 2, 0
    y = (x[:, 1] > 25).long()
    method = make_method("deterministic", architecture=arch, likelihood="categorical", num_classes=2, **_common())
    method.fit((x, y))
    whole = method.predictive_draws(x)["probs"]
    method.predict_batch_size = 7  # chunks of 7 give the same deterministic predictions
    assert torch.allclose(method.predictive_draws(x)["probs"], whole, atol=1e-6)
    with pytest.raises(ValueError, match="x must be an integer \\(token id\\) tensor of shape \\(N, L\\), got dtype"):
        method.predictive_draws(x.float())
    lowrank = make_method("lowrank", architecture=arch, likelihood="categorical", num_classes=2, **_common())
    lowrank.fit((x, y))
    assert lowrank.predictive_draws(x, num_samples=3)["probs"].shape == (3, 40, 2)
    with pytest.raises(ValueError, match="output_rank is for MLP architectures"):
        make_method("lowrank", architecture=arch, likelihood="categorical", num_classes=2, output_rank=1)


def test_trimming_trailing_padding_is_exact():
    torch.manual_seed(0)
    net = TransformerTextClassifier(30, d_model=16, num_layers=2, num_heads=2, dim_feedforward=32,
                                    max_len=20).double().eval()
    tokens = torch.randint(3, 30, (5, 20))
    tokens[:, 0], tokens[:, 9:] = 2, 0
    tokens[1, 5:] = 0
    trimmed = net(tokens)
    net.trim_padding = False
    assert torch.allclose(trimmed, net(tokens), atol=1e-12)
    with pytest.raises(ValueError, match="at most max_len=20 positions, got 21"):
        net(torch.ones(2, 21, dtype=torch.long))


def test_dropout_samples_keep_batch_norm_in_eval_and_restore_modes():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 2)).eval()
    net(torch.randn(16, 4))
    running = net[1].running_mean.clone()
    out = dropout_samples(net, torch.randn(6, 4), 5)
    assert out.shape == (5, 6, 2) and out.std(0).max() > 0
    assert torch.equal(net[1].running_mean, running)  # batch norm used, not updated, its running statistics
    assert not any(m.training for m in net.modules())


def test_architecture_arguments_are_checked():
    with pytest.raises(ValueError, match="give in_features and hidden_features"):
        make_method("deterministic", likelihood="gaussian")
    with pytest.raises(ValueError, match="either an architecture or in_features/hidden_features"):
        make_method("deterministic", in_features=3, hidden_features=[4], architecture=MLPArchitecture(3, [4]),
                    likelihood="gaussian")
    with pytest.raises(TypeError, match="architecture must be an Architecture, got str"):
        make_method("deterministic", architecture="lstm", likelihood="gaussian")
    with pytest.raises(TypeError, match="factory must be callable"):
        NetworkArchitecture(3, (4,))
    with pytest.raises(ValueError, match="dropout must be a float in \\[0, 1\\), got 1.0"):
        LSTMRegressor(3, dropout=1.0)


def test_predictive_std_and_selective_mae_closed_forms():
    means = torch.tensor([[0.0, 1.0, 2.0], [2.0, 1.0, 2.0]])
    scales = torch.tensor([[1.0, 1.0, 2.0], [1.0, 1.0, 2.0]])
    # mixture variance = mean sigma^2 + population variance of the means
    assert torch.allclose(predictive_std({"mean": means, "scale": scales}),
                          torch.tensor([2.0, 1.0, 4.0], dtype=torch.float64).sqrt())
    y = torch.tensor([1.0, 3.0, 2.0])
    out = selective_regression_metrics({"mean": means, "scale": scales}, y, y_mean=0.0, y_std=10.0)
    # errors (10 * |mean - y|) = 0, 20, 0; std order: input 1 (1.0), input 0 (1.41), input 2 (2.0)
    assert out["mae_at_80"] == pytest.approx((20 + 0 + 0) / 3)  # ceil(0.8 * 3) = 3 kept
    constant = selective_regression_metrics({"mean": means[:1], "scale": torch.ones(1, 3)}, y)
    assert constant["mae_at_90"] == constant["mae_at_80"] == pytest.approx((1 + 2 + 0) / 3)


def _strict_json(path):
    return json.loads(path.read_text(), parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))


@needs_data
def test_cli_pm25_smoke_runs_every_method_on_the_lstm(tmp_path):
    out = tmp_path / "pm25"
    assert main(["experiment", "pm25", "--smoke", "--root", str(ROOT), "--out", str(out), "--quiet"]) == 0
    doc = _strict_json(out / "results.json")
    assert doc["failures"] == [] and list(doc["skipped"]) == ["pm25/laplace_full"]
    assert [r["method"] for r in doc["rows"]] == SEQUENCE_METHODS
    assert doc["settings"]["pm25"]["lowrank"]["rank"] == {"lstm": [14, 20], "head": 1}
    assert doc["metadata"]["data"]["train_stride"] == 50 and doc["metadata"]["data"]["window"] == [24, 15]
    for row in doc["rows"]:
        for key in ("mae", "rmse", "shift_mae", "shift_rmse", "mpiw", "mae_at_90"):
            assert 0 < row[key] < 500, (row["method"], key)
        assert 0 <= row["picp"] <= 1 and 0 <= row["ood_auroc"] <= 1 and math.isfinite(row["test_ll"])
    det = doc["rows"][0]
    assert det["ood_auroc"] == 0.5 and det["mae_at_90"] == pytest.approx(det["mae"])  # one draw: constant std
    low = next(r for r in doc["rows"] if r["method"] == "lowrank")
    assert low["parameters"] == 43304
    journal = [json.loads(line)["row"] for line in (out / "rows.jsonl").read_text().splitlines()]
    assert [r["mae"] for r in journal] == [r["mae"] for r in doc["rows"]]  # written as each run finished
    markdown = (out / "results.md").read_text()
    assert markdown.count("| lowrank | 1 |") == 3 and (out / "bars.png").stat().st_size > 1000


@needs_data
@needs_tokenizers
def test_cli_sst2_smoke_runs_every_method_on_the_transformer(tmp_path):
    out = tmp_path / "sst2"
    assert main(["experiment", "sst2", "--smoke", "--root", str(ROOT), "--out", str(out), "--quiet"]) == 0
    doc = _strict_json(out / "results.json")
    assert doc["failures"] == [] and list(doc["skipped"]) == ["sst2/laplace_full"]
    assert [r["method"] for r in doc["rows"]] == SEQUENCE_METHODS
    data = doc["metadata"]["data"]
    assert (data["n_train"], data["n_val"], data["n_test"], data["n_ood"]) == (600, 200, 872, 200)
    for row in doc["rows"]:
        assert 0 <= row["accuracy"] <= 1 and 0 <= row["ood_auroc"] <= 1 and row["nll"] > 0
        assert not any(k.startswith("shift_") for k in row)  # AG News has no SST-2 labels
    assert doc["rows"][0]["ood_auroc"] == 0.5
    assert (out / "reliability_test.png").is_file() and not (out / "reliability_shift.png").exists()


def _tokens(n, seed=0, vocab=40, length=10):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(3, vocab, (n, length), generator=g)
    x[:, 0] = 2
    x[n // 2 :, 7:] = 0
    return x, (x[:, 1] > vocab // 2).long()


@pytest.mark.parametrize("name", SEQUENCE_METHODS)
def test_every_method_takes_token_ids_through_a_transformer(name):
    arch = transformer_architecture(40, d_model=8, num_layers=1, num_heads=2, dim_feedforward=16)
    extra = {"dropout": 0.2} if name == "mc_dropout" else ({"swag_epochs": 2} if name == "swag" else {})
    method = make_method(name, architecture=arch, likelihood="categorical", num_classes=2, **_common(**extra))
    method.fit(_tokens(32), _tokens(8, seed=1))
    x_test = _tokens(6, seed=2)[0]
    probs = method.predictive_draws(x_test, num_samples=3)["probs"]
    assert probs.shape[1:] == (6, 2) and torch.allclose(probs.sum(-1), torch.ones(()), atol=1e-5)
    assert x_test.dtype == torch.int64  # never cast to the network's float dtype
    with pytest.raises(ValueError, match=r"x must hold at least one input, got shape \(0, 10\)"):
        method.predictive_draws(x_test[:0], num_samples=3)


def test_synthetic_pm25_and_sst2_runs_score_shift_and_ood():
    from pyro_lowrank.inference.experiments import TaskData, run_pm25, run_sst2

    train, val, test = _windows(64, length=24, d=15), _windows(16, 1, 24, 15), _windows(16, 2, 24, 15)
    shift = (test[0] + 2.0, test[1])
    task = TaskData("pm25", "regression", train=train, val=val, test=test, shift=shift, y_mean=90.0, y_std=80.0)
    result = run_pm25("deterministic,mean_field,lowrank", seeds=[0], num_epochs=1, num_samples=3, task=task,
                      progress=False, strict=True)
    rows = {r["method"]: r for r in result.rows}
    assert rows["deterministic"]["ood_auroc"] == 0.5 and rows["deterministic"]["picp_epistemic"] == 0.0
    assert rows["lowrank"]["mpiw_epistemic"] > 0 and 0 <= rows["mean_field"]["ood_auroc"] <= 1
    assert rows["mean_field"]["shift_mae"] > 0 and result.settings["pm25"]["mean_field"]["prior_scale"] == "matched"
    text = TaskData("sst2", "classification", train=_tokens(48), val=_tokens(8, 1), test=_tokens(16, 2),
                    shift=(_tokens(16, 3, length=10)[0], torch.full((16,), 3)), shift_labelled=False, num_classes=2)
    result = run_sst2("deterministic,lowrank", seeds=[0], num_epochs=1, num_samples=3, task=text, vocab_size=40,
                      sizes={"d_model": 8, "num_layers": 1, "num_heads": 2, "dim_feedforward": 16}, progress=False,
                      strict=True)
    assert [r["method"] for r in result.rows] == ["deterministic", "lowrank"]
    assert all("shift_accuracy" not in r and 0 <= r["ood_auroc"] <= 1 for r in result.rows)
    with pytest.raises(ValueError, match="d_model must be divisible by num_heads, got d_model=10 and num_heads=4"):
        run_sst2(task=text, vocab_size=40, sizes={"d_model": 10})
    with pytest.raises(ValueError, match="vocab_size is required with a given task"):
        run_sst2(task=text)


def test_epistemic_interval_closed_form():
    from pyro_lowrank.inference.experiments.runner import epistemic_interval_metrics

    means = torch.tensor([[0.0, 0.0], [2.0, 0.0]])  # input 0: centre 1, spread 1; input 1: zero width
    out = epistemic_interval_metrics({"mean": means, "scale": torch.ones(2, 2)}, torch.tensor([2.5, 0.0]),
                                     y_std=2.0)
    assert out["mpiw_epistemic"] == pytest.approx(2 * 1.959964 * 2.0 / 2, rel=1e-6)
    assert out["picp_epistemic"] == 1.0  # |5 - 2| <= 1.96 * 2 and the zero-width interval holds y exactly


def test_matched_mean_field_prior_has_he_scales_and_lstm_dropout_varies():
    from pyro_lowrank.models.weight_space import MeanFieldNetwork

    net = MeanFieldNetwork(LSTMRegressor(3, 8, 2), prior_scale="matched")
    scales = dict(zip((t.path for t in net._tensors), net.prior_scales.tolist()))
    assert scales["lstm.weight_ih_l0"] == pytest.approx((2 / 3) ** 0.5)
    assert scales["lstm.weight_hh_l1"] == pytest.approx((2 / 8) ** 0.5) and scales["head.bias"] == 1.0
    with pytest.raises(ValueError, match="prior_scale must be a finite number > 0 or 'matched', got 'he'"):
        MeanFieldNetwork(LSTMRegressor(3, 8, 2), prior_scale="he")

    class LastStep(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(3, 8, 2, batch_first=True, dropout=0.5)

        def forward(self, x):
            return self.lstm(x)[0][:, -1]

    torch.manual_seed(0)
    out = dropout_samples(LastStep().eval(), torch.randn(4, 5, 3), 3)
    assert out.std(0).max() > 0  # nn.LSTM's inter-layer dropout is active in the passes
    converted = lstm_architecture(3, 6)
    assert converted.lowrank_rank == {"lstm": (14, 20), "head": 1}
