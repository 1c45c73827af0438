"""The Snakemake DAG: dry run, lint, and a real run of the data stage on a tiny config."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from alice.config import REPO_ROOT


def snakemake(*args, cwd=REPO_ROOT, timeout=600):
    env = dict(os.environ)
    # the rules call the `alice` console script of this interpreter's environment
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_dry_run_lists_the_data_stage(tmp_path):
    result = snakemake("-n", "--directory", str(tmp_path), "--snakefile",
                       str(REPO_ROOT / "Snakefile"), "--configfile",
                       str(REPO_ROOT / "config" / "config.yaml"))
    assert result.returncode == 0, result.stderr
    out = result.stdout + result.stderr
    for rule in ("phantom", "prepare", "folds", "phantom_figure"):
        assert rule in out


def test_lint_is_clean():
    result = snakemake("--lint")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations" in result.stdout + result.stderr


def test_bad_config_stops_the_dag(tmp_path):
    config = yaml.safe_load((REPO_ROOT / "config" / "config.yaml").read_text())
    config["datasets"]["btcv"]["foldz"] = 5
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    result = snakemake("-n", "--directory", str(tmp_path), "--snakefile",
                       str(REPO_ROOT / "Snakefile"), "--configfile", str(bad))
    assert result.returncode != 0
    assert "datasets.btcv.foldz" in result.stdout + result.stderr
