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


# Run in a fresh interpreter by `light_stages`: every stage in turn, one JSON line each.
_LIGHT_PROBE = r'''
import importlib, json, sys, traceback
HEAVY = ("torch", "monai")
where = {}

class Watch:  # where a heavy package was first imported from: the frames of this checkout
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in HEAVY and top not in where:
            where[top] = "".join(f for f in traceback.format_stack()[:-1] if "importlib" not in f)
        return None

sys.meta_path.insert(0, Watch())
from alice.cli import main
stages = [["import:alice.cli"]] + json.load(sys.stdin)
for stage in stages:
    if stage[0].startswith("import:"):
        importlib.import_module(stage[0][len("import:"):])
        rc = 0
    else:
        rc = main(stage)
    heavy = [m for m in HEAVY if m in sys.modules]
    print(json.dumps({"stage": stage, "rc": rc, "heavy": heavy, "where": [where.get(m) for m in heavy]}))
    if rc or heavy:
        break
'''


@pytest.fixture(scope="session")
def light_stages():
    """Run `alice` stages that neither train nor predict (argv lists; ["import:<module>"] imports
    a module instead) one after another in one fresh interpreter, in `cwd`, and fail naming the
    first that exits non-zero or imports torch or MONAI (~2-4 s a job: docs/demo.md "Start-up cost"),
    with where the import came from."""
    import json
    import subprocess
    import sys

    def run(stages: list[list[str]], cwd: Path) -> None:
        proc = subprocess.run([sys.executable, "-c", _LIGHT_PROBE], input=json.dumps(stages),
                              cwd=cwd, capture_output=True, text=True, timeout=300)
        results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        assert proc.returncode == 0 and results, proc.stderr[-3000:]
        last = results[-1]
        assert last["rc"] == 0, f"alice {' '.join(last['stage'])} failed:\n{proc.stderr[-3000:]}"
        assert not last["heavy"], (f"`alice {' '.join(last['stage'])}` imports {last['heavy']}:\n"
                                   + "\n".join(w or "" for w in last["where"]))
        assert len(results) == len(stages) + 1  # import alice.cli, then every stage

    return run
