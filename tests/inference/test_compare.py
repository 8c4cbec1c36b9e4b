import json

import pytest

from pyro_lowrank.inference.cli import main
from pyro_lowrank.inference.compare import format_results, run_compare


def test_compare_smoke_runs_methods_on_digits_and_reports_every_column():
    results = run_compare(["deterministic", "lowrank"], num_epochs=8, num_samples=8, progress=False,
                          overrides={"lowrank": {"rank": 4}})
    assert list(results) == ["deterministic", "lowrank"]
    for r in results.values():
        assert set(r) == {"accuracy", "nll", "ece", "ood_auroc", "parameters", "train_seconds"}
        assert r["accuracy"] > 0.4  # 8 balanced classes: the majority class scores about 1/8
    assert results["deterministic"]["ood_auroc"] == 0.5  # one draw: MI = 0 everywhere
    # 64-128-128-8 MLP
    assert results["deterministic"]["parameters"] == 64 * 128 + 128 + 128 * 128 + 128 + 128 * 8 + 8
    rank_params = 2 * 4 * (128 + 64) + 2 * 128 + 2 * 4 * (128 + 128) + 2 * 128 + 2 * 8 * (8 + 128) + 2 * 8
    assert results["lowrank"]["parameters"] == rank_params


def test_formats():
    results = {"a": {"accuracy": 0.9, "nll": 0.3, "ece": 0.02, "ood_auroc": 0.7, "parameters": 10,
                     "train_seconds": 1.5}}
    table = format_results(results)
    assert table.splitlines()[0].split()[:2] == ["method", "accuracy"] and "0.9000" in table
    markdown = format_results(results, "markdown").splitlines()
    assert markdown[0].startswith("| method | accuracy") and markdown[1].startswith("|---|---:")
    assert json.loads(format_results(results, "json")) == results
    with pytest.raises(ValueError, match="fmt must be one of"):
        format_results(results, "csv")
    with pytest.raises(ValueError, match="methods must be registered method names .*unknown \\['nope'\\]"):
        run_compare(["nope"])


def test_cli_compare_writes_json(tmp_path, capsys):
    out = tmp_path / "compare.json"
    assert main(["compare", "--methods", "deterministic", "--epochs", "2", "--num-samples", "4", "--format", "json",
                 "--out", str(out), "--quiet"]) == 0
    assert json.loads(out.read_text())["deterministic"]["ood_auroc"] == 0.5
    assert '"deterministic"' in capsys.readouterr().out
