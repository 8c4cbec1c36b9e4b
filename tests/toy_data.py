"""Small synthetic data sets shared by the tests (importable because pytest puts ``tests/`` on ``sys.path``)."""

import pyro
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


def keyword_sequences(
    n: int, length: int = 10, vocab: int = 40, seed: int = 0, cls: int = 1, pad: int = 0, keyword: int = 5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token sequences ``[CLS, w_1, ..., PAD, ...]`` of random lengths; the label is whether ``keyword`` occurs.

    Words are drawn from ``[cls + 1, vocab)`` without the keyword, which is then planted at a random position in half
    of the sequences, so the label depends on content anywhere in the sequence and not on its position.
    """
    gen = torch.Generator().manual_seed(seed)
    words = torch.randint(cls + 1, vocab - 1, (n, length), generator=gen)
    words = words + (words >= keyword).long()  # skip the keyword id
    lengths = torch.randint(3, length + 1, (n,), generator=gen)
    y = torch.arange(n) % 2
    where = (torch.rand(n, generator=gen) * (lengths - 1).float()).long() + 1
    tokens = words.clone()
    tokens[:, 0] = cls
    tokens[y == 1, where[y == 1]] = keyword
    tokens[torch.arange(length).expand(n, length) >= lengths[:, None]] = pad
    return tokens, y


def latent_site_values(model, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """One prior draw of every latent site of ``model(x)`` (not the data plate, not the observation ``obs``)."""
    with pyro.poutine.block(), torch.no_grad():
        trace = pyro.poutine.trace(model).get_trace(x)
    return {name: site["value"] for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"] and name not in ("data", "obs")}
