import json

from pyro_lowrank.inference.cli import main
from pyro_lowrank.inference.demo import load_demo_data


def test_demo_data_is_the_bundled_digits_split_without_overlap():
    data = load_demo_data(0)
    sizes = [data[f"x_{s}"].shape[0] for s in ("train", "val", "test")]
    assert sum(sizes) == 1797 and data["x_train"].shape[1] == 64
    assert float(data["x_train"].max()) <= 1.0
    rows = [set(map(tuple, data[f"x_{s}"].tolist())) for s in ("train", "test")]
    assert len(rows[0] & rows[1]) < 5  # digits has a handful of duplicate images, nothing more


def test_demo_command_smoke(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--epochs", "2", "--num-samples", "4", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "deterministic" in printed and "low-rank BNN" in printed and "ECE" in printed
    results = json.loads((tmp_path / "results.json").read_text())
    methods = results["methods"]
    # learned numbers: 2 r (m + n) + 2 m per low-rank layer, ranks 16, 16, 10 on 64-128-128-10
    expected = sum(2 * r * (m + n) + 2 * m for n, m, r in ((64, 128, 16), (128, 128, 16), (128, 10, 10)))
    assert methods["low-rank BNN"]["parameters"] == expected
    assert methods["deterministic"]["parameters"] == 64 * 128 + 128 + 128 * 128 + 128 + 128 * 10 + 10
    assert (tmp_path / "reliability.png").stat().st_size > 5000
    for r in methods.values():
        assert 0 <= r["ece"] <= 1 and r["nll"] > 0 and r["train_seconds"] > 0
