"""Smoke run of ``pyro-lowrank rank-selection`` (LRVD from scratch on the digits MLP against a deterministic twin),
checked through what it writes, plus the experiment's helpers on hand-built cases."""

from __future__ import annotations

import json
import math

import pytest
import torch

from pyro_lowrank.diagnostics import energy_fraction
from pyro_lowrank.inference.cli import main
from pyro_lowrank.inference.experiments.rank_selection import hidden_unit_permutations, run_rank_selection

# A smoke-length run (6 epochs) does not move the norm scores (about -5 to -3 after it) up to the default tau = 3;
# tau = -4 makes the periodic pruning act (several steps, part of each layer) so that the rank bookkeeping is exercised.
SMOKE_TAU = "-4"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("rank_selection")
    assert main(["rank-selection", "--smoke", "--quiet", "--prune-tau", SMOKE_TAU, "--out", str(out)]) == 0
    return json.loads((out / "results.json").read_text()), out


def test_files_written(smoke):
    document, out = smoke
    for name in ("rank_dynamics.png", "rank_dynamics_unpruned.png", "twin_spectrum.png"):
        assert (out / name).stat().st_size > 5000, name
    markdown = (out / "results.md").read_text()
    assert "| deterministic twin |" in markdown and "| LRVD, pruned during training (norm score) |" in markdown
    assert markdown.count("| pruned | layers.") == 3 and markdown.count("| unpruned | layers.") == 3
    assert document["command"].startswith("pyro-lowrank rank-selection --smoke")
    assert document["settings"]["prune_tau"] == float(SMOKE_TAU)
    assert document["settings"]["prune_score"] == "norm"  # the default, smoke included


def test_ranks_never_grow_and_stay_below_the_start(smoke):
    document, _ = smoke
    run = document["runs"][0]
    settings = document["settings"]
    start = {"layers.0": settings["rank"], "layers.1": settings["rank"], "layers.2": settings["output_rank"]}
    pruned, unpruned = run["pruned"], run["unpruned"]
    epochs = settings["num_epochs"]
    for layer, first in start.items():
        ranks, effective = pruned["ranks"][layer], pruned["effective_ranks"][layer]
        assert len(ranks) == len(effective) == epochs
        previous = [first] + ranks[:-1]  # the rank entering each epoch
        assert all(1 <= r <= p for r, p in zip(ranks, previous)), ranks  # pruning only removes
        assert all(0 <= e <= p for e, p in zip(effective, previous)), effective  # scored before the pruning
        assert ranks[-1] == next(row["final_rank"] for row in pruned["layers"] if row["layer"] == layer)
        assert unpruned["ranks"][layer] == [first] * epochs  # no pruning in this run
        for history in (unpruned["median_ranks"][layer], unpruned["norm_ranks"][layer]):
            assert len(history) == epochs and all(0 <= e <= first for e in history)
        # fit scored with prune_score = "norm": without pruning its record is the norm-score record
        assert unpruned["effective_ranks"][layer] == unpruned["norm_ranks"][layer]
    assert any(pruned["ranks"][layer][-1] < first for layer, first in start.items())  # tau = -4 does prune
    for row in pruned["layers"]:
        assert row["final_rank"] == row["k"]
        assert row["norm_effective_rank"] == pruned["norm_ranks"][row["layer"]][-1]
        assert row["median_effective_rank"] == pruned["median_ranks"][row["layer"]][-1]
    for row in unpruned["layers"]:
        assert row["k"] == max(row["norm_effective_rank"], 1) and row["final_rank"] == row["start_rank"]
        assert row["norm_effective_rank"] == unpruned["norm_ranks"][row["layer"]][-1]
        assert row["median_effective_rank"] == unpruned["median_ranks"][row["layer"]][-1]
    for name in ("pruned", "unpruned"):
        for row in run[name]["layers"]:
            tau = settings["prune_tau"]
            for score in ("median", "norm"):
                assert len(row[f"{score}_log_alpha"]) == row["final_rank"]
                assert sum(v < tau for v in row[f"{score}_log_alpha"]) == row[f"{score}_effective_rank"]


def _prune_epochs(settings):
    """0-based indices of the epochs at whose end ``fit`` pruned."""
    return [e for e in range(settings["num_epochs"])
            if e + 1 >= settings["prune_start"] and (e + 1 - settings["prune_start"]) % settings["prune_every"] == 0]


def _assert_pruned_by(run, settings, score):
    """At every pruning epoch the rank after pruning is the count of components below tau by ``score`` just before
    it (at least min_rank = 1), and right after it every kept component scores below tau (or the one forced kept)."""
    pruned = run["pruned"]
    for layer, ranks in pruned["ranks"].items():
        for e in _prune_epochs(settings):
            assert ranks[e] == max(pruned["effective_ranks"][layer][e], 1), (layer, e)
            after = pruned[f"{score}_ranks"][layer][e]
            assert after == ranks[e] or (after == 0 and ranks[e] == 1), (layer, e)


def test_pruned_run_used_the_norm_score(smoke):
    document, _ = smoke
    run, settings = document["runs"][0], document["settings"]
    _assert_pruned_by(run, settings, "norm")
    # the median score would have kept none of the hidden components the norm score kept: the contrast of the report
    hidden = [row for row in run["pruned"]["layers"] if row["layer"] != "layers.2"]
    assert all(row["median_effective_rank"] <= row["norm_effective_rank"] for row in hidden)
    assert any(row["median_effective_rank"] < row["norm_effective_rank"] for row in hidden)


def test_pruning_by_the_median_score_on_request():
    result = run_rank_selection(smoke=True, prune_score="median", prune_tau=-2.0, num_epochs=4, progress=False)
    run, settings = result["runs"][0], result["settings"]
    assert settings["prune_score"] == "median"
    _assert_pruned_by(run, settings, "median")
    assert run["unpruned"]["effective_ranks"] == run["unpruned"]["median_ranks"]
    with pytest.raises(ValueError, match="prune_score"):
        run_rank_selection(smoke=True, prune_score="mean")


def test_cosines_and_energies_are_valid(smoke):
    document, _ = smoke
    run = document["runs"][0]
    for values, ranks in zip(run["twin"]["singular_values"], run["twin"]["energy_ranks"]):
        values = torch.tensor(values, dtype=torch.float64)
        assert bool((values >= 0).all()) and bool((values[1:] <= values[:-1]).all())
        energy = energy_fraction(values)
        assert float(energy[0]) == 0.0 and float(energy[-1]) == pytest.approx(1.0)
        assert bool((energy[1:] >= energy[:-1]).all())  # monotone in k
        assert list(ranks.values()) == sorted(ranks.values())  # more energy needs at least as many components
        for fraction, rank in ranks.items():
            assert float(energy[rank]) >= float(fraction) - 1e-9 and float(energy[rank - 1]) < float(fraction)
    for name in ("pruned", "unpruned"):
        for index, row in enumerate(run[name]["layers"]):
            m, n = row["shape"]
            assert len(row["left_cosines"]) == len(row["right_cosines"]) == row["k"] <= min(m, n)
            for side in ("left", "right"):
                cosines = row[f"{side}_cosines"]
                assert all(0.0 <= c <= 1.0 for c in cosines)
                assert cosines == sorted(cosines, reverse=True)
                assert row[f"{side}_mean_cos2"] == pytest.approx(sum(c * c for c in cosines) / len(cosines), abs=1e-3)
            assert row["left_chance"] == pytest.approx(row["k"] / m)
            assert row["right_chance"] == pytest.approx(row["k"] / n)
            values = torch.tensor(run["twin"]["singular_values"][index], dtype=torch.float64)
            energy_k = float(energy_fraction(values)[row["k"]])
            assert row["twin_energy_at_k"] == pytest.approx(energy_k, rel=1e-5)  # values stored to 6 digits
            assert 0.0 <= row["captured_twin_energy"] <= row["twin_energy_at_k"] + 1e-9  # Eckart-Young-Mirsky
            for side in ("left", "right"):  # one side alone captures more, but never above e_k (Ky Fan)
                assert row["captured_twin_energy"] - 1e-9 <= row[f"captured_twin_energy_{side}"]
                assert row[f"captured_twin_energy_{side}"] <= row["twin_energy_at_k"] + 1e-9
        if run[name]["layers"][-1]["k"] == 10:  # the full class space: every output-side cosine is 1
            assert run[name]["layers"][-1]["left_cosines"] == pytest.approx([1.0] * 10, abs=1e-3)


def test_metrics_are_in_range(smoke):
    document, _ = smoke
    run = document["runs"][0]
    for row in (run["twin"], run["pruned"], run["unpruned"]):
        metrics = row["metrics"]
        assert 0.0 <= metrics["accuracy"] <= 1.0 and 0.0 <= metrics["ece"] <= 1.0
        assert 0.0 < metrics["nll"] < 10.0 and math.isfinite(metrics["brier"])
    assert run["pruned"]["parameters"] < run["unpruned"]["parameters"]  # pruning removed guide parameters


def test_cli_rejects_bad_options(tmp_path):
    with pytest.raises(SystemExit):
        main(["rank-selection", "--smoke", "--epochs", "0", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(["rank-selection", "--smoke", "--seed", "0", "0", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(["rank-selection", "--smoke", "--device", "nonsense", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(["rank-selection", "--smoke", "--threads", "0", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(["rank-selection", "--smoke", "--prune-score", "mean", "--out", str(tmp_path)])
    assert not (tmp_path / "results.json").exists()  # every check fails before anything runs


def test_hidden_unit_permutations_recover_a_shuffle():
    g = torch.Generator().manual_seed(0)
    acts = torch.relu(torch.randn(200, 12, generator=g, dtype=torch.float64))
    acts[:, 3] = 0.0  # a dead unit correlates 0 with everything
    perm = torch.randperm(12, generator=g)
    twin = 2.0 * acts[:, perm] + 0.5  # positive scaling and shifts leave correlations unchanged
    (found,) = hidden_unit_permutations([acts], [twin])
    assert torch.equal(perm[found], torch.arange(12))  # twin unit found[i] is unit i (the dead one by elimination)
