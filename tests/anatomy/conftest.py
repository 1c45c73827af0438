"""Shared fixtures of the anatomy tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Small convolutions: one thread is faster and keeps results independent of the machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
