r"""Stochastic variational inference through Pyro's ``ELBOModule`` route.

``loss = TraceMeanField_ELBO(...)(model, guide)`` is an ``nn.Module``; a plain ``torch.optim`` optimiser steps
``loss.parameters()`` and checkpoints are ``state_dict``s. Each step minimises the minibatch estimate of

.. math::

    -\mathcal L_\beta = -\frac{N}{B} \sum_{i \in \text{batch}} \mathbb E_q[\log p(y_i \mid x_i, \theta)]
    + \beta_t\, \mathrm{KL}(q(\theta) \,\|\, p(\theta)),

where the N/B factor comes from the model's data plate (``model(x, y, num_data=N)``) and
:math:`\beta_t = \beta \min(1, (t+1)/T_\text{anneal})` is the linearly annealed KL weight.

With ``distributed=True`` the loop runs data-parallel on an initialised ``torch.distributed`` process group (one
process per rank, launched by ``torchrun``): the loss module is wrapped in ``DistributedDataParallel``, each rank
takes its DistributedSampler shard of every epoch's permutation, ``batch_size`` stays the global minibatch size
(``batch_size // world_size`` rows per rank and step) and every rank's data plate scales by the full N, so each rank's
loss is an unbiased estimate of the full-data negative ELBO and DDP's gradient average is too; see
:mod:`pyro_lowrank.inference.distributed` for the argument.

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
from pyro_lowrank.guides import LRVDGuide, effective_ranks, prune_ranks, replace_in_optimizer, resize_ranks

from . import distributed as _dist
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
    effective_ranks : list of dict
        With an :class:`~pyro_lowrank.guides.LRVDGuide`: per epoch, the number of components of each rank-wise
        factor pair (keyed by its A site) whose score is below ``prune_tau``, read at the end of the epoch before
        any pruning.
    ranks : list of dict
        With an LRVDGuide: per epoch, the rank each pair has after that epoch's pruning.
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
    effective_ranks: list[dict[str, int]] = field(default_factory=list)
    ranks: list[dict[str, int]] = field(default_factory=list)


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
    distributed: bool = False,
    prune_every: int | None = None,
    prune_tau: float = 3.0,
    prune_start: int = 0,
    min_rank: int = 1,
    prune_score: str = "median",
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
        Epochs, minibatch size, learning rate of the default Adam optimiser. With ``distributed=True``,
        ``batch_size`` is the global minibatch size B: each of the W ranks takes ``B // W`` rows per step, so a
        W-process run takes as many steps per epoch as a one-process run.
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
        Seeds Pyro's RNGs and the minibatch shuffling. With ``distributed=True`` rank 0's value (a random one when
        None) is used everywhere: rank r seeds Pyro with ``seed + r`` (its own noise) and the shuffle with ``seed``
        (the same permutation on every rank, which the DistributedSampler shards).
    progress : bool
        Show a tqdm progress bar over epochs (on rank 0 only).
    callback : callable, optional
        ``callback(epoch, record)`` after each epoch (after the checkpoint); returning ``True`` stops training. With
        ``distributed=True`` it runs on every rank (so it may use collectives) and any rank's ``True`` stops all.
    distributed : bool
        Data-parallel training over the initialised default ``torch.distributed`` process group (see the module
        docstring): the reported ``train_loss`` is the mean over ranks, the validation NLL is sharded over the ranks
        and all-reduced (so early stopping decides the same everywhere), a non-finite loss on any rank raises
        :class:`~pyro_lowrank.TrainingDivergedError` on every rank, and rank 0 alone writes the checkpoint (the
        unwrapped loss module's ``state_dict``, so it resumes with any number of processes; ``checkpoint_path``
        must be visible to every rank). Every trainable parameter must receive a gradient in every step (DDP's
        rule without ``find_unused_parameters``).
    prune_every : int, optional
        Rank pruning for low-rank variational dropout (needs an :class:`~pyro_lowrank.guides.LRVDGuide`): at the end
        of every ``prune_every``-th epoch from epoch ``prune_start`` on (epochs counted from 1), apply the gauge fix
        and :func:`~pyro_lowrank.guides.prune_ranks` with ``prune_tau`` and ``min_rank``, and point the optimiser at
        the smaller parameters (its moments sliced to the kept components). A pruning that removes components
        also resets the validation best (the earlier best state has other shapes; the pruned model is a new
        model), and checkpoints record the ranks so that a resume rebuilds the shapes first.
    prune_tau : float
        Threshold on the rank score log alpha_k (components below it are kept).
    prune_start : int
        First epoch (counted from 1) at which pruning may happen.
    min_rank : int
        Components kept per factor pair at least.
    prune_score : {"median", "norm"}
        The rank score (:func:`~pyro_lowrank.guides.rank_log_alpha`): BayesLoRA's medians, or root-mean-square
        entries (better for ReLU networks trained from scratch). ``FitResult.effective_ranks`` uses it too.

    Returns
    -------
    FitResult

    Raises
    ------
    ValueError
        Bad arguments (including a ``batch_size`` that is not a multiple of ``world_size`` when distributed), or
        NaN/Inf in the data.
    RuntimeError
        ``distributed=True`` without an initialised process group.
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
    lrvd = isinstance(guide, LRVDGuide)
    if prune_score not in ("median", "norm"):
        raise ValueError(f"prune_score must be 'median' or 'norm', got {prune_score!r}")
    if prune_every is not None:
        check_positive_int(prune_every, "prune_every")
        if not lrvd:
            raise ValueError(f"prune_every needs an LRVDGuide (rank-wise variances to score), got "
                             f"{type(guide).__name__}")
        if distributed:
            raise ValueError("prune_every is not supported with distributed=True (the DDP wrapper would have to be "
                             "rebuilt on every rank after each pruning); prune between distributed runs instead")
        if isinstance(prune_start, bool) or not isinstance(prune_start, int) or prune_start < 0:
            raise ValueError(f"prune_start must be an integer >= 0, got {prune_start!r}")
        if not (isinstance(prune_tau, (int, float)) and math.isfinite(prune_tau)):
            raise ValueError(f"prune_tau must be a finite log-alpha threshold, got {prune_tau!r}")
        if isinstance(min_rank, bool) or not isinstance(min_rank, int) or min_rank < 1:
            raise ValueError(f"min_rank must be an integer >= 1, got {min_rank!r}")
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
    rank, world_size = _dist.require_process_group(batch_size) if distributed else (0, 1)
    shard = _dist.shard_positions(num_data, rank, world_size) if distributed else None
    local_rows = shard.numel() if distributed else num_data  # ceil(N / W) rows per rank and epoch
    local_batch = batch_size // world_size
    steps_per_epoch = math.ceil(local_rows / local_batch)
    anneal_steps = int(round(kl_anneal_epochs * steps_per_epoch))

    if distributed:  # rank 0's seed everywhere: the same permutation on every rank, different noise per rank
        seed = _dist.broadcast_object(seed if seed is not None else int(torch.randint(2**31, ()).item()))
        pyro.set_rng_seed(seed + rank)
    elif seed is not None:
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
    exists = checkpoint_path is not None and os.path.exists(checkpoint_path)
    if resume and (_dist.broadcast_object(exists) if distributed else exists):  # rank 0 decides for everyone
        best_state = _restore(checkpoint_path, loss_module, opt, shuffle, result, num_data, batch_size, rank,
                              world_size, model, guide)
        params = [p for p in loss_module.parameters() if p.requires_grad]  # a pruned checkpoint has new ones
        logger.info("resumed from %s at epoch %d", checkpoint_path, result.epochs_run)
    forward = _dist.wrap_ddp(loss_module) if distributed else loss_module  # state stays with the unwrapped module
    last_good = _snapshot(loss_module, opt, result.epochs_run - 1)  # after DDP's broadcast: the same on every rank
    first_step = result.steps

    def save() -> None:
        _save(checkpoint_path, loss_module, opt, shuffle, result, best_state, num_data, batch_size, world_size,
              _pair_ranks(guide) if lrvd else None)

    epochs = range(result.epochs_run, num_epochs) if not result.stopped_early else range(0)
    bar = tqdm(epochs, desc="fit", disable=not progress or rank != 0, leave=False)
    for epoch in bar:
        start = time.perf_counter()
        forward.train()
        perm = torch.randperm(num_data, generator=shuffle)
        rows = perm[shard] if distributed else perm  # this rank's DistributedSampler shard of the permutation
        epoch_loss = 0.0
        for begin in range(0, local_rows, local_batch):
            index = rows[begin : begin + local_batch].to(x.device)
            beta = linear_kl_schedule(result.steps, kl_weight, anneal_steps)
            opt.zero_grad(set_to_none=True)
            error = None
            try:
                with KLWeight(beta):
                    loss = forward(x[index], y[index], num_data=num_data)
                value = float(loss.detach())
            except Exception as exc:  # distributed: any failure must reach the other ranks before anyone leaves
                if not distributed:
                    if not isinstance(exc, ValueError):
                        raise
                    _value_error(exc, result.steps == first_step, loss_module, opt, last_good, result, epoch)
                error, value = exc, math.nan
            if distributed:  # every rank learns of a failure anywhere, so all stop together (nobody deadlocks)
                value, _, value_errors, other_errors = _dist.reduce_step_loss(value, error)
                if error is not None and not isinstance(error, ValueError):
                    raise error  # this rank's own failure, now that every rank has learned of it
                if other_errors:
                    raise RuntimeError(f"the training step raised on another rank at step {result.steps}, epoch "
                                       f"{epoch} (see that rank's traceback); stopping every rank")
                if value_errors:
                    cause = error if error is not None else ValueError(
                        "the model or guide raised a ValueError on another rank (see its traceback)")
                    _value_error(cause, result.steps == first_step, loss_module, opt, last_good, result, epoch)
            if not math.isfinite(value):
                _diverged(loss_module, opt, last_good, result, epoch, value, "loss")
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(params, clip_grad_norm if clip_grad_norm is not None else math.inf)
            if not bool(torch.isfinite(norm)):  # DDP-averaged gradients: the same verdict on every rank
                _diverged(loss_module, opt, last_good, result, epoch, value, "gradient")
            opt.step()
            result.steps += 1
            epoch_loss += value
        result.train_loss.append(epoch_loss / steps_per_epoch / num_data)
        record = {"epoch": epoch, "train_loss": result.train_loss[-1], "kl_weight": beta}
        if not all(bool(torch.isfinite(p).all()) for p in params):  # never prune, validate or snapshot NaNs
            _diverged(loss_module, opt, last_good, result, epoch, epoch_loss, "parameters")
        if lrvd:  # before validation, so that the model validated (and kept as the best) is the pruned one
            result.effective_ranks.append(effective_ranks(model, guide, prune_tau, prune_score))
            done = epoch + 1
            if prune_every is not None and done >= prune_start and (done - prune_start) % prune_every == 0:
                pruning = prune_ranks(model, guide, prune_tau, min_rank=min_rank, score=prune_score)
                if pruning.changed:
                    replace_in_optimizer(opt, pruning.replaced)
                    params = [p for p in loss_module.parameters() if p.requires_grad]
                    best_state, result.best_val_nll, result.best_epoch, result.bad_epochs = None, math.inf, None, 0
                    clear_cache = getattr(elbo, "clear_cache", None)
                    if clear_cache is not None:  # graphs compiled for the old parameter tensors are dead
                        clear_cache()
            result.ranks.append(_pair_ranks(guide))
            record["rank"] = float(sum(result.ranks[-1].values()))
        if val_data is not None:
            forward.eval()
            if distributed:
                val_nll = _dist.sharded_val_nll(model, guide, x_val, y_val, val_num_samples)
            else:
                val_nll = float(-log_predictive_density(model, guide, x_val, y_val, val_num_samples).mean())
            result.val_nll.append(val_nll)
            record["val_nll"] = val_nll
            if val_nll < result.best_val_nll:
                result.best_val_nll, result.best_epoch, result.bad_epochs = val_nll, epoch, 0
                best_state = copy.deepcopy(loss_module.state_dict())
            else:
                result.bad_epochs += 1
        result.epochs_run = epoch + 1
        result.seconds += time.perf_counter() - start
        last_good = _snapshot(loss_module, opt, epoch)
        result.stopped_early = patience is not None and result.bad_epochs >= patience
        if checkpoint_path is not None and (result.epochs_run % checkpoint_every == 0 or result.stopped_early
                                            or result.epochs_run == num_epochs):
            save()
        bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k != "epoch"})
        logger.debug("epoch %d: %s", epoch, record)
        if not result.stopped_early and callback is not None:
            stop = bool(callback(epoch, record))
            if (_dist.any_rank(stop) if distributed else stop):
                result.stopped_early = True  # persist the callback's stop so that a resume does not train on
                if checkpoint_path is not None:
                    save()
        if result.stopped_early:
            break
    bar.close()
    if best_state is not None:
        loss_module.load_state_dict(best_state)
    return result


def _snapshot(loss_module: torch.nn.Module, opt: torch.optim.Optimizer, epoch: int) -> dict[str, Any]:
    return {"loss_module": copy.deepcopy(loss_module.state_dict()), "optimizer": copy.deepcopy(opt.state_dict()),
            "epoch": epoch}


def _value_error(error: ValueError, first: bool, loss_module, opt, last_good, result: FitResult, epoch: int) -> None:
    # After a step, a ValueError from Pyro's argument validation (a NaN parameter, a scale that underflowed to 0) is
    # divergence; before any step it is a genuine error of the model or the data.
    if first:
        raise error
    _diverged(loss_module, opt, last_good, result, epoch, math.nan, f"parameters ({error})", error)


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


def _pair_ranks(guide: LRVDGuide) -> dict[str, int]:
    return {pair: int(guide.log_variance(pair).numel()) for pair in guide.pairs}


def _save(path, loss_module, opt, shuffle, result, best_state, num_data, batch_size, world_size=1,
          ranks=None) -> None:
    rank_rng = _dist.gather_rng_states() if world_size > 1 else None  # collective: on every rank

    def write() -> None:
        state = {
            "loss_module": loss_module.state_dict(),  # the unwrapped module's: no DDP "module." prefixes
            "optimizer": opt.state_dict(),
            "shuffle_rng": shuffle.get_state(),
            "rng": pyro.util.get_rng_state(),
            "result": asdict(result),
            "best_state": best_state,
            "num_data": num_data,
            "batch_size": batch_size,
            "world_size": world_size,
        }
        if rank_rng is not None:
            state["rank_rng"] = rank_rng
        if ranks is not None:
            state["ranks"] = ranks
        save_checkpoint(state, path)

    if world_size > 1:
        _dist.run_on_main(write, f"write the checkpoint {path}")  # rank 0 writes; the others wait for it
    else:
        write()


def _restore(path, loss_module, opt, shuffle, result: FitResult, num_data: int, batch_size: int, rank: int = 0,
             world_size: int = 1, model=None, guide=None):
    state = load_checkpoint(path)
    for key, expected in (("num_data", num_data), ("batch_size", batch_size)):
        if state[key] != expected:
            raise ValueError(f"cannot resume from {path}: it was written with {key}={state[key]}, got {expected}")
    if state.get("ranks") is not None and isinstance(guide, LRVDGuide):  # pruned: give the fresh modules its shapes
        replace_in_optimizer(opt, resize_ranks(model, guide, state["ranks"]).replaced)
    loss_module.load_state_dict(state["loss_module"])
    opt.load_state_dict(state["optimizer"])
    shuffle.set_state(state["shuffle_rng"])
    if world_size > 1:
        _dist.restore_rank_rng(state, rank, world_size)
    else:
        pyro.util.set_rng_state(state["rng"])
    for key, value in state["result"].items():
        setattr(result, key, value)
    return state["best_state"]
