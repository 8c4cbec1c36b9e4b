r"""The generalised Gauss-Newton matrix of a low-rank network in factor space, matrix-free, and its gauge kernel.

For a model whose network output is the deterministic site ``f`` (every model of :mod:`pyro_lowrank.models`), take
the parameters :math:`\theta` to be the values of chosen latent sites (the factors A, B and the biases, e.g. a MAP or
the guide's means) flattened into one vector of size D, and :math:`f(\theta) \in \mathbb R^{N \times O}` the outputs
on N inputs. The GGN of the negative log-likelihood is

.. math::

    G = J^\top \Lambda J, \qquad J = \partial f / \partial\theta \in \mathbb R^{NO \times D}, \qquad
    \Lambda = \operatorname{blockdiag}_n \Lambda_n,

with :math:`\Lambda_n = \sigma^{-2} I` for a Gaussian likelihood and :math:`\Lambda_n = \operatorname{diag}(p_n) -
p_n p_n^\top` (:math:`p_n = \operatorname{softmax} f_n`) for a categorical one. :class:`FactorGGN` never forms J or
G: :math:`G v = J^\top (\Lambda (J v))` is one forward-mode product (``torch.func.jvp``) and one reverse-mode product
(``torch.func.vjp``), at the cost of about three network passes. laplace-torch forms curvature over an ``nn.Module``'s
``parameters()``; here the parameters are Pyro sample sites of the model, which laplace-torch cannot see, and the
products are matrix-free, which its backends are not, hence this module.

**The gauge.** For a factor pair (A: m x r, B: n x r) and any r x r matrix X, the curve
:math:`(A e^{tX}, B e^{-tX^\top})` leaves :math:`A B^\top` unchanged, so its tangent :math:`(A X, -B X^\top)`
(:func:`gauge_tangent`) lies in the kernel of J, hence of G: :math:`r^2` kernel directions per factorised layer
that no data can constrain.
"""

from __future__ import annotations

import math
from typing import Callable

import pyro
import torch
from pyro.poutine.util import site_is_subsample
from torch.func import jvp, vjp, vmap

__all__ = ["FactorGGN", "SiteLayout", "gauge_tangent", "model_outputs", "output_hessian_product", "output_matrix",
           "top_eigenpairs"]


class SiteLayout:
    """How a dict of latent-site values maps to one flat parameter vector of length D (and back).

    Parameters
    ----------
    values : dict of str to torch.Tensor
        Site values; their order and shapes define the layout.
    """

    def __init__(self, values: dict[str, torch.Tensor]) -> None:
        if not values:
            raise ValueError("values must name at least one latent site, got an empty dict")
        self.names = list(values)
        self.shapes = [torch.Size(values[name].shape) for name in self.names]
        self.sizes = [math.prod(shape) for shape in self.shapes]

    @property
    def num_parameters(self) -> int:
        """D, the length of the flat vector."""
        return sum(self.sizes)

    def flatten(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """``{site: tensor of shape batch + site shape}`` to one tensor of shape ``batch + (D,)``."""
        parts = []
        for name, shape in zip(self.names, self.shapes):
            value = tensors[name]
            cut = value.dim() - len(shape)
            if cut < 0 or value.shape[cut:] != shape:
                raise ValueError(f"tensors[{name!r}] must end in shape {tuple(shape)}, got {tuple(value.shape)}")
            parts.append(value.reshape(*value.shape[:cut], -1))
        return torch.cat(parts, dim=-1)

    def unflatten(self, v: torch.Tensor) -> dict[str, torch.Tensor]:
        """A tensor of shape ``batch + (D,)`` to ``{site: tensor of shape batch + site shape}``."""
        if v.dim() == 0 or v.shape[-1] != self.num_parameters:
            raise ValueError(f"v must have last dimension D = {self.num_parameters}, got shape {tuple(v.shape)}")
        batch = v.shape[:-1]
        return {name: part.reshape(*batch, *shape)
                for name, part, shape in zip(self.names, v.split(self.sizes, dim=-1), self.shapes)}


def model_outputs(model: Callable, values: dict[str, torch.Tensor], x: torch.Tensor, *,
                  batched: bool = False, plate_depth: int = 1) -> torch.Tensor:
    r"""The model's network output (its deterministic site ``f``) with its latent sites set to ``values``.

    The model runs under ``pyro.poutine.condition`` (inside ``block``, so nothing reaches an outer handler): this is
    :math:`f(x; \theta)` for any model of :mod:`pyro_lowrank.models`. With ``batched=True`` every value carries a
    leading batch of S parameter settings, placed left of the model's ``plate_depth`` plates (as
    :func:`~pyro_lowrank.inference.vectorized_traces` places guide draws), so the S networks run in one vectorised
    pass and the output is ``(S, N, ...)``.

    Raises ``ValueError`` when a latent site (other than the observation ``obs``) has no value, or when the model has
    no site ``f``.
    """
    data = values
    if batched:
        data = {name: value.reshape(value.shape[:1] + (1,) * plate_depth + value.shape[1:])
                for name, value in values.items()}
    with pyro.validation_enabled(False), pyro.poutine.block():
        trace = pyro.poutine.trace(pyro.poutine.condition(model, data=data)).get_trace(x)
    missing = [name for name in trace.stochastic_nodes
               if not site_is_subsample(trace.nodes[name]) and name not in data and name != "obs"]
    if missing:
        raise ValueError(f"values must give every latent site of the model; missing {missing}")
    if "f" not in trace.nodes:
        raise ValueError("the model records no deterministic site 'f' (its network output)")
    return trace.nodes["f"]["value"]


def output_matrix(model: Callable, values: dict[str, torch.Tensor], x: torch.Tensor, likelihood: str, *,
                  batched: bool = False, plate_depth: int = 1) -> torch.Tensor:
    """:func:`model_outputs` as the matrix of outputs ``(..., N, O)`` (a Gaussian model's ``f`` gains O = 1), run
    with gradients enabled: the layers' gradient-free fast path cannot see ``torch.func`` transform tensors."""
    with torch.enable_grad():
        f = model_outputs(model, values, x, batched=batched, plate_depth=plate_depth)
    return f.unsqueeze(-1) if likelihood == "gaussian" else f


def output_hessian_product(outputs: torch.Tensor, u: torch.Tensor, likelihood: str, noise_scale: float = 1.0
                           ) -> torch.Tensor:
    r""":math:`\Lambda_n u_n` per datum: :math:`u / \sigma^2` (Gaussian) or :math:`p \odot u - p\,(p^\top u)` with
    :math:`p = \operatorname{softmax}` of ``outputs`` (categorical); ``outputs`` and ``u`` of shape ``(..., N, O)``."""
    if likelihood == "gaussian":
        return u / noise_scale**2
    p = outputs.softmax(-1)
    return p * u - p * (p * u).sum(-1, keepdim=True)


class FactorGGN:
    """Matrix-free GGN :math:`J^\\top \\Lambda J` of a model's likelihood over the values of some of its latent sites.

    Parameters
    ----------
    model : callable
        A Pyro model called as ``model(x)`` that records its network output as the deterministic site ``f`` (shape
        ``(N,)`` for Gaussian regression, ``(N, C)`` of logits for classification).
    values : dict of str to torch.Tensor
        The point :math:`\\theta` (e.g. ``guide.median()``): every latent site of the model must be given; all of them
        are the parameters.
    x : torch.Tensor
        The N inputs.
    likelihood : {"gaussian", "categorical"}
        Which output Hessian :math:`\\Lambda_n`.
    noise_scale : float
        sigma of the Gaussian likelihood.
    batch_size : int, optional
        :meth:`matvec` sums :math:`J_b^\top \Lambda_b J_b v` over data chunks of this size (G is a sum over the
        data), so its memory is that of one chunk; ``None`` takes all N inputs in one pass.
    """

    def __init__(self, model: Callable, values: dict[str, torch.Tensor], x: torch.Tensor, *,
                 likelihood: str = "gaussian", noise_scale: float = 1.0, batch_size: int | None = None) -> None:
        if likelihood not in ("gaussian", "categorical"):
            raise ValueError(f"likelihood must be 'gaussian' or 'categorical', got {likelihood!r}")
        if not (noise_scale > 0 and math.isfinite(noise_scale)):
            raise ValueError(f"noise_scale must be a finite number > 0, got {noise_scale!r}")
        if not values:
            raise ValueError("values must name at least one latent site, got an empty dict")
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
        self.model, self.x, self.batch_size = model, x, batch_size
        self.likelihood, self.noise_scale = likelihood, float(noise_scale)
        self.layout = SiteLayout(values)
        self.names = self.layout.names
        self.point = tuple(values[name].detach() for name in self.names)
        self.num_products = 0
        with torch.no_grad():
            self.outputs = self.network(*self.point)

    @property
    def num_parameters(self) -> int:
        """D, the length of the flattened parameter vector."""
        return self.layout.num_parameters

    def network(self, *tensors: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
        """The outputs ``(N, O)`` at the site values ``tensors`` (in the order of ``names``); ``rows`` selects a
        chunk of the inputs."""
        inputs = self.x if rows is None else self.x[rows]
        return output_matrix(self.model, dict(zip(self.names, tensors)), inputs, self.likelihood)

    def unflatten(self, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Split a flat vector of length D into tensors shaped like the site values."""
        if v.shape != (self.num_parameters,):
            raise ValueError(f"v must have shape ({self.num_parameters},), got {tuple(v.shape)}")
        return tuple(self.layout.unflatten(v).values())

    def flatten(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """Concatenate ``{site: tensor}`` (every site of ``names``) into a flat vector of length D."""
        return self.layout.flatten(tensors)

    def jvp(self, v: torch.Tensor) -> torch.Tensor:
        """:math:`J v`, shape ``(N, O)``."""
        return jvp(self.network, self.point, self.unflatten(v))[1]

    def vjp(self, u: torch.Tensor) -> torch.Tensor:
        """:math:`J^\\top u` for ``u`` of shape ``(N, O)``, flat."""
        _, pullback = vjp(self.network, *self.point)
        return torch.cat([g.reshape(-1) for g in pullback(u)])

    def output_hessian_product(self, u: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
        """:math:`\\Lambda u` per datum (``u`` of shape ``(N, O)``, or of the chunk ``rows``)."""
        outputs = self.outputs if rows is None else self.outputs[rows]
        return output_hessian_product(outputs, u, self.likelihood, self.noise_scale)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """:math:`G v = J^\\top \\Lambda J v` (flat, length D), over data chunks of ``batch_size``; counted in
        :attr:`num_products`."""
        self.num_products += 1
        num = self.outputs.shape[0]
        if self.batch_size is None or self.batch_size >= num:
            return self.vjp(self.output_hessian_product(self.jvp(v)))
        tangent, total = self.unflatten(v), torch.zeros_like(v)
        for start in range(0, num, self.batch_size):
            rows = slice(start, min(start + self.batch_size, num))
            chunk = lambda *t, rows=rows: self.network(*t, rows=rows)  # noqa: E731
            ju = jvp(chunk, self.point, tangent)[1]
            _, pullback = vjp(chunk, *self.point)
            total = total + torch.cat([g.reshape(-1) for g in pullback(self.output_hessian_product(ju, rows))])
        return total

    def sqrt_rows(self, chunk_size: int = 256) -> torch.Tensor:
        r"""The rows of :math:`R = M^\top J` (shape ``(N·O, D)``) with :math:`\Lambda_n = M_n M_n^\top`, so that
        :math:`G = R^\top R` exactly.

        :math:`M_n = \sigma^{-1} I` (Gaussian) or :math:`M_n = \operatorname{diag}(s_n) - p_n s_n^\top`,
        :math:`s_n = \sqrt{p_n}` (categorical; :math:`M_n M_n^\top = \operatorname{diag}(p_n) - p_n p_n^\top` because
        :math:`I - s_n s_n^\top` is a projector). Row (n, c) depends on datum n alone, so the data are taken in chunks
        of about ``chunk_size / O`` inputs: one forward pass per chunk and one reverse-mode product per row of the
        chunk, batched by ``torch.func.vmap``, i.e. N·O backward passes over chunk-sized batches in all (cost and
        memory linear in N). Use it for the diagonal of G and for the kernel study.
        """
        n, o = self.outputs.shape
        like = self.outputs
        if self.likelihood == "gaussian":
            sqrt = torch.eye(o, dtype=like.dtype, device=like.device).expand(n, o, o) / self.noise_scale
        else:
            p = like.softmax(-1)
            s = p.sqrt()
            sqrt = torch.diag_embed(s) - p.unsqueeze(-1) * s.unsqueeze(-2)  # M_n[i, c]
        per_chunk = max(1, chunk_size // o)
        rows = []
        for first in range(0, n, per_chunk):
            data = slice(first, min(first + per_chunk, n))
            count = data.stop - data.start

            _, pullback = vjp(lambda *t, rows=data: self.network(*t, rows=rows), *self.point)
            datum = torch.arange(count, device=like.device).repeat_interleave(o)
            column = torch.arange(o, device=like.device).repeat(count)
            cotangent = torch.zeros(count * o, count, o, dtype=like.dtype, device=like.device)
            cotangent[torch.arange(count * o, device=like.device), datum] = sqrt[data][datum, :, column]
            parts = vmap(pullback)(cotangent)
            rows.append(torch.cat([part.reshape(count * o, -1) for part in parts], dim=1))
        return torch.cat(rows)

    def diagonal(self, chunk_size: int = 256) -> torch.Tensor:
        """diag(G), length D: the column sums of squares of :meth:`sqrt_rows`."""
        return self.sqrt_rows(chunk_size).square().sum(0)

    def dense(self) -> torch.Tensor:
        """G as a D x D matrix, one :meth:`matvec` per column (for small networks and tests)."""
        eye = torch.eye(self.num_parameters, dtype=self.point[0].dtype, device=self.point[0].device)
        return torch.stack([self.matvec(column) for column in eye], dim=1)


def gauge_tangent(values: dict[str, torch.Tensor], a_site: str, b_site: str, generator: torch.Tensor) -> dict:
    r"""The tangent :math:`(A X, -B X^\top)` of the gauge orbit :math:`(A e^{tX}, B e^{-tX^\top})` at ``values``.

    Parameters
    ----------
    values : dict of str to torch.Tensor
        Site values with ``values[a_site]`` (m x r) and ``values[b_site]`` (n x r).
    a_site, b_site : str
        The pair's site names (``layer.factor_sites()["weight"]``).
    generator : torch.Tensor
        X, r x r.

    Returns
    -------
    dict of str to torch.Tensor
        A tangent for every site of ``values``: zero except at the pair.
    """
    a, b = values[a_site], values[b_site]
    r = a.shape[-1]
    if generator.shape != (r, r):
        raise ValueError(f"generator must have shape ({r}, {r}) for a rank-{r} pair, got {tuple(generator.shape)}")
    tangent = {name: torch.zeros_like(value) for name, value in values.items()}
    tangent[a_site] = a @ generator
    tangent[b_site] = -(b @ generator.T)
    return tangent


def top_eigenpairs(ggn: FactorGGN, k: int, *, tol: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The k largest eigenvalues and eigenvectors of the GGN from matrix-vector products only (Lanczos).

    SciPy's ARPACK ``eigsh`` (implicitly restarted Lanczos) runs on a ``LinearOperator`` whose product is
    :meth:`FactorGGN.matvec` (in float64), so G is never formed: cost about k to 3k products. The low-rank Laplace
    approximation keeps these directions, :math:`G \approx U \operatorname{diag}(\lambda) U^\top`.

    Parameters
    ----------
    ggn : FactorGGN
        The operator.
    k : int
        How many eigenpairs, 1 <= k < D.
    tol : float
        ARPACK's relative tolerance (0: machine precision).

    Returns
    -------
    eigenvalues : torch.Tensor
        Shape ``(k,)``, descending.
    eigenvectors : torch.Tensor
        Shape ``(D, k)``, orthonormal columns, in the dtype and on the device of the site values.
    """
    import numpy as np
    from scipy.sparse.linalg import LinearOperator, eigsh

    size = ggn.num_parameters
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < size:
        raise ValueError(f"k must be an integer in [1, {size - 1}] for a GGN of size {size}, got {k!r}")
    like = ggn.point[0]

    def matvec(v: np.ndarray) -> np.ndarray:
        product = ggn.matvec(torch.as_tensor(np.ravel(v), dtype=like.dtype, device=like.device))
        return product.detach().double().cpu().numpy()

    operator = LinearOperator((size, size), matvec=matvec, dtype=np.float64)
    start = np.random.default_rng(0).standard_normal(size)  # a fixed start vector: reproducible runs
    values, vectors = eigsh(operator, k=k, which="LA", tol=tol, v0=start)
    order = np.argsort(values)[::-1]
    return (torch.as_tensor(values[order].copy(), dtype=like.dtype, device=like.device),
            torch.as_tensor(vectors[:, order].copy(), dtype=like.dtype, device=like.device))
