"""Fixtures shared across the test packages."""

import os
from pathlib import Path

import pytest

from alice.data.folds import make_folds, write_folds
from alice.data.phantom import write_dataset
from alice.data.preprocess import prepare


def build_tiny_pool(root: Path, seed: int, spacing) -> Path:
    """4 unlabeled FLARE22 phantoms (32² in-plane) as a prepared pool cache with its folds.json;
    the release (with phantom_truth/) is root/"release", the cache (returned) root/"data"."""
    write_dataset("flare22", root / "release", {"labeled": 0, "unlabeled": 4, "validation": 0},
                  seed=seed, geometry={"inplane_voxels": 32, "fov_mm": [340, 400],
                                       "slice_mm": [8.0, 10.0]}, workers=1)
    data = root / "data"
    manifest = prepare("flare22_pool", root / "release", data,
                       {"spacing": list(spacing), "window": [-125, 255]}, progress=False)
    write_folds(data / "folds.json", make_folds("flare22_pool", manifest, {"val_fraction": 0.25}, 0))
    return data


@pytest.fixture(scope="session")
def tiny_pool():
    """The builder above, for module-scoped fixtures of the tests that need a pool."""
    return build_tiny_pool


@pytest.fixture
def one_thread():
    """One torch thread for the duration of a test: tiny networks run faster on it, shared cores
    stay free and results do not depend on the machine's core count."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def no_slurm_probe(request, tmp_path_factory, monkeypatch):
    """Where SLURM is installed but no controller runs (CI installs it for tests/test_cluster.py),
    the SLURM executor plugin's `scontrol show config` probe, made by every Snakemake start-up,
    waits ~9 s for the controller. Tests that do not use the cluster get an `scontrol` that fails at
    once, first on PATH; tests marked `cluster` see the real one."""
    if request.node.get_closest_marker("cluster") is not None:
        return
    shim = tmp_path_factory.getbasetemp() / "no-slurm-bin"
    if not (shim / "scontrol").exists():
        shim.mkdir(exist_ok=True)
        (shim / "scontrol").write_text("#!/bin/sh\nexit 1\n")
        (shim / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim}{os.pathsep}{os.environ.get('PATH', '')}")
