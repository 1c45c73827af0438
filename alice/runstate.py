"""What every training loop needs to stop and resume exactly: stop signals, RNG capture, the
identity a resumed run must share with the run that wrote the state, and the state file itself.

- `StopFlag`: SIGUSR1 (SLURM's warning before the time limit), SIGTERM (preemption, `kill`) and
  SIGINT (Ctrl-C) set a flag; the loop finishes its step, writes its state and raises `Preempted`
  (exit status 75, EX_TEMPFAIL), and the same command resumes. A second Ctrl-C interrupts at once.
- `rng_state` / `set_rng_state`: torch (CPU and CUDA), numpy and python's global RNGs as tensors
  and numbers, so the state loads with `torch.load(weights_only=True)`.
- `run_identity`: a loop describes its run by a nested dict of everything that determines its
  result (method and encoder settings, crop, optimizer, seed, the data); the state file stores it
  with its hash, and `check_identity` refuses a resume whose identity differs, naming the keys.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from alice.errors import ConfigError, HarnessError, InputError
from alice.io import file_sha256

log = logging.getLogger("alice")

EX_TEMPFAIL = 75
STOP_SIGNALS = ("SIGUSR1", "SIGTERM", "SIGINT")


class Preempted(HarnessError):
    """A stop signal arrived; the running state was written; rerunning the same command resumes."""

    exit_code = EX_TEMPFAIL

    def __init__(self, step: int, checkpoint: str | Path, signal_name: str):
        self.step = step
        self.checkpoint = str(checkpoint)
        self.signal_name = signal_name
        super().__init__(f"{signal_name} received: stopped after step {step}, checkpoint {checkpoint}; "
                         f"rerun the same command to resume (exit status {EX_TEMPFAIL})")


class NonFiniteLoss(HarnessError):
    """The loss (or gradient norm) became NaN/inf; the last good state was kept."""


class Checkpoints:
    """When a loop writes its running state besides on a stop signal: every `every` steps (if
    given) and once `minutes` of wall time have passed since the last write. Resume is exact, so
    when it writes never changes the result."""

    def __init__(self, every: int | None, minutes: float | None):
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise ConfigError("checkpoint_every", f"must be an integer >= 1, got {every!r}")
        self.every = every
        self.seconds = None if minutes is None else float(minutes) * 60.0
        self.last = time.monotonic()

    def due(self, step: int) -> bool:
        now = time.monotonic()
        if (self.every is not None and step % self.every == 0) or (
                self.seconds is not None and now - self.last >= self.seconds):
            self.last = now
            return True
        return False


class StopFlag:
    """Within the block, a stop signal sets `name` instead of killing the process; the previous
    handlers come back on exit. A second SIGINT raises KeyboardInterrupt (the user insists)."""

    def __init__(self) -> None:
        self.name: str | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> "StopFlag":
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers can only be installed from the main thread
        for name in STOP_SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        name = signal.Signals(signum).name
        if name == "SIGINT" and self.name == "SIGINT":
            raise KeyboardInterrupt
        self.name = name
        hint = " (Ctrl-C again to interrupt without it)" if name == "SIGINT" else ""
        log.warning("%s received: finishing the current step, then checkpointing%s", name, hint)

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------------------------------- RNG
def rng_state() -> dict[str, Any]:
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)},
        "python": {"version": int(version), "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss_next": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    npy = state["numpy"]
    np.random.set_state(("MT19937", npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        with contextlib.suppress(Exception):
            torch.cuda.set_rng_state_all(state["cuda"])


def numpy_state(rs: np.random.RandomState) -> dict[str, Any]:
    """A numpy RandomState's state as tensors and numbers (weights-only loadable)."""
    _, keys, pos, has_gauss, gauss = rs.get_state()
    return {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
            "cached_gaussian": float(gauss)}


def set_numpy_state(rs: np.random.RandomState, state: Mapping[str, Any]) -> None:
    rs.set_state(("MT19937", state["keys"].numpy().astype(np.uint32), state["pos"], state["has_gauss"],
                  state["cached_gaussian"]))


def random_states(transform: Any) -> list[np.random.RandomState]:
    """Every numpy RandomState a (MONAI) transform draws from: its own `R` and those of the
    transforms it holds (a Compose's list, a dictionary transform's array transform), each once,
    in a fixed order. Saving and restoring these replays the transform's random draws."""
    found: list[np.random.RandomState] = []
    seen: set[int] = set()

    def walk(obj: Any, depth: int) -> None:
        if id(obj) in seen or depth > 8:
            return
        seen.add(id(obj))
        rs = getattr(obj, "R", None)
        if isinstance(rs, np.random.RandomState) and id(rs) not in seen:
            seen.add(id(rs))
            found.append(rs)
        if isinstance(obj, (list, tuple)):
            for item in obj:
                walk(item, depth + 1)
            return
        for value in getattr(obj, "__dict__", {}).values():
            if isinstance(value, (list, tuple)) or hasattr(value, "R") or hasattr(value, "transforms"):
                walk(value, depth + 1)

    walk(transform, 0)
    return found


def transform_state(transform: Any) -> list[dict[str, Any]]:
    return [numpy_state(rs) for rs in random_states(transform)]


def set_transform_state(transform: Any, states: list[Mapping[str, Any]]) -> None:
    targets = random_states(transform)
    if len(targets) != len(states):
        raise HarnessError(f"cannot resume: the augmentation draws from {len(targets)} random streams, "
                           f"the saved state has {len(states)}")
    for rs, state in zip(targets, states):
        set_numpy_state(rs, state)


# ---------------------------------------------------------------------------------------- identity
def plain(obj: Any) -> Any:
    """A JSON-able copy: mappings with str keys, lists, numbers, strings, None."""
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, bool) or obj is None:
        return obj
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return int(v) if v.is_integer() else v  # `lr: 1` and `lr: 1.0` are one setting
    if isinstance(obj, Path):
        return str(obj)
    return obj


def run_identity(**parts: Any) -> dict[str, Any]:
    """The identity of a run (its parts, JSON-able) with its hash under "hash"."""
    body = plain(parts)
    return {"hash": identity_hash(body), "parts": body}


def init_identity(init: str | Path) -> str | dict[str, Any]:
    """How a fine-tuning's initial encoder enters its identity: "scratch", or the checkpoint's
    content hash (a regenerated pretraining is another run; a moved file is the same one)."""
    if str(init) == "scratch":
        return "scratch"
    path = Path(init)
    if not path.is_file():
        return {"missing": str(path)}
    return {"sha256": file_sha256(path)}


def identity_hash(parts: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(plain(parts), sort_keys=True).encode()).hexdigest()[:16]


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, Mapping) and obj:
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def identity_diff(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """'key: saved vs current' for every dotted key whose value differs."""
    a, b = _flatten(saved), _flatten(current)
    return [f"{k}: {a.get(k, '(absent)')!r} then, {b.get(k, '(absent)')!r} now"
            for k in sorted(set(a) | set(b)) if a.get(k, "(absent)") != b.get(k, "(absent)")]


def check_identity(path: Path, saved: Mapping[str, Any] | None, current: Mapping[str, Any]) -> None:
    """Refuse to resume from `path` unless the state was written by the same run."""
    if not isinstance(saved, Mapping) or "hash" not in saved:
        raise InputError(path, "cannot resume: the state does not say which run wrote it; "
                               f"delete {path.name} (or use a new output folder) to start over")
    if saved["hash"] == current["hash"]:
        return
    diffs = identity_diff(saved.get("parts", {}), current["parts"]) or ["(same values, different hash)"]
    shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
    raise InputError(path, f"cannot resume: this run differs from the one that wrote the state ({shown}); "
                           f"delete {path.name} (or use a new output folder) to start over")


# ---------------------------------------------------------------------------------------- files
def save_state(path: Path, state: Mapping[str, Any]) -> None:
    """torch.save, atomically (a killed write leaves the previous state intact)."""
    from alice.io import atomic_path

    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(dict(state), tmp)


def load_state(path: Path, identity: Mapping[str, Any], what: str) -> dict[str, Any]:
    """The state in `path`, after checking it is readable and written by the run `identity`."""
    from alice.io import load_torch_dict

    state = load_torch_dict(path, ["identity", "step"], f"{what} state")
    check_identity(path, state.get("identity"), identity)
    return state
