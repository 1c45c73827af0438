"""MosMed COVID-19 classification of one (method, backbone, split, label fraction): paper
supplementary B.3, Tables 4 and 9.

    summary = finetune_classifier(backbone="vit", method="alice", init=".../checkpoint.pt", fold=3,
                                  label_fraction=0.2, data_dir="results/data/mosmed",
                                  out_dir=".../fold3/labels20", settings=cfg["classification"],
                                  encoder_config=vit_encoder_config(cfg), seed=0)
    metrics = evaluate_classifier(model_dir=".../fold3/labels20", data_dir="results/data/mosmed",
                                  out_path=".../fold3/labels20/metrics.json", split="test")

- Task (B.1): 2 classes, 0 = CT-0 (no COVID-19 findings), 1 = CT-1 … CT-4 (`binary_label`).
- Data: split `fold` of `data_dir/folds.json` (a stratified 70/10/20 train/val/test repeat,
  `alice.data.folds`); training uses the nested, stratified `label_fraction` subset of its train
  part (Table 9: 20 / 50 / 100 %). Whole preprocessed volumes (B.2: rotated, clipped −1000..400,
  scaled to [0, 1], resized to 128×128×64) are the input; no cropping.
- Augmentation (B.2, "random rotation, scaling, flipping, adding white Gaussian noise, Gaussian
  blurring, adjusting brightness and contrast, simulation of low resolution"): MONAI transforms
  named in `settings["augmentation"]`, with the probabilities of nnU-Net's recipe that this list
  follows (see `AUGMENTATIONS`).
- Network (B.3, "we extract the pretrained online encoder and appended a FC layer"):
  `build_classification_network` (vit: ViT encoder + token mean + linear; resnet3d: MONAI 3-D
  ResNet of `pretrain.encoders.resnet3d` + linear, the encoder the CNN methods pretrain; `head_norm: batchnorm` puts an affine-free BatchNorm1d before the linear layer,
  `alice.downstream.classifiers`). `init` is "scratch" (Rand. init.) or a pretraining checkpoint loaded strictly
  into the encoder (`load_encoder_checkpoint`, position embeddings interpolated to the MosMed
  token grid).
- Optimisation (B.3): cross-entropy, AdamW, linear warm-up then cosine over `optim.iterations`
  (`warmup_iterations`, stepped every iteration), batches of `optim.batch_size` volumes drawn
  from consecutive random permutations of the training cases; bf16 autocast on CUDA only.
- Model choice: the paper holds out 10 % for validation, so with `selection: best_val` the split's
  val part is scored every `val_every` iterations (and after the last) and the model of the best
  val AUC (ties: lower val cross-entropy, then the earlier) is tested; `last` tests the final one.
- Score: AUC (`alice.metrics.auc`, scikit-learn's `roc_auc_score`) of the class-1 softmax
  probability on the split's test part.
- Determinism: torch, numpy, random and MONAI seeded from (seed, fold, label fraction): the same
  for every backbone and method, so Rand. init. and Alice see the same batches; on CPU with the
  same thread count two runs write the same files.

Outputs in `out_dir`: `log.csv` (iteration, loss, lr, val_auc, val_loss), `model.pt` (the chosen
model: `{"state_dict", "backbone", "num_classes", "settings", "encoder_config", "input_size",
"dataset", "method", "init", "fold", "label_fraction", "seed", "iteration", "code_version"}`, loads
with weights_only=True), `train_summary.json`; `evaluate_classifier` writes `metrics.json`
(`mean.auc`, per-case label and score, the model file's `model_sha256`). Stale files (the
metrics of the model a run replaces among them) are removed at the start; all are atomic.
While it runs, `resume.pt` holds the running state (network, optimizer, scheduler, log rows, the
best model so far, the augmentation's and the global RNGs), written every `checkpoint_every`
iterations / `checkpoint_minutes` and on SIGTERM / SIGUSR1 / SIGINT (then
`alice.runstate.Preempted`, exit status 75); a rerun of the same run resumes from it and ends with
the files of an uninterrupted one, any other is refused (`alice.runstate.check_identity`).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

from alice.data.folds import fraction_key
from alice.downstream import MODEL_FILE
from alice.errors import ConfigError, InputError
from alice.io import (atomic_path, file_sha256, load_torch_dict, read_json, remove_set, settings_hash,
                      write_json)
from alice.runstate import (Checkpoints, Preempted, StopFlag, init_identity, load_state, rng_state,
                            run_identity, save_state, set_rng_state, set_transform_state, transform_state)
from alice.fastpath import maybe_compile, optimizer_options, resolve_fast_path, set_attention
from alice.training import OptimizerStep, PendingSteps, amp_dtype, progress_bar, write_log
from alice.version import code_version

log = logging.getLogger("alice")

DATASET = "mosmed"
NUM_CLASSES = 2
SUMMARY_FILE = "train_summary.json"
LOG_FILE = "log.csv"
STATE_FILE = "resume.pt"
METRICS_FILE = "metrics.json"
LOG_COLUMNS = ("iteration", "loss", "lr", "val_auc", "val_loss")
MODEL_KEYS = ("state_dict", "backbone", "num_classes", "settings", "encoder_config", "input_size", "fold",
              "label_fraction")
SELECTIONS = ("best_val", "last")
EVAL_BATCH = 4


# ------------------------------------------------------------------------------------------ labels
def binary_label(meta: Mapping[str, Any], path: str | Path) -> int:
    """The paper's binary label of a cached MosMed case: 0 = CT-0, 1 = CT-1 … CT-4 (docs/facts.md "MosMed").

    Derived from the case's category and checked against the `class_label` that `prepare` recorded.
    """
    category, recorded = meta.get("category"), meta.get("class_label")
    if isinstance(category, bool) or not isinstance(category, int) or not 0 <= category <= 4:
        raise InputError(path, f"not a MosMed case: category {category!r} is not one of CT-0 … CT-4")
    label = 0 if category == 0 else 1
    if recorded is not None and recorded != label:
        raise InputError(path, f"class_label {recorded!r} contradicts category CT-{category} (expected {label})")
    return label


# ------------------------------------------------------------------------------------------ splits
def _repeat(data_dir: str | Path, fold: int) -> tuple[Path, Mapping[str, Any]]:
    """(folds.json path, the entry of split `fold`); InputError if the file is not MosMed splits."""
    path = Path(data_dir) / "folds.json"
    if not path.is_file():
        raise InputError(path, "folds file not found (run `alice folds --dataset mosmed` first)")
    try:
        folds = read_json(path)
    except ValueError as exc:
        raise InputError(path, f"not valid JSON ({exc})") from None
    if not isinstance(folds, dict) or not isinstance(folds.get("repeats"), list):
        raise InputError(path, "not MosMed splits: expected {'repeats': [{'repeat', 'train', 'val', 'test', "
                               "'label_fractions'}, ...]}")
    entry = next((r for r in folds["repeats"] if r.get("repeat") == fold), None)
    if entry is None:
        raise InputError(path, f"no split {fold} (splits: {[r.get('repeat') for r in folds['repeats']]})")
    return path, entry


def split_fractions(data_dir: str | Path, fold: int) -> list[float]:
    """The label fractions that split `fold` of `data_dir/folds.json` lists (ascending)."""
    path, entry = _repeat(data_dir, fold)
    if not entry.get("label_fractions"):
        raise InputError(path, f"split {fold} lists no label fractions")
    return sorted(float(k) for k in entry["label_fractions"])


def read_split(data_dir: str | Path, fold: int, label_fraction: float) -> dict[str, list[str]]:
    """{"train": the label-fraction subset, "val", "test"} of split `fold` of `data_dir/folds.json`."""
    path, entry = _repeat(data_dir, fold)
    fractions = entry.get("label_fractions") or {}
    key = fraction_key(label_fraction)
    if key not in fractions:
        raise InputError(path, f"split {fold} has no label fraction {label_fraction} (has: {', '.join(fractions)})")
    parts = {"train": list(fractions[key]), "val": list(entry.get("val") or []), "test": list(entry.get("test") or [])}
    for name in ("train", "test"):
        if not parts[name]:
            raise InputError(path, f"split {fold} has an empty {name} part")
    return parts


def _require_both_classes(labels: Sequence[int], what: str, path: Path) -> None:
    present = sorted(set(int(v) for v in labels))
    if present != [0, 1]:
        raise InputError(path, f"{what} holds only class {present or 'none'}: the AUC needs both classes "
                               "(CT-0 and CT-1..4)")


# --------------------------------------------------------------------------------------- volumes
class Volumes:
    """The cached volumes of some cases (memory-mapped) with their binary labels; all one shape."""

    def __init__(self, data_dir: str | Path, case_ids: Sequence[str]):
        from alice.data.preprocess import load_case

        self.data_dir = Path(data_dir)
        self.images: dict[str, np.ndarray] = {}
        self.labels: dict[str, int] = {}
        shape = None
        for case_id in dict.fromkeys(case_ids):
            image, _, meta = load_case(self.data_dir, case_id)
            meta_path = self.data_dir / f"{case_id}.json"
            self.labels[case_id] = binary_label(meta, meta_path)
            if image.ndim != 3 or (shape is not None and tuple(image.shape) != shape):
                raise InputError(meta_path, f"cached volume shape {tuple(image.shape)} differs from the other "
                                            f"cases' {shape}: re-run prepare (datasets.mosmed.size)")
            shape = tuple(image.shape)
            self.images[case_id] = image
        self.shape = shape

    def image(self, case_id: str) -> np.ndarray:
        return np.array(self.images[case_id], dtype=np.float32)[None]  # (1, x, y, z)

    def batch(self, case_ids: Sequence[str], transform=None) -> tuple[torch.Tensor, torch.Tensor]:
        images = [self.image(c) for c in case_ids]
        if transform is not None:
            images = [transform(i) for i in images]
        x = torch.stack([torch.as_tensor(np.asarray(i), dtype=torch.float32) for i in images])
        return x, torch.tensor([self.labels[c] for c in case_ids], dtype=torch.long)


# ----------------------------------------------------------------------------------- augmentation
def _rotation():
    from monai.transforms import RandRotate

    # in the axial (x, y) plane only: the slices are thick, so out-of-plane rotation blurs them
    return [RandRotate(range_x=math.pi / 12, prob=0.2, keep_size=True, mode="bilinear", padding_mode="zeros")]


def _scaling():
    from monai.transforms import RandZoom

    return [RandZoom(prob=0.2, min_zoom=0.7, max_zoom=1.4, mode="trilinear", padding_mode="constant",
                     keep_size=True)]


def _flip():
    from monai.transforms import RandFlip

    return [RandFlip(spatial_axis=[axis], prob=0.5) for axis in range(3)]


def _gaussian_noise():
    from monai.transforms import RandGaussianNoise

    return [RandGaussianNoise(prob=0.1, mean=0.0, std=0.1)]  # std drawn in [0, 0.1] of the [0, 1] range


def _gaussian_blur():
    from monai.transforms import RandGaussianSmooth

    return [RandGaussianSmooth(sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0), prob=0.2)]


def _brightness_contrast():
    from monai.transforms import RandScaleIntensity, RandScaleIntensityFixedMean

    return [RandScaleIntensity(factors=0.25, prob=0.15),  # brightness: x * U(0.75, 1.25)
            # contrast: (x - mean) * U(0.75, 1.25) + mean, clipped to the volume's own range
            RandScaleIntensityFixedMean(factors=0.25, preserve_range=True, prob=0.15)]


def _low_resolution():
    from monai.transforms import RandSimulateLowResolution

    return [RandSimulateLowResolution(prob=0.25, zoom_range=(0.5, 1.0))]


# name -> builder() -> MONAI array transforms on one (1, x, y, z) volume. Probabilities and ranges
# are nnU-Net's (batchgenerators) defaults, the recipe whose list B.2 repeats: rotation ±15° p=0.2,
# zoom 0.7-1.4 p=0.2, mirroring per axis p=0.5, noise p=0.1, blur sigma 0.5-1 p=0.2, brightness and
# contrast 0.75-1.25 p=0.15 each, low resolution (down 0.5-1, nearest; up trilinear) p=0.25.
AUGMENTATIONS = {
    "rotation": _rotation,
    "scaling": _scaling,
    "flip": _flip,
    "gaussian_noise": _gaussian_noise,
    "gaussian_blur": _gaussian_blur,
    "brightness_contrast": _brightness_contrast,
    "low_resolution": _low_resolution,
}


def train_transform(names: Sequence[str]):
    """The MONAI Compose of the named augmentations (applied in the config's order)."""
    from monai.transforms import Compose, EnsureType

    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise ConfigError("classification.augmentation",
                          f"unknown augmentation(s) {unknown} (known: {', '.join(AUGMENTATIONS)})")
    transforms: list = []
    for name in names:
        transforms.extend(AUGMENTATIONS[name]())
    transforms.append(EnsureType(data_type="tensor", dtype=torch.float32, track_meta=False))
    return Compose(transforms)


def index_batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[list[int]]:
    """Endless batches of `batch_size` indices from consecutive random permutations of range(n)."""
    buffer: list[int] = []
    while True:
        while len(buffer) < batch_size:
            buffer.extend(torch.randperm(n, generator=generator).tolist())
        batch, buffer = buffer[:batch_size], buffer[batch_size:]
        yield batch


# ----------------------------------------------------------------------------------------- scoring
@torch.no_grad()
def predict(net: torch.nn.Module, volumes: Volumes, case_ids: Sequence[str], device: torch.device
            ) -> tuple[np.ndarray, np.ndarray, float]:
    """(labels, class-1 softmax probabilities, mean cross-entropy) of `case_ids`, network in eval mode."""
    from alice.downstream.inference import autocast

    was_training = net.training
    net.eval()
    scores, labels, losses = [], [], []
    for i in range(0, len(case_ids), EVAL_BATCH):
        x, y = volumes.batch(case_ids[i:i + EVAL_BATCH])
        with autocast(device):
            logits = net(x.to(device)).float().cpu()
        losses.append(torch.nn.functional.cross_entropy(logits, y, reduction="sum").item())
        scores.append(torch.softmax(logits, dim=1)[:, 1].numpy())
        labels.append(y.numpy())
    net.train(was_training)
    return np.concatenate(labels), np.concatenate(scores).astype(np.float64), sum(losses) / len(case_ids)


def run_seed(seed: int, fold: int, label_fraction: float) -> int:
    """One 32-bit seed per (seed, split, label fraction), shared by every backbone and method."""
    return int(np.random.SeedSequence([int(seed), int(fold), int(round(label_fraction * 1e6))]).generate_state(1)[0])


# ------------------------------------------------------------------------------------------- train
def _parse(settings: Mapping[str, Any]) -> dict[str, Any]:
    from alice.downstream.schedules import positive_int

    optim = settings.get("optim")
    if not isinstance(optim, Mapping):
        raise ConfigError("classification.optim", "missing the optimizer section")
    val_every = settings.get("val_every")
    if isinstance(val_every, bool) or not isinstance(val_every, int) or val_every < 1:
        raise ConfigError("classification.val_every", f"must be a positive integer, got {val_every!r}")
    selection = settings.get("selection", "best_val")
    if selection not in SELECTIONS:
        raise ConfigError("classification.selection", f"must be one of {', '.join(SELECTIONS)}, got {selection!r}")
    batch_size = positive_int(optim, "batch_size")
    if "batchnorm" in (settings.get("head_norm") or {}).values() and batch_size < 2:
        raise ConfigError("classification.optim.batch_size",
                          "must be at least 2 with head_norm: batchnorm (batch statistics of one volume)")
    return {
        "optim": optim,
        "batch_size": batch_size,
        "iterations": positive_int(optim, "iterations"),
        "warmup": positive_int(optim, "warmup_iterations", 0, minimum=0),
        "schedule": optim.get("schedule", "cosine"),
        "val_every": val_every,
        "selection": selection,
        "augmentation": list(settings.get("augmentation") or []),
    }


def _better(auc: float, loss: float, best: tuple[float, float] | None) -> bool:
    """Higher val AUC wins, then lower val loss; on a full tie the earlier model stays."""
    return best is None or auc > best[0] or (auc == best[0] and loss < best[1])


def finetune_classifier(
    *,
    backbone: str,
    method: str,
    init: str,
    fold: int,
    label_fraction: float,
    data_dir: str | Path,
    out_dir: str | Path,
    settings: Mapping[str, Any],
    encoder_config: Mapping[str, Any],
    seed: int,
    device: str = "cpu",
    threads: int = 1,
    progress: bool = True,
    checkpoint_every: int | None = None,
    checkpoint_minutes: float = 10.0,
    allow_unfinished: bool = False,
    step_callback: Callable[[int], None] | None = None,
    fast_path: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train one classifier; write log.csv, model.pt and train_summary.json in `out_dir`; return the summary.

    The running state goes to `out_dir/resume.pt` every `checkpoint_every` iterations (if given),
    every `checkpoint_minutes` and on a stop signal; a rerun resumes from it (module docstring).
    `fast_path`: how a step runs on the device (alice.fastpath; not part of the run identity)."""
    from monai.utils import set_determinism

    from alice.downstream.inference import check_threads, resolve_device
    from alice.downstream.networks import build_classification_network
    from alice.downstream.schedules import build_optimizer, build_scheduler
    from alice.downstream.transfer import load_encoder_checkpoint
    from alice.metrics import auc

    t_start = time.perf_counter()
    threads = check_threads(threads)
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    remove_set(out_dir / METRICS_FILE)  # no old result may look current, nor a score of the model it replaces
    for stale in (MODEL_FILE, SUMMARY_FILE, LOG_FILE):
        (out_dir / stale).unlink(missing_ok=True)
    cfg = _parse(settings)
    init = str(init)
    torch.set_num_threads(int(threads))
    dev = resolve_device(device)
    folds_path = data_dir / "folds.json"
    parts = read_split(data_dir, int(fold), float(label_fraction))
    volumes = Volumes(data_dir, parts["train"] + parts["val"] + parts["test"])
    train_ids, val_ids = parts["train"], parts["val"]
    if cfg["selection"] == "best_val":
        if not val_ids:
            raise InputError(folds_path, f"split {fold} has no val part, needed by selection best_val")
        _require_both_classes([volumes.labels[c] for c in val_ids], f"split {fold} val part", folds_path)
    _require_both_classes([volumes.labels[c] for c in parts["test"]], f"split {fold} test part", folds_path)

    rs = run_seed(seed, fold, label_fraction)
    set_determinism(seed=rs)  # random, numpy, torch; the network's initial weights follow from it
    net = build_classification_network(backbone, NUM_CLASSES, settings, encoder_config, volumes.shape)
    n_loaded = 0 if init == "scratch" else load_encoder_checkpoint(
        net, backbone, init, encoder_config, allow_unfinished=allow_unfinished, run=method)
    net.to(dev)
    net.train()
    fast = resolve_fast_path(fast_path, dev)
    set_attention(net, fast.attention)
    forward = maybe_compile(net, fast)

    out_dir.mkdir(parents=True, exist_ok=True)
    transform = train_transform(cfg["augmentation"])
    transform.set_random_state(seed=rs)
    batches = index_batches(len(train_ids), cfg["batch_size"], torch.Generator().manual_seed(rs))
    total = cfg["iterations"]
    optimizer = build_optimizer(net.parameters(), cfg["optim"], **optimizer_options(fast))
    scheduler = build_scheduler(optimizer, cfg["schedule"], cfg["warmup"], total)
    loss_fn = torch.nn.CrossEntropyLoss()
    optimizer_step = OptimizerStep(optimizer, scheduler, device=dev, dtype=amp_dtype("auto", dev))

    identity = run_identity(kind="classification", backbone=backbone, method=method, init=init_identity(init),
                            fold=int(fold), label_fraction=float(label_fraction), settings=settings,
                            encoder_config=encoder_config, seed=int(seed),
                            data={name: parts[name] for name in ("train", "val", "test")})
    state_path = out_dir / STATE_FILE
    rows: list[dict[str, Any]] = []
    best: tuple[float, float] | None = None
    best_iteration, best_state = total, None
    train_seconds = 0.0
    start, resumed_from = 0, []
    if state_path.is_file():
        state = load_state(state_path, identity, "classification")
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        rows, start, train_seconds = list(state["rows"]), int(state["step"]), float(state["train_seconds"])
        if state["best"]:
            best, best_iteration = tuple(state["best"]), int(state["best_iteration"])
            best_state = state["best_state"]
        resumed_from = [*state["resumed_from"], start]
        for _ in range(start):  # the index stream is cheap to replay; the augmentation's is restored
            next(batches)
        set_transform_state(transform, state["transform"])
        set_rng_state(state["rng"])
        write_log(out_dir / LOG_FILE, LOG_COLUMNS, rows)
        log.info("split %d, %g labels: resuming from %s at iteration %d/%d", fold, label_fraction, state_path,
                 start, total)

    def save(it: int) -> None:
        save_state(state_path, {
            "identity": identity, "step": it, "resumed_from": resumed_from,
            "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "rows": rows, "train_seconds": train_seconds, "best": list(best) if best else [],
            "best_iteration": int(best_iteration), "best_state": best_state or {},
            "transform": transform_state(transform), "rng": rng_state()})
        write_log(out_dir / LOG_FILE, LOG_COLUMNS, rows)

    clock = Checkpoints(checkpoint_every, checkpoint_minutes)
    bar = progress_bar(total, start, f"classify {backbone} split{fold} {label_fraction:g}", "it", progress)
    pending = PendingSteps()

    def record(done) -> None:
        """The log rows of iterations whose loss the host has read."""
        for (at, lr_at), terms in done:
            rows.append({"iteration": at, "loss": terms["loss"], "lr": lr_at, "val_auc": None, "val_loss": None})
            bar.set_postfix(loss=f"{terms['loss']:.4f}", lr=f"{lr_at:.2e}", refresh=False)

    try:
        with StopFlag() as stop:
            for it in range(start + 1, total + 1):
                t_it = time.perf_counter()
                x, y = volumes.batch([train_ids[i] for i in next(batches)], transform)
                x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
                lr = optimizer_step.lr
                with optimizer_step.autocast():
                    logits = forward(x)
                loss = loss_fn(logits.float(), y)
                describe = lambda t, at=it: (  # noqa: E731
                    f"{out_dir}: loss is {t['loss']} at iteration {at}; lower classification.optim.lr?")
                record(pending.step(optimizer_step, (it, lr), loss, describe=describe,
                                    read_now=fast.sync_every == 1))
                train_seconds += time.perf_counter() - t_it
                validating = cfg["selection"] == "best_val" and (it % cfg["val_every"] == 0 or it == total)
                if validating or it == total or len(pending) >= fast.sync_every:
                    record(pending.flush())
                if validating:
                    row = rows[-1]
                    labels, scores, val_loss = predict(net, volumes, val_ids, dev)
                    row.update(val_auc=auc(labels, scores), val_loss=val_loss)
                    if _better(row["val_auc"], val_loss, best):
                        best, best_iteration = (row["val_auc"], val_loss), it
                        best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
                    write_log(out_dir / LOG_FILE, LOG_COLUMNS, rows)
                bar.update(1)
                if step_callback is not None:
                    step_callback(it)
                if it < total and (stop.name or clock.due(it)):
                    record(pending.flush())  # the state holds every row up to this iteration
                    save(it)
                    if stop.name:
                        raise Preempted(it, state_path, stop.name)
    finally:
        bar.close()
    write_log(out_dir / LOG_FILE, LOG_COLUMNS, rows)
    if best_state is not None:
        net.load_state_dict(best_state)

    model = {
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "backbone": backbone,
        "num_classes": NUM_CLASSES,
        "settings": _plain(settings),
        "encoder_config": _plain(encoder_config),
        "input_size": list(volumes.shape),
        "dataset": DATASET,
        "method": method,
        "init": init,
        "fold": int(fold),
        "label_fraction": float(label_fraction),
        "seed": int(seed),
        "iteration": int(best_iteration),
        "code_version": code_version(),
    }
    with atomic_path(out_dir / MODEL_FILE, suffix=".pt") as tmp:
        torch.save(model, tmp)
    summary = {
        "dataset": DATASET, "backbone": backbone, "method": method, "init": init, "fold": int(fold),
        "label_fraction": float(label_fraction), "seed": int(seed), "run_seed": rs, "device": str(dev),
        "threads": int(threads), "n_train": len(train_ids), "n_val": len(val_ids), "n_test": len(parts["test"]),
        "n_train_positive": int(sum(volumes.labels[c] for c in train_ids)), "input_size": list(volumes.shape),
        "iterations": total, "selection": cfg["selection"], "selected_iteration": int(best_iteration),
        "best_val_auc": best[0] if best else None, "best_val_loss": best[1] if best else None,
        "final_loss": rows[-1]["loss"], "n_loaded": n_loaded, "resumed_from": resumed_from,
        "seconds": round(time.perf_counter() - t_start, 3), "train_seconds": round(train_seconds, 3),
        "seconds_per_iteration": round(train_seconds / total, 4),
        "model": str(out_dir / MODEL_FILE), "code_version": code_version(),
    }
    write_json(out_dir / SUMMARY_FILE, summary)
    state_path.unlink(missing_ok=True)  # done: model.pt and the summary are the result
    log.info("%s split %d, %g labels: %d iterations in %.1f s, model of iteration %d (val AUC %s)", backbone, fold,
             label_fraction, total, summary["seconds"], best_iteration,
             "n/a" if best is None else f"{best[0]:.4f}")
    return summary


# ---------------------------------------------------------------------------------------- evaluate
def load_classifier(model_dir: str | Path, device: torch.device) -> tuple[torch.nn.Module, dict[str, Any]]:
    from alice.downstream.networks import build_classification_network

    path = Path(model_dir) / MODEL_FILE
    if not path.is_file():
        raise InputError(path, "model not found (run `alice finetune --dataset mosmed` first)")
    ckpt = load_torch_dict(path, MODEL_KEYS, "classification model")
    net = build_classification_network(ckpt["backbone"], int(ckpt["num_classes"]), ckpt["settings"],
                                       ckpt["encoder_config"], ckpt["input_size"])
    try:
        net.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as exc:
        raise InputError(path, f"weights do not fit its own network ({str(exc).splitlines()[0]})") from None
    return net.to(device), ckpt


def evaluate_classifier(*, model_dir: str | Path, data_dir: str | Path, out_path: str | Path, split: str = "test",
                        device: str = "cpu", threads: int = 1) -> dict[str, Any]:
    """Score a model.pt on its split's `split` part ("test" or "val"); write metrics.json.

    metrics.json: {"dataset", "task", "method", "backbone", "fold", "label_fraction", "split",
    "cases": {case: {"label", "score"}}, "mean": {"auc"}, "n_cases", "n_positive", "iteration",
    "seconds", "model", "model_sha256", "settings_hash", "code_version"}. `mean.auc` is the part's
    AUC (one number per split; under "mean" like the segmentation metrics so one table reader
    serves both). An earlier `out_path` that did not score this very model file (another
    `model_sha256`) is removed first, so a failure leaves no score of another model.
    """
    from alice.downstream.inference import check_threads, remove_stale_scores, resolve_device
    from alice.metrics import auc

    if split not in ("test", "val"):
        raise ConfigError("--split", f"must be 'test' or 'val' for mosmed, got {split!r}")
    t_start = time.perf_counter()
    torch.set_num_threads(check_threads(threads))
    dev = resolve_device(device)
    data_dir, model_dir = Path(data_dir), Path(model_dir)
    net, ckpt = load_classifier(model_dir, dev)
    model_sha256 = file_sha256(model_dir / MODEL_FILE)
    remove_stale_scores(out_path, model_sha256)
    fold, fraction = int(ckpt["fold"]), float(ckpt["label_fraction"])
    case_ids = read_split(data_dir, fold, fraction)[split]
    volumes = Volumes(data_dir, case_ids)
    if list(volumes.shape) != list(ckpt["input_size"]):
        raise InputError(data_dir / "manifest.json", f"cached volumes are {list(volumes.shape)}, the model was "
                                                     f"trained on {ckpt['input_size']}: re-run prepare or finetune")
    _require_both_classes([volumes.labels[c] for c in case_ids], f"split {fold} {split} part", data_dir / "folds.json")
    labels, scores, _ = predict(net, volumes, case_ids, dev)
    value = auc(labels, scores)
    manifest = data_dir / "manifest.json"
    metrics = {
        "dataset": DATASET,
        "task": "classification",
        "method": ckpt.get("method"),
        "backbone": ckpt["backbone"],
        "fold": fold,
        "label_fraction": fraction,
        "split": split,
        "cases": {c: {"label": int(y), "score": float(s)} for c, y, s in zip(case_ids, labels, scores)},
        "mean": {"auc": value},
        "n_cases": len(case_ids),
        "n_positive": int(labels.sum()),
        "iteration": ckpt.get("iteration"),
        "seconds": round(time.perf_counter() - t_start, 3),
        "model": str(model_dir / MODEL_FILE),
        "model_sha256": model_sha256,
        # what produced this number: the run's settings, encoder, init, seed, fraction and data cache
        "settings_hash": settings_hash({k: ckpt.get(k) for k in (
            "settings", "encoder_config", "init", "seed", "dataset", "label_fraction")} | {
            "preprocessing": read_json(manifest).get("settings_hash") if manifest.is_file() else None}),
        "code_version": code_version(),
    }
    write_json(out_path, metrics)
    log.info("%s %s: AUC %.4f over %d cases (%d positive)", model_dir, split, value, len(case_ids),
             metrics["n_positive"])
    return metrics


def _plain(obj: Any) -> Any:
    """Plain dict/list/str/number copy (what weights_only loading accepts)."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    return obj
