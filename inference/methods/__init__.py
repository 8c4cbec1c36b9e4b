"""The compared methods behind one interface (:class:`Method`) and a registry (:func:`make_method`).

Importing this package registers every method: ``deterministic``, ``ensemble``, ``mc_dropout``, ``lowrank``,
``lowrank_svd``, ``mean_field``, ``rank1``, ``swag``, ``laplace`` (last layer) and ``laplace_full``
(laplace-torch is imported when a Laplace method is fitted), and the weight-space-geometry methods on the low-rank
network (:mod:`.geometry`): ``laplace_factor``, ``laplace_factor_glm``, ``laplace_diffusion`` and ``fiber_walk``.
"""

from . import deterministic, geometry, laplace, lowrank, mc_dropout, mean_field, rank1, swag  # noqa: F401  (registration side effects)
from .base import LIKELIHOODS, Method, PyroMethod, count_parameters, outputs_to_draws
from .registry import available_methods, make_method, register_method

__all__ = [
    "LIKELIHOODS",
    "Method",
    "PyroMethod",
    "available_methods",
    "count_parameters",
    "make_method",
    "outputs_to_draws",
    "register_method",
]
