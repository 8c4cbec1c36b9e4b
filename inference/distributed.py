r"""Data-parallel SVI on ``torch.distributed``: process-group set-up and the collectives that :func:`fit` uses.

With ``fit(..., distributed=True)`` and W processes (ranks :math:`r = 0, \dots, W-1`), every rank draws the same
permutation :math:`\pi` of the N training rows each epoch (fit's shuffle generator is seeded identically on every
rank) and keeps the :class:`~torch.utils.data.DistributedSampler` shard :math:`\pi_r, \pi_{r+W}, \pi_{r+2W}, \dots`
(padded by repetition so that every shard has :math:`\lceil N / W \rceil` rows). ``batch_size`` B is the *global*
minibatch size: each rank takes :math:`b = \lfloor B / W \rfloor` rows per step, and the union of the W local
minibatches :math:`\mathcal B_t^r` of step t is exactly the minibatch :math:`\mathcal B_t` that a one-process run
with the same seed takes (B rows when W divides B; the last step of an epoch may repeat a few padding rows).
Rank r draws its own noise :math:`\theta^{(r)} \sim q` (Pyro seed ``seed + r``) and evaluates, with the model's data
plate told ``num_data=N``,

.. math::

    \hat{\mathcal L}_r = -\frac{N}{b} \sum_{i \in \mathcal B_t^r} \log p(y_i \mid x_i, \theta^{(r)})
    + \beta_t\, \mathrm{KL}(q \,\|\, p),
    \qquad \mathbb E[\hat{\mathcal L}_r] = -\mathcal L_\beta \ \text{(the full-data negative ELBO)}.

:class:`~torch.nn.parallel.DistributedDataParallel` averages the gradients, so every rank applies
:math:`\nabla \frac1W \sum_r \hat{\mathcal L}_r`, an average of unbiased estimates and therefore unbiased. Without
latent noise it equals the one-process gradient exactly:
:math:`\frac1W \sum_r \frac{N}{b} \sum_{\mathcal B_t^r} = \frac{N}{B} \sum_{\mathcal B_t}` when :math:`B = W b`.
The ranks apply identical averaged gradients to identical parameters (DDP broadcasts rank 0's at wrap time), so the
parameters stay bit-identical on every rank.

Launch with ``torchrun`` (it sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), then
call :func:`init_distributed`; :mod:`pyro_lowrank.inference.distributed_example` is a runnable example.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pyro
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler

from .predict import log_predictive_density

__all__ = [
    "all_reduce_mean",
    "barrier",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "shutdown_distributed",
]

logger = logging.getLogger(__name__)

_ENV_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


# ----------------------------------------------------------------------------------------------- public helpers
def init_distributed(backend: str | None = None, timeout_s: float | None = None) -> torch.device:
    """Initialise the default process group from torchrun's environment and return this process's device.

    Reads ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT`` (required) and ``LOCAL_RANK`` (default
    ``RANK``). Calling it once the group exists only returns the device (``backend`` is then ignored).

    The device is ``cuda:LOCAL_RANK`` (made the current CUDA device) with the NCCL backend and the CPU with gloo.

    Parameters
    ----------
    backend : {"gloo", "nccl"}, optional
        Default ``"nccl"`` when CUDA is available, ``"gloo"`` otherwise (``"gloo"`` on a CUDA machine trains on the
        CPU).
    timeout_s : float, optional
        Collective timeout in seconds (torch's default when None); a peer that died then raises instead of hanging.

    Returns
    -------
    torch.device
        Where this rank should put its model and data.

    Raises
    ------
    RuntimeError
        ``torch.distributed`` is unavailable, or torchrun's environment variables are missing.
    ValueError
        ``backend`` is unknown, or ``"nccl"`` without CUDA.
    """
    if not dist.is_available():
        raise RuntimeError("init_distributed needs torch.distributed, which this PyTorch build does not provide")
    local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
    use_cuda = torch.cuda.is_available()
    if dist.is_initialized():
        backend = dist.get_backend()
    elif backend is None:
        backend = "nccl" if use_cuda and dist.is_nccl_available() else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo', 'nccl' or None (automatic), got {backend!r}")
    if backend == "nccl" and not use_cuda:
        raise ValueError("backend='nccl' needs CUDA, but torch.cuda.is_available() is False; use backend='gloo'")
    on_cuda = backend == "nccl"
    device = torch.device("cuda", local_rank % torch.cuda.device_count()) if on_cuda else torch.device("cpu")
    if on_cuda:
        torch.cuda.set_device(device)
    if dist.is_initialized():
        return device
    missing = [name for name in _ENV_VARS if name not in os.environ]
    if missing:
        raise RuntimeError(
            f"init_distributed reads torchrun's environment, but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not set; launch with "
            "`torchrun --nproc_per_node=N your_script.py` (or set RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)"
        )
    kwargs: dict[str, Any] = {"timeout": timedelta(seconds=timeout_s)} if timeout_s is not None else {}
    dist.init_process_group(backend=backend, init_method="env://", **kwargs)
    logger.info("process group initialised: rank %d of %d, backend %s, device %s",
                dist.get_rank(), dist.get_world_size(), backend, device)
    return device


def shutdown_distributed() -> None:
    """Destroy the default process group if there is one."""
    if is_distributed():
        dist.destroy_process_group()


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """The number of processes W (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """True on rank 0 (and in a non-distributed run): the process that logs, writes files and shows progress."""
    return get_rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if is_distributed():
        dist.barrier()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    r"""Return :math:`\frac1W \sum_r t_r`, the mean of ``tensor`` over ranks (a copy; the input is unchanged).

    Without a process group it returns a copy of ``tensor``. Under NCCL the tensor must be on this rank's CUDA device.
    """
    out = tensor.detach().clone()
    if is_distributed():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out = out / dist.get_world_size()
    return out


# ----------------------------------------------------------------------------------------- what fit builds on
def require_process_group(batch_size: int) -> tuple[int, int]:
    """``(rank, world_size)`` for ``fit(distributed=True)``, after checking the group and the global batch size."""
    if not is_distributed():
        raise RuntimeError(
            "fit(distributed=True) needs an initialised torch.distributed process group, but "
            "torch.distributed.is_initialized() is False: call pyro_lowrank.inference.distributed.init_distributed() "
            "(under torchrun) or torch.distributed.init_process_group() first, or pass distributed=False"
        )
    rank, world_size = dist.get_rank(), dist.get_world_size()
    if batch_size < world_size:
        raise ValueError(
            f"batch_size is the global minibatch size, split over the processes, so with distributed=True it must "
            f"be >= world_size; got batch_size={batch_size} with world_size={world_size}"
        )
    if batch_size % world_size:
        raise ValueError(
            f"batch_size is the global minibatch size, split evenly over the processes, so with distributed=True it "
            f"must be a multiple of world_size; got batch_size={batch_size} with world_size={world_size}"
        )
    return rank, world_size


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shard_positions(num_data: int, rank: int, world_size: int) -> torch.Tensor:
    """Positions of rank ``rank``'s shard in an epoch permutation: ``DistributedSampler(shuffle=False)`` order.

    ``perm[shard_positions(N, r, W)]`` is ``pi_r, pi_{r+W}, ...`` (padded by wrapping round to ``ceil(N / W)``
    entries); the shuffling itself comes from ``perm``, which every rank draws identically.
    """
    sampler = DistributedSampler(range(num_data), num_replicas=world_size, rank=rank, shuffle=False)
    return torch.tensor(list(sampler), dtype=torch.long)


def wrap_ddp(module: torch.nn.Module) -> DistributedDataParallel:
    """Wrap ``module`` in DDP (which broadcasts rank 0's parameters and buffers): ``device_ids`` on CUDA only."""
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    if device.type == "cuda":
        return DistributedDataParallel(module, device_ids=[device.index])
    return DistributedDataParallel(module)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def any_rank(flag: bool) -> bool:
    """True on every rank if ``flag`` is True on any rank."""
    value = torch.tensor(int(bool(flag)), device=_collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def reduce_step_loss(value: float, error: BaseException | None) -> tuple[float, int, int, int]:
    r"""All-reduce one step's loss so that every rank sees the same outcome.

    Parameters
    ----------
    value : float
        This rank's loss (NaN when the step raised).
    error : BaseException or None
        What this rank's step raised, if anything.

    Returns
    -------
    tuple
        :math:`(\frac1W \sum_r \hat{\mathcal L}_r,\ \#\{r : \hat{\mathcal L}_r \text{ non-finite}\},\
        \#\{r : \text{the step raised a ValueError}\},\ \#\{r : \text{it raised anything else}\})`; the mean is
        non-finite when any rank's loss is, so all ranks stop together.
    """
    packet = torch.tensor([value, float(not math.isfinite(value)), float(isinstance(error, ValueError)),
                           float(error is not None and not isinstance(error, ValueError))], dtype=torch.float64,
                          device=_collective_device())
    dist.all_reduce(packet, op=dist.ReduceOp.SUM)
    total, bad, value_errors, other_errors = packet.tolist()
    return total / dist.get_world_size(), int(bad), int(value_errors), int(other_errors)


def sharded_val_nll(model: Callable, guide: Callable, x: torch.Tensor, y: torch.Tensor, num_samples: int) -> float:
    r"""Validation NLL :math:`-\frac1M \sum_{j=1}^M \log \frac1S \sum_s p(y_j \mid x_j, \theta_s)`, sharded.

    Rank r scores its contiguous share of the M rows with its own S draws; the sums are all-reduced, so every rank
    returns the same number (and early stopping decides the same everywhere).
    """
    rank, world_size = dist.get_rank(), dist.get_world_size()
    rows = torch.arange(x.shape[0], device=x.device).tensor_split(world_size)[rank]
    local = torch.zeros((), dtype=torch.float64)
    if rows.numel():
        local = -log_predictive_density(model, guide, x[rows], y[rows], num_samples).detach().double().sum().cpu()
    total = local.to(_collective_device())
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return float(total.item()) / x.shape[0]


def run_on_main(fn: Callable[[], Any], what: str) -> None:
    """Run ``fn`` on rank 0 only, then let every rank know whether it worked (this doubles as a barrier).

    Rank 0 re-raises its own exception; the other ranks raise ``RuntimeError`` instead of waiting forever.
    """
    error: BaseException | None = None
    if dist.get_rank() == 0:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001  (reported to the other ranks, then re-raised)
            error = exc
    message = broadcast_object(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    if message is not None:
        raise RuntimeError(f"rank 0 failed to {what}: {message}")


def gather_rng_states() -> list[dict[str, Any]]:
    """Every rank's Pyro RNG state (torch, numpy, random), indexed by rank."""
    states: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(states, pyro.util.get_rng_state())
    return states


def restore_rank_rng(state: dict[str, Any], rank: int, world_size: int) -> None:
    """Restore this rank's RNG streams from a checkpoint written by :func:`fit` with any number of processes.

    Same world size: each rank gets its own saved stream, so the resume is exact. Otherwise rank 0 continues the
    saved rank-0 stream and every other rank is re-seeded from it plus its rank (the data order, which lives in the
    shuffle generator, still continues exactly).
    """
    saved = state.get("rank_rng")
    if saved is not None and state.get("world_size") == world_size:
        pyro.util.set_rng_state(saved[rank])
        return
    pyro.util.set_rng_state(state["rng"])
    if rank == 0:
        logger.warning("resuming with world_size=%d from a checkpoint written with world_size=%s: the data order "
                       "continues exactly, ranks > 0 get fresh noise streams", world_size, state.get("world_size", 1))
    else:
        pyro.set_rng_seed(int(torch.randint(2**31 - 1, ()).item()) + rank)
