"""Fixtures for the dataset tests: the shared, read-only data folder ``../shared/data`` beside the repository."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_root() -> Path:
    """``../shared/data`` (what CI passes as ``root``); the test is skipped when the folder is absent."""
    if not (SHARED_DATA / "SHA256SUMS").is_file():
        pytest.skip(f"the shared data folder {SHARED_DATA} (with SHA256SUMS) is not present beside the repository")
    return SHARED_DATA
