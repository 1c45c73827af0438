"""Sliding-window prediction on the cached grid and scoring on each case's original grid.

    metrics = evaluate(dataset="flare22", model_dir=".../fold0", data_dir="results/data/flare22",
                       out_path=".../fold0/metrics.json", split="test")

Per case: the cached image (padded with zeros to at least the crop) goes through MONAI's
`sliding_window_inference` (roi = the training crop, overlap `sw_overlap`, gaussian blending),
argmax over classes, `invert_to_original` (nearest neighbour) onto the source NIfTI's voxel grid,
and `alice.metrics.score_case` against the source label file, with the voxel sizes of its affine
(the column norms, which the header's pixdim should repeat) as spacing.
The predicted label maps are also written as NIfTI on the original grid (the label file's affine)
into the predictions folder beside the metrics file (`predictions_dir`: `predictions/{case_id}.nii.gz`
beside `metrics.json`, `val_predictions/` beside a `val.json`).

The metrics file and its predictions are one set (`alice.io.atomic_set`): written as temporaries
and swapped in together at the end, so a failed or killed evaluation leaves the previous set
whole or none, never a mix. A previous set that did not score this very model file (another
`model_sha256`, or none) is removed before scoring.

metrics.json: {"dataset", "method", "backbone", "fold", "split", "cases": {case: {organ: {"dsc",
"nsd"}}}, "case_mean": {case: {"dsc", "nsd"}}, "mean": {"dsc", "nsd"}, "n_cases", "seconds",
"model", "model_sha256", "labels": {case: the label file scored against (path, size, mtime_ns as
prepare recorded it)}, "predictions", "settings_hash", "code_version"}, plus "subset" (labeled,
subset_seed, cases, ...) for a low-label run. case_mean is `mean_over_organs` (NaN organs left
out), mean is the mean of case_mean over cases (NaN cases left out). NaN is written as JSON null.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from alice import training
from alice.downstream import MODEL_FILE, model_settings_hash  # torch-free, for the tables
from alice.errors import ConfigError, InputError
from alice.io import atomic_path, atomic_set, file_sha256, json_text, load_torch_dict, read_json, remove_set
from alice.version import code_version

log = logging.getLogger("alice")

MODEL_KEYS = ("state_dict", "backbone", "num_classes", "settings", "encoder_config", "dataset")
METRICS_FILE = "metrics.json"
PREDICTIONS_DIR = "predictions"


def check_threads(threads: Any) -> int:
    """`threads` as an int >= 1; a ConfigError naming --threads otherwise (not torch's traceback)."""
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ConfigError("--threads", f"must be an integer >= 1, got {threads!r}")
    return int(threads)


# ------------------------------------------------------------------------------------------ device
def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError("device", f"must be cpu, cuda, cuda:N or auto, got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", "cuda requested but no CUDA device is available")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError("device", f"must be cpu, cuda, cuda:N or auto, got {device!r}")
    return dev


def autocast(device: torch.device, amp: str = "auto"):
    """bf16 autocast (no loss scaling needed): `auto` on CUDA only, `bf16` on CPU too (CPUs with
    AMX run a convolution-heavy step ~2x faster), `off` never (alice.training.amp_dtype)."""
    return training.autocast(device, training.amp_dtype(amp, device))


# -------------------------------------------------------------------------------------- prediction
@torch.no_grad()
def sliding_window_logits(
    net: torch.nn.Module,
    image: np.ndarray | torch.Tensor,
    crop: Sequence[int],
    *,
    overlap: float,
    sw_batch_size: int = 1,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Class logits (C, x, y, z) on `device` for one (x, y, z) volume of any shape.

    The volume is zero-padded at its far end to at least `crop` along each axis, predicted with
    gaussian-blended sliding windows of size `crop`, and the padding cut off again.
    """
    from monai.inferers import sliding_window_inference

    device = torch.device(device)
    x = image if torch.is_tensor(image) else torch.from_numpy(np.array(image, dtype=np.float32))
    x = x.to(device=device, dtype=torch.float32)
    if x.ndim != 3:
        raise ValueError(f"expected an (x, y, z) volume, got shape {tuple(x.shape)}")
    shape = tuple(x.shape)
    pad = [max(0, int(c) - s) for c, s in zip(crop, shape)]
    if any(pad):
        # F.pad lists the last axis first
        x = torch.nn.functional.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]), value=0.0)
    was_training = net.training
    net.eval()
    try:
        with autocast(device):
            logits = sliding_window_inference(
                x[None, None], roi_size=tuple(int(c) for c in crop), sw_batch_size=sw_batch_size, predictor=net,
                overlap=overlap, mode="gaussian",
            )
    finally:
        net.train(was_training)
    logits = logits[0].float()
    return logits[:, : shape[0], : shape[1], : shape[2]]


def predict_labels(net, image, crop, *, overlap: float, sw_batch_size: int = 1, device="cpu") -> np.ndarray:
    """Argmax label map (uint8, the input's (x, y, z) shape) of one volume."""
    logits = sliding_window_logits(net, image, crop, overlap=overlap, sw_batch_size=sw_batch_size, device=device)
    return logits.argmax(dim=0).to(torch.uint8).cpu().numpy()


# -------------------------------------------------------------------------------------------- model
def load_model(model_dir: str | Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the fine-tuned network from `model_dir/model.pt` (weights_only); (net, checkpoint)."""
    from alice.downstream.networks import build_segmentation_network, memory_format

    path = Path(model_dir) / MODEL_FILE
    if not path.is_file():
        raise InputError(path, "fine-tuned model not found (run `alice finetune` first)")
    ckpt = load_torch_dict(path, MODEL_KEYS, "model file")
    try:
        net = build_segmentation_network(ckpt["backbone"], ckpt["num_classes"], ckpt["settings"], ckpt["encoder_config"])
    except ConfigError as exc:
        raise InputError(path, f"stored settings do not build a network: {exc}") from None
    try:
        net.load_state_dict(ckpt["state_dict"], strict=True)
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(path, f"state_dict does not fit the stored architecture: {first}") from None
    return net.to(device, memory_format=memory_format(ckpt["settings"])).eval(), ckpt


# ------------------------------------------------------------------------------------------ scoring
def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, Mapping):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    return obj


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def _original_label(meta: Mapping[str, Any], case_id: str, data_dir: Path):
    """The source label map of a cached case, its affine and its spacing (the affine's voxel sizes),
    read with prepare's checks; a file other than the one prepared is refused (`read_source_label`)."""
    from alice.data.validate import read_source_label

    return read_source_label(meta, Path(data_dir) / f"{case_id}.json")


def _save_prediction(path: Path, labels: np.ndarray, affine: np.ndarray) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(labels.astype(np.uint8), affine)
    img.set_data_dtype(np.uint8)
    with atomic_path(path, suffix=".nii.gz") as tmp:
        nib.save(img, str(tmp))


def _label_identity(meta: Mapping[str, Any]) -> Any:
    """The label file a case is scored against, as prepare recorded it (path, sha256, size, shape)."""
    from alice.data.validate import source_identity

    return source_identity(meta, "label")


def predictions_dir(out_path: str | Path) -> Path:
    """The predictions folder that belongs to metrics file `out_path`: `predictions/` beside a
    `metrics.json`, `<stem>_predictions/` beside any other name (two scorings never share one)."""
    out_path = Path(out_path)
    name = PREDICTIONS_DIR if out_path.name == METRICS_FILE else f"{out_path.stem}_{PREDICTIONS_DIR}"
    return out_path.with_name(name)


def remove_stale_scores(out_path: str | Path, model_sha256: str, folders=()) -> None:
    """Remove the scoring set of `out_path` (and `folders`) unless it records `model_sha256`: a
    failed evaluation then leaves no score of a model it did not score."""
    out_path = Path(out_path)
    try:
        recorded = read_json(out_path).get("model_sha256") if out_path.is_file() else None
    except (OSError, ValueError, AttributeError):
        recorded = None
    if recorded != model_sha256:
        remove_set(out_path, folders)


def evaluate(
    *,
    dataset: str,
    model_dir: str | Path,
    data_dir: str | Path,
    out_path: str | Path,
    split: str = "test",
    device: str = "cpu",
    threads: int = 1,
    progress: bool = True,
    save_predictions: bool = True,
    allow_fold_mismatch: bool = False,
) -> dict[str, Any]:
    """Predict every case of `split` ("test", "val:<k>", "train:<k>"), score it on its original grid
    against its source label, write `out_path` and (with `save_predictions`) the predictions folder
    beside it as one set (module docstring; without, an earlier set's predictions are removed) and
    return the metrics dict.

    A "val:<k>" split holding cases the model trained on (k not the model's fold; a low-label run's
    subset among them) is an InputError naming model.pt, unless `allow_fold_mismatch`."""
    from tqdm import tqdm

    from alice.data.preprocess import invert_to_original, load_case
    from alice.downstream.data import split_cases
    from alice.metrics import mean_over_organs, score_case

    t0 = time.perf_counter()
    torch.set_num_threads(check_threads(threads))
    dev = resolve_device(device)
    model_dir, data_dir, out_path = Path(model_dir), Path(data_dir), Path(out_path)
    net, ckpt = load_model(model_dir, dev)
    model_sha256 = file_sha256(model_dir / MODEL_FILE)
    pred_dir = predictions_dir(out_path)
    remove_stale_scores(out_path, model_sha256, [pred_dir])
    if ckpt["dataset"] != dataset:
        raise InputError(model_dir / MODEL_FILE, f"model was fine-tuned on '{ckpt['dataset']}', not '{dataset}'")
    settings = ckpt["settings"]
    crop = [int(c) for c in settings["crop"]]
    overlap = float(settings.get("sw_overlap", 0.25))
    sw_batch = int(settings.get("sw_batch_size", 1))
    case_ids, _ = split_cases(data_dir, split)
    if split.startswith("val:") and not allow_fold_mismatch:
        check_val_split(model_dir / MODEL_FILE, ckpt, split, case_ids)
    if not case_ids:
        raise InputError(data_dir / "folds.json", f"split '{split}' has no cases")

    cases: dict[str, Any] = {}
    case_mean: dict[str, Any] = {}
    labels: dict[str, Any] = {}
    with atomic_set(out_path, [pred_dir]) as (tmp_metrics, (tmp_preds,)):
        for case_id in tqdm(case_ids, desc=f"evaluate {split}", unit="case", disable=not progress):
            image, _label, meta = load_case(data_dir, case_id)
            gt, affine, spacing = _original_label(meta, case_id, data_dir)
            pred_cached = predict_labels(net, image, crop, overlap=overlap, sw_batch_size=sw_batch, device=dev)
            pred = invert_to_original(pred_cached, meta)
            if save_predictions:
                _save_prediction(tmp_preds / f"{case_id}.nii.gz", pred, affine)
            scores = score_case(gt, pred, spacing, dataset)
            cases[case_id] = scores
            case_mean[case_id] = mean_over_organs(scores)
            labels[case_id] = _label_identity(meta)
        mean = {key: _nanmean([m[key] for m in case_mean.values()]) for key in ("dsc", "nsd")}
        seconds = time.perf_counter() - t0
        metrics = {
            "dataset": dataset,
            "method": ckpt.get("method"),
            "backbone": ckpt["backbone"],
            "fold": ckpt.get("fold"),
            "split": split,
            "cases": cases,
            "case_mean": case_mean,
            "mean": mean,
            "n_cases": len(case_ids),
            "seconds": round(seconds, 3),
            "model": str(model_dir / MODEL_FILE),
            "model_sha256": model_sha256,
            "labels": labels,
            "predictions": str(pred_dir) if save_predictions else None,
            "settings_hash": model_settings_hash(ckpt, data_dir),
            "code_version": code_version(),
        }
        if ckpt.get("subset"):
            metrics["subset"] = ckpt["subset"]  # a low-label run: its training cases (no fold)
        tmp_metrics.write_text(json_text(_nan_to_none(metrics)))
    if not save_predictions:  # a set without predictions: an earlier scoring's went out with its metrics
        with contextlib.suppress(OSError):
            pred_dir.rmdir()
    log.info("%s %s: mean DSC %.4f NSD %.4f over %d cases", model_dir, split, mean["dsc"], mean["nsd"], len(case_ids))
    return metrics


def check_val_split(path: Path, ckpt: Mapping[str, Any], split: str, case_ids: Sequence[str]) -> None:
    """InputError if validation split `split` ("val:<k>") holds cases the model of `path` trained on:
    another fold's val split (every fold trains on the others' val cases), or for a low-label run
    (fold None) any case of its subset."""
    fold = ckpt.get("fold")
    k = int(split.partition(":")[2])
    if fold is not None and int(fold) != k:
        raise InputError(path, f"model of fold {fold} trained on the cases of split '{split}'; score "
                               f"'val:{fold}' (or pass --allow-fold-mismatch)")
    trained = set((ckpt.get("subset") or {}).get("cases") or ())
    overlap = sorted(trained & set(case_ids))
    if overlap:
        raise InputError(path, f"low-label model trained on {len(overlap)} case(s) of split '{split}' "
                               f"({', '.join(overlap[:3])}); score 'test' (or pass --allow-fold-mismatch)")
