"""Maximum-likelihood training of a deterministic network (the accuracy/speed reference and the SVD-init source).

Losses are the negative log-likelihoods of the matching Pyro likelihoods: cross-entropy (categorical), binary
cross-entropy with logits (Bernoulli) and mean squared error (Gaussian with fixed noise, up to constants).
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from pyro_lowrank._validation import check_finite, check_positive_int

__all__ = ["LOSSES", "train_deterministic"]

LOSSES = {
    "categorical": lambda f, y: F.cross_entropy(f, y.long()),
    "bernoulli": lambda f, y: F.binary_cross_entropy_with_logits(f.squeeze(-1), y.to(f.dtype)),
    "gaussian": lambda f, y: F.mse_loss(f.squeeze(-1), y.to(f.dtype)),
}


def train_deterministic(
    net: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor],
    *,
    likelihood: str = "categorical",
    num_epochs: int = 100,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    seed: int | None = None,
    progress: bool = True,
) -> float:
    """Train ``net`` with Adam on minibatches; returns the training wall time in seconds.

    Parameters
    ----------
    net : nn.Module
        Maps ``x`` to the output ``f`` (logits or means).
    data : (x, y)
        Training tensors.
    likelihood : {"categorical", "bernoulli", "gaussian"}
        Selects the loss.
    """
    if likelihood not in LOSSES:
        raise ValueError(f"likelihood must be one of {sorted(LOSSES)}, got {likelihood!r}")
    x, y = data
    check_finite(x, "data[0] (x)")
    num_epochs = check_positive_int(num_epochs, "num_epochs")
    batch_size = check_positive_int(batch_size, "batch_size")
    loss_fn = LOSSES[likelihood]
    generator = torch.Generator().manual_seed(seed if seed is not None else int(torch.randint(2**62, ()).item()))
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    start = time.perf_counter()
    net.train()
    for _ in tqdm(range(num_epochs), desc="deterministic", disable=not progress, leave=False):
        perm = torch.randperm(x.shape[0], generator=generator)
        for begin in range(0, x.shape[0], batch_size):
            index = perm[begin : begin + batch_size].to(x.device)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(x[index]), y[index])
            if not math.isfinite(float(loss.detach())):
                raise FloatingPointError(f"deterministic training loss became non-finite ({float(loss)})")
            loss.backward()
            opt.step()
    net.eval()
    return time.perf_counter() - start
