"""Drivers: the SVI fit loop, vectorised prediction, checkpoints, deterministic training, the CLI."""

from .checkpoint import load_checkpoint, save_checkpoint
from .deterministic import train_deterministic
from .fit import FitResult, fit
from .kl_weight import KLWeight, linear_kl_schedule
from .predict import log_predictive_density, max_plate_nesting, pointwise_log_likelihood, predict, vectorized_traces

__all__ = [
    "FitResult",
    "KLWeight",
    "fit",
    "linear_kl_schedule",
    "load_checkpoint",
    "log_predictive_density",
    "pointwise_log_likelihood",
    "max_plate_nesting",
    "predict",
    "save_checkpoint",
    "train_deterministic",
    "vectorized_traces",
]
