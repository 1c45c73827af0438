"""BTCV online test set: the challenge's submission files, one per test case (paper Table 3,
"Online Test Set"; the harness never scores them: the test labels are not public).

    manifest = write_submission(dataset="btcv", model_dirs=[".../btcv/alice/unetr/fold0"],
                                data_dir="results/data/btcv", out_dir="results/btcv_online/alice")

Format. The Synapse challenge "Multi-Atlas Labeling Beyond the Cranial Vault" (synapse.org,
syn3193805) scores test-set predictions uploaded to its site (the online numbers of Table 3 come
from its leaderboard: Project-MONAI/research-contributions#21; participants "register ... and
submit your predictions to the server": Amshaker/unetr_plus_plus#9). Its own submission
instructions could not be retrieved (searched: documentation, web pages and issue threads), so the
files follow the release's own label files, as the task's fallback asks: `labelXXXX.nii.gz` for
the test image `imgXXXX.nii.gz` (as RawData/Training/label/label0001.nii.gz pairs with
img0001.nii.gz), uint8, ids 0..13 (docs/facts.md "Label ids": 0 background, 1 spleen, ..., 13 left adrenal
gland), on the test image's voxel grid: its shape, affine and header (qform/sform codes,
orientation) copied, scaling and display range reset.

Prediction. Per test case, the cached image (RAS, `datasets.btcv.spacing`) goes through each
model's gaussian sliding-window inference exactly as `evaluate` does (the model's training crop,
`sw_overlap`, `sw_batch_size`); the softmax is averaged over the models (one model = the fold-0
model, Table 3's "Ensemble 1" for Alice; `online_test.models: all_folds` = the 5-fold ensemble),
argmax on the cached grid, then mapped back onto the test image's grid by nearest neighbour
(`invert_to_original`). Why labels rather than resampled probabilities: it is the very mapping the
offline Table 3 values go through (`evaluate`), so they estimate what the submission scores, and 14
probability maps on a 512x512x~150 grid would cost ~2 GB per case; at the demo's coarse cache
spacing boundaries are staircased at the cache resolution (the paper's spacing is close to the
original grid).

The output folder appears complete or not at all (built in a temporary sibling, then renamed):
the label files plus `manifest.json` = {"dataset", "split", "format", "labels", "ensemble", "models":
[{"path", "fold", "method", "backbone", "init", "settings_hash", "sha256"}], "config_hash",
"code_version", "files": {case_id: file name}, "seconds"}.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from alice.io import settings_hash
from alice.errors import ConfigError, InputError
from alice.io import file_sha256, write_json
from alice.labels import LABEL_NAMES
from alice.version import code_version

if TYPE_CHECKING:  # torch is imported where it runs: the workflow imports this module
    import torch  # while it builds the DAG, and torch's import costs ~2 s each time

log = logging.getLogger("alice")

MANIFEST = "manifest.json"
# dataset -> (test case id pattern, submission file name, where the format comes from)
FORMATS: dict[str, dict[str, str]] = {
    "btcv": {
        "case_id": r"img([0-9]{4})",
        "file": "label{0}.nii.gz",
        "naming": "labelXXXX.nii.gz for the test image imgXXXX.nii.gz",
        "dtype": "uint8",
        "grid": "the test image's (imgXXXX.nii.gz) shape, affine and header",
        "source": "the release's own label naming (RawData/Training/label/labelXXXX.nii.gz); the "
                  "challenge's submission instructions (synapse.org syn3193805) could not be "
                  "retrieved",
    },
}
ENSEMBLES = {"fold0": "the fold-0 model alone", "all_folds": "mean softmax of every fold's model"}


# ------------------------------------------------------------------------------------- naming
def submission_file_name(dataset: str, case_id: str) -> str:
    """`img0061` -> `label0061.nii.gz` (BTCV); ValueError for an id of another form."""
    fmt = _format(dataset)
    match = re.fullmatch(fmt["case_id"], case_id)
    if match is None:
        raise ValueError(f"'{case_id}' is not a {dataset} test case id (expected {fmt['case_id']})")
    return fmt["file"].format(*match.groups())


def _format(dataset: str) -> dict[str, str]:
    if dataset not in FORMATS:
        raise ConfigError("--dataset", f"no online submission format for '{dataset}' "
                                       f"(known: {', '.join(FORMATS)})")
    return FORMATS[dataset]


# ----------------------------------------------------------------------------------- writing
def write_label_file(path: str | Path, labels: np.ndarray, reference: str | Path) -> None:
    """Write `labels` (uint8 ids on the reference image's voxel grid) with the reference image's
    affine and header (orientation codes kept; scaling and display range reset), atomically."""
    import nibabel as nib

    from alice.io import atomic_path

    ref = nib.load(str(reference))
    if tuple(labels.shape) != tuple(ref.shape[:3]) or len(ref.shape) != 3:
        raise InputError(reference, f"image shape {ref.shape} does not hold a label map of "
                                    f"shape {labels.shape}")
    if labels.min(initial=0) < 0 or labels.max(initial=0) > 255:
        raise ValueError("label ids must fit uint8")
    header = ref.header.copy()
    header["cal_min"], header["cal_max"] = 0, 0
    header["descrip"] = b"alice predict (label map)"
    img = nib.Nifti1Image(np.asarray(labels, dtype=np.uint8), ref.affine, header=header)
    img.set_data_dtype(np.uint8)
    img.header.set_slope_inter(1.0, 0.0)
    with atomic_path(path, suffix=".nii.gz") as tmp:
        nib.save(img, str(tmp))


def mean_probabilities(nets: Sequence[tuple[torch.nn.Module, Mapping[str, Any]]], image,
                       device: torch.device) -> torch.Tensor:
    """Mean softmax (C, x, y, z) of the models over one cached volume, each model predicting with
    its own training crop and sliding-window settings (as `evaluate`)."""
    import torch

    from alice.downstream.inference import sliding_window_logits

    total = None
    with torch.no_grad():
        for net, settings in nets:
            logits = sliding_window_logits(
                net, image, [int(c) for c in settings["crop"]],
                overlap=float(settings.get("sw_overlap", 0.25)),
                sw_batch_size=int(settings.get("sw_batch_size", 1)), device=device)
            probs = torch.softmax(logits, dim=0)
            total = probs if total is None else total + probs
    return total / len(nets)


def write_submission(
    *,
    dataset: str,
    model_dirs: Sequence[str | Path],
    data_dir: str | Path,
    out_dir: str | Path,
    split: str = "online_test",
    device: str = "cpu",
    threads: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Predict every case of `split` with the models of `model_dirs` (mean softmax) and write the
    submission files plus `manifest.json` into `out_dir`; returns the manifest."""
    import torch
    from tqdm import tqdm

    from alice.data.preprocess import invert_to_original, load_case
    from alice.data.validate import check_source_image
    from alice.downstream.data import split_cases
    from alice.downstream.inference import MODEL_FILE, load_model, model_settings_hash, resolve_device

    t0 = time.perf_counter()
    fmt = _format(dataset)
    if not model_dirs:
        raise ConfigError("--model-dir", "at least one fine-tuned model is needed")
    torch.set_num_threads(int(threads))
    dev = resolve_device(device)
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    nets, models, classes = [], [], set()
    for model_dir in model_dirs:
        net, ckpt = load_model(model_dir, dev)
        path = Path(model_dir) / MODEL_FILE
        if ckpt["dataset"] != dataset:
            raise InputError(path, f"model was fine-tuned on '{ckpt['dataset']}', not '{dataset}'")
        classes.add(int(ckpt["num_classes"]))
        nets.append((net, ckpt["settings"]))
        models.append({"path": str(path), "fold": ckpt.get("fold"), "method": ckpt.get("method"),
                       "backbone": ckpt["backbone"], "init": ckpt.get("init"),
                       "settings_hash": model_settings_hash(ckpt, data_dir),
                       "sha256": file_sha256(path)})
    if classes != {1 + max(LABEL_NAMES[dataset])}:
        raise InputError(Path(model_dirs[0]) / MODEL_FILE,
                         f"the models predict {sorted(classes)} classes, {dataset} has "
                         f"{1 + max(LABEL_NAMES[dataset])} (background + organs)")
    case_ids, _ = split_cases(data_dir, split)
    if not case_ids:
        raise InputError(data_dir / "folds.json", f"split '{split}' has no cases")
    try:
        names = {case_id: submission_file_name(dataset, case_id) for case_id in case_ids}
    except ValueError as exc:
        raise InputError(data_dir / "folds.json", f"split '{split}': {exc}") from None

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        for case_id in tqdm(case_ids, desc=f"predict {split}", unit="case", disable=not progress):
            image, _label, meta = load_case(data_dir, case_id)
            # the grid the file is written on must still be the one prepare cached
            source = check_source_image(meta, data_dir / f"{case_id}.json")
            probs = mean_probabilities(nets, image, dev)
            labels = probs.argmax(dim=0).to(torch.uint8).cpu().numpy()
            write_label_file(tmp / names[case_id], invert_to_original(labels, meta), source)
        manifest = {
            "dataset": dataset,
            "split": split,
            "format": {k: v for k, v in fmt.items() if k not in ("case_id", "file")},
            "labels": {"0": "background", **{str(k): v for k, v in LABEL_NAMES[dataset].items()}},
            "ensemble": "single model" if len(models) == 1 else f"mean softmax of {len(models)} models",
            "models": models,
            # what produced these files: every model's settings and the data cache, the split
            "config_hash": settings_hash({"models": [m["settings_hash"] for m in models],
                                          "weights": [m["sha256"] for m in models],
                                          "split": split, "format": fmt}),
            "code_version": code_version(),
            "files": names,
            "seconds": round(time.perf_counter() - t0, 3),
        }
        write_json(tmp / MANIFEST, manifest)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    log.info("%s %s: %d submission files from %d model(s) in %.1f s -> %s", dataset, split,
             len(names), len(models), manifest["seconds"], out_dir)
    return manifest
