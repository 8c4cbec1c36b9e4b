"""Diagnostics on gauge-invariant quantities of low-rank Bayesian layers.

The factorisation W = A B^T has a GL(r) gauge symmetry (A, B) -> (A G, B G^-T), so raw factor entries are not
identifiable; diagnostics are reported on W, its singular values and predictions.

* :mod:`~pyro_lowrank.diagnostics.canonical`: :func:`canonicalize`, a unique representative (A', B') of each gauge
  orbit (QR of each factor, SVD of R_A R_B^T, sign fixing), for factor-level views of posterior draws.
* :mod:`~pyro_lowrank.diagnostics.spectra`: singular spectra, Eckart-Young-Mirsky tail energies, captured-energy
  fractions, a suggested rank, the EYM bound on the change of a Lipschitz loss under truncation, and principal angles
  between (singular) subspaces.
* :mod:`~pyro_lowrank.diagnostics.pac_bayes`: the factor KL of a trained guide from the prior and McAllester's
  PAC-Bayes bound.
* :mod:`~pyro_lowrank.diagnostics.inference_data`: ArviZ ``InferenceData`` (posterior W summaries and singular
  values, posterior predictive, observed data, pointwise log likelihood) for ``az.summary``, ``az.loo`` and
  ``az.plot_ppc``.
* :mod:`~pyro_lowrank.diagnostics.correlation`: closed-form (covariance lemma) and Monte Carlo correlations between
  weight entries, and a helper to pick entries that share rows and columns.
"""

from pyro_lowrank.diagnostics.canonical import CanonicalFactors, canonicalize
from pyro_lowrank.diagnostics.correlation import random_entries, weight_correlation
from pyro_lowrank.diagnostics.inference_data import to_inference_data, weight_summaries
from pyro_lowrank.diagnostics.pac_bayes import mcallester_bound, posterior_kl
from pyro_lowrank.diagnostics.spectra import (
    SubspaceAlignment,
    energy_fraction,
    eym_bound,
    principal_angle_cosines,
    singular_spectrum,
    singular_subspace_alignment,
    suggest_rank,
    tail_energy,
)

__all__ = [
    "CanonicalFactors",
    "SubspaceAlignment",
    "canonicalize",
    "energy_fraction",
    "eym_bound",
    "mcallester_bound",
    "posterior_kl",
    "principal_angle_cosines",
    "random_entries",
    "singular_spectrum",
    "singular_subspace_alignment",
    "suggest_rank",
    "tail_energy",
    "to_inference_data",
    "weight_correlation",
    "weight_summaries",
]
