r"""``pyro-lowrank compare``: every method on the demo dataset, one table.

Data: scikit-learn's digits (offline), split as in the demo (60/15/25, stratified). The methods are trained on classes
0–7 only; the test images of classes 0–7 measure accuracy, NLL and ECE (15 equal-width bins), and the test images of the
held-out classes 8–9 are the out-of-distribution inputs. OOD AUROC scores every test input by the mutual information
of its predictive draws, :math:`I_i = H[\bar p_i] - \frac1S\sum_s H[p_{s,i}]` (OOD positive), so a method with a single
draw (the deterministic network) sits at 0.5 by construction.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import pyro
import torch
from tqdm import tqdm

from pyro_lowrank.metrics import accuracy, expected_calibration_error, negative_log_likelihood, ood_detection

from .demo import load_demo_data
from .methods import available_methods, make_method

__all__ = ["DEFAULT_METHODS", "default_config", "format_results", "run_compare"]

logger = logging.getLogger(__name__)

DEFAULT_METHODS = ("deterministic", "ensemble", "mc_dropout", "swag", "laplace", "laplace_full", "mean_field",
                   "rank1", "lowrank", "lowrank_svd")
NUM_IN_CLASSES = 8

# Per-method settings on the digits task (64-128-128-8). Learning rates: Adam 1e-3 for maximum-likelihood training,
# 3e-3 with a short KL warm-up for the variational methods (as in the demo).
_SETTINGS: dict[str, dict[str, Any]] = {
    "deterministic": {"lr": 1e-3, "weight_decay": 1e-4},
    "ensemble": {"lr": 1e-3, "weight_decay": 1e-4, "num_members": 5},
    "mc_dropout": {"lr": 1e-3, "dropout": 0.1},
    "swag": {"lr": 1e-3},
    "laplace": {"lr": 1e-3, "weight_decay": 1e-4},  # the MAP is then exactly the deterministic network
    "laplace_full": {"lr": 1e-3, "weight_decay": 1e-4},
    "mean_field": {"lr": 3e-3, "kl_anneal_epochs": 5, "init_scale_factor": 0.01},
    "rank1": {"lr": 3e-3, "kl_anneal_epochs": 5},
    "lowrank": {"lr": 3e-3, "kl_anneal_epochs": 5, "rank": 16, "init_scale_factor": 0.01},
    "lowrank_svd": {"lr": 3e-3, "kl_anneal_epochs": 5, "rank": 16, "init_scale_factor": 0.01},
}


def default_config(name: str, *, num_epochs: int, seed: int, progress: bool = False) -> dict[str, Any]:
    """Architecture, training and method settings used by the comparison for method ``name``."""
    config = {"in_features": 64, "hidden_features": [128, 128], "likelihood": "categorical",
              "num_classes": NUM_IN_CLASSES, "num_epochs": num_epochs, "batch_size": 64, "seed": seed,
              "progress": progress}
    config.update(_SETTINGS.get(name, {}))
    return config


def run_compare(
    methods: Sequence[str] | None = None,
    *,
    seed: int = 0,
    num_epochs: int = 60,
    num_samples: int = 100,
    overrides: dict[str, dict[str, Any]] | None = None,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> dict[str, dict[str, float]]:
    """Fit every method in ``methods`` (default: all registered of :data:`DEFAULT_METHODS`) and evaluate it.

    ``overrides`` maps a method name to settings replacing its defaults. Returns ``{method: {accuracy, nll, ece,
    ood_auroc, parameters, train_seconds}}``. Data (and so every method's networks) live on ``device``.
    """
    registered = set(available_methods())
    if methods is None:
        methods = [m for m in DEFAULT_METHODS if m in registered]
        missing = [m for m in DEFAULT_METHODS if m not in registered]
        if missing:
            logger.warning("skipping %s: not registered (is laplace-torch installed? pip install "
                           "'pyro-lowrank[laplace]')", missing)
    unknown = [m for m in methods if m not in registered]
    if unknown:
        raise ValueError(f"methods must be registered method names {sorted(registered)}, got unknown {unknown}")
    data = {name: tensor.to(device) for name, tensor in load_demo_data(seed).items()}
    keep = lambda x, y: (x[y < NUM_IN_CLASSES], y[y < NUM_IN_CLASSES])  # noqa: E731
    train, val = keep(data["x_train"], data["y_train"]), keep(data["x_val"], data["y_val"])
    x_test, y_test = keep(data["x_test"], data["y_test"])
    x_ood = data["x_test"][data["y_test"] >= NUM_IN_CLASSES]

    results = {}
    for name in tqdm(methods, desc="methods", disable=not progress):
        pyro.set_rng_seed(seed)
        config = default_config(name, num_epochs=num_epochs, seed=seed)
        config.update((overrides or {}).get(name, {}))
        method = make_method(name, **config).fit(train, val)
        probs_in = method.predictive_draws(x_test, num_samples)["probs"].cpu()
        probs_out = method.predictive_draws(x_ood, num_samples)["probs"].cpu()
        results[name] = {
            "accuracy": accuracy(probs_in, y_test.cpu()),
            "nll": negative_log_likelihood(probs_in, y_test.cpu()),
            "ece": expected_calibration_error(probs_in, y_test.cpu(), num_bins=15),
            "ood_auroc": ood_detection(probs_in, probs_out)["auroc"],
            "parameters": int(method.num_parameters),
            "train_seconds": float(method.training_seconds),
        }
        logger.info("%s: %s", name, results[name])
    return results


_COLUMNS = (("accuracy", "accuracy", ".4f"), ("nll", "NLL", ".4f"), ("ece", "ECE", ".4f"),
            ("ood_auroc", "OOD AUROC (MI)", ".3f"), ("parameters", "parameters", "d"),
            ("train_seconds", "train s", ".1f"))


def format_results(results: dict[str, dict[str, float]], fmt: str = "table") -> str:
    """``results`` as a fixed-width ``"table"``, a GitHub ``"markdown"`` table or ``"json"``."""
    if fmt == "json":
        return json.dumps(results, indent=2)
    cells = [["method"] + [title for _, title, _ in _COLUMNS]]
    cells += [[name] + [format(r[key], spec) for key, _, spec in _COLUMNS] for name, r in results.items()]
    if fmt == "markdown":
        lines = ["| " + " | ".join(row) + " |" for row in cells]
        lines.insert(1, "|" + "|".join(["---"] + ["---:"] * len(_COLUMNS)) + "|")
        return "\n".join(lines)
    if fmt != "table":
        raise ValueError(f"fmt must be one of ['table', 'markdown', 'json'], got {fmt!r}")
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in cells]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
