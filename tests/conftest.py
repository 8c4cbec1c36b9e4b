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


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny tensors (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    on a busy 2-core machine more threads only spin-wait against each other or against worker processes."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    """Skip tests marked ``cuda`` on machines without a CUDA device (CI is CPU-only)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
