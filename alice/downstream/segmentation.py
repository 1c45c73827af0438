"""Segmentation fine-tuning of one (dataset, method, backbone, fold): supplementary Table 8 recipe.

    summary = finetune(dataset="flare22", backbone="unetr", method="rand_init", init="scratch",
                       fold=0, data_dir="results/data/flare22", out_dir=".../fold0",
                       settings=cfg["finetune"]["unetr"],
                       encoder_config={"name": "vit", **cfg["pretrain"]["encoders"]["vit"]}, seed=0)

- Data: the fold's training cases from `data_dir/folds.json`, `samples_per_volume` random crops
  of `crop` per volume and epoch, batches of `optim.batch_size` crops (`alice.downstream.data`);
  steps per epoch = ceil(n_train * samples_per_volume / batch_size).
- Low-label runs (`labeled=n, subset_seed=s`): the n training cases of
  `alice.data.folds.labeled_subset` instead of the fold's, no validation cases, and as many
  optimizer steps as fold `fold` takes with the same recipe: epochs = ceil(fold steps / steps per
  epoch of the subset), warm-up = the fold's warm-up steps (`subset_schedule`). The seeds come from
  (seed, n, s) (`subset_run_seed`), not from the method, so the runs of two methods on one subset
  start from the same decoder weights and draw the same crops.
- Network: `build_segmentation_network`; `init` is "scratch" or a pretraining checkpoint path,
  loaded strictly into the encoder (`load_encoder_checkpoint`).
- Optimisation: AdamW or SGD (nesterov), cosine or poly schedule with linear warm-up over
  `warmup_epochs` epochs, stepped every step (`alice.downstream.schedules`); loss
  `DiceCELoss(to_onehot_y=True, softmax=True)`, its Dice term per crop or, with `batch_dice`,
  over the whole batch (nnU-Net's batch Dice: an organ absent from one crop does not weigh as a
  miss of that crop); bf16 autocast per `amp` (auto: on CUDA only). A network with deep
  supervision (nnFormer) returns logits at full, 1/2, 1/4, ... resolution in training mode; the
  loss is then nnU-Net's (Isensee et al. 2021, which nnFormer trains with): DiceCE of each scale
  against the label map downsampled by nearest neighbour, weighted 1, 1/2, 1/4, ... and
  normalised to sum 1 (`deep_supervision_loss`).
- Validation every `val_every` epochs and after the last: sliding-window prediction of the fold's
  val cases on the cached grid; score = mean over cases of the mean Dice over the organs present
  in the case's label (a quick curve, not the reported metric). `val_every: 0` validates never:
  the evaluate stage scores the final model on the same held-out cases anyway.
- The model saved is the FINAL one (the paper does not say it selects a checkpoint); the best
  validation score and its epoch are recorded in the summary only.
- Determinism: torch, numpy, random and MONAI are seeded from (seed, fold) (`run_seed`), the
  random transforms by `set_random_state`, the volume order by a seeded generator; on CPU with the
  same thread count two runs write the same log.csv.

Outputs in `out_dir`: `log.csv` (epoch, step, loss, lr, val_dice; one row per step, val_dice on
the last step of a validated epoch; rewritten atomically after every epoch), `model.pt`
(`{"state_dict", "backbone", "num_classes", "settings", "encoder_config", "dataset", "method",
"init", "fold", "seed", "code_version"}`, loads with weights_only=True) and `train_summary.json`,
both written atomically at the end (stale ones are removed at the start, with the scoring set of
the model they replace: `metrics.json` and `predictions/`), and while it runs
`resume.pt`: the running state (network, optimizer, scheduler, log rows, the global RNGs and the
data draws since the epoch began), written atomically every `checkpoint_every` steps / every
`checkpoint_minutes` and on SIGTERM / SIGUSR1 / SIGINT (then `alice.runstate.Preempted`, exit
status 75). A rerun resumes from it, after checking that it was written by the same run (dataset,
fold, settings, encoder, seed, the initial checkpoint's content: `alice.runstate.run_identity`),
and ends with the weights and log.csv of an uninterrupted run (on CPU with the same thread
count). It is removed when the run is done; it is not a pipeline output, so Snakemake keeps it
when a preempted job's outputs are deleted.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from alice.version import code_version
from alice.downstream.data import CropBatches, fold_entry, read_folds, train_transform
from alice.downstream.inference import (METRICS_FILE, MODEL_FILE, PREDICTIONS_DIR, check_threads, predict_labels,
                                        resolve_device)
from alice.downstream.networks import build_segmentation_network, crop_of, memory_format
from alice.downstream.schedules import build_optimizer, build_scheduler, positive_int
from alice.downstream.transfer import load_encoder_checkpoint
from alice.errors import ConfigError
from alice.io import atomic_path, remove_set, write_json
from alice.runstate import (Checkpoints, Preempted, StopFlag, init_identity, load_state,
                            rng_state, run_identity, save_state, set_rng_state, set_transform_state,
                            transform_state)
from alice.labels import LABEL_NAMES
from alice.fastpath import maybe_compile, optimizer_options, resolve_fast_path, set_attention
from alice.training import AMP_MODES, OptimizerStep, PendingSteps, amp_dtype, progress_bar, write_log

log = logging.getLogger("alice")

LOG_COLUMNS = ("epoch", "step", "loss", "lr", "val_dice")
SUMMARY_FILE = "train_summary.json"
STATE_FILE = "resume.pt"
LOG_FILE = "log.csv"


def num_classes_of(dataset: str) -> int:
    """Background + the dataset's organs (FLARE22, BTCV: 14)."""
    if dataset not in LABEL_NAMES:
        raise ConfigError("dataset", f"no segmentation labels for '{dataset}' (known: {', '.join(LABEL_NAMES)})")
    return 1 + max(LABEL_NAMES[dataset])


def run_seed(seed: int, fold: int) -> int:
    """One 32-bit seed per (seed, fold)."""
    return int(np.random.SeedSequence([int(seed), int(fold)]).generate_state(1)[0])


def subset_run_seed(seed: int, labeled: int, subset_seed: int) -> int:
    """One 32-bit seed per low-label run (seed, labeled cases, subset seed); never a fold's."""
    return int(np.random.SeedSequence([int(seed), int(labeled), int(subset_seed), 1]).generate_state(1)[0])


def subset_schedule(fold_train: int, subset_train: int, samples_per_volume: int, batch_size: int,
                    epochs: int, warmup_epochs: int) -> dict[str, int]:
    """The epochs and warm-up steps that give a run on `subset_train` cases the optimizer steps of
    a fold of `fold_train` cases with the same recipe (epochs, warmup_epochs): {"epochs",
    "warmup_steps", "steps", "reference_steps", "steps_per_epoch"}; steps is reference_steps
    rounded up to whole epochs."""
    def spe(n: int) -> int:
        return math.ceil(n * samples_per_volume / batch_size)

    reference = epochs * spe(fold_train)
    per_epoch = spe(subset_train)
    sub_epochs = math.ceil(reference / per_epoch)
    return {"epochs": sub_epochs, "warmup_steps": warmup_epochs * spe(fold_train),
            "steps": sub_epochs * per_epoch, "reference_steps": reference,
            "steps_per_epoch": per_epoch}


def quick_dice(gt: np.ndarray, pred: np.ndarray) -> float:
    """Mean Dice over the organs present in `gt` (NaN if none): the validation curve's score."""
    from alice.metrics import dice

    organs = [v for v in np.unique(gt).tolist() if v != 0]
    if not organs:
        return math.nan
    return float(np.mean([dice(gt == v, pred == v) for v in organs]))


def deep_supervision_weights(n: int) -> list[float]:
    """Loss weights of n output scales, full resolution first: halving per scale, summing to 1."""
    raw = [0.5 ** i for i in range(n)]
    return [w / sum(raw) for w in raw]


def deep_supervision_loss(loss_fn, outputs, label: torch.Tensor) -> torch.Tensor:
    """`loss_fn` of one logits tensor, or the weighted sum over a list of scales (full first); the
    label map (B, 1, X, Y, Z) is downsampled to each scale by nearest neighbour."""
    if isinstance(outputs, torch.Tensor):
        return loss_fn(outputs.float(), label)
    total = None
    for weight, logits in zip(deep_supervision_weights(len(outputs)), outputs):
        size = tuple(logits.shape[2:])
        target = label if tuple(label.shape[2:]) == size else torch.nn.functional.interpolate(
            label.float(), size=size, mode="nearest").to(label.dtype)
        term = weight * loss_fn(logits.float(), target)
        total = term if total is None else total + term
    return total


def validate(net, data_dir, case_ids, settings, device) -> float:
    from alice.data.preprocess import load_case

    scores = []
    crop = crop_of(settings)
    for case_id in case_ids:
        image, label, _ = load_case(data_dir, case_id)
        pred = predict_labels(net, image, crop, overlap=float(settings.get("sw_overlap", 0.25)),
                              sw_batch_size=int(settings.get("sw_batch_size", 1)), device=device)
        scores.append(quick_dice(np.asarray(label), pred))
    kept = [s for s in scores if not math.isnan(s)]
    return float(np.mean(kept)) if kept else math.nan


def _parse(settings: Mapping[str, Any]) -> dict[str, Any]:
    optim = settings.get("optim")
    if not isinstance(optim, Mapping):
        raise ConfigError("optim", "missing the optimizer section")
    val_every = settings.get("val_every", 1)
    if isinstance(val_every, bool) or not isinstance(val_every, int) or val_every < 0:
        raise ConfigError("val_every", f"must be 0 (never) or a positive integer, got {val_every!r}")
    spv = settings.get("samples_per_volume", 1)
    if isinstance(spv, bool) or not isinstance(spv, int) or spv < 1:
        raise ConfigError("samples_per_volume", f"must be a positive integer, got {spv!r}")
    workers = settings.get("num_workers", 0)
    batch_dice = settings.get("batch_dice", False)
    if not isinstance(batch_dice, bool):
        raise ConfigError("batch_dice", f"must be true or false, got {batch_dice!r}")
    channels_last = settings.get("channels_last", False)
    if not isinstance(channels_last, bool):
        raise ConfigError("channels_last", f"must be true or false, got {channels_last!r}")
    amp = settings.get("amp", "auto")
    if amp not in AMP_MODES:
        raise ConfigError("amp", f"must be one of {', '.join(AMP_MODES)}, got {amp!r}")
    return {
        "optim": optim,
        "amp": amp,
        "channels_last": channels_last,
        "batch_size": positive_int(optim, "batch_size"),
        "epochs": positive_int(optim, "epochs"),
        "warmup_epochs": positive_int(optim, "warmup_epochs", 0, minimum=0),
        "schedule": optim.get("schedule", "cosine"),
        "val_every": val_every,
        "samples_per_volume": spv,
        "num_workers": int(workers),
        "batch_dice": batch_dice,
        "crop": crop_of(settings),
    }


def finetune(
    *,
    dataset: str,
    backbone: str,
    method: str,
    init: str,
    fold: int,
    data_dir: str | Path,
    out_dir: str | Path,
    settings: Mapping[str, Any],
    encoder_config: Mapping[str, Any],
    seed: int,
    device: str = "cpu",
    threads: int = 1,
    progress: bool = True,
    labeled: int | None = None,
    subset_seed: int | None = None,
    checkpoint_every: int | None = None,
    checkpoint_minutes: float = 10.0,
    allow_unfinished: bool = False,
    step_callback: Callable[[int], None] | None = None,
    fast_path: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Fine-tune one fold; write log.csv, model.pt and train_summary.json in `out_dir`; return the summary.

    With `labeled` and `subset_seed`: a low-label run on that subset, with fold `fold`'s number of
    optimizer steps (module docstring). The running state is written to `out_dir/resume.pt` every
    `checkpoint_every` steps (if given), every `checkpoint_minutes` of training and on a stop
    signal; `step_callback(step)` is called after each step (tests, hooks). `fast_path`: how a step
    runs on the device (alice.fastpath; not part of the run identity)."""
    from monai.losses import DiceCELoss
    from monai.utils import set_determinism

    t_start = time.perf_counter()
    threads = check_threads(threads)
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    # a failed run must not leave an old result looking current, nor a score of the model it replaces
    remove_set(out_dir / METRICS_FILE, [out_dir / PREDICTIONS_DIR])
    for stale in (MODEL_FILE, SUMMARY_FILE, LOG_FILE):
        (out_dir / stale).unlink(missing_ok=True)
    cfg = _parse(settings)
    num_classes = num_classes_of(dataset)
    torch.set_num_threads(threads)
    dev = resolve_device(device)
    folds_path = data_dir / "folds.json"
    folds = read_folds(data_dir)
    entry = fold_entry(folds, int(fold), folds_path)
    train_ids, val_ids = list(entry["train"]), list(entry["val"])
    subset = None
    if (labeled is None) != (subset_seed is None):
        raise ConfigError("labeled", "a low-label run needs both the number of labeled cases and the subset seed")
    if labeled is not None:
        from alice.data.folds import labeled_subset

        train_ids = labeled_subset(folds, labeled, subset_seed, folds_path)
        plan = subset_schedule(len(entry["train"]), len(train_ids), cfg["samples_per_volume"],
                               cfg["batch_size"], cfg["epochs"], cfg["warmup_epochs"])
        subset = {"labeled": int(labeled), "subset_seed": int(subset_seed), "cases": train_ids,
                  "steps_of_fold": int(fold), "reference_steps": plan["reference_steps"],
                  "steps": plan["steps"], "epochs": plan["epochs"]}
        val_ids = []
        cfg["epochs"] = plan["epochs"]
        rs = subset_run_seed(seed, labeled, subset_seed)
    else:
        rs = run_seed(seed, fold)
    set_determinism(seed=rs)  # random, numpy, torch (and cudnn flags)
    net = build_segmentation_network(backbone, num_classes, settings, encoder_config)
    init = str(init)
    n_loaded = 0 if init == "scratch" else load_encoder_checkpoint(
        net, backbone, init, encoder_config, allow_unfinished=allow_unfinished, run=method)
    net.to(dev, memory_format=memory_format(settings))
    fast = resolve_fast_path(fast_path, dev)
    set_attention(net, fast.attention)
    forward = maybe_compile(net, fast)

    name = f"{labeled} labeled, subset {subset_seed}" if subset else f"fold {fold}"
    out_dir.mkdir(parents=True, exist_ok=True)
    transform = train_transform(data_dir, settings, cfg["crop"], num_classes)
    transform.set_random_state(seed=rs)
    generator = torch.Generator().manual_seed(rs)
    batches = CropBatches(train_ids, transform, cfg["batch_size"], cfg["samples_per_volume"], generator,
                          num_workers=cfg["num_workers"])
    spe = batches.steps_per_epoch
    total = cfg["epochs"] * spe
    optimizer = build_optimizer(net.parameters(), cfg["optim"], **optimizer_options(fast))
    warmup_steps = plan["warmup_steps"] if subset else cfg["warmup_epochs"] * spe
    scheduler = build_scheduler(optimizer, cfg["schedule"], warmup_steps, total)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=cfg["batch_dice"])
    optimizer_step = OptimizerStep(optimizer, scheduler, device=dev, dtype=amp_dtype(cfg["amp"], dev))

    identity = run_identity(kind="segmentation", dataset=dataset, backbone=backbone, method=method,
                            init=init_identity(init), fold=int(fold), labeled=labeled, subset_seed=subset_seed,
                            settings=settings, encoder_config=encoder_config, seed=int(seed),
                            data={"train": train_ids, "val": val_ids, "settings_hash": folds.get("settings_hash")})
    state_path = out_dir / STATE_FILE
    rows: list[dict[str, Any]] = []
    val_history: dict[int, float] = {}
    step, first_epoch, skip = 0, 1, 0
    train_seconds = 0.0
    resumed_from: list[int] = []
    saved_data_rng = None
    if state_path.is_file():
        state = load_state(state_path, identity, "fine-tuning")
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        rows, train_seconds = list(state["rows"]), float(state["train_seconds"])
        val_history = {int(e): float(v) for e, v in state["val_history"].items()}
        step, first_epoch, skip = int(state["step"]), int(state["epoch"]), int(state["in_epoch"])
        resumed_from = [*state["resumed_from"], step]
        saved_data_rng, saved_rng = state["data_rng"], state["rng"]
        write_log(out_dir / LOG_FILE, LOG_COLUMNS, rows)
        log.info("%s: resuming from %s at step %d/%d", name, state_path, step, total)

    def save(epoch: int, in_epoch: int, data_rng: Mapping[str, Any]) -> None:
        save_state(state_path, {
            "identity": identity, "step": step, "epoch": epoch, "in_epoch": in_epoch,
            "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "rows": rows, "val_history": {str(e): v for e, v in val_history.items()},
            "train_seconds": train_seconds, "resumed_from": resumed_from,
            "data_rng": data_rng, "rng": rng_state()})

    clock = Checkpoints(checkpoint_every, checkpoint_minutes)
    bar = progress_bar(total, step, f"finetune {backbone} {name}", "step", progress)
    pending = PendingSteps()

    def record(done) -> None:
        """The log rows of steps whose loss the host has read."""
        for (ep, at, lr_at), terms in done:
            rows.append({"epoch": ep, "step": at, "loss": terms["loss"], "lr": lr_at, "val_dice": None})
            bar.set_postfix(loss=f"{terms['loss']:.4f}", lr=f"{lr_at:.2e}", refresh=False)

    try:
        with StopFlag() as stop:
            for epoch in range(first_epoch, cfg["epochs"] + 1):
                net.train()
                t_epoch = time.perf_counter()
                if saved_data_rng is not None:  # replay this epoch's draws up to where the state was written
                    generator.set_state(saved_data_rng["generator"])
                    set_transform_state(transform, saved_data_rng["transform"])
                data_rng = {"generator": generator.get_state(), "transform": transform_state(transform)}
                epoch_batches = batches.epoch()
                if saved_data_rng is not None:
                    for _ in range(skip):
                        next(epoch_batches)
                    set_rng_state(saved_rng)
                    saved_data_rng = None
                in_epoch = skip
                skip = 0
                for image, label in epoch_batches:
                    image = image.to(dev, non_blocking=True, memory_format=memory_format(settings))
                    label = label.to(dev, non_blocking=True)
                    lr = optimizer_step.lr
                    with optimizer_step.autocast():
                        logits = forward(image)
                    loss = deep_supervision_loss(loss_fn, logits, label)
                    describe = lambda t, at=step + 1, ep=epoch: (  # noqa: E731
                        f"{out_dir}: loss is {t['loss']} at step {at} (epoch {ep}); lower optim.lr?")
                    step += 1
                    in_epoch += 1
                    record(pending.step(optimizer_step, (epoch, step, lr), loss, describe=describe,
                                        read_now=fast.sync_every == 1))
                    bar.update(1)
                    if step_callback is not None:
                        step_callback(step)
                    due = in_epoch < spe and (stop.name or clock.due(step))
                    if due or len(pending) >= fast.sync_every or in_epoch == spe:
                        record(pending.flush())
                    if due:
                        train_seconds += time.perf_counter() - t_epoch
                        t_epoch = time.perf_counter()
                        save(epoch, in_epoch, data_rng)
                        write_log(out_dir / LOG_FILE, LOG_COLUMNS, rows)
                        if stop.name:
                            raise Preempted(step, state_path, stop.name)
                record(pending.flush())
                train_seconds += time.perf_counter() - t_epoch
                if val_ids and cfg["val_every"] and (epoch % cfg["val_every"] == 0 or epoch == cfg["epochs"]):
                    score = validate(net, data_dir, val_ids, settings, dev)
                    val_history[epoch] = score
                    rows[-1]["val_dice"] = score
                    log.info("%s epoch %d: val dice %.4f", name, epoch, score)
                write_log(out_dir / LOG_FILE, LOG_COLUMNS, rows)
                if epoch < cfg["epochs"] and (stop.name or clock.due(step)):
                    save(epoch + 1, 0, {"generator": generator.get_state(), "transform": transform_state(transform)})
                    if stop.name:
                        raise Preempted(step, state_path, stop.name)
    finally:
        bar.close()

    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    model = {
        "state_dict": state,
        "backbone": backbone,
        "num_classes": num_classes,
        "settings": _plain(settings),
        "encoder_config": _plain(encoder_config),
        "dataset": dataset,
        "method": method,
        "init": init,
        "fold": None if subset else int(fold),
        "seed": int(seed),
        "code_version": code_version(),
    }
    if subset:
        model["subset"] = subset
    with atomic_path(out_dir / MODEL_FILE, suffix=".pt") as tmp:
        torch.save(model, tmp)

    finite = {e: s for e, s in val_history.items() if not math.isnan(s)}
    best_epoch = max(finite, key=lambda e: (finite[e], -e)) if finite else None
    summary = {
        "dataset": dataset,
        "backbone": backbone,
        "method": method,
        "init": init,
        "fold": None if subset else int(fold),
        "seed": int(seed),
        "run_seed": rs,
        "device": str(dev),
        "threads": int(threads),
        "n_train": len(train_ids),
        "n_val": len(val_ids),
        "epochs": cfg["epochs"],
        "warmup_steps": warmup_steps,
        "steps_per_epoch": spe,
        "steps": step,
        "seconds": round(time.perf_counter() - t_start, 3),
        "train_seconds": round(train_seconds, 3),
        "seconds_per_step": round(train_seconds / max(1, step), 4),
        "final_loss": rows[-1]["loss"] if rows else None,
        "best_val_dice": finite[best_epoch] if best_epoch is not None else None,
        "best_val_epoch": best_epoch,
        "final_val_dice": finite.get(cfg["epochs"]),
        "val_dice": {str(e): (None if math.isnan(s) else s) for e, s in val_history.items()},
        "n_loaded": n_loaded,
        "resumed_from": resumed_from,
        "model": str(out_dir / MODEL_FILE),
        "code_version": code_version(),
    }
    if subset:
        summary["subset"] = subset
    write_json(out_dir / SUMMARY_FILE, summary)
    state_path.unlink(missing_ok=True)  # done: model.pt and the summary are the result
    log.info("%s: %d steps in %.1f s, final loss %.4f", name, step, summary["seconds"], summary["final_loss"] or math.nan)
    return summary


def _plain(obj: Any) -> Any:
    """Plain dict/list/str/number copy (what weights_only loading accepts)."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    return obj
