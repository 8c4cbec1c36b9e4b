r"""Maximum-likelihood training of a deterministic network (the accuracy/speed reference and the SVD-init source).

Losses are the negative log-likelihoods of the matching Pyro likelihoods: cross-entropy (categorical), binary
cross-entropy with logits (Bernoulli) and mean squared error (Gaussian with fixed noise, up to constants).

Optional validation early stopping (as in :func:`pyro_lowrank.inference.fit`): after every epoch the *same* loss is
evaluated on the validation data, :math:`\ell_\text{val}(t) = \frac{1}{N_\text{val}} \sum_i \ell(f_{\theta_t}(x_i),
y_i)`, with the network in eval mode (dropout off) and without gradients. The state of the epoch
:math:`t^\star = \arg\min_t \ell_\text{val}(t)` (first minimum; strict improvement) is kept as a deep copy and
restored at the end; with ``patience`` :math:`p`, training stops once :math:`p` consecutive epochs did not improve on
it. The evaluation consumes no random numbers, so the trajectory up to the stop equals that of a run without
validation data.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from pyro_lowrank._validation import check_finite, check_positive_int, check_xy

__all__ = ["LOSSES", "DeterministicFitResult", "fit_deterministic", "train_deterministic", "validation_loss"]

LOSSES = {
    "categorical": lambda f, y: F.cross_entropy(f, y.long()),
    "bernoulli": lambda f, y: F.binary_cross_entropy_with_logits(f.squeeze(-1), y.to(f.dtype)),
    "gaussian": lambda f, y: F.mse_loss(f.squeeze(-1), y.to(f.dtype)),
}


@dataclass
class DeterministicFitResult:
    """What :func:`fit_deterministic` did.

    Attributes
    ----------
    seconds : float
        Training wall time (validation passes included).
    epochs_run : int
        Epochs completed (``< num_epochs`` when early stopping ended training).
    train_loss : list of float
        Per epoch, the mean minibatch loss.
    val_loss : list of float
        Per epoch, the validation loss (empty without validation data).
    best_epoch : int or None
        Epoch whose state was restored (lowest validation loss), if validation data were given.
    best_val_loss : float
        Its validation loss (``inf`` without validation data).
    stopped_early : bool
        Whether ``patience`` ended training.
    """

    seconds: float = 0.0
    epochs_run: int = 0
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int | None = None
    best_val_loss: float = math.inf
    stopped_early: bool = False


@torch.no_grad()
def validation_loss(net: nn.Module, data: tuple[torch.Tensor, torch.Tensor], *, likelihood: str = "categorical",
                    batch_size: int = 1024) -> float:
    r"""Mean loss :math:`\frac1N \sum_i \ell(f(x_i), y_i)` of ``net`` on ``data`` in eval mode, without gradients
    (chunks of ``batch_size`` weighted by their size); the network's train/eval mode is restored afterwards."""
    if likelihood not in LOSSES:
        raise ValueError(f"likelihood must be one of {sorted(LOSSES)}, got {likelihood!r}")
    loss_fn = LOSSES[likelihood]
    x, y = data
    was_training = net.training
    net.eval()
    try:
        total = 0.0
        for begin in range(0, x.shape[0], batch_size):
            xb, yb = x[begin : begin + batch_size], y[begin : begin + batch_size]
            total += float(loss_fn(net(xb), yb)) * xb.shape[0]
    finally:
        net.train(was_training)
    return total / x.shape[0]


def fit_deterministic(
    net: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor],
    *,
    likelihood: str = "categorical",
    num_epochs: int = 100,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    val_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    patience: int | None = None,
    seed: int | None = None,
    progress: bool = True,
) -> DeterministicFitResult:
    """Train ``net`` with Adam on minibatches, optionally with validation early stopping (module docstring).

    Parameters
    ----------
    net : nn.Module
        Maps ``x`` to the output ``f`` (logits or means).
    data : (x, y)
        Training tensors.
    likelihood : {"categorical", "bernoulli", "gaussian"}
        Selects the loss (also the validation loss).
    num_epochs, batch_size, lr, weight_decay : training settings (Adam).
    val_data : (x, y), optional
        Validation tensors: their loss is computed after every epoch and the best epoch's state is restored at the
        end (also when ``patience`` is None, as :func:`~pyro_lowrank.inference.fit` does).
    patience : int, optional
        Stop after this many consecutive epochs without a lower validation loss (needs ``val_data``).
    seed : int, optional
        Seed of the minibatch order.
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    DeterministicFitResult
    """
    if likelihood not in LOSSES:
        raise ValueError(f"likelihood must be one of {sorted(LOSSES)}, got {likelihood!r}")
    x, y = data
    check_finite(x, "data[0] (x)")
    num_epochs = check_positive_int(num_epochs, "num_epochs")
    batch_size = check_positive_int(batch_size, "batch_size")
    if val_data is not None:
        val_data = check_xy(val_data, "val_data")
    if patience is not None:
        if val_data is None:
            raise ValueError("patience needs val_data: early stopping monitors the validation loss")
        patience = check_positive_int(patience, "patience")
    loss_fn = LOSSES[likelihood]
    generator = torch.Generator().manual_seed(seed if seed is not None else int(torch.randint(2**62, ()).item()))
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    result = DeterministicFitResult()
    best_state = None
    bad_epochs = 0
    start = time.perf_counter()
    net.train()
    for epoch in tqdm(range(num_epochs), desc="deterministic", disable=not progress, leave=False):
        perm = torch.randperm(x.shape[0], generator=generator)
        epoch_loss, steps = 0.0, 0
        for begin in range(0, x.shape[0], batch_size):
            index = perm[begin : begin + batch_size].to(x.device)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(x[index]), y[index])
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"deterministic training loss became non-finite ({value})")
            loss.backward()
            opt.step()
            epoch_loss, steps = epoch_loss + value, steps + 1
        result.train_loss.append(epoch_loss / steps)
        result.epochs_run = epoch + 1
        if val_data is not None:
            val_loss = validation_loss(net, val_data, likelihood=likelihood, batch_size=max(batch_size, 1024))
            result.val_loss.append(val_loss)
            if val_loss < result.best_val_loss:
                result.best_val_loss, result.best_epoch, bad_epochs = val_loss, epoch, 0
                best_state = copy.deepcopy(net.state_dict())
            else:
                bad_epochs += 1
            if patience is not None and bad_epochs >= patience:
                result.stopped_early = True
                break
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    result.seconds = time.perf_counter() - start
    return result


def train_deterministic(
    net: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor],
    *,
    likelihood: str = "categorical",
    num_epochs: int = 100,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    val_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    patience: int | None = None,
    seed: int | None = None,
    progress: bool = True,
) -> float:
    """Train ``net`` with Adam on minibatches; returns the training wall time in seconds.

    :func:`fit_deterministic` with the same arguments (``val_data``/``patience``: validation early stopping and
    restoring the best epoch), returning only its ``seconds``; use :func:`fit_deterministic` for the epochs run
    and the loss curves.

    Parameters
    ----------
    net : nn.Module
        Maps ``x`` to the output ``f`` (logits or means).
    data : (x, y)
        Training tensors.
    likelihood : {"categorical", "bernoulli", "gaussian"}
        Selects the loss.
    """
    return fit_deterministic(net, data, likelihood=likelihood, num_epochs=num_epochs, batch_size=batch_size, lr=lr,
                             weight_decay=weight_decay, val_data=val_data, patience=patience, seed=seed,
                             progress=progress).seconds
