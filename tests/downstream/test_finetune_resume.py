"""Fault injection: segmentation fine-tuning killed at a random step (SIGKILL, or SIGTERM which
checkpoints first) and rerun ends with the weights and log.csv of an uninterrupted run, bitwise;
a rerun with other settings is refused."""

from __future__ import annotations

import copy
import json
import random
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from alice.downstream.segmentation import finetune
from alice.errors import InputError
from alice.runstate import Preempted

# 2 volumes x 2 crops / batch 1 -> 4 steps an epoch, 3 epochs: interruptions mid-epoch and at the
# epoch's end, with random augmentation and a validation every 2nd epoch to replay
STEPS = 12
PICK = random.Random(15)  # the "random" steps, fixed so the test is reproducible
SIGTERM_STEPS = sorted(PICK.sample(range(1, STEPS), 2))
SIGKILL_STEPS = sorted(PICK.sample(range(2, STEPS), 2))


def _settings(dx):
    s = copy.deepcopy(dx.SETTINGS)
    s["optim"].update(batch_size=1, epochs=3)
    s.update(samples_per_volume=2, val_every=2)
    return s


def _run(data, out, dx, settings=None, **kwargs):
    return finetune(dataset="flare22", backbone="unetr", method="rand_init", init="scratch", fold=0,
                    data_dir=data, out_dir=out, settings=settings or _settings(dx), encoder_config=dx.ENCODER,
                    seed=3, threads=1, progress=False, **kwargs)


@pytest.fixture(scope="module")
def reference(tiny_data, tmp_path_factory, dx):
    out = tmp_path_factory.mktemp("straight")
    summary = _run(tiny_data, out, dx)
    assert summary["steps"] == STEPS and summary["resumed_from"] == []
    return out


def _assert_same_run(a, b):
    wa = torch.load(a / "model.pt", weights_only=True)["state_dict"]
    wb = torch.load(b / "model.pt", weights_only=True)["state_dict"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert (a / "log.csv").read_text() == (b / "log.csv").read_text()


def _stop_at(stop_step):
    def hook(step):
        if step == stop_step:
            signal.raise_signal(signal.SIGTERM)
    return hook


@pytest.mark.parametrize("stop_step", SIGTERM_STEPS)
def test_sigterm_checkpoints_and_the_rerun_equals_an_uninterrupted_run(tiny_data, tmp_path, dx, reference,
                                                                       stop_step):
    with pytest.raises(Preempted) as err:
        _run(tiny_data, tmp_path, dx, step_callback=_stop_at(stop_step))
    assert err.value.exit_code == 75 and err.value.step == stop_step
    assert (tmp_path / "resume.pt").is_file() and not (tmp_path / "model.pt").exists()
    assert len((tmp_path / "log.csv").read_text().splitlines()) == 1 + stop_step
    (tmp_path / "log.csv").unlink()  # Snakemake deletes a failed job's declared outputs; resume.pt is not one
    summary = _run(tiny_data, tmp_path, dx)
    assert summary["resumed_from"] == [stop_step] and summary["steps"] == STEPS
    assert not (tmp_path / "resume.pt").exists()
    _assert_same_run(reference, tmp_path)


def test_loss_read_every_few_steps_gives_the_same_run_and_resumes_exactly(tiny_data, tmp_path, dx, reference):
    """alice.fastpath `sync_every`: the rows come in bursts, the run and a stop between reads do not change."""
    fast = {"sync_every": 5}
    _run(tiny_data, tmp_path / "fast", dx, fast_path=fast)
    _assert_same_run(reference, tmp_path / "fast")
    with pytest.raises(Preempted):
        _run(tiny_data, tmp_path / "stopped", dx, fast_path=fast, step_callback=_stop_at(SIGTERM_STEPS[0]))
    assert len((tmp_path / "stopped" / "log.csv").read_text().splitlines()) == 1 + SIGTERM_STEPS[0]
    _run(tiny_data, tmp_path / "stopped", dx, fast_path=fast)
    _assert_same_run(reference, tmp_path / "stopped")


KILLED = """
import json, os, signal, sys
from alice.downstream.segmentation import finetune
args = json.loads(sys.argv[1])
kill_at = args.pop("kill_at")
def hook(step):
    if step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
finetune(**args, step_callback=hook)
"""


@pytest.mark.parametrize("kill_step", SIGKILL_STEPS)
def test_sigkill_resumes_from_the_last_state_and_equals_an_uninterrupted_run(tiny_data, tmp_path, dx, reference,
                                                                            kill_step):
    args = {"dataset": "flare22", "backbone": "unetr", "method": "rand_init", "init": "scratch", "fold": 0,
            "data_dir": str(tiny_data), "out_dir": str(tmp_path), "settings": _settings(dx),
            "encoder_config": dx.ENCODER, "seed": 3, "threads": 1, "progress": False, "checkpoint_every": 3,
            "kill_at": kill_step}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(KILLED), json.dumps(args)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (tmp_path / "model.pt").exists()
    summary = _run(tiny_data, tmp_path, dx, checkpoint_every=3)
    last_state = kill_step - kill_step % 3
    assert summary["resumed_from"] == ([last_state] if last_state else [])
    _assert_same_run(reference, tmp_path)


def test_a_changed_run_is_refused_naming_the_key(tiny_data, tmp_path, dx):
    with pytest.raises(Preempted):
        _run(tiny_data, tmp_path, dx, step_callback=_stop_at(2))
    other = _settings(dx)
    other["optim"]["lr"] = 2e-3
    with pytest.raises(InputError, match=r"cannot resume.*settings\.optim\.lr: 0\.001 then, 0\.002 now.*delete resume\.pt"):
        _run(tiny_data, tmp_path, dx, settings=other)
    assert (tmp_path / "resume.pt").is_file() and not (tmp_path / "model.pt").exists()


def test_ctrl_c_checkpoints_like_sigterm_and_a_second_one_stops_in_one_line(tiny_data, tmp_path, dx, reference,
                                                                            monkeypatch, capsys):
    import alice.downstream.segmentation as segmentation
    from alice.cli import main

    original = segmentation.finetune
    presses = {"at": (5,)}

    def pressed(**kwargs):
        def hook(step):
            for _ in range(presses["at"].count(step)):
                signal.raise_signal(signal.SIGINT)
        return original(**kwargs, step_callback=hook)

    monkeypatch.setattr(segmentation, "finetune", pressed)
    argv = ["finetune", "--dataset", "flare22", "--backbone", "unetr", "--method", "rand_init", "--init", "scratch",
            "--fold", "0", "--data", str(tiny_data), "--out", str(tmp_path), "--threads", "1", "--no-progress",
            "--settings", json.dumps({"finetune": _settings(dx), "encoder": dx.ENCODER, "seed": 3})]
    assert main(argv) == 75
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "SIGINT received: stopped after step 5" in err[0]
    presses["at"] = (7, 7)  # a second Ctrl-C before the first is honoured: stop at once
    assert main(argv) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interrupted" in err[0]
    assert torch.load(tmp_path / "resume.pt", weights_only=True)["step"] == 5  # the interrupted steps are lost
    presses["at"] = ()
    assert main(argv) == 0
    _assert_same_run(reference, tmp_path)
