r"""The pushforward of mean-field Gaussian factors through :math:`T(A, B) = A B^\top`.

With :math:`q_A = \mathcal N(\mu_A, \operatorname{diag} s_A^2)` on :math:`\mathbb R^{m\times r}` and
:math:`q_B = \mathcal N(\mu_B, \operatorname{diag} s_B^2)` on :math:`\mathbb R^{n\times r}`, the induced posterior on the
weight matrix is :math:`q_W = T_\#(q_A \otimes q_B)`. Its moments are available in closed form
(:math:`a_{ik}`, :math:`b_{jk}` independent, so :math:`W_{ij} = \sum_k a_{ik} b_{jk}` is a sum of independent products):

.. math::

    \mathbb E[W] = \mu_A \mu_B^\top, \qquad
    \operatorname{Cov}(W_{ij}, W_{i'j'}) = \sum_k \big[\delta_{ii'}\, s_{A,ik}^2\, \mu_{B,jk}\mu_{B,j'k}
    + \delta_{jj'}\, s_{B,jk}^2\, \mu_{A,ik}\mu_{A,i'k} + \delta_{ii'}\delta_{jj'}\, s_{A,ik}^2 s_{B,jk}^2\big].

Entries that share neither a row nor a column are uncorrelated, and in fact independent (they are functions of
disjoint sets of independent factor entries). Every draw has rank at most r, so for ``r < min(m, n)`` the measure is
concentrated on the determinantal variety of rank-r matrices, of dimension r(m + n - r) < mn: it is singular with
respect to Lebesgue measure on :math:`\mathbb R^{m\times n}` and has no density there.
"""

from __future__ import annotations

from typing import Any

import torch
from pyro.distributions import Normal, TorchDistribution
from pyro.infer.autoguide import AutoDiagonalNormal, AutoNormal
from torch.distributions import constraints, kl_divergence
from torch.distributions.utils import _standard_normal

from pyro_lowrank._validation import check_positive
from pyro_lowrank.distributions.constraints import LowRankMatrices

__all__ = ["LowRankMatrixNormal", "SingularDensityError"]


class SingularDensityError(NotImplementedError):
    """Raised by :meth:`LowRankMatrixNormal.log_prob`: the pushforward q_W has no usable Lebesgue density."""


class LowRankMatrixNormal(TorchDistribution):
    r"""Distribution of :math:`W = A B^\top` with independent Gaussian factors.

    Parameters
    ----------
    a_loc, a_scale : torch.Tensor
        Means and standard deviations of the left factor A, shape ``batch + (m, r)`` (the scale broadcasts).
    b_loc, b_scale : torch.Tensor
        Means and standard deviations of the right factor B, shape ``batch + (n, r)`` (the scale broadcasts).

    Notes
    -----
    ``event_shape = (m, n)``; ``batch_shape`` is the broadcast of the four arguments' leading dimensions.
    :meth:`rsample` is reparameterised (gradients flow to all four parameters). Because q_W has no density, never use
    it as a Pyro sample site: make A and B the sample sites and record W with ``pyro.deterministic``.

    Raises
    ------
    ValueError
        If the factors are not matrices, their ranks (last dimensions) differ, or a scale is not positive.
    """

    arg_constraints = {
        "a_loc": constraints.real,
        "a_scale": constraints.positive,
        "b_loc": constraints.real,
        "b_scale": constraints.positive,
    }
    has_rsample = True

    def __init__(
        self,
        a_loc: torch.Tensor,
        a_scale: torch.Tensor | float,
        b_loc: torch.Tensor,
        b_scale: torch.Tensor | float,
        validate_args: bool | None = None,
    ) -> None:
        a_loc = torch.as_tensor(a_loc)
        b_loc = torch.as_tensor(b_loc, dtype=a_loc.dtype, device=a_loc.device)
        a_scale = torch.as_tensor(a_scale, dtype=a_loc.dtype, device=a_loc.device)
        b_scale = torch.as_tensor(b_scale, dtype=a_loc.dtype, device=a_loc.device)
        if a_loc.dim() < 2 or b_loc.dim() < 2:
            raise ValueError(
                "a_loc and b_loc must have shape batch + (m, r) and batch + (n, r), "
                f"got a_loc {tuple(a_loc.shape)} and b_loc {tuple(b_loc.shape)}"
            )
        if a_loc.shape[-1] != b_loc.shape[-1]:
            raise ValueError(
                "a_loc and b_loc must share the rank r (last dimension), "
                f"got a_loc {tuple(a_loc.shape)} (r={a_loc.shape[-1]}) and b_loc {tuple(b_loc.shape)} (r={b_loc.shape[-1]})"
            )
        check_positive(a_scale.detach(), "a_scale")
        check_positive(b_scale.detach(), "b_scale")
        m, r = a_loc.shape[-2:]
        n = b_loc.shape[-2]
        try:
            batch_shape = torch.broadcast_shapes(
                a_loc.shape[:-2],
                torch.broadcast_shapes(a_scale.shape, (1, 1))[:-2],
                b_loc.shape[:-2],
                torch.broadcast_shapes(b_scale.shape, (1, 1))[:-2],
            )
        except RuntimeError as error:
            raise ValueError(f"the batch shapes of the factor parameters do not broadcast: {error}") from None
        self.a_loc = a_loc.expand(batch_shape + (m, r))
        self.a_scale = a_scale.expand(batch_shape + (m, r))
        self.b_loc = b_loc.expand(batch_shape + (n, r))
        self.b_scale = b_scale.expand(batch_shape + (n, r))
        super().__init__(batch_shape, torch.Size((m, n)), validate_args=validate_args)

    # ------------------------------------------------------------------ structure
    @property
    def rank(self) -> int:
        """The factorisation rank r: every draw has matrix rank at most r."""
        return self.a_loc.shape[-1]

    @property
    def is_singular(self) -> bool:
        """``True`` when r < min(m, n): q_W lives on rank-r matrices, a Lebesgue-null set of dimension r(m+n-r)."""
        m, n = self.event_shape
        return self.rank < min(m, n)

    @property
    def support_dimension(self) -> int:
        """Dimension r(m + n - r) of the manifold of rank-r matrices that carries q_W (mn when not singular)."""
        m, n = self.event_shape
        r = min(self.rank, m, n)
        return r * (m + n - r)

    @constraints.dependent_property(is_discrete=False, event_dim=2)
    def support(self) -> constraints.Constraint:
        """Matrices of rank at most r."""
        return LowRankMatrices(self.rank)

    def expand(self, batch_shape: torch.Size | tuple[int, ...], _instance: Any = None) -> "LowRankMatrixNormal":
        new = self._get_checked_instance(LowRankMatrixNormal, _instance)
        batch_shape = torch.Size(batch_shape)
        m, n = self.event_shape
        r = self.rank
        new.a_loc = self.a_loc.expand(batch_shape + (m, r))
        new.a_scale = self.a_scale.expand(batch_shape + (m, r))
        new.b_loc = self.b_loc.expand(batch_shape + (n, r))
        new.b_scale = self.b_scale.expand(batch_shape + (n, r))
        super(LowRankMatrixNormal, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    # ------------------------------------------------------------------ sampling
    def factor_distributions(self) -> tuple[TorchDistribution, TorchDistribution]:
        """The factor posteriors ``(q_A, q_B)`` as ``Normal(...).to_event(2)`` distributions."""
        return (
            Normal(self.a_loc, self.a_scale).to_event(2),
            Normal(self.b_loc, self.b_scale).to_event(2),
        )

    def sample_factors(self, sample_shape: torch.Size | tuple[int, ...] = torch.Size()) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``(A, B)`` by reparameterisation, shapes ``sample_shape + batch + (m, r)`` and ``... + (n, r)``."""
        sample_shape = torch.Size(sample_shape)
        eps_a = _standard_normal(sample_shape + self.a_loc.shape, dtype=self.a_loc.dtype, device=self.a_loc.device)
        eps_b = _standard_normal(sample_shape + self.b_loc.shape, dtype=self.b_loc.dtype, device=self.b_loc.device)
        return self.a_loc + self.a_scale * eps_a, self.b_loc + self.b_scale * eps_b

    def rsample(self, sample_shape: torch.Size | tuple[int, ...] = torch.Size()) -> torch.Tensor:
        """Draw ``W = A B^T`` (reparameterised), shape ``sample_shape + batch + (m, n)``."""
        a, b = self.sample_factors(sample_shape)
        return a @ b.transpose(-1, -2)

    # ------------------------------------------------------------------ moments
    @property
    def mean(self) -> torch.Tensor:
        r""":math:`\mathbb E[W] = \mu_A \mu_B^\top`."""
        return self.a_loc @ self.b_loc.transpose(-1, -2)

    @property
    def variance(self) -> torch.Tensor:
        r""":math:`\operatorname{Var} W_{ij} = \sum_k s_{A,ik}^2 \mu_{B,jk}^2 + \mu_{A,ik}^2 s_{B,jk}^2 + s_{A,ik}^2 s_{B,jk}^2`."""
        var_a, var_b = self.a_scale.square(), self.b_scale.square()
        mean_a_sq, mean_b_sq = self.a_loc.square(), self.b_loc.square()
        return (var_a @ mean_b_sq.transpose(-1, -2) + mean_a_sq @ var_b.transpose(-1, -2)
                + var_a @ var_b.transpose(-1, -2))

    def covariance(self, i: Any, j: Any, i2: Any, j2: Any) -> torch.Tensor:
        r"""Covariance of the entries :math:`W_{ij}` and :math:`W_{i'j'}` (the covariance lemma).

        .. math::

            \operatorname{Cov}(W_{ij}, W_{i'j'}) = \sum_k \big[\delta_{ii'} s_{A,ik}^2 \mu_{B,jk}\mu_{B,j'k}
            + \delta_{jj'} s_{B,jk}^2 \mu_{A,ik}\mu_{A,i'k} + \delta_{ii'}\delta_{jj'} s_{A,ik}^2 s_{B,jk}^2\big]

        Parameters
        ----------
        i, j, i2, j2 : int or integer tensor
            Row and column indices of the two entries; tensors broadcast against each other (index shape ``I``).

        Returns
        -------
        torch.Tensor
            Shape ``batch_shape + I``.
        """
        m, n = self.event_shape
        idx = [torch.as_tensor(v, dtype=torch.long, device=self.a_loc.device) for v in (i, j, i2, j2)]
        for value, name, size in zip(idx, ("i", "j", "i2", "j2"), (m, n, m, n)):
            if bool(((value < 0) | (value >= size)).any()):
                raise ValueError(f"{name} must index into [0, {size}), got {value.tolist()}")
        i, j, i2, j2 = torch.broadcast_tensors(*idx)
        var_a, var_b = self.a_scale.square(), self.b_scale.square()
        # gather rows: batch + I + (r,)
        a_i, a_i2 = self.a_loc[..., i, :], self.a_loc[..., i2, :]
        b_j, b_j2 = self.b_loc[..., j, :], self.b_loc[..., j2, :]
        same_row = (i == i2).to(self.a_loc.dtype)
        same_col = (j == j2).to(self.a_loc.dtype)
        row_term = (var_a[..., i, :] * b_j * b_j2).sum(-1)
        col_term = (var_b[..., j, :] * a_i * a_i2).sum(-1)
        both_term = (var_a[..., i, :] * var_b[..., j, :]).sum(-1)
        return same_row * row_term + same_col * col_term + same_row * same_col * both_term

    def covariance_matrix(self, max_entries: int = 4096) -> torch.Tensor:
        r"""Dense covariance of :math:`\operatorname{vec}(W)` (row-major: entry (i, j) has index ``i * n + j``).

        Shape ``batch + (m n, m n)``. Its rank is at most the support dimension r(m + n - r) only in the
        linearised sense; the matrix is generally full rank because the map is non-linear.

        Parameters
        ----------
        max_entries : int
            Refuse when ``m * n`` exceeds this (the result has ``(m n)^2`` entries); raise it deliberately.
        """
        m, n = self.event_shape
        if m * n > max_entries:
            raise ValueError(
                f"covariance_matrix is dense with (m*n)^2 entries; m*n must be <= max_entries={max_entries}, "
                f"got m*n={m * n}. Use covariance(i, j, i2, j2) for selected entries or raise max_entries."
            )
        var_a, var_b = self.a_scale.square(), self.b_scale.square()
        eye_m = torch.eye(m, dtype=self.a_loc.dtype, device=self.a_loc.device)
        eye_n = torch.eye(n, dtype=self.a_loc.dtype, device=self.a_loc.device)
        row = torch.einsum("...ik,...jk,...lk->...ijl", var_a, self.b_loc, self.b_loc)  # (m, n, n')
        col = torch.einsum("...jk,...ik,...lk->...jil", var_b, self.a_loc, self.a_loc)  # (n, m, m')
        both = var_a @ var_b.transpose(-1, -2)  # (m, n)
        cov = (
            torch.einsum("...ijl,ip->...ijpl", row, eye_m)
            + torch.einsum("...jil,jq->...ijlq", col, eye_n)
            + torch.einsum("...ij,ip,jq->...ijpq", both, eye_m, eye_n)
        )
        return cov.reshape(self.batch_shape + (m * n, m * n))

    # ------------------------------------------------------------------ densities
    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Always raises :class:`SingularDensityError` (a ``NotImplementedError``), explaining why."""
        m, n = self.event_shape
        if self.is_singular:
            reason = (
                f"q_W is singular: every draw W = A B^T has rank <= r = {self.rank} < min(m, n) = {min(m, n)}, so "
                f"q_W puts all its mass on the rank-{self.rank} matrices, a set of dimension "
                f"r(m+n-r) = {self.support_dimension} < m*n = {m * n} with Lebesgue measure zero; it has no density "
                f"on R^({m}x{n})."
            )
        else:
            reason = (
                f"with r = {self.rank} >= min(m, n) = {min(m, n)} q_W has a density, but it is an integral over the "
                f"GL(r) gauge fibre {{(A G, B G^-T)}} with no closed form."
            )
        raise SingularDensityError(
            f"LowRankMatrixNormal.log_prob is not available: {reason} Use the factor-space quantities instead: "
            "factor_log_prob(A, B), factor_kl(prior), or make A and B Pyro sample sites and record W with "
            "pyro.deterministic."
        )

    def factor_log_prob(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Log density of the factors, ``log q_A(A) + log q_B(B)``, the quantity the ELBO actually uses."""
        q_a, q_b = self.factor_distributions()
        return q_a.log_prob(a) + q_b.log_prob(b)

    def factor_kl(self, prior: Any, num_samples: int = 256) -> torch.Tensor:
        r""":math:`\mathrm{KL}(q_A q_B \,\|\, p_A p_B) = \mathrm{KL}(q_A\|p_A) + \mathrm{KL}(q_B\|p_B)`.

        By the data-processing inequality this upper-bounds :math:`\mathrm{KL}(q_W \| p_W)` for the pushforward of the
        prior through the same map; it is the complexity term of the ELBO and of PAC-Bayes bounds.

        Parameters
        ----------
        prior : LowRankMatrixNormal, FactorPrior, or tuple (p_A, p_B)
            The factor prior. A :class:`~pyro_lowrank.distributions.FactorPrior` (any callable ``shape -> dist``) or
            distributions with scalar event (broadcast to every entry) or event shape ``(m, r)`` / ``(n, r)``.
        num_samples : int
            Monte Carlo draws used when no closed form is registered (e.g. the scale-mixture prior); the estimate
            :math:`\frac1S\sum_s \log q(\theta_s) - \log p(\theta_s)` is unbiased and reparameterised.

        Returns
        -------
        torch.Tensor
            Shape ``batch_shape``.
        """
        m, n = self.event_shape
        r = self.rank
        if isinstance(prior, LowRankMatrixNormal):
            p_a, p_b = prior.factor_distributions()
        elif isinstance(prior, tuple) and len(prior) == 2:
            p_a, p_b = prior
        elif callable(prior):
            p_a, p_b = prior((m, r)), prior((n, r))
        else:
            raise TypeError(
                "prior must be a LowRankMatrixNormal, a FactorPrior (callable shape -> distribution) or a tuple "
                f"(p_A, p_B), got {type(prior).__name__}"
            )
        q_a, q_b = self.factor_distributions()
        return self._kl(q_a, _as_matrix_event(p_a, (m, r)), num_samples) + self._kl(
            q_b, _as_matrix_event(p_b, (n, r)), num_samples
        )

    @staticmethod
    def _kl(q: TorchDistribution, p: TorchDistribution, num_samples: int) -> torch.Tensor:
        try:
            return kl_divergence(q, p)
        except NotImplementedError:
            draws = q.rsample((num_samples,))
            return (q.log_prob(draws) - p.log_prob(draws)).mean(0)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_guide(cls, guide: Any, site_prefix: str = "") -> "LowRankMatrixNormal":
        """Build q_W from a trained mean-field guide over the sites ``{prefix}.A`` and ``{prefix}.B``.

        Supports :class:`~pyro_lowrank.guides.FactorGuide`, :class:`pyro.infer.autoguide.AutoNormal` and
        :class:`pyro.infer.autoguide.AutoDiagonalNormal` (the factor sites are unconstrained, so their unconstrained
        Normal is the factor posterior itself).

        Parameters
        ----------
        guide : AutoGuide
            A guide that has been run at least once.
        site_prefix : str
            The layer's Pyro name, e.g. ``"layers.0"``; empty for a top-level layer.
        """
        names = [f"{site_prefix}.{s}" if site_prefix else s for s in ("A", "B")]
        if getattr(guide, "prototype_trace", None) is None:
            raise ValueError("guide has not been set up yet: call it once (or train it) before reading the posterior")
        missing = [name for name in names if name not in guide.prototype_trace.nodes]
        if missing:
            sites = [n for n, s in guide.prototype_trace.nodes.items() if s["type"] == "sample"]
            raise ValueError(f"site_prefix={site_prefix!r}: guide has no sites {missing}; its sample sites are {sites}")
        if isinstance(guide, AutoNormal):  # includes FactorGuide
            (a_loc, a_scale), (b_loc, b_scale) = (guide._get_loc_and_scale(name) for name in names)
        elif isinstance(guide, AutoDiagonalNormal):
            loc, scale = guide._loc_scale()
            locs = {site["name"]: value for site, value in guide._unpack_latent(loc)}
            scales = {site["name"]: value for site, value in guide._unpack_latent(scale)}
            (a_loc, a_scale), (b_loc, b_scale) = ((locs[name], scales[name]) for name in names)
        else:
            raise TypeError(
                "from_guide supports FactorGuide, AutoNormal and AutoDiagonalNormal (mean-field Gaussian guides); a "
                f"correlated or non-Gaussian guide does not induce this pushforward, got {type(guide).__name__}"
            )
        return cls(a_loc.detach(), a_scale.detach(), b_loc.detach(), b_scale.detach())

    def __repr__(self) -> str:
        m, n = self.event_shape
        return (
            f"{type(self).__name__}(m={m}, n={n}, rank={self.rank}, batch_shape={tuple(self.batch_shape)}, "
            f"singular={self.is_singular})"
        )


def _as_matrix_event(p: TorchDistribution, shape: tuple[int, int]) -> TorchDistribution:
    """Broadcast a scalar-event prior to one ``to_event(2)`` distribution over a factor of ``shape``."""
    if p.event_shape == torch.Size():
        return p.expand(torch.broadcast_shapes(p.batch_shape, shape)).to_event(2)
    if p.event_shape != torch.Size(shape):
        raise ValueError(f"prior factor distribution must have event shape () or {shape}, got {tuple(p.event_shape)}")
    return p
