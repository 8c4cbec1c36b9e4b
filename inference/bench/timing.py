"""Timing and memory primitives of the benchmark: interleaved rounds, medians with min-max, peak tensor memory.

Shared machines are noisy, so every comparison is a ratio of medians measured side by side in one process: in each
round every case runs ``repeats`` times in turn, and the per-call time of a round is one sample.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

__all__ = ["Timing", "peak_memory_bytes", "synchronize", "time_interleaved"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Timing:
    """Seconds per call of one case over the rounds: the median and the range."""

    median: float
    min: float
    max: float
    rounds: int

    @classmethod
    def from_samples(cls, samples: list[float]) -> "Timing":
        return cls(statistics.median(samples), min(samples), max(samples), len(samples))


def synchronize(device: torch.device | str) -> None:
    """Wait for queued kernels on a CUDA device (a no-op on the CPU), so wall-clock times are complete."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    cases: Mapping[str, Callable[[], object]],
    *,
    rounds: int,
    repeats: int,
    warmup: int = 2,
    device: torch.device | str = "cpu",
) -> dict[str, Timing]:
    """Time every case, interleaved: ``rounds`` rounds, in each of which every case runs ``repeats`` times in turn.

    Parameters
    ----------
    cases : mapping of str to callable
        Zero-argument callables (one training step, one predictive pass).
    rounds, repeats : int
        Samples per case, and calls averaged into one sample.
    warmup : int
        Untimed calls of each case first (compilation, allocator and cache warm-up).
    device : torch.device or str
        Synchronised before and after every timed block.

    Returns
    -------
    dict of str to Timing
        Seconds per call.
    """
    if rounds < 1 or repeats < 1:
        raise ValueError(f"rounds and repeats must be >= 1, got rounds={rounds}, repeats={repeats}")
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            synchronize(device)
            start = time.perf_counter()
            for _ in range(repeats):
                fn()
            synchronize(device)
            samples[name].append((time.perf_counter() - start) / repeats)
    return {name: Timing.from_samples(values) for name, values in samples.items()}


def peak_memory_bytes(fn: Callable[[], object], device: torch.device | str = "cpu") -> int:
    r"""Peak bytes of tensor memory allocated while ``fn()`` runs, above what was allocated before it.

    On CUDA this is ``torch.cuda.max_memory_allocated`` after a reset, minus the memory allocated before. On the CPU,
    torch keeps no allocation statistics, so every allocation and free of the CPU allocator is read from
    :mod:`torch.profiler` (``profile_memory=True``) as an event of signed size :math:`s_j`; in time order the running
    total :math:`S_k = \sum_{j \le k} s_j` is the memory held by tensors created during the call, and the result is
    :math:`\max(0, \max_k S_k)`. The allocator events are read from the profiler's event tree, so each allocation
    counts once (summing the operators' ``cpu_memory_usage`` would count ``torch.ones`` = ``empty`` + ``fill_``
    twice, and a backward pass several times over). It counts every tensor the call creates (activations kept for
    the backward pass, gradients, optimiser state created on the first step), not the interpreter or libraries.
    Frees of tensors older than the call make :math:`S_k` negative; they only lower the peak, as they lower the
    real footprint.
    """
    device = torch.device(device)
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - before)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    try:
        from torch._C._profiler import _EventType

        events: list[tuple[int, int]] = []
        stack = list(prof.profiler.kineto_results.experimental_event_tree())
        while stack:
            node = stack.pop()
            if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
                events.append((node.start_time_ns, node.extra_fields.alloc_size))
            stack.extend(node.children)
    except (ImportError, AttributeError):  # other torch internals: each allocation once, by operator self memory
        logger.debug("profiler event tree unavailable; using the operators' self memory")
        events = [(e.time_range.start, e.self_cpu_memory_usage) for e in prof.profiler.function_events
                  if e.self_cpu_memory_usage != 0]
    total = peak = 0
    for _, size in sorted(events):
        total += size
        peak = max(peak, total)
    return int(peak)
