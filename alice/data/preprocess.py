"""Preprocessing cache: one memory-mappable array per case plus a JSON record of both grids.

`prepare(dataset, root, out_dir, settings)` writes, per case,
  `{case_id}_image.npy` (settings["cache_dtype"], default float32),
  `{case_id}_label.npy` (uint8, labeled cases only),
  `{case_id}.json` (metadata; written last, it marks the case complete),
and finally `manifest.json`, only when every case succeeded.
The folder is one unit: `prepare` writes only into a missing or empty folder, or one holding
nothing but its own earlier output (claimed by the marker `.alice-prepare.json`; the `folds.json`
that `alice folds` writes beside the cache counts as part of it), and it reads the release and
checks every header before it drops an earlier manifest or writes anything. Cases of an earlier
run that the release no longer holds are removed when the new manifest is written.

Each case record keeps, under identity.source, path, size and mtime of every source file (what a
rerun compares to reuse the case) and its fingerprint (`alice.data.validate.source_fingerprint`:
sha256 of the bytes read, header shape and affine), so that scoring can refuse a changed label.

Warnings (logged on the "alice" logger, listed under "warnings" in the case record and in the
manifest, keyed by case id; files of the release the layout skipped under "release"): a constant
(e.g. all-air) image, and an organ of the source label that vanishes on the cached grid.

Segmentation datasets and the FLARE22 pool: reorient to RAS, resample to settings["spacing"] (image
bilinear, label nearest), clip to settings["window"] = [lo, hi] HU and scale to [0, 1].
MosMed (paper supplementary B.2): reorient to RAS, rotate by 90° × settings["rotate90"] in the
axial (x, y) plane (same as `np.rot90(a, k, axes=(0, 1))`), clip settings["window"], scale, resize
to settings["size"] (trilinear); no spacing resample. No cached array may exceed
`MAX_CACHED_VOXELS`: a spacing or size that would is refused, naming the case, before any write.

Arrays are in nibabel (x, y, z) voxel order without a channel axis. The cached affine maps cached
voxel indices to the same world (RAS+ mm) coordinates as the source file's affine, so
`invert_to_original` can map a cached-grid label map back onto the source file's voxel grid.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any, Mapping

import nibabel as nib
import numpy as np
from nibabel.affines import voxel_sizes

from alice import __version__
from alice.data.layouts import CASE_ID, DATASETS, Case, discover_release
from alice.data.nifti import MAX_SPACING_MM, MIN_SPACING_MM, Header
from alice.data.validate import (
    FINGERPRINT_KEYS,
    STAT_KEYS,
    LoadedCase,
    check_headers,
    read_case,
    source_fingerprint,
)
from alice.io import settings_hash
from alice.errors import ConfigError, InputError
from alice.io import files_under, read_json, save_npy, write_json
from alice.labels import LABEL_NAMES

# Bump when a change to this module changes cached arrays: old caches are then recomputed.
PREPROCESS_VERSION = 1
MANIFEST = "manifest.json"
CACHE_DTYPES = ("float32", "float16")
_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))  # nibabel's world convention (RAS+)
# The largest cached array (voxels): 4 GiB as float32, beyond any sane CT grid (512² × 2000 is
# 2^29); a finer spacing or larger size is a typo that would otherwise end in an allocation error.
MAX_CACHED_VOXELS = 2**30
# The output folder: the marker claims it; `alice folds` writes its splits beside the cache.
MARKER = ".alice-prepare.json"
WRITER = "alice prepare"
FOLDS = "folds.json"
_CASE_FILE = re.compile(rf"(?P<case>{CASE_ID.pattern})(\.json|_image\.npy|_label\.npy)", re.ASCII)
_TEMPORARY = re.compile(r"\.(?P<name>.+)\.[A-Za-z0-9_]+\.tmp.*", re.ASCII | re.DOTALL)  # alice.io.atomic_path
_ADVICE = "empty it or choose another folder"

log = logging.getLogger("alice")


# ----------------------------------------------------------------------------------------- settings
def _require(settings: Mapping[str, Any], key: str, dataset: str) -> Any:
    if key not in settings or settings[key] is None:
        raise ConfigError(key, f"required to prepare {dataset}")
    return settings[key]


def _floats(settings: Mapping[str, Any], key: str, dataset: str, n: int) -> list[float]:
    value = _require(settings, key, dataset)
    try:
        out = [float(v) for v in value]
    except (TypeError, ValueError):
        raise ConfigError(key, f"must be a list of {n} numbers, got {value!r}") from None
    if len(out) != n or not all(np.isfinite(out)):
        raise ConfigError(key, f"must be a list of {n} finite numbers, got {value!r}")
    return out


def preprocessing_params(dataset: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings that determine the cached arrays (what the settings hash covers)."""
    if dataset not in DATASETS:
        raise ConfigError("dataset", f"unknown dataset '{dataset}' (known: {', '.join(DATASETS)})")
    window = _floats(settings, "window", dataset, 2)
    if not window[0] < window[1]:
        raise ConfigError("window", f"must be [lo, hi] with lo < hi, got {window}")
    cache_dtype = str(settings.get("cache_dtype") or "float32")
    if cache_dtype not in CACHE_DTYPES:
        raise ConfigError("cache_dtype", f"must be one of {CACHE_DTYPES}, got {cache_dtype!r}")
    params: dict[str, Any] = {
        "version": PREPROCESS_VERSION,
        "dataset": dataset,
        "orientation": "RAS",
        "window": window,
        "cache_dtype": cache_dtype,
    }
    if dataset == "mosmed":
        rotate = _require(settings, "rotate90", dataset)
        if isinstance(rotate, bool) or not isinstance(rotate, int):
            raise ConfigError("rotate90", f"must be an integer number of quarter turns, got {rotate!r}")
        size = _require(settings, "size", dataset)
        try:
            size_ints = [int(s) for s in size]
        except (TypeError, ValueError):
            raise ConfigError("size", f"must be 3 positive integers, got {size!r}") from None
        if len(size_ints) != 3 or min(size_ints) < 1 or size_ints != [float(s) for s in size]:
            raise ConfigError("size", f"must be 3 positive integers, got {size!r}")
        if math.prod(size_ints) > MAX_CACHED_VOXELS:
            raise ConfigError(
                "size", f"{size_ints} is {math.prod(size_ints):,} voxels, above MAX_CACHED_VOXELS = {MAX_CACHED_VOXELS:,}"
            )
        params.update(rotate90=rotate % 4, size=size_ints)
    else:
        spacing = _floats(settings, "spacing", dataset, 3)
        if min(spacing) <= 0:
            raise ConfigError("spacing", f"must be 3 positive voxel sizes in mm, got {spacing}")
        if not all(MIN_SPACING_MM <= s <= MAX_SPACING_MM for s in spacing):
            raise ConfigError(
                "spacing",
                f"{spacing} mm is outside what a CT scanner produces (MIN_SPACING_MM {MIN_SPACING_MM:g} to "
                f"MAX_SPACING_MM {MAX_SPACING_MM:g} mm per axis)",
            )
        params["spacing"] = spacing
    return params


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


# ---------------------------------------------------------------------------------- the transforms
def _meta_tensor(array: np.ndarray, affine: np.ndarray):
    import torch
    from monai.data import MetaTensor

    return MetaTensor(torch.from_numpy(np.ascontiguousarray(array)[None]), affine=torch.as_tensor(affine))


def _orient(mt):
    from monai.transforms import Orientation

    return Orientation(axcodes="RAS", labels=_RAS_LABELS)(mt)


def _affine_of(mt) -> np.ndarray:
    return np.asarray(mt.affine.detach().cpu().numpy(), dtype=np.float64)


def _window(x: np.ndarray, window: list[float]) -> np.ndarray:
    lo, hi = window
    out = np.clip(x.astype(np.float32, copy=False), lo, hi)
    out -= lo
    out /= hi - lo
    return np.clip(out, 0.0, 1.0, out=out)


def _mm_list(values) -> str:
    return "[" + ", ".join(f"{float(v):.4g}" for v in values) + "]"


def cached_shape(header: Header, spacing: list[float]) -> tuple[int, int, int]:
    """About the RAS grid that resampling `header`'s volume to `spacing` makes (its extent along
    each world axis at the new voxel size), known from the header alone."""
    sizes = voxel_sizes(header.affine)
    out = [1, 1, 1]
    for axis, (world, _flip) in enumerate(nib.io_orientation(header.affine)):
        w = int(world)
        out[w] = max(1, math.ceil(header.shape[axis] * sizes[axis] / spacing[w]))
    return tuple(out)  # type: ignore[return-value]


def check_cached_size(case_id: str, header: Header, params: Mapping[str, Any]) -> None:
    """Refuse, before anything is allocated, a resampled grid above `MAX_CACHED_VOXELS`."""
    if "spacing" not in params:
        return
    shape = cached_shape(header, params["spacing"])
    n = math.prod(shape)
    if n > MAX_CACHED_VOXELS:
        raise ConfigError(
            "spacing",
            f"{params['spacing']} mm would resample case {case_id} ({header.path}, {list(header.shape)} voxels of "
            f"{_mm_list(voxel_sizes(header.affine))} mm) to about {list(shape)} = {n:,} voxels, above "
            f"MAX_CACHED_VOXELS = {MAX_CACHED_VOXELS:,}",
        )


def _transform_segmentation(loaded: LoadedCase, params: Mapping[str, Any]):
    from monai.transforms import Spacing

    check_cached_size(loaded.case.case_id, loaded.header, params)  # before MONAI allocates the grid
    affine = loaded.header.affine
    spacing = params["spacing"]
    image = _orient(_meta_tensor(loaded.image, affine))
    image = Spacing(pixdim=spacing, mode="bilinear", dtype=np.float32)(image)
    image_affine = _affine_of(image)
    image_arr = image.detach().cpu().numpy()[0]
    del image
    label_arr = None
    if loaded.label is not None:
        label = _orient(_meta_tensor(loaded.label.astype(np.float32), affine))
        label = Spacing(pixdim=spacing, mode="nearest", dtype=np.float32)(label)
        if tuple(label.shape[1:]) != image_arr.shape:  # the contract: one grid for both
            raise AssertionError(
                f"{loaded.case.case_id}: resampled label shape {tuple(label.shape[1:])} != image {image_arr.shape}"
            )
        if not np.allclose(_affine_of(label), image_affine, atol=1e-4):
            raise AssertionError(f"{loaded.case.case_id}: resampled label and image affines differ")
        label_arr = np.rint(label.detach().cpu().numpy()[0]).astype(np.uint8)
        del label
    return _window(image_arr, params["window"]), label_arr, image_affine


def _transform_mosmed(loaded: LoadedCase, params: Mapping[str, Any]):
    from monai.transforms import Resize, Rotate90

    # Clipping and scaling are voxel-wise, so doing them before the reorientation and rotation
    # gives exactly the paper's order (orient, rotate, clip, scale, resize).
    image = _orient(_meta_tensor(_window(loaded.image, params["window"]), loaded.header.affine))
    image = Rotate90(k=params["rotate90"], spatial_axes=(0, 1))(image)
    image = Resize(spatial_size=tuple(params["size"]), mode="trilinear")(image)
    image_arr = np.clip(image.detach().cpu().numpy()[0], 0.0, 1.0)
    return image_arr, None, _affine_of(image)


# ------------------------------------------------------------------------------------- the cache
def _files(case_id: str, labeled: bool) -> dict[str, str | None]:
    return {
        "meta": f"{case_id}.json",
        "image": f"{case_id}_image.npy",
        "label": f"{case_id}_label.npy" if labeled else None,
    }


def _source(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _identity(case: Case) -> dict[str, Any]:
    """What a cached case must match to be reused (besides the settings hash)."""
    return {
        "case_id": case.case_id,
        "split": case.split,
        "category": case.category,
        "class_label": case.class_label,
        "source": {"image": _source(case.image), "label": _source(case.label), "mask": _source(case.mask)},
    }


def _reuse_part(identity: Mapping[str, Any]) -> dict[str, Any]:
    """`identity` without the source fingerprints (a rerun compares path, size and mtime only)."""
    sources = identity.get("source") or {}
    return {
        **identity,
        "source": {
            role: ({k: v for k, v in rec.items() if k in STAT_KEYS} if isinstance(rec, Mapping) else rec)
            for role, rec in sources.items()
        },
    }


def _fingerprinted(identity: Mapping[str, Any], headers: Mapping[str, Header | None]) -> dict[str, Any]:
    """`identity` with each source file's fingerprint added (headers as the data readers return
    them, with the sha256 of the bytes they read)."""
    sources = {}
    for role, record in identity["source"].items():
        header = headers.get(role)
        if record is not None and header is not None:
            record = {**record, **source_fingerprint(header)}
        sources[role] = record
    return {**identity, "source": sources}


def _has_fingerprints(identity: Mapping[str, Any]) -> bool:
    return all(
        rec is None or all(key in rec for key in FINGERPRINT_KEYS) for rec in (identity.get("source") or {}).values()
    )


def _cached_state(out_dir: Path, case: Case, digest: str, identity: Mapping[str, Any]) -> str:
    """"current", "unfingerprinted" (current, from a cache that recorded no fingerprints) or "stale"."""
    files = _files(case.case_id, case.label is not None)
    meta_path = out_dir / files["meta"]
    if not meta_path.is_file():
        return "stale"
    try:
        meta = read_json(meta_path)
    except (OSError, ValueError):
        return "stale"
    recorded = meta.get("identity")
    if not isinstance(recorded, Mapping) or meta.get("settings_hash") != digest:
        return "stale"
    if _reuse_part(recorded) != _jsonable(identity):
        return "stale"
    if not all((out_dir / name).is_file() for name in files.values() if name):
        return "stale"
    return "current" if _has_fingerprints(recorded) else "unfingerprinted"


def _refresh_record(
    dataset: str,
    case: Case,
    out_dir: Path,
    params: Mapping[str, Any],
    identity: Mapping[str, Any],
    options: Mapping[str, Any],
) -> list[str]:
    """Bring a reusable case record written before fingerprints were kept up to date without
    resampling again: read the sources with every data check, record their fingerprints and
    recompute the warnings (organs lost on the cached grid from the cached label)."""
    meta_path = out_dir / _files(case.case_id, False)["meta"]
    meta = read_json(meta_path)
    loaded = read_case(dataset, case, options)
    meta["identity"] = _jsonable(_fingerprinted(
        identity, {"image": loaded.header, "label": loaded.label_header, "mask": loaded.mask_header}
    ))
    warnings = _data_warnings(loaded.image)
    if loaded.label is not None:
        cached = np.load(out_dir / _files(case.case_id, True)["label"], mmap_mode="r")
        warnings += _lost_organs(dataset, _organs(loaded.label), cached, params)
    meta["warnings"] = warnings
    write_json(meta_path, _jsonable(meta))
    return warnings


def _remove_case(out_dir: Path, case_id: str) -> None:
    for name in _files(case_id, True).values():
        if name:
            (out_dir / name).unlink(missing_ok=True)


def _grid(affine: np.ndarray, shape: tuple[int, ...]) -> dict[str, Any]:
    return {
        "affine": np.asarray(affine, dtype=float).tolist(),
        "spacing": [float(z) for z in np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))],
        "shape": [int(s) for s in shape],
        "axcodes": list(nib.aff2axcodes(affine)),
    }


def _data_warnings(image: np.ndarray) -> list[str]:
    """Problems of a readable image that do not stop preparation but deserve a look."""
    lo, hi = float(image.min()), float(image.max())
    if lo == hi:  # e.g. an all-air or all-zero export: nothing to learn from
        return [f"image is constant ({lo:g} everywhere)"]
    return []


def _organs(label: np.ndarray) -> set[int]:
    counts = np.bincount(np.asarray(label, dtype=np.uint8).ravel(), minlength=1)
    return {int(v) for v in np.flatnonzero(counts) if v != 0}


def _lost_organs(dataset: str, source: set[int], cached: np.ndarray, params: Mapping[str, Any]) -> list[str]:
    """An organ of the source label that no cached voxel shows: too small for the cached grid, it
    can neither be learned nor predicted there (it still counts when scoring on the source grid)."""
    lost = sorted(source - _organs(cached))
    if not lost:
        return []
    names = LABEL_NAMES.get(dataset, {})
    which = ", ".join(f"{v} ({names[v]})" if v in names else str(v) for v in lost)
    return [f"organ(s) {which} of the source label vanish on the cached grid (spacing {params['spacing']} mm)"]


def _process_case(
    dataset: str,
    case: Case,
    out_dir: Path,
    params: Mapping[str, Any],
    digest: str,
    identity: Mapping[str, Any],
    options: Mapping[str, Any],
) -> list[str]:
    """Cache one case; returns its data warnings (also stored in its JSON record)."""
    _remove_case(out_dir, case.case_id)  # a stale case must not survive a failed recompute
    loaded = read_case(dataset, case, options)
    identity = _fingerprinted(
        identity, {"image": loaded.header, "label": loaded.label_header, "mask": loaded.mask_header}
    )
    warnings = _data_warnings(loaded.image)
    source_organs = _organs(loaded.label) if loaded.label is not None else set()
    if dataset == "mosmed":
        image, label, cached_affine = _transform_mosmed(loaded, params)
    else:
        image, label, cached_affine = _transform_segmentation(loaded, params)
    if label is not None:
        warnings += _lost_organs(dataset, source_organs, label, params)
    header = loaded.header
    del loaded
    files = _files(case.case_id, label is not None)
    original = _grid(header.affine, header.shape)  # spacing: the affine's voxel sizes, as the metrics use
    meta = {
        "case_id": case.case_id,
        "dataset": dataset,
        "split": case.split,
        "category": case.category,
        "class_label": case.class_label,
        "source": {
            "image": str(case.image),
            "label": str(case.label) if case.label else None,
            "mask": str(case.mask) if case.mask else None,
        },
        "original": original,
        "cached": _grid(cached_affine, image.shape),
        "intensity_window": list(params["window"]),
        "dtype": {"image": params["cache_dtype"], "label": "uint8" if label is not None else None},
        "files": files,
        "preprocessing": dict(params),
        "settings_hash": digest,
        "identity": identity,
        "code_version": __version__,
        "warnings": warnings,
    }
    try:
        save_npy(out_dir / files["image"], image.astype(params["cache_dtype"], copy=False))
        if label is not None:
            save_npy(out_dir / files["label"], label)
        write_json(out_dir / files["meta"], _jsonable(meta))  # last: marks the case complete
    except BaseException:
        _remove_case(out_dir, case.case_id)
        raise
    return warnings


def _cached_warnings(out_dir: Path, case: Case) -> list[str]:
    """The data warnings recorded for a case reused from the cache."""
    return list(read_json(out_dir / _files(case.case_id, False)["meta"]).get("warnings") or [])


def _clean_temp_files(out_dir: Path) -> None:
    """Remove temporaries a killed earlier run may have left (alice.io names them `.name.*.tmp*`)."""
    for path in out_dir.glob(".*.tmp*"):
        if path.is_file():
            path.unlink(missing_ok=True)


# ------------------------------------------------------------------------------- the output folder
def _is_own_name(name: str) -> bool:
    """Whether `name` (in the folder itself) is a file prepare or `alice folds` writes there."""
    temporary = _TEMPORARY.fullmatch(name)
    if temporary:
        name = temporary.group("name")
    return name in (MARKER, MANIFEST, FOLDS) or _CASE_FILE.fullmatch(name) is not None


def _marker(out_dir: Path) -> dict[str, Any] | None:
    try:
        record = read_json(out_dir / MARKER)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("writer") == WRITER else None


def _is_earlier_cache(out_dir: Path, dataset: str, present: list[str]) -> bool:
    """Whether a folder without marker is one an earlier prepare filled before it wrote markers:
    its manifest, or when Snakemake removed that before rerunning, a case record says so."""
    records = [MANIFEST] if MANIFEST in present else []
    records += [rel for rel in present if rel.endswith(".json") and _CASE_FILE.fullmatch(rel)]
    if not records:
        return False
    try:
        record = read_json(out_dir / records[0])
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("dataset") == dataset and "settings_hash" in record


def check_out_dir(out_dir: Path, dataset: str) -> None:
    """Refuse (without writing) an output folder holding anything but an earlier cache of `dataset`."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(out_dir, f"output path exists and is not a folder; {_ADVICE}")
    present = files_under(out_dir) if out_dir.is_dir() else []
    if not present:
        return
    marker = _marker(out_dir)
    if marker is None and not _is_earlier_cache(out_dir, dataset, present):
        raise InputError(
            out_dir,
            f"output folder is not empty ({len(present)} file(s), e.g. {present[0]}) and holds no earlier "
            f"`{WRITER}` output ({MARKER}); {_ADVICE}",
        )
    if marker is not None and marker.get("dataset") != dataset:
        raise InputError(out_dir, f"output folder holds a prepared {marker.get('dataset')} cache, not {dataset}; {_ADVICE}")
    foreign = [rel for rel in present if "/" in rel or not _is_own_name(rel)]
    if foreign:
        more = f" and {len(foreign) - 1} more file(s)" if len(foreign) > 1 else ""
        raise InputError(out_dir, f"output folder holds {foreign[0]}{more} besides a prepared {dataset} cache; {_ADVICE}")


def _claim(out_dir: Path, dataset: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    if _marker(out_dir) is None:
        write_json(out_dir / MARKER, {"writer": WRITER, "dataset": dataset})


def _remove_other_cases(out_dir: Path, keep: set[str]) -> None:
    """Remove cached cases of an earlier run that the release no longer holds."""
    for path in out_dir.iterdir():
        match = _CASE_FILE.fullmatch(path.name)
        if match and path.name not in (MANIFEST, FOLDS) and match.group("case") not in keep and path.is_file():
            path.unlink(missing_ok=True)


def prepare(
    dataset: str,
    root: str | Path,
    out_dir: str | Path,
    settings: Mapping[str, Any],
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Validate and preprocess every case of `dataset` under `root` into `out_dir`; return the manifest.

    settings: see `preprocessing_params` (window, cache_dtype; spacing, or for mosmed rotate90 and
    size) plus the discovery options of `alice.data.layouts.discover` (offline_test,
    validation_labels) and `affine_tolerance` (mm, default 1e-3).
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    params = preprocessing_params(dataset, settings)
    digest = settings_hash(params)
    check_out_dir(out_dir, dataset)
    release = discover_release(dataset, root, settings)
    cases = release.cases
    headers = check_headers(dataset, cases, settings)  # most bad input fails here, before any write
    for case in cases:
        check_cached_size(case.case_id, headers[case.case_id].image, params)

    # Everything checkable without reading voxels passed: an earlier manifest must not outlive a
    # run that may still fail, so it goes first.
    (out_dir / MANIFEST).unlink(missing_ok=True)
    _claim(out_dir, dataset)
    _clean_temp_files(out_dir)

    warnings: dict[str, list[str]] = {}  # case id -> data warnings; "release" -> skipped files
    if release.skipped:
        warnings["release"] = release.warnings()
    with tqdm(total=len(cases), desc=f"prepare {dataset}", unit="case", disable=not progress) as bar:
        for case in cases:
            bar.set_postfix_str(case.case_id, refresh=False)
            identity = _identity(case)
            state = _cached_state(out_dir, case, digest, identity)
            if state == "stale":
                found = _process_case(dataset, case, out_dir, params, digest, identity, settings)
            elif state == "unfingerprinted":
                found = _refresh_record(dataset, case, out_dir, params, identity, settings)
            else:
                found = _cached_warnings(out_dir, case)
            for message in found:
                log.warning("%s: %s (%s)", case.case_id, message, case.image)
            if found:
                warnings[case.case_id] = found
            bar.update(1)

    _remove_other_cases(out_dir, {c.case_id for c in cases})
    manifest = {
        "dataset": dataset,
        "root": str(Path(root).resolve()),
        "settings": _jsonable(dict(settings)),
        "preprocessing": params,
        "settings_hash": digest,
        "code_version": __version__,
        "n_cases": len(cases),
        "splits": {split: sum(c.split == split for c in cases) for split in sorted({c.split for c in cases})},
        "warnings": warnings,
        "cases": [
            {
                "case_id": c.case_id,
                "split": c.split,
                "category": c.category,
                "class_label": c.class_label,
                **{k: v for k, v in _files(c.case_id, c.label is not None).items()},
            }
            for c in cases
        ],
    }
    write_json(out_dir / MANIFEST, manifest)
    return manifest


# ------------------------------------------------------------------------------------- reading back
def load_case(out_dir: str | Path, case_id: str) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """(image memmap, label memmap or None, metadata) of one cached case."""
    out_dir = Path(out_dir)
    meta_path = out_dir / f"{case_id}.json"
    if not meta_path.is_file():
        raise InputError(meta_path, f"case '{case_id}' is not in this preprocessing cache (run prepare)")
    meta = read_json(meta_path)
    image = np.load(out_dir / meta["files"]["image"], mmap_mode="r")
    label = np.load(out_dir / meta["files"]["label"], mmap_mode="r") if meta["files"].get("label") else None
    return image, label, meta


def invert_to_original(label_cached: np.ndarray, meta: Mapping[str, Any]) -> np.ndarray:
    """Map a label map on the cached grid back onto the source file's voxel grid (nearest neighbour).

    Each original voxel takes the value of the cached voxel nearest to its world position; voxels
    falling outside the cached grid get 0. Exact when the cached grid is the original one up to
    axis flips/permutations (spacing unchanged).
    """
    label_cached = np.asarray(label_cached)
    cached_shape = tuple(meta["cached"]["shape"])
    if label_cached.shape != cached_shape:
        raise ValueError(f"label shape {label_cached.shape} is not the cached grid's {cached_shape}")
    a_orig = np.asarray(meta["original"]["affine"], dtype=np.float64)
    a_cached = np.asarray(meta["cached"]["affine"], dtype=np.float64)
    m = np.linalg.inv(a_cached) @ a_orig  # original voxel index -> cached voxel index
    shape = tuple(int(s) for s in meta["original"]["shape"])
    out = np.zeros(shape, dtype=label_cached.dtype)
    ii, jj = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    upper = np.asarray(cached_shape)
    for k in range(shape[2]):  # one slice at a time keeps memory at a few 2-D arrays
        idx = [
            np.rint(m[a, 0] * ii + m[a, 1] * jj + (m[a, 2] * k + m[a, 3])).astype(np.int64) for a in range(3)
        ]
        inside = np.ones(ii.shape, dtype=bool)
        for a in range(3):
            inside &= (idx[a] >= 0) & (idx[a] < upper[a])
        out[:, :, k][inside] = label_cached[idx[0][inside], idx[1][inside], idx[2][inside]]
    return out
