"""The fast path of a training step on a GPU: switches that change how a step runs, not what it
computes.

    fast_path:                 # config (every key may be `auto`, the default)
      attention: auto          # sdpa: fused scaled-dot-product attention in every transformer block
      fused_optimizer: auto    # AdamW / SGD with `fused=True` (one kernel for every parameter)
      sync_every: auto         # steps between the host's reads of the loss (log rows, the finite check)
      prefetch: auto           # batches cut ahead by a background thread, in pinned memory
      compile: false           # torch.compile the step's forward

`auto` means on for CUDA (sdpa, fused, sync every 50 steps, 2 batches ahead) and off on a CPU (the
plain attention, the unfused optimizer, a read every step, no thread), so a CPU run computes what it
always computed, bit for bit. `compile` stays off unless asked for: whether it pays off depends on
the GPU and the network.

What each switch gives up:
- `attention: sdpa`: the attention weights are never formed, so a block cannot keep them
  (MONAI's `save_attn`) and rounding differs from the plain softmax in the last bits;
- `sync_every: N` > 1: the loss is read every N steps, so a non-finite loss stops the run at the
  next read (naming its step) instead of before the weights move; a checkpoint is written only right
  after a read, so the last checkpoint on disk always holds finite weights;
- `prefetch`: the thread cuts the next batches while the GPU trains; a loader whose batch `i`
  depends only on `(seed, i)` (the trainer's data contract) gives the same batches either way.

`HostSyncs` counts the places a step hands a tensor's value to Python (`.item()`, `.tolist()`,
`bool()`, `float()`, ...): on a GPU each waits for every queued kernel.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from typing import Any, Callable, Mapping

import torch

from alice.errors import ConfigError

KEY = "fast_path"
ATTENTION = ("sdpa", "math")
CUDA_SYNC_EVERY = 50
CUDA_PREFETCH = 2


@dataclasses.dataclass(frozen=True)
class FastPath:
    attention: str = "math"
    fused_optimizer: bool = False
    sync_every: int = 1
    prefetch: int = 0
    compile: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _auto(device: torch.device) -> FastPath:
    if device.type == "cuda":
        return FastPath("sdpa", True, CUDA_SYNC_EVERY, CUDA_PREFETCH, False)
    return FastPath()


def resolve_fast_path(section: Mapping[str, Any] | FastPath | str | None, device: torch.device,
                      key: str = KEY) -> FastPath:
    """The switches for `device`: `section`'s values, `auto` (or a missing key) by device."""
    if isinstance(section, FastPath):
        return section
    auto = _auto(device)
    if section is None or section == "auto":
        return auto
    if not isinstance(section, Mapping):
        raise ConfigError(key, f"must be a mapping of switches or 'auto', got {section!r}")
    fields = {f.name for f in dataclasses.fields(FastPath)}
    unknown = sorted(set(section) - fields)
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}", f"unknown switch (known: {', '.join(sorted(fields))})")
    values = auto.as_dict()
    for name, value in section.items():
        if value == "auto":
            continue
        if name == "attention":
            if value not in ATTENTION:
                raise ConfigError(f"{key}.attention", f"must be auto, sdpa or math, got {value!r}")
        elif name in ("fused_optimizer", "compile"):
            if not isinstance(value, bool):
                raise ConfigError(f"{key}.{name}", f"must be auto, true or false, got {value!r}")
        else:
            minimum = 1 if name == "sync_every" else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(f"{key}.{name}", f"must be auto or an integer >= {minimum}, got {value!r}")
        values[name] = value
    if values["fused_optimizer"] and device.type not in ("cuda", "cpu"):
        raise ConfigError(f"{key}.fused_optimizer", f"no fused optimizer on {device.type}")
    return FastPath(**values)


# --------------------------------------------------------------------------------- attention
def _window_attention_class():
    from monai.networks.nets.swin_unetr import WindowAttention

    class SdpaWindowAttention(WindowAttention):
        """MONAI's Swin window attention through `F.scaled_dot_product_attention` in training too
        (MONAI's own switch takes that path only without gradients); same parameters, same
        relative position bias and shifted-window mask, added to the logits as the kernel's mask."""

        def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
            b, n, c = x.shape
            h = self.num_heads
            q, k, v = self.qkv(x).reshape(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
            index = self.relative_position_index[:n, :n].reshape(-1)
            bias = self.relative_position_bias_table[index].reshape(n, n, h).permute(2, 0, 1)
            if mask is not None:  # (windows, n, n): every sample holds the same windows in turn
                nw = mask.shape[0]
                bias = (bias[None, None] + mask[None, :, None]).expand(b // nw, nw, h, n, n).reshape(b, h, n, n)
            else:
                bias = bias[None]
            drop = self.attn_drop.p if self.training else 0.0
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype),
                                                                   dropout_p=drop, scale=self.scale)
            return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))

    return WindowAttention, SdpaWindowAttention


def set_attention(module: torch.nn.Module, attention: str) -> int:
    """Switch every attention block in `module` to `attention` (sdpa | math); returns how many.

    MONAI's `SABlock` (ViT, UNETR, the MAE decoders) has the switch itself (`use_flash_attention`);
    MONAI's Swin `WindowAttention` is swapped for a subclass with the same parameters. nnFormer's
    attention is always the kernel; CASA needs its attention map (eq. 3) and keeps it."""
    from monai.networks.blocks.selfattention import SABlock

    if attention not in ATTENTION:
        raise ConfigError(f"{KEY}.attention", f"must be sdpa or math, got {attention!r}")
    plain, fused = _window_attention_class()
    sdpa = attention == "sdpa"
    count = 0
    for m in module.modules():
        if isinstance(m, SABlock):
            if sdpa and (m.save_attn or m.rel_positional_embedding is not None or m.dropout_rate > 0):
                continue  # the kernel cannot give what these need (MONAI's kernel path drops out in eval too)
            m.use_flash_attention = sdpa
            count += 1
        elif isinstance(m, plain):
            m.__class__ = fused if sdpa else plain
            count += 1
    return count


def optimizer_options(fast: FastPath) -> dict[str, Any]:
    """Keyword arguments for torch.optim.AdamW / SGD."""
    return {"fused": True} if fast.fused_optimizer else {}


def maybe_compile(module: torch.nn.Module, fast: FastPath) -> Callable:
    """The module's forward, compiled when the switch is on."""
    return torch.compile(module) if fast.compile else module


def from_host(t: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Numbers drawn on the host (augmentation parameters, masking noise: drawn there so a run
    draws the same ones on any device) moved to `device` without waiting for it: a copy from
    pageable memory makes the host wait for every queued kernel, one from pinned memory is queued
    like a kernel. On a CPU it is `t.to(device, dtype)`."""
    if torch.device(device).type == "cuda" and t.device.type == "cpu":
        t = t.pin_memory().to(device, non_blocking=True)
    return t.to(device=device, dtype=dtype)


# ---------------------------------------------------------------------------------- prefetch
class Prefetcher:
    """`next()` hands out `produce()`'s results in order while a daemon thread makes the next
    `depth` ahead (tensors in pinned memory when `pin`); an exception in the thread is raised by the
    `next()` that would have returned its item. `produce` must not touch the global RNGs."""

    _END = object()

    def __init__(self, produce: Callable[[], Any], depth: int, pin: bool = False) -> None:
        self.produce, self.pin = produce, pin
        self.items: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="alice-prefetch", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopped.is_set():
            try:
                item = self.produce()
                if self.pin:
                    item = _pin(item)
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                item = exc
            while not self.stopped.is_set():
                try:
                    self.items.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return

    def next(self) -> Any:
        item = self.items.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)


def _pin(item: Any) -> Any:
    if isinstance(item, torch.Tensor):
        return item.pin_memory()
    if isinstance(item, Mapping):
        return {k: _pin(v) for k, v in item.items()}
    if isinstance(item, (list, tuple)):
        return type(item)(_pin(v) for v in item)
    return item


# ------------------------------------------------------------------------------- host syncs
_SYNCING = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy", "cpu")


class HostSyncs:
    """Counts, inside the `with` block, the calls that hand a tensor's value to the host.

        with HostSyncs() as syncs:
            train_step()
        assert syncs.count == 0, syncs.where

    On a CPU nothing waits, but the same calls are the ones that stall a GPU step; under CUDA,
    `torch.cuda.set_sync_debug_mode` is the device's own check (benchmarks/gpu_pretrain.py)."""

    def __init__(self) -> None:
        self.count = 0
        self.where: list[str] = []
        self._saved: dict[str, Any] = {}

    def __enter__(self) -> "HostSyncs":
        for name in _SYNCING:
            original = getattr(torch.Tensor, name)
            self._saved[name] = original
            setattr(torch.Tensor, name, self._counting(name, original))
        return self

    def _counting(self, name: str, original: Callable) -> Callable:
        def call(tensor, *args, **kwargs):
            if not self._inside:
                self._inside = True
                try:
                    self.count += 1
                    self.where.append(f"Tensor.{name} of shape {tuple(tensor.shape)}")
                finally:
                    self._inside = False
            return original(tensor, *args, **kwargs)
        return call

    _inside = False

    def __exit__(self, *exc) -> None:
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)
