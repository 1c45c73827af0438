"""The figure rules in the DAG (dry runs on the demo config)."""

import os
import subprocess
import sys
from pathlib import Path

from alice.config import REPO_ROOT


def _dry_run(tmp_path, *targets):
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "-p", *targets, "--directory", str(tmp_path),
         "--snakefile", str(REPO_ROOT / "Snakefile"), "--configfile",
         str(REPO_ROOT / "config" / "config.yaml")],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_overlay_and_curve_targets(tmp_path):
    result = _dry_run(tmp_path, "results/figures/overlays_btcv_nnformer.png",
                      "results/figures/finetune_btcv_nnformer.png")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    out = result.stdout
    assert "rule overlays:" in out and "rule finetune_curves:" in out
    # the overlays read fold 0's evaluation of both methods; the curves every fold's log
    for method in ("rand_init", "alice"):
        assert f"results/finetune/btcv/{method}/nnformer/fold0/metrics.json" in out
        assert f"results/finetune/btcv/{method}/nnformer/fold4/log.csv" in out
    assert "--run 'Rand. init.=results/finetune/btcv/rand_init/nnformer/fold0'" in out


def test_unplanned_figure_is_refused(tmp_path):
    result = _dry_run(tmp_path, "results/figures/overlays_btcv_vnet.png")
    assert result.returncode != 0
    assert "no reproduced cell" in result.stdout + result.stderr
