"""Shared fixtures of the anatomy tests."""

import pytest


@pytest.fixture(autouse=True)
def _one_thread_here(one_thread):
    """Every test of this folder runs on one torch thread (tests/conftest.py)."""
    yield
