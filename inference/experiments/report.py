r"""Write an experiment's results: ``results.json``, ``results.md`` and figures.

* ``results.json``: every per-seed row, the aggregates (mean and standard error :math:`\mathrm{sd}/\sqrt n` over
  seeds / splits), the per-method settings, skipped methods and failed runs, the command line, seeds, the
  environment (Python, torch and Pyro versions, CPU and GPU names) and the wall time. Non-finite numbers (e.g. the MI
  ratio of a single-draw method, 0/0) are written as ``null`` so the file is strict JSON.
* ``results.md``: markdown tables of mean ± s.e. per method (heart: source test / shifted hospitals / OOD detection;
  pm25: source test / target city / shift detection; sst2: dev / AG News OOD; uci: one table per dataset).
* figures: ``reliability_test.png`` and ``reliability_shift.png`` (reliability diagrams of the first seed, 15 bins)
  for heart (sst2: the test set only, AG News has no SST-2 labels), and a bar chart ``bars.png`` /
  ``bars_<dataset>.png`` (uci) of the main metrics per method with s.e. bars.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch
from matplotlib.figure import Figure

from pyro_lowrank.plots import reliability_diagram

from .runner import ExperimentResult

__all__ = ["COLUMNS", "environment_info", "format_markdown", "metric_bar_chart", "to_json", "write_report"]

logger = logging.getLogger(__name__)

#: Markdown table layout per experiment: (section title, [(metric key, column title, format)]).
COLUMNS: dict[str, list[tuple[str, list[tuple[str, str, str]]]]] = {
    "heart": [
        ("Source test (Cleveland + Hungary)", [("auroc", "AUROC", ".3f"), ("accuracy", "accuracy", ".3f"),
                                               ("nll", "NLL", ".3f"), ("ece", "ECE", ".3f"),
                                               ("brier", "Brier", ".3f")]),
        ("Shifted hospitals (Switzerland + VA)", [("shift_auroc", "AUROC", ".3f"),
                                                  ("shift_accuracy", "accuracy", ".3f"), ("shift_nll", "NLL", ".3f"),
                                                  ("shift_ece", "ECE", ".3f"), ("shift_brier", "Brier", ".3f")]),
        ("Shift detection by mutual information (shift positive)",
         [("ood_auroc", "AUROC-OOD", ".3f"), ("ood_aupr_ood", "AUPR-OOD", ".3f"), ("ood_aupr_in", "AUPR-In", ".3f"),
          ("ood_mi_ratio", "MI ratio", ".2f"), ("parameters", "parameters", ".0f"),
          ("train_seconds", "train s", ".1f")]),
    ],
    "uci": [
        ("{task}", [("rmse", "RMSE", ".3f"), ("test_ll", "test LL", ".3f"), ("picp", "PICP@95", ".3f"),
                    ("mpiw", "MPIW", ".3f"), ("noise_scale", "noise σ (std. units)", ".3f"),
                    ("parameters", "parameters", ".0f"), ("train_seconds", "train s", ".1f")]),
    ],
    "pm25": [
        ("Source city test (Beijing 2015), µg/m³", [("mae", "MAE", ".2f"), ("rmse", "RMSE", ".2f"),
                                                    ("test_ll", "test LL", ".3f"), ("picp", "PICP@95", ".3f"),
                                                    ("mpiw", "MPIW", ".1f"), ("mae_at_90", "MAE@90%", ".2f"),
                                                    ("mae_at_80", "MAE@80%", ".2f"),
                                                    ("picp_epistemic", "PICP@95 epist.", ".3f"),
                                                    ("mpiw_epistemic", "MPIW epist.", ".1f")]),
        ("Shifted city (Guangzhou 2015), µg/m³", [("shift_mae", "MAE", ".2f"), ("shift_rmse", "RMSE", ".2f"),
                                                  ("shift_test_ll", "test LL", ".3f"), ("shift_picp", "PICP@95", ".3f"),
                                                  ("shift_mpiw", "MPIW", ".1f")]),
        ("Shift detection by predictive standard deviation (shift positive)",
         [("ood_auroc", "AUROC-OOD", ".3f"), ("ood_aupr_ood", "AUPR-OOD", ".3f"), ("ood_aupr_in", "AUPR-In", ".3f"),
          ("ood_std_ratio", "std ratio", ".2f"), ("parameters", "parameters", ".0f"),
          ("train_seconds", "train s", ".1f")]),
    ],
    "sst2": [
        ("SST-2 dev", [("accuracy", "accuracy", ".3f"), ("nll", "NLL", ".3f"), ("ece", "ECE", ".3f"),
                       ("brier", "Brier", ".3f")]),
        ("AG News as OOD, by mutual information (OOD positive)",
         [("ood_auroc", "AUROC-OOD", ".3f"), ("ood_aupr_ood", "AUPR-OOD", ".3f"), ("ood_aupr_in", "AUPR-In", ".3f"),
          ("ood_mi_ratio", "MI ratio", ".2f"), ("parameters", "parameters", ".0f"),
          ("train_seconds", "train s", ".1f")]),
    ],
}
_BARS = {"pm25": [("mae", "MAE (test)"), ("picp", "PICP@95 (test)"), ("shift_mae", "MAE (shift)"),
                  ("ood_auroc", "AUROC-OOD (std)")],
         "sst2": [("accuracy", "accuracy"), ("nll", "NLL"), ("ece", "ECE"), ("ood_auroc", "AUROC-OOD (MI)")],
         "heart": [("auroc", "AUROC (test)"), ("nll", "NLL (test)"), ("ece", "ECE (test)"),
                   ("shift_nll", "NLL (shift)"), ("ood_auroc", "AUROC-OOD (MI)")],
         "uci": [("rmse", "RMSE"), ("test_ll", "test log-likelihood"), ("picp", "PICP@95")]}


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return _finite_or_none(value.item())
    return value


def environment_info(device: torch.device | str | None = None) -> dict[str, Any]:
    """Python, torch and Pyro versions, platform, CPU model and core count, GPU name (if CUDA is available)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "python": sys.version.split()[0], "torch": torch.__version__, "pyro": pyro.__version__,
        "platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "device": str(device) if device is not None else "cpu",
    }


def to_json(result: ExperimentResult, command: str | None = None, device: torch.device | str | None = None
            ) -> dict[str, Any]:
    """The JSON document of ``result`` (see the module docstring); non-finite floats become ``None``."""
    return _finite_or_none({
        "experiment": result.experiment,
        "command": command,
        "seeds": result.metadata.get("seeds"),
        "methods": result.metadata.get("methods"),
        "metadata": result.metadata,
        "environment": environment_info(device),
        "wall_seconds": result.wall_seconds,
        "settings": result.settings,
        "skipped": result.skipped,
        "failures": result.failures,
        "rows": result.rows,
        "aggregates": result.aggregates,
    })


def _architecture_repr(value: Any) -> str:
    """JSON form of a method's ``architecture`` setting (its repr); anything else unserialisable is an error."""
    from ..methods.architecture import Architecture

    if isinstance(value, Architecture):
        return repr(value)
    raise TypeError(f"settings must be JSON-serialisable, got {type(value).__name__}: {value!r}")


def _cell(entry: dict[str, Any] | None, spec: str) -> str:
    if entry is None or entry.get("mean") is None or not math.isfinite(entry["mean"]):
        return "—"
    text = format(entry["mean"], spec)
    se = entry.get("se")
    if se is not None and math.isfinite(se) and spec != ".0f":
        text += f" ± {format(se, spec)}"
    return text


def format_markdown(result: ExperimentResult) -> str:
    """Markdown tables of mean ± s.e. (over seeds and splits) per method, one section per table."""
    layout = COLUMNS.get(result.experiment, COLUMNS["uci"])
    tasks = list(dict.fromkeys(a["task"] for a in result.aggregates))
    lines = [f"# Experiment `{result.experiment}`", ""]
    for task in tasks:
        aggregates = [a for a in result.aggregates if a["task"] == task]
        for title, columns in layout:
            lines += [f"## {title.format(task=task)}", ""]
            lines.append("| method | n | " + " | ".join(c for _, c, _ in columns) + " |")
            lines.append("|---|---:|" + "---:|" * len(columns))
            for a in aggregates:
                lines.append(f"| {a['method']} | {a['n']} | "
                             + " | ".join(_cell(a.get(k), spec) for k, _, spec in columns) + " |")
            lines.append("")
    lines.append("Mean ± standard error over seeds" + (" and splits" if result.experiment == "uci" else "") + ".")
    if result.skipped:
        lines.append("Skipped (task not supported): " + ", ".join(f"{k} ({v})" for k, v in result.skipped.items()))
    if result.failures:
        lines.append("Failed runs: " + ", ".join(f"{f['task']}/{f['method']} seed {f['seed']} ({f['error']})"
                                                 for f in result.failures))
    return "\n".join(lines) + "\n"


def metric_bar_chart(aggregates: Sequence[dict[str, Any]], metrics: Sequence[tuple[str, str]],
                     title: str = "") -> Figure:
    """One panel per metric: a bar per method at the mean, with a ± s.e. error bar (built without pyplot)."""
    methods = [a["method"] for a in aggregates]
    fig = Figure(figsize=(max(6.0, 3.2 * len(metrics)), 3.8), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    positions = np.arange(len(methods))
    for ax, (key, label) in zip(axes, metrics):
        means = np.array([a.get(key, {}).get("mean", np.nan) for a in aggregates], dtype=float)
        ses = np.array([a.get(key, {}).get("se", np.nan) for a in aggregates], dtype=float)
        ax.bar(positions, np.nan_to_num(means), yerr=np.where(np.isfinite(ses), ses, 0.0), capsize=3,
               color="tab:blue", alpha=0.8)
        ax.set_xticks(positions, methods, rotation=60, ha="right", fontsize=8)
        ax.set_title(label, fontsize=10)
    if title:
        fig.suptitle(title)
    return fig


def write_report(result: ExperimentResult, out_dir: str | os.PathLike, *, command: str | None = None,
                 device: torch.device | str | None = None) -> dict[str, Path]:
    """Write ``results.json``, ``results.md`` and the figures of ``result`` into ``out_dir`` (created if needed);
    returns ``{name: path}`` of the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "results.md"}
    paths["json"].write_text(json.dumps(to_json(result, command, device), indent=2, allow_nan=False,
                                        default=_architecture_repr) + "\n")
    paths["markdown"].write_text(format_markdown(result))
    metrics = _BARS.get(result.experiment, _BARS["uci"])
    for task in dict.fromkeys(a["task"] for a in result.aggregates):
        aggregates = [a for a in result.aggregates if a["task"] == task]
        name = f"bars_{task}" if result.experiment == "uci" else "bars"
        fig = metric_bar_chart(aggregates, metrics, title=f"{result.experiment}: {task}")
        paths[name] = out / f"{name}.png"
        fig.savefig(paths[name], dpi=100)
        draws = result.draws.get(task, {})
        if result.experiment in ("heart", "sst2") and draws:
            for split in ("test", "shift"):
                probs = {m: d[split] for m, d in draws.items() if split in d and f"y_{split}" in d}
                if probs:
                    labels = next(d[f"y_{split}"] for d in draws.values() if split in d)
                    fig = reliability_diagram(probs, labels, num_bins=15)
                    paths[f"reliability_{split}"] = out / f"reliability_{split}.png"
                    fig.savefig(paths[f"reliability_{split}"], dpi=70)
    logger.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return paths
