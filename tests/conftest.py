"""Suite-wide setup: one thread per pytest-xdist worker, a private cache, the longest tests first."""

from __future__ import annotations

import os

import pytest

# The suite runs on two xdist workers (pyproject addopts). Two processes that each spread their ops over every
# core thrash each other's OpenMP threads, so each worker, and every process a test starts, uses one thread.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    import torch

    torch.set_num_threads(1)

# Started first, so the other worker gets through the rest of the suite meanwhile (xdist's worksteal).
LONGEST_FIRST = ("test_learning.py",)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Put the longest tests at the front of the queue."""
    items.sort(key=lambda item: not any(item.nodeid.startswith(f"tests/{name}") for name in LONGEST_FIRST))


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Statistics, probes and classifiers the tests make go to a temp folder, never the user's ~/.cache/acgan."""
    os.environ["ACGAN_CACHE"] = str(tmp_path_factory.mktemp("acgan-cache"))
