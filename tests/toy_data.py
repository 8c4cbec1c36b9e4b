"""Small synthetic data sets shared by the tests (importable because pytest puts ``tests/`` on ``sys.path``)."""

import torch

CENTRES = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.5]])


def blobs(n: int = 240, seed: int = 0, dim: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Three balanced Gaussian blobs (noise 0.7) in ``dim >= 2`` dimensions; labels cycle 0, 1, 2."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.cat([CENTRES, torch.zeros(3, dim - 2)], dim=1)
    y = torch.arange(n) % 3
    return centres[y] + 0.7 * torch.randn(n, dim, generator=gen), y


def imbalanced_blobs(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three Gaussian blobs with imbalanced classes (frequencies 0.5, 0.3, 0.2; noise 0.6)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.multinomial(torch.tensor([0.5, 0.3, 0.2]), n, replacement=True, generator=g)
    centers = torch.tensor([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]])
    return centers[y] + 0.6 * torch.randn(n, 2, generator=g), y
