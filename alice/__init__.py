"""Benchmark harness reproducing Alice (Jiang et al., ICCV 2023) and baseline SSL methods."""

__version__ = "0.1.0"
