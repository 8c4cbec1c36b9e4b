r"""Run compared methods over seeds on one task and score their predictive draws with :mod:`pyro_lowrank.metrics`.

A *task* (:class:`TaskData`) is either classification with a shifted population (``kind="classification"``: train,
validation, source test and shift sets) or regression on standardised targets (``kind="regression"``: train,
optional validation, test, and the target statistics :math:`\bar y, s_y` used to report in original units).

Per method and seed, :func:`run_task` fits ``make_method(name, **config).fit(train, val)``, draws the predictive on
the test (and shift) inputs and computes the metrics below; every (task, method, seed) is one row.

**Classification** (per-draw probabilities :math:`p_{s,i}`, predictive mean :math:`\bar p_i = \frac1S\sum_s p_{s,i}`):
AUROC of :math:`\bar p_{i1} = P(y_i = 1)` (binary tasks), accuracy, NLL :math:`-\frac1N\sum_i\log\bar p_{iy_i}`,
ECE (15 equal-width bins) and Brier score on the source test set and, prefixed ``shift_``, on the shifted set; OOD
detection of shifted-vs-source-test inputs by the mutual information :math:`I_i = H[\bar p_i] - \frac1S\sum_s
H[p_{s,i}]` (shift positive): ``ood_auroc``, ``ood_aupr_ood``, ``ood_aupr_in`` and ``ood_mi_ratio``
:math:`= \overline{I}_\text{shift} / \overline{I}_\text{test}` (NaN, stored as null, for a single-draw method).

**Regression.** The methods predict standardised targets :math:`z = (y - \bar y)/s_y` with per-draw Gaussians
:math:`\mathcal N(\mu_{s,i}, \sigma_{s,i}^2)`. With ``tune_noise`` the homoscedastic noise of the draws is replaced
by :math:`\hat\sigma = \arg\min_{\sigma \in G} \mathrm{NLL}_\text{val}(\sigma)` over a log grid :math:`G` (121
points in :math:`[10^{-3}, 10]`), the validation mixture NLL; this is the standard protocol's noise-precision search
(Gal & Ghahramani's :math:`\tau` grid) applied to every method alike. Draws are mapped to original units,
:math:`\mu' = \bar y + s_y\mu`, :math:`\sigma' = s_y\sigma`, before scoring, so that
:math:`\mathrm{RMSE}' = s_y\,\mathrm{RMSE}_z`, :math:`\mathrm{NLL}' = \mathrm{NLL}_z + \log s_y` and
:math:`\mathrm{MPIW}' = s_y\,\mathrm{MPIW}_z` (PICP is unchanged). Reported: ``rmse``, ``mae``, ``test_ll``
:math:`= -\mathrm{NLL}'` (Gaussian mixture over draws), ``picp`` and ``mpiw`` of the 95% interval
:math:`\hat y_i \pm 1.96\hat\sigma_i` and the noise ``noise_scale`` (standardised units) used for the draws; selective prediction ``mae_at_90``, ``mae_at_80``: the MAE on the 90 % / 80 %
of inputs with the smallest predictive standard deviation (:func:`predictive_std`); ``picp_epistemic``,
``mpiw_epistemic``: the 95 % interval from the spread of the draws' means alone (:func:`epistemic_interval_metrics`,
the intervals of point forecasts per weight draw). With a shifted set (the PM2.5
target city) the same metrics prefixed ``shift_`` and OOD detection of shifted inputs by the predictive standard
deviation (``ood_auroc``, ``ood_aupr_ood``, ``ood_aupr_in``, ``ood_std_ratio``; one draw gives a constant score and
AUROC 0.5).

**Aggregation** (:func:`aggregate`): per group, the mean :math:`\bar m` and the standard error
:math:`\mathrm{s.e.} = \mathrm{sd}/\sqrt n` (sample standard deviation, ``ddof=1``; NaN for ``n = 1``).

**Reproducibility.** Each run happens inside ``torch.random.fork_rng`` with the Python and NumPy RNG states saved and
restored, after ``pyro.set_rng_seed(seed)`` and ``pyro.clear_param_store()``; the predictive draws are taken after
re-seeding with the same seed, so a run's numbers depend only on the task, the configuration and the seed (on CPU).
"""

from __future__ import annotations

import contextlib
import json
import os
import dataclasses
import logging
import math
import random
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyro
import torch
from tqdm import tqdm

from pyro_lowrank.metrics import (accuracy, brier_score, expected_calibration_error, gaussian_mixture_nll, mae, mpiw,
                                  negative_log_likelihood, ood_detection, ood_detection_from_scores, picp,
                                  regression_predictive_moments, rmse, selective_prediction)

from ..methods import available_methods, make_method

__all__ = ["ExperimentResult", "TaskData", "aggregate", "check_seeds", "classification_metrics", "predictive_std",
           "epistemic_interval_metrics", "method_config", "VARIATIONAL_METHODS", "regression_metrics", "resolve_methods", "run_task", "seeded",
           "selective_regression_metrics",
           "tune_noise_scale"]

logger = logging.getLogger(__name__)

Data = tuple[torch.Tensor, torch.Tensor]
TASK_KINDS = ("classification", "regression")
NUM_BINS = 15
NOISE_GRID = torch.logspace(-3, 1, 121, dtype=torch.float64)
#: Retention fractions of the selective-prediction MAE (the paper's 100/90/80 %).
RETENTION = (0.9, 0.8)
#: Row keys that describe a run rather than measure it (not aggregated).
ID_KEYS = ("experiment", "task", "method", "seed", "split", "data_seed", "n_hidden", "n_epochs")


@dataclass
class TaskData:
    """One task's tensors.

    Attributes
    ----------
    name : str
        Task name (``"heart"``, a UCI dataset name).
    kind : {"classification", "regression"}
    train, test : (x, y)
        Training and test data; x float (N, d); y integer labels (classification) or standardised targets.
    val : (x, y), optional
        Validation data (early stopping, Laplace prior tuning, noise tuning).
    shift : (x, y), optional
        Shifted-population data (the other hospitals, the target city) or out-of-distribution inputs.
    shift_labelled : bool
        Whether ``shift``'s y are targets of the same task (metrics prefixed ``shift_`` are then computed); False
        for OOD inputs from another task (AG News for SST-2): only the OOD-detection metrics use them.
    num_classes : int, optional
        C (classification).
    y_mean, y_std : float
        Target statistics: original-unit targets are ``y_mean + y_std * y`` (regression).
    info : dict
        Extra fields recorded in each row (e.g. ``{"split": 3}``).
    """

    name: str
    kind: str
    train: Data
    test: Data
    val: Data | None = None
    shift: Data | None = None
    shift_labelled: bool = True
    num_classes: int | None = None
    y_mean: float = 0.0
    y_std: float = 1.0
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise ValueError(f"kind must be one of {list(TASK_KINDS)}, got {self.kind!r}")
        if self.kind == "classification" and self.num_classes is None:
            raise ValueError("num_classes is required for kind='classification', got None")
        if not (math.isfinite(self.y_std) and self.y_std > 0):
            raise ValueError(f"y_std must be a positive finite float, got {self.y_std!r}")

    @property
    def in_features(self) -> int:
        """Input width d."""
        return int(self.train[0].shape[1])

    def to(self, device: torch.device | str | None) -> "TaskData":
        """A copy with every tensor on ``device`` (``None``: unchanged)."""
        if device is None:
            return self
        move = lambda d: None if d is None else (d[0].to(device), d[1].to(device))  # noqa: E731
        return dataclasses.replace(self, train=move(self.train), test=move(self.test), val=move(self.val),
                                   shift=move(self.shift), info=dict(self.info))


@dataclass
class ExperimentResult:
    """What an experiment produced.

    Attributes
    ----------
    experiment : str
    rows : list of dict
        One per (task, method, seed): identifiers, metrics, ``parameters`` and ``train_seconds``.
    aggregates : list of dict
        One per (task, method): ``{"task", "method", "n", "<metric>": {"mean", "se"}}``.
    settings : dict
        ``{task: {method: config}}`` (the configuration of seed 0 / the first seed).
    skipped : dict
        ``{method: reason}`` for methods that do not support the task.
    failures : list of dict
        ``{"task", "method", "seed", "error"}`` for runs that raised.
    draws : dict
        ``{task: {method: {"test": probs, "shift": probs, "y_test": labels, "y_shift": labels}}}`` (classification)
        or ``{task: {method: {"test": {"mean", "scale"}}}}`` (regression) of the first seed, for plots (not
        serialised).
    metadata : dict
        Protocol notes, settings, seeds and anything the report should carry.
    wall_seconds : float
    """

    experiment: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    aggregates: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)
    draws: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    wall_seconds: float = float("nan")


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | str | None = None) -> Iterator[None]:
    """Run the block with torch, Python and NumPy RNGs seeded by ``seed`` and restore all their states afterwards
    (``torch.random.fork_rng`` on the CPU and, for a CUDA ``device``, that device)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    devices = [device.index or 0] if device.type == "cuda" else []
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=devices):
        try:
            pyro.set_rng_seed(seed)
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def resolve_methods(methods: Sequence[str] | str | None, default: Sequence[str]) -> list[str]:
    """Method names to run: ``default`` when ``None``; a comma-separated string or a sequence otherwise.

    Raises ``ValueError`` naming the registered methods for an unknown name or an empty/duplicated list.
    """
    if methods is None:
        return list(default)
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    methods = list(methods)
    registered = available_methods()
    unknown = [m for m in methods if m not in registered]
    if unknown:
        raise ValueError(f"methods must be registered method names {registered}, got unknown {unknown}")
    if not methods or len(set(methods)) != len(methods):
        raise ValueError(f"methods must be a non-empty list of distinct method names, got {methods}")
    return methods


def check_seeds(seeds: Sequence[int]) -> list[int]:
    """``seeds`` as a list after checking that it is a non-empty list of distinct non-negative ints."""
    seeds = list(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise ValueError(f"seeds must be a non-empty list of non-negative ints, got {seeds}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds}")
    return seeds


def _binary_auroc(probs: torch.Tensor, y: torch.Tensor) -> float:
    """AUROC of the predictive P(y = 1) against the labels (NaN when only one class is present)."""
    from sklearn.metrics import roc_auc_score

    labels = y.detach().cpu().long().numpy()
    if len(np.unique(labels)) < 2:
        return math.nan
    score = probs.detach().to(torch.float64).mean(0)[:, 1].cpu().numpy()
    return float(roc_auc_score(labels, score))


def classification_metrics(probs: torch.Tensor, y: torch.Tensor, prefix: str = "") -> dict[str, float]:
    """Accuracy, NLL, ECE (15 bins), Brier and, for C = 2, the AUROC of P(y = 1), keyed ``prefix + name``."""
    out = {
        "accuracy": accuracy(probs, y),
        "nll": negative_log_likelihood(probs, y),
        "ece": expected_calibration_error(probs, y, num_bins=NUM_BINS),
        "brier": brier_score(probs, y),
    }
    if probs.shape[-1] == 2:
        out = {"auroc": _binary_auroc(probs, y), **out}
    return {prefix + k: v for k, v in out.items()}


def tune_noise_scale(means: torch.Tensor, y: torch.Tensor, grid: torch.Tensor | None = None) -> float:
    r"""The homoscedastic noise :math:`\sigma \in G` minimising the mixture NLL
    :math:`-\frac1N\sum_i \log\frac1S\sum_s \mathcal N(y_i; \mu_{s,i}, \sigma^2)` of ``y`` (N,) under draws
    ``means`` (S, N); ``grid`` defaults to :data:`NOISE_GRID` (121 log-spaced values in [1e-3, 10])."""
    grid = NOISE_GRID if grid is None else grid
    mu = means.detach().to(torch.float64)
    target = y.detach().to(device=mu.device, dtype=torch.float64)
    sq = (target - mu).square()  # (S, N)
    log_s = math.log(mu.shape[0])
    nll = [float(-(torch.logsumexp(-0.5 * sq / float(s) ** 2, 0) - log_s).mean() + math.log(float(s))
                 + 0.5 * math.log(2 * math.pi)) for s in grid]
    return float(grid[int(np.argmin(nll))])


def regression_metrics(draws: dict[str, torch.Tensor], y: torch.Tensor, y_mean: float = 0.0,
                       y_std: float = 1.0) -> dict[str, float]:
    r"""RMSE, test log-likelihood, PICP and MPIW (95%, :math:`\hat y \pm 1.96\hat\sigma`) in original units from
    standardised draws ``{"mean", "scale"}`` (S, N) and standardised targets ``y`` (see the module docstring)."""
    mean = y_mean + y_std * draws["mean"].to(torch.float64)
    scale = y_std * draws["scale"].to(torch.float64)
    target = y_mean + y_std * y.to(torch.float64)
    return {
        "rmse": rmse(mean, target),
        "mae": mae(mean, target),
        "test_ll": -gaussian_mixture_nll(mean, scale, target),
        "picp": picp(mean, scale, target, level=0.95),
        "mpiw": mpiw(mean, scale, level=0.95),
    }


def predictive_std(draws: dict[str, torch.Tensor]) -> torch.Tensor:
    r"""Per-input standard deviation of the equal-weight Gaussian mixture of the draws,
    :math:`\sqrt{\frac1S\sum_s \sigma_{s,i}^2 + \frac1S\sum_s(\mu_{s,i} - \bar\mu_i)^2}` (0 spread for one
    draw), the regression uncertainty score."""
    return regression_predictive_moments(draws["mean"].to(torch.float64), draws["scale"].to(torch.float64))[1]


def selective_regression_metrics(draws: dict[str, torch.Tensor], y: torch.Tensor, y_mean: float = 0.0,
                                 y_std: float = 1.0) -> dict[str, float]:
    r"""MAE (original units) of the predictive mean on the :data:`RETENTION` fractions of inputs with the smallest
    :func:`predictive_std`, keyed ``mae_at_90`` etc. (ties broken in expectation, so a constant score gives the
    plain MAE: :func:`pyro_lowrank.metrics.selective_prediction`)."""
    error = (y_std * (draws["mean"].to(torch.float64).mean(0) - y.to(torch.float64))).abs()
    score = predictive_std(draws)
    return {f"mae_at_{round(100 * r)}": selective_prediction(error, score, retention=r) for r in RETENTION}


def epistemic_interval_metrics(draws: dict[str, torch.Tensor], y: torch.Tensor, y_mean: float = 0.0,
                               y_std: float = 1.0) -> dict[str, float]:
    r"""PICP and MPIW (original units) of the interval :math:`\hat y_i \pm 1.96\,\hat s_i` built from the spread of
    the draws' means alone, :math:`\hat s_i^2 = rac1S\sum_s(\mu_{s,i} - \hat y_i)^2` (no observation noise; one
    draw gives a zero-width interval), keyed ``picp_epistemic`` / ``mpiw_epistemic``: the intervals of a network
    that outputs a point forecast per weight draw."""
    means = y_mean + y_std * draws["mean"].to(torch.float64)
    center, spread = means.mean(0), means.std(0, unbiased=False)
    target = y_mean + y_std * y.to(torch.float64)
    inside = ((target - center).abs() <= 1.959963984540054 * spread).to(torch.float64)
    return {"picp_epistemic": float(inside.mean()), "mpiw_epistemic": float((2 * 1.959963984540054 * spread).mean())}


def _evaluate(method: Any, task: TaskData, num_samples: int, seed: int, tune_noise: bool
              ) -> tuple[dict[str, float], dict[str, Any]]:
    x_test, y_test = task.test
    pyro.set_rng_seed(seed)
    test = method.predictive_draws(x_test, num_samples)
    if task.kind == "classification":
        metrics = classification_metrics(test["probs"], y_test)
        draws: dict[str, Any] = {"test": test["probs"].cpu(), "y_test": y_test.cpu()}
        if task.shift is not None:
            shift = method.predictive_draws(task.shift[0], num_samples)
            if task.shift_labelled:
                metrics.update(classification_metrics(shift["probs"], task.shift[1], prefix="shift_"))
            ood = ood_detection(test["probs"], shift["probs"])
            metrics.update({"ood_auroc": ood["auroc"], "ood_aupr_ood": ood["aupr_ood"],
                            "ood_aupr_in": ood["aupr_in"], "ood_mi_ratio": ood["score_ratio"]})
            draws["shift"] = shift["probs"].cpu()
            if task.shift_labelled:
                draws["y_shift"] = task.shift[1].cpu()
        return metrics, draws
    shift = method.predictive_draws(task.shift[0], num_samples) if task.shift is not None else None
    noise = float(test["scale"].flatten()[0]) if test["scale"].numel() else math.nan
    if tune_noise and task.val is not None:
        noise = tune_noise_scale(method.predictive_draws(task.val[0], num_samples)["mean"], task.val[1])
        test = {"mean": test["mean"], "scale": torch.full_like(test["mean"], noise)}
        if shift is not None:
            shift = {"mean": shift["mean"], "scale": torch.full_like(shift["mean"], noise)}
    metrics = regression_metrics(test, y_test, task.y_mean, task.y_std)
    metrics.update(selective_regression_metrics(test, y_test, task.y_mean, task.y_std))
    metrics.update(epistemic_interval_metrics(test, y_test, task.y_mean, task.y_std))
    metrics["noise_scale"] = noise
    draws: dict[str, Any] = {"test": {k: v.cpu() for k, v in test.items()}}
    if shift is not None:
        if task.shift_labelled:
            shifted = regression_metrics(shift, task.shift[1], task.y_mean, task.y_std)
            metrics.update({f"shift_{k}": v for k, v in shifted.items()})
        ood = ood_detection_from_scores(predictive_std(test), predictive_std(shift))
        metrics.update({"ood_auroc": ood["auroc"], "ood_aupr_ood": ood["aupr_ood"], "ood_aupr_in": ood["aupr_in"],
                        "ood_std_ratio": ood["score_ratio"]})
        draws["shift"] = {k: v.cpu() for k, v in shift.items()}
    return metrics, draws


def run_task(
    task: TaskData,
    methods: Sequence[str],
    seeds: Sequence[int],
    config_fn: Callable[[str, TaskData, int], dict[str, Any]],
    *,
    num_samples: int,
    experiment: str,
    result: ExperimentResult | None = None,
    tune_noise: bool = False,
    device: torch.device | str | None = None,
    progress: bool = True,
    strict: bool = False,
    journal: str | os.PathLike | None = None,
) -> ExperimentResult:
    """Fit and score every method in ``methods`` for every seed on ``task``, appending rows to ``result``.

    Parameters
    ----------
    task : TaskData
    methods : sequence of str
        Registered method names.
    seeds : sequence of int
    config_fn : callable
        ``config_fn(method, task, seed)`` -> keyword arguments of ``make_method``.
    num_samples : int
        Predictive draws per evaluation set.
    experiment : str
        Recorded in each row.
    result : ExperimentResult, optional
        Accumulator (a new one is made otherwise); aggregates are not recomputed here (see :func:`aggregate`).
    tune_noise : bool
        Regression: tune the draws' noise on the validation data (module docstring).
    device : torch device, optional
        Where data and networks live (default: where the task's tensors are).
    progress : bool
        A tqdm bar over the runs.
    strict : bool
        Re-raise a run's exception instead of logging it into ``result.failures``.
    journal : path, optional
        Append every finished row (and every failure) to this JSON-lines file as soon as it exists, flushed and
        fsynced, so a run killed later (out of memory, a time limit) loses nothing already computed.

    A method whose constructor rejects the task's configuration (``ValueError``, ``TypeError``,
    ``NotImplementedError``) is skipped with a warning and recorded in ``result.skipped``.
    """
    result = result if result is not None else ExperimentResult(experiment)
    seeds = check_seeds(seeds)
    task = task.to(device)
    settings = result.settings.setdefault(task.name, {})
    runnable = []
    for name in methods:
        try:
            config = config_fn(name, task, seeds[0])
            with seeded(seeds[0], task.train[0].device):  # constructors may draw initial values
                make_method(name, **config)
        except (ValueError, TypeError, NotImplementedError) as err:
            reason = f"{type(err).__name__}: {err}"
            logger.warning("skipping %s on %s: it does not support this task (%s)", name, task.name, reason)
            result.skipped[f"{task.name}/{name}"] = reason
            continue
        settings[name] = config
        runnable.append(name)
    runs = [(name, seed) for name in runnable for seed in seeds]
    bar = tqdm(runs, desc=f"{experiment} {task.name}", disable=not progress, leave=False)
    for name, seed in bar:
        bar.set_postfix_str(f"{name} seed {seed}")
        ids = {"experiment": experiment, "task": task.name, "method": name, "seed": seed, **task.info}
        try:
            with seeded(seed, task.train[0].device):
                pyro.clear_param_store()
                method = make_method(name, **config_fn(name, task, seed)).fit(task.train, task.val)
                metrics, draws = _evaluate(method, task, num_samples, seed, tune_noise)
        except Exception as err:  # noqa: BLE001  a failed run must not lose the others
            if strict:
                raise
            logger.error("%s on %s (seed %d) failed: %s\n%s", name, task.name, seed, err, traceback.format_exc())
            result.failures.append({**ids, "error": f"{type(err).__name__}: {err}"})
            _append_journal(journal, {"failure": result.failures[-1]})
            continue
        row = {**ids, **metrics, "parameters": int(method.num_parameters),
               "train_seconds": float(method.training_seconds)}
        result.rows.append(row)
        _append_journal(journal, {"row": row})
        if seed == seeds[0]:
            result.draws.setdefault(task.name, {}).setdefault(name, draws)  # the first seed of the first split
        logger.info("%s", row)
    return result


def _append_journal(path: str | os.PathLike | None, entry: dict[str, Any]) -> None:
    """Append ``entry`` as one JSON line to ``path`` (non-finite numbers as null), flushed and fsynced."""
    if path is None:
        return
    clean = {k: ({kk: (None if isinstance(vv, float) and not math.isfinite(vv) else vv) for kk, vv in v.items()}
                 if isinstance(v, dict) else v) for k, v in entry.items()}
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(clean, default=str) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def aggregate(rows: Sequence[dict[str, Any]], by: Sequence[str] = ("task", "method")) -> list[dict[str, Any]]:
    r"""Mean and standard error :math:`\mathrm{sd}_{ddof=1}/\sqrt n` of every numeric non-identifier key of
    ``rows`` within each group of equal ``by`` values (groups in first-appearance order). A group's ``n`` is its
    number of rows; a metric with any non-finite value has a non-finite mean; s.e. is NaN for ``n = 1``."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(k) for k in by), []).append(row)
    out = []
    for key, members in groups.items():
        entry: dict[str, Any] = {**dict(zip(by, key)), "n": len(members)}
        names = [k for k in members[0] if k not in ID_KEYS and k not in by
                 and isinstance(members[0][k], (int, float)) and not isinstance(members[0][k], bool)]
        for k in names:
            values = np.array([float(m[k]) for m in members], dtype=np.float64)
            mean = float(values.mean())
            se = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else math.nan
            entry[k] = {"mean": mean, "se": se}
        out.append(entry)
    return out


#: Methods trained by SVI: they get the KL warm-up (``kl_anneal_epochs``).
VARIATIONAL_METHODS = ("mean_field", "rank1", "lowrank", "lowrank_svd")


def method_config(name: str, common: dict[str, Any], settings: dict[str, dict[str, Any]],
                  defaults: dict[str, Any], num_epochs: int) -> dict[str, Any]:
    """``make_method`` keyword arguments shared by every experiment: ``common`` updated with ``settings[name]``,
    plus the KL warm-up ``min(defaults["kl_anneal_epochs"], num_epochs)`` for :data:`VARIATIONAL_METHODS` and SWAG's
    collection epochs ``min(defaults["swag_epochs"], num_epochs)``."""
    config = {**common, **settings.get(name, {})}
    if name in VARIATIONAL_METHODS:
        config["kl_anneal_epochs"] = min(defaults["kl_anneal_epochs"], num_epochs)
    if name == "swag":
        config["swag_epochs"] = min(defaults["swag_epochs"], num_epochs)
    return config


def timed(fn: Callable[[], ExperimentResult]) -> ExperimentResult:
    """Call ``fn`` and store its wall time in the result's ``wall_seconds``."""
    start = time.perf_counter()
    result = fn()
    result.wall_seconds = time.perf_counter() - start
    return result
