r"""Stochastic variational inference through Pyro's ``ELBOModule`` route.

``loss = TraceMeanField_ELBO(...)(model, guide)`` is an ``nn.Module``; a plain ``torch.optim`` optimiser steps
``loss.parameters()`` and checkpoints are ``state_dict``s. Each step minimises the minibatch estimate of

.. math::

    -\mathcal L_\beta = -\frac{N}{B} \sum_{i \in \text{batch}} \mathbb E_q[\log p(y_i \mid x_i, \theta)]
    + \beta_t\, \mathrm{KL}(q(\theta) \,\|\, p(\theta)),

where the N/B factor comes from the model's data plate (``model(x, y, num_data=N)``) and
:math:`\beta_t = \beta \min(1, (t+1)/T_\text{anneal})` is the linearly annealed KL weight.

Robustness: inputs with NaN/Inf are refused up front; a non-finite loss or gradient stops training, restores the
state of the end of the last finished epoch (all of whose steps were finite) and raises
:class:`~pyro_lowrank.TrainingDivergedError`. Checkpoints are atomic and carry the optimiser, both RNG streams and
the loop counters, so resuming reproduces an uninterrupted run exactly (on CPU).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

import pyro
import torch
from pyro.infer import ELBO, TraceMeanField_ELBO
from tqdm import tqdm

from pyro_lowrank._validation import check_positive_int, check_xy
from pyro_lowrank.errors import TrainingDivergedError

from .checkpoint import load_checkpoint, save_checkpoint
from .kl_weight import KLWeight, linear_kl_schedule
from .predict import log_predictive_density

__all__ = ["FitResult", "fit"]

logger = logging.getLogger(__name__)

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]


@dataclass
class FitResult:
    """What :func:`fit` did.

    Attributes
    ----------
    train_loss : list of float
        Per epoch, the mean negative ELBO per data point.
    val_nll : list of float
        Per epoch, the validation predictive NLL per data point (empty without validation data).
    best_epoch : int or None
        Epoch whose state was restored (best validation NLL), if validation data were given.
    epochs_run, steps : int
        Epochs and optimisation steps completed (including those before a resume).
    seconds : float
        Training wall time (summed across resumes).
    stopped_early : bool
        Whether validation early stopping (or the callback) ended training.
    """

    train_loss: list[float] = field(default_factory=list)
    val_nll: list[float] = field(default_factory=list)
    best_epoch: int | None = None
    epochs_run: int = 0
    steps: int = 0
    seconds: float = 0.0
    stopped_early: bool = False
    best_val_nll: float = math.inf
    bad_epochs: int = 0


def fit(
    model: torch.nn.Module,
    guide: torch.nn.Module,
    data: tuple[torch.Tensor, torch.Tensor],
    *,
    val_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    num_epochs: int = 100,
    batch_size: int = 128,
    lr: float = 1e-3,
    optimizer: OptimizerFactory | None = None,
    elbo: ELBO | None = None,
    num_particles: int = 1,
    vectorize_particles: bool = True,
    max_plate_nesting: int | None = None,
    kl_weight: float = 1.0,
    kl_anneal_epochs: float = 0.0,
    patience: int | None = None,
    val_num_samples: int = 16,
    clip_grad_norm: float | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
    resume: bool = False,
    seed: int | None = None,
    progress: bool = True,
    callback: Callable[[int, dict[str, float]], bool | None] | None = None,
) -> FitResult:
    """Train ``guide`` (and any parameters of ``model``) by minibatch SVI.

    Parameters
    ----------
    model, guide : nn.Module
        A Pyro model called as ``model(x, y, num_data=N)`` (its data plate scales the likelihood by N / batch) and
        its guide, both ``nn.Module`` s (``PyroModule`` / autoguides).
    data : (x, y)
        Training tensors; the first dimension indexes data points.
    val_data : (x, y), optional
        Validation tensors: the predictive NLL (``val_num_samples`` draws) is computed each epoch and the best
        epoch's state is restored at the end.
    num_epochs, batch_size, lr : int, int, float
        Epochs, minibatch size, learning rate of the default Adam optimiser.
    optimizer : callable, optional
        ``params -> torch.optim.Optimizer``; default ``Adam(params, lr)``.
    elbo : pyro.infer.ELBO, optional
        Default ``TraceMeanField_ELBO(num_particles, vectorize_particles, max_plate_nesting)`` (analytic KL where
        registered, Monte Carlo otherwise).
    kl_weight : float
        beta, the final weight of the KL term.
    kl_anneal_epochs : float
        Length of the linear warm-up of beta from ~0 to ``kl_weight`` (0 = no annealing).
    patience : int, optional
        Stop after this many epochs without a better validation NLL (needs ``val_data``).
    clip_grad_norm : float, optional
        Clip the total gradient norm to this value.
    checkpoint_path : path, optional
        Write an atomic checkpoint here every ``checkpoint_every`` epochs (and at the end).
    resume : bool
        Continue from ``checkpoint_path`` when it exists (same data and settings).
    seed : int, optional
        Seeds Pyro's RNGs and the minibatch shuffling.
    progress : bool
        Show a tqdm progress bar over epochs.
    callback : callable, optional
        ``callback(epoch, record)`` after each epoch (after the checkpoint); returning ``True`` stops training.

    Returns
    -------
    FitResult

    Raises
    ------
    ValueError
        Bad arguments, or NaN/Inf in the data.
    TrainingDivergedError
        The loss or its gradient became non-finite.
    """
    x, y = check_xy(data, "data")
    if val_data is not None:
        x_val, y_val = check_xy(val_data, "val_data")
    num_epochs = check_positive_int(num_epochs, "num_epochs")
    batch_size = check_positive_int(batch_size, "batch_size")
    checkpoint_every = check_positive_int(checkpoint_every, "checkpoint_every")
    if patience is not None and val_data is None:
        raise ValueError("patience needs val_data: early stopping monitors the validation NLL")
    if not (kl_weight >= 0 and math.isfinite(kl_weight)):
        raise ValueError(f"kl_weight must be finite and >= 0, got {kl_weight!r}")
    if not (kl_anneal_epochs >= 0 and math.isfinite(kl_anneal_epochs)):
        raise ValueError(f"kl_anneal_epochs must be finite and >= 0, got {kl_anneal_epochs!r}")
    num_particles = check_positive_int(num_particles, "num_particles")
    if patience is not None:
        check_positive_int(patience, "patience")
    if clip_grad_norm is not None and not clip_grad_norm > 0:
        raise ValueError(f"clip_grad_norm must be > 0 (or None for no clipping), got {clip_grad_norm!r}")
    check_model_data = getattr(model, "check_data", None)
    if check_model_data is not None:  # the model's own checks (target values, shapes), once, before training
        check_model_data(x, y)
        if val_data is not None:
            check_model_data(x_val, y_val)
    if not pyro.settings.get("module_local_params"):
        raise RuntimeError(
            "fit uses the ELBOModule route and needs pyro.settings.set(module_local_params=True) before the model "
            "and guide are built (importing pyro_lowrank sets it)"
        )
    num_data = x.shape[0]
    steps_per_epoch = math.ceil(num_data / batch_size)
    anneal_steps = int(round(kl_anneal_epochs * steps_per_epoch))

    if seed is not None:
        pyro.set_rng_seed(seed)
    shuffle = torch.Generator().manual_seed(seed if seed is not None else int(torch.randint(2**62, ()).item()))
    if elbo is None:
        elbo = TraceMeanField_ELBO(
            num_particles=num_particles,
            vectorize_particles=vectorize_particles and num_particles > 1,
            max_plate_nesting=max_plate_nesting if max_plate_nesting is not None else float("inf"),
        )
    loss_module = elbo(model, guide)
    with torch.no_grad():  # lazy guide set-up and plate-nesting guess, before any state is restored
        loss_module(x[:batch_size], y[:batch_size], num_data=num_data)
    params = [p for p in loss_module.parameters() if p.requires_grad]
    opt = optimizer(params) if optimizer is not None else torch.optim.Adam(params, lr=lr)

    result = FitResult()
    best_state = None
    if resume and checkpoint_path is not None and os.path.exists(checkpoint_path):
        best_state = _restore(checkpoint_path, loss_module, opt, shuffle, result, num_data, batch_size)
        logger.info("resumed from %s at epoch %d", checkpoint_path, result.epochs_run)
    last_good = _snapshot(loss_module, opt, result.epochs_run - 1)
    first_step = result.steps

    epochs = range(result.epochs_run, num_epochs) if not result.stopped_early else range(0)
    bar = tqdm(epochs, desc="fit", disable=not progress, leave=False)
    for epoch in bar:
        start = time.perf_counter()
        loss_module.train()
        perm = torch.randperm(num_data, generator=shuffle)
        epoch_loss = 0.0
        for begin in range(0, num_data, batch_size):
            index = perm[begin : begin + batch_size].to(x.device)
            beta = linear_kl_schedule(result.steps, kl_weight, anneal_steps)
            opt.zero_grad(set_to_none=True)
            try:
                with KLWeight(beta):
                    loss = loss_module(x[index], y[index], num_data=num_data)
            except ValueError as error:
                # After a step, a ValueError from Pyro's argument validation (a NaN parameter, a scale that
                # underflowed to 0) is divergence; before any step it is a genuine error of the model or the data.
                if result.steps == first_step:
                    raise
                _diverged(loss_module, opt, last_good, result, epoch, math.nan, f"parameters ({error})", error)
            value = float(loss.detach())
            if not math.isfinite(value):
                _diverged(loss_module, opt, last_good, result, epoch, value, "loss")
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(params, clip_grad_norm if clip_grad_norm is not None else math.inf)
            if not bool(torch.isfinite(norm)):
                _diverged(loss_module, opt, last_good, result, epoch, value, "gradient")
            opt.step()
            result.steps += 1
            epoch_loss += value
        result.train_loss.append(epoch_loss / steps_per_epoch / num_data)
        record = {"epoch": epoch, "train_loss": result.train_loss[-1], "kl_weight": beta}
        if val_data is not None:
            loss_module.eval()
            val_nll = float(-log_predictive_density(model, guide, x_val, y_val, val_num_samples).mean())
            result.val_nll.append(val_nll)
            record["val_nll"] = val_nll
            if val_nll < result.best_val_nll:
                result.best_val_nll, result.best_epoch, result.bad_epochs = val_nll, epoch, 0
                best_state = copy.deepcopy(loss_module.state_dict())
            else:
                result.bad_epochs += 1
        if not all(bool(torch.isfinite(p).all()) for p in params):  # never snapshot a non-finite state
            _diverged(loss_module, opt, last_good, result, epoch, epoch_loss, "parameters")
        result.epochs_run = epoch + 1
        result.seconds += time.perf_counter() - start
        last_good = _snapshot(loss_module, opt, epoch)
        result.stopped_early = patience is not None and result.bad_epochs >= patience
        if checkpoint_path is not None and (result.epochs_run % checkpoint_every == 0 or result.stopped_early
                                            or result.epochs_run == num_epochs):
            _save(checkpoint_path, loss_module, opt, shuffle, result, best_state, num_data, batch_size)
        bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k != "epoch"})
        logger.debug("epoch %d: %s", epoch, record)
        if not result.stopped_early and callback is not None and callback(epoch, record):
            result.stopped_early = True  # persist the callback's stop so that a resume does not train on
            if checkpoint_path is not None:
                _save(checkpoint_path, loss_module, opt, shuffle, result, best_state, num_data, batch_size)
        if result.stopped_early:
            break
    bar.close()
    if best_state is not None:
        loss_module.load_state_dict(best_state)
    return result


def _snapshot(loss_module: torch.nn.Module, opt: torch.optim.Optimizer, epoch: int) -> dict[str, Any]:
    return {"loss_module": copy.deepcopy(loss_module.state_dict()), "optimizer": copy.deepcopy(opt.state_dict()),
            "epoch": epoch}


def _diverged(loss_module, opt, last_good, result: FitResult, epoch: int, value: float, what: str,
              cause: BaseException | None = None) -> None:
    loss_module.load_state_dict(last_good["loss_module"])
    opt.load_state_dict(last_good["optimizer"])
    where = "the initial state" if last_good["epoch"] < 0 else f"the state at the end of epoch {last_good['epoch']}"
    raise TrainingDivergedError(
        f"the ELBO {what} became non-finite (loss={value}) at step {result.steps}, epoch {epoch}; restored {where} "
        "(the last state whose steps were all finite). Try a smaller lr, clip_grad_norm, a smaller initial guide "
        "scale or kl_anneal_epochs.",
        step=result.steps,
        epoch=epoch,
        loss=value,
    ) from cause


def _save(path, loss_module, opt, shuffle, result, best_state, num_data, batch_size) -> None:
    save_checkpoint(
        {
            "loss_module": loss_module.state_dict(),
            "optimizer": opt.state_dict(),
            "shuffle_rng": shuffle.get_state(),
            "rng": pyro.util.get_rng_state(),
            "result": asdict(result),
            "best_state": best_state,
            "num_data": num_data,
            "batch_size": batch_size,
        },
        path,
    )


def _restore(path, loss_module, opt, shuffle, result: FitResult, num_data: int, batch_size: int):
    state = load_checkpoint(path)
    for key, expected in (("num_data", num_data), ("batch_size", batch_size)):
        if state[key] != expected:
            raise ValueError(f"cannot resume from {path}: it was written with {key}={state[key]}, got {expected}")
    loss_module.load_state_dict(state["loss_module"])
    opt.load_state_dict(state["optimizer"])
    shuffle.set_state(state["shuffle_rng"])
    pyro.util.set_rng_state(state["rng"])
    for key, value in state["result"].items():
        setattr(result, key, value)
    return state["best_state"]
