"""Preemption through the pretrain rule's own shell command, on CPU: the command Snakemake prints
for the rule is run as Snakemake runs it (`bash -c "set -euo pipefail; ..."`), its process gets a
stop signal mid-run, checkpoints and exits non-zero; running the command again resumes and ends
with the weights and log of an uninterrupted run. Once as a plain process (pretrain.gpus 0: the
trainer is exec'ed, so the signal reaches Python, not a shell) and once under torchrun with 2 CPU
processes (pretrain.gpus 2, gloo), which must forward the SIGUSR1 it receives to its workers.
The same path under a real SLURM job is tests/test_cluster.py."""

from __future__ import annotations

import csv
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

RUN = Path("results/pretrain/alice/vit")
TARGET = str(RUN / "checkpoint.pt")


def env() -> dict:
    out = dict(os.environ)
    # the rule calls the `alice` / `torchrun` console scripts of this interpreter's environment
    out["PATH"] = str(Path(sys.executable).parent) + os.pathsep + out.get("PATH", "")
    return out


def tiny_pretrain_config(tmp_path: Path, gpus: int, iterations: int) -> dict:
    """config/config.yaml with a tiny ViT, body-box pairs (no anatomy stage) and no periodic
    checkpoint, so the only resume state is the one the signal writes."""
    config = yaml.safe_load((REPO_ROOT / "config" / "config.yaml").read_text())
    pre = config["pretrain"]
    pre["gpus"] = gpus
    pre["threads"] = max(1, gpus)
    pre["encoders"]["vit"] = {"embed_dim": 24, "depth": 2, "heads": 2, "mlp_ratio": 2,
                              "patch": [16, 16, 16]}
    pre["crop"]["vit"] = [32, 32, 16]
    pre["mask_ratio"] = 0.5
    pre["optim"].update(batch_size=2, iterations=iterations, warmup_iterations=2)
    pre["checkpoint_every"] = 10_000
    pre["amp"] = None
    pre["pairs"] = {"matcher": "bbox", "min_score": 0.5, "max_tries": 5}
    pre["methods"]["alice"].update(decoder={"dim": 24, "depth": 1, "heads": 2},
                                   head={"hidden_dim": 32, "bottleneck_dim": 16}, casa_dim=16)
    return config


def rule_command(workdir: Path, configfile: Path) -> str:
    """The pretrain job's shell command, exactly as the Snakefile renders it."""
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", TARGET, "-n", "-p", "--directory", str(workdir),
         "--snakefile", str(REPO_ROOT / "Snakefile"), "--configfile", str(configfile)],
        env=env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    commands = [line.split("Shell command: ", 1)[1] for line in result.stdout.splitlines()
                if line.startswith("Shell command: ") and " pretrain --method alice " in line]
    assert len(commands) == 1, result.stdout
    return commands[0]


def log_rows(workdir: Path) -> list[dict]:
    path = workdir / RUN / "log.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(fh)]


def start(workdir: Path, command: str) -> subprocess.Popen:
    (workdir / "results/logs/pretrain/alice").mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(["bash", "-c", "set -euo pipefail; " + command], cwd=workdir, env=env())


def stderr_of(workdir: Path) -> str:
    path = workdir / "results/logs/pretrain/alice/vit.log"
    return path.read_text()[-4000:] if path.is_file() else "(no log)"


@pytest.fixture(scope="module")
def pool(tmp_path_factory, tiny_pool):
    return tiny_pool(tmp_path_factory.mktemp("pool"), seed=3, spacing=[12.0, 12.0, 10.0])


@pytest.mark.slow
# the plain `exec alice` path's signal handling is tests/ssl/test_trainer.py's; torchrun + SIGTERM is
# tests/test_cluster.py's (on a real SLURM cluster): here torchrun forwarding SIGUSR1 (CI time)
@pytest.mark.parametrize("gpus, sig", [(2, signal.SIGUSR1)], ids=["torchrun2-SIGUSR1"])
def test_rule_command_preempts_and_resumes_exactly(tmp_path, pool, gpus, sig):
    iterations = 40
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tiny_pretrain_config(tmp_path, gpus, iterations)))
    runs = {}
    for name in ("straight", "preempted"):
        workdir = tmp_path / name
        shutil.copytree(pool, workdir / "results/data/flare22_pool")
        runs[name] = workdir
    command = rule_command(runs["straight"], config)
    if gpus > 1:
        assert f"exec torchrun --standalone --nnodes=1 --nproc_per_node={gpus} -m alice.cli pretrain" in command
    else:
        assert command.startswith("exec alice pretrain ")

    straight = start(runs["straight"], command)
    assert straight.wait(timeout=300) == 0, stderr_of(runs["straight"])

    # the preempted run: signal the launched process (alice itself / torchrun) after 3 steps
    workdir = runs["preempted"]
    proc = start(workdir, command)
    deadline = time.monotonic() + 240
    while len(log_rows(workdir)) < 3:
        assert proc.poll() is None, f"ended before the signal:\n{stderr_of(workdir)}"
        assert time.monotonic() < deadline, stderr_of(workdir)
        time.sleep(0.05)
    proc.send_signal(sig)
    code = proc.wait(timeout=120)
    log = stderr_of(workdir)
    assert code != 0, log
    if gpus <= 1:
        assert code == 75, log  # EX_TEMPFAIL, straight from the trainer
    assert f"{sig.name} received" in log
    resume = torch.load(workdir / RUN / "resume.pt", weights_only=True)
    stopped = resume["step"]
    assert 3 <= stopped < iterations and resume["resume"]["world_size"] == max(1, gpus)
    assert not (workdir / RUN / "checkpoint.pt").exists()
    assert len(log_rows(workdir)) == stopped

    # the resubmission: the same command resumes and finishes
    again = start(workdir, command)
    assert again.wait(timeout=300) == 0, stderr_of(workdir)
    assert f"at step {stopped}/{iterations}" in stderr_of(workdir)  # "resuming ... at step k/N"
    assert not (workdir / RUN / "resume.pt").exists()

    a = torch.load(runs["straight"] / RUN / "checkpoint.pt", weights_only=True)
    b = torch.load(workdir / RUN / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == iterations
    assert a["encoder"].keys() == b["encoder"].keys()
    for key, value in a["encoder"].items():
        assert torch.equal(value, b["encoder"][key]), key
    assert log_rows(runs["straight"]) == log_rows(workdir)
