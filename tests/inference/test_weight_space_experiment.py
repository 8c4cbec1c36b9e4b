"""``pyro-lowrank weight-space``: the smoke run through what it writes, the 1-D task, the configuration, the kernel
study's guarantees and the sampled-vs-linearised study on a small MAP network."""

from __future__ import annotations

import copy
import json
import math
import warnings
from pathlib import Path

import pyro
import pytest
import torch

from pyro_lowrank.inference.cli import build_parser, main
from pyro_lowrank.inference.experiments.runner import seeded
from pyro_lowrank.inference.experiments.weight_space import (DEFAULT_METHODS, TOY_TASK, fit_map_network, kernel_study,
                                                             make_toy_task, symmetry_tangents, table_prior_precisions,
                                                             underfitting_study, weight_space_config,
                                                             weight_space_settings)
from pyro_lowrank.inference.experiments.weight_space_report import _verdict
from pyro_lowrank.inference.factor_laplace import DEFAULT_NOISE_GRID, FactorLaplace
from pyro_lowrank.inference.methods import make_method

ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data"
HAS_UCI = (ROOT / "uci_regression" / "yacht").is_dir()


def _strict_json(path):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("weight_space")
    argv = ["weight-space", "--smoke", "--quiet", "--out", str(out)]
    argv += ["--root", str(ROOT)] if HAS_UCI else ["--datasets", "none"]
    assert main(argv) == 0
    return _strict_json(out / "results.json"), out


@pytest.fixture(scope="module")
def small_map():
    """A short MAP fit of the geometry methods' network on a small 1-D task (seconds)."""
    task = make_toy_task(0, train_size=30, val_size=16, test_size=41, num_epochs=60)
    pyro.clear_param_store()
    network = fit_map_network(task, seed=0, lr=3e-2)
    pyro.clear_param_store()
    return network, task


def test_smoke_run_writes_every_file_with_every_task_and_method(smoke):
    document, out = smoke
    tasks = [TOY_TASK] + (["yacht"] if HAS_UCI else [])
    expected = {"results.json", "results.md", "rows.jsonl", "kernel_share.png", f"bands_{TOY_TASK}.png",
                *(f"underfitting_{t}.png" for t in tasks)}
    assert expected <= {p.name for p in out.iterdir()}
    for name in expected - {"results.json", "results.md", "rows.jsonl"}:
        assert (out / name).stat().st_size > 1000
    for key in ("command", "environment", "settings", "method_settings", "rows", "aggregates", "kernel_study",
                "underfitting", "table_prior_precisions", "toy_data", "failures", "skipped", "wall_seconds"):
        assert key in document
    assert document["command"].startswith("pyro-lowrank weight-space --smoke")
    assert document["failures"] == [] and document["skipped"] == {}
    assert {(a["task"], a["method"]) for a in document["aggregates"]} == {(t, m) for t in tasks
                                                                           for m in DEFAULT_METHODS}
    for row in document["rows"]:
        for key in ("rmse", "test_ll", "picp", "mpiw", "train_seconds", "noise_scale"):
            assert row[key] is not None and math.isfinite(row[key]), (row["task"], row["method"], key)
        assert 0.0 <= row["picp"] <= 1.0 and row["parameters"] > 0
    assert set(document["kernel_study"]) == set(tasks) == set(document["underfitting"])
    assert set(document["table_prior_precisions"]) == set(tasks)
    for by_split in document["table_prior_precisions"].values():
        for alphas in by_split.values():
            assert set(alphas) == {"laplace_factor", "laplace_factor_glm", "laplace_diffusion"}
            assert all(a > 0 for a in alphas.values())
    markdown = (out / "results.md").read_text()
    sections = ["## Kernel of the GGN", "## Sampled vs linearised", "## Prior precision α"]
    for text in [f"## {t} " for t in tasks] + ["test NLL"] + sections:
        assert text in markdown
    for method in DEFAULT_METHODS:
        assert f"| {method} |" in markdown
    assert len(document["toy_data"]["x_test"]) == document["settings"]["toy_test_size"]


def test_smoke_studies_are_finite_and_consistent(smoke):
    document, _ = smoke
    for task, kernel in document["kernel_study"].items():
        assert kernel["kernel_dim"] + kernel["ggn_rank"] == kernel["num_parameters"]
        assert kernel["kernel_dim"] >= kernel["kernel_lower_bound"]
        assert kernel["gauge_ratio"] < 1e-6 and kernel["rescaling_ratio"] < 1e-6
        shares = kernel["kernel_share"]
        assert all(a >= b for a, b in zip(shares, shares[1:])) and 0.0 < shares[-1] <= shares[0] <= 1.0
    for task, study in document["underfitting"].items():
        assert len(study["sampled"]["rmse"]) == len(study["prior_precisions"]) == len(study["linearised"]["nll"])
        for kind in ("sampled", "linearised"):
            assert all(v is not None and math.isfinite(v) for v in study[kind]["rmse"])
            # the joint search includes the training noise's neighbourhood: it never scores worse than 0.1 alone
            assert all(j <= t + 0.05 for j, t in zip(study[kind]["val_nll_joint"], study[kind]["val_nll_train_noise"]))


def test_toy_task_is_seeded_has_its_gap_and_standardised_targets():
    task = make_toy_task(3, train_size=40, val_size=10, test_size=81)
    again, other = make_toy_task(3, train_size=40, val_size=10, test_size=81), make_toy_task(4, train_size=40)
    assert torch.equal(task.train[0], again.train[0]) and torch.equal(task.test[1], again.test[1])
    assert not torch.equal(task.train[0], other.train[0])
    x = torch.cat([task.train[0], task.val[0]])[:, 0]
    assert bool(((x.abs() >= 1) & (x.abs() <= 3)).all()) and int((x < 0).sum()) == 25
    assert task.test[0].shape == (81, 1) and float(task.test[0].min()) == -4.0 and float(task.test[0].max()) == 4.0
    assert abs(float(task.train[1].mean())) < 1e-5 and abs(float(task.train[1].std()) - 1.0) < 1e-5
    raw = task.y_mean + task.y_std * task.train[1].double()
    assert float((raw - torch.sin(2 * task.train[0][:, 0].double())).std()) == pytest.approx(0.1, abs=0.04)
    assert task.info == {"split": 3, "n_hidden": 50, "n_epochs": 500}
    with pytest.raises(ValueError, match="split"):
        make_toy_task(-1)


def test_config_gives_every_method_the_lowrank_network():
    task = make_toy_task(0, train_size=20)
    for name in DEFAULT_METHODS:
        config = weight_space_config(name, task, seed=1, lr=3e-2)
        assert config["rank"] == [1] and config["output_rank"] == 1 and config["prior_scale"] == "matched"
        assert config["hidden_features"] == [50] and config["lr"] == 3e-2 and config["num_epochs"] == 500
        assert ("kl_anneal_epochs" in config) == (name == "lowrank")
    assert weight_space_config("laplace_diffusion", task, seed=0)["num_steps"] == 5
    assert weight_space_config("laplace_diffusion", task, seed=0, smoke=True)["num_steps"] == 2


def test_study_map_is_the_map_of_the_geometry_methods():
    task = make_toy_task(1, train_size=24, val_size=10, test_size=11, num_epochs=5)
    config = weight_space_config("laplace_factor_glm", task, seed=2, smoke=True)
    with seeded(2):
        pyro.clear_param_store()
        method = make_method("laplace_factor_glm", **config).fit(task.train, task.val)
    network = fit_map_network(task, seed=2)
    assert set(network.map_values) == set(method.map_values)
    for name, value in method.map_values.items():
        assert torch.equal(network.map_values[name], value), name
    # and the report's "alpha picked by the table's methods" is the alpha the method picked
    assert table_prior_precisions(network, task, seed=2, smoke=True)["laplace_factor_glm"] == \
        method.laplace.prior_precision


def test_kernel_study_guarantees(small_map):
    network, task = small_map
    alphas = [10.0 ** k for k in range(-8, 13)]
    study = kernel_study(network, task, alphas)
    size, outputs = study["num_parameters"], study["num_outputs"]
    assert outputs == 30 and size == 153 and study["dimension_bound"] == size - outputs
    assert study["ggn_rank"] <= outputs and study["kernel_dim"] == size - study["ggn_rank"]
    # counting: rank G <= N·O; the symmetries: every gauge and rescaling tangent is in the kernel at every input
    assert study["kernel_dim"] >= study["dimension_bound"]
    assert study["gauge_ratio"] < 1e-6 and study["rescaling_ratio"] < 1e-6
    values = {k: v.double() for k, v in network.map_values.items()}
    for a_site, b_site in (("layers.0.A", "layers.0.B"), ("layers.1.A", "layers.1.B")):  # X -> (AX, -BX^T) injective
        assert torch.linalg.matrix_rank(values[a_site]) == values[a_site].shape[1]
    assert study["gauge_dim"] == 2 and study["rescaling_dim"] == 50
    assert study["symmetry_rank"] == study["gauge_dim"] + study["rescaling_dim"]  # independent directions here
    assert study["kernel_dim"] >= study["symmetry_rank"]
    shares = study["kernel_share"]
    assert all(a >= b - 1e-15 for a, b in zip(shares, shares[1:]))
    assert shares[-1] == pytest.approx(study["kernel_dim"] / size, rel=1e-3)  # alpha >> lambda_max: k / D
    # alpha far below the smallest nonzero eigenvalue: the kernel's 1/alpha terms dominate the trace
    tiny = 1e-8 * study["smallest_nonzero_eigenvalue"]
    assert kernel_study(network, task, [tiny])["kernel_share"][0] > 1 - 1e-6


def test_symmetry_tangents_leave_the_network_unchanged(small_map):
    network, task = small_map
    from pyro_lowrank.inference import SiteLayout, model_outputs

    model = copy.deepcopy(network.model).double()
    values = {k: v.double() for k, v in network.map_values.items()}
    layout = SiteLayout(values)
    x = torch.linspace(-5, 5, 50, dtype=torch.float64)[:, None]
    base = model_outputs(model, values, x)
    tangents = symmetry_tangents(model, values)
    assert len(tangents["gauge"]) == 2 and len(tangents["rescaling"]) == 50
    theta = layout.flatten(values)
    generator = torch.Generator().manual_seed(0)
    for t in tangents["gauge"] + tangents["rescaling"]:
        step = 1e-4 * t
        moved = model_outputs(model, layout.unflatten(theta + step), x)  # second order only
        random = torch.randn(t.shape, generator=generator, dtype=torch.float64)
        control = model_outputs(model, layout.unflatten(theta + random * step.norm() / random.norm()), x)
        assert float((moved - base).abs().max()) < 1e-3 * float((control - base).abs().max()) + 1e-12


def test_underfitting_study_agrees_with_the_map_at_large_alpha(small_map):
    network, task = small_map
    alphas = [1e-2, 1.0, 1e10]
    study = underfitting_study(network, task, alphas, num_samples=16, seed=0)
    rmse_map = study["map"]["rmse"]
    for kind in ("sampled", "linearised"):
        curve = study[kind]
        assert len(curve["rmse"]) == 3 and all(math.isfinite(v) for v in curve["rmse"] + curve["nll"])
        assert curve["rmse"][-1] == pytest.approx(rmse_map, rel=1e-3)
        assert curve["alpha_fit"] is not None
    # the same draws for both predictives: at a tiny posterior scale the sampled network is its own linearisation
    assert study["sampled"]["nll"][-1] == pytest.approx(study["linearised"]["nll"][-1], rel=1e-4)
    # alpha_selected is the methods' rule: tune_prior_precision with the noise tuned jointly, on these draws
    model = copy.deepcopy(network.model).double()
    values = {k: v.double() for k, v in network.map_values.items()}
    laplace = FactorLaplace(model, values, task.train[0].double(), likelihood="gaussian",
                            noise_scale=network.noise_scale, structure="full")
    for kind in ("sampled", "linearised"):
        curve = study[kind]
        with warnings.catch_warnings():  # 1e10 at the grid's edge
            warnings.simplefilter("ignore", RuntimeWarning)
            laplace.tune_prior_precision(task.val[0].double(), task.val[1].double(), grid=alphas, num_samples=16,
                                         seed=0, linearised=kind == "linearised",
                                         noise_grid=DEFAULT_NOISE_GRID.tolist())
        assert curve["alpha_selected"] == laplace.prior_precision
        pick = alphas.index(curve["alpha_selected"])
        assert curve["noise_joint"][pick] == pytest.approx(laplace.tuned_noise_scale)
        assert all(j <= t + 1e-12 for j, t in zip(curve["val_nll_joint"], curve["val_nll_train_noise"]))


def test_verdict_sentences():
    def study(sampled, linearised):
        return {"sampled": {"alpha_fit": sampled}, "linearised": {"alpha_fit": linearised}, "fit_tolerance": 0.1}

    assert "under-fits" in _verdict("t", study(10.0, 0.01)) and "under-fits" in _verdict("t", study(None, 1.0))
    assert "no under-fitting" in _verdict("t", study(0.01, 10.0))
    assert "same" in _verdict("t", study(1.0, 1.0)) and "neither" in _verdict("t", study(None, None))


def test_parser_accepts_the_subcommand_and_settings_reject_bad_values(tmp_path):
    args = build_parser().parse_args(["weight-space", "--smoke", "--datasets", "yacht", "--splits", "2", "--seeds",
                                      "0", "1", "--toy-epochs", "7", "--out", str(tmp_path), "--root", "r"])
    assert (args.command, args.smoke, args.datasets, args.splits, args.seeds, args.toy_epochs, args.root) == (
        "weight-space", True, "yacht", 2, [0, 1], 7, "r")
    settings = weight_space_settings(None, None)
    assert settings["datasets"] == ["yacht", "energy"] and settings["splits"] == 3
    assert settings["methods"] == list(DEFAULT_METHODS)
    assert weight_space_settings([], smoke=True)["datasets"] == []
    with pytest.raises(TypeError, match="overrides"):
        weight_space_settings(bogus=1)
    for bad in (["--splits", "0"], ["--methods", "nope"], ["--datasets", "nope"], ["--seeds", "0", "0"],
                ["--device", "nonsense"], ["--threads", "0"]):
        with pytest.raises(SystemExit):
            main(["weight-space", "--smoke", "--out", str(tmp_path / "out"), *bad])
    assert not (tmp_path / "out").exists()  # every check fails before anything runs
