"""Find the cases of each dataset in its public release layout.

`discover(dataset, root, options)` walks the folders of one release and returns its cases, checking
only what the file system shows: expected folders, file names, image/label pairing, duplicate case
ids. Header- and data-level checks live in `alice.data.validate`. `discover_release` returns the
same cases plus every entry of the walked folders that is not one (`Release.skipped`).

Rules shared by all layouts:
- `.nii.gz` and `.nii` are both accepted; a case present as both is a duplicate (an error);
- files that are not NIfTI (.DS_Store, images.zip, README), hidden files (names starting with
  ".", e.g. macOS `._*` resource forks) and subfolders that are not part of the layout are not
  read, but none silently: each is logged as a warning on the "alice" logger and listed in
  `Release.skipped` (which `prepare` copies into its manifest). Folders outside the layout (e.g.
  `phantom_truth/` next to a phantom release) are not walked at all;
- a NIfTI file whose name does not match the naming pattern of its folder is an error naming it.
- case numbers are ASCII digits (`[0-9]`: the regex digit class also matches e.g. fullwidth ones), so
  a look-alike name is a misnamed file rather than a second case.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from alice.data.nifti import nifti_stem
from alice.errors import ConfigError, InputError


DATASETS = ("flare22", "flare22_pool", "btcv", "mosmed")
SEGMENTATION_DATASETS = ("flare22", "btcv")

# MosMed categories CT-0..CT-4; binary task: 0 = CT-0 (no pathology), 1 = CT-1..CT-4.
MOSMED_CATEGORIES = (0, 1, 2, 3, 4)

log = logging.getLogger("alice")


@dataclass(frozen=True)
class Case:
    """One case of a dataset as found on disk."""

    case_id: str
    image: Path
    label: Path | None
    split: str  # "train", "test", "online_test", "pool", "all"
    category: int | None = None  # MosMed CT-k
    class_label: int | None = None  # MosMed binary label
    mask: Path | None = None  # MosMed optional lesion mask (validated, not used for classification)


@dataclass(frozen=True)
class _Pattern:
    """A file-name pattern of one folder: `regex` over the stem, `role`, case id = group 1."""

    role: str
    regex: re.Pattern[str]
    example: str


def _pat(role: str, regex: str, example: str) -> _Pattern:
    return _Pattern(role, re.compile(regex), example)


FLARE_TR_IMAGE = _pat("image", r"(FLARE22_Tr_[0-9]{4})_0000", "FLARE22_Tr_0001_0000.nii.gz")
FLARE_TR_LABEL = _pat("label", r"(FLARE22_Tr_[0-9]{4})", "FLARE22_Tr_0001.nii.gz")
FLARE_TS_IMAGE = _pat("image", r"(FLARETs_[0-9]{4})_0000", "FLARETs_0001_0000.nii.gz")
FLARE_TS_LABEL = _pat("label", r"(FLARETs_[0-9]{4})", "FLARETs_0001.nii.gz")
FLARE_POOL_IMAGE = _pat("image", r"(Case_[0-9]{5})_0000", "Case_00001_0000.nii.gz")
BTCV_IMAGE = _pat("image", r"(img[0-9]{4})", "img0001.nii.gz")
BTCV_LABEL = _pat("label", r"label([0-9]{4})", "label0001.nii.gz")
MOSMED_STUDY = _pat("image", r"(study_[0-9]{4})", "study_0001.nii.gz")
MOSMED_MASK = _pat("mask", r"(study_[0-9]{4})_mask", "study_0001_mask.nii.gz")

FLARE_POOL_FOLDERS = ("FLARE22_UnlabeledCase1-1000", "FLARE22_UnlabeledCase1001-2000")
# Every case id a layout can give (the cache names its files after them).
CASE_ID = re.compile(
    r"FLARE22_Tr_[0-9]{4}|FLARETs_[0-9]{4}|Case_[0-9]{5}|img[0-9]{4}|study_[0-9]{4}", re.ASCII
)

_NOT_NIFTI = "not a NIfTI file"
_HIDDEN = "a hidden file"
_FOLDER = "a folder that is not part of the release layout"


@dataclass
class Release:
    """The cases of one release and what its walked folders hold besides them (path, why)."""

    cases: list[Case]
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def warnings(self) -> list[str]:
        return [f"{path}: not read ({reason})" for path, reason in self.skipped]


def _btcv_id(role: str, key: str) -> str:
    return key if role == "image" else f"img{key}"


def _scan(
    folder: Path, patterns: list[_Pattern], skipped: list, id_of=None, subfolders: tuple[Path, ...] = ()
) -> dict[str, dict[str, Path]]:
    """NIfTI files of one folder by role and case id; misnamed files and duplicates are errors,
    other entries go to `skipped` (`subfolders`: folders of the layout inside this one)."""
    found: dict[str, dict[str, Path]] = {p.role: {} for p in patterns}
    if not folder.is_dir():
        return found
    layout = {p.resolve() for p in subfolders}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            skipped.append((entry, _HIDDEN))
            continue
        if entry.is_dir():
            if entry.resolve() not in layout:
                skipped.append((entry, _FOLDER))
            continue
        stem = nifti_stem(entry.name)
        if stem is None:
            skipped.append((entry, _NOT_NIFTI))
            continue
        for pattern in patterns:
            match = pattern.regex.fullmatch(stem)
            if match:
                break
        else:
            examples = " or ".join(p.example for p in patterns)
            raise InputError(
                entry, f"file name does not match the naming pattern of its folder (expected e.g. {examples})"
            )
        case_id = id_of(pattern.role, match.group(1)) if id_of else match.group(1)
        previous = found[pattern.role].get(case_id)
        if previous is not None:
            raise InputError(entry, f"duplicate case id '{case_id}': also present as {previous}")
        found[pattern.role][case_id] = entry
    return found


def _pair(
    images: dict[str, Path],
    labels: dict[str, Path],
    image_dir: Path,
    label_dir: Path,
    image_name,
    label_name,
) -> None:
    """Every image has a label and every label an image (`*_name(case_id)` gives expected names)."""
    for case_id, image in images.items():
        if case_id not in labels:
            expected = label_dir / label_name(case_id)
            raise InputError(image, f"labeled case '{case_id}' has no label (expected {expected})")
    for case_id, label in labels.items():
        if case_id not in images:
            expected = image_dir / image_name(case_id)
            raise InputError(label, f"label has no matching image (expected {expected})")


def _check_zip(folder: Path) -> None:
    archive = folder.with_name(folder.name + ".zip")
    if not folder.is_dir() and archive.is_file():
        raise InputError(archive, f"found the archive but not the folder {folder}: unpack it first")


def _no_cases(dataset: str, root: Path, expected: str, hint: str = "") -> InputError:
    return InputError(root, f"no {dataset} cases found under this folder (expected e.g. {expected}){hint}")


def _flare22(root: Path, options: Mapping[str, Any], skipped: list) -> list[Case]:
    labeled = root / "Training" / "FLARE22_LabeledCase50"
    image_dir, label_dir = labeled / "images", labeled / "labels"
    _check_zip(image_dir)
    _check_zip(label_dir)
    images = _scan(image_dir, [FLARE_TR_IMAGE], skipped)["image"]
    labels = _scan(label_dir, [FLARE_TR_LABEL], skipped)["label"]
    if not images and not labels:
        raise _no_cases(
            "flare22", root, "Training/FLARE22_LabeledCase50/images/FLARE22_Tr_0001_0000.nii.gz"
        )
    _pair(
        images, labels, image_dir, label_dir, lambda c: f"{c}_0000.nii.gz", lambda c: f"{c}.nii.gz"
    )
    cases = [Case(cid, images[cid], labels[cid], "train") for cid in sorted(images)]

    test_ids = _offline_test_ids(options)
    if test_ids:
        val_dir = root / "Validation"
        val_label_dir = root / str(options.get("validation_labels") or "Validation/labels")
        if not val_dir.is_dir():
            raise InputError(
                val_dir, f"folder of the offline test images not found ({len(test_ids)} listed in offline_test)"
            )
        if val_label_dir.resolve() == val_dir.resolve():
            found = _scan(val_dir, [FLARE_TS_IMAGE, FLARE_TS_LABEL], skipped)
            val_images, val_labels = found["image"], found["label"]
        else:
            val_images = _scan(val_dir, [FLARE_TS_IMAGE], skipped, subfolders=(val_label_dir,))["image"]
            val_labels = _scan(val_label_dir, [FLARE_TS_LABEL], skipped)["label"]
        for cid in test_ids:
            if cid not in val_images:
                raise InputError(
                    val_dir / f"{cid}_0000.nii.gz",
                    f"offline test case '{cid}' listed in offline_test is not on disk",
                )
            if cid not in val_labels:
                raise InputError(
                    val_images[cid],
                    f"offline test case '{cid}' has no label (expected {val_label_dir / (cid + '.nii.gz')})",
                )
            cases.append(Case(cid, val_images[cid], val_labels[cid], "test"))
    return cases


def _offline_test_ids(options: Mapping[str, Any]) -> list[str]:
    raw = options.get("offline_test") or []
    if isinstance(raw, (str, bytes)) or not isinstance(raw, (list, tuple)):
        raise ConfigError("offline_test", f"must be a list of FLARETs case ids, got {raw!r}")
    ids: list[str] = []
    for item in raw:
        if isinstance(item, bool):
            raise ConfigError("offline_test", f"not a case id: {item!r}")
        cid = f"FLARETs_{item:04d}" if isinstance(item, int) else str(item)
        if not FLARE_TS_LABEL.regex.fullmatch(cid):
            raise ConfigError("offline_test", f"'{cid}' is not a FLARETs case id (e.g. FLARETs_0001 or 1)")
        if cid in ids:
            raise ConfigError("offline_test", f"lists '{cid}' twice")
        ids.append(cid)
    return ids


def _flare22_pool(root: Path, options: Mapping[str, Any], skipped: list) -> list[Case]:
    images: dict[str, Path] = {}
    for folder in FLARE_POOL_FOLDERS:
        for cid, path in _scan(root / "Training" / folder, [FLARE_POOL_IMAGE], skipped)["image"].items():
            if cid in images:
                raise InputError(path, f"duplicate case id '{cid}': also present as {images[cid]}")
            images[cid] = path
    if not images:
        raise _no_cases("flare22_pool", root, f"Training/{FLARE_POOL_FOLDERS[0]}/Case_00001_0000.nii.gz")
    return [Case(cid, images[cid], None, "pool") for cid in sorted(images)]


def _btcv(root: Path, options: Mapping[str, Any], skipped: list) -> list[Case]:
    raw = root / "RawData"
    image_dir, label_dir = raw / "Training" / "img", raw / "Training" / "label"
    test_dir = raw / "Testing" / "img"
    images = _scan(image_dir, [BTCV_IMAGE], skipped, _btcv_id)["image"]
    labels = _scan(label_dir, [BTCV_LABEL], skipped, _btcv_id)["label"]
    tests = _scan(test_dir, [BTCV_IMAGE], skipped, _btcv_id)["image"]
    if not images and not labels:
        raise _no_cases("btcv", root, "RawData/Training/img/img0001.nii.gz")
    _pair(
        images, labels, image_dir, label_dir, lambda c: f"{c}.nii.gz", lambda c: f"label{c[3:]}.nii.gz"
    )
    for cid, path in tests.items():
        if cid in images:
            raise InputError(path, f"duplicate case id '{cid}': also present as {images[cid]}")
    cases = [Case(cid, images[cid], labels[cid], "train") for cid in sorted(images)]
    cases += [Case(cid, tests[cid], None, "online_test") for cid in sorted(tests)]
    return cases


def _mosmed(root: Path, options: Mapping[str, Any], skipped: list) -> list[Case]:
    studies_dir = root / "studies"
    studies: dict[str, tuple[Path, int]] = {}
    if studies_dir.is_dir():
        for entry in sorted(studies_dir.iterdir()):
            if entry.name.startswith("."):
                skipped.append((entry, _HIDDEN))
                continue
            if entry.is_file() and nifti_stem(entry.name) is not None:
                raise InputError(entry, "study lies outside the CT-0 … CT-4 category folders")
            match = re.fullmatch(r"CT-([0-9]+)", entry.name)
            if not entry.is_dir() or not match:
                skipped.append((entry, _FOLDER if entry.is_dir() else _NOT_NIFTI))
                continue
            category = int(match.group(1))
            if category not in MOSMED_CATEGORIES:
                raise InputError(entry, "unknown MosMed category folder (expected CT-0 … CT-4)")
            for cid, path in _scan(entry, [MOSMED_STUDY], skipped)["image"].items():
                if cid in studies:
                    raise InputError(path, f"duplicate case id '{cid}': also present as {studies[cid][0]}")
                studies[cid] = (path, category)
    if not studies:
        hint = ""
        if (root / "COVID19_1110" / "studies").is_dir():
            hint = "; the root should be the COVID19_1110 folder itself"
        raise _no_cases("mosmed", root, "studies/CT-0/study_0001.nii.gz", hint)
    masks = _scan(root / "masks", [MOSMED_MASK], skipped)["mask"]
    for cid, path in masks.items():
        if cid not in studies:
            raise InputError(path, f"mask has no matching study (expected studies/CT-k/{cid}.nii.gz)")
    return [
        Case(
            cid,
            path,
            None,
            "all",
            category=category,
            class_label=0 if category == 0 else 1,
            mask=masks.get(cid),
        )
        for cid, (path, category) in sorted(studies.items())
    ]


_READERS = {"flare22": _flare22, "flare22_pool": _flare22_pool, "btcv": _btcv, "mosmed": _mosmed}


def discover(dataset: str, root: str | Path, options: Mapping[str, Any] | None = None) -> list[Case]:
    """All cases of `dataset` under `root` in its release layout (skipped entries are logged).

    options (all optional): flare22 `offline_test` (list of FLARETs ids or ints; default none) and
    `validation_labels` (folder relative to root, default "Validation/labels").
    """
    return discover_release(dataset, root, options).cases


def discover_release(dataset: str, root: str | Path, options: Mapping[str, Any] | None = None) -> Release:
    """`discover`'s cases plus the entries of the walked folders that are none, each logged as a
    warning on the "alice" logger: nothing in a release folder is passed over without a word."""
    if dataset not in _READERS:
        raise ConfigError("dataset", f"unknown dataset '{dataset}' (known: {', '.join(DATASETS)})")
    root = Path(root)
    if not root.exists():
        raise InputError(root, f"{dataset} dataset root folder does not exist")
    if not root.is_dir():
        raise InputError(root, f"{dataset} dataset root is not a folder")
    skipped: list[tuple[Path, str]] = []
    cases = _READERS[dataset](root, options or {}, skipped)
    seen: dict[str, Case] = {}
    for case in cases:  # the readers check duplicates per layout; this is the last line of defence
        if case.case_id in seen:
            raise InputError(case.image, f"duplicate case id '{case.case_id}': also {seen[case.case_id].image}")
        seen[case.case_id] = case
    release = Release(cases, skipped)
    for message in release.warnings():
        log.warning("%s", message)
    return release
