"""``pyro-lowrank bench``: training-step and prediction timings of every route side by side, peak memory, scaling
curves, and the performance targets (:mod:`.run`); the cases (:mod:`.cases`) and the timing primitives
(:mod:`.timing`)."""

from .run import SMOKE, BenchConfig, format_markdown, machine_info, run_bench, write_bench
from .timing import Timing, peak_memory_bytes, time_interleaved

__all__ = ["SMOKE", "BenchConfig", "Timing", "format_markdown", "machine_info", "peak_memory_bytes", "run_bench",
           "time_interleaved", "write_bench"]
