"""The pretraining trainer: schedules, checkpoint format, exact resume, NaN stop, signals, log.csv."""

from __future__ import annotations

import csv
import math
import os
import signal

import pytest
import torch

from alice.errors import ConfigError, HarnessError, InputError
from alice.ssl import registry
from alice.ssl.momentum import check_distillation_options, ema_momentum, linear_warmup
from alice.training import build_lr_scheduler, lr_factor
from alice.ssl.trainer import EX_TEMPFAIL, NonFiniteLoss, Preempted


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _without_seconds(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def _assert_same_state(a: dict, b: dict, what: str):
    assert a.keys() == b.keys(), what
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), f"{what}: {k}"
        elif isinstance(a[k], dict):
            _assert_same_state(a[k], b[k], f"{what}.{k}")
        else:
            assert a[k] == b[k], f"{what}: {k}"


# ------------------------------------------------------------------ schedules
def test_cosine_with_warmup_values():
    f = lr_factor("cosine", 2, 10)
    assert f(0) == pytest.approx(0.5) and f(1) == pytest.approx(1.0)
    assert f(2) == pytest.approx(1.0)
    assert f(6) == pytest.approx(0.5)
    assert f(9) == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))
    assert lr_factor("cosine", 0, 4, min_lr_ratio=0.1)(2) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor("constant", 3, 10)(0) == pytest.approx(1 / 3) and lr_factor("constant", 3, 10)(7) == 1.0

    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = build_lr_scheduler(opt, "cosine", 2, 10)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([2.0 * f(i) for i in range(10)])
    assert ema_momentum(0, 10, 0.99) == pytest.approx(0.99) and ema_momentum(9, 10, 0.99) == pytest.approx(1.0)
    # the teacher temperature's warm-up: 0.04 -> 0.07 over the first 30 % of 10 steps, then 0.07
    assert [linear_warmup(0.04, 0.07, 0.3, i, 10) for i in (0, 1, 3, 9)] == pytest.approx([0.04, 0.05, 0.07, 0.07])
    assert linear_warmup(0.04, 0.07, 0.0, 0, 10) == 0.07
    with pytest.raises(ValueError, match="teacher_temperature must be > 0"):
        check_distillation_options({"teacher_temperature": 0.0}, 0.0, 0.9)
    with pytest.raises(ValueError, match="center_momentum"):
        check_distillation_options({"teacher_temperature": 0.04}, 0.0, 1.0)
    with pytest.raises(ConfigError, match="optim.schedule"):
        lr_factor("step", 0, 10)


# ------------------------------------------------------------------ registry
def test_registry_errors_and_build():
    with pytest.raises(ConfigError, match=r"unknown SSL method 'nope' \(known: .*toy"):
        registry.get_method("nope")
    m = registry.build_method("toy", {"momentum": 0.5}, {"name": "toy_linear", "in_dim": 8, "dim": 4}, [8, 8, 8])
    assert isinstance(m, registry.SSLMethod) and m.method_config == {"momentum": 0.5}
    with pytest.raises(ValueError, match="registered twice"):
        registry.register_method("toy")(lambda *a: None)
    registry.register_method("_bad")(lambda *a: torch.nn.Linear(1, 1))
    try:
        with pytest.raises(TypeError, match="not an SSLMethod"):
            registry.build_method("_bad", {}, {}, [1, 1, 1])
    finally:
        del registry.METHODS["_bad"]


# ------------------------------------------------------------------ checkpoint + log
def test_checkpoint_format_and_log(tmp_path, run, toy_optim):
    OPTIM = toy_optim
    from alice.downstream.transfer import read_encoder_checkpoint

    method, summary = run(tmp_path)
    assert summary["finished"] and summary["step"] == 6
    assert method.after_calls == [(i, 6) for i in range(6)]
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    for key in ("encoder", "encoder_config", "method", "method_config", "preprocessing", "step", "code_version"):
        assert key in ckpt
    assert ckpt["method"] == "toy" and ckpt["step"] == 6 and ckpt["finished"] is True
    assert ckpt["preprocessing"] == {"crop": [8, 8, 8]}
    assert ckpt["optim"]["betas"] == [0.9, 0.95]
    assert set(ckpt["resume"]) >= {"method_state", "optimizer", "scheduler", "rng"}
    assert set(ckpt["resume"]["method_state"]) >= {"encoder.weight", "target.weight", "head.weight"}
    _assert_same_state(ckpt["encoder"], method.encoder.state_dict(), "encoder")
    _assert_same_state(read_encoder_checkpoint(tmp_path / "checkpoint.pt")["encoder"], ckpt["encoder"], "read")
    assert not list(tmp_path.glob(".*tmp*")) and sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "log.csv"]

    rows = _rows(tmp_path / "log.csv")
    assert list(rows[0]) == ["step", "lr", "loss", "rec", "ema_gap", "grad_norm", "seconds"]
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    f = lr_factor("cosine", OPTIM["warmup_iterations"], OPTIM["iterations"])
    assert [float(r["lr"]) for r in rows] == pytest.approx([OPTIM["lr"] * f(i) for i in range(6)])
    assert all(math.isfinite(float(r["loss"])) for r in rows)

    # a finished run is not trained again
    again, s2 = run(tmp_path)
    assert s2["finished"] and again.calls == 0


# ------------------------------------------------------------------ resume
def test_interrupted_runs_resume_exactly(tmp_path, run, make_method):
    straight, _ = run(tmp_path / "a")
    ref = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)

    # run 1: stop after 3 steps with a checkpoint
    _, s = run(tmp_path / "b", max_steps_this_run=3)
    assert s["step"] == 3 and not s["finished"]
    # run 2: "killed" during step 5 (after its log row, before any checkpoint but the one at step 4)
    def crash(step, row):
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", method=make_method(init_seed=99), step_callback=crash)
    assert len(_rows(tmp_path / "b" / "log.csv")) == 5
    # the running state lives in resume.pt; checkpoint.pt (the pipeline's output) only when done
    assert torch.load(tmp_path / "b" / "resume.pt", weights_only=True)["step"] == 4
    assert not (tmp_path / "b" / "checkpoint.pt").exists()
    # run 3: resume from step 4 with a differently initialised method
    resumed, s = run(tmp_path / "b", method=make_method(init_seed=7))
    assert s["finished"] and resumed.after_calls == [(4, 6), (5, 6)]

    _assert_same_state(straight.state_dict(), resumed.state_dict(), "method")
    assert not (tmp_path / "b" / "resume.pt").exists()
    got = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    _assert_same_state(ref["encoder"], got["encoder"], "encoder")
    _assert_same_state(ref["resume"]["optimizer"]["state"], got["resume"]["optimizer"]["state"], "optimizer")
    assert _without_seconds(_rows(tmp_path / "a" / "log.csv")) == _without_seconds(_rows(tmp_path / "b" / "log.csv"))


def test_resume_refuses_other_settings(tmp_path, run):
    run(tmp_path, max_steps_this_run=2)
    with pytest.raises(InputError, match=r"optim.lr: 0.01 then, 0.02 now\); delete resume.pt"):
        run(tmp_path, optim={"lr": 2e-2})


# ------------------------------------------------------------------ failures and signals
def test_nonfinite_loss_keeps_last_good_checkpoint(tmp_path, run, make_method):
    with pytest.raises(NonFiniteLoss) as err:
        run(tmp_path, method=make_method(nan_at_call=3))
    msg = str(err.value)
    assert "non-finite loss at step 3" in msg and "rec=nan" in msg
    assert f"last good checkpoint: {tmp_path / 'resume.pt'}" in msg
    assert isinstance(err.value, HarnessError)
    assert torch.load(tmp_path / "resume.pt", weights_only=True)["step"] == 2
    assert not (tmp_path / "checkpoint.pt").exists()
    assert len(_rows(tmp_path / "log.csv")) == 2


def test_signal_checkpoints_and_exits_tempfail(tmp_path, run):
    before = signal.getsignal(signal.SIGUSR1)

    def preempt(step, row):
        if step == 3:
            os.kill(os.getpid(), signal.SIGUSR1)

    with pytest.raises(Preempted) as err:
        run(tmp_path, checkpoint_every=100, step_callback=preempt)
    assert err.value.exit_code == EX_TEMPFAIL == 75 and err.value.step == 3
    assert "SIGUSR1" in str(err.value)
    assert torch.load(tmp_path / "resume.pt", weights_only=True)["step"] == 3
    assert not (tmp_path / "checkpoint.pt").exists()
    assert signal.getsignal(signal.SIGUSR1) is before
    _, s = run(tmp_path, checkpoint_every=100)
    assert s["finished"] and len(_rows(tmp_path / "log.csv")) == 6


def test_settings_are_validated(tmp_path, run, caplog):
    for kw, key in ((dict(device="tpu"), "pretrain.device"), (dict(amp="fp8"), "pretrain.amp"),
                    (dict(checkpoint_every=0), "pretrain.checkpoint_every"),
                    (dict(optim={"betas": [0.9]}), "optim.betas"), (dict(optim={"iterations": 0}), "optim.iterations")):
        with pytest.raises(ConfigError, match=key):
            run(tmp_path / "bad", **kw)
    # mixed precision is CUDA-only: on CPU it is ignored with a warning, not an error
    _, s = run(tmp_path / "amp", amp="bf16", optim={"iterations": 1})
    assert s["finished"] and "ignored on cpu" in caplog.text
    assert issubclass(Preempted, HarnessError)  # the CLI returns HarnessError.exit_code (75 here)


def test_outputs_honour_the_umask_also_after_a_resume(tmp_path, run):
    import os

    class Killed(Exception):
        pass

    def die_at_3(step, row):
        if step == 3:
            raise Killed  # like SIGKILL after step 3: log.csv has a row past the state of step 2

    old = os.umask(0o002)
    try:
        with pytest.raises(Killed):
            run(tmp_path, step_callback=die_at_3)
        run(tmp_path)  # resumes at step 2, rewriting log.csv without the row of step 3
    finally:
        os.umask(old)
    for name in ("checkpoint.pt", "log.csv"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o664, name


# ------------------------------------------------------------------ the fast path (alice.fastpath)
def test_deferred_reads_and_prefetched_batches_train_the_same_run(tmp_path, run):
    plain, _ = run(tmp_path / "plain")
    fast, summary = run(tmp_path / "fast", checkpoint_every=6, fast_path={"sync_every": 4, "prefetch": 2})
    assert summary["finished"]
    _assert_same_state(plain.state_dict(), fast.state_dict(), "method")
    assert _without_seconds(_rows(tmp_path / "plain" / "log.csv")) == _without_seconds(_rows(tmp_path / "fast" / "log.csv"))


def test_deferred_reads_stop_at_the_next_read_and_keep_the_finite_checkpoint(tmp_path, run, make_method):
    with pytest.raises(NonFiniteLoss, match="non-finite loss at step 3"):
        run(tmp_path, method=make_method(nan_at_call=3), fast_path={"sync_every": 4})
    assert torch.load(tmp_path / "resume.pt", weights_only=True)["step"] == 2  # written after the read at step 2
    assert not (tmp_path / "checkpoint.pt").exists()


def test_compile_switch_routes_the_forward_through_torch_compile(tmp_path, run, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda module: compiled.append(module) or module)
    method, summary = run(tmp_path, fast_path={"compile": True})
    assert summary["finished"] and compiled == [method]
