"""The scripts' timing: the package's interleaved timer (:mod:`pyro_lowrank.inference.bench.timing`) and a printer of
medians, ranges and ratios to a baseline."""

from __future__ import annotations

from typing import Callable

from pyro_lowrank.inference.bench.timing import Timing
from pyro_lowrank.inference.bench.timing import time_interleaved as _time_interleaved


def time_interleaved(cases: dict[str, Callable[[], None]], rounds: int, repeats: int) -> dict[str, Timing]:
    """Seconds per call of every case over ``rounds`` rounds; the cases alternate within each round."""
    return _time_interleaved(cases, rounds=rounds, repeats=repeats, warmup=1)


def print_ratios(title: str, times: dict[str, Timing], baseline: str) -> None:
    """Median, min and max in milliseconds and the median's ratio to ``baseline``."""
    base = times[baseline].median
    width = max(len(name) for name in times) + 2
    print(title)
    print(f"{'case':<{width}}{'median ms':>10}{'min ms':>9}{'max ms':>9}{'ratio':>8}")
    for name, timing in times.items():
        print(f"{name:<{width}}{1e3 * timing.median:>10.3f}{1e3 * timing.min:>9.3f}{1e3 * timing.max:>9.3f}"
              f"{timing.median / base:>8.2f}")
