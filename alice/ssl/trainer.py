"""The method-agnostic pretraining loop: AdamW + warm-up/cosine, checkpoints, exact resume, DDP.

`pretrain(method, loader_factory, out_dir, ...)` trains any `alice.ssl.registry.SSLMethod`.

Data contract (what makes resume exact):
    loader_factory(seed: int, start_step: int) -> Iterable[batch]
yields the batches of steps `start_step, start_step + 1, ...`, and batch `i` depends only on
`(seed, i)` (and the data on disk), never on the global RNGs or on earlier batches. The factory is
called inside a forked RNG, so building it cannot disturb the method's random stream. If the
iterable runs out, the factory is called again with the next step. Under DDP rank `r` receives
`seed + r` (its own shard of random crops). `step_seed(seed, i)` is a helper for factories.

Randomness inside the method (masking, augmentation on the fly) uses the global torch/numpy/python
RNGs, which are re-seeded before every step from `(seed, rank, step)`; so step `i` does the same
thing whether the run was interrupted or not, on every rank. The RNG states are also stored in the
checkpoint (and restored) for methods that reseed nothing themselves.

Outputs in `out_dir`:
- `resume.pt`: the running state, written atomically every `checkpoint_every` steps, on
  preemption, on a stop after `max_steps_this_run` steps; only the latest is kept. The next run
  resumes from it. It is removed once the run finishes.
- `checkpoint.pt`: the finished run's checkpoint, written (atomically) only after the last step,
  so its existence means "done" (the pipeline's output: Snakemake deletes the declared outputs of
  a failed or preempted job, and the resume state must survive that). Both files have the layout:
  the alice/checkpoint.py keys {"encoder", "encoder_config", "method", "method_config", "preprocessing",
  "step", "code_version"} plus "optim", "seed", "finished", "identity" (the run identity, with its
  hash: `alice.runstate.run_identity`) and "resume" = {"method_state" (online +
  target + heads), "optimizer", "scheduler", "scaler" (fp16 only), "rng", "world_size"}; all of it
  loads with `torch.load(weights_only=True)`. "step" counts the optimizer steps taken.
- `log.csv`: one row per step: step (1-based, = steps taken), lr, loss, each term the method
  returns (in its order), grad_norm (before clipping), seconds (wall time of the step: the host's
  share of it when the loss is read every `fast_path.sync_every` > 1 steps); written as the host
  reads the values (every step on a CPU, every `sync_every` steps on a GPU). On resume rows after
  the checkpoint's step are dropped, so the file equals the one of
  an uninterrupted run (apart from "seconds").

Stops:
- a non-finite loss (or gradient norm): `HarnessError` naming the step, the terms and the last
  good checkpoint, which is left untouched (with `fast_path.sync_every` > 1 the run stops at the
  next read, and a checkpoint is written only right after a read);
- SIGUSR1 / SIGTERM / SIGINT: the current step finishes, a checkpoint is written, and `Preempted`
  (exit code 75, EX_TEMPFAIL) is raised; the CLI returns it and a resubmission resumes.
- a resume whose run identity (method and encoder config, crop, optimizer, clip, seed, the data,
  the pair settings: everything that determines the weights) differs from the state's: one
  `InputError` naming the differing keys, before any weight is loaded.

DDP: under torchrun (WORLD_SIZE > 1) the process group is initialised (nccl on CUDA, gloo on CPU),
the method is wrapped in DistributedDataParallel and only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
import torch
import torch.distributed as dist

from alice.errors import ConfigError, HarnessError, InputError
from alice.fastpath import FastPath, Prefetcher, optimizer_options, resolve_fast_path, set_attention
from alice.runstate import EX_TEMPFAIL, NonFiniteLoss, Preempted, StopFlag, check_identity, rng_state, run_identity, set_rng_state
from alice.ssl.registry import SSLMethod
from alice.training import CsvLog, OptimizerStep, PendingSteps, build_lr_scheduler, device_of, progress_bar, truncate_log

__all__ = ["EX_TEMPFAIL", "NonFiniteLoss", "Preempted", "pretrain", "seed_everything", "step_seed"]

log = logging.getLogger("alice")

CHECKPOINT = "checkpoint.pt"
RESUME = "resume.pt"
LOG = "log.csv"
OPTIM_DEFAULTS = {"weight_decay": 0.05, "betas": [0.9, 0.95], "warmup_iterations": 0, "schedule": "cosine",
                  "min_lr_ratio": 0.0}

LoaderFactory = Callable[[int, int], Iterable[Any]]


def step_seed(seed: int, *parts: int) -> int:
    """A 63-bit seed that depends only on (seed, *parts): for per-step data and RNG seeding."""
    text = ":".join(str(int(p)) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


# ----------------------------------------------------------------------------------------------
# settings
def _optim_settings(optim: Mapping[str, Any]) -> dict[str, Any]:
    s = {**OPTIM_DEFAULTS, **dict(optim)}
    for key in ("lr", "iterations"):
        if s.get(key) is None:
            raise ConfigError(f"optim.{key}", "missing required key")
    for key, minimum in (("lr", 0.0), ("weight_decay", 0.0), ("min_lr_ratio", 0.0)):
        v = s[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < minimum or (key == "lr" and v == 0):
            raise ConfigError(f"optim.{key}", f"must be a number > {minimum}, got {v!r}")
        s[key] = float(v)
    for key, minimum in (("iterations", 1), ("warmup_iterations", 0)):
        v = s[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ConfigError(f"optim.{key}", f"must be an integer >= {minimum}, got {v!r}")
    betas = s["betas"]
    if not isinstance(betas, (list, tuple)) or len(betas) != 2 or not all(0 <= float(b) < 1 for b in betas):
        raise ConfigError("optim.betas", f"must be 2 numbers in [0, 1), got {betas!r}")
    s["betas"] = [float(b) for b in betas]
    return s


def _amp_dtype(amp: str | None, device: torch.device) -> torch.dtype | None:
    if amp in (None, "none", False):
        return None
    if amp not in ("bf16", "fp16"):
        raise ConfigError("pretrain.amp", f"must be bf16, fp16 or null, got {amp!r}")
    if device.type != "cuda":
        log.warning("pretrain.amp=%s ignored on %s (mixed precision only on CUDA)", amp, device)
        return None
    return torch.bfloat16 if amp == "bf16" else torch.float16


# ----------------------------------------------------------------------------------------------
# RNG
def seed_everything(seed: int) -> None:
    """Seed torch, numpy and python's RNGs (e.g. before building a method: its initial weights)."""
    torch.manual_seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    random.seed(seed)


def _seed_step(seed: int, rank: int, step: int) -> None:
    seed_everything(step_seed(seed, rank, step))


@contextlib.contextmanager
def _isolated_rng(device: torch.device) -> Iterator[None]:
    np_state, py_state = np.random.get_state(), random.getstate()
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


class _Batches:
    """Batches from step `start` on, re-asking the factory if its iterable runs out."""

    def __init__(self, factory: LoaderFactory, seed: int, start: int, device: torch.device):
        self.factory, self.seed, self.device = factory, seed, device
        self.isolate = True
        self.it = self._open(start)

    def _isolated(self):
        return _isolated_rng(self.device) if self.isolate else contextlib.nullcontext()

    def _open(self, step: int) -> Iterator[Any]:
        with self._isolated():
            return iter(self.factory(self.seed, step))

    def next(self, step: int) -> Any:
        for attempt in range(2):
            try:
                with self._isolated():
                    return next(self.it)
            except StopIteration:
                if attempt:
                    break
                self.it = self._open(step)
        raise HarnessError(f"loader_factory(seed={self.seed}, start_step={step}) yielded no batch")

    def prefetched(self, start: int, depth: int, pin: bool) -> Prefetcher:
        """The batches of steps `start`, `start + 1`, ... cut `depth` ahead by a thread. The thread
        cannot fork the global RNGs (the training step draws from them meanwhile): the factory's
        batches must come from their own generators, as the data contract asks."""
        self.isolate = False
        steps = iter(range(start, 2**62))
        return Prefetcher(lambda: self.next(next(steps)), depth, pin=pin)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _fmt(v: Any) -> str:
    return repr(v) if isinstance(v, float) else str(v)


# ----------------------------------------------------------------------------------------------
# ----------------------------------------------------------------------------------------------
def _param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices/kernels only; biases, norms and other 1-d tensors get none."""
    decay, no_decay = [], []
    for _, p in module.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def _load_resume(path: Path, method_name: str, identity: Mapping[str, Any]) -> dict:
    """The running state in `path`, refused unless the run that wrote it had this `identity`."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(path, f"cannot resume: not a readable weights-only checkpoint ({first})") from None
    if not isinstance(ckpt, dict) or "resume" not in ckpt:
        raise InputError(path, "cannot resume: checkpoint has no resume state; use a new output folder")
    if ckpt.get("method") != method_name:
        raise InputError(path, f"cannot resume: checkpoint is of method '{ckpt.get('method')}', "
                               f"this run is '{method_name}'; use a new output folder")
    check_identity(path, ckpt.get("identity"), identity)
    return ckpt


def pretrain(
    method: SSLMethod,
    loader_factory: LoaderFactory,
    out_dir: str | Path,
    *,
    optim: Mapping[str, Any],
    encoder_config: Mapping[str, Any],
    method_name: str,
    method_config: Mapping[str, Any] | None = None,
    preprocessing: Mapping[str, Any] | None = None,
    checkpoint_every: int = 1000,
    grad_clip: float | None = 3.0,
    seed: int = 0,
    device: str = "auto",
    amp: str | None = None,
    progress: bool = True,
    max_steps_this_run: int | None = None,
    step_callback: Callable[[int, Mapping[str, float]], None] | None = None,
    identity: Mapping[str, Any] | None = None,
    fast_path: Mapping[str, Any] | FastPath | str | None = None,
) -> dict[str, Any]:
    """Pretrain `method` for `optim["iterations"]` optimizer steps; resume from `out_dir/resume.pt`.

    `optim`: lr, iterations (required); weight_decay (0.05), betas ([0.9, 0.95]),
    warmup_iterations (0), schedule ("cosine" | "constant"), min_lr_ratio (0).
    `max_steps_this_run`: stop (with a checkpoint) after this many steps of this invocation.
    `step_callback(step, row)`: called after each step (1-based) with its log row (tests, hooks).
    `identity`: what else determines the run besides the arguments (the data, how batches are
    built); with the method, its config, the encoder config, `preprocessing`, `optim`,
    `grad_clip`, `seed`, `amp` and the world size it forms the run identity that a resume must
    match (`alice.runstate.check_identity`).
    `fast_path`: how the step runs on the device (alice.fastpath; `auto` by default): attention
    kernel, fused AdamW, the host reading the loss every `sync_every` steps (log rows and the finite
    check then come in bursts; checkpoints only right after a read), batches cut ahead in a thread,
    a compiled forward. Not part of the run identity: it changes how, not what, a step computes.
    Returns {"step", "iterations", "finished", "checkpoint", "log", "last_loss", "seconds"}.
    """
    from alice.checkpoint import save_encoder_checkpoint

    settings = _optim_settings(optim)
    total = settings["iterations"]
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 1:
        raise ConfigError("pretrain.checkpoint_every", f"must be an integer >= 1, got {checkpoint_every!r}")
    if grad_clip is not None and not grad_clip > 0:
        raise ConfigError("pretrain.grad_clip", f"must be > 0 or null, got {grad_clip!r}")
    out_dir = Path(out_dir)
    ckpt_path, resume_path, log_path = out_dir / CHECKPOINT, out_dir / RESUME, out_dir / LOG
    method_config = dict(method_config if method_config is not None else getattr(method, "method_config", {}))

    # -- distributed
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = device_of(device, "pretrain.device", local_rank)
    own_group = False
    if world_size > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        own_group = True
    distributed = world_size > 1
    is_main = rank == 0
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)

    method.to(dev)
    fast = resolve_fast_path(fast_path, dev)
    set_attention(method, fast.attention)
    amp_dtype = _amp_dtype(amp, dev)
    optimizer = torch.optim.AdamW(_param_groups(method, settings["weight_decay"]), lr=settings["lr"],
                                  betas=tuple(settings["betas"]), weight_decay=settings["weight_decay"],
                                  **optimizer_options(fast))
    scheduler = build_lr_scheduler(optimizer, settings["schedule"], settings["warmup_iterations"], total,
                                   settings["min_lr_ratio"])
    params = [p for p in method.parameters() if p.requires_grad]
    optimizer_step = OptimizerStep(optimizer, scheduler, device=dev, dtype=amp_dtype, grad_clip=grad_clip,
                                   measure_norm=True, params=params, distributed=world_size > 1)

    # -- resume
    run_id = run_identity(method=method_name, method_config=method_config, encoder_config=encoder_config,
                          preprocessing=preprocessing or {}, optim=settings, grad_clip=grad_clip, seed=seed,
                          amp=amp, world_size=world_size, **dict(identity or {}))
    start = 0
    state_path = resume_path if resume_path.is_file() else ckpt_path
    if state_path.is_file():
        ckpt = _load_resume(state_path, method_name, run_id)
        res = ckpt["resume"]
        method.load_state_dict(res["method_state"], strict=True)
        optimizer.load_state_dict(res["optimizer"])
        scheduler.load_state_dict(res["scheduler"])
        optimizer_step.load_state_dict(res.get("scaler"))
        set_rng_state(res["rng"])
        start = int(ckpt["step"])
        log.info("resuming %s from %s at step %d/%d", method_name, state_path, start, total)
    if is_main:
        truncate_log(log_path, start)
    if distributed:
        dist.barrier()

    model: torch.nn.Module = method
    if distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(method, device_ids=[dev.index] if dev.type == "cuda" else None,
                    find_unused_parameters=bool(getattr(method, "find_unused_parameters", False)))
    if fast.compile:
        model = torch.compile(model)

    def save(step: int) -> None:
        if not is_main:
            return
        extra = {
            "optim": dict(settings),
            "seed": int(seed),
            "finished": step >= total,
            "identity": run_id,
            "resume": {
                "method_state": {k: v.detach().cpu() for k, v in method.state_dict().items()},
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": optimizer_step.state_dict(),
                "rng": rng_state(),
                "world_size": world_size,
            },
        }
        path = ckpt_path if step >= total else resume_path
        save_encoder_checkpoint(path, method.encoder_state_dict(), encoder_config, method_name,
                                method_config=method_config, preprocessing=preprocessing, step=step, extra=extra)
        if path == ckpt_path:
            resume_path.unlink(missing_ok=True)

    csv_log = CsvLog(log_path if is_main else None, fmt=_fmt)
    t_run = time.perf_counter()
    step = start
    last: dict[str, float] = {}
    stop_after = total if max_steps_this_run is None else min(total, start + int(max_steps_this_run))
    bar = None
    source: Prefetcher | None = None
    try:
        if start >= total:
            log.info("%s already finished (%d steps) in %s", method_name, start, out_dir)
            return {"step": start, "iterations": total, "finished": True, "checkpoint": str(ckpt_path),
                    "log": str(log_path), "last_loss": None, "seconds": 0.0}
        batches = _Batches(loader_factory, seed + rank, start, dev)
        if fast.prefetch:
            source = batches.prefetched(start, fast.prefetch, pin=dev.type == "cuda")
            next_batch = lambda _step: source.next()  # noqa: E731
        else:
            next_batch = batches.next
        bar = progress_bar(total, start, f"pretrain {method_name}", "step", progress and is_main)
        pending = PendingSteps(distributed)

        def emit(done: list[tuple[tuple[int, float, float], dict[str, float]]]) -> None:
            """Write the log rows of steps whose values the host has read."""
            nonlocal last
            for (at, lr_at, secs), values in done:
                values = dict(values)
                grad_norm = values.pop("grad_norm", None)
                if distributed:  # the log holds the mean over the processes
                    mean = torch.tensor(list(values.values()), device=dev)
                    dist.all_reduce(mean, op=dist.ReduceOp.SUM)
                    values = dict(zip(values, (mean / world_size).tolist()))
                row = {"step": at, "lr": lr_at, "loss": values.pop("loss"), **values,
                       "grad_norm": grad_norm, "seconds": secs}
                csv_log.write(row)
                last = row
                bar.set_postfix(loss=f"{row['loss']:.4g}", lr=f"{lr_at:.3g}")
                if step_callback is not None:
                    step_callback(at, row)

        method.train()
        with StopFlag() as stop:
            while step < stop_after:
                t0 = time.perf_counter()
                batch = _to_device(next_batch(step), dev)
                _seed_step(seed, rank, step)
                lr = optimizer_step.lr
                with optimizer_step.autocast():
                    out = model(batch)
                if not isinstance(out, Mapping) or "loss" not in out:
                    raise HarnessError(f"SSL method '{method_name}' forward must return a dict with 'loss'")
                describe = lambda t, at=step + 1: _nonfinite(at, t, resume_path)  # noqa: E731
                done = pending.step(optimizer_step, (step + 1, lr, round(time.perf_counter() - t0, 4)),
                                    out["loss"], out, describe=describe, read_now=fast.sync_every == 1)
                method.after_step(step, total)
                step += 1
                emit(done)
                bar.update(1)

                stop_name = _agree_stop(stop.name, distributed, dev)
                due = step % checkpoint_every == 0 or step == stop_after or stop_name
                if due or len(pending) >= fast.sync_every:
                    emit(pending.flush())  # before a checkpoint: only finite weights are saved
                if due:
                    save(step)
                    if distributed:
                        dist.barrier()
                if stop_name and step < total:
                    log.warning("preempted by %s after step %d; checkpoint %s", stop_name, step, resume_path)
                    raise Preempted(step, resume_path, stop_name)
    finally:
        if source is not None:
            source.close()
        csv_log.close()
        if bar is not None:
            bar.close()
        if own_group and dist.is_initialized():
            dist.destroy_process_group()
    seconds = time.perf_counter() - t_run
    log.info("pretrain %s: step %d/%d, loss %.4g, %.1f s", method_name, step, total,
             last.get("loss", float("nan")), seconds)
    return {"step": step, "iterations": total, "finished": step >= total,
            "checkpoint": str(ckpt_path if step >= total else resume_path),
            "log": str(log_path), "last_loss": last.get("loss"), "seconds": seconds}


def _agree_stop(name: str | None, distributed: bool, dev: torch.device) -> str | None:
    """Under DDP every rank stops at the same step if any rank got a signal."""
    if not distributed:
        return name
    flag = torch.tensor([1.0 if name else 0.0], device=dev)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return (name or "SIGTERM") if flag.item() > 0 else None


def _nonfinite(step: int, terms: Mapping[str, float], ckpt_path: Path) -> str:
    shown = ", ".join(f"{k}={v:.4g}" for k, v in terms.items())
    good = str(ckpt_path) if ckpt_path.is_file() else "none (no checkpoint written yet)"
    return f"non-finite loss at step {step} (terms: {shown}); last good checkpoint: {good}"
