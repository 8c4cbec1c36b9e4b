"""``pyro-lowrank experiment {heart,uci}``: the paper's experiments on open data with every compared method.

* :mod:`.runner`: run methods over seeds on one task, score the predictive draws, aggregate mean ± s.e.;
* :mod:`.heart`: UCI Heart Disease, Cleveland + Hungary vs Switzerland + VA (the MIMIC-III protocol translated);
* :mod:`.uci`: the UCI regression benchmark (standard splits and protocol);
* :mod:`.report`: ``results.json``, ``results.md`` and figures.

:func:`run_experiment` dispatches by name.
"""

from __future__ import annotations

from typing import Any

from .heart import DEFAULT_METHODS, run_heart
from .report import write_report
from .runner import ExperimentResult, TaskData, aggregate
from .uci import run_uci

__all__ = ["DEFAULT_METHODS", "EXPERIMENTS", "ExperimentResult", "TaskData", "aggregate", "run_experiment",
           "run_heart", "run_uci", "write_report"]

EXPERIMENTS = {"heart": run_heart, "uci": run_uci}


def run_experiment(name: str, **kwargs: Any) -> ExperimentResult:
    """Run experiment ``name`` (``"heart"`` or ``"uci"``) with the runner's keyword arguments."""
    if name not in EXPERIMENTS:
        raise ValueError(f"name must be one of the experiments {sorted(EXPERIMENTS)}, got {name!r}")
    return EXPERIMENTS[name](**kwargs)
