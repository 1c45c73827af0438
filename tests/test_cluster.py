"""The SLURM profile on a real (single-node) SLURM cluster: scripts/slurm_local.sh starts munge,
slurmctld and slurmd; Snakemake submits two targets through workflow/profiles/slurm and the
executor plugin, a Table 8 row (CPU partition) and an Alice pretraining run on a tiny pool (GPU
partition, 2 processes under torchrun on 2 of the node's pretend GPUs; the pool's data stage is
built locally first). The pretraining job gets SIGTERM from SLURM mid-run, as
`--signal=TERM@300` sends it, checkpoints, fails, is resubmitted by Snakemake (`retries`),
resumes and finishes. Its outputs equal those of a local, uninterrupted run of the same targets.

Needs root, `slurm-wlm` and `munge` (apt; `bash scripts/slurm_local.sh install`) and the plugin
(`pip install -e '.[cluster]'`); otherwise it is skipped, with the reason. .ci/run installs them."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from alice.config import REPO_ROOT
from test_cluster_preemption import RUN, env, log_rows, tiny_pretrain_config

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

SCRIPT = REPO_ROOT / "scripts" / "slurm_local.sh"
MARKER = "# written by alice-harness scripts/slurm_local.sh"
# + a CPU job: a row of a method not reproduced, which needs no other job (Table 8 rows now read
# every fine-tuned model)
TARGETS = [str(RUN / "checkpoint.pt"), "results/rows/table3/dodnet.csv"]  # + a row that reads nothing
ITERATIONS = 60


def why_not() -> str | None:
    """Why this machine cannot run a local SLURM cluster (None: it can)."""
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return "snakemake-executor-plugin-slurm is not installed (pip install -e '.[cluster]')"
    tools = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "scontrol")
    missing = [t for t in tools if not shutil.which(t) and not Path("/usr/sbin", t).exists()]
    if missing:
        return (f"SLURM is not installed (missing {', '.join(missing)}): "
                "`bash scripts/slurm_local.sh install` (root, apt) installs slurm-wlm and munge")
    if os.geteuid() != 0:
        return "the local SLURM cluster runs its daemons as root"
    conf = Path("/etc/slurm/slurm.conf")
    if conf.exists() and MARKER not in conf.read_text():
        return "/etc/slurm/slurm.conf belongs to a real SLURM installation: not replacing it"
    return None


@pytest.fixture(scope="module")
def cluster():
    reason = why_not()
    if reason:
        pytest.skip(reason)
    started = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stdout + started.stderr
    ours = "already running" not in started.stdout
    try:
        yield
    finally:
        if ours:
            subprocess.run(["bash", str(SCRIPT), "stop"], capture_output=True, timeout=120)


def tiny_config(tmp_path: Path) -> Path:
    config = tiny_pretrain_config(tmp_path, gpus=2, iterations=ITERATIONS)
    config["phantom"]["geometry"] = {"inplane_voxels": 32, "fov_mm": [340, 400], "slice_mm": [8.0, 10.0]}
    config["phantom"]["counts"]["flare22"] = {"labeled": 0, "unlabeled": 4, "validation": 0}
    config["datasets"]["flare22_pool"].update(spacing=[12.0, 12.0, 10.0], val_fraction=0.25)
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def squeue(*fields: str) -> list[list[str]]:
    out = subprocess.run(["squeue", "-h", "--states=all", "-o", "|".join(fields)],
                         capture_output=True, text=True, check=True).stdout
    return [line.split("|") for line in out.splitlines() if line.strip()]


def report(workdir: Path, proc_out: str) -> str:
    logs = sorted((workdir / ".snakemake" / "slurm_logs").rglob("*.log"))
    tails = "\n".join(f"--- {p}\n{p.read_text()[-1500:]}" for p in logs[-4:])
    pre = workdir / "results/logs/pretrain/alice/vit.log"
    return f"{proc_out[-4000:]}\n{tails}\n--- pretrain log\n{pre.read_text()[-2000:] if pre.exists() else ''}"


def local_snakemake(workdir: Path, configfile: Path, *targets: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", *targets, "--directory", str(workdir), "--snakefile",
         str(REPO_ROOT / "Snakefile"), "--configfile", str(configfile),
         "--workflow-profile", str(REPO_ROOT / "workflow/profiles/default"), "--cores", "2"],
        env=env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_profile_runs_a_target_on_slurm_and_a_preempted_pretraining_resumes(cluster, tmp_path):
    configfile = tiny_config(tmp_path)
    # the data stage is built locally, once, and copied (with Snakemake's records) into both runs:
    # every SLURM job costs two Snakemake start-ups and the plugin's polling (tens of seconds here)
    data, remote, local = tmp_path / "data", tmp_path / "slurm", tmp_path / "local"
    local_snakemake(data, configfile, "results/data/flare22_pool/folds.json")
    shutil.copytree(data, remote)
    shutil.copytree(data, local)

    t0 = time.monotonic()
    out_path = tmp_path / "snakemake-slurm.out"
    with open(out_path, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "snakemake", *TARGETS, "--directory", str(remote), "--snakefile",
             str(REPO_ROOT / "Snakefile"), "--configfile", str(configfile),
             "--workflow-profile", str(REPO_ROOT / "workflow/profiles/slurm"),
             # without an accounting database sacct sees no jobs: the plugin asks squeue
             "--jobs", "2", "--latency-wait", "10", "--slurm-status-command", "squeue",
             "--slurm-init-seconds-before-status-checks", "1", "--seconds-between-status-checks", "1",
             "--slurm-keep-successful-logs", "--verbose"],  # --verbose: the plugin logs its sbatch calls
            env=env(), stdout=out, stderr=subprocess.STDOUT, text=True)
    try:
        # preempt the pretraining job once it has logged 3 steps: SIGTERM to its steps (not the
        # batch shell), exactly what SLURM does at --signal=TERM@300
        deadline = time.monotonic() + 300
        while len(log_rows(remote)) < 3:
            assert proc.poll() is None, report(remote, out_path.read_text())
            assert time.monotonic() < deadline, report(remote, out_path.read_text())
            time.sleep(0.1)
        jobs = [row for row in squeue("%i", "%k", "%T", "%Z") if row[3] == str(remote)]
        pretrain = [row for row in jobs if "rule_pretrain" in row[1]]
        assert len(pretrain) == 1 and pretrain[0][2] == "RUNNING", jobs
        job_id = pretrain[0][0]
        job = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
        # the rule's pretrain.gpus GPUs, in the profile's (placeholder) GPU partition
        assert "gres:gpu:2" in job and "Partition=gpu" in job, job
        subprocess.run(["scancel", "--signal=TERM", job_id], check=True, timeout=30)
        code = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:  # a hung run: SIGINT is what stops a Snakemake waiting on SLURM
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    seconds = time.monotonic() - t0
    text = out_path.read_text()
    assert code == 0, report(remote, text)
    print(f"SLURM run: {seconds:.0f} s")

    # SLURM ran the row (CPU partition) and the pretraining twice, with the profile's warning signal
    jobs = [row for row in squeue("%i", "%k", "%T", "%P", "%Z") if row[4] == str(remote)]
    assert sorted((k.split("_wildcards")[0], state, part) for _, k, state, part, _ in jobs) == [
        ("rule_pretrain", "COMPLETED", "gpu"), ("rule_pretrain", "FAILED", "gpu"),
        ("rule_table_row", "COMPLETED", "cpu")], jobs
    calls = [line for line in text.splitlines() if "sbatch call:" in line]
    assert sum("rule_pretrain" in c and "--signal=TERM@300" in c for c in calls) == 2, calls
    # the resubmitted job resumed where the preempted one stopped
    log = (remote / "results/logs/pretrain/alice/vit.log").read_text()
    resumed_at = int(log.split(" at step ", 1)[1].split("/", 1)[0])
    assert 3 <= resumed_at < ITERATIONS and "resuming alice" in log, log
    assert not (remote / RUN / "resume.pt").exists()

    # the same targets locally, never interrupted (the default profile): the same outputs
    local_snakemake(local, configfile, *TARGETS)
    rel = "results/rows/table3/dodnet.csv"
    assert (remote / rel).read_text() == (local / rel).read_text()
    a = torch.load(local / RUN / "checkpoint.pt", weights_only=True)
    b = torch.load(remote / RUN / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == ITERATIONS and b["resume"]["world_size"] == 2
    for key, value in a["encoder"].items():
        assert torch.equal(value, b["encoder"][key]), key
    assert log_rows(local) == log_rows(remote)
