"""The training core every loop of the harness shares: self-supervised pretraining
(alice.ssl.trainer), segmentation and classification fine-tuning (alice.downstream) and the
anatomical matcher (alice.anatomy.train). Each loop keeps only what is its own (its data, its
validation, what its checkpoint holds); the rest is here or in alice.runstate:

- `OptimizerStep`: one optimizer step — the forward pass's autocast, the stop on a non-finite loss
  or loss term (every process agrees under DDP), backward (loss scaling for float16), gradient
  clipping with its norm, the stop on a non-finite gradient, the optimizer and scheduler steps;
  or `OptimizerStep.deferred` with `PendingSteps`: the same step without reading anything on the
  host, the loss terms read (and checked) every few steps at once (alice.fastpath `sync_every`);
- `write_log` / `CsvLog`: a run's log.csv, rewritten atomically from the rows a resume restores, or
  appended row by row with the rows after a resumed step dropped (`truncate_log`);
- `progress_bar`: the tqdm bar (a no-op when progress is off);
- `device_of`, `amp_dtype`: the device and the autocast precision of a setting;
- `lr_factor`, `build_lr_scheduler`: the warm-up + cosine (or constant) learning rate of the
  pretraining and matcher loops (the fine-tuning loops use alice.downstream.schedules);
- alice.runstate: stop signals (`StopFlag` → `Preempted`, exit 75), the checkpoint clock
  (`Checkpoints`), RNG capture, the run identity a resume must match, atomic state files.
"""

from __future__ import annotations

import csv
import io
import math
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

from alice.errors import ConfigError, HarnessError
from alice.io import write_text
from alice.runstate import NonFiniteLoss

AMP_MODES = ("auto", "bf16", "off")


def device_of(device: str, key: str = "device", index: int = 0) -> torch.device:
    """`cpu`, `cuda` (device `index`) or `auto` (CUDA when present) as a torch device; ConfigError
    naming `key` otherwise or when CUDA is asked for and absent."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(key, "cuda requested but no CUDA device is available")
        return torch.device("cuda", index)
    if device == "cpu":
        return torch.device("cpu")
    raise ConfigError(key, f"must be cpu, cuda or auto, got {device!r}")


def amp_dtype(amp: str | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a fine-tuning `amp` setting: bf16 on `auto` with CUDA, on `bf16` on any
    device (CPUs with AMX run convolutions ~2x faster in it), none on `off`."""
    if amp == "bf16" or (amp == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """The forward pass's autocast context (a no-op without a dtype)."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


class OptimizerStep:
    """One optimizer step on a loss, the same in every loop.

        step = OptimizerStep(optimizer, scheduler, device=dev, dtype=torch.bfloat16, grad_clip=3.0)
        with step.autocast():
            out = model(batch)
        terms, grad_norm = step(out["loss"], out, describe=lambda t: f"loss {t} at step {i}")

    `terms`: the loss terms (scalar tensors, logged; default just the loss) checked with the loss:
    a non-finite one raises `NonFiniteLoss(describe(terms))` before any weight moves. The gradient
    norm is measured when `grad_clip` is set or `measure_norm` (clipping with an infinite bound
    changes no gradient); without loss scaling a non-finite norm stops the run the same way.
    float16 uses a GradScaler (which skips a step with inf/NaN gradients by itself).
    `distributed`: every process must agree the loss is finite (a MIN all-reduce of the flag).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, scheduler: Any = None, *, device: torch.device,
                 dtype: torch.dtype | None = None, grad_clip: float | None = None, measure_norm: bool = False,
                 params: Iterable[torch.nn.Parameter] | None = None, distributed: bool = False) -> None:
        self.optimizer, self.scheduler = optimizer, scheduler
        self.device, self.dtype = device, dtype
        self.grad_clip = grad_clip
        self.measure_norm = bool(measure_norm) or grad_clip is not None
        self.params = [p for p in (params if params is not None else
                                   (p for g in optimizer.param_groups for p in g["params"])) if p.requires_grad]
        self.distributed = distributed
        self.scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def autocast(self):
        return autocast(self.device, self.dtype)

    def _finite(self, values: torch.Tensor) -> bool:
        finite = torch.isfinite(values).all()
        if self.distributed:
            import torch.distributed as dist

            flag = finite.to(torch.float32)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            finite = flag > 0
        return bool(finite)

    @staticmethod
    def _named(loss: torch.Tensor, terms: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        return {"loss": loss, **{k: v for k, v in (terms or {}).items() if k != "loss"}}

    def _backward_step(self, loss: torch.Tensor) -> torch.Tensor | None:
        """zero_grad, backward (scaled for float16), clipping; the gradient norm as a tensor."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if not self.measure_norm:
            return None
        bound = self.grad_clip if self.grad_clip else float("inf")
        return torch.nn.utils.clip_grad_norm_(self.params, bound)

    def _update(self) -> None:
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()

    def __call__(self, loss: torch.Tensor, terms: Mapping[str, torch.Tensor] | None = None, *,
                 describe: Callable[[dict[str, float]], str]) -> tuple[dict[str, float], float | None]:
        """Backward and step; returns ({"loss": value, <term>: value, ...}, the gradient norm or None)."""
        named = self._named(loss, terms)
        values = torch.stack([v.detach().float().reshape(()) for v in named.values()])
        floats = dict(zip(named, values.tolist()))
        if not self._finite(values):
            raise NonFiniteLoss(describe(floats))
        norm = self._backward_step(loss)
        grad_norm = None if norm is None else float(norm)
        if self.scaler is None and grad_norm is not None and not math.isfinite(grad_norm):
            raise NonFiniteLoss(describe({**floats, "grad_norm": grad_norm}))
        self._update()
        return floats, grad_norm

    def deferred(self, loss: torch.Tensor, terms: Mapping[str, torch.Tensor] | None = None) -> tuple[list[str], torch.Tensor]:
        """Backward and step without reading anything on the host: (names, their values on the
        device), the gradient norm last as `grad_norm` when measured. The finite check is
        `PendingSteps.flush`'s, after the weights have moved (alice.fastpath `sync_every`)."""
        named = self._named(loss, terms)
        parts = [v.detach().float().reshape(1) for v in named.values()]
        names = list(named)
        norm = self._backward_step(loss)
        if norm is not None:
            parts.append(norm.detach().float().reshape(1).to(parts[0].device))
            names.append("grad_norm")
        self._update()
        return names, torch.cat(parts)

    def state_dict(self) -> dict[str, Any]:
        """The loss scaler's state (empty without one); optimizer and scheduler are the caller's."""
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(dict(state))


class PendingSteps:
    """Steps whose logged values are still on the device (`OptimizerStep.deferred`): `flush()`
    reads them all with one transfer, in order, and raises `NonFiniteLoss` for the first step with
    a non-finite value (`describe(info, values)` gives its message), so a loop reads the host every
    `sync_every` steps instead of every step. Under DDP every process agrees (a MIN all-reduce)."""

    def __init__(self, distributed: bool = False) -> None:
        self.distributed = distributed
        self.items: list[tuple[Any, list[str], torch.Tensor, Callable[[dict[str, float]], str]]] = []

    def __len__(self) -> int:
        return len(self.items)

    def add(self, info: Any, names: list[str], values: torch.Tensor,
            describe: Callable[[dict[str, float]], str]) -> None:
        self.items.append((info, names, values, describe))

    def step(self, optimizer_step: OptimizerStep, info: Any, loss: torch.Tensor,
             terms: Mapping[str, torch.Tensor] | None = None, *, describe: Callable[[dict[str, float]], str],
             read_now: bool) -> list[tuple[Any, dict[str, float]]]:
        """One optimizer step of a loop: read at once (`read_now`: the loss checked before the
        weights move) -> [(info, values)], or kept on the device until `flush` -> []."""
        if read_now:
            floats, grad_norm = optimizer_step(loss, terms, describe=describe)
            return [(info, {**floats, "grad_norm": grad_norm})]
        self.add(info, *optimizer_step.deferred(loss, terms), describe)
        return []

    def flush(self) -> list[tuple[Any, dict[str, float]]]:
        """[(info, {name: value})] of every pending step, oldest first; empties the list."""
        if not self.items:
            return []
        items, self.items = self.items, []
        table = torch.cat([values for _, _, values, _ in items])
        finite = torch.isfinite(table).all()
        if self.distributed:
            import torch.distributed as dist

            flag = finite.to(torch.float32)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            finite = flag > 0
        flat = table.tolist()
        done, at = [], 0
        for info, names, _, describe in items:
            row = dict(zip(names, flat[at:at + len(names)]))
            at += len(names)
            if not all(math.isfinite(v) for v in row.values()):
                raise NonFiniteLoss(describe(row))
            done.append((info, row))
        if not bool(finite):  # another process saw a non-finite value
            raise NonFiniteLoss(items[0][3](done[0][1]) + " (non-finite on another process)")
        return done


# ------------------------------------------------------------------------------- learning rate
# Steps are counted from 0: optimizer step `i` (the i-th update) runs with `lr = base_lr * f(i)`.
# cosine: linear warm-up `f(i) = (i + 1) / W` for `i < W` (so the first update is not wasted at lr
# 0 and step `W - 1` reaches the base lr), then a half cosine
# `f(i) = m + (1 - m) * (1 + cos(pi * (i - W) / (T - W))) / 2` that would reach the floor `m`
# (`min_lr_ratio`, default 0) one step after the last step `T - 1`; constant: the same warm-up,
# then 1.
SCHEDULES = ("cosine", "constant")


def lr_factor(schedule: str, warmup_iterations: int, iterations: int,
              min_lr_ratio: float = 0.0) -> Callable[[int], float]:
    """The multiplier of the base learning rate at optimizer step `i` (0-based)."""
    if schedule not in SCHEDULES:
        raise ConfigError("optim.schedule", f"must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    total = int(iterations)
    if total < 1:
        raise ConfigError("optim.iterations", f"must be an integer >= 1, got {iterations!r}")
    warmup = int(warmup_iterations)
    if warmup < 0:
        raise ConfigError("optim.warmup_iterations", f"must be an integer >= 0, got {warmup_iterations!r}")
    warmup = min(warmup, total)
    floor = float(min_lr_ratio)

    def factor(i: int) -> float:
        if i < warmup:
            return (i + 1) / warmup
        if schedule == "constant":
            return 1.0
        t = (i - warmup) / max(1, total - warmup)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))

    return factor


def build_lr_scheduler(optimizer: torch.optim.Optimizer, schedule: str, warmup_iterations: int,
                       iterations: int, min_lr_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepped once after every optimizer step (its state dict is weights-only safe)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor(schedule, warmup_iterations, iterations, min_lr_ratio))


# ---------------------------------------------------------------------------------------- log.csv
def format_value(value: Any) -> str:
    """A log cell: empty for None / NaN, 8 significant digits for floats."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return format(value, ".8g") if isinstance(value, float) else str(value)


def write_log(path: Path, columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> None:
    """log.csv with `columns`, one line per row (a missing key is an empty cell), atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([format_value(row.get(c)) for c in columns])
    write_text(path, buf.getvalue())


def truncate_log(path: Path, step: int) -> None:
    """Keep the header and the rows whose first column (the step) is <= `step` (atomically)."""
    if not path.is_file():
        return
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return
    keep = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= step]
    if len(keep) == len(rows):
        return
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(keep if step > 0 else [])
    write_text(path, buf.getvalue())


class CsvLog:
    """log.csv appended one flushed row at a time (a long run's log is readable while it runs); the
    columns are the first row's keys. `path=None` writes nothing (a DDP rank other than 0)."""

    def __init__(self, path: Path | None, fmt: Callable[[Any], str] = format_value):
        self.path, self.fmt = path, fmt
        self.columns: list[str] | None = None
        self.fh = None
        if path is not None and path.is_file() and path.stat().st_size > 0:
            with open(path, newline="") as fh:
                self.columns = next(csv.reader(fh))

    def write(self, row: Mapping[str, Any]) -> None:
        if self.path is None:
            return
        if self.fh is None:
            self.fh = open(self.path, "a", newline="")
        writer = csv.writer(self.fh, lineterminator="\n")
        if self.columns is None:
            self.columns = list(row)
            writer.writerow(self.columns)
        extra = [k for k in row if k not in self.columns]
        if extra:
            raise HarnessError(f"{self.path}: new log columns {extra} mid-run (columns: {self.columns})")
        writer.writerow([self.fmt(row.get(c, "")) for c in self.columns])
        self.fh.flush()

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None


# ---------------------------------------------------------------------------------------- progress
class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, initial: int, desc: str, unit: str = "step", enabled: bool = True):
    """A tqdm bar from `initial` to `total`, or an object with its methods that draws nothing."""
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True)
