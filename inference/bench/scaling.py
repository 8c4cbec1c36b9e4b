r"""Scaling curves: training-step time and parameter count of each route against the hidden width.

For every width :math:`w` the routes of :func:`~.cases.training_cases` train the same MLP
``d -> w -> ... -> w -> C`` (``depth`` hidden layers of width :math:`w`, C = 10 classes, batch 128). By default the
input width is :math:`d = w` too, so every hidden-to-hidden and input-to-hidden matrix is :math:`w \times w` and the
counts are clean polynomials in :math:`w` (``input_width=784`` gives the MNIST layout, whose fixed 784-wide input
layer adds a term linear in :math:`w` to the full-rank counts and bends their log-log curves towards slope 1):

* deterministic: :math:`\sum_\ell (m_\ell n_\ell + m_\ell) = \text{depth}\cdot w^2 + O(w)`;
* mean-field (loc and scale per weight and bias): twice that, :math:`2\,\text{depth}\cdot w^2 + O(w)`;
* low-rank (rank r; loc and scale per factor entry, :math:`A \in \mathbb R^{m \times r}`,
  :math:`B \in \mathbb R^{n \times r}`): :math:`\sum_\ell 2 r (m_\ell + n_\ell) + O(m_\ell) = O(r\,w)`.

The time of one step (zero_grad, loss, backward, Adam) is measured interleaved per width
(:func:`~.timing.time_interleaved`): in each round every route runs ``repeats`` times in turn, and the result is the
median over the rounds with its min-max. Noise on a shared machine then moves all routes of one width together.

**Growth exponent.** For a quantity :math:`y(w) \approx c\, w^k`, the exponent is the least-squares slope of
:math:`\log y` on :math:`\log w` over the fitted widths :math:`w_1..w_n`, with :math:`u_i = \log w_i`,
:math:`v_i = \log y_i`:

.. math::

    \hat k = \frac{\sum_i (u_i - \bar u)(v_i - \bar v)}{\sum_i (u_i - \bar u)^2}.

It is a local exponent: lower-order terms (biases, the C-wide output layer, per-step overheads of the Python, Pyro and
optimiser machinery) pull it below the leading power at small widths, e.g. the deterministic count
:math:`2w^2 + 12w + 10` (``depth=2``, :math:`d = w`) has the local slope :math:`2 - 6/w + O(w^{-2})`. Times are
therefore fitted by default over the top half of the widths (``fit="top-half"``), where the matrix arithmetic
dominates; the parameter-count exponents are fitted over all widths (the counts are exact). Both time fits are
recorded.
"""

from __future__ import annotations

import gc
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch

from .cases import training_cases
from .timing import time_interleaved

__all__ = ["ScalingResult", "ScalingRow", "case_name", "fit_exponent", "plot_scaling", "scaling_curves"]

logger = logging.getLogger(__name__)

FITS = ("all", "top-half")


@dataclass(frozen=True)
class ScalingRow:
    """One route at one width: seconds per training step (median, min, max over ``rounds``) and learned numbers."""

    method: str
    width: int
    median_s: float
    min_s: float
    max_s: float
    rounds: int
    repeats: int
    parameters: int


@dataclass
class ScalingResult:
    """Rows of every (method, width), the fitted exponents and the settings of the run.

    Attributes
    ----------
    rows : list of ScalingRow
    time_exponents : dict of str to float
        Least-squares slope of log step time on log width over :attr:`fit_widths`.
    time_exponents_all : dict of str to float
        The same over every width.
    parameter_exponents : dict of str to float
        The slope of log parameter count on log width over every width.
    fit : {"all", "top-half"}
        Which widths :attr:`time_exponents` uses.
    fit_widths : list of int
    settings : dict
        Widths, rank, depth, input width, batch size, rounds, device, wall seconds.
    """

    rows: list[ScalingRow]
    time_exponents: dict[str, float]
    time_exponents_all: dict[str, float]
    parameter_exponents: dict[str, float]
    fit: str
    fit_widths: list[int]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        """Methods in first-seen order."""
        return list(dict.fromkeys(row.method for row in self.rows))

    def curve(self, method: str) -> list[ScalingRow]:
        """The rows of ``method``, by increasing width."""
        return sorted((row for row in self.rows if row.method == method), key=lambda row: row.width)

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (:meth:`from_json` inverts it); ``"exponents"`` maps each method to its
        ``time`` (fitted widths), ``time_all`` and ``parameters`` exponents."""
        exponents = {m: {"time": self.time_exponents[m], "time_all": self.time_exponents_all[m],
                         "parameters": self.parameter_exponents[m]} for m in self.time_exponents}
        return {"exponents": exponents, "rows": [asdict(row) for row in self.rows],
                "time_exponents": dict(self.time_exponents),
                "time_exponents_all": dict(self.time_exponents_all),
                "parameter_exponents": dict(self.parameter_exponents), "fit": self.fit,
                "fit_widths": list(self.fit_widths), "settings": dict(self.settings)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ScalingResult":
        """The result stored by :meth:`to_json`."""
        return cls(rows=[ScalingRow(**row) for row in data["rows"]], time_exponents=dict(data["time_exponents"]),
                   time_exponents_all=dict(data["time_exponents_all"]),
                   parameter_exponents=dict(data["parameter_exponents"]), fit=data["fit"],
                   fit_widths=[int(w) for w in data["fit_widths"]], settings=dict(data.get("settings", {})))


def case_name(method: str, rank: int) -> str:
    """The :func:`~.cases.training_cases` name of ``method``: the low-rank routes carry their rank
    (``"low-rank"`` -> ``"low-rank r=16"``), the others are named as they are."""
    return f"{method} r={rank}" if method.startswith("low-rank") else method


def fit_exponent(widths: Sequence[float], values: Sequence[float]) -> float:
    r"""Least-squares slope :math:`\hat k` of :math:`\log y` on :math:`\log w` (module docstring).

    Raises
    ------
    ValueError
        With fewer than two distinct widths, or a width or value that is not positive.
    """
    if len(widths) != len(values):
        raise ValueError(f"widths and values must have the same length, got {len(widths)} and {len(values)}")
    if any(not w > 0 for w in widths) or any(not v > 0 for v in values):
        raise ValueError(f"widths and values must be positive, got widths={list(widths)}, values={list(values)}")
    u = [math.log(w) for w in widths]
    v = [math.log(y) for y in values]
    u_bar, v_bar = sum(u) / len(u), sum(v) / len(v)
    sxx = sum((a - u_bar) ** 2 for a in u)
    if sxx == 0.0:
        raise ValueError(f"widths must hold at least two distinct values, got {list(widths)}")
    return sum((a - u_bar) * (b - v_bar) for a, b in zip(u, v)) / sxx


def _fit_widths(widths: Sequence[int], fit: str) -> list[int]:
    ordered = sorted(widths)
    if fit == "all":
        return ordered
    return ordered[len(ordered) // 2:] if len(ordered) >= 4 else ordered[-2:]  # the top ceil(n/2), at least 2


def _auto_repeats(cases: dict, target_s: float, max_repeats: int) -> int:
    """Calls per sample such that the slowest route's sample lasts about ``target_s`` (one untimed probe call each,
    which also serves as a warm-up)."""
    slowest = 0.0
    for case in cases.values():
        start = time.perf_counter()
        case.fn()
        slowest = max(slowest, time.perf_counter() - start)
    return max(1, min(max_repeats, int(target_s / max(slowest, 1e-9))))


def _measure(widths: list[int], methods: list[str], rank: int, depth: int, input_width: int | None,
             num_classes: int, batch_size: int, num_data: int, rounds: int, repeats: int | None,
             target_sample_s: float, max_repeats: int, warmup: int, device: torch.device | str,
             seed: int) -> tuple[list[ScalingRow], int, float]:
    """The rows of every method and width (each width's models freed before the next), the thread count and the
    wall seconds."""
    start = time.perf_counter()
    rows: list[ScalingRow] = []
    for width in sorted(set(widths)):
        layout = (input_width or width, *([width] * depth), num_classes)
        cases = training_cases(layout, ranks=(rank,), batch_size=batch_size, num_data=num_data, device=device,
                               include=methods, seed=seed)
        chosen = {m: cases[case_name(m, rank)] for m in methods if case_name(m, rank) in cases}
        missing = [m for m in methods if m not in chosen]
        if missing:
            logger.warning("width %d: no case for %s (not installed?); skipped", width, missing)
        calls = repeats if repeats is not None else _auto_repeats(chosen, target_sample_s, max_repeats)
        timings = time_interleaved({m: c.fn for m, c in chosen.items()}, rounds=rounds, repeats=calls,
                                   warmup=warmup, device=device)
        for m, case in chosen.items():
            t = timings[m]
            rows.append(ScalingRow(m, width, t.median, t.min, t.max, t.rounds, calls, int(case.parameters)))
            logger.info("width %5d  %-22s %9.4f s/step  [%.4f, %.4f]  %d parameters", width, m, t.median, t.min,
                        t.max, case.parameters)
        del cases, chosen, timings
        pyro.clear_param_store()  # the standard route's global store
        gc.collect()
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
    return rows, torch.get_num_threads(), time.perf_counter() - start


def scaling_curves(
    widths: Sequence[int] = (256, 512, 1024, 2048, 4096),
    *,
    rank: int = 16,
    depth: int = 2,
    input_width: int | None = None,
    num_classes: int = 10,
    batch_size: int = 128,
    num_data: int = 60000,
    rounds: int = 3,
    repeats: int | None = None,
    target_sample_s: float = 0.3,
    max_repeats: int = 10,
    warmup: int = 1,
    fit: str = "top-half",
    device: torch.device | str = "cpu",
    methods: Sequence[str] = ("deterministic", "low-rank", "mean-field"),
    seed: int = 0,
    num_threads: int | None = None,
) -> ScalingResult:
    """Time one training step of every method at every width and fit the growth exponents (module docstring).

    Parameters
    ----------
    widths : sequence of int
        Hidden widths w (at least two distinct).
    rank : int
        Rank of the low-rank routes (their output layer has rank ``min(rank, num_classes)``).
    depth : int
        Number of hidden layers of width w.
    input_width : int, optional
        Input width d; None (default): d = w.
    num_classes, batch_size, num_data : int
        Output width C, minibatch size and the dataset size N scaling the likelihood.
    rounds : int
        Interleaved rounds per width (samples of the median).
    repeats : int, optional
        Calls averaged into one sample; None: chosen per width so that the slowest route's sample lasts about
        ``target_sample_s`` (at most ``max_repeats``), i.e. 1 at the large widths.
    warmup : int
        Untimed calls of each route before the rounds (after the construction call that compiles the ELBO and the
        probe call that chooses ``repeats``).
    fit : {"top-half", "all"}
        Widths of the time exponents: the larger half (at least two), or all.
    device : torch.device or str
    methods : sequence of str
        Routes of :func:`~.cases.training_cases`: ``"deterministic"``, ``"low-rank"`` (the compiled ELBO),
        ``"low-rank eager"``, ``"low-rank AutoNormal"``, ``"mean-field"``, ``"standard Pyro"``,
        ``"bayesian-torch"`` (when installed).
    seed : int
    num_threads : int, optional
        Torch intra-op threads during the run (restored afterwards); None keeps the current setting. On a shared
        machine, 1 avoids the stalls of oversubscribed OpenMP barriers, which otherwise cost small steps far more
        than their arithmetic.

    Returns
    -------
    ScalingResult
    """
    widths = [int(w) for w in widths]
    if len(set(widths)) < 2 or min(widths) < 1:
        raise ValueError(f"widths must hold at least two distinct positive widths, got {widths}")
    if fit not in FITS:
        raise ValueError(f"fit must be one of {list(FITS)}, got {fit!r}")
    if depth < 1 or rank < 1 or rounds < 1:
        raise ValueError(f"depth, rank and rounds must be >= 1, got depth={depth}, rank={rank}, rounds={rounds}")
    methods = list(dict.fromkeys(methods))
    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(int(num_threads))
    try:
        rows, threads, seconds = _measure(widths, methods, rank, depth, input_width, num_classes, batch_size,
                                          num_data, rounds, repeats, target_sample_s, max_repeats, warmup, device,
                                          seed)
    finally:
        torch.set_num_threads(previous_threads)

    fit_widths = _fit_widths(sorted(set(widths)), fit)
    time_exp: dict[str, float] = {}
    time_exp_all: dict[str, float] = {}
    param_exp: dict[str, float] = {}
    for m in dict.fromkeys(row.method for row in rows):
        curve = sorted((row for row in rows if row.method == m), key=lambda row: row.width)
        ws = [row.width for row in curve]
        time_exp_all[m] = fit_exponent(ws, [row.median_s for row in curve])
        top = [row for row in curve if row.width in fit_widths]
        time_exp[m] = fit_exponent([row.width for row in top], [row.median_s for row in top])
        param_exp[m] = fit_exponent(ws, [row.parameters for row in curve])
    settings = {"widths": sorted(set(widths)), "rank": rank, "depth": depth,
                "input_width": input_width if input_width is not None else "width", "num_classes": num_classes,
                "batch_size": batch_size, "num_data": num_data, "rounds": rounds, "repeats": repeats,
                "device": str(device), "torch_threads": threads, "wall_seconds": seconds}
    return ScalingResult(rows, time_exp, time_exp_all, param_exp, fit, fit_widths, settings)


def plot_scaling(result: ScalingResult | dict[str, Any], path: str | Path) -> Path:
    """Two log-log panels, step time and parameter count against width, one line per method (exponents in the
    legends; the time panel shades each method's min-max); saved to ``path`` (format from its suffix). ``result``
    may be the :meth:`ScalingResult.to_json` dict."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if isinstance(result, dict):
        result = ScalingResult.from_json(result)

    fig = Figure(figsize=(10, 4), constrained_layout=True)
    FigureCanvasAgg(fig)
    ax_time, ax_params = fig.subplots(1, 2)
    for m in result.methods:
        curve = result.curve(m)
        ws = [row.width for row in curve]
        line, = ax_time.plot(ws, [row.median_s for row in curve], marker="o",
                             label=f"{m} (k = {result.time_exponents[m]:.2f})")
        ax_time.fill_between(ws, [row.min_s for row in curve], [row.max_s for row in curve], alpha=0.2,
                             color=line.get_color())
        ax_params.plot(ws, [row.parameters for row in curve], marker="o", color=line.get_color(),
                       label=f"{m} (k = {result.parameter_exponents[m]:.2f})")
    fitted = "widths " + ", ".join(str(w) for w in result.fit_widths)
    ax_time.set(xscale="log", yscale="log", xlabel="hidden width w", ylabel="seconds per training step",
                title=f"step time (k fitted over {fitted})")
    ax_params.set(xscale="log", yscale="log", xlabel="hidden width w", ylabel="learned parameters",
                  title="parameter count (k over all widths)")
    for ax in (ax_time, ax_params):
        ax.set_xticks(result.settings.get("widths", [r.width for r in result.rows]))
        ax.set_xticklabels([str(w) for w in result.settings.get("widths", [r.width for r in result.rows])])
        ax.minorticks_off()
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    logger.info("scaling plot written to %s", path)
    return path
