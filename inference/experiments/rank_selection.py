r"""``pyro-lowrank rank-selection``: rank selection from scratch with low-rank variational dropout (LRVD).

**Data.** scikit-learn's bundled digits (:func:`~pyro_lowrank.inference.demo.load_demo_data`: 1,797 8x8 images, 10
classes, stratified 60/15/25 train/validation/test split by the seed). It loads offline, it is the demo's data (so
the twin is the demo's network), and it is small (N = 1,077 training images): the log-uniform prior's pressure on a
rank component is about :math:`(m + n)` nats, which only competes with the likelihood when N is small or medium.

**Networks** (64-128-128-10 ReLU MLPs):

* *LRVD*: :class:`~pyro_lowrank.models.LowRankMLP` started at a generous rank (32 per hidden layer, 10 = full for the
  output layer) with :class:`~pyro_lowrank.distributions.LogUniformPrior` and the rank-wise guide
  :class:`~pyro_lowrank.guides.LRVDGuide`, trained by :func:`~pyro_lowrank.inference.fit` (compiled mean-field ELBO,
  Adam, linear KL warm-up). Two runs from the same seed: **pruned**, with ``fit``'s periodic pruning (gauge fix, keep
  :math:`\log\alpha_k < \tau`, by the score ``prune_score``, default ``"norm"``); and **unpruned**, the same training
  without pruning, scored once at the end. The second run shows what the posterior learned independently of the
  pruning rule.
* *Twin*: :class:`~pyro_lowrank.models.DeterministicMLP` trained by maximum likelihood (Adam, weight decay).

**Scores** (:func:`~pyro_lowrank.guides.rank_log_alpha`). BayesLoRA's *median score* :math:`\log\sigma_k^2 -
\tfrac12[\mathrm{med}_i \log\mu_{A,ik}^2 + \mathrm{med}_j \log\mu_{B,jk}^2]` and the *norm score*, the same with
root-mean-square entries instead of medians,
:math:`\log\sigma_k^2 - \log(\lVert\mu_{A,:k}\rVert\,\lVert\mu_{B,:k}\rVert/\sqrt{mn})`. The per-entry log-uniform
KL sparsifies the entries of a needed column (few large entries, many near zero), which lifts its median score but
not its norm score, so periodic pruning by the median score collapses this MLP. Both runs record the effective ranks
under both scores every epoch (after that epoch's pruning), and the report shows them side by side.

**Comparison with the twin** (per layer, with :math:`\bar W = \mu_A\mu_B^\top` the posterior-mean weight and k the
learned rank: the final rank of the pruned run, the ``prune_score`` effective rank of the unpruned run): the twin's
singular spectrum; the smallest ranks holding 90/95/99 % of its energy :math:`\sum_i\sigma_i^2`; its best rank-k
energy :math:`e_k`; the principal-angle cosines between the top-k left and right singular subspaces of :math:`\bar W`
and of the twin's weight (:func:`~pyro_lowrank.diagnostics.singular_subspace_alignment`), their mean square against
the chance level k/d of random subspaces, and the energy of the twin inside :math:`\bar W`'s subspaces (at most
:math:`e_k`). Hidden units of two independently trained networks are arbitrarily permuted, so before comparing
hidden-side subspaces the twin's hidden units are permuted to best match the LRVD network's (maximum total
correlation of post-ReLU activations on the training inputs, Hungarian assignment). The permutation leaves the twin's
function and spectra unchanged; the input side of the first layer (pixels) and the output side of the last (classes)
need no matching. Test accuracy, NLL, ECE (15 bins) and Brier of all three networks (LRVD: ``num_samples`` posterior
draws).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from scipy.optimize import linear_sum_assignment

from pyro_lowrank._validation import check_positive_int
from pyro_lowrank.diagnostics import energy_fraction, singular_subspace_alignment, suggest_rank
from pyro_lowrank.distributions import LogUniformPrior
from pyro_lowrank.guides import LRVDGuide, effective_ranks, rank_log_alpha

from ...models import DeterministicMLP, LowRankMLP
from ..demo import load_demo_data
from ..deterministic import fit_deterministic
from ..fit import fit
from ..jit_elbo import JitTraceMeanField_ELBO
from ..predict import predict
from .runner import classification_metrics, seeded

__all__ = ["RANK_SELECTION_DEFAULTS", "RANK_SELECTION_SMOKE", "format_markdown", "hidden_unit_permutations",
           "run_rank_selection", "write_rank_selection_report"]

logger = logging.getLogger(__name__)

RANK_SELECTION_DEFAULTS: dict[str, Any] = {
    "hidden_features": (128, 128), "rank": 32, "output_rank": 10, "num_epochs": 150, "batch_size": 64, "lr": 1e-2,
    "kl_anneal_epochs": 30, "prune_every": 10, "prune_start": 30, "prune_tau": 3.0, "prune_score": "norm",
    "num_samples": 100,
    "twin_epochs": 60, "twin_lr": 1e-3, "twin_weight_decay": 1e-4, "energies": (0.9, 0.95, 0.99),
    "train_size": None, "jit": True,
}
#: ``--smoke``: a narrow network on 300 training images for a few epochs (seconds).
RANK_SELECTION_SMOKE: dict[str, Any] = {
    "hidden_features": (24, 24), "rank": 8, "num_epochs": 6, "batch_size": 100, "lr": 3e-2, "kl_anneal_epochs": 1,
    "prune_every": 2, "prune_start": 2, "prune_score": "norm", "num_samples": 8, "twin_epochs": 5, "twin_lr": 1e-2,
    "train_size": 300, "jit": False,
}


def _significant(values: torch.Tensor, digits: int = 6) -> list[float]:
    """Floats rounded to ``digits`` significant digits (compact JSON without losing small singular values)."""
    return [float(f"{float(v):.{digits}g}") for v in values]


def _by_layer(history: list[dict[str, int]]) -> dict[str, list[int]]:
    """``[{pair: rank}]`` per epoch -> ``{layer: [rank per epoch]}`` (layer names without the ``.A``)."""
    return {pair.removesuffix(".A"): [epoch[pair] for epoch in history] for pair in (history[0] if history else {})}


SCORES = ("median", "norm")


def _score_ranks(model: LowRankMLP, guide: LRVDGuide, tau: float) -> dict[str, dict[str, int]]:
    """``{score: {pair: effective rank}}`` for both scores."""
    return {score: effective_ranks(model, guide, tau, score=score) for score in SCORES}


def _posterior_means(model: LowRankMLP, guide: LRVDGuide, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``[(W̄ = μ_A μ_Bᵀ, bias mean)]`` per layer, float64 on the CPU."""
    medians = guide.median(x[:1])
    out = []
    for i, layer in enumerate(model.layers):
        weight = layer.weight_posterior(guide).mean.detach()
        out.append((weight.double().cpu(), medians[f"layers.{i}.bias"].detach().double().cpu()))
    return out


def _hidden_activations(layers: list[tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor) -> list[torch.Tensor]:
    """Post-ReLU activations of every hidden layer of an MLP given as ``[(W, b)]``."""
    h, acts = x.double().cpu(), []
    for weight, bias in layers[:-1]:
        h = torch.relu(h @ weight.T + bias)
        acts.append(h)
    return acts


def hidden_unit_permutations(acts: list[torch.Tensor], twin_acts: list[torch.Tensor]) -> list[torch.Tensor]:
    r"""Match the hidden units of two networks by their activations, layer by layer.

    For each hidden layer, the permutation :math:`\pi` maximising :math:`\sum_i \mathrm{corr}(h_i, h'_{\pi(i)})`
    (Pearson correlation over the inputs; a constant unit correlates 0 with everything), found by the Hungarian
    algorithm (:func:`scipy.optimize.linear_sum_assignment`).

    Parameters
    ----------
    acts, twin_acts : list of torch.Tensor
        Per hidden layer, the activations ``(N, h)`` of the reference network and of the twin on the same N inputs.

    Returns
    -------
    list of torch.Tensor
        Per hidden layer, ``perm`` of shape ``(h,)``: twin unit ``perm[i]`` is matched to unit ``i``.

    Raises
    ------
    ValueError
        For lists of different lengths or activations of different shapes.
    """
    if len(acts) != len(twin_acts):
        raise ValueError(f"acts and twin_acts must have one entry per hidden layer each, got {len(acts)} and "
                         f"{len(twin_acts)}")
    for index, (h, g) in enumerate(zip(acts, twin_acts)):
        if h.dim() != 2 or h.shape != g.shape:
            raise ValueError(f"acts[{index}] and twin_acts[{index}] must both have shape (N, h), got "
                             f"{tuple(h.shape)} and {tuple(g.shape)}")
    perms = []
    for h, g in zip(acts, twin_acts):
        hc, gc = h - h.mean(0), g - g.mean(0)
        hn, gn = hc.norm(dim=0), gc.norm(dim=0)
        corr = (hc.T @ gc) / torch.where(hn > 1e-12, hn, torch.ones_like(hn))[:, None] \
            / torch.where(gn > 1e-12, gn, torch.ones_like(gn))[None, :]
        _, cols = linear_sum_assignment(-corr.numpy())
        perms.append(torch.as_tensor(cols, dtype=torch.long))
    return perms


def _permute_twin(layers: list[tuple[torch.Tensor, torch.Tensor]], perms: list[torch.Tensor]):
    r"""The twin with hidden units reordered: :math:`W'_\ell = P_\ell W_\ell P_{\ell-1}^\top` (same function)."""
    out = []
    for i, (weight, bias) in enumerate(layers):
        rows = perms[i] if i < len(perms) else torch.arange(weight.shape[0])
        cols = perms[i - 1] if i > 0 else torch.arange(weight.shape[1])
        out.append((weight[rows][:, cols], bias[rows]))
    return out


def _train_lrvd(data: dict[str, torch.Tensor], settings: dict[str, Any], seed: int, device: torch.device,
                pruned: bool, progress: bool) -> dict[str, Any]:
    model = LowRankMLP(64, list(settings["hidden_features"]), rank=settings["rank"],
                       output_rank=settings["output_rank"], likelihood="categorical", num_classes=10,
                       prior=LogUniformPrior()).to(device)
    guide = LRVDGuide(model)
    score_history: list[dict[str, dict[str, int]]] = []

    def record_ranks(epoch: int, record: dict[str, float]) -> None:  # after the epoch's pruning, both scores
        score_history.append(_score_ranks(model, guide, settings["prune_tau"]))

    elbo = JitTraceMeanField_ELBO(max_plate_nesting=1) if settings["jit"] else None
    history = fit(model, guide, (data["x_train"], data["y_train"]), num_epochs=settings["num_epochs"],
                  batch_size=settings["batch_size"], lr=settings["lr"], kl_anneal_epochs=settings["kl_anneal_epochs"],
                  elbo=elbo, max_plate_nesting=1, seed=seed, progress=progress, callback=record_ranks,
                  prune_every=settings["prune_every"] if pruned else None, prune_start=settings["prune_start"],
                  prune_tau=settings["prune_tau"], prune_score=settings["prune_score"])
    with torch.no_grad():
        probs = torch.softmax(predict(model, guide, data["x_test"], settings["num_samples"])["f"], -1).cpu()
    return {"model": model, "guide": guide, "history": history,
            "score_history": {score: [epoch[score] for epoch in score_history] for score in SCORES},
            "metrics": classification_metrics(probs, data["y_test"].cpu()),
            "parameters": sum(p.numel() for p in guide.parameters()), "train_seconds": history.seconds}


def _layer_rows(run: dict[str, Any], twin_layers, x_train: torch.Tensor, settings: dict[str, Any],
                pruned: bool) -> list[dict[str, Any]]:
    model, guide, tau = run["model"], run["guide"], settings["prune_tau"]
    means = _posterior_means(model, guide, x_train)
    perms = hidden_unit_permutations(_hidden_activations(means, x_train), _hidden_activations(twin_layers, x_train))
    matched = _permute_twin(twin_layers, perms)
    final = _score_ranks(model, guide, tau)
    rows = []
    for i, ((w_bar, _), (w_twin, _)) in enumerate(zip(means, matched)):
        pair, layer = f"layers.{i}.A", model.layers[i]
        k = layer.rank if pruned else max(final[settings["prune_score"]][pair], 1)
        k = min(k, min(w_bar.shape))
        twin_values = torch.linalg.svdvals(w_twin)
        align = singular_subspace_alignment(w_bar, w_twin, k)
        m, n = w_bar.shape
        rows.append({
            "layer": pair.removesuffix(".A"), "shape": [m, n],
            "start_rank": settings["rank"] if i < len(means) - 1 else settings["output_rank"],
            "final_rank": layer.rank, "median_effective_rank": final["median"][pair],
            "norm_effective_rank": final["norm"][pair], "k": k,
            **{f"{score}_log_alpha": [round(float(v), 3) for v in rank_log_alpha(layer, guide, score)["weight"]]
               for score in SCORES},
            "posterior_mean_rank_99": suggest_rank(torch.linalg.svdvals(w_bar), 0.99),
            "twin_energy_at_k": float(energy_fraction(twin_values)[k]),
            "captured_twin_energy": align.captured_energy,
            "captured_twin_energy_left": align.left_captured_energy,
            "captured_twin_energy_right": align.right_captured_energy,
            "left_cosines": [round(float(c), 4) for c in align.left_cosines],
            "right_cosines": [round(float(c), 4) for c in align.right_cosines],
            "left_mean_cos2": float(align.left_cosines.square().mean()), "left_chance": k / m,
            "right_mean_cos2": float(align.right_cosines.square().mean()), "right_chance": k / n,
            "left_side": "classes" if i == len(means) - 1 else "hidden (matched)",
            "right_side": "pixels" if i == 0 else "hidden (matched)",
            "posterior_mean_singular_values": _significant(torch.linalg.svdvals(w_bar)),
        })
    return rows


def _run_seed(settings: dict[str, Any], seed: int, device: torch.device, progress: bool) -> dict[str, Any]:
    data = load_demo_data(seed)
    if settings["train_size"] is not None:
        rows = torch.randperm(len(data["y_train"]), generator=torch.Generator().manual_seed(seed))
        rows = rows[: settings["train_size"]]
        data["x_train"], data["y_train"] = data["x_train"][rows], data["y_train"][rows]
    data = {name: tensor.to(device) for name, tensor in data.items()}
    with seeded(seed, device):
        twin = DeterministicMLP(64, list(settings["hidden_features"]), 10).to(device)
        twin_fit = fit_deterministic(twin, (data["x_train"], data["y_train"]), num_epochs=settings["twin_epochs"],
                                     batch_size=settings["batch_size"], lr=settings["twin_lr"],
                                     weight_decay=settings["twin_weight_decay"], seed=seed, progress=progress)
        with torch.no_grad():
            twin_probs = torch.softmax(twin(data["x_test"]), -1).unsqueeze(0).cpu()
    twin_layers = [(layer.weight.detach().double().cpu(), layer.bias.detach().double().cpu()) for layer in twin.layers]
    twin_values = [torch.linalg.svdvals(w) for w, _ in twin_layers]
    result: dict[str, Any] = {
        "seed": seed, "n_train": len(data["y_train"]), "n_test": len(data["y_test"]),
        "twin": {"metrics": classification_metrics(twin_probs, data["y_test"].cpu()),
                 "parameters": sum(p.numel() for p in twin.parameters()), "train_seconds": twin_fit.seconds,
                 "singular_values": [_significant(values) for values in twin_values],
                 "energy_ranks": [{f"{e:.2f}": suggest_rank(values, e) for e in settings["energies"]}
                                  for values in twin_values]},
    }
    x_train = data["x_train"]
    for name, pruned in (("pruned", True), ("unpruned", False)):
        with seeded(seed, device):
            run = _train_lrvd(data, settings, seed, device, pruned, progress)
        history = run["history"]
        result[name] = {
            "metrics": run["metrics"], "parameters": run["parameters"], "train_seconds": run["train_seconds"],
            "layers": _layer_rows(run, twin_layers, x_train, settings, pruned),
            "effective_ranks": _by_layer(history.effective_ranks), "ranks": _by_layer(history.ranks),
            **{f"{score}_ranks": _by_layer(run["score_history"][score]) for score in SCORES},
            "train_loss": history.train_loss,
        }
        logger.info("seed %d %s: ranks %s, effective ranks median %s / norm %s, accuracy %.4f", seed, name,
                    *([r[key] for r in result[name]["layers"]]
                      for key in ("final_rank", "median_effective_rank", "norm_effective_rank")),
                    run["metrics"]["accuracy"])
    return result


def run_rank_selection(*, smoke: bool = False, seeds: tuple[int, ...] | list[int] = (0,),
                       device: torch.device | str | None = None, progress: bool = True,
                       **overrides: Any) -> dict[str, Any]:
    """Run the experiment of the module docstring for every seed.

    Parameters
    ----------
    smoke : bool
        Start from :data:`RANK_SELECTION_SMOKE` (seconds) instead of the full settings.
    seeds : sequence of int
        Each seed draws the split, the initialisations, the minibatches and the predictive draws.
    device : torch.device or str, optional
        Where data and networks live (default CPU); the comparisons run in float64 on the CPU.
    progress : bool
        Progress bars for the training loops.
    **overrides
        Keys of :data:`RANK_SELECTION_DEFAULTS` (``None`` values ignored); they win over ``smoke``.

    Returns
    -------
    dict
        ``{"runs": [one dict per seed: "twin", "pruned", "unpruned"], "settings", "metadata"}``; every layer row holds
        the ranks, the twin's energies and the alignment (see :func:`format_markdown`).

    Raises
    ------
    TypeError
        For an override that is not a setting.
    ValueError
        For invalid settings or seeds.
    """
    unknown = set(overrides) - set(RANK_SELECTION_DEFAULTS)
    if unknown:
        raise TypeError(f"overrides must be among {sorted(RANK_SELECTION_DEFAULTS)}, got {sorted(unknown)}")
    settings = {**RANK_SELECTION_DEFAULTS, **(RANK_SELECTION_SMOKE if smoke else {}),
                **{k: v for k, v in overrides.items() if v is not None}}
    for key in ("rank", "output_rank", "num_epochs", "batch_size", "prune_every", "num_samples", "twin_epochs"):
        check_positive_int(settings[key], key)
    if settings["output_rank"] > 10:
        raise ValueError(f"output_rank must be in [1, 10] (the output layer is 10 x "
                         f"{settings['hidden_features'][-1]}), got {settings['output_rank']}")
    if not (isinstance(settings["prune_tau"], (int, float)) and math.isfinite(settings["prune_tau"])):
        raise ValueError(f"prune_tau must be a finite number, got {settings['prune_tau']!r}")
    if settings["prune_score"] not in SCORES:
        raise ValueError(f"prune_score must be one of {SCORES}, got {settings['prune_score']!r}")
    seeds = list(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds) \
            or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct non-negative integers, got {seeds!r}")
    device = torch.device(device if device is not None else "cpu")
    start = time.perf_counter()
    runs = [_run_seed(settings, seed, device, progress) for seed in seeds]
    return {"runs": runs, "settings": settings,
            "metadata": {"seeds": seeds, "smoke": smoke, "data": "sklearn digits (load_demo_data split)",
                         "wall_seconds": time.perf_counter() - start}}


# ---------------------------------------------------------------------------------------------------- report
_METRICS = [("accuracy", "accuracy", ".4f"), ("nll", "NLL", ".4f"), ("ece", "ECE", ".4f"), ("brier", "Brier", ".4f"),
            ("parameters", "learned params", "d"), ("train_seconds", "train s", ".0f")]


def _cosines(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values[:8]) + (" ..." if len(values) > 8 else "")


def format_markdown(result: dict[str, Any]) -> str:
    """The metric, rank and alignment tables of every seed, and the settings, as markdown."""
    lines: list[str] = []
    score = result["settings"]["prune_score"]
    for run in result["runs"]:
        lines += [f"### Seed {run['seed']} ({run['n_train']} training, {run['n_test']} test images)", "",
                  "| network | " + " | ".join(t for _, t, _ in _METRICS) + " |", "|---|" + "---:|" * len(_METRICS)]
        for name, row in (("deterministic twin", run["twin"]),
                          (f"LRVD, pruned during training ({score} score)", run["pruned"]),
                          ("LRVD, unpruned", run["unpruned"])):
            values = {**row["metrics"], "parameters": row["parameters"], "train_seconds": row["train_seconds"]}
            lines.append(f"| {name} | " + " | ".join(format(values[k], s) for k, _, s in _METRICS) + " |")
        energies = list(run["twin"]["energy_ranks"][0])
        lines += ["", f"| layer (m x n) | start rank | pruned ({score} score): final rank | pruned: effective rank, "
                      "median score | pruned: rank of W̄ at 99 % | unpruned: effective rank, median score | "
                      "unpruned: effective rank, norm score | unpruned: rank of W̄ at 99 % | twin: rank at "
                  + " / ".join(f"{float(e):.0%}" for e in energies) + " energy |", "|---|" + "---:|" * 8]
        for i, (p, u) in enumerate(zip(run["pruned"]["layers"], run["unpruned"]["layers"])):
            twin = " / ".join(str(v) for v in run["twin"]["energy_ranks"][i].values())
            lines.append(f"| {p['layer']} ({p['shape'][0]} x {p['shape'][1]}) | {p['start_rank']} | "
                         f"{p['final_rank']} | {p['median_effective_rank']} | {p['posterior_mean_rank_99']} | "
                         f"{u['median_effective_rank']} | {u['norm_effective_rank']} | {u['posterior_mean_rank_99']} | "
                         f"{twin} |")
        lines += ["", f"k: the pruned run's final rank; the unpruned run's {score}-score effective rank (at least 1).",
                  "", "| run | layer | k | twin energy in its top k | twin energy in W̄'s top-k subspaces: both "
                      "sides / left / right | left side: mean cos² (chance k/m) | right side: mean cos² (chance "
                      "k/n) | left cosines | right cosines |", "|---|---|---:|---:|---:|---:|---:|---|---|"]
        for name in ("pruned", "unpruned"):
            for row in run[name]["layers"]:
                lines.append(
                    f"| {name} | {row['layer']} | {row['k']} | {row['twin_energy_at_k']:.3f} | "
                    f"{row['captured_twin_energy']:.3f} / {row['captured_twin_energy_left']:.3f} / "
                    f"{row['captured_twin_energy_right']:.3f} | {row['left_mean_cos2']:.2f} ({row['left_chance']:.2f}, "
                    f"{row['left_side']}) | {row['right_mean_cos2']:.2f} ({row['right_chance']:.2f}, "
                    f"{row['right_side']}) | {_cosines(row['left_cosines'])} | {_cosines(row['right_cosines'])} |")
        lines.append("")
    settings = ", ".join(f"{k}={v}" for k, v in result["settings"].items())
    lines += [f"Settings: {settings}."]
    return "\n".join(lines) + "\n"


def write_rank_selection_report(result: dict[str, Any], out_dir: str | Path, *, command: str | None = None,
                                device: torch.device | str | None = None) -> dict[str, Path]:
    """Write ``results.json``, ``results.md`` and, for the first seed, ``rank_dynamics.png`` (pruned run: effective
    ranks by the pruning score before each pruning, ranks after it, and the median-score effective ranks of the kept
    components dotted), ``rank_dynamics_unpruned.png`` (median vs norm effective ranks without pruning) and
    ``twin_spectrum.png`` (the twin's spectra with the pruned run's final ranks marked, and its energy against k with
    the energy inside that run's top-k subspaces marked); returns ``{name: path}``."""
    import json

    from pyro_lowrank.plots import rank_dynamics_plot, spectrum_plot

    from .report import _finite_or_none, environment_info

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "results.md", "rank_dynamics": out / "rank_dynamics.png",
             "rank_dynamics_unpruned": out / "rank_dynamics_unpruned.png", "twin_spectrum": out / "twin_spectrum.png"}
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in result["settings"].items()}
    document = {"experiment": "rank_selection", "command": command, "environment": environment_info(device),
                "settings": settings, "metadata": result["metadata"], "runs": result["runs"]}
    paths["json"].write_text(json.dumps(_finite_or_none(document), indent=2, allow_nan=False) + "\n")
    paths["markdown"].write_text(format_markdown(result))
    run, every = result["runs"][0], result["settings"]["prune_every"]
    pruned = run["pruned"]
    start = result["settings"]["prune_start"]
    prune_epochs = list(range(max(start, every if start == 0 else start), len(pruned["ranks"]) + 1, every))
    score = result["settings"]["prune_score"]
    fig = rank_dynamics_plot(pruned["effective_ranks"], pruned["ranks"], prune_epochs=prune_epochs,
                             title=f"LRVD pruned by the {score} score (dotted: median-score effective rank)")
    for index, values in enumerate(pruned["median_ranks"].values()):
        fig.axes[0].plot(range(1, len(values) + 1), values, color=f"C{index % 10}", linestyle=":", linewidth=1)
    fig.savefig(paths["rank_dynamics"], dpi=90)
    unpruned = run["unpruned"]
    curves = {f"{k} median": v for k, v in unpruned["median_ranks"].items()}
    curves |= {f"{k} norm": v for k, v in unpruned["norm_ranks"].items()}
    fig = rank_dynamics_plot(curves, title="LRVD without pruning: effective rank, median vs norm score")
    fig.savefig(paths["rank_dynamics_unpruned"], dpi=90)
    names = [row["layer"] for row in pruned["layers"]]
    spectra = {name: torch.tensor(values) for name, values in zip(names, run["twin"]["singular_values"])}
    fig = spectrum_plot(spectra, rank={row["layer"]: row["k"] for row in pruned["layers"]}, energy=0.95)
    right = fig.axes[1]
    last = len(names) - 1
    for index, row in enumerate(pruned["layers"]):  # the comparable side: pixels (first layer), classes (last)
        side = "right" if index == 0 else ("left" if index == last else None)
        marks = [("captured_twin_energy", "x", "both sides (hidden units matched)")]
        marks += [(f"captured_twin_energy_{side}", "^", f"{side} side only ({row[side + '_side']})")] if side else []
        for key, marker, what in marks:
            right.plot([row["k"]], [row[key]], marker=marker, markersize=8, color=f"C{index}", linestyle="none",
                       label=f"{row['layer']}: in W̄'s top-k, {what}")
    right.legend(loc="lower right", fontsize="x-small")
    right.set_title("twin energy: best rank k vs LRVD's top-k (markers)")
    fig.axes[0].set_title(f"twin spectrum (dashed: rank k learned with the {score} score)")
    fig.savefig(paths["twin_spectrum"], dpi=90)
    return paths
