"""Shared pytest fixtures (kept generic: every test starts from a clean Pyro state and a fixed seed)."""

import pyro
import pytest


@pytest.fixture(autouse=True)
def _clean_pyro_state():
    """Clear Pyro's global parameter store and seed the RNGs (torch, numpy, random) before and after each test."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


def pytest_collection_modifyitems(config, items):
    """Skip tests marked ``cuda`` on machines without a CUDA device (CI is CPU-only)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
