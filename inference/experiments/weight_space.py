r"""``pyro-lowrank weight-space``: weight-space posteriors of a low-rank network around its MAP, compared with the
low-rank variational posterior, and the kernel view of its Laplace approximation.

This module holds the tasks, the settings and the run; the kernel and under-fitting studies are in
:mod:`.weight_space_studies` and the report in :mod:`.weight_space_report` (their public names are re-exported here).

**Tasks.**

* ``sine-gap``, a synthetic 1-D regression with a gap: :math:`y = \sin(2x) + \varepsilon`,
  :math:`\varepsilon \sim \mathcal N(0, 0.1^2)`, with ``toy_train_size`` training and ``toy_val_size`` validation
  inputs uniform on :math:`[-3, -1] \cup [1, 3]` (half on each side) and ``toy_test_size`` test inputs on an evenly
  spaced grid over :math:`[-4, 4]`, gap and both extrapolation ends included, with fresh noise. Split k draws its
  data with seed k. Targets are standardised with the training mean and standard deviation (metrics are reported in
  original units, as for UCI); the input is left in its natural units (training s.d. about 2), so the band plot
  reads in x directly.
* UCI datasets (default ``yacht`` and ``energy``, the first 3 standard splits) through
  :func:`~.uci.load_uci_task`: the published splits, 10 % of each training split held out for validation.

**Methods** (default :data:`DEFAULT_METHODS`): the factor-space Laplace approximation with the sampled
(``laplace_factor``) and linearised (``laplace_factor_glm``) predictive, Laplace diffusion (``laplace_diffusion``),
fiber walking (``fiber_walk``) and the low-rank variational posterior (``lowrank``), all on the same d-50-1 ReLU
:class:`~pyro_lowrank.models.LowRankMLP` (hidden rank :math:`\min(15, d)`, output rank 1, the variance-matched factor
prior ``prior_scale="matched"``). Training is the UCI experiment's (:func:`~.uci.uci_config`): Adam 1e-2, batch 32,
the published 40 epochs on UCI, training noise :data:`~.uci.TRAIN_NOISE_SCALE` = 0.1 on the standardised scale, the
predictive noise of every run then tuned on the validation data (``tune_noise=True``) and 100 predictive draws. On
the 1-D task the network trains for ``toy_epochs`` = 500 epochs at ``toy_lr`` = 3e-2 (batch 32 still): at 1e-2 the
MAP's training RMSE was 0.35 after 300 epochs and 0.27 after 1,000 for a noise of 0.1 (the ReLU kinks start near
x = 0, in the gap, and move slowly into the data), at 3e-2 it reaches 0.097 after 500 epochs (8 s).
The four geometry methods share one MAP (``AutoDelta`` + ``Trace_ELBO``, best validation epoch) per split and seed.

**Per-method settings** (:data:`WEIGHT_SPACE_SETTINGS`). The geometry methods' own defaults were checked on yacht
and energy split 0 and on the 1-D task and kept: every run is finite, diffusion is within a few per cent of the
Laplace rows' RMSE, fiber walking is as good or better (its gradient-corrected steps also keep optimising a MAP that
40 epochs leave under-trained: on yacht split 0 its kept solutions sit 0.09 nats per datum *below* the MAP's loss),
and the whole default run takes 4 to 5 minutes on one thread. The Laplace methods score every alpha at its best
observation noise (their default ``tune_noise=True``). The former rule, the validation NLL at the training noise 0.1
while the MAP's residuals are about 0.06 on the standardised scale, put most UCI picks at 1e5 or above (a first run); the
joint rule puts 13 of them in 1e2 .. 5e4 and 3 at an edge of the grid. At most of these alphas the low-rank
Laplace's spread is still small beside the noise: on split 0 of yacht and energy the Laplace rows are within 0.06
nats (test NLL) and 1 % (RMSE) of the MAP's predictive. :func:`table_prior_precisions` reports the picks, and the
under-fitting study shows the whole alpha range.

* ``laplace_factor`` / ``laplace_factor_glm``: ``structure="lowrank"`` with ``num_eigenpairs=20`` Lanczos pairs and
  ``complement="prior"`` (the discarded directions keep the prior variance 1/alpha, as laplace-torch's
  ``LowRankLaplace``); the prior precision alpha is tuned on validation over the library's default grid
  (:data:`~..factor_laplace.DEFAULT_PRIOR_PRECISION_GRID`, 1e-2 .. 1e6, three per decade; 32 draws) for each
  method's own predictive, with the observation noise tuned jointly (the methods' default ``tune_noise=True``:
  every alpha is scored at its best noise of :data:`~..factor_laplace.DEFAULT_NOISE_GRID`, 1e-3 .. 10). k = 20 keeps
  Lanczos cheap (about 60 GGN products) while covering the bulk of the spectrum: N·O is 80 on the 1-D task and the
  GGN's numerical rank is far below D there.
* ``laplace_diffusion``: ``variant="image"`` (Roy et al.'s non-kernel steps), ``num_steps=5``, 20 eigenpairs per
  step, a pool of 100 paths (the predictive draws); alpha (with the noise) tuned on the one-step walk.
* ``fiber_walk``: 16 particles, 200 walk steps of size 1e-2, ``correction=1`` (a Newton-sized gradient step), the
  default loss tolerance 0.05 nats per datum, and a 2-coupling RealNVP flow fitted for 1000 Adam steps.
* ``lowrank``: the UCI experiment's setting (guide scales initialised at 0.01 of the init scale, 5 KL warm-up epochs).

**Studies** (:mod:`.weight_space_studies`, on a refitted MAP of the first seed): the kernel study and the
sampled-vs-linearised under-fitting study on the first split of every task, and :func:`table_prior_precisions` on
every split. **Outputs** (:func:`write_weight_space_report`, :mod:`.weight_space_report`): ``results.json``,
``results.md``, ``underfitting_<task>.png``, ``kernel_share.png``, ``bands_<toy task>.png``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pyro_lowrank._validation import check_positive_int

from .runner import ExperimentResult, TaskData, aggregate, check_seeds, resolve_methods, run_task
from .uci import TRAIN_NOISE_SCALE, UCI_DEFAULTS, _resolve_splits, load_uci_task, resolve_datasets, uci_config
from .weight_space_report import format_markdown, write_weight_space_report
from .weight_space_studies import (fit_map_network, kernel_study, symmetry_tangents, table_prior_precisions,
                                   underfitting_study)

__all__ = ["DEFAULT_METHODS", "SMOKE_SETTINGS", "TOY_TASK", "WEIGHT_SPACE_DEFAULTS", "WEIGHT_SPACE_SETTINGS",
           "WEIGHT_SPACE_SMOKE", "WeightSpaceResult", "fit_map_network", "format_markdown", "kernel_study",
           "make_toy_task", "run_weight_space", "symmetry_tangents", "table_prior_precisions", "underfitting_study",
           "weight_space_config", "weight_space_settings", "write_weight_space_report"]

logger = logging.getLogger(__name__)

#: The compared methods, in table order.
DEFAULT_METHODS = ("laplace_factor", "laplace_factor_glm", "laplace_diffusion", "fiber_walk", "lowrank")
#: Name of the synthetic 1-D task.
TOY_TASK = "sine-gap"
GEOMETRY_METHODS = ("laplace_factor", "laplace_factor_glm", "laplace_diffusion", "fiber_walk")

WEIGHT_SPACE_DEFAULTS: dict[str, Any] = {
    "datasets": ("yacht", "energy"), "splits": 3, "seeds": (0,), "num_samples": 100, "num_epochs": None,
    "toy_epochs": 500, "toy_lr": 3e-2, "toy_train_size": 80, "toy_val_size": 40, "toy_test_size": 201, "toy_noise": 0.1,
    "prior_precisions": tuple(float(a) for a in np.logspace(-3, 6, 37)), "study_num_samples": 100,
}
#: ``--smoke``: one split of yacht, a few epochs and draws, cheap geometry settings (seconds).
WEIGHT_SPACE_SMOKE: dict[str, Any] = {
    "datasets": ("yacht",), "splits": 1, "num_samples": 8, "num_epochs": 2, "toy_epochs": 8, "toy_train_size": 40,
    "toy_val_size": 20, "toy_test_size": 61, "prior_precisions": tuple(float(a) for a in np.logspace(-3, 3, 7)),
    "study_num_samples": 8,
}

#: Per-method settings on top of the UCI configuration (see the module docstring for why).
WEIGHT_SPACE_SETTINGS: dict[str, dict[str, Any]] = {
    "laplace_factor": {"structure": "lowrank", "num_eigenpairs": 20, "complement": "prior", "tune_num_samples": 32},
    "laplace_factor_glm": {"structure": "lowrank", "num_eigenpairs": 20, "complement": "prior",
                           "tune_num_samples": 32},
    "laplace_diffusion": {"variant": "image", "num_steps": 5, "num_eigenpairs": 20, "pool_size": 100,
                          "tune_num_samples": 32},
    "fiber_walk": {"num_particles": 16, "walk_steps": 200, "step_size": 1e-2, "correction": 1.0, "num_flows": 2,
                   "flow_steps": 1000, "flow_lr": 1e-2},
}
#: ``--smoke`` overrides of the per-method settings.
SMOKE_SETTINGS: dict[str, dict[str, Any]] = {
    "laplace_factor": {"num_eigenpairs": 5, "tune_num_samples": 4},
    "laplace_factor_glm": {"num_eigenpairs": 5, "tune_num_samples": 4},
    "laplace_diffusion": {"num_eigenpairs": 5, "num_steps": 2, "pool_size": 8, "tune_num_samples": 4},
    "fiber_walk": {"num_particles": 4, "walk_steps": 40, "flow_steps": 20},
}


@dataclass
class WeightSpaceResult:
    """What :func:`run_weight_space` produced.

    Attributes
    ----------
    table : ExperimentResult
        Rows (one per task, split, method, seed), aggregates over splits and seeds per (task, method), settings,
        skipped methods, failed runs and the first split's draws.
    studies : dict
        ``{task: {"split", "seed", "kernel": ..., "underfitting": ...}}`` (see :func:`kernel_study` and
        :func:`underfitting_study`).
    prior_precisions : dict
        ``{task: {split: {method: alpha}}}``, :func:`table_prior_precisions` of the first seed.
    toy : dict
        The first split of the 1-D task for the band plot: ``x_train``, ``y_train``, ``x_test`` (original units) and
        ``y_mean``, ``y_std``.
    settings : dict
        The experiment settings (defaults, smoke, overrides).
    metadata : dict
    """

    table: ExperimentResult
    studies: dict[str, dict[str, Any]] = field(default_factory=dict)
    prior_precisions: dict[str, dict[int, dict[str, float]]] = field(default_factory=dict)
    toy: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------- tasks
def _sine(x: torch.Tensor) -> torch.Tensor:
    return torch.sin(2.0 * x)


def make_toy_task(split: int = 0, *, train_size: int = WEIGHT_SPACE_DEFAULTS["toy_train_size"],
                  val_size: int = WEIGHT_SPACE_DEFAULTS["toy_val_size"],
                  test_size: int = WEIGHT_SPACE_DEFAULTS["toy_test_size"],
                  noise: float = WEIGHT_SPACE_DEFAULTS["toy_noise"],
                  num_epochs: int = WEIGHT_SPACE_DEFAULTS["toy_epochs"]) -> TaskData:
    r"""The 1-D regression with a gap (module docstring) as a :class:`~.runner.TaskData`, data drawn with seed
    ``split``: :math:`y = \sin 2x + \varepsilon`, :math:`\varepsilon \sim \mathcal N(0, \text{noise}^2)`, training and
    validation inputs uniform on :math:`[-3,-1]\cup[1,3]`, test inputs on an even grid over :math:`[-4, 4]`;
    targets standardised with the training mean and s.d. (``y_mean``, ``y_std``), inputs left as they are.
    ``info`` records the split, the hidden width 50 and ``num_epochs``."""
    for value, name in ((train_size, "train_size"), (val_size, "val_size"), (test_size, "test_size"),
                        (num_epochs, "num_epochs")):
        check_positive_int(value, name)
    if train_size < 2:
        raise ValueError(f"train_size must be at least 2 (one point per side of the gap), got {train_size}")
    if not (noise > 0 and math.isfinite(noise)):
        raise ValueError(f"noise must be a finite number > 0, got {noise!r}")
    if isinstance(split, bool) or not isinstance(split, int) or split < 0:
        raise ValueError(f"split must be a non-negative int (the data seed), got {split!r}")
    g = torch.Generator().manual_seed(split)

    def gap_inputs(n: int) -> torch.Tensor:
        left = n // 2
        u = 1.0 + 2.0 * torch.rand(n, generator=g, dtype=torch.float64)
        sign = torch.cat([-torch.ones(left, dtype=torch.float64), torch.ones(n - left, dtype=torch.float64)])
        return sign * u

    def targets(x: torch.Tensor) -> torch.Tensor:
        return _sine(x) + noise * torch.randn(x.shape[0], generator=g, dtype=torch.float64)

    x_train = gap_inputs(train_size)
    y_train = targets(x_train)
    x_val = gap_inputs(val_size)
    y_val = targets(x_val)
    x_test = torch.linspace(-4.0, 4.0, test_size, dtype=torch.float64)
    y_test = targets(x_test)
    y_mean, y_std = float(y_train.mean()), float(y_train.std())
    z = lambda y: ((y - y_mean) / y_std).float()  # noqa: E731
    col = lambda x: x.float().unsqueeze(1)  # noqa: E731
    return TaskData(name=TOY_TASK, kind="regression", train=(col(x_train), z(y_train)), val=(col(x_val), z(y_val)),
                    test=(col(x_test), z(y_test)), y_mean=y_mean, y_std=y_std,
                    info={"split": split, "n_hidden": int(UCI_DEFAULTS["hidden"]), "n_epochs": int(num_epochs)})


# ---------------------------------------------------------------------------------------------------- configuration
def weight_space_config(name: str, task: TaskData, *, seed: int, num_epochs: int | None = None,
                        lr: float | None = None, smoke: bool = False, noise_scale: float = TRAIN_NOISE_SCALE
                        ) -> dict[str, Any]:
    """``make_method`` keyword arguments of method ``name`` on ``task``: the UCI configuration of the ``lowrank``
    network (width, ranks, ``prior_scale="matched"``, training settings; ``num_epochs`` and ``lr`` override the
    task's epochs and the learning rate 1e-2) and, for the geometry methods, :data:`WEIGHT_SPACE_SETTINGS` (with
    :data:`SMOKE_SETTINGS` on top for ``smoke``) instead of the variational guide's settings."""
    config = uci_config("lowrank" if name in GEOMETRY_METHODS else name, task, seed=seed, num_epochs=num_epochs,
                        noise_scale=noise_scale)
    if lr is not None:
        config["lr"] = float(lr)
    if name in GEOMETRY_METHODS:
        for key in ("kl_anneal_epochs", "init_scale_factor"):  # MAP fits: no KL warm-up, no guide scales
            config.pop(key, None)
        config.update(WEIGHT_SPACE_SETTINGS.get(name, {}))
        if smoke:
            config.update(SMOKE_SETTINGS.get(name, {}))
    return config



# ---------------------------------------------------------------------------------------------------- the run
def weight_space_settings(datasets: Sequence[str] | str | None = None, methods: Sequence[str] | str | None = None,
                          *, splits: int | None = None, seeds: Sequence[int] | None = None,
                          num_samples: int | None = None, num_epochs: int | None = None, smoke: bool = False,
                          toy: bool = True, **overrides: Any) -> dict[str, Any]:
    """The checked settings of a run (see :func:`run_weight_space` for the arguments): :data:`WEIGHT_SPACE_DEFAULTS`,
    then :data:`WEIGHT_SPACE_SMOKE` for ``smoke``, then every argument that is not ``None``; ``methods`` and
    ``datasets`` resolved to lists, the prior precisions sorted.

    Raises ``TypeError`` for an unknown override and ``ValueError`` for an invalid value, before anything runs."""
    unknown = set(overrides) - set(WEIGHT_SPACE_DEFAULTS)
    if unknown:
        raise TypeError(f"overrides must be among {sorted(WEIGHT_SPACE_DEFAULTS)}, got {sorted(unknown)}")
    given = {"datasets": datasets, "splits": splits, "seeds": seeds, "num_samples": num_samples,
             "num_epochs": num_epochs, **overrides}
    settings = {**WEIGHT_SPACE_DEFAULTS, **(WEIGHT_SPACE_SMOKE if smoke else {}),
                **{k: v for k, v in given.items() if v is not None}}
    settings["methods"] = resolve_methods(methods, DEFAULT_METHODS)
    settings["seeds"] = check_seeds(settings["seeds"])
    for key in ("splits", "num_samples", "toy_epochs", "toy_train_size", "toy_val_size", "toy_test_size",
                "study_num_samples"):
        check_positive_int(settings[key], key)
    if settings["num_epochs"] is not None:
        check_positive_int(settings["num_epochs"], "num_epochs")
    for key in ("toy_lr", "toy_noise"):
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
            raise ValueError(f"{key} must be a finite number > 0, got {value!r}")
    alphas = [float(a) for a in settings["prior_precisions"]]
    if not alphas or any(not (a > 0 and math.isfinite(a)) for a in alphas):
        raise ValueError(f"prior_precisions must be a non-empty list of finite numbers > 0, got {alphas}")
    settings["prior_precisions"] = sorted(alphas)
    names = settings["datasets"]
    settings["datasets"] = [] if isinstance(names, (list, tuple)) and not names else resolve_datasets(names)
    if not toy and not settings["datasets"]:
        raise ValueError("nothing to run: toy=False and datasets is empty")
    return settings


def run_weight_space(
    datasets: Sequence[str] | str | None = None,
    methods: Sequence[str] | str | None = None,
    *,
    splits: int | None = None,
    seeds: Sequence[int] | None = None,
    num_samples: int | None = None,
    num_epochs: int | None = None,
    root: str | Path | None = None,
    smoke: bool = False,
    toy: bool = True,
    studies: bool = True,
    device: torch.device | str | None = None,
    progress: bool = True,
    strict: bool = False,
    journal: str | Path | None = None,
    **overrides: Any,
) -> WeightSpaceResult:
    """Run the experiment of the module docstring.

    Parameters
    ----------
    datasets : str or sequence of str, optional
        UCI datasets (default ``yacht, energy``; smoke: ``yacht``); an empty sequence runs the 1-D task alone.
    methods : str or sequence of str, optional
        Registered method names (default :data:`DEFAULT_METHODS`).
    splits : int, optional
        The first K splits of every task (default 3; smoke 1). On the 1-D task split k is the data seed k.
    seeds : sequence of int, optional
        Training seeds (default ``(0,)``).
    num_samples : int, optional
        Predictive draws per evaluation set (default 100; smoke 8).
    num_epochs : int, optional
        Training epochs on the UCI tasks (default: the published 40; smoke 2). The 1-D task uses ``toy_epochs``.
    root : path, optional
        Data root holding ``uci_regression/``.
    smoke : bool
        :data:`WEIGHT_SPACE_SMOKE` and :data:`SMOKE_SETTINGS` (explicit arguments still win).
    toy, studies : bool
        Run the 1-D task; run the kernel and under-fitting studies (first split) and
        :func:`table_prior_precisions` (every split), each on a refitted MAP of the first seed.
    device : torch device, optional
        Where the methods train (the studies run in float64 on the CPU).
    progress : bool
        tqdm bars.
    strict : bool
        Re-raise a failed run instead of recording it.
    journal : path, optional
        JSON-lines file receiving every finished row (see :func:`~.runner.run_task`).
    **overrides
        Other keys of :data:`WEIGHT_SPACE_DEFAULTS` (``toy_epochs``, ``toy_train_size``, ``prior_precisions``,
        ``study_num_samples``, ...).
    """
    settings = weight_space_settings(datasets, methods, splits=splits, seeds=seeds, num_samples=num_samples,
                                     num_epochs=num_epochs, smoke=smoke, toy=toy, **overrides)
    methods, seeds, dataset_list = settings["methods"], settings["seeds"], settings["datasets"]
    from pyro_lowrank import datasets as data_module

    split_lists = {d: _resolve_splits(settings["splits"], int(data_module.num_splits(d)), d) for d in dataset_list}
    table = ExperimentResult("weight_space")
    result = WeightSpaceResult(table=table, settings=settings)
    start = time.perf_counter()

    def toy_task(k: int) -> TaskData:
        return make_toy_task(k, train_size=settings["toy_train_size"], val_size=settings["toy_val_size"],
                             test_size=settings["toy_test_size"], noise=settings["toy_noise"],
                             num_epochs=settings["toy_epochs"])

    def training(task_name: str) -> dict[str, Any]:
        toy_task_ = task_name == TOY_TASK
        return {"num_epochs": None if toy_task_ else settings["num_epochs"],
                "lr": settings["toy_lr"] if toy_task_ else None}

    def config_fn(name: str, t: TaskData, seed: int) -> dict[str, Any]:
        return weight_space_config(name, t, seed=seed, smoke=smoke, **training(t.name))

    plan: list[tuple[str, list[int]]] = ([(TOY_TASK, list(range(settings["splits"])))] if toy else [])
    plan += [(d, split_lists[d]) for d in dataset_list]
    for task_name, split_indices in plan:
        for position, k in enumerate(split_indices):
            task = toy_task(k) if task_name == TOY_TASK else load_uci_task(task_name, k, root)
            run_task(task, methods, seeds, config_fn, num_samples=settings["num_samples"], experiment="weight_space",
                     result=table, tune_noise=True, device=device, progress=progress, strict=strict,
                     journal=journal)
            if position == 0 and task_name == TOY_TASK:
                result.toy = {"x_train": task.train[0][:, 0].tolist(),
                              "y_train": (task.y_mean + task.y_std * task.train[1].double()).tolist(),
                              "x_test": task.test[0][:, 0].tolist(),
                              "y_test": (task.y_mean + task.y_std * task.test[1].double()).tolist(),
                              "y_mean": task.y_mean, "y_std": task.y_std}
            if not studies:
                continue
            seed = seeds[0]
            network = fit_map_network(task, seed=seed, device=device, **training(task_name))
            result.prior_precisions.setdefault(task_name, {})[k] = table_prior_precisions(network, task, seed=seed,
                                                                                           smoke=smoke)
            if position == 0:
                result.studies[task_name] = {
                    "split": k, "seed": seed,
                    "kernel": kernel_study(network, task, settings["prior_precisions"], seed=seed),
                    "underfitting": underfitting_study(network, task, settings["prior_precisions"],
                                                       num_samples=settings["study_num_samples"], seed=seed,
                                                       progress=progress),
                }
    table.wall_seconds = time.perf_counter() - start
    table.aggregates = aggregate(table.rows)
    table.metadata.update({"methods": methods, "seeds": seeds, "datasets": dataset_list, "toy": toy,
                           "splits": {**({TOY_TASK: list(range(settings["splits"]))} if toy else {}), **split_lists},
                           "smoke": smoke, "train_noise_scale": TRAIN_NOISE_SCALE, "tune_noise": True})
    result.metadata = {"wall_seconds": table.wall_seconds, "smoke": smoke}
    return result
