r"""The data plate shared by the reference models: full data, a minibatch of a larger dataset, or Pyro subsampling.

With a minibatch of size B from a dataset of N points, every site inside the plate is scaled by N / B, which keeps the
ELBO an unbiased estimate of the full-data ELBO; global sites (the weights' factors) are sampled outside the plate and
are not scaled.
"""

from __future__ import annotations

import pyro
import torch

__all__ = ["data_plate"]


def data_plate(
    x: torch.Tensor,
    y: torch.Tensor | None,
    num_data: int | None,
    subsample_size: int | None,
    *,
    name: str = "data",
    dim: int = -1,
) -> tuple[pyro.plate, torch.Tensor, torch.Tensor | None]:
    """Build the data plate over the first dimension of ``x`` (and ``y``).

    Parameters
    ----------
    x, y : Tensor
        Inputs with the data along dimension 0 (any trailing shape: features, time steps, tokens) and optional
        targets with the same first dimension.
    num_data : int, optional
        ``x`` is a minibatch of a dataset of this size: the plate has this size and subsamples all of ``x``.
    subsample_size : int, optional
        The plate draws a random minibatch of this size from ``x`` (its indices are drawn here, once).
    name, dim : str, int
        The plate's name and dimension.

    Returns
    -------
    plate : pyro.plate
        The data plate, to be entered around the per-datum sites.
    x, y : Tensor
        The (possibly subsampled) inputs and targets.
    """
    if subsample_size is not None and num_data is not None:
        raise ValueError(
            "pass num_data (x is a minibatch of that many points) or subsample_size (the plate subsamples x), "
            f"not both; got num_data={num_data} and subsample_size={subsample_size}"
        )
    if subsample_size is not None:
        plate = pyro.plate(name, x.shape[0], subsample_size=subsample_size, dim=dim)
        with plate as index:  # the plate draws its minibatch indices once; re-entering it reuses them
            pass
        return plate, x[index], None if y is None else y[index]
    size = x.shape[0] if num_data is None else num_data
    return pyro.plate(name, size, subsample=torch.arange(x.shape[0], device=x.device), dim=dim), x, y
