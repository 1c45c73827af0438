"""Settings tables (supplementary Table 8): each cell is one fine-tuning setting as the runs
recorded it, not as the config file says now.

A Table 8 row names a `key` (its spec): a path in the `finetune.<backbone>` section that
`alice finetune` stores in every `model.pt` as "settings" (`optim.lr`, `augmentation`, `crop`, ...),
or `dataset_spacing`, the voxel spacing of the preprocessing cache the runs trained on (the
dataset's `manifest.json`, "preprocessing"). Which models a column reads is
`alice.tables.spec.settings_cell_runs`: the runs behind the headline rows' reproduced cells of
that (dataset, backbone), every fold (every method fine-tunes from the same `finetune.<backbone>`
section), or every reproduced run where no headline row ran on it. They must all record the same
value (one config made them); a disagreement names a file that differs from the rest. Values print in the paper's notation: 1e-4, 96×96×96,
comma-separated lists, and the config's words in the paper's (the spec's `vocabulary`).
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

from alice.errors import InputError
from alice.io import read_json

SPACING_KEY = "dataset_spacing"
MODEL_KEYS = ("settings", "dataset", "backbone", "code_version")


def format_setting(value: Any, vocabulary: dict[str, str] | None = None) -> str:
    """A recorded setting as Table 8 prints it; ValueError for what is not a setting.

    `vocabulary` (the spec's) maps the config's words to the paper's ("cosine" -> "cosine
    decay", "intensity_shift" -> "intensities shifting"); a word it lacks prints as it is; an
    empty list (no augmentation) prints "none".
    """
    words = vocabulary or {}
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return _number(value)
    if isinstance(value, str):
        return words.get(value, value)
    if isinstance(value, (list, tuple)) and not value:
        return "none"  # e.g. no augmentation
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return "×".join(_number(v) for v in value)  # a crop or a spacing: 96×96×96
        if all(isinstance(v, str) for v in value):
            return ", ".join(words.get(v, v) for v in value)
    raise ValueError(f"not a printable setting: {value!r}")


def _number(value: float) -> str:
    """0.01 -> "0.01", 1e-4 -> "1e-4", 2.5e-4 -> "2.5e-4", 8 -> "8", 0.9 -> "0.9" (the paper's style:
    learning rates and weight decays below 0.01 in powers of ten)."""
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"not a finite setting: {value}")
    if value != 0 and abs(value) < 0.01:
        mantissa, exponent = f"{value:.6e}".split("e")
        mantissa = mantissa.rstrip("0").rstrip(".")
        return f"{mantissa}e{int(exponent)}"
    return f"{value:g}"


def _lookup(settings: dict, key: str, path: Path) -> Any:
    node: Any = settings
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise InputError(path, f"records no setting '{key}' (fine-tuning settings keys: "
                                   f"{', '.join(sorted(settings))}): regenerate it")
        node = node[part]
    return node


def _load_model_record(path: Path) -> dict:
    """The model file's metadata; mmap, so the weights are not read (a paper-scale UNETR is
    ~400 MB and a row reads every fold's model)."""
    import torch

    if not path.is_file():
        raise InputError(path, "missing: the fine-tuned model whose settings this table cell shows")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - unreadable or unsafe file = bad input
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(path, f"not a readable weights-only fine-tuned model ({first})") from None
    if not isinstance(obj, dict) or any(k not in obj for k in MODEL_KEYS):
        raise InputError(path, f"not a fine-tuned model: needs keys {list(MODEL_KEYS)}")
    return obj


def recorded_setting(key: str, dataset: str, backbone: str, paths: list[str],
                     root: Path = Path("."), vocabulary: dict[str, str] | None = None,
                     ) -> tuple[str, list[str], set[str], set[str]]:
    """(printed value, files read, settings hashes, code versions) of one Table 8 cell.

    `paths` are the cell's sources (`settings_cell_runs`: the models, then the manifest), relative
    to `root`. Models record their settings hash like their metrics.json does
    (`model_settings_hash`), so a Table 8 cell and the metric cells it describes share hashes.
    """
    from alice.io import settings_hash
    from alice.downstream import model_settings_hash

    manifests = [p for p in paths if p.endswith("manifest.json")]
    models = [p for p in paths if p not in manifests]
    if key == SPACING_KEY:
        if len(manifests) != 1:
            raise InputError(root, f"a {SPACING_KEY} cell needs one manifest.json, got {manifests}")
        path = root / manifests[0]
        if not path.is_file():
            raise InputError(path, "missing: the preprocessing manifest this table cell needs")
        manifest = read_json(path)
        try:
            value = manifest["preprocessing"]["spacing"]
        except (KeyError, TypeError):
            raise InputError(path, "records no preprocessing.spacing: regenerate it") from None
        return (_printed(value, path, key, vocabulary), manifests,
                {str(manifest.get("settings_hash") or settings_hash(manifest["preprocessing"]))},
                {str(manifest.get("code_version", ""))} - {""})
    if not models:
        raise InputError(root, f"no fine-tuned model to read '{key}' from")
    texts: dict[str, str] = {}
    hashes, versions = set(), set()
    for rel in models:
        path = root / rel
        record = _load_model_record(path)
        if (record["dataset"], record["backbone"]) != (dataset, backbone):
            raise InputError(path, f"is a {record['dataset']}/{record['backbone']} model, "
                                   f"not {dataset}/{backbone}")
        texts[rel] = _printed(_lookup(record["settings"], key, path), path, key, vocabulary)
        data_dir = root / "results" / "data" / dataset
        hashes.add(model_settings_hash(record, data_dir))
        versions.add(str(record["code_version"]))
    counts = Counter(texts.values())
    value = counts.most_common(1)[0][0]  # the odd ones out are the stale runs
    if len(counts) > 1:
        odd = next(p for p, t in texts.items() if t != value)
        usual = next(p for p, t in texts.items() if t == value)
        raise InputError(root / odd, f"was fine-tuned with {key} = {texts[odd]} but {usual} with "
                                     f"{value}: the runs of one column must share their settings; "
                                     "rerun the stale ones")
    return value, models, hashes, versions


def _printed(value: Any, path: Path, key: str, vocabulary: dict[str, str] | None) -> str:
    try:
        return format_setting(value, vocabulary)
    except ValueError as exc:
        raise InputError(path, f"setting '{key}': {exc}") from None
