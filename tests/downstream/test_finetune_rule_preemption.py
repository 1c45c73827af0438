"""Preemption through the finetune rule's own shell command, as Snakemake runs it: the job gets
SIGTERM mid-run, writes resume.pt and exits 75; its declared outputs are deleted (what Snakemake
does with a failed job) and the resubmitted command resumes and ends with the weights and log of an
uninterrupted run."""

from __future__ import annotations

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

RUN = Path("results/finetune/flare22/rand_init/unetr/fold0")
EPOCHS = 12  # x 4 steps: the signal lands after the first epoch, 44 steps before the end


def env() -> dict:
    out = dict(os.environ)
    out["PATH"] = str(Path(sys.executable).parent) + os.pathsep + out.get("PATH", "")
    return out


def tiny_config(dx) -> dict:
    config = yaml.safe_load((REPO_ROOT / "config" / "config.yaml").read_text())
    config["pretrain"]["encoders"]["vit"] = {k: v for k, v in dx.ENCODER.items() if k != "name"}
    settings = {**dx.SETTINGS, "samples_per_volume": 2, "val_every": 50}
    settings["optim"] = {**dx.SETTINGS["optim"], "batch_size": 1, "epochs": EPOCHS}
    config["finetune"]["unetr"] = settings
    config["finetune"]["threads"] = 1
    return config


def rule_command(workdir: Path, configfile: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", str(RUN / "model.pt"), "-n", "-p", "--directory", str(workdir),
         "--snakefile", str(REPO_ROOT / "Snakefile"), "--configfile", str(configfile)],
        env=env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    commands = [line.split("Shell command: ", 1)[1] for line in result.stdout.splitlines()
                if line.startswith("Shell command: ") and "finetune --dataset flare22" in line]
    assert len(commands) == 1, result.stdout
    return commands[0]


def start(workdir: Path, command: str) -> subprocess.Popen:
    (workdir / "results/logs/finetune/flare22/rand_init/unetr").mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(["bash", "-c", "set -euo pipefail; " + command], cwd=workdir, env=env())


def stderr_of(workdir: Path) -> str:
    path = workdir / "results/logs/finetune/flare22/rand_init/unetr/fold0.log"
    return path.read_text()[-4000:] if path.is_file() else "(no log)"


@pytest.mark.slow
def test_finetune_rule_command_preempts_and_resumes_exactly(tmp_path, tiny_data, dx):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tiny_config(dx)))
    runs = {}
    for name in ("straight", "preempted"):
        shutil.copytree(tiny_data, tmp_path / name / "results/data/flare22")
        runs[name] = tmp_path / name
    command = rule_command(runs["straight"], config)
    assert command.startswith("exec alice finetune ")  # the signal reaches the trainer, not a shell
    assert start(runs["straight"], command).wait(timeout=300) == 0, stderr_of(runs["straight"])

    workdir = runs["preempted"]
    proc = start(workdir, command)
    deadline = time.monotonic() + 240
    while not (workdir / RUN / "log.csv").is_file():  # written after the first epoch (4 steps)
        assert proc.poll() is None, f"ended before the signal:\n{stderr_of(workdir)}"
        assert time.monotonic() < deadline, stderr_of(workdir)
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 75, stderr_of(workdir)
    assert "SIGTERM received" in stderr_of(workdir)
    stopped = torch.load(workdir / RUN / "resume.pt", weights_only=True)["step"]
    assert 4 <= stopped < 4 * EPOCHS and not (workdir / RUN / "model.pt").exists()
    (workdir / RUN / "log.csv").unlink()  # Snakemake removes the failed job's declared outputs

    assert start(workdir, command).wait(timeout=300) == 0, stderr_of(workdir)
    assert f"at step {stopped}/{4 * EPOCHS}" in stderr_of(workdir)
    assert not (workdir / RUN / "resume.pt").exists()
    a = torch.load(runs["straight"] / RUN / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(workdir / RUN / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (runs["straight"] / RUN / "log.csv").read_text() == (workdir / RUN / "log.csv").read_text()
