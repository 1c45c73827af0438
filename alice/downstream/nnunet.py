"""The nnU-Net rows of Tables 2 and 3: nnU-Net v2 (the `nnunetv2` package) on one fold, scored
like every other row.

    metrics = run_nnunet(dataset="flare22", fold=0, data_dir="results/data/flare22",
                         out_dir="results/finetune/flare22/nnunet/nnunet/fold0",
                         work_dir="results/nnunet/flare22/fold0", settings={...}, threads=1)

Steps (each one nnU-Net's own code, driven through its Python API):
1. Export: the fold's training cases (fold k's `train` list of folds.json, what `alice finetune`
   trains fold k on) into nnU-Net's raw layout under `work_dir/nnUNet_raw/Dataset<ID>_<name>/`:
   `imagesTr/<case>_0000.nii.gz`, `labelsTr/<case>.nii.gz` and `dataset.json` (channel_names
   {"0": "CT"}, the labels of `alice.labels`, numTraining, file_ending ".nii.gz", read with
   nnU-Net's `NibabelIO`).
   What is exported: each case's *source* image in HU and its source label, read through the
   harness's checked readers (the files `alice prepare` recorded, refused if changed since), on
   their own voxel grid, only reoriented to RAS (a lossless flip/permutation of axes; the phantoms
   and some releases store cases in mixed orientations, which nnU-Net does not reorient). Not the
   prepared cache: that is resampled to the harness's spacing and windowed to [0, 1], while
   nnU-Net plans its own target spacing and its CT normalisation clips and z-scores HU with the
   dataset's foreground intensity statistics. An integer-valued image is written as int16.
2. nnU-Net's fingerprint extraction, experiment planning (ExperimentPlanner, the "3d_fullres"
   configuration) and preprocessing (`plan_and_preprocess_api`), with `threads` processes.
   Settings may override the plan's batch size, patch size and first-stage width (the network
   topology is then recomputed with nnU-Net's `get_pool_and_conv_props`, as its planner does)
   and the target spacing.
3. Training: `nnUNetTrainerDemo`, a subclass of nnU-Net's `nnUNetTrainer` defined here and
   instantiated directly (fold "all": every exported case trains; nnU-Net's pseudo-Dice
   validation then also runs on them), with epochs / iterations / validation iterations / initial
   lr from the settings or nnU-Net's defaults (1000 x 250, 50, 1e-2). It keeps nnU-Net's loss,
   optimiser, schedule, augmentation (mirroring optional, as nnU-Net's own
   nnUNetTrainerNoMirroring) and deep supervision; it only skips the "best EMA" checkpoint (the
   final model is scored, as for every harness row).
4. Prediction of the fold's offline test cases (`offline_test_split`: FLARE22 "test", BTCV
   "val:<k>", the cases `alice evaluate` scores) with nnU-Net's `nnUNetPredictor` (sliding
   window, gaussian, tile step and test-time mirroring from the settings; its own resampling back
   to the input grid), from the weights of the final checkpoint. The RAS prediction goes back onto
   the source label's voxel grid with `invert_to_original` (exact: axes flips/permutations only),
   and is scored with `alice.metrics.score_case` against the source label, as `alice evaluate` does.

Outputs in `out_dir`: `metrics.json` and `predictions/` (one set, written last, in the schema of
`alice.downstream.inference.evaluate`, method and backbone "nnunet"), `plans.json` (the nnU-Net
plans the model trained with), `dataset.json` (nnU-Net's), `checkpoint_final.pth` (nnU-Net's final
checkpoint less the optimizer state), `training_log.txt` (nnU-Net's log) and `train_summary.json`
(steps, init "scratch": what the tables state as a cell's protocol). Every file is written
atomically. `work_dir` holds nnU-Net's nnUNet_raw / nnUNet_preprocessed / nnUNet_results; it is
cleared at the start (it must be empty or an earlier run's, marked by `.alice-nnunet.json`) and
removed at the end unless `keep_work`.

Settings (the config's `finetune.nnunet` section; null or absent = nnU-Net's value):
  trainer          "default" alone = nnU-Net's stock recipe (what paper scale runs)
  epochs           1000;  iterations_per_epoch 250;  val_iterations 50;  initial_lr 0.01
  batch_size       the plan's
  patch_size       the plan's; else [x, y, z] voxels along the RAS axes of the planned grid
  base_features    32: the first stage's width, doubled per stage up to 320
  target_spacing   nnU-Net's; else [x, y, z] mm along the RAS axes
  train_mirroring  true: nnU-Net's mirroring augmentation on every axis; false: as nnU-Net's
                   nnUNetTrainerNoMirroring (no mirroring in training, none at test time)
  tile_step_size   0.5 (sliding-window step, a fraction of the patch)
  test_mirroring   true: test-time mirroring over the axes training mirrored
  da_processes     augmentation worker processes; 0 = in the main process; null = nnU-Net's
                   per-host default
  seed             0; the rule passes the config's seed

Determinism: the global random, numpy and torch generators are seeded from `seed` before
training; with `da_processes: 0` on CPU and a fixed thread count a rerun reproduces the same
model. Not reproducible: augmentation in worker processes (nnU-Net's NonDetMultiThreadedAugmenter
hands out batches in the order the workers finish, unseeded), CUDA's non-deterministic kernels
(nnU-Net sets cudnn.benchmark), and numbers across thread counts (floating-point reduction order).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from alice.errors import ConfigError, InputError

log = logging.getLogger("alice")

METHOD = BACKBONE = "nnunet"
CONFIGURATION = "3d_fullres"
PLANS_IDENTIFIER = "nnUNetPlans"
TRAIN_FOLD = "all"  # every exported case trains: the harness made the split
DATASET_IDS = {"flare22": 901, "btcv": 902}  # nnU-Net dataset ids inside a work folder of our own
WORK_MARKER = ".alice-nnunet.json"
CHECKPOINT = "checkpoint_final.pth"
PLANS_FILE = "plans.json"
DATASET_FILE = "dataset.json"
SUMMARY_FILE = "train_summary.json"
TRAINING_LOG = "training_log.txt"

# nnU-Net's own defaults (nnUNetTrainer.__init__, nnUNetPredictor), what a null setting means
NNUNET_DEFAULTS = {"epochs": 1000, "iterations_per_epoch": 250, "val_iterations": 50, "initial_lr": 1e-2,
                   "train_mirroring": True, "tile_step_size": 0.5, "test_mirroring": True}
TRAINING_KEYS = ("epochs", "iterations_per_epoch", "val_iterations", "initial_lr", "batch_size", "patch_size",
                 "base_features", "target_spacing", "train_mirroring")
MAX_FEATURES = 320  # nnU-Net's ExperimentPlanner.UNet_max_features_3d
KNOWN_KEYS = ("trainer", *TRAINING_KEYS, "tile_step_size", "test_mirroring", "da_processes", "seed")


# ----------------------------------------------------------------------------------------- settings
def _key(key: str) -> str:
    return f"finetune.nnunet.{key}"


def _int(settings: Mapping[str, Any], key: str, minimum: int) -> int | None:
    value = settings.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(_key(key), f"must be an integer >= {minimum} or null, got {value!r}")
    return int(value)


def _triple(settings: Mapping[str, Any], key: str, kind: type) -> list | None:
    value = settings.get(key)
    if value is None:
        return None
    what = "3 integers >= 4" if kind is int else "3 positive numbers (mm)"
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise ConfigError(_key(key), f"must be {what} ([x, y, z]) or null, got {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise ConfigError(_key(key), f"must be {what} ([x, y, z]) or null, got {value!r}")
        if kind is int and (float(v) != int(v) or int(v) < 4):
            raise ConfigError(_key(key), f"must be {what} ([x, y, z]) or null, got {value!r}")
        if kind is float and not (math.isfinite(float(v)) and float(v) > 0):
            raise ConfigError(_key(key), f"must be {what} ([x, y, z]) or null, got {value!r}")
        out.append(kind(v))
    return out


def _bool(settings: Mapping[str, Any], key: str) -> bool | None:
    value = settings.get(key)
    if value is not None and not isinstance(value, bool):
        raise ConfigError(_key(key), f"must be true, false or null, got {value!r}")
    return value


def check_settings(settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """The settings with every key present (null where nnU-Net decides); a ConfigError naming
    `finetune.nnunet.<key>` for an unknown key or a bad value."""
    if settings is None:
        settings = {}
    if not isinstance(settings, Mapping):
        raise ConfigError("finetune.nnunet", f"must be a mapping, got {type(settings).__name__}")
    unknown = sorted(set(settings) - set(KNOWN_KEYS))
    if unknown:
        raise ConfigError(_key(unknown[0]), f"unknown key (known: {', '.join(KNOWN_KEYS)})")
    trainer = settings.get("trainer")
    if trainer not in (None, "default"):
        raise ConfigError(_key("trainer"), f"must be 'default' (nnU-Net's stock recipe) or absent, got {trainer!r}")
    if trainer == "default":
        set_keys = [k for k in TRAINING_KEYS if settings.get(k) is not None]
        if set_keys:
            raise ConfigError(_key(set_keys[0]), "trainer 'default' is nnU-Net's own recipe: leave the "
                                                 f"training keys ({', '.join(TRAINING_KEYS)}) out or null")
    out: dict[str, Any] = {"trainer": "default" if trainer == "default" else None}
    out["epochs"] = _int(settings, "epochs", 1)
    out["iterations_per_epoch"] = _int(settings, "iterations_per_epoch", 1)
    out["val_iterations"] = _int(settings, "val_iterations", 1)
    lr = settings.get("initial_lr")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (0 < float(lr) < math.inf)):
        raise ConfigError(_key("initial_lr"), f"must be a positive number or null, got {lr!r}")
    out["initial_lr"] = None if lr is None else float(lr)
    out["batch_size"] = _int(settings, "batch_size", 1)
    out["base_features"] = _int(settings, "base_features", 1)
    out["patch_size"] = _triple(settings, "patch_size", int)
    out["target_spacing"] = _triple(settings, "target_spacing", float)
    step = settings.get("tile_step_size", NNUNET_DEFAULTS["tile_step_size"])
    if step is None:
        step = NNUNET_DEFAULTS["tile_step_size"]
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not 0 < float(step) <= 1:
        raise ConfigError(_key("tile_step_size"), f"must be a number in (0, 1], got {step!r}")
    out["tile_step_size"] = float(step)
    out["train_mirroring"] = _bool(settings, "train_mirroring")
    out["test_mirroring"] = _bool(settings, "test_mirroring")
    if out["test_mirroring"] is None:
        out["test_mirroring"] = NNUNET_DEFAULTS["test_mirroring"]
    out["da_processes"] = _int(settings, "da_processes", 0)
    seed = settings.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise ConfigError(_key("seed"), f"must be an integer seed from 0 to {2**32 - 1}, got {seed!r}")
    out["seed"] = int(seed)
    return out


def training_value(settings: Mapping[str, Any], key: str):
    """A training setting, nnU-Net's default where it is null."""
    value = settings.get(key)
    return NNUNET_DEFAULTS[key] if value is None else value


# ------------------------------------------------------------------------------------- environment
def work_paths(work_dir: str | Path) -> dict[str, Path]:
    work_dir = Path(work_dir)
    return {name: work_dir / name for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}


@contextlib.contextmanager
def environment(values: Mapping[str, str | None]) -> Iterator[None]:
    """Environment variables set (a None value: unset) for the duration of the block, restored after."""
    old = {name: os.environ.get(name) for name in values}
    try:
        for name, value in values.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        for name, value in old.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def nnunet_environment(work_dir: Path, threads: int, device_type: str):
    """nnU-Net's environment variables for the stage: its three folders under `work_dir`,
    `threads` processes (planning also sizes a thread count by nnUNet_n_proc_DA, which must not be
    0 there; training sets it apart: `training_environment`), no torch.compile on CPU."""
    values: dict[str, str | None] = {name: str(path.resolve()) for name, path in work_paths(work_dir).items()}
    values["nnUNet_def_n_proc"] = str(threads)
    values["nnUNet_n_proc_DA"] = str(threads)
    if device_type == "cpu":
        values["nnUNet_compile"] = "f"
    return environment(values)


def training_environment(da_processes: int | None):
    """nnUNet_n_proc_DA for training: `da_processes` augmentation workers (0: nnU-Net's
    SingleThreadedAugmenter, in the main process), or unset for nnU-Net's per-host default."""
    return environment({"nnUNet_n_proc_DA": None if da_processes is None else str(da_processes)})


def claim_work_dir(work_dir: Path, dataset: str, fold: int) -> None:
    """Empty `work_dir` for a fresh run: it must be absent, empty or an earlier run's (marker)."""
    from alice.io import write_json

    if work_dir.exists() and not work_dir.is_dir():
        raise InputError(work_dir, "nnU-Net work folder exists and is not a folder")
    if work_dir.is_dir() and any(work_dir.iterdir()):
        if not (work_dir / WORK_MARKER).is_file():
            raise InputError(work_dir, f"nnU-Net work folder is not empty and holds no {WORK_MARKER} of an earlier "
                                       "`alice nnunet` run; empty it or choose another --work folder")
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    write_json(work_dir / WORK_MARKER, {"writer": "alice nnunet", "dataset": dataset, "fold": int(fold)})


# ------------------------------------------------------------------------------------------ cases
def fold_cases(data_dir: Path, dataset: str, fold: int) -> tuple[list[str], list[str], str]:
    """(training cases, test cases, test split) of fold `fold`: the fold's `train` list (what
    `alice finetune` trains that fold on) and the cases `alice evaluate` scores for it."""
    from alice.data.folds import offline_test_split
    from alice.downstream.data import fold_entry, read_folds, split_cases

    folds = read_folds(data_dir)
    train = list(fold_entry(folds, int(fold), data_dir / "folds.json")["train"])
    split = offline_test_split(dataset, fold)
    test, _ = split_cases(data_dir, split)
    if not test:
        raise InputError(data_dir / "folds.json", f"split '{split}' has no cases")
    overlap = sorted(set(train) & set(test))
    if overlap:
        raise InputError(data_dir / "folds.json", f"fold {fold} trains on test case(s) {overlap[:3]}")
    return train, test, split


def _case_meta(data_dir: Path, case_id: str) -> dict[str, Any]:
    from alice.io import read_json

    path = data_dir / f"{case_id}.json"
    if not path.is_file():
        raise InputError(path, f"case '{case_id}' is not in the prepared cache (run `alice prepare`)")
    meta = read_json(path)
    if not isinstance(meta, dict) or "original" not in meta:
        raise InputError(path, "not a case record of `alice prepare` (no 'original' grid)")
    return meta


def source_image(meta: Mapping[str, Any], case_json: Path) -> tuple[np.ndarray, np.ndarray]:
    """The source image of a prepared case in HU (float32, the file's (x, y, z) voxel order) and
    its affine, refused if it is not the file `alice prepare` read (header; sha256 when recorded)."""
    from alice.data.nifti import read_image
    from alice.data.validate import check_source_image, source_identity

    path = check_source_image(meta, case_json)
    image, header = read_image(path)
    recorded = source_identity(meta, "image").get("sha256")
    if recorded is not None and header.sha256 != recorded:
        raise InputError(path, f"image changed since `alice prepare` read it: sha256 {header.sha256[:12]}..., "
                               f"prepared {recorded[:12]}... (rerun prepare)")
    return image, np.asarray(header.affine, dtype=np.float64)


def to_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`array` with its voxel axes flipped/permuted to RAS and the affine of that grid (the same
    world positions; no resampling)."""
    from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation

    ornt = io_orientation(affine)
    ras = apply_orientation(array, ornt)
    return np.ascontiguousarray(ras), affine @ inv_ornt_aff(ornt, array.shape)


def _image_for_nifti(image: np.ndarray) -> np.ndarray:
    """int16 when every voxel is an integer HU in int16's range (CT as released), else float32."""
    info = np.iinfo(np.int16)
    if image.size and np.all(np.rint(image) == image) and image.min() >= info.min and image.max() <= info.max:
        return image.astype(np.int16)
    return image.astype(np.float32)


def _save_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.set_data_dtype(array.dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))


def dataset_name(dataset: str, fold: int) -> str:
    return f"Dataset{DATASET_IDS[dataset]:03d}_{dataset}fold{int(fold)}"


def dataset_json(dataset: str, n_training: int) -> dict[str, Any]:
    """nnU-Net's dataset.json: one CT channel, the dataset's labels, NIfTI read with NibabelIO."""
    from alice.labels import LABEL_NAMES

    organs = LABEL_NAMES[dataset]
    labels = {"background": 0, **{organs[i]: int(i) for i in sorted(organs)}}
    return {
        "channel_names": {"0": "CT"},
        "labels": labels,
        "numTraining": int(n_training),
        "file_ending": ".nii.gz",
        "overwrite_image_reader_writer": "NibabelIO",
        "name": f"{dataset} (alice harness export)",
    }


def export_raw(dataset: str, data_dir: str | Path, case_ids: Sequence[str], raw_dataset_dir: str | Path,
               progress: bool = False) -> dict[str, Any]:
    """Write `case_ids` (prepared cases of `data_dir`) into nnU-Net's raw layout in
    `raw_dataset_dir` (module docstring, step 1); return the dataset.json written."""
    from tqdm import tqdm

    from alice.data.validate import read_source_label
    from alice.io import write_json

    if dataset not in DATASET_IDS:
        raise ConfigError("--dataset", f"nnU-Net runs on {', '.join(DATASET_IDS)}, not '{dataset}'")
    data_dir, raw = Path(data_dir), Path(raw_dataset_dir)
    if not case_ids:
        raise InputError(data_dir / "folds.json", "no training cases to export")
    (raw / "imagesTr").mkdir(parents=True, exist_ok=True)
    (raw / "labelsTr").mkdir(parents=True, exist_ok=True)
    for case_id in tqdm(case_ids, desc="nnU-Net export", unit="case", disable=not progress):
        case_json = data_dir / f"{case_id}.json"
        meta = _case_meta(data_dir, case_id)
        image, affine = source_image(meta, case_json)
        label, _label_affine, _spacing = read_source_label(meta, case_json, dataset)
        if label.shape != image.shape:
            raise InputError(case_json, f"source label shape {label.shape} differs from the image's {image.shape}")
        # one grid for both: the image's (prepare checked the label's affine against it)
        image_ras, affine_ras = to_ras(image, affine)
        label_ras, _ = to_ras(label, affine)
        _save_nifti(raw / "imagesTr" / f"{case_id}_0000.nii.gz", _image_for_nifti(image_ras), affine_ras)
        _save_nifti(raw / "labelsTr" / f"{case_id}.nii.gz", label_ras.astype(np.uint8), affine_ras)
    info = dataset_json(dataset, len(case_ids))
    write_json(raw / "dataset.json", info)
    return info


# -------------------------------------------------------------------------------------- planning
def _ras_to_plan_axes(values: Sequence, transpose_forward: Sequence[int]) -> list:
    """[x, y, z] (RAS) -> the plan's axis order. nnU-Net's arrays are (z, y, x) (NibabelIO
    transposes), then permuted by the plan's transpose_forward."""
    zyx = list(values)[::-1]
    return [zyx[int(axis)] for axis in transpose_forward]


def override_plans(plans: dict[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
    """`plans` with the settings' batch size, patch size and base feature count in
    CONFIGURATION. A new patch size gets the topology nnU-Net's planner would give it
    (`get_pool_and_conv_props`: poolings, kernel sizes, stages); features double per stage from
    the base up to nnU-Net's cap (MAX_FEATURES), as the planner's `_features_per_stage`."""
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    config = plans["configurations"][CONFIGURATION]
    arch = config["architecture"]["arch_kwargs"]
    if settings.get("batch_size") is not None:
        config["batch_size"] = int(settings["batch_size"])
    if settings.get("patch_size") is not None:
        spacing = [float(s) for s in config["spacing"]]
        wanted = _ras_to_plan_axes(settings["patch_size"], plans["transpose_forward"])
        _, pool_sizes, conv_sizes, patch, _ = get_pool_and_conv_props(spacing, wanted, 4, 999999)
        n_stages = len(pool_sizes)
        arch.update({
            "n_stages": n_stages,
            "kernel_sizes": [list(map(int, k)) for k in conv_sizes],
            "strides": [list(map(int, s)) for s in pool_sizes],
            "n_conv_per_stage": [int(arch["n_conv_per_stage"][0])] * n_stages,
            "n_conv_per_stage_decoder": [int(arch["n_conv_per_stage_decoder"][0])] * (n_stages - 1),
        })
        config["patch_size"] = [int(p) for p in patch]
    base = settings.get("base_features") or int(arch["features_per_stage"][0])
    arch["features_per_stage"] = [min(MAX_FEATURES, int(base) * 2 ** i) for i in range(int(arch["n_stages"]))]
    return plans


def plan_and_preprocess(dataset_id: int, settings: Mapping[str, Any], threads: int, progress: bool) -> dict:
    """nnU-Net's fingerprint, plans (3d_fullres) and preprocessing of `dataset_id`; the plans used."""
    from batchgenerators.utilities.file_and_folder_operations import load_json, save_json
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess,
    )
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name

    extract_fingerprints([dataset_id], num_processes=threads, check_dataset_integrity=True, clean=True,
                         verbose=False, show_progress_bar=progress)
    spacing = settings.get("target_spacing")
    plans_identifier = plan_experiments([dataset_id], overwrite_target_spacing=None if spacing is None
                                        else tuple(float(s) for s in spacing[::-1]))
    plans_file = Path(str(nnUNet_preprocessed)) / convert_id_to_dataset_name(dataset_id) / f"{plans_identifier}.json"
    plans = override_plans(load_json(str(plans_file)), settings)
    save_json(plans, str(plans_file), sort_keys=False)
    preprocess([dataset_id], plans_identifier, configurations=(CONFIGURATION,), num_processes=(threads,),
               verbose=False)
    return plans


# -------------------------------------------------------------------------------------- training
_TRAINER_CLASS = None


def _trainer_class():
    """nnUNetTrainerDemo, built on first use: nnunetv2 is imported only once the stage has set
    nnU-Net's environment (some of it is read at import time)."""
    global _TRAINER_CLASS
    if _TRAINER_CLASS is not None:
        return _TRAINER_CLASS
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    class nnUNetTrainerDemo(nnUNetTrainer):
        """nnU-Net's trainer with the harness's schedule: epochs, iterations per epoch,
        validation iterations, initial lr and mirroring augmentation set by `configure` before
        training (nnU-Net's defaults where a setting is null). Batch and patch size come from
        the plans. Only the final checkpoint is written (no "best EMA" one: the final model is
        scored)."""

        train_mirroring = True

        def configure(self, settings: Mapping[str, Any]) -> None:
            self.num_epochs = int(training_value(settings, "epochs"))
            self.num_iterations_per_epoch = int(training_value(settings, "iterations_per_epoch"))
            self.num_val_iterations_per_epoch = int(training_value(settings, "val_iterations"))
            self.initial_lr = float(training_value(settings, "initial_lr"))
            self.train_mirroring = bool(training_value(settings, "train_mirroring"))

        def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
            """nnU-Net's; without train_mirroring as its nnUNetTrainerNoMirroring: no mirror
            axes for augmentation, none allowed at test time."""
            rotation, dummy_2d, initial_patch_size, mirror_axes = \
                super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
            if not self.train_mirroring:
                mirror_axes = None
                self.inference_allowed_mirroring_axes = None
            return rotation, dummy_2d, initial_patch_size, mirror_axes

        def save_checkpoint(self, filename: str) -> None:
            if os.path.basename(filename) == CHECKPOINT:
                super().save_checkpoint(filename)

    nnUNetTrainerDemo.__module__ = __name__
    nnUNetTrainerDemo.__qualname__ = "nnUNetTrainerDemo"
    _TRAINER_CLASS = nnUNetTrainerDemo
    return nnUNetTrainerDemo


def __getattr__(name: str):  # `from alice.downstream.nnunet import nnUNetTrainerDemo`
    if name == "nnUNetTrainerDemo":
        return _trainer_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train(plans: dict[str, Any], info: dict[str, Any], settings: Mapping[str, Any], device) -> Any:
    """Train nnUNetTrainerDemo on every preprocessed case; the trained trainer."""
    import copy

    trainer_cls = _trainer_class()
    plans = copy.deepcopy(plans)
    plans["continue_training"] = False  # nnUNetTrainer.__init__ pops it (nnUNetv2_train sets it)
    trainer = trainer_cls(plans=plans, configuration=CONFIGURATION, fold=TRAIN_FOLD, dataset_json=info,
                          device=device)
    trainer.configure(settings)
    seed_everything(settings["seed"])
    with training_environment(settings["da_processes"]):
        trainer.run_training()
    return trainer


# ------------------------------------------------------------------------------------ prediction
def _load_weights(path: Path) -> dict:
    """nnU-Net's checkpoint `path` as a dict, loaded weights_only (the numpy scalars of its
    training log allowed, nothing else unpickled); an InputError naming it if unreadable."""
    import torch

    try:
        from numpy._core.multiarray import scalar  # numpy 2
    except ImportError:  # numpy 1
        from numpy.core.multiarray import scalar
    # the logger's numpy floats in the checkpoint: numpy scalars and their dtypes, nothing else
    safe = [scalar, np.dtype, *(getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType"))]
    try:
        with torch.serialization.safe_globals(safe):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - an unreadable checkpoint is bad input
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(path, f"not a readable nnU-Net checkpoint ({first})") from None
    if not isinstance(ckpt, dict) or "network_weights" not in ckpt:
        raise InputError(path, "nnU-Net checkpoint lacks 'network_weights'")
    return ckpt


def save_model(checkpoint: Path, dst: Path) -> None:
    """nnU-Net's final checkpoint without its optimizer state (what prediction needs: the weights,
    trainer name, init args, mirroring axes; nnUNetPredictor loads it as it is), atomically."""
    import torch

    from alice.io import atomic_path

    ckpt = _load_weights(checkpoint)
    ckpt["optimizer_state"] = None
    ckpt["grad_scaler_state"] = None
    with atomic_path(dst) as tmp:
        torch.save(ckpt, tmp)


def make_predictor(trainer, checkpoint: Path, settings: Mapping[str, Any], device, progress: bool):
    """nnU-Net's predictor on the trainer's network, with the weights of `checkpoint`."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    ckpt = _load_weights(checkpoint)
    trainer.set_deep_supervision_enabled(False)
    network = trainer.network
    network.load_state_dict(ckpt["network_weights"])
    network.eval()
    predictor = nnUNetPredictor(tile_step_size=settings["tile_step_size"], use_gaussian=True,
                                use_mirroring=settings["test_mirroring"],
                                perform_everything_on_device=device.type == "cuda",
                                device=device, verbose=False, verbose_preprocessing=False, allow_tqdm=progress)
    mirror_axes = ckpt.get("inference_allowed_mirroring_axes", trainer.inference_allowed_mirroring_axes)
    predictor.manual_initialization(network, trainer.plans_manager, trainer.configuration_manager,
                                    [ckpt["network_weights"]], trainer.dataset_json, type(trainer).__name__,
                                    tuple(mirror_axes) if mirror_axes is not None else None)
    return predictor


def predict_case(predictor, image: np.ndarray, affine: np.ndarray, meta: Mapping[str, Any]) -> np.ndarray:
    """Labels of one source image (HU, file voxel order, its affine) on the source grid: reoriented
    to RAS as exported, predicted by nnU-Net (its preprocessing, sliding window and resampling back
    to the input grid), mapped back onto the case's original grid with `invert_to_original`."""
    from nibabel.affines import voxel_sizes

    from alice.data.preprocess import invert_to_original

    image_ras, affine_ras = to_ras(image, affine)
    props = {"spacing": [float(s) for s in voxel_sizes(affine_ras)[::-1]]}
    data = image_ras.astype(np.float32).transpose(2, 1, 0)[None]  # NibabelIO's (c, z, y, x)
    seg = predictor.predict_single_npy_array(data, props, None, None, False)
    pred_ras = np.asarray(seg).transpose(2, 1, 0).astype(np.uint8)
    grid = {"cached": {"shape": list(pred_ras.shape), "affine": affine_ras.tolist()}, "original": meta["original"]}
    return invert_to_original(pred_ras, grid)


# ------------------------------------------------------------------------------------------ stage
def _copy_atomic(src: Path, dst: Path) -> None:
    from alice.io import atomic_path

    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def run_nnunet(
    *,
    dataset: str,
    fold: int,
    data_dir: str | Path,
    out_dir: str | Path,
    work_dir: str | Path,
    settings: Mapping[str, Any] | None,
    threads: int = 1,
    device: str = "cpu",
    progress: bool = True,
    keep_work: bool = False,
) -> dict[str, Any]:
    """Export, plan, preprocess, train, predict and score one fold (module docstring); returns
    the metrics written to `out_dir/metrics.json`."""
    import torch

    from alice.downstream import model_settings_hash
    from alice.downstream.inference import (
        METRICS_FILE,
        _label_identity,
        _nan_to_none,
        _nanmean,
        _original_label,
        _save_prediction,
        check_threads,
        predictions_dir,
        resolve_device,
    )
    from alice.io import atomic_set, file_sha256, json_text, remove_set, write_json
    from alice.metrics import mean_over_organs, score_case
    from alice.version import code_version

    t0 = time.perf_counter()
    if dataset not in DATASET_IDS:
        raise ConfigError("--dataset", f"nnU-Net runs on {', '.join(DATASET_IDS)}, not '{dataset}'")
    settings = check_settings(settings)
    threads = check_threads(threads)
    dev = resolve_device(device)
    data_dir, out_dir, work_dir = Path(data_dir), Path(out_dir), Path(work_dir)
    if not (data_dir / "manifest.json").is_file():
        raise InputError(data_dir / "manifest.json", "prepared cache not found (run `alice prepare` first)")
    train_ids, test_ids, split = fold_cases(data_dir, dataset, fold)
    for case_id in [*train_ids, *test_ids]:  # every case record is there before anything is written
        _case_meta(data_dir, case_id)

    metrics_path = out_dir / METRICS_FILE
    pred_dir = predictions_dir(metrics_path)
    remove_set(metrics_path, [pred_dir])  # no score outlives the model it scored
    (out_dir / SUMMARY_FILE).unlink(missing_ok=True)
    claim_work_dir(work_dir, dataset, fold)
    torch.set_num_threads(threads)
    name = dataset_name(dataset, fold)
    dataset_id = DATASET_IDS[dataset]

    with nnunet_environment(work_dir, threads, dev.type), \
            contextlib.redirect_stdout(sys.stderr):  # nnU-Net's chatter: the stage's log, not its stdout
        info = export_raw(dataset, data_dir, train_ids, work_paths(work_dir)["nnUNet_raw"] / name, progress)
        t_plan = time.perf_counter()
        plans = plan_and_preprocess(dataset_id, settings, threads, progress)
        t_train = time.perf_counter()
        trainer = train(plans, info, settings, dev)
        train_seconds = time.perf_counter() - t_train
        fold_folder = Path(trainer.output_folder)
        checkpoint = fold_folder / CHECKPOINT
        if not checkpoint.is_file():
            raise InputError(checkpoint, "nnU-Net wrote no final checkpoint")
        save_model(checkpoint, out_dir / CHECKPOINT)
        _copy_atomic(Path(trainer.output_folder_base) / PLANS_FILE, out_dir / PLANS_FILE)
        _copy_atomic(Path(trainer.output_folder_base) / DATASET_FILE, out_dir / DATASET_FILE)
        _copy_atomic(Path(trainer.log_file), out_dir / TRAINING_LOG)
        model_path = out_dir / CHECKPOINT
        model_sha256 = file_sha256(model_path)
        predictor = make_predictor(trainer, model_path, settings, dev, progress)
        logger = trainer.logger

        t_predict = time.perf_counter()
        from tqdm import tqdm

        cases: dict[str, Any] = {}
        case_mean: dict[str, Any] = {}
        labels: dict[str, Any] = {}
        with atomic_set(metrics_path, [pred_dir]) as (tmp_metrics, (tmp_preds,)):
            for case_id in tqdm(test_ids, desc=f"nnU-Net {split}", unit="case", disable=not progress):
                meta = _case_meta(data_dir, case_id)
                image, affine = source_image(meta, data_dir / f"{case_id}.json")
                gt, gt_affine, spacing = _original_label(meta, case_id, data_dir)
                pred = predict_case(predictor, image, affine, meta)
                if pred.shape != gt.shape:
                    raise InputError(data_dir / f"{case_id}.json", f"prediction grid {pred.shape} is not the source "
                                                                  f"label's {gt.shape}")
                _save_prediction(tmp_preds / f"{case_id}.nii.gz", pred, gt_affine)
                scores = score_case(gt, pred, spacing, dataset)
                cases[case_id] = scores
                case_mean[case_id] = mean_over_organs(scores)
                labels[case_id] = _label_identity(meta)
            mean = {key: _nanmean([m[key] for m in case_mean.values()]) for key in ("dsc", "nsd")}
            predict_seconds = time.perf_counter() - t_predict
            record = {"settings": {"nnunet": settings, "nnunetv2": _nnunet_version(), "configuration": CONFIGURATION},
                      "encoder_config": None, "init": "scratch", "seed": settings["seed"], "dataset": dataset}
            digest = model_settings_hash(record, data_dir)
            config = plans["configurations"][CONFIGURATION]
            epochs = int(training_value(settings, "epochs"))
            iterations = int(training_value(settings, "iterations_per_epoch"))
            summary = {
                "dataset": dataset, "backbone": BACKBONE, "method": METHOD, "init": "scratch", "fold": int(fold),
                "seed": settings["seed"], "device": str(dev), "threads": threads,
                "n_train": len(train_ids), "train_cases": train_ids,
                "epochs": epochs, "steps_per_epoch": iterations, "steps": epochs * iterations,
                "val_iterations": int(training_value(settings, "val_iterations")),
                "initial_lr": float(training_value(settings, "initial_lr")),
                "batch_size": int(config["batch_size"]), "patch_size": [int(p) for p in config["patch_size"]],
                "spacing": [float(s) for s in config["spacing"]],
                "final_loss": _last(logger, "train_losses"), "final_pseudo_dice": _last(logger, "mean_fg_dice"),
                "seconds": round(time.perf_counter() - t0, 3),
                "prepare_seconds": round(t_train - t_plan, 3), "train_seconds": round(train_seconds, 3),
                "seconds_per_step": round(train_seconds / max(1, epochs * iterations), 4),
                "predict_seconds": round(predict_seconds, 3),
                "model": str(model_path), "nnunetv2": _nnunet_version(), "settings": settings,
                "settings_hash": digest, "code_version": code_version(),
            }
            metrics = {
                "dataset": dataset,
                "method": METHOD,
                "backbone": BACKBONE,
                "fold": int(fold),
                "split": split,
                "cases": cases,
                "case_mean": case_mean,
                "mean": mean,
                "n_cases": len(test_ids),
                "seconds": round(time.perf_counter() - t0, 3),
                "model": str(model_path),
                "model_sha256": model_sha256,
                "labels": labels,
                "predictions": str(pred_dir),
                "settings_hash": digest,
                "code_version": code_version(),
            }
            write_json(out_dir / SUMMARY_FILE, summary)
            tmp_metrics.write_text(json_text(_nan_to_none(metrics)))
    if not keep_work:
        shutil.rmtree(work_dir, ignore_errors=True)
    log.info("nnU-Net %s fold %d: %d training cases, %d steps in %.1f s; %s: mean DSC %.4f NSD %.4f over %d cases",
             dataset, fold, len(train_ids), summary["steps"], train_seconds, split, mean["dsc"], mean["nsd"],
             len(test_ids))
    return metrics


def _last(logger, key: str) -> float | None:
    """The last value nnU-Net's logger holds for `key` (None when it has none or it is not finite)."""
    try:
        values = logger.get_value(key, step=None)
        value = float(values[-1]) if len(values) else math.nan
    except (AttributeError, KeyError, TypeError, ValueError, IndexError):
        return None
    return value if math.isfinite(value) else None


def _nnunet_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nnunetv2")
    except PackageNotFoundError:
        return None
