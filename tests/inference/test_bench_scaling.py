"""Scaling curves and the Transformer memory benchmark on tiny sizes: structure, exact parameter counts, exponents of
the counts, JSON round trip, the plot, and the CPU peak-memory replay on known allocations. Timings are recorded but
never asserted (shared machines are noisy)."""

import json
import math

import pytest
import torch

import pyro_lowrank  # noqa: F401
from pyro_lowrank.inference.bench.memory import transformer_memory
from pyro_lowrank.inference.bench.scaling import ScalingResult, fit_exponent, plot_scaling, scaling_curves
from pyro_lowrank.inference.bench.timing import peak_memory_bytes

WIDTHS = (32, 64, 128)
RANK = 4
METHODS = ("deterministic", "low-rank", "mean-field")


def _exact_counts(w: int, r: int = RANK, c: int = 10) -> dict[str, int]:
    """Learned numbers of the MLP w -> w -> w -> c (input width = w, depth 2).

    deterministic: two w x w layers and a c x w one with biases; mean-field: loc and scale of each; low-rank: loc and
    scale of A (m x r), B (n x r) and the bias (m) per layer, the output layer at rank min(r, c).
    """
    det = 2 * (w * w + w) + (c * w + c)
    out_rank = min(r, c)
    low = 2 * (2 * r * (w + w) + 2 * w) + 2 * out_rank * (w + c) + 2 * c
    return {"deterministic": det, "mean-field": 2 * det, "low-rank": low}


@pytest.fixture(scope="module")
def threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny steps: avoid oversubscribed OpenMP barriers on a shared machine
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def scaling(threads):
    return scaling_curves(WIDTHS, rank=RANK, batch_size=16, rounds=1, repeats=1, warmup=0, methods=METHODS)


@pytest.fixture(scope="module")
def memory(threads):
    return transformer_memory(vocab_size=500, d_model=32, num_layers=1, num_heads=4, dim_feedforward=64, seq_len=16,
                              batch_size=8, rank=4)


def test_fit_exponent_recovers_a_power_law():
    widths = [16, 64, 256, 1024]
    assert fit_exponent(widths, [3.0 * w**1.5 for w in widths]) == pytest.approx(1.5, abs=1e-12)
    with pytest.raises(ValueError, match="two distinct"):
        fit_exponent([8, 8], [1.0, 2.0])
    with pytest.raises(ValueError, match="positive"):
        fit_exponent([8, 16], [0.0, 2.0])


def test_scaling_rows_and_exact_parameter_counts(scaling):
    assert scaling.methods == list(METHODS)
    assert {(row.method, row.width) for row in scaling.rows} == {(m, w) for m in METHODS for w in WIDTHS}
    for row in scaling.rows:
        assert row.parameters == _exact_counts(row.width)[row.method]
        assert 0 < row.min_s <= row.median_s <= row.max_s and math.isfinite(row.max_s)
        assert row.rounds == 1 and row.repeats == 1
    assert scaling.fit == "top-half" and scaling.fit_widths == [64, 128]
    assert set(scaling.time_exponents) == set(scaling.time_exponents_all) == set(METHODS)
    assert all(math.isfinite(k) for k in (*scaling.time_exponents.values(), *scaling.time_exponents_all.values()))


def test_parameter_count_exponents(scaling):
    # The counts are a w^k + b w^(k-1) + ..., whose log-log slope is k - (b / a) / w + O(w^-2): 2 - 6/w for the
    # full-rank routes (b / a = 12 / 2) and 1 - (100 / 44) / w for low-rank r = 4 (44 w + 100), i.e. at most
    # 0.19 and 0.07 below k at w = 32 and less over 32..128. The fit must equal the slope of the exact formulas and
    # lie within 0.15 of the leading power.
    theory = {"deterministic": 2.0, "mean-field": 2.0, "low-rank": 1.0}
    for method, k in scaling.parameter_exponents.items():
        exact = fit_exponent(WIDTHS, [_exact_counts(w)[method] for w in WIDTHS])
        assert k == pytest.approx(exact, abs=1e-12)
        assert k <= theory[method] and k == pytest.approx(theory[method], abs=0.15)


def test_scaling_json_round_trip_and_plot(scaling, tmp_path):
    data = json.loads(json.dumps(scaling.to_json()))
    again = ScalingResult.from_json(data)
    assert again.rows == scaling.rows
    assert again.parameter_exponents == scaling.parameter_exponents
    assert again.fit_widths == scaling.fit_widths and again.settings["widths"] == list(WIDTHS)
    assert data["exponents"]["low-rank"]["parameters"] == scaling.parameter_exponents["low-rank"]
    path = plot_scaling(again, tmp_path / "scaling.png")
    assert path.exists() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_scaling(data, tmp_path / "from_json.png").stat().st_size > 1000  # bench's write_bench passes JSON


def test_scaling_validates_arguments():
    with pytest.raises(ValueError, match="two distinct"):
        scaling_curves((64, 64))
    with pytest.raises(ValueError, match="fit"):
        scaling_curves((32, 64), fit="bottom")


def test_transformer_memory_keys_and_invariants(memory):
    assert {"settings", "models", "ratios", "target_met", "peak_ratio", "persistent_ratio"} <= set(memory)
    assert set(memory["models"]) == {"low-rank", "mean-field", "deterministic"}
    keys = {"parameters", "parameters_bytes", "buffers_bytes", "optimizer_state_bytes", "persistent_bytes",
            "peak_step_bytes", "peak_total_bytes"}
    for row in memory["models"].values():
        assert set(row) == keys
        assert all(row[k] > 0 for k in keys - {"buffers_bytes"}) and row["buffers_bytes"] >= 0
        assert row["parameters_bytes"] == 4 * row["parameters"]  # float32
        assert row["optimizer_state_bytes"] >= 2 * row["parameters_bytes"]  # Adam's two moments (and step counts)
        assert row["persistent_bytes"] == row["parameters_bytes"] + row["buffers_bytes"] + row["optimizer_state_bytes"]
        assert row["peak_total_bytes"] == row["persistent_bytes"] + row["peak_step_bytes"]
    low, full = memory["models"]["low-rank"], memory["models"]["mean-field"]
    assert low["parameters"] < full["parameters"]
    assert low["persistent_bytes"] < full["persistent_bytes"]
    ratios = memory["ratios"]
    assert set(ratios) == {"peak_total", "peak_step", "persistent", "parameters"}
    assert ratios["persistent"] == pytest.approx(low["persistent_bytes"] / full["persistent_bytes"])
    assert memory["peak_ratio"] == ratios["peak_total"] and memory["persistent_ratio"] == ratios["persistent"]
    assert memory["target_met"] == (ratios["peak_total"] <= 0.5)
    assert memory["settings"]["elbo"].startswith("TraceMeanField_ELBO")
    json.dumps(memory)


def _known_allocations():
    a = torch.empty(250_000)  # 1e6 bytes
    b = torch.empty(500_000)  # 2e6 bytes: 3e6 held
    del a
    c = torch.empty(100_000)  # 4e5 bytes: 2.4e6 held
    del b, c


def test_cpu_peak_memory_counts_known_allocations():
    assert peak_memory_bytes(_known_allocations) == 3_000_000
    assert peak_memory_bytes(_known_allocations, "cpu") == 3_000_000
    assert peak_memory_bytes(lambda: torch.ones(1000, 1000)) == 4_000_000  # ones = empty + fill_: counted once
    x = torch.randn(256, 256, requires_grad=True)

    def backward():  # x @ x (saved x, out), relu (out), sum, then the gradient 256 x 256
        (x @ x).relu().sum().backward()
        x.grad = None

    peak = peak_memory_bytes(backward)
    assert 2 * 256 * 256 * 4 <= peak <= 4 * 256 * 256 * 4 + 4096


def test_cpu_peak_memory_ignores_frees_of_older_tensors():
    held = [torch.empty(1_000_000)]
    assert peak_memory_bytes(lambda: held.clear()) == 0
    assert peak_memory_bytes(lambda: None) == 0


def test_timing_peak_memory_counts_nested_allocations_once():
    assert peak_memory_bytes(lambda: torch.ones(1000, 1000), "cpu") == 4_000_000
