"""`pyro-lowrank bench --smoke`: every case builds and runs; the tables, targets and files are well formed.
No timing is asserted (CI machines are noisy); the invariants are about what is measured."""

import json

import pytest
import torch

import pyro_lowrank  # noqa: F401
from pyro_lowrank.inference.bench import SMOKE, BenchConfig, format_markdown, run_bench, write_bench
from pyro_lowrank.inference.bench.cases import prediction_cases, training_cases
from pyro_lowrank.inference.bench.timing import peak_memory_bytes, time_interleaved
from pyro_lowrank.inference.cli import main


def test_time_interleaved_alternates_cases_and_reports_median_and_range():
    calls = []
    timings = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                               rounds=3, repeats=2, warmup=1)
    assert calls == ["a", "b"] + ["a", "a", "b", "b"] * 3
    for timing in timings.values():
        assert timing.rounds == 3 and timing.min <= timing.median <= timing.max
    with pytest.raises(ValueError, match="rounds and repeats"):
        time_interleaved({"a": lambda: None}, rounds=0, repeats=1)


def test_peak_memory_counts_the_largest_simultaneous_allocation():
    def step():
        a = torch.empty(1000, 1000)  # 4 MB
        b = torch.empty(500, 1000)  # 2 MB, 6 MB together
        del a
        c = torch.empty(2000, 1000)  # 8 MB, 10 MB with b
        return b, c

    assert peak_memory_bytes(step) == 4 * (500_000 + 2_000_000)


def test_training_cases_count_the_parameters_each_route_optimises():
    widths = (20, 16, 16, 4)
    cases = training_cases(widths, ranks=(3,), batch_size=8, include=["deterministic", "low-rank", "mean-field"])
    weights = 20 * 16 + 16 * 16 + 16 * 4
    biases = 16 + 16 + 4
    assert cases["deterministic"].parameters == weights + biases
    assert cases["mean-field"].parameters == 2 * (weights + biases)  # loc and scale per weight
    factors = 3 * (20 + 16) + 3 * (16 + 16) + 3 * (16 + 4)  # output rank min(3, 4) = 3
    assert cases["low-rank r=3"].parameters == 2 * (factors + biases)
    for case in cases.values():
        case.fn()


def test_a_training_step_changes_the_parameters_of_every_route():
    import pyro

    cases = training_cases((12, 8, 3), ranks=(2,), batch_size=4)
    assert {"deterministic", "low-rank r=2", "low-rank eager r=2", "low-rank AutoNormal r=2", "mean-field",
            "standard Pyro"} <= set(cases)
    for name, case in cases.items():  # bayesian-torch only when installed
        # the optimised tensors: the step closure's optimiser (or, for SVI, the global param store)
        if name == "standard Pyro":
            with pyro.settings.context(module_local_params=False):
                params = [p.unconstrained() for p in pyro.get_param_store().values()]
        else:
            opt = next(c.cell_contents for c in case.fn.__closure__ if isinstance(c.cell_contents, torch.optim.Optimizer))
            params = [p for group in opt.param_groups for p in group["params"]]
        before = [p.detach().clone() for p in params]
        case.fn()
        assert sum(p.numel() for p in params) == case.parameters, name
        assert all(not torch.equal(b, p.detach()) for b, p in zip(before, params)), name


def test_prediction_cases_return_s_draws_for_every_input():
    cases = prediction_cases((12, 8, 3), rank=2, num_samples=5, num_inputs=7)
    assert cases["deterministic"].fn().shape == (7, 3)
    assert cases["low-rank r=2"].fn()["f"].shape == (5, 7, 3)
    assert cases["mean-field"].fn()["f"].shape == (5, 7, 3)
    assert cases["standard Pyro Predictive"].fn()["f"].shape == (5, 7, 3)


def test_smoke_bench_writes_tables_targets_json_and_plot(tmp_path):
    result = run_bench(BenchConfig(**SMOKE))
    names = [row["case"] for row in result["training"]]
    assert names[0] == "deterministic" and "low-rank r=16" in names and "standard Pyro" in names
    assert all(row["peak_mb"] > 0 for row in result["training"])
    base = next(row for row in result["training"] if row["case"] == "deterministic")
    assert base["ratio"] == 1.0
    assert {t["target"].split(" ")[0] for t in result["targets"]} >= {"low-rank", "standard", "predict"}
    assert all(isinstance(t["met"], bool) for t in result["targets"])
    paths = write_bench(result, tmp_path)
    loaded = json.loads(paths["json"].read_text())
    assert loaded["machine"]["torch"] == torch.__version__
    assert "| low-rank r=16 |" in paths["markdown"].read_text()
    assert paths["plot"].stat().st_size > 0
    assert "Prediction" in format_markdown(result)


def test_cli_bench_smoke_and_bad_options(tmp_path, capsys):
    assert main(["bench", "--smoke", "--no-scaling", "--no-memory", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "bench.json").exists() and not (tmp_path / "scaling.png").exists()
    assert "Training step" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["bench", "--smoke", "--rounds", "0", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(["bench", "--device", "nonsense", "--out", str(tmp_path)])


@pytest.mark.cuda
def test_bench_smoke_on_cuda(tmp_path):
    result = run_bench(BenchConfig(**{**SMOKE, "device": "cuda"}))
    assert result["machine"]["gpu"]
    assert all(row["peak_mb"] > 0 for row in result["training"])
