r"""Runnable example of data-parallel SVI: a low-rank Bayesian MLP on a synthetic three-class problem.

Launch one process per CPU core or GPU with ``torchrun``::

    torchrun --standalone --nproc_per_node=2 -m pyro_lowrank.inference.distributed_example --epochs 20

or as a single process (no ``torchrun``, ``distributed=False``)::

    python -m pyro_lowrank.inference.distributed_example --epochs 20

The data are three Gaussian blobs in the plane, :math:`x_i \mid y_i = k \sim \mathcal N(\mu_k, s^2 I)`, drawn from
a fixed generator so that every rank holds the same N rows; :func:`~pyro_lowrank.inference.fit` shards them. Rank 0
prints one JSON line with the result (validation NLL :math:`-\frac1M \sum_j \log \frac1S \sum_s p(y_j \mid x_j,
\theta_s)` and accuracy of the posterior-mean class probabilities).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Sequence

import torch

import pyro_lowrank  # noqa: F401  (module_local_params=True before the model is built)
from pyro_lowrank.guides import FactorGuide
from pyro_lowrank.models import LowRankMLP

from .distributed import get_rank, get_world_size, init_distributed, is_distributed, shutdown_distributed
from .fit import fit
from .predict import predict

__all__ = ["blobs", "main"]

logger = logging.getLogger(__name__)

_CENTRES = torch.tensor([[2.0, 0.0], [-2.0, 1.0], [0.0, -2.5]])


def blobs(num_data: int, seed: int, spread: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Three Gaussian blobs: :math:`y_i \sim \mathrm{Uniform}\{0,1,2\}`, :math:`x_i \sim \mathcal N(\mu_{y_i},
    s^2 I_2)` with ``spread`` s; the same tensors on every rank for the same ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (num_data,), generator=gen)
    x = _CENTRES[y] + spread * torch.randn(num_data, 2, generator=gen)
    return x, y


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Parse ``argv``, train, and (on rank 0) print the result as one JSON line; returns the result dict."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-data", type=int, default=2048, help="training rows (default 2048)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128, help="global minibatch size, split over ranks")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--hidden", type=int, default=32, help="hidden width")
    parser.add_argument("--rank", type=int, default=2, help="rank of the hidden weight factorisation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", default=None, help="checkpoint path (written by rank 0)")
    parser.add_argument("--resume", action="store_true", help="continue from --checkpoint if it exists")
    parser.add_argument("--backend", choices=["gloo", "nccl"], default=None, help="default: nccl on CUDA, else gloo")
    args = parser.parse_args(argv)

    distributed = "WORLD_SIZE" in os.environ or is_distributed()
    device = init_distributed(args.backend, timeout_s=300) if distributed else torch.device("cpu")
    logging.basicConfig(level=logging.INFO if get_rank() == 0 else logging.WARNING,
                        format=f"[rank {get_rank()}] %(levelname)s %(name)s: %(message)s")
    try:
        x, y = (t.to(device) for t in blobs(args.num_data, seed=1234))
        x_val, y_val = (t.to(device) for t in blobs(max(args.num_data // 4, 1), seed=4321))
        torch.manual_seed(args.seed)  # the same initial model on every rank (DDP broadcasts rank 0's anyway)
        model = LowRankMLP(2, [args.hidden], rank=args.rank, output_rank=2, likelihood="categorical",
                           num_classes=3).to(device)
        guide = FactorGuide(model).to(device)
        result = fit(model, guide, (x, y), val_data=(x_val, y_val), num_epochs=args.epochs,
                     batch_size=args.batch_size, lr=args.lr, seed=args.seed, checkpoint_path=args.checkpoint,
                     resume=args.resume, distributed=distributed, progress=False)
        summary = {"world_size": get_world_size(), "epochs": result.epochs_run, "steps": result.steps,
                   "train_loss": result.train_loss[-1] if result.train_loss else float("nan"),
                   "val_nll": result.best_val_nll, "seconds": result.seconds}
        if get_rank() == 0:
            probs = torch.softmax(predict(model, guide, x_val, 64)["f"], -1).mean(0)
            summary["val_accuracy"] = float((probs.argmax(-1) == y_val).float().mean())
            print(json.dumps(summary))
        if distributed:  # tear the group down together: a rank that leaves while rank 0 still predicts can abort
            torch.distributed.barrier()
        return summary
    finally:
        if distributed:
            shutdown_distributed()


if __name__ == "__main__":
    main()
