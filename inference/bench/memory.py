r"""Peak training memory of the SST-2 Transformer classifier: low-rank BNN against full-rank mean-field BBB.

The issue's target is a low-rank peak at most half the full-rank mean-field one. Both Bayesian models are built
exactly as ``pyro-lowrank experiment sst2`` builds them (:func:`~..experiments.sst2.sst2_config` and
:func:`~..methods.make_method`, then the method's ``build``):

* low-rank: :func:`~pyro_lowrank.nn.lowrankify` of the
  :class:`~pyro_lowrank.models.torch_networks.TransformerTextClassifier` (token table, Q/K/V/O and both feed-forward
  matrices at rank r, the 2-way head at rank 2) in a ``SupervisedModel``, with ``FactorGuide``;
* mean-field: ``MeanFieldNetwork`` around the same network (every weight and bias of its Linear, Embedding and
  attention modules a sample site) with ``weight_space_guide`` (an ``AutoNormal`` started at the initial weights);
* deterministic (reference): the plain network with ``F.cross_entropy``.

One training step is ``zero_grad``; ``loss = TraceMeanField_ELBO()(model, guide)(tokens, y, num_data=N)``;
``loss.backward()``; ``Adam.step()``, with Pyro's *eager* ELBO: the network trims all-padding columns in a
data-dependent way, which a traced (JIT) ELBO would freeze. Tokens are random ids in ``[1, V)`` (no padding, so the
trimming keeps every column) and labels random.

Memory (bytes of tensor storage):

* ``persistent``: what lives between steps: parameters, buffers and the Adam state (after a first, unmeasured
  step has created it; gradients are freed with ``zero_grad(set_to_none=True)``);
* ``peak_step``: the peak above that during one steady-state step (activations kept for the backward pass, the
  sampled weights, gradients, optimiser temporaries);
* ``peak_total = persistent + peak_step``: the training footprint, the quantity of the issue's target.

On CUDA the step peak is ``torch.cuda.max_memory_allocated`` (:func:`~.timing.peak_memory_bytes`); on the CPU it is
replayed from the profiler's individual allocation and free events (:func:`~.timing.peak_memory_bytes`).
"""

from __future__ import annotations

import gc
import logging
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from pyro.infer import TraceMeanField_ELBO
from torch import nn

from .timing import peak_memory_bytes

__all__ = ["persistent_bytes", "transformer_memory"]

logger = logging.getLogger(__name__)

#: The sequence length the SST-2 experiment's positional table covers.
SST2_MAX_LEN = 64


def persistent_bytes(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes of ``module``'s parameters and buffers and of ``optimizer``'s state tensors, each storage counted
    once, with their sum as ``"persistent"``."""
    seen: set[int] = set()

    def count(tensors) -> int:
        total = 0
        for t in tensors:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
                seen.add(t.untyped_storage().data_ptr())
                total += t.untyped_storage().nbytes()
        return total

    out = {"parameters": count(module.parameters()), "buffers": count(module.buffers()),
           "optimizer_state": count(v for state in optimizer.state.values() for v in state.values())}
    out["persistent"] = sum(out.values())
    return out


def _measure(name: str, module: nn.Module, step: Callable[[], None], optimizer: torch.optim.Optimizer,
             device: torch.device, parameters: int) -> dict[str, Any]:
    step()  # warm-up: Adam's state exists from here on
    optimizer.zero_grad(set_to_none=True)
    gc.collect()
    persistent = persistent_bytes(module, optimizer)
    peak = peak_memory_bytes(step, device)
    optimizer.zero_grad(set_to_none=True)
    row = {"parameters": parameters, **{f"{k}_bytes": v for k, v in persistent.items()}, "peak_step_bytes": peak,
           "peak_total_bytes": persistent["persistent"] + peak}
    logger.info("%-13s %11d parameters  persistent %8.1f MiB  step peak %8.1f MiB  total %8.1f MiB", name,
                parameters, row["persistent_bytes"] / 2**20, peak / 2**20, row["peak_total_bytes"] / 2**20)
    return row


def transformer_memory(
    *,
    vocab_size: int = 8000,
    d_model: int = 256,
    num_layers: int = 4,
    num_heads: int = 4,
    dim_feedforward: int = 512,
    seq_len: int = 64,
    batch_size: int = 64,
    rank: int = 16,
    num_data: int = 67349,
    lr: float = 5e-4,
    include_deterministic: bool = True,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> dict[str, Any]:
    """Persistent and peak training-step memory of the low-rank, mean-field and deterministic Transformer classifiers
    (module docstring).

    Parameters
    ----------
    vocab_size : int
        V (default: the SST-2 experiment's vocabulary of 8,000 word pieces).
    d_model, num_layers, num_heads, dim_feedforward : int
        Encoder sizes (the paper's 256, 4, 4, 512).
    seq_len, batch_size : int
        Tokens per sentence ([CLS] + word pieces, no padding) and sentences per step.
    rank : int
        Rank of the low-rank projections and token table (capped at ``d_model``; the head has rank 2).
    num_data : int
        N, the dataset size scaling the likelihood (SST-2's training sentences; it does not change the memory).
    lr : float
        Adam's learning rate (the experiment's).
    include_deterministic : bool
        Also measure the plain network trained by cross-entropy.
    device : torch.device or str
    seed : int
        Seeds the initialisation, the tokens and the labels.

    Returns
    -------
    dict
        Flat summary first (what ``bench``'s markdown prints): ``"peak_ratio"`` (low-rank / mean-field
        ``peak_total``, the issue's target), ``"step_peak_ratio"``, ``"persistent_ratio"``, ``"parameter_ratio"``,
        ``"<model>_peak_mb"`` and ``"target_met"`` (``peak_ratio <= 0.5``); then ``"settings"``; ``"models"``: per
        model (``"low-rank"``, ``"mean-field"``, ``"deterministic"``) the learned ``parameters`` and
        ``parameters_bytes``, ``buffers_bytes``, ``optimizer_state_bytes``, ``persistent_bytes``,
        ``peak_step_bytes``, ``peak_total_bytes``; ``"ratios"``: low-rank / mean-field of ``peak_total``,
        ``peak_step``, ``persistent`` and ``parameters``.
    """
    import pyro

    import pyro_lowrank  # noqa: F401  (module-local Pyro parameters, as in the experiments)

    from ..experiments.runner import TaskData
    from ..experiments.sst2 import sst2_config, transformer_architecture
    from ..methods import make_method

    device = torch.device(device)
    if seq_len < 1 or batch_size < 1 or vocab_size < 2:
        raise ValueError(f"seq_len and batch_size must be >= 1 and vocab_size >= 2, got seq_len={seq_len}, "
                         f"batch_size={batch_size}, vocab_size={vocab_size}")
    sizes = {"d_model": d_model, "num_layers": num_layers, "num_heads": num_heads, "dim_feedforward": dim_feedforward}
    max_len = max(SST2_MAX_LEN, seq_len)
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, vocab_size, (batch_size, seq_len), generator=gen).to(device)  # id 0 is padding
    labels = torch.randint(0, 2, (batch_size,), generator=gen).to(device)
    task = TaskData(name="sst2", kind="classification", train=(tokens, labels), test=(tokens, labels), num_classes=2)
    architecture = transformer_architecture(vocab_size, max_len=max_len, rank=rank, num_classes=2, **sizes)

    def bayesian(name: str, key: str) -> dict[str, Any]:
        config = sst2_config(name, task, seed=seed, vocab_size=vocab_size, **sizes)
        config["architecture"] = architecture
        if "rank" in config:
            config["rank"] = architecture.lowrank_rank
        method = make_method(name, **config)
        method.device = device
        pyro.set_rng_seed(seed)
        model, guide = method.build((tokens, labels))
        loss_fn = TraceMeanField_ELBO(max_plate_nesting=1)(model, guide)
        with torch.no_grad():
            loss_fn(tokens, labels, num_data=num_data)  # lazy guide set-up, as fit() does
        params = [p for p in loss_fn.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=lr)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            loss_fn(tokens, labels, num_data=num_data).backward()
            opt.step()

        return _measure(key, loss_fn, step, opt, device, sum(p.numel() for p in params))

    def deterministic() -> dict[str, Any]:
        torch.manual_seed(seed)
        net = architecture.network(2).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=lr)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(tokens), labels).backward()
            opt.step()

        return _measure("deterministic", net, step, opt, device, sum(p.numel() for p in net.parameters()))

    builders: dict[str, Callable[[], dict[str, Any]]] = {"low-rank": lambda: bayesian("lowrank", "low-rank"),
                                                         "mean-field": lambda: bayesian("mean_field", "mean-field")}
    if include_deterministic:
        builders["deterministic"] = deterministic
    models: dict[str, dict[str, Any]] = {}
    for key, build in builders.items():
        models[key] = build()  # each model is freed before the next is built
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    low, full = models["low-rank"], models["mean-field"]
    keys = {"peak_total": "peak_total_bytes", "peak_step": "peak_step_bytes", "persistent": "persistent_bytes",
            "parameters": "parameters"}
    ratios = {k: low[field] / full[field] for k, field in keys.items()}
    settings = {"vocab_size": vocab_size, **sizes, "seq_len": seq_len, "max_len": max_len, "batch_size": batch_size,
                "rank": architecture.lowrank_rank, "num_data": num_data, "lr": lr, "device": str(device),
                "elbo": "TraceMeanField_ELBO (eager)", "dtype": str(torch.get_default_dtype())}
    result: dict[str, Any] = {
        "peak_ratio": ratios["peak_total"], "step_peak_ratio": ratios["peak_step"],
        "persistent_ratio": ratios["persistent"], "parameter_ratio": ratios["parameters"],
        **{f"{key}_peak_mb": row["peak_total_bytes"] / 2**20 for key, row in models.items()},
        "target_met": bool(math.isfinite(ratios["peak_total"]) and ratios["peak_total"] <= 0.5),
        "settings": settings, "models": models, "ratios": ratios}
    logger.info("low-rank / mean-field: peak %.3f, step peak %.3f, persistent %.3f, parameters %.3f",
                ratios["peak_total"], ratios["peak_step"], ratios["persistent"], ratios["parameters"])
    return result
