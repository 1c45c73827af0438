"""Shared fixtures of the model tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks: one thread is faster (no OpenMP spinning on busy cores) and keeps results
    independent of the machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
