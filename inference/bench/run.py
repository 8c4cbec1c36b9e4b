"""``pyro-lowrank bench``: every route side by side in one process, ratios to the deterministic network, the issue's
targets checked, a markdown table and JSON.

All cases of one table are timed interleaved (:func:`~pyro_lowrank.inference.bench.timing.time_interleaved`), so a
ratio compares medians measured under the same load. Absolute times depend on the machine; the ratios are the result.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch

from .cases import bayesian_torch_available, prediction_cases, training_cases
from .timing import peak_memory_bytes, time_interleaved

__all__ = ["BenchConfig", "SMOKE", "format_markdown", "machine_info", "run_bench", "write_bench"]

logger = logging.getLogger(__name__)

TARGET_RANK = 16


@dataclass
class BenchConfig:
    """What :func:`run_bench` measures (defaults: the issue's MLP 784-512-512-10, batch 128, S = 32 draws for 1024
    inputs, ranks 8-64, scaling over widths 256-4096 at rank 16, the SST-2-size Transformer's memory)."""

    widths: tuple[int, ...] = (784, 512, 512, 10)
    ranks: tuple[int, ...] = (8, 16, 32, 64)
    batch_size: int = 128
    num_data: int = 60000
    num_samples: int = 32
    num_inputs: int = 1024
    rounds: int = 7
    repeats: int = 10
    predict_rounds: int = 5
    predict_repeats: int = 2
    device: str = "cpu"
    scaling: bool = True
    scaling_widths: tuple[int, ...] = (256, 512, 1024, 2048, 4096)
    memory: bool = True
    memory_sizes: dict = field(default_factory=dict)
    seed: int = 0


SMOKE = dict(widths=(784, 64, 64, 10), ranks=(4, 16), num_samples=4, num_inputs=64, rounds=1, repeats=1,
             predict_rounds=1, predict_repeats=1, scaling_widths=(32, 64),
             memory_sizes=dict(vocab_size=500, d_model=32, num_layers=1, num_heads=2, dim_feedforward=64,
                               seq_len=16, batch_size=8, rank=4))
"""Settings of ``bench --smoke``: every code path on tiny sizes, seconds in all (no meaningful timings)."""


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """The machine, the software and the thread count, as recorded beside the measurements."""
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "device": device,
    }
    try:
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        if names:
            info["cpu_model"] = names[0]
    except OSError:
        pass
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    if bayesian_torch_available():
        from importlib.metadata import version

        info["bayesian_torch"] = version("bayesian-torch")
    return info


def _table(timings, cases, baseline: str, memory: dict[str, int] | None = None) -> list[dict[str, Any]]:
    base = timings[baseline].median
    rows = []
    for name, timing in timings.items():
        row = {"case": name, "median_ms": 1e3 * timing.median, "min_ms": 1e3 * timing.min, "max_ms": 1e3 * timing.max,
               "ratio": timing.median / base, "parameters": cases[name].parameters}
        if memory is not None and name in memory:
            row["peak_mb"] = memory[name] / 2**20
        rows.append(row)
    return rows


def _targets(training: list[dict], prediction: list[dict], memory: dict | None) -> list[dict[str, Any]]:
    """The issue's targets at rank 16, each with the measured value and whether it holds."""
    train = {row["case"]: row for row in training}
    pred = {row["case"]: row for row in prediction}
    checks = []

    def check(name: str, value: float | None, bound: float, upper: bool) -> None:
        if value is None:
            return
        checks.append({"target": name, "value": value, "bound": bound,
                       "met": bool(value <= bound if upper else value >= bound)})

    lowrank = train.get(f"low-rank r={TARGET_RANK}")
    if lowrank is not None:
        check("low-rank training step / deterministic step <= 1.0", lowrank["ratio"], 1.0, True)
        if "standard Pyro" in train:
            check("standard Pyro step / low-rank step >= 5", train["standard Pyro"]["median_ms"] / lowrank["median_ms"],
                  5.0, False)
    autonormal = train.get(f"low-rank AutoNormal r={TARGET_RANK}")
    if autonormal is not None:
        check("low-rank AutoNormal step / deterministic step <= 2.0", autonormal["ratio"], 2.0, True)
    ours = pred.get(f"low-rank r={TARGET_RANK}")
    if ours is not None:
        check("predict (S draws) / one deterministic forward <= 6", ours["ratio"], 6.0, True)
        if "standard Pyro Predictive" in pred:
            check("standard Pyro Predictive / our predict >= 10",
                  pred["standard Pyro Predictive"]["median_ms"] / ours["median_ms"], 10.0, False)
    if memory is not None and "peak_ratio" in memory:
        check("Transformer peak training memory, low-rank / full-rank mean-field <= 0.5", memory["peak_ratio"], 0.5,
              True)
    return checks


def run_bench(config: BenchConfig | None = None) -> dict[str, Any]:
    """Measure training steps, predictive passes, Transformer memory and scaling curves (see the module docstring).

    Returns
    -------
    dict
        ``machine``, ``config``, ``training`` and ``prediction`` (rows with median/min/max ms, ratio to the
        deterministic network, parameters, training peak memory), ``memory``, ``scaling`` and ``targets``.
    """
    config = config or BenchConfig()
    device = torch.device(config.device)
    torch.empty(1, device=device)  # fail early on a device that does not exist
    result: dict[str, Any] = {"machine": machine_info(config.device), "config": asdict(config)}

    logger.info("training steps: %s", config.widths)
    cases = training_cases(config.widths, ranks=config.ranks, batch_size=config.batch_size,
                           num_data=config.num_data, device=device, seed=config.seed)
    timings = time_interleaved({k: c.fn for k, c in cases.items()}, rounds=config.rounds, repeats=config.repeats,
                               warmup=5, device=device)
    memory = {name: peak_memory_bytes(case.fn, device) for name, case in cases.items()}
    result["training"] = _table(timings, cases, "deterministic", memory)
    del cases
    gc.collect()

    logger.info("prediction: %d draws for %d inputs", config.num_samples, config.num_inputs)
    cases = prediction_cases(config.widths, rank=TARGET_RANK if TARGET_RANK in config.ranks else config.ranks[0],
                             num_samples=config.num_samples, num_inputs=config.num_inputs, device=device,
                             seed=config.seed)
    timings = time_interleaved({k: c.fn for k, c in cases.items()}, rounds=config.predict_rounds,
                               repeats=config.predict_repeats, warmup=2, device=device)
    result["prediction"] = _table(timings, cases, "deterministic")
    del cases
    gc.collect()

    result["memory"] = None
    if config.memory:
        from .memory import transformer_memory

        result["memory"] = transformer_memory(device=config.device, **config.memory_sizes)
    result["scaling"] = None
    if config.scaling:
        from .scaling import scaling_curves

        rank = TARGET_RANK if TARGET_RANK in config.ranks else config.ranks[0]
        result["scaling"] = scaling_curves(config.scaling_widths, rank=rank, device=config.device).to_json()
    result["targets"] = _targets(result["training"], result["prediction"], result["memory"])
    return result


def format_markdown(result: dict[str, Any]) -> str:
    """The tables of a :func:`run_bench` result as markdown."""
    machine = result["machine"]
    config = result["config"]
    lines = [f"Machine: {machine.get('cpu_model', machine['processor'])}, {machine['cpu_count']} CPUs, torch "
             f"{machine['torch']} ({machine['torch_threads']} threads), pyro {machine['pyro']}, device "
             f"{machine['device']}" + (f" ({machine['gpu']})" if "gpu" in machine else ""), ""]
    widths = "-".join(map(str, config["widths"]))
    lines += [f"Training step, MLP {widths}, batch {config['batch_size']} (median of {config['rounds']} interleaved "
              f"rounds of {config['repeats']} steps)", "",
              "| case | median ms | min-max ms | ratio to deterministic | optimised parameters | step peak MB |",
              "|---|---:|---:|---:|---:|---:|"]
    for row in result["training"]:
        lines.append(f"| {row['case']} | {row['median_ms']:.2f} | {row['min_ms']:.2f}-{row['max_ms']:.2f} | "
                     f"{row['ratio']:.2f} | {row['parameters']:,} | {row.get('peak_mb', float('nan')):.1f} |")
    lines += ["", f"Prediction: {config['num_samples']} draws for {config['num_inputs']} inputs (median of "
                  f"{config['predict_rounds']} rounds)", "",
              "| case | median ms | min-max ms | ratio to one deterministic forward |", "|---|---:|---:|---:|"]
    for row in result["prediction"]:
        lines.append(f"| {row['case']} | {row['median_ms']:.1f} | {row['min_ms']:.1f}-{row['max_ms']:.1f} | "
                     f"{row['ratio']:.2f} |")
    memory = result.get("memory")
    if memory:
        lines += ["", "Transformer classifier, one training step: " + ", ".join(
            f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in memory.items()
            if not isinstance(v, dict))]
    scaling = result.get("scaling")
    if scaling and "exponents" in scaling:
        lines += ["", "Scaling with the hidden width (fitted exponent of step time; of parameter count): " + ", ".join(
            f"{method} {values.get('time', float('nan')):.2f}; {values.get('parameters', float('nan')):.2f}"
            for method, values in scaling["exponents"].items())]
    if result.get("targets"):
        lines += ["", "| target | measured | met |", "|---|---:|---|"]
        for target in result["targets"]:
            lines.append(f"| {target['target']} | {target['value']:.2f} | {'yes' if target['met'] else 'no'} |")
    return "\n".join(lines)


def write_bench(result: dict[str, Any], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``bench.json``, ``bench.md`` and (with scaling curves) ``scaling.png`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "bench.json", "markdown": out / "bench.md"}
    paths["json"].write_text(json.dumps(result, indent=2, default=str))
    paths["markdown"].write_text(format_markdown(result) + "\n")
    if result.get("scaling"):
        from .scaling import plot_scaling

        paths["plot"] = out / "scaling.png"
        plot_scaling(result["scaling"], paths["plot"])
    return paths
