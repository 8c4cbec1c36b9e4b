"""Vectorised posterior prediction, the driver-level entry point.

The implementation lives in the core module :mod:`pyro_lowrank.predictive`: the core diagnostics
(:func:`pyro_lowrank.diagnostics.to_inference_data`) draw from it, and the core never imports ``inference``.
"""

from pyro_lowrank.predictive import (
    log_predictive_density,
    max_plate_nesting,
    pointwise_log_likelihood,
    predict,
    vectorized_traces,
)

__all__ = ["log_predictive_density", "max_plate_nesting", "pointwise_log_likelihood", "predict", "vectorized_traces"]
