"""The report of ``pyro-lowrank weight-space`` (:mod:`.weight_space`): :func:`write_weight_space_report` writes
``results.json`` (rows, aggregates, studies, the 1-D data, settings, command, environment), ``results.md``
(:func:`format_markdown`: the per-task tables, the kernel study, the sampled-vs-linearised summary and the prior
precisions the table's Laplace methods picked), ``underfitting_<task>.png``, ``kernel_share.png`` and
``bands_<toy task>.png``.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..factor_laplace import DEFAULT_NOISE_GRID, DEFAULT_PRIOR_PRECISION_GRID

if TYPE_CHECKING:
    from .weight_space import WeightSpaceResult

__all__ = ["format_markdown", "write_weight_space_report"]

logger = logging.getLogger(__name__)

_TABLE = [("nll", "test NLL", ".3f"), ("rmse", "RMSE", ".3f"), ("picp", "PICP@95", ".3f"), ("mpiw", "MPIW", ".3f"),
          ("noise_scale", "noise σ (std. units)", ".3f"), ("train_seconds", "train s", ".1f"),
          ("parameters", "parameters", ".0f")]


def _cell(entry: dict[str, Any] | None, spec: str, sign: float = 1.0) -> str:
    if entry is None or entry.get("mean") is None or not math.isfinite(entry["mean"]):
        return "—"
    text = format(sign * entry["mean"], spec)
    se = entry.get("se")
    if se is not None and math.isfinite(se) and spec != ".0f":
        text += f" ± {format(se, spec)}"
    return text


def _alpha(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def format_markdown(result: WeightSpaceResult) -> str:
    """The per-task tables (mean ± s.e. over splits and seeds; test NLL = −test log-likelihood, original units),
    the kernel-study table and the under-fitting summary, as markdown."""
    table = result.table
    lines = ["# Experiment `weight-space`", ""]
    for task in dict.fromkeys(a["task"] for a in table.aggregates):
        aggregates = [a for a in table.aggregates if a["task"] == task]
        splits = table.metadata.get("splits", {}).get(task, [])
        lines += [f"## {task} ({len(splits)} split{'s' * (len(splits) != 1)} x {len(table.metadata['seeds'])} "
                  "seed(s))", "", "| method | n | " + " | ".join(c for _, c, _ in _TABLE) + " |",
                  "|---|---:|" + "---:|" * len(_TABLE)]
        for a in aggregates:
            cells = [_cell(a.get("test_ll"), spec, -1.0) if key == "nll" else _cell(a.get(key), spec)
                     for key, _, spec in _TABLE]
            lines.append(f"| {a['method']} | {a['n']} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("Mean ± standard error over splits and seeds; NLL, RMSE and MPIW in original units; train s: the "
                 "MAP or SVI fit plus everything the posterior needs.")
    if table.skipped:
        lines.append("Skipped: " + ", ".join(f"{k} ({v})" for k, v in table.skipped.items()))
    if table.failures:
        lines.append("Failed runs: " + ", ".join(f"{f['task']}/{f['method']} split {f.get('split')} seed {f['seed']} "
                                                 f"({f['error']})" for f in table.failures))
    if result.studies:
        lines += ["", "## Kernel of the GGN at the MAP (first split, first seed; float64)", "",
                  "| task | D | N·O | D − N·O | gauge dim Σr² | ReLU rescalings | rank of the symmetry tangents | "
                  "GGN rank | kernel dim | gauge ratio | rescaling ratio | kernel dim / D |",
                  "|---|" + "---:|" * 11]
        for task, study in result.studies.items():
            k = study["kernel"]
            lines.append(f"| {task} | {k['num_parameters']} | {k['num_outputs']} | "
                         f"{k['num_parameters'] - k['num_outputs']} | {k['gauge_dim']} | {k['rescaling_dim']} | "
                         f"{k['symmetry_rank']} | {k['ggn_rank']} | {k['kernel_dim']} | {k['gauge_ratio']:.1e} | "
                         f"{k['rescaling_ratio']:.1e} | {k['share_limit']:.3f} |")
        grid = np.asarray(next(iter(result.studies.values()))["kernel"]["prior_precisions"])
        decades = [i for i, a in enumerate(grid) if np.isclose(np.log10(a), np.round(np.log10(a)), atol=1e-9)]
        decades = decades or list(range(len(grid)))  # a grid without powers of ten: every value
        lines += ["", "Share of the full Laplace posterior's total variance tr (G + αI)⁻¹ in ker G:", "",
                  "| task | " + " | ".join(f"α = {grid[i]:g}" for i in decades) + " |",
                  "|---|" + "---:|" * len(decades)]
        for task, study in result.studies.items():
            shares = study["kernel"]["kernel_share"]
            lines.append(f"| {task} | " + " | ".join(f"{shares[i]:.3f}" for i in decades) + " |")
        lines += ["", "## Sampled vs linearised full-GGN Laplace (first split, first seed)", "",
                  "| task | predictive | α picked (val. NLL, σ tuned jointly) | test NLL there | RMSE there | "
                  "best test NLL (α) | α picked at σ = 0.1 (former rule) | α_fit (RMSE ≤ 1.1 × MAP from here on) | "
                  "RMSE at the smallest α |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for task, study in result.studies.items():
            u = study["underfitting"]
            alphas = u["prior_precisions"]
            lines.append(f"| {task} | MAP | — | {u['map']['nll']:.3f} | {u['map']['rmse']:.3f} | — | — | — | — |")
            for kind in ("sampled", "linearised"):
                c = u[kind]
                best = int(np.argmin(c["nll"]))
                lines.append(f"| {task} | {kind} | {_alpha(c['alpha_selected'])} | {c['nll_at_selected']:.3f} | "
                             f"{c['rmse_at_selected']:.3f} | {c['nll'][best]:.3f} ({alphas[best]:.3g}) | "
                             f"{_alpha(c.get('alpha_selected_train_noise'))} | {_alpha(c['alpha_fit'])} | "
                             f"{c['rmse'][0]:.3g} |")
        lines += ["", "Same standard-normal draws for every α and both predictives; predictive noise tuned on "
                      "validation at every α (the table's protocol). α picked: the methods' rule, the smallest "
                      "validation NLL with the noise tuned jointly over the noise grid. "
                  + " ".join(_verdict(task, study["underfitting"]) for task, study in result.studies.items())]
    if result.prior_precisions:
        grid, noises = DEFAULT_PRIOR_PRECISION_GRID, DEFAULT_NOISE_GRID
        names = list(next(iter(next(iter(result.prior_precisions.values())).values())))
        lines += ["", f"## Prior precision α picked by the table's Laplace methods (validation NLL with the noise "
                      f"tuned jointly over σ = {float(noises.min()):g} .. {float(noises.max()):g}; grid "
                      f"{float(grid.min()):g} .. {float(grid.max()):g}; first seed)", "",
                  "| task | split | " + " | ".join(names) + " |", "|---|---:|" + "---:|" * len(names)]
        edges = (float(grid.min()), float(grid.max()))

        def mark(alpha: float) -> str:
            return _alpha(alpha) + (" *" if any(math.isclose(alpha, e, rel_tol=1e-9) for e in edges) else "")

        for task, by_split in result.prior_precisions.items():
            for split, alphas in by_split.items():
                lines.append(f"| {task} | {split} | " + " | ".join(mark(alphas[m]) for m in names) + " |")
        lines += ["", "\\* at an edge of the grid: the validation NLL is smallest there (top edge: the predictive "
                      "is the MAP's up to a negligible spread)."]
    settings = {k: v for k, v in result.settings.items() if k != "prior_precisions"}
    lines += ["", "Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items())
              + f", prior precisions {min(result.settings['prior_precisions']):g} .. "
                f"{max(result.settings['prior_precisions']):g} ({len(result.settings['prior_precisions'])} values); "
                f"wall time {result.metadata.get('wall_seconds', float('nan')):.0f} s."]
    return "\n".join(lines) + "\n"


def _verdict(task: str, study: dict[str, Any]) -> str:
    """One sentence: does the sampled predictive need a larger alpha than the linearised one to keep the MAP's fit?"""
    sampled, linearised = study["sampled"]["alpha_fit"], study["linearised"]["alpha_fit"]
    tol = f"{study['fit_tolerance']:.0%}"
    if sampled is None and linearised is None:
        return f"{task}: neither predictive stays within {tol} of the MAP's RMSE at any α of the grid."
    if sampled is None or (linearised is not None and sampled > linearised):
        return (f"{task}: the sampled predictive under-fits: it keeps the MAP's RMSE (within {tol}) only from "
                f"α = {_alpha(sampled)} on, the linearised one from α = {_alpha(linearised)}.")
    if linearised is None or sampled < linearised:
        return (f"{task}: no under-fitting of the sampled predictive: it keeps the MAP's RMSE from α = "
                f"{_alpha(sampled)} on, the linearised one only from α = {_alpha(linearised)}.")
    return f"{task}: both predictives keep the MAP's RMSE (within {tol}) from the same α = {_alpha(sampled)} on."


def write_weight_space_report(result: WeightSpaceResult, out_dir: str | Path, *, command: str | None = None,
                              device: torch.device | str | None = None) -> dict[str, Path]:
    """Write ``results.json`` (rows, aggregates, studies, the 1-D data, settings, command, environment, skipped
    methods and failures), ``results.md`` (:func:`format_markdown`), ``underfitting_<task>.png``,
    ``kernel_share.png`` and ``bands_<1-D task>.png`` (the first split's draws of every method) into ``out_dir``;
    returns ``{name: path}``."""
    from pyro_lowrank.plots import kernel_share_plot, predictive_bands_plot, underfitting_plot

    from .report import _architecture_repr, _finite_or_none, environment_info
    from .weight_space import TOY_TASK  # deferred: weight_space imports this module

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "results.md"}
    table = result.table
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in result.settings.items()}
    document = {"experiment": "weight_space", "command": command, "environment": environment_info(device),
                "wall_seconds": table.wall_seconds, "settings": settings, "method_settings": table.settings,
                "metadata": table.metadata, "skipped": table.skipped, "failures": table.failures,
                "rows": table.rows, "aggregates": table.aggregates,
                "kernel_study": {task: {"split": s["split"], "seed": s["seed"], **s["kernel"]}
                                 for task, s in result.studies.items()},
                "underfitting": {task: {"split": s["split"], "seed": s["seed"], **s["underfitting"]}
                                 for task, s in result.studies.items()},
                "table_prior_precisions": {task: {str(k): v for k, v in by_split.items()}
                                           for task, by_split in result.prior_precisions.items()},
                "toy_data": result.toy}
    paths["json"].write_text(json.dumps(_finite_or_none(document), indent=2, allow_nan=False,
                                        default=_architecture_repr) + "\n")
    paths["markdown"].write_text(format_markdown(result))
    for task, study in result.studies.items():
        u = study["underfitting"]
        kinds = ("sampled", "linearised")
        fig = underfitting_plot(u["prior_precisions"], {k: u[k]["nll"] for k in kinds},
                                {k: u[k]["rmse"] for k in kinds},
                                selected={k: u[k]["alpha_selected"] for k in kinds}, reference_nll=u["map"]["nll"],
                                reference_rmse=u["map"]["rmse"],
                                title=f"{task}: full-GGN Laplace, sampled vs linearised predictive "
                                      f"({u['num_samples']} draws, noise tuned on validation)")
        paths[f"underfitting_{task}"] = out / f"underfitting_{task}.png"
        fig.savefig(paths[f"underfitting_{task}"], dpi=90)
    if result.studies:
        first = next(iter(result.studies.values()))["kernel"]
        fig = kernel_share_plot(first["prior_precisions"],
                                {task: s["kernel"]["kernel_share"] for task, s in result.studies.items()},
                                floors={task: s["kernel"]["share_limit"] for task, s in result.studies.items()})
        paths["kernel_share"] = out / "kernel_share.png"
        fig.savefig(paths["kernel_share"], dpi=90)
    draws = table.draws.get(TOY_TASK, {})
    if draws and result.toy:
        toy = result.toy
        means = {m: toy["y_mean"] + toy["y_std"] * d["test"]["mean"].double() for m, d in draws.items()}
        noise = {m: toy["y_std"] * d["test"]["scale"].double() for m, d in draws.items()}
        truth = (toy["x_test"], torch.sin(2.0 * torch.tensor(toy["x_test"], dtype=torch.float64)))
        fig = predictive_bands_plot(toy["x_test"], means, noise, x_train=toy["x_train"], y_train=toy["y_train"],
                                    reference=truth,
                                    title=f"{TOY_TASK}: predictive mean ± 2 sd (draws' means plus tuned noise; "
                                          "inner band: draws alone)")
        paths[f"bands_{TOY_TASK}"] = out / f"bands_{TOY_TASK}.png"
        fig.savefig(paths[f"bands_{TOY_TASK}"], dpi=90)
    logger.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return paths
