"""Write phantom datasets in the on-disk layouts of the public releases.

FLARE22 (`out/`):
    Training/FLARE22_LabeledCase50/images/FLARE22_Tr_0001_0000.nii.gz
    Training/FLARE22_LabeledCase50/labels/FLARE22_Tr_0001.nii.gz
    Training/FLARE22_UnlabeledCase1-1000/Case_00001_0000.nii.gz        (first half of the pool)
    Training/FLARE22_UnlabeledCase1001-2000/Case_01001_0000.nii.gz     (second half)
    Validation/FLARETs_0001_0000.nii.gz, Validation/labels/FLARETs_0001.nii.gz
BTCV (`out/`):
    RawData/Training/img/img0001.nii.gz, RawData/Training/label/label0001.nii.gz
        (ids 0001-0010 then 0021-0040, the official labeled list)
    RawData/Testing/img/img0061.nii.gz (ids 0061-0080)
MosMed (`out/` is the COVID19_1110 folder):
    studies/CT-0/study_0001.nii.gz ... (numbered consecutively across CT-0, CT-1, ...)
    masks/study_XXXX_mask.nii.gz for the first `masks` CT-1 studies
Ground truth of every case, outside the release folders: `out/phantom_truth/{case_id}.json`.
The marker `out/.alice-phantom.json` (`outdir.py`) lists the files, seed, counts and geometry;
only a folder holding such an earlier output (or nothing) is written to.

Each case is drawn from its own generator seeded with
`SeedSequence([seed, dataset index, split index, case index])`, so changing one count never
changes another case, and the written bytes are identical across runs and worker counts.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alice.data.phantom.anatomy import LABEL_MAPS, label_lut
from alice.data.phantom.niftiio import save_nifti_gz
from alice.data.phantom.outdir import claim
from alice.data.phantom.render import render_case
from alice.errors import ConfigError, HarnessError
from alice.io import write_json

DATASET_INDEX = {"flare22": 0, "btcv": 1, "mosmed": 2}
COUNT_KEYS = {
    "flare22": ("labeled", "unlabeled", "validation"),
    "btcv": ("labeled", "test"),
    "mosmed": ("per_category", "masks"),
}
BTCV_LABELED_IDS = tuple(range(1, 11)) + tuple(range(21, 41))
BTCV_TEST_IDS = tuple(range(61, 81))

DEFAULT_GEOMETRY: dict = {
    "inplane_voxels": 96,  # matrix size (real scanners: 512)
    "fov_mm": [340.0, 460.0],  # in-plane field of view range; spacing = fov / inplane_voxels
    "slice_mm": [4.0, 6.0],  # slice spacing range (real: about 0.6-5 mm)
    "truncate_prob": 0.3,  # share of abdomen scans cut at the top or bottom of the abdomen
}
TRUTH_DIR = "phantom_truth"


@dataclass(frozen=True)
class Job:
    dataset: str
    split: str
    key: tuple[int, int, int, int]  # [seed, dataset, split, case]
    case_id: str
    region: str
    image: str  # paths relative to the dataset root
    label: str | None = None
    mask: str | None = None
    category: int | None = None


def check_geometry(geometry: dict | None) -> dict:
    geo = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in DEFAULT_GEOMETRY.items()}
    if geometry is None:
        return geo
    if not isinstance(geometry, dict):
        raise ConfigError("geometry", f"must be a mapping, got {type(geometry).__name__}")
    for key, value in geometry.items():
        if key not in DEFAULT_GEOMETRY:
            raise ConfigError(f"geometry.{key}", f"unknown key (known: {', '.join(DEFAULT_GEOMETRY)})")
        geo[key] = value
    n = geo["inplane_voxels"]
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 16 <= n <= 1024:
        raise ConfigError("geometry.inplane_voxels", f"must be an integer in 16..1024, got {n!r}")
    for key, lo_ok, hi_ok in (("fov_mm", 50.0, 1000.0), ("slice_mm", 0.1, 20.0)):
        v = geo[key]
        try:
            lo, hi = (float(x) for x in v)
        except (TypeError, ValueError):
            raise ConfigError(f"geometry.{key}", f"must be a [low, high] pair of numbers, got {v!r}") from None
        if not (lo_ok <= lo <= hi <= hi_ok):
            raise ConfigError(f"geometry.{key}", f"need {lo_ok} <= low <= high <= {hi_ok}, got {v!r}")
        geo[key] = [lo, hi]
    p = geo["truncate_prob"]
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ConfigError("geometry.truncate_prob", f"must be a number in [0, 1], got {p!r}")
    geo["inplane_voxels"] = int(n)
    geo["truncate_prob"] = float(p)
    return geo


def _count(counts: dict, key: str, limit: int | None = None) -> int:
    v = counts[key]
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
        raise ConfigError(f"counts.{key}", f"must be a non-negative integer, got {v!r}")
    if limit is not None and v > limit:
        raise ConfigError(f"counts.{key}", f"at most {limit} (the release's id range), got {v}")
    return int(v)


def check_counts(dataset: str, counts: dict) -> dict:
    if dataset not in COUNT_KEYS:
        raise HarnessError(f"unknown phantom dataset {dataset!r} (known: {', '.join(COUNT_KEYS)})")
    if not isinstance(counts, dict):
        raise ConfigError("counts", f"must be a mapping, got {type(counts).__name__}")
    expected = COUNT_KEYS[dataset]
    for key in counts:
        if key not in expected:
            raise ConfigError(f"counts.{key}", f"unknown for {dataset} (expected: {', '.join(expected)})")
    for key in expected:
        if key not in counts:
            raise ConfigError(f"counts.{key}", f"missing for {dataset}")
    if dataset == "flare22":
        return {"labeled": _count(counts, "labeled", 9999), "unlabeled": _count(counts, "unlabeled", 2000), "validation": _count(counts, "validation", 9999)}
    if dataset == "btcv":
        return {"labeled": _count(counts, "labeled", len(BTCV_LABELED_IDS)), "test": _count(counts, "test", len(BTCV_TEST_IDS))}
    per = counts["per_category"]
    if not isinstance(per, (list, tuple)) or len(per) != 5:
        raise ConfigError("counts.per_category", f"must list 5 counts (CT-0..CT-4), got {per!r}")
    per_checked = [_count({"per_category": v}, "per_category") for v in per]
    if sum(per_checked) > 9999:
        raise ConfigError("counts.per_category", "at most 9999 studies in total")
    masks = _count(counts, "masks")
    if masks > per_checked[1]:
        raise ConfigError("counts.masks", f"masks go to CT-1 studies: at most {per_checked[1]}, got {masks}")
    return {"per_category": per_checked, "masks": masks}


def plan_jobs(dataset: str, counts: dict, seed: int) -> list[Job]:
    d = DATASET_INDEX[dataset]
    jobs: list[Job] = []
    if dataset == "flare22":
        lab = "Training/FLARE22_LabeledCase50"
        for i in range(counts["labeled"]):
            cid = f"FLARE22_Tr_{i + 1:04d}"
            jobs.append(Job(dataset, "labeled", (seed, d, 0, i), cid, "abdomen", f"{lab}/images/{cid}_0000.nii.gz", f"{lab}/labels/{cid}.nii.gz"))
        n = counts["unlabeled"]
        first = (n + 1) // 2
        for i in range(n):
            if i < first:
                cid, folder = f"Case_{i + 1:05d}", "Training/FLARE22_UnlabeledCase1-1000"
            else:
                cid, folder = f"Case_{1001 + i - first:05d}", "Training/FLARE22_UnlabeledCase1001-2000"
            jobs.append(Job(dataset, "unlabeled", (seed, d, 1, i), cid, "abdomen", f"{folder}/{cid}_0000.nii.gz"))
        for i in range(counts["validation"]):
            cid = f"FLARETs_{i + 1:04d}"
            jobs.append(Job(dataset, "validation", (seed, d, 2, i), cid, "abdomen", f"Validation/{cid}_0000.nii.gz", f"Validation/labels/{cid}.nii.gz"))
    elif dataset == "btcv":
        for i in range(counts["labeled"]):
            num = BTCV_LABELED_IDS[i]
            jobs.append(Job(dataset, "labeled", (seed, d, 0, i), f"img{num:04d}", "abdomen", f"RawData/Training/img/img{num:04d}.nii.gz", f"RawData/Training/label/label{num:04d}.nii.gz"))
        for i in range(counts["test"]):
            num = BTCV_TEST_IDS[i]
            jobs.append(Job(dataset, "test", (seed, d, 1, i), f"img{num:04d}", "abdomen", f"RawData/Testing/img/img{num:04d}.nii.gz"))
    else:
        number = 0
        for category, n in enumerate(counts["per_category"]):
            for i in range(n):
                number += 1
                cid = f"study_{number:04d}"
                mask = f"masks/{cid}_mask.nii.gz" if category == 1 and i < counts["masks"] else None
                jobs.append(Job(dataset, f"CT-{category}", (seed, d, category, i), cid, "chest", f"studies/CT-{category}/{cid}.nii.gz", mask=mask, category=category))
    return jobs


def job_files(jobs: list[Job]) -> list[str]:
    """Every file the jobs write, relative to the dataset root."""
    files = []
    for job in jobs:
        files += [f for f in (job.image, job.label, job.mask) if f is not None]
        files.append(f"{TRUTH_DIR}/{job.case_id}.json")
    return files


def run_job(root: str, job: Job, geometry: dict) -> tuple[str, float]:
    """Render and write one case (image, label or mask, truth JSON). Runs in worker processes."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(np.random.SeedSequence(list(job.key)))
    case = render_case(rng, job.region, geometry, job.category)
    root_p = Path(root)
    save_nifti_gz(root_p / job.image, case.image, case.affine, np.int16)
    truth = {"case_id": job.case_id, "dataset": job.dataset, "split": job.split, "seed": job.key[0], "seed_sequence": list(job.key)}
    truth["files"] = {"image": job.image, "label": job.label, "mask": job.mask}
    if job.label is not None:
        labels = label_lut(LABEL_MAPS[job.dataset])[case.structures]
        save_nifti_gz(root_p / job.label, labels, case.affine, np.uint8)
        truth["label_ids_present"] = [int(v) for v in np.unique(labels) if v]
    if job.mask is not None:
        save_nifti_gz(root_p / job.mask, case.mask, case.affine, np.uint8)
    truth.update(case.truth)
    write_json(root_p / TRUTH_DIR / f"{job.case_id}.json", truth)
    return job.case_id, time.perf_counter() - t0


def write_dataset(dataset: str, out, counts: dict, seed: int = 0, geometry: dict | None = None, *, workers: int | None = None) -> dict:
    """Generate one phantom dataset under `out` in its release layout; returns a summary.

    `out` must be missing, empty or an earlier phantom (recognised by its `MARKER` file, which this
    writes first): anything else is refused before any write (`outdir.claim`).
    `workers`: processes to use (default: min(2, CPU count)); the output does not depend on it.
    """
    counts = check_counts(dataset, counts)
    geo = check_geometry(geometry)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError("seed", f"must be a non-negative integer, got {seed!r}")
    root = Path(out)
    jobs = plan_jobs(dataset, counts, int(seed))
    claim(root, job_files(jobs), {"dataset": dataset, "seed": int(seed), "counts": counts, "geometry": geo})
    t0 = time.perf_counter()
    workers = min(2, os.cpu_count() or 1) if workers is None else max(1, int(workers))
    if workers > 1 and len(jobs) > 1:
        # fork where it is safe (Linux; the workers only use numpy/scipy/nibabel), spawn elsewhere
        ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx) as pool:
            results = list(pool.map(run_job, [str(root)] * len(jobs), jobs, [geo] * len(jobs)))
    else:
        results = [run_job(str(root), job, geo) for job in jobs]
    seconds = time.perf_counter() - t0
    written = {split: sum(1 for j in jobs if j.split == split) for split in dict.fromkeys(j.split for j in jobs)}
    return {
        "dataset": dataset,
        "root": str(root),
        "seed": int(seed),
        "geometry": geo,
        "counts": counts,
        "written": written,
        "cases": len(jobs),
        "seconds": round(seconds, 2),
        "case_ids": [cid for cid, _ in results],
        "truth_dir": str(root / TRUTH_DIR),
    }
