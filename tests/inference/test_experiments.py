"""``pyro-lowrank experiment``: smoke runs on the shared data, metric sanity, reproducibility and argument errors."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_lowrank.inference.cli import main
from pyro_lowrank.inference.experiments import DEFAULT_METHODS, run_experiment, write_report
from pyro_lowrank.inference.experiments.heart import heart_config, run_heart
from pyro_lowrank.inference.experiments.report import format_markdown
from pyro_lowrank.inference.experiments.runner import (NOISE_GRID, TaskData, aggregate, regression_metrics,
                                                       run_task, seeded, tune_noise_scale)
from pyro_lowrank.inference.experiments.uci import holdout, resolve_datasets, run_uci
from pyro_lowrank.metrics import (accuracy, brier_score, expected_calibration_error, gaussian_mixture_nll, mpiw,
                                  negative_log_likelihood, ood_detection, picp, rmse)

ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not (ROOT / "heart_disease").is_dir() or not (ROOT / "uci_regression").is_dir(),
                                reason=f"shared data not found at {ROOT}")


def _strict_json(path):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


def _classification_task(n=90, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, generator=g)

    def draw(m, shift=0.0):
        x = torch.randn(m, d, generator=g) + shift
        return x, (x @ w + 0.3 * torch.randn(m, generator=g) > shift * w.sum()).long()

    return TaskData("syn", "classification", train=draw(n), val=draw(30), test=draw(40), shift=draw(40, 2.0),
                    num_classes=2)


def _regression_task(n=80, d=3, seed=0, y_mean=5.0, y_std=2.0):
    g = torch.Generator().manual_seed(seed)

    def draw(m):
        x = torch.randn(m, d, generator=g)
        return x, torch.sin(x[:, 0]) + 0.1 * torch.randn(m, generator=g)

    return TaskData("reg", "regression", train=draw(n), val=draw(20), test=draw(30), y_mean=y_mean, y_std=y_std,
                    info={"split": 0, "n_hidden": 16, "n_epochs": 2})


@needs_data
def test_cli_heart_smoke_writes_json_markdown_and_plots(tmp_path, capsys):
    out = tmp_path / "heart"
    assert main(["experiment", "heart", "--smoke", "--root", str(ROOT), "--out", str(out), "--quiet"]) == 0
    doc = _strict_json(out / "results.json")
    assert doc["experiment"] == "heart" and doc["seeds"] == [0] and doc["failures"] == [] and doc["skipped"] == {}
    assert doc["command"].startswith("pyro-lowrank experiment heart --smoke")
    assert [r["method"] for r in doc["rows"]] == list(DEFAULT_METHODS)  # one row per method (one seed)
    assert [a["method"] for a in doc["aggregates"]] == list(DEFAULT_METHODS)
    assert doc["environment"]["torch"] == torch.__version__ and doc["wall_seconds"] > 0
    for row in doc["rows"]:
        for key in ("auroc", "accuracy", "nll", "ece", "brier", "shift_auroc", "shift_nll", "ood_auroc",
                    "ood_aupr_ood", "ood_aupr_in"):
            assert 0.0 <= row[key] < 5.0, (row["method"], key)
        assert row["parameters"] > 0
    det = doc["rows"][0]
    assert det["ood_auroc"] == 0.5 and det["ood_mi_ratio"] is None  # one draw: MI = 0 everywhere, 0/0 ratio
    assert doc["metadata"]["data"]["in_features"] == 32
    assert doc["settings"]["heart"]["lowrank"]["rank"] == [15, 15] and doc["settings"]["heart"]["lowrank"][
        "output_rank"] == 1
    markdown = (out / "results.md").read_text()
    for method in DEFAULT_METHODS:
        assert markdown.count(f"| {method} | 1 |") == 3  # source, shift and OOD tables
    for name in ("bars.png", "reliability_test.png", "reliability_shift.png"):
        assert (out / name).stat().st_size > 1000
    assert "| lowrank | 1 |" in capsys.readouterr().out


@needs_data
def test_cli_uci_smoke_two_datasets_two_splits(tmp_path):
    out = tmp_path / "uci"
    assert main(["experiment", "uci", "--smoke", "--root", str(ROOT), "--out", str(out), "--quiet"]) == 0
    doc = _strict_json(out / "results.json")
    datasets = list(resolve_datasets(None))[:2]
    assert doc["metadata"]["datasets"] == datasets and doc["failures"] == []
    assert len(doc["rows"]) == 2 * 2 * len(DEFAULT_METHODS)
    assert [(a["task"], a["method"], a["n"]) for a in doc["aggregates"]] == [
        (d, m, 2) for d in datasets for m in DEFAULT_METHODS]
    for row in doc["rows"]:
        assert row["rmse"] > 0 and math.isfinite(row["test_ll"]) and 0 <= row["picp"] <= 1 and row["mpiw"] > 0
        assert float(NOISE_GRID[0]) <= row["noise_scale"] <= float(NOISE_GRID[-1])
    markdown = (out / "results.md").read_text()
    for d in datasets:
        assert f"## {d}" in markdown and (out / f"bars_{d}.png").is_file()
    assert markdown.count("| lowrank | 2 |") == 2


def test_classification_metrics_equal_library_metrics_on_the_same_draws(tmp_path):
    task = _classification_task()
    result = run_heart(["deterministic", "lowrank"], task=task, seeds=[0], num_epochs=2, num_samples=6,
                       progress=False, strict=True)
    from sklearn.metrics import roc_auc_score

    for row in result.rows:
        draws = result.draws["syn"][row["method"]]
        p, q = draws["test"], draws["shift"]
        assert p.shape == ((1 if row["method"] == "deterministic" else 6), 40, 2)
        assert row["accuracy"] == accuracy(p, task.test[1])
        assert row["nll"] == negative_log_likelihood(p, task.test[1])
        assert row["ece"] == expected_calibration_error(p, task.test[1], num_bins=15)
        assert row["brier"] == brier_score(p, task.test[1])
        assert row["auroc"] == pytest.approx(roc_auc_score(task.test[1].numpy(), p.double().mean(0)[:, 1].numpy()))
        assert row["shift_nll"] == negative_log_likelihood(q, task.shift[1])
        ood = ood_detection(p, q)
        assert (row["ood_auroc"], row["ood_aupr_in"]) == (ood["auroc"], ood["aupr_in"])
    assert result.rows[0]["ood_auroc"] == 0.5 and math.isnan(result.rows[0]["ood_mi_ratio"])
    paths = write_report(result, tmp_path)
    doc = _strict_json(paths["json"])
    assert doc["rows"][0]["ood_mi_ratio"] is None and doc["aggregates"][0]["ood_mi_ratio"]["mean"] is None
    assert "| deterministic | 1 |" in paths["markdown"].read_text() and "—" in format_markdown(result)


def test_regression_metrics_unnormalise_by_hand():
    g = torch.Generator().manual_seed(1)
    means, scales = torch.randn(7, 50, generator=g, dtype=torch.float64), 0.2 + torch.rand(7, 50, generator=g)
    z = torch.randn(50, generator=g, dtype=torch.float64)
    y_mean, y_std = 10.0, 3.5
    m = regression_metrics({"mean": means, "scale": scales}, z, y_mean, y_std)
    y = y_mean + y_std * z
    hand_rmse = math.sqrt(float(((y_mean + y_std * means.mean(0) - y) ** 2).mean()))
    assert m["rmse"] == pytest.approx(hand_rmse, rel=1e-12) == pytest.approx(y_std * rmse(means, z), rel=1e-12)
    assert m["test_ll"] == pytest.approx(-(gaussian_mixture_nll(means, scales, z) + math.log(y_std)), rel=1e-12)
    assert m["mpiw"] == pytest.approx(y_std * mpiw(means, scales), rel=1e-12)
    assert m["picp"] == picp(means, scales, z)


def test_tune_noise_scale_recovers_the_residual_scale():
    g = torch.Generator().manual_seed(2)
    mu = torch.randn(1, 4000, generator=g, dtype=torch.float64)
    y = mu[0] + 0.3 * torch.randn(4000, generator=g, dtype=torch.float64)
    rms = float((y - mu[0]).square().mean().sqrt())  # the maximum-likelihood sigma for one draw
    assert tune_noise_scale(mu, y) == pytest.approx(rms, rel=0.04)  # grid spacing 8%


def test_uci_runner_on_synthetic_task_scores_tuned_draws():
    task = _regression_task()
    result = run_uci(methods="deterministic,mean_field", tasks=[task], num_samples=5, progress=False, strict=True)
    assert [(r["task"], r["method"], r["split"]) for r in result.rows] == [("reg", "deterministic", 0),
                                                                           ("reg", "mean_field", 0)]
    for row in result.rows:
        draws = result.draws["reg"][row["method"]]["test"]
        assert torch.all(draws["scale"] == row["noise_scale"]) and row["noise_scale"] in NOISE_GRID.tolist()
        assert row == {**row, **regression_metrics(draws, task.test[1], 5.0, 2.0)}
    assert result.settings["reg"]["mean_field"]["hidden_features"] == [16]


def test_seeds_make_runs_identical_and_restore_global_rng():
    task = _classification_task(seed=3)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    runs = [run_heart(["mc_dropout", "lowrank"], task=task, seeds=[0, 1], num_epochs=2, num_samples=4,
                      progress=False, strict=True) for _ in range(2)]
    assert torch.equal(torch.rand(3), expected)  # the runs leave the caller's RNG stream untouched
    strip = lambda rows: [{k: v for k, v in r.items() if k != "train_seconds"} for r in rows]  # noqa: E731
    assert strip(runs[0].rows) == strip(runs[1].rows)
    by_seed = {(r["method"], r["seed"]): r["nll"] for r in runs[0].rows}
    assert by_seed[("lowrank", 0)] != by_seed[("lowrank", 1)]
    with seeded(5):
        a = torch.rand(2)
    with seeded(5):
        assert torch.equal(torch.rand(2), a)


def test_aggregate_mean_and_standard_error():
    rows = [{"task": "t", "method": "m", "seed": s, "x": v, "parameters": 10} for s, v in enumerate([1.0, 2.0, 6.0])]
    rows.append({"task": "t", "method": "k", "seed": 0, "x": 4.0, "parameters": 3})
    out = aggregate(rows)
    assert out[0]["n"] == 3 and out[0]["x"]["mean"] == 3.0
    assert out[0]["x"]["se"] == pytest.approx(np.std([1.0, 2.0, 6.0], ddof=1) / math.sqrt(3))
    assert out[0]["parameters"] == {"mean": 10.0, "se": 0.0} and "seed" not in out[0]
    assert out[1]["n"] == 1 and math.isnan(out[1]["x"]["se"])


def test_method_that_rejects_the_task_is_skipped_with_a_warning(caplog):
    task = _classification_task()

    def config_fn(name, t, seed):
        config = heart_config(name, t.in_features, seed=seed, num_epochs=1)
        if name == "lowrank":
            config["rank"] = [999, 999]  # invalid for these layers: the constructor refuses
        return config

    with caplog.at_level("WARNING"):
        result = run_task(task, ["deterministic", "lowrank"], [0], config_fn, num_samples=2, experiment="heart",
                          progress=False)
    assert [r["method"] for r in result.rows] == ["deterministic"]
    assert "syn/lowrank" in result.skipped and "rank" in result.skipped["syn/lowrank"]
    assert "skipping lowrank on syn" in caplog.text


def test_holdout_is_seeded_and_disjoint():
    x, y = torch.arange(40.0).reshape(20, 2), torch.arange(20.0)
    (xt, yt), (xv, yv) = holdout((x, y), 0.1, seed=4)
    assert len(yv) == 2 and len(yt) == 18 and set(yt.tolist()).isdisjoint(yv.tolist())
    assert torch.equal(holdout((x, y), 0.1, seed=4)[1][1], yv)
    assert holdout((x, y), 0.0, seed=4) == ((x, y), None)


def test_bad_arguments_give_clear_errors(capsys):
    with pytest.raises(SystemExit):
        main(["experiment", "pm99"])
    assert "invalid choice: 'pm99'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="name must be one of the experiments \\['heart', 'pm25', 'sst2', 'uci'\\], got 'pm99'"):
        run_experiment("pm99")
    with pytest.raises(SystemExit):
        main(["experiment", "heart", "--methods", "deterministic,nope", "--quiet"])
    assert "unknown ['nope']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["experiment", "uci", "--datasets", "boston", "--quiet"])
    err = capsys.readouterr().err
    assert "UCI dataset names" in err and "unknown ['boston']" in err
    with pytest.raises(ValueError, match="UCI dataset names .*unknown \\['boston'\\]"):
        resolve_datasets("yacht,boston")
    with pytest.raises(SystemExit):
        main(["experiment", "uci", "--splits", "0", "--quiet"])
    assert "--splits must be a positive integer, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["experiment", "heart", "--datasets", "yacht"])
    assert "apply to the uci experiment only" in capsys.readouterr().err
    if not torch.cuda.is_available():  # a device that parses but does not exist is refused before anything runs
        with pytest.raises(SystemExit):
            main(["experiment", "heart", "--smoke", "--device", "cuda", "--quiet"])
        assert "error:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["experiment", "heart", "--smoke", "--device", "gpu7", "--quiet"])
    assert "error:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["experiment", "uci", "--data-seed", "1", "--quiet"])
    assert "--data-seed applies to the heart experiment only" in capsys.readouterr().err
    with pytest.raises(ValueError, match="seeds must be a non-empty list of non-negative ints"):
        run_heart(seeds=[-1])
    with pytest.raises(ValueError, match="num_samples must be a positive integer, got 0"):
        run_uci(num_samples=0)
    with pytest.raises(ValueError, match="kind must be one of"):
        TaskData("x", "ranking", train=(torch.zeros(1, 1), torch.zeros(1)), test=(torch.zeros(1, 1), torch.zeros(1)))


@needs_data
def test_each_heart_seed_draws_its_own_split_unless_data_seed_is_fixed():
    per_seed = run_heart(["deterministic"], seeds=(0, 1), num_epochs=2, num_samples=4, root=ROOT, progress=False)
    assert [row["data_seed"] for row in per_seed.rows] == [0, 1]
    assert per_seed.rows[0]["auroc"] != per_seed.rows[1]["auroc"]  # different test patients
    assert "data_seed" not in per_seed.aggregates[0] and per_seed.aggregates[0]["n"] == 2
    fixed = run_heart(["deterministic"], seeds=(0, 1), num_epochs=2, num_samples=4, root=ROOT, data_seed=3,
                      progress=False)
    assert [row["data_seed"] for row in fixed.rows] == [3, 3]


def test_journal_keeps_every_finished_row_and_failure(tmp_path, monkeypatch):
    journal = tmp_path / "rows.jsonl"
    result = run_uci(methods="deterministic,lowrank", tasks=[_regression_task()], num_samples=4, progress=False,
                     journal=journal)
    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    assert [entry["row"]["method"] for entry in lines] == ["deterministic", "lowrank"]
    assert lines[1]["row"]["rmse"] == result.rows[1]["rmse"]
    from pyro_lowrank.inference.methods.deterministic import Deterministic

    def boom(self, train, val):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(Deterministic, "_fit", boom)
    run_uci(methods="deterministic", tasks=[_regression_task()], num_samples=4, progress=False, journal=journal)
    last = json.loads(journal.read_text().splitlines()[-1])
    assert last["failure"]["method"] == "deterministic" and "out of memory" in last["failure"]["error"]
