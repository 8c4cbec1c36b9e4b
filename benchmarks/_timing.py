"""Shared timing loop of the benchmark scripts: interleaved rounds, medians, ratios to a baseline."""

from __future__ import annotations

import statistics
import time
from typing import Callable


def time_interleaved(cases: dict[str, Callable[[], None]], rounds: int, repeats: int) -> dict[str, list[float]]:
    """Seconds per call of every case, one entry per round; the cases alternate within each round."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            start = time.perf_counter()
            for _ in range(repeats):
                fn()
            times[name].append((time.perf_counter() - start) / repeats)
    return times


def print_ratios(title: str, times: dict[str, list[float]], baseline: str) -> None:
    """Median, min and max in milliseconds and the median's ratio to ``baseline``."""
    base = statistics.median(times[baseline])
    width = max(len(name) for name in times) + 2
    print(title)
    print(f"{'case':<{width}}{'median ms':>10}{'min ms':>9}{'max ms':>9}{'ratio':>8}")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"{name:<{width}}{1e3 * med:>10.3f}{1e3 * min(values):>9.3f}{1e3 * max(values):>9.3f}{med / base:>8.2f}")
