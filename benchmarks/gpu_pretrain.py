"""Step times on one device: the harness's pretraining and fine-tuning steps beside plain-PyTorch
steps of the same shape, one JSON line per row.

    python benchmarks/gpu_pretrain.py --config config/paper.yaml --device cuda --fast-path both --out gpu.jsonl

runs on a GPU machine in one process: every pretraining run of the `--method`s (each on every
encoder it declares; `--method all`: every registered method) and every `--finetune` network, each
timed twice, the harness against the plain step, on the same device, at the config's crop and batch
(paper scale: 192 x 192 x 64 crops, batch 8 pairs; 96³ fine-tuning crops, batch 8).
`--tiny --device cpu --config config/config.yaml` shrinks encoders, crops and batches so the same
code runs on a CPU in seconds (tests/benchmarks/test_gpu_pretrain.py).

What is timed:
- harness, pretraining: `alice.ssl.trainer.pretrain` on the method built by its registry, fed by the
  loader factory of `alice.ssl.run._loader` (crops cut from a memory-mapped pool; Alice's crop pairs
  mined as `pretrain.pairs` says, with the `bbox` matcher: the learned one needs the matcher's
  embeddings, which this script does not train; the rows say `"matcher": "bbox"`).
- harness, fine-tuning: `alice.downstream.segmentation.finetune` (its CropBatches data path and
  OptimizerStep, the config's recipe, validation off), Rand. init. on fold 0.
- plain, pretraining: random tensors already on the device, AdamW (fused on CUDA), bf16 autocast
  where the config asks for it. Alice on ViT: a ViT of the config's size written here
  (`F.scaled_dot_product_attention`) on the visible tokens of two masked views, a light decoder of
  the config's size on all tokens, an EMA target forward on the two intact views, the EMA update.
  Alice on Swin / nnFormer (SimMIM: every voxel enters the encoder): the harness's encoder module
  (fused attention) on the two views, its EMA target on the two views, the EMA update. Any other
  method: forward + backward of its encoder on two views (the ViT written here, the harness's
  Swin / nnFormer encoder module, or the CNN network the method pretrains), a lower bound that
  ignores the method's own heads and views.
- plain, fine-tuning: the network `build_segmentation_network` builds (MONAI's fused attention on)
  on random crops and labels, DiceCE (every output scale of a deep-supervised network, labels
  resized beforehand), AdamW (fused on CUDA), autocast as the config's `amp` says.

How: harness_ms is measured inside one run of `pretrain()` (resp. `finetune()`): the wall time
from the end of step `lead` to the end of step `lead + steps` over `steps`, lead = max(--warmup, 1),
the device synchronised at both ends. The ends are marked by hooks the loops call right after every
step: the method's `after_step` (pretraining; the trainer's `step_callback` would not do: with
`fast_path.sync_every` > 1 it is called in bursts, when the host reads the losses) and `finetune`'s
`step_callback`. So everything the loop does per step counts (cutting the batch, host reads of the
loss, log rows, a fine-tuning epoch's end when the window holds one) and nothing it does once
(building, the final checkpoint). plain_ms: the mean over `steps` steps after `lead` untimed ones,
between two synchronisations. data_ms: the harness's data path alone (the loader factory, resp.
CropBatches), on the host, per batch. samples/s = batch / step time; peak_mem_gb:
torch.cuda.max_memory_allocated of the harness run (plain_peak_mem_gb: of the plain steps);
host_syncs_per_step (CUDA): the calls in the window that made the host wait for the device, as
torch.cuda.set_sync_debug_mode("warn") reports them (alice.fastpath.HostSyncs counts the same on
a CPU, in the tests).

`--fast-path on|off|both`: the harness rows run with the config's `fast_path` section (every switch
`auto` when it has none), with every switch off, or both (two rows, before / after); `--compile`
adds a row with `compile: true` (and the plain step under torch.compile).

The data: a temporary folder of phantoms (`alice.data.phantom.write_dataset`), prepared
(`alice.data.preprocess.prepare`) and split (`alice.data.folds`) by the harness's own writers in
the layout of `alice prepare` / `alice folds`: a pool of 4 volumes and 4 labeled cases, cached at
a spacing that makes each volume about 1.5x the largest crop per axis (real volumes are larger:
data_ms is that of small, page-cached volumes). Fold 0's training list repeats its 2 volumes up
to the size of the config's fold (phantom.counts.flare22.labeled less its 1/k), so an epoch has
the config's steps.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import math
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from alice import config as cfg

REPO = Path(__file__).resolve().parents[1]
FINETUNE_DEFAULT = ("unetr", "swin_unetr", "nnformer")
OFF = {"attention": "math", "fused_optimizer": False, "sync_every": 1, "prefetch": 0, "compile": False}
AUTO = {"attention": "auto", "fused_optimizer": "auto", "sync_every": "auto", "prefetch": "auto", "compile": False}
VOLUME_SCALE = 1.5          # cached volume / largest crop, per axis
POOL_VOLUMES, LABELED_CASES, FOLDS = 4, 4, 2   # the synthetic data (the module docstring)

# --tiny: the widths of tests/ssl/test_methods.py, crops that fit each encoder's stride, batch 2
TINY_ENCODERS = {
    "vit": {"embed_dim": 24, "depth": 12, "heads": 2, "mlp_ratio": 2, "patch": [16, 16, 16]},
    "swin": {"embed_dim": 12, "depths": [2, 1, 1, 1], "heads": [3, 6, 12, 24], "window": [4, 4, 2], "mlp_ratio": 2},
    "nnformer": {"embed_dim": 8, "depths": [2, 2, 1], "heads": [1, 2, 4], "window": [4, 4, 2], "patch": [2, 2, 2],
                 "mlp_ratio": 2, "global_stages": 1},
    "resnet3d": {"depth": 10, "widen_factor": 0.0625, "features": 4},
    "unet3d": {"widths": [4, 4, 8, 8, 16, 4]},
    "nsunet3d": {"filters": [4, 8, 16]},
    "unet": {"channels": [4, 8, 16], "res_units": 1, "features": 4},
    "vnet": {"width": 2, "features": 4},
}
TINY_PRETRAIN_CROPS = {"vit": [32, 32, 16], "swin": [64, 32, 32], "nnformer": [32, 32, 16], "resnet3d": [32, 32, 32],
                       "unet3d": [32, 32, 16], "nsunet3d": [32, 32, 16], "unet": [32, 32, 16], "vnet": [32, 32, 16]}
TINY_FINETUNE_CROPS = {"unetr": [16, 16, 16], "swin_unetr": [64, 32, 32], "nnformer": [32, 32, 16],
                       "resnet_unet": [32, 32, 32], "unet3d": [32, 32, 16], "nsunet3d": [32, 32, 16],
                       "unet": [32, 32, 16], "vnet": [32, 32, 16]}
TINY_BATCH = 2


# ------------------------------------------------------------------------------------ the device
def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def reset_memory(dev: torch.device) -> None:
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def peak_gb(dev: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(dev) / 2**30, 2) if dev.type == "cuda" else None


def device_name(dev: torch.device) -> str:
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"


def autocast(dev: torch.device, dtype: torch.dtype | None):
    return torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None)


def wall(dev: torch.device, fn: Callable[[], Any]) -> float:
    """Seconds `fn()` takes, between two synchronisations of the device."""
    sync(dev)
    t0 = time.perf_counter()
    fn()
    sync(dev)
    return time.perf_counter() - t0


def timed_steps(dev: torch.device, step: Callable[[], None], lead: int, steps: int) -> float:
    """ms per call of `step` over `steps` calls after `lead` untimed ones."""
    for _ in range(lead):
        step()
    return wall(dev, lambda: [step() for _ in range(steps)]) / steps * 1e3


# ---------------------------------------------------------------------------------- the settings
def shrink(config: dict) -> dict:
    """--tiny: small encoders, crops and batches (the recipes and method settings otherwise kept)."""
    pre = config["pretrain"]
    for name, arch in TINY_ENCODERS.items():
        if name in pre["encoders"]:
            pre["encoders"][name] = dict(arch)
            pre["crop"][name] = list(TINY_PRETRAIN_CROPS[name])
    pre["optim"]["batch_size"] = TINY_BATCH
    for backbone, crop in TINY_FINETUNE_CROPS.items():
        section = config["finetune"].get(backbone)
        if section is None:
            continue
        section.update(crop=list(crop), samples_per_volume=1)
        section["optim"]["batch_size"] = TINY_BATCH
        if "feature_size" in section:
            encoder = cfg.backbone_encoder(backbone)
            section["feature_size"] = 4 if backbone == "unetr" else TINY_ENCODERS[encoder]["embed_dim"]
    return config


def pretrain_run_settings(config: dict, method: str, encoder: str, tiny: bool) -> dict:
    """`alice pretrain`'s settings (alice.config.pretrain_settings), pairs mined by `bbox`; with
    --tiny the method's smoke widths (its declaration's `smoke`)."""
    from alice.ssl.catalog import require

    settings = cfg.pretrain_settings(config, method, encoder)
    if tiny:
        settings["method_config"] = {**settings["method_config"], **require(method).smoke}
    if "pairs" in settings:
        settings["pairs"] = {**settings["pairs"], "matcher": "bbox"}
    return settings


def fast_path_variants(config: dict, choice: str, compile_row: bool, dev: torch.device) -> list[tuple[str, Any]]:
    """[(name, FastPath)] of the harness rows."""
    from alice.fastpath import resolve_fast_path

    on = resolve_fast_path(config.get("fast_path") or AUTO, dev)
    variants = []
    if choice in ("off", "both"):
        variants.append(("off", resolve_fast_path(OFF, dev)))
    if choice in ("on", "both"):
        variants.append(("on", on))
    if compile_row:
        variants.append(("compile", resolve_fast_path({**on.as_dict(), "compile": True}, dev)))
    return variants


# ------------------------------------------------------------------------------------- the data
def _ras_extent_mm(path: Path) -> np.ndarray:
    """The field of view of a NIfTI image along the world axes (x, y, z) in mm."""
    import nibabel as nib

    image = nib.load(str(path))
    return np.abs(image.affine[:3, :3]) @ np.asarray(image.shape[:3], dtype=np.float64)


def _spacing_for(release: Path, dataset: str, crop: Sequence[int]) -> list[float]:
    """The cache spacing that makes every case of `dataset` at least VOLUME_SCALE x `crop` voxels."""
    from alice.data.layouts import discover_release
    from alice.data.nifti import MAX_SPACING_MM, MIN_SPACING_MM

    extent = np.min([_ras_extent_mm(c.image) for c in discover_release(dataset, release).cases], axis=0)
    return [round(float(np.clip(e / (VOLUME_SCALE * c), MIN_SPACING_MM, MAX_SPACING_MM)), 3)
            for e, c in zip(extent, crop)]


def _largest(crops: Sequence[Sequence[int]]) -> list[int]:
    return [max(c[a] for c in crops) for a in range(3)] if crops else [1, 1, 1]


def synthesize(root: Path, config: dict, pool_crops: list, finetune_crops: list, tiny: bool) -> tuple[Path, Path]:
    """The pool (flare22_pool) and the labeled cases (flare22) as `alice prepare` and `alice folds`
    write them, from phantoms; returns their cache folders."""
    from alice.data.folds import make_folds, write_folds
    from alice.data.phantom import write_dataset
    from alice.data.preprocess import prepare

    release = root / "release"
    geometry = {"truncate_prob": 0.0}  # whole abdomens: every volume fits the crops
    if tiny:
        geometry.update(inplane_voxels=32, slice_mm=[8.0, 10.0])
    write_dataset("flare22", release, {"labeled": LABELED_CASES, "unlabeled": POOL_VOLUMES, "validation": 0},
                  seed=int(config["seed"]), geometry=geometry)
    seed = int(config["seed"])
    pool = root / "flare22_pool"
    settings = {**cfg.dataset_settings(config, "flare22_pool"), "spacing": _spacing_for(release, "flare22_pool",
                                                                                         _largest(pool_crops))}
    manifest = prepare("flare22_pool", release, pool, settings, progress=False)
    write_folds(pool / "folds.json", make_folds("flare22_pool", manifest, {"val_fraction": 0.25}, seed))

    labeled = root / "flare22"
    settings = {**cfg.dataset_settings(config, "flare22"), "offline_test": [],
                "spacing": _spacing_for(release, "flare22", _largest(finetune_crops))}
    manifest = prepare("flare22", release, labeled, settings, progress=False)
    folds = make_folds("flare22", manifest, {"folds": FOLDS}, seed)
    n = config["phantom"]["counts"]["flare22"]["labeled"]
    fold_size = n - n // int(config["datasets"]["flare22"]["folds"])
    entry = folds["folds"][0]
    entry["train"] = list(itertools.islice(itertools.cycle(entry["train"]), max(fold_size, len(entry["train"]))))
    write_folds(labeled / "folds.json", folds)
    return pool, labeled


def _per_batch_ms(batches: Callable[[], Any], lead: int, steps: int) -> float:
    """Host ms per batch of an endless source of batches (`batches()` gives the next one)."""
    for _ in range(lead):
        batches()
    t0 = time.perf_counter()
    for _ in range(steps):
        batches()
    return (time.perf_counter() - t0) / steps * 1e3


# ------------------------------------------------------------------------------ the plain steps
class Block(nn.Module):
    """A pre-norm transformer block on the fused attention kernel."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, int(dim * mlp_ratio)), nn.Linear(int(dim * mlp_ratio), dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class PlainViT(nn.Module):
    """A 3-D ViT: convolutional patch embedding, learned positions, `depth` blocks, a final norm."""

    def __init__(self, enc: Mapping[str, Any], crop: Sequence[int]) -> None:
        super().__init__()
        patch = [int(p) for p in enc["patch"]]
        dim = int(enc["embed_dim"])
        self.patch = patch
        self.num_patches = math.prod(c // p for c, p in zip(crop, patch))
        self.embed = nn.Conv3d(1, dim, kernel_size=patch, stride=patch)
        self.pos = nn.Parameter(torch.zeros(1, self.num_patches, dim))
        self.blocks = nn.ModuleList(Block(dim, int(enc["heads"]), float(enc["mlp_ratio"]))
                                    for _ in range(int(enc["depth"])))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2) + self.pos
        if keep is not None:
            t = torch.gather(t, 1, keep.unsqueeze(-1).expand(-1, -1, t.shape[-1]))
        for block in self.blocks:
            t = block(t)
        return self.norm(t)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        (px, py, pz), (gx, gy, gz) = self.patch, (s // p for s, p in zip(x.shape[2:], self.patch))
        x = x.reshape(b, gx, px, gy, py, gz, pz).permute(0, 1, 3, 5, 2, 4, 6)
        return x.reshape(b, gx * gy * gz, px * py * pz)


class PlainDecoder(nn.Module):
    """MAE's light decoder: mask tokens in, positions, `depth` blocks, voxels and features out."""

    def __init__(self, dim: int, dec: Mapping[str, Any], num_patches: int, patch_voxels: int) -> None:
        super().__init__()
        width = int(dec["dim"])
        self.embed = nn.Linear(dim, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = nn.Parameter(torch.zeros(1, num_patches, width))
        self.blocks = nn.ModuleList(Block(width, int(dec["heads"]), 4.0) for _ in range(int(dec["depth"])))
        self.norm = nn.LayerNorm(width)
        self.pred, self.feat = nn.Linear(width, patch_voxels), nn.Linear(width, dim)

    def forward(self, visible: torch.Tensor, ids_restore: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.embed(visible)
        b, n_vis, d = x.shape
        x = torch.cat([x, self.mask_token.expand(b, ids_restore.shape[1] - n_vis, d)], dim=1)
        x = torch.gather(x, 1, ids_restore.unsqueeze(-1).expand(-1, -1, d)) + self.pos
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return self.pred(x), self.feat(x)


def _encoder_module(enc: Mapping[str, Any], crop: Sequence[int]) -> tuple[nn.Module, Callable]:
    """(module, forward) of the plain encoder: the ViT above, the harness's Swin / nnFormer encoder
    module on fused attention, or the CNN network the CNN methods pretrain."""
    from alice.models.configs import CNN_ENCODERS

    if enc["name"] == "vit":
        vit = PlainViT(enc, crop)
        return vit, vit
    if enc["name"] in CNN_ENCODERS:
        from alice.models.cnn import build_cnn

        body = build_cnn(enc)
        return body, body
    from alice.fastpath import set_attention
    from alice.models.masked import build_hierarchical_encoder

    module = build_hierarchical_encoder(enc)
    set_attention(module, "sdpa")
    return module, lambda x: module.stages(module.embed(x))[-1]


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (2 - 2 * F.cosine_similarity(a.float(), b.float(), dim=-1)).mean()


def plain_pretrain_step(method: str, settings: Mapping[str, Any], dev: torch.device, amp: torch.dtype | None,
                        compiled: bool) -> tuple[Callable[[], None], str]:
    """(one plain step, what it is) for `method` on the settings' encoder, crop and batch."""
    import copy

    enc, crop, batch = settings["encoder"], list(settings["crop"]), int(settings["optim"]["batch_size"])
    x = torch.rand(2 * batch, 1, *crop, device=dev)  # two views of `batch` samples
    mc = settings["method_config"]
    alice = method == "alice"
    with torch.device(dev):
        online, forward = _encoder_module(enc, crop)
        modules = [online]
        if alice and enc["name"] == "vit":
            dec = {"dim": 384, "depth": 4, "heads": 12, **(mc.get("decoder") or {})}  # AliceModel's defaults
            decoder = PlainDecoder(int(enc["embed_dim"]), dec, online.num_patches, math.prod(online.patch))
            modules.append(decoder)
        target = copy.deepcopy(online).requires_grad_(False) if alice else None
    params = [p for m in modules for p in m.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05, fused=dev.type == "cuda")
    adamw = "fused AdamW" if dev.type == "cuda" else "AdamW"
    if compiled:
        forward = torch.compile(forward)
        if alice and enc["name"] == "vit":
            decoder = torch.compile(decoder)
    ema_target = list(target.parameters()) if alice else []
    ema_online = list(online.parameters()) if alice else []
    tgt_forward = None
    if alice:
        tgt_forward = target if enc["name"] == "vit" else (lambda v: target.stages(target.embed(v))[-1])

    if alice and enc["name"] == "vit":
        n = online.num_patches
        n_keep = max(1, int(n * (1 - float(mc.get("mask_ratio", 0.75)))))
        what = (f"ViT {enc['embed_dim']}-d x {enc['depth']} on {n_keep}/{n} visible tokens of 2 masked views, "
                f"decoder on all tokens, EMA target on 2 intact views, {adamw}, EMA")

        def loss_fn() -> torch.Tensor:
            ids_shuffle = torch.argsort(torch.rand(x.shape[0], n, device=dev), dim=1)
            ids_restore = torch.argsort(ids_shuffle, dim=1)
            mask = torch.ones(x.shape[0], n, device=dev)
            mask[:, :n_keep] = 0
            mask = torch.gather(mask, 1, ids_restore)
            pred, h = decoder(forward(x, ids_shuffle[:, :n_keep]), ids_restore)
            patches = online.patchify(x)
            patches = (patches - patches.mean(-1, keepdim=True)) / (patches.var(-1, keepdim=True) + 1e-6).sqrt()
            l_r = (((pred.float() - patches) ** 2).mean(-1) * mask).sum() / mask.sum()
            with torch.no_grad():
                y = tgt_forward(x)
            return l_r + _cosine(h.mean(1), y.mean(1).roll(batch, 0))  # Q's student against K's target
    elif alice:
        what = f"{enc['name']} encoder on 2 views (SimMIM: every voxel), EMA target on 2 views, {adamw}, EMA"

        def loss_fn() -> torch.Tensor:
            v = forward(x)
            with torch.no_grad():
                y = tgt_forward(x)
            return _cosine(v.flatten(2).mean(-1), y.flatten(2).mean(-1).roll(batch, 0))
    else:
        what = f"{enc['name']} encoder forward + backward on 2 views, {adamw} (the method's own heads not counted)"

        def loss_fn() -> torch.Tensor:
            return forward(x).float().square().mean()

    def step() -> None:
        with autocast(dev, amp):
            loss = loss_fn()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ema_target:
            with torch.no_grad():
                torch._foreach_lerp_(ema_target, ema_online, 1.0 - float(mc.get("momentum", 0.996)))

    return step, what


def plain_finetune_step(backbone: str, section: Mapping[str, Any], enc: Mapping[str, Any], dev: torch.device,
                        amp: torch.dtype | None, compiled: bool) -> Callable[[], None]:
    """One plain step of the backbone's network on random crops: DiceCE, AdamW (fused on CUDA)."""
    from monai.losses import DiceCELoss

    from alice.downstream.networks import build_segmentation_network
    from alice.downstream.segmentation import deep_supervision_weights, num_classes_of
    from alice.fastpath import set_attention

    classes = num_classes_of("flare22")
    crop, batch = list(section["crop"]), int(section["optim"]["batch_size"])
    net = build_segmentation_network(backbone, classes, section, enc).to(dev)
    set_attention(net, "sdpa")
    net.train()
    forward = torch.compile(net) if compiled else net
    x = torch.rand(batch, 1, *crop, device=dev)
    label = torch.randint(0, classes, (batch, 1, *crop), device=dev).float()
    with torch.no_grad(), autocast(dev, amp):
        shapes = [tuple(o.shape[2:]) for o in (lambda out: out if isinstance(out, (list, tuple)) else [out])(net(x))]
    labels = [label if s == tuple(crop) else F.interpolate(label, size=s, mode="nearest") for s in shapes]
    weights = deep_supervision_weights(len(shapes))
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=dev.type == "cuda")

    def step() -> None:
        with autocast(dev, amp):
            out = forward(x)
        outs = out if isinstance(out, (list, tuple)) else [out]
        loss = sum(w * loss_fn(o.float(), t) for w, o, t in zip(weights, outs, labels))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


# ---------------------------------------------------------------------------- the harness steps
class Window:
    """The wall time from the end of step `first` to the end of step `last` (1-based) of one run, the
    device synchronised at both ends; `mark(step)` is called after every step. On CUDA it also
    counts the host syncs in the window: torch's sync debug mode warns at every call that makes the
    host wait for the device (a loss read, a non-blocking copy back, ...)."""

    def __init__(self, dev: torch.device, first: int, last: int) -> None:
        self.dev, self.first, self.last = dev, first, last
        self.t0 = self.t1 = None
        self.syncs: int | None = None
        self._catch = self._records = None

    def mark(self, step: int) -> None:
        if step == self.first:
            sync(self.dev)
            if self.dev.type == "cuda":
                self._catch = warnings.catch_warnings(record=True)
                self._records = self._catch.__enter__()
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
            self.t0 = time.perf_counter()
        elif step == self.last:
            if self._catch is not None:
                torch.cuda.set_sync_debug_mode("default")
            sync(self.dev)
            self.t1 = time.perf_counter()
            if self._catch is not None:
                self.syncs = sum("synchroniz" in str(w.message) for w in self._records)
            self.close()

    def close(self) -> None:
        """Stop counting (a run that stops inside the window leaves it open)."""
        if self._catch is not None:
            torch.cuda.set_sync_debug_mode("default")
            self._catch.__exit__(None, None, None)
            self._catch = None

    @property
    def ms(self) -> float:
        if self.t0 is None or self.t1 is None:
            raise RuntimeError(f"the run ended before step {self.last}")
        return (self.t1 - self.t0) / (self.last - self.first) * 1e3

    @property
    def syncs_per_step(self) -> float | None:
        return None if self.syncs is None else round(self.syncs / (self.last - self.first), 2)


def harness_pretrain(method: str, encoder: str, settings: dict, pool: Path, out: Path, dev: torch.device,
                     fast, lead: int, steps: int) -> dict[str, Any]:
    """{"ms", "peak_mem_gb", "host_syncs_per_step"} of `pretrain()` steps lead + 1 .. lead + steps
    (module docstring)."""
    from alice.io import read_json
    from alice.ssl.catalog import needs_matcher, require
    from alice.ssl.registry import build_method
    from alice.ssl.run import _loader, _pool_train_cases
    from alice.ssl.trainer import pretrain, seed_everything, step_seed

    info = require(method)
    train_ids = _pool_train_cases(pool)
    method_config = dict(settings["method_config"])
    manifest = read_json(pool / "manifest.json")
    reset_memory(dev)
    seed_everything(step_seed(settings["seed"], -1))
    model = build_method(method, method_config, settings["encoder"], settings["crop"])
    if hasattr(model, "attach_pool"):
        model.attach_pool(pool, train_ids)
    factory, identity = _loader(info.views, pool, train_ids, settings, method_config, None,
                                matched=info.views != "matched_pair" and needs_matcher(method, method_config))
    window = Window(dev, lead, lead + steps)
    hook = model.after_step  # called by the trainer right after every optimizer step (0-based step)

    def after_step(step: int, total: int) -> None:
        hook(step, total)
        window.mark(step + 1)

    model.after_step = after_step
    try:
        pretrain(model, factory, out, optim={**settings["optim"], "iterations": lead + steps, "warmup_iterations": 0},
                 encoder_config=settings["encoder"], method_name=method, method_config=method_config,
                 preprocessing={"crop": settings["crop"], "settings_hash": manifest.get("settings_hash")},
                 checkpoint_every=10**9, grad_clip=settings["grad_clip"], seed=settings["seed"], device=dev.type,
                 amp=settings["amp"], progress=False, identity=identity, fast_path=fast)
    finally:
        window.close()
    result = {"ms": window.ms, "peak_mem_gb": peak_gb(dev), "host_syncs_per_step": window.syncs_per_step}
    del model
    shutil.rmtree(out, ignore_errors=True)
    return result


def pretrain_data_ms(method: str, settings: dict, pool: Path, lead: int, steps: int) -> float:
    """Host ms per batch of the run's loader factory alone (alice.ssl.run._loader)."""
    from alice.ssl.catalog import needs_matcher, require
    from alice.ssl.run import _loader, _pool_train_cases

    info = require(method)
    mc = settings["method_config"]
    factory, _ = _loader(info.views, pool, _pool_train_cases(pool), settings, mc, None,
                         matched=info.views != "matched_pair" and needs_matcher(method, mc))
    batches = iter(factory(settings["seed"], 0))
    return _per_batch_ms(lambda: next(batches), lead, steps)


def harness_finetune(backbone: str, section: dict, enc: dict, data: Path, out: Path, dev: torch.device, fast,
                     seed: int, threads: int, lead: int, steps: int, spe: int) -> dict[str, Any]:
    """{"ms", "peak_mem_gb", "host_syncs_per_step"} of `finetune()` steps lead + 1 .. lead + steps
    (its epochs run to their end)."""
    from alice.downstream.segmentation import finetune

    reset_memory(dev)
    window = Window(dev, lead, lead + steps)
    epochs = math.ceil((lead + steps) / spe)
    settings = {**section, "val_every": 0, "optim": {**section["optim"], "epochs": epochs, "warmup_epochs": 0}}
    try:
        finetune(dataset="flare22", backbone=backbone, method="rand_init", init="scratch", fold=0, data_dir=data,
                 out_dir=out, settings=settings, encoder_config=enc, seed=seed, device=dev.type, threads=threads,
                 progress=False, step_callback=window.mark, fast_path=fast)
    finally:
        window.close()
    shutil.rmtree(out, ignore_errors=True)
    return {"ms": window.ms, "peak_mem_gb": peak_gb(dev), "host_syncs_per_step": window.syncs_per_step}


def finetune_batches(section: dict, data: Path, seed: int):
    """Fold 0's CropBatches as `finetune()` builds them."""
    from alice.downstream.data import CropBatches, fold_entry, read_folds, train_transform
    from alice.downstream.segmentation import num_classes_of

    entry = fold_entry(read_folds(data), 0, data / "folds.json")
    transform = train_transform(data, section, section["crop"], num_classes_of("flare22"))
    transform.set_random_state(seed=seed)
    return CropBatches(list(entry["train"]), transform, int(section["optim"]["batch_size"]),
                       int(section.get("samples_per_volume", 1)), torch.Generator().manual_seed(seed),
                       num_workers=int(section.get("num_workers", 0)))


# ------------------------------------------------------------------------------------------ rows
def _sig(x: float) -> float:
    """`x` to 4 significant digits."""
    return float(f"{x:.4g}")


def _ratio_row(row: dict, harness_ms: float, plain_ms: float, batch: int) -> dict:
    row.update(harness_ms=_sig(harness_ms), plain_ms=_sig(plain_ms), ratio=_sig(plain_ms / harness_ms),
               harness_samples_per_s=_sig(batch / harness_ms * 1e3), plain_samples_per_s=_sig(batch / plain_ms * 1e3))
    return row


def pretrain_rows(args, config: dict, pool: Path, work: Path, dev: torch.device, variants, lead: int) -> list[dict]:
    from alice.ssl.catalog import require
    from alice.ssl.trainer import _amp_dtype

    rows = []
    for method, encoder in pretrain_runs(args):
        info = require(method)
        settings = pretrain_run_settings(config, method, encoder, args.tiny)
        amp = _amp_dtype(settings["amp"], dev)
        batch = int(settings["optim"]["batch_size"])
        base = {"kind": "pretrain", "method": method, "encoder": encoder, "views": info.views,
                "matcher": settings.get("pairs", {}).get("matcher"), "device": device_name(dev),
                "batch": batch, "crop": list(settings["crop"]), "amp": "bf16" if amp == torch.bfloat16 else
                ("fp16" if amp == torch.float16 else None), "steps": args.steps, "warmup": lead,
                "tiny": args.tiny, "config": args.config}
        data_ms = pretrain_data_ms(method, settings, pool, lead, args.steps)
        plain: dict[bool, tuple[float, float | None, str]] = {}
        for name, fast in variants:
            compiled = fast.compile
            if compiled not in plain:
                reset_memory(dev)
                step, what = plain_pretrain_step(method, settings, dev, amp, compiled)
                plain[compiled] = (timed_steps(dev, step, lead, args.steps), peak_gb(dev), what)
                del step
            harness = harness_pretrain(method, encoder, settings, pool, work / f"{method}-{encoder}-{name}",
                                       dev, fast, lead, args.steps)
            plain_ms, plain_mem, what = plain[compiled]
            row = _ratio_row({**base, "fast_path": {"variant": name, **fast.as_dict()}}, harness["ms"],
                             plain_ms, batch)
            row.update(data_ms=_sig(data_ms), peak_mem_gb=harness["peak_mem_gb"], plain_peak_mem_gb=plain_mem,
                       host_syncs_per_step=harness["host_syncs_per_step"], plain=what)
            emit(row, args.out)
            rows.append(row)
    return rows


def finetune_rows(args, config: dict, data: Path, work: Path, dev: torch.device, variants, lead: int) -> list[dict]:
    from alice.training import amp_dtype

    rows = []
    for backbone in args.finetune:
        s = cfg.finetune_settings(config, backbone)
        section, enc = s["finetune"], s["encoder"]
        amp = amp_dtype(section.get("amp", "auto"), dev)
        batch = int(section["optim"]["batch_size"])
        batches = finetune_batches(section, data, int(config["seed"]))
        spe = batches.steps_per_epoch
        stream = itertools.chain.from_iterable(batches.epoch() for _ in itertools.count())
        data_ms = _per_batch_ms(lambda: next(stream), lead, args.steps)
        base = {"kind": "finetune", "backbone": backbone, "encoder": enc["name"], "method": "rand_init",
                "dataset": "flare22", "device": device_name(dev), "batch": batch, "crop": list(section["crop"]),
                "amp": "bf16" if amp == torch.bfloat16 else None, "steps": args.steps, "warmup": lead,
                "steps_per_epoch": spe, "tiny": args.tiny, "config": args.config}
        plain: dict[bool, tuple[float, float | None]] = {}
        for name, fast in variants:
            if fast.compile not in plain:
                reset_memory(dev)
                step = plain_finetune_step(backbone, section, enc, dev, amp, fast.compile)
                plain[fast.compile] = (timed_steps(dev, step, lead, args.steps), peak_gb(dev))
                del step
            harness = harness_finetune(backbone, section, enc, data, work / f"{backbone}-{name}", dev, fast,
                                       int(config["seed"]), args.threads, lead, args.steps, spe)
            plain_ms, plain_mem = plain[fast.compile]
            row = _ratio_row({**base, "fast_path": {"variant": name, **fast.as_dict()}}, harness["ms"], plain_ms,
                             batch)
            row.update(data_ms=_sig(data_ms), peak_mem_gb=harness["peak_mem_gb"], plain_peak_mem_gb=plain_mem,
                       host_syncs_per_step=harness["host_syncs_per_step"],
                       plain="the network's forward + backward on random crops, DiceCE, "
                             + ("fused AdamW" if dev.type == "cuda" else "AdamW"))
            emit(row, args.out)
            rows.append(row)
    return rows


def pretrain_runs(args) -> list[tuple[str, str]]:
    """(method, encoder) of every pretraining row: each `--method` (`all`: every registered one) on
    every encoder it declares, less those `--encoder` leaves out."""
    from alice.ssl.catalog import methods, require

    names = sorted(methods()) if "all" in args.method else args.method
    return [(m, e) for m in names for e in require(m, "--method").encoders if not args.encoder or e in args.encoder]


def emit(row: dict, out: str | None) -> None:
    line = json.dumps(row)
    print(line, flush=True)
    if out:
        with open(out, "a", encoding="utf-8") as f:
            f.write(line + "\n")


# ------------------------------------------------------------------------------------------ main
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/paper.yaml")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    parser.add_argument("--method", action="append", default=None,
                        help="a registered SSL method (repeatable; `all`: every one); default alice")
    parser.add_argument("--encoder", action="append", default=None,
                        help="only these encoders of the methods (repeatable); default every one a method declares")
    parser.add_argument("--finetune", nargs="*", default=list(FINETUNE_DEFAULT),
                        help=f"segmentation networks to time (default {' '.join(FINETUNE_DEFAULT)}; "
                             "none: no fine-tuning rows)")
    parser.add_argument("--steps", type=int, default=50, help="timed steps")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (at least 1)")
    parser.add_argument("--fast-path", default="both", choices=["on", "off", "both"])
    parser.add_argument("--compile", action="store_true",
                        help="add a row with compile on (and the plain step compiled)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: the config's pretrain.threads)")
    parser.add_argument("--tiny", action="store_true", help="tiny encoders, crops and batches: seconds on a CPU")
    parser.add_argument("--out", default=None, help="append the JSON lines to this file")
    args = parser.parse_args(argv)
    args.method = args.method or ["alice"]
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> list[dict]:
    """Time every row; print each as a JSON line (and append it to --out); return the rows."""
    from alice.downstream.networks import get_backbone

    args = parse_args(argv)
    config = cfg.load_config(REPO / args.config if not Path(args.config).is_absolute() else args.config)
    if args.tiny:
        config = shrink(config)
    args.threads = args.threads or int(config["pretrain"].get("threads", 1))
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    for backbone in args.finetune:
        spec = get_backbone(backbone)
        if spec.task != "segmentation" or not spec.build_by_harness:
            raise SystemExit(f"--finetune {backbone}: not a segmentation network the harness trains")
    pool_crops = [config["pretrain"]["crop"][e] for _, e in pretrain_runs(args)]
    finetune_crops = [config["finetune"][b]["crop"] for b in args.finetune]
    variants = fast_path_variants(config, args.fast_path, args.compile, dev)
    lead = max(args.warmup, 1)
    with tempfile.TemporaryDirectory(prefix="gpu_pretrain-") as tmp:
        work = Path(tmp)
        pool, labeled = synthesize(work / "data", config, pool_crops, finetune_crops, args.tiny)
        rows = pretrain_rows(args, config, pool, work / "runs", dev, variants, lead)
        rows += finetune_rows(args, config, labeled, work / "runs", dev, variants, lead)
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
