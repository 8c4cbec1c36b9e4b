"""``pyro-lowrank demo``: a low-rank BNN against its deterministic twin on scikit-learn's bundled digits data.

Offline by construction: :func:`sklearn.datasets.load_digits` ships with scikit-learn (1,797 8x8 images, 10 classes).
Both networks are 64-128-128-10 ReLU MLPs; the Bayesian one factorises every weight (ranks 16, 16 and 10 for the
10-class output layer, since a rank-1 output layer would force all ten logits onto one direction) and is trained by
SVI with the factor guide (initial posterior scales eta * s with the paper's eta = 0.01, which gave lower NLL and
ECE than eta = 0.1 on three seeds); its predictive uses S posterior draws.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import pyro
from pyro_lowrank.guides import FactorGuide
from pyro_lowrank.metrics import accuracy, expected_calibration_error, negative_log_likelihood
from pyro_lowrank.plots import reliability_diagram

from ..models import DeterministicMLP, LowRankMLP
from .deterministic import train_deterministic
from .fit import fit
from .predict import predict

__all__ = ["load_demo_data", "run_demo"]

logger = logging.getLogger(__name__)


def load_demo_data(seed: int = 0) -> dict[str, torch.Tensor]:
    """Digits scaled to [0, 1], split 60/15/25 (train/validation/test), stratified, seeded."""
    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=0.25, stratify=y, random_state=seed)
    x_train, x_val, y_train, y_val = train_test_split(x_rest, y_rest, test_size=0.2, stratify=y_rest, random_state=seed)
    as_x = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    as_y = lambda a: torch.tensor(a, dtype=torch.long)  # noqa: E731
    return {
        "x_train": as_x(x_train), "y_train": as_y(y_train),
        "x_val": as_x(x_val), "y_val": as_y(y_val),
        "x_test": as_x(x_test), "y_test": as_y(y_test),
    }


def run_demo(
    out_dir: str | Path = "demo-out",
    *,
    seed: int = 0,
    num_epochs: int = 60,
    num_samples: int = 100,
    hidden: tuple[int, ...] = (128, 128),
    rank: int = 16,
    output_rank: int = 10,
    init_scale_factor: float = 0.01,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Train both networks, evaluate on the test split, write ``reliability.png`` and ``results.json`` into
    ``out_dir``; returns the results (one dict per method). Data and networks live on ``device``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    data = {name: tensor.to(device) for name, tensor in load_demo_data(seed).items()}
    x_test, y_test = data["x_test"], data["y_test"]
    num_classes = 10

    pyro.set_rng_seed(seed)
    net = DeterministicMLP(64, hidden, num_classes).to(device)
    det_seconds = train_deterministic(
        net, (data["x_train"], data["y_train"]), num_epochs=num_epochs, batch_size=64, lr=1e-3,
        weight_decay=1e-4, seed=seed, progress=progress,
    )
    with torch.no_grad():
        det_probs = torch.softmax(net(x_test), -1).unsqueeze(0)

    pyro.set_rng_seed(seed)
    model = LowRankMLP(64, hidden, rank=rank, output_rank=output_rank, likelihood="categorical",
                       num_classes=num_classes, init_scale_factor=init_scale_factor).to(device)
    guide = FactorGuide(model)
    history = fit(
        model, guide, (data["x_train"], data["y_train"]), val_data=(data["x_val"], data["y_val"]),
        num_epochs=num_epochs, batch_size=64, lr=3e-3, kl_anneal_epochs=5, max_plate_nesting=1,
        seed=seed, progress=progress,
    )
    bnn_probs = torch.softmax(predict(model, guide, x_test, num_samples)["f"], -1).cpu()
    det_probs, y_test = det_probs.cpu(), y_test.cpu()
    bnn_params = sum(p.numel() for p in guide.parameters())

    results = {}
    for name, probs, params, seconds in (
        ("deterministic", det_probs, sum(p.numel() for p in net.parameters()), det_seconds),
        ("low-rank BNN", bnn_probs, bnn_params, history.seconds),
    ):
        results[name] = {
            "accuracy": accuracy(probs, y_test),
            "nll": negative_log_likelihood(probs, y_test),
            "ece": expected_calibration_error(probs, y_test, num_bins=15),
            "parameters": int(params),
            "train_seconds": seconds,
        }
    fig = reliability_diagram({"deterministic": det_probs, "low-rank BNN": bnn_probs}, y_test)
    fig.savefig(out_dir / "reliability.png", dpi=120)
    (out_dir / "results.json").write_text(json.dumps(
        {"dataset": "sklearn digits", "seed": seed, "num_epochs": num_epochs, "num_samples": num_samples,
         "ranks": list(model.ranks), "best_epoch": history.best_epoch, "methods": results}, indent=2))
    logger.info("wrote %s and %s", out_dir / "reliability.png", out_dir / "results.json")
    return results


def format_table(results: dict[str, dict[str, float]]) -> str:
    """A fixed-width text table of the demo's results."""
    header = f"{'method':<16}{'accuracy':>10}{'NLL':>9}{'ECE':>9}{'params':>10}{'train s':>10}"
    rows = [header, "-" * len(header)]
    for name, r in results.items():
        rows.append(f"{name:<16}{r['accuracy']:>10.4f}{r['nll']:>9.4f}{r['ece']:>9.4f}{r['parameters']:>10d}"
                     f"{r['train_seconds']:>10.1f}")
    return "\n".join(rows)
