"""``pyro-lowrank experiment {heart,pm25,sst2,uci}``: the paper's experiments on open data with every compared method.

* :mod:`.runner`: run methods over seeds on one task, score the predictive draws, aggregate mean ± s.e.;
* :mod:`.heart`: UCI Heart Disease, Cleveland + Hungary vs Switzerland + VA (the MIMIC-III protocol translated);
* :mod:`.pm25`: the LSTM forecaster, Beijing (source) vs Guangzhou (shifted city);
* :mod:`.sst2`: the Transformer classifier on SST-2 with AG News as OOD inputs;
* :mod:`.uci`: the UCI regression benchmark (standard splits and protocol);
* :mod:`.report`: ``results.json``, ``results.md`` and figures.

:func:`run_experiment` dispatches by name.
"""

from __future__ import annotations

from typing import Any

from .heart import DEFAULT_METHODS, run_heart
from .pm25 import run_pm25
from .report import write_report
from .runner import ExperimentResult, TaskData, aggregate
from .sst2 import run_sst2
from .uci import run_uci

__all__ = ["DEFAULT_METHODS", "EXPERIMENTS", "ExperimentResult", "TaskData", "aggregate", "run_experiment",
           "run_heart", "run_pm25", "run_sst2", "run_uci", "write_report"]

EXPERIMENTS = {"heart": run_heart, "pm25": run_pm25, "sst2": run_sst2, "uci": run_uci}


def run_experiment(name: str, **kwargs: Any) -> ExperimentResult:
    """Run experiment ``name`` (``"heart"``, ``"pm25"``, ``"sst2"`` or ``"uci"``) with its runner's keyword
    arguments."""
    if name not in EXPERIMENTS:
        raise ValueError(f"name must be one of the experiments {sorted(EXPERIMENTS)}, got {name!r}")
    return EXPERIMENTS[name](**kwargs)
