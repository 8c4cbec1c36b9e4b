"""Drivers: the SVI fit loop, vectorised prediction, checkpoints, deterministic training, SWAG, Laplace, the
compared methods (:mod:`.methods`), the comparison and the CLI."""

from .checkpoint import load_checkpoint, save_checkpoint
from .deterministic import train_deterministic
from .factor_ggn import FactorGGN, SiteLayout, gauge_tangent, model_outputs, top_eigenpairs
from .factor_laplace import FactorLaplace, fit_map
from .ggn_kernel import ggn_kernel_summary, kernel_variance_share
from .laplace_diffusion import laplace_diffusion
from .fiber_walk import FiberFlow, FiberWalk, walk_fiber
from .fit import FitResult, fit
from .jit_elbo import JitTraceMeanField_ELBO
from .kl_weight import KLWeight, linear_kl_schedule
from .laplace import LaplaceApproximation
from .predict import log_predictive_density, max_plate_nesting, pointwise_log_likelihood, predict, vectorized_traces
from .swag import SWAG

__all__ = [
    "FactorGGN",
    "FactorLaplace",
    "FiberFlow",
    "FiberWalk",
    "FitResult",
    "JitTraceMeanField_ELBO",
    "KLWeight",
    "LaplaceApproximation",
    "SWAG",
    "SiteLayout",
    "fit",
    "fit_map",
    "gauge_tangent",
    "ggn_kernel_summary",
    "kernel_variance_share",
    "laplace_diffusion",
    "linear_kl_schedule",
    "load_checkpoint",
    "log_predictive_density",
    "pointwise_log_likelihood",
    "max_plate_nesting",
    "model_outputs",
    "predict",
    "save_checkpoint",
    "top_eigenpairs",
    "train_deterministic",
    "vectorized_traces",
    "walk_fiber",
]
