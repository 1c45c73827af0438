"""Deterministic data splits per dataset (scikit-learn), written as one JSON file.

- flare22: k-fold cross-validation over the "train" cases; the offline "test" cases listed apart.
- btcv: k-fold over the labeled cases (each validated exactly once); "online_test" listed apart.
- flare22_pool: one train/val split of the unlabeled pool (paper: 0.1 → 1800/200).
- mosmed: `repeats` stratified train/val/test splits (seed + repeat), each with nested stratified
  label fractions of its training part (20 % ⊂ 50 % ⊂ 100 %).
Every case list is sorted.

scikit-learn is imported inside the split makers: the workflow imports this module's naming
helpers (`label_fraction_dir`, `offline_test_split`) while it builds the DAG.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from alice.errors import ConfigError, HarnessError, InputError
from alice.io import read_json, write_json


def _cases(manifest: Mapping[str, Any] | str | Path, dataset: str) -> list[Mapping[str, Any]]:
    if isinstance(manifest, (str, Path)):
        path = Path(manifest)
        if not path.is_file():
            raise InputError(path, "preprocessing manifest not found (run prepare first)")
        manifest = read_json(path)
    if manifest.get("dataset", dataset) != dataset:
        raise HarnessError(f"folds for {dataset}: the manifest is for '{manifest.get('dataset')}'")
    cases = manifest.get("cases")
    if not isinstance(cases, list):
        raise HarnessError(f"folds for {dataset}: the manifest has no 'cases' list")
    return cases


def _ids(cases: list[Mapping[str, Any]], split: str) -> list[str]:
    return sorted(c["case_id"] for c in cases if c.get("split") == split)


def _int_setting(settings: Mapping[str, Any], key: str, dataset: str, minimum: int) -> int:
    if key not in settings:
        raise ConfigError(key, f"required to make {dataset} folds")
    value = settings[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(key, f"must be an integer >= {minimum}, got {value!r}")
    return value


def _kfold(ids: list[str], n_splits: int, seed: int, dataset: str) -> list[dict[str, Any]]:
    if len(ids) < n_splits:
        raise HarnessError(
            f"folds for {dataset}: {n_splits}-fold cross-validation needs at least {n_splits} "
            f"labeled cases, found {len(ids)}"
        )
    from sklearn.model_selection import KFold

    kfold = KFold(n_splits=n_splits, shuffle=True, random_state=seed)
    arr = np.asarray(ids)
    return [
        {"fold": k, "train": sorted(arr[tr].tolist()), "val": sorted(arr[va].tolist())}
        for k, (tr, va) in enumerate(kfold.split(arr))
    ]


def fraction_key(f: float) -> str:
    """The key of a label fraction in folds.json ("0.2", "1.0")."""
    return repr(float(f))


_fraction_key = fraction_key


def label_fraction_dir(f: float) -> str:
    """The results folder of a label fraction: labels20, labels50, labels100 (labels12.5 ...)."""
    return f"labels{float(f) * 100:g}"


def _mosmed(cases: list[Mapping[str, Any]], settings: Mapping[str, Any], seed: int) -> dict[str, Any]:
    from sklearn.model_selection import train_test_split

    repeats = _int_setting(settings, "repeats", "mosmed", 1)
    split = settings.get("split")
    try:
        split = [float(x) for x in split]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ConfigError("split", f"must be [train, val, test] fractions, got {split!r}") from None
    if len(split) != 3 or min(split) <= 0 or not math.isclose(sum(split), 1.0, abs_tol=1e-6):
        raise ConfigError("split", f"must be 3 positive fractions summing to 1, got {split}")
    raw_fractions = settings.get("label_fractions", [1.0])
    try:
        fractions = sorted({float(x) for x in raw_fractions})
    except (TypeError, ValueError):
        raise ConfigError("label_fractions", f"must be a list of fractions, got {raw_fractions!r}") from None
    if not fractions or fractions[0] <= 0 or fractions[-1] > 1:
        raise ConfigError("label_fractions", f"must be fractions in (0, 1], got {raw_fractions!r}")

    ids = sorted(c["case_id"] for c in cases)
    labels_of = {c["case_id"]: c.get("class_label") for c in cases}
    missing = [i for i in ids if labels_of[i] is None]
    if missing:
        raise HarnessError(f"folds for mosmed: cases without a class_label in the manifest: {missing[:5]}")
    y_all = np.asarray([int(labels_of[i]) for i in ids])
    classes, counts = np.unique(y_all, return_counts=True)
    # The smallest part (as a fraction of all cases) must get at least one case of each class.
    smallest = min(split[1], split[2], split[0] * fractions[0])
    needed = math.ceil(1.0 / smallest - 1e-9) + 1
    if len(classes) < 2 or counts.min() < needed:
        have = {int(c): int(n) for c, n in zip(classes, counts)}
        raise HarnessError(
            f"folds for mosmed: too few cases to stratify split {split} with label fractions {fractions}: "
            f"need at least {needed} cases of each of the 2 classes, have {have}"
        )

    n = len(ids)
    n_test = max(1, round(split[2] * n))
    n_val = max(1, round(split[1] * n))
    arr = np.asarray(ids)
    out_repeats = []
    for r in range(repeats):
        rs = seed + r
        rest, test = train_test_split(arr, test_size=n_test, stratify=y_all, random_state=rs)
        y_rest = np.asarray([labels_of[i] for i in rest])
        train, val = train_test_split(rest, test_size=n_val, stratify=y_rest, random_state=rs)
        nested: dict[str, list[str]] = {}
        current = np.sort(train)
        for f in reversed(fractions):  # 1.0 ⊃ 0.5 ⊃ 0.2: each subset drawn from the previous one
            m = max(len(classes), round(f * len(train)))
            if m < len(current):
                y_cur = np.asarray([labels_of[i] for i in current])
                current, _ = train_test_split(current, train_size=m, stratify=y_cur, random_state=rs)
                current = np.sort(current)
            nested[_fraction_key(f)] = current.tolist()
        parts = {"train": train, "val": val, "test": test, **{f"label fraction {k}": v for k, v in nested.items()}}
        for name, part in parts.items():
            present = {labels_of[i] for i in part}
            if len(present) < len(classes):
                raise HarnessError(
                    f"folds for mosmed: repeat {r} {name} has no case of class(es) "
                    f"{sorted(set(classes.tolist()) - present)}; need more cases of each class "
                    f"(have {dict(zip(classes.tolist(), counts.tolist()))})"
                )
        out_repeats.append(
            {
                "repeat": r,
                "seed": rs,
                "train": sorted(train.tolist()),
                "val": sorted(val.tolist()),
                "test": sorted(test.tolist()),
                "label_fractions": {k: nested[k] for k in map(_fraction_key, fractions)},
            }
        )
    return {
        "dataset": "mosmed",
        "seed": seed,
        "split": split,
        "label_fractions": fractions,
        "repeats": out_repeats,
    }


def make_folds(
    dataset: str, manifest: Mapping[str, Any] | str | Path, settings: Mapping[str, Any], seed: int
) -> dict[str, Any]:
    """The splits of `dataset` from its preprocessing manifest (dict or path); deterministic for a seed.

    settings: flare22/btcv `folds` (k); flare22_pool `val_fraction`; mosmed `repeats`, `split`
    ([train, val, test] fractions) and `label_fractions`.
    """
    cases = _cases(manifest, dataset)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ConfigError("seed", f"must be an integer, got {seed!r}")
    seed = int(seed)
    if dataset in ("flare22", "btcv"):
        n_splits = _int_setting(settings, "folds", dataset, 2)
        out: dict[str, Any] = {
            "dataset": dataset,
            "seed": seed,
            "n_folds": n_splits,
            "folds": _kfold(_ids(cases, "train"), n_splits, seed, dataset),
        }
        if dataset == "flare22":
            out["test"] = _ids(cases, "test")
        else:
            out["online_test"] = _ids(cases, "online_test")
        return out
    if dataset == "flare22_pool":
        if "val_fraction" not in settings:
            raise ConfigError("val_fraction", "required to make flare22_pool folds")
        frac = settings["val_fraction"]
        if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 < frac < 1:
            raise ConfigError("val_fraction", f"must be a number in (0, 1), got {frac!r}")
        ids = _ids(cases, "pool")
        if len(ids) < 2:
            raise HarnessError(f"folds for flare22_pool: a train/val split needs at least 2 cases, found {len(ids)}")
        n_val = min(len(ids) - 1, max(1, round(frac * len(ids))))
        from sklearn.model_selection import train_test_split

        train, val = train_test_split(np.asarray(ids), test_size=n_val, random_state=seed, shuffle=True)
        return {
            "dataset": dataset,
            "seed": seed,
            "val_fraction": float(frac),
            "train": sorted(train.tolist()),
            "val": sorted(val.tolist()),
        }
    if dataset == "mosmed":
        return _mosmed(cases, settings, seed)
    raise ConfigError("dataset", f"no folds defined for dataset '{dataset}'")


def write_folds(path: str | Path, folds: Mapping[str, Any]) -> None:
    """Write the folds as JSON, atomically."""
    write_json(path, folds)


# Where each dataset's offline test cases of fold k are: FLARE22 has a fixed offline test list
# (the FLARETs cases, the same for every fold); BTCV's offline protocol is 5-fold CV over the
# labeled cases, so fold k is tested on its own held-out cases (each case tested exactly once).
OFFLINE_TEST = {"flare22": "test", "btcv": "val:{fold}"}


def offline_test_split(dataset: str, fold: int) -> str:
    """The `split` that `evaluate` scores for fold `fold` of `dataset` ("test" or "val:<k>")."""
    if dataset not in OFFLINE_TEST:
        raise ConfigError("--dataset", f"no offline test protocol for '{dataset}' "
                                       f"(known: {', '.join(OFFLINE_TEST)})")
    return OFFLINE_TEST[dataset].format(fold=int(fold))


def labeled_training_cases(folds: Mapping[str, Any], path: str | Path) -> list[str]:
    """Every labeled training case of a k-fold folds.json (the union of its folds' train and val
    lists: for FLARE22 every labeled case but the offline test cases), sorted."""
    if not isinstance(folds.get("folds"), list) or not folds["folds"]:
        raise InputError(path, "no 'folds' list to draw labeled training cases from")
    cases = {c for entry in folds["folds"] for part in ("train", "val") for c in entry.get(part, [])}
    held_out = set(folds.get("test", [])) | set(folds.get("online_test", []))
    if cases & held_out:
        raise InputError(path, f"test cases inside the folds: {sorted(cases & held_out)[:5]}")
    return sorted(cases)


def labeled_subset(folds: Mapping[str, Any], n: int, subset_seed: int, path: str | Path) -> list[str]:
    """The `n` labeled training cases of subset `subset_seed` (sorted): the first n of a
    permutation of `labeled_training_cases` drawn from numpy's generator seeded with
    (folds' seed, subset_seed). It depends on nothing else (not the method: runs that share
    (n, subset_seed) are paired), and the subsets of one seed are nested (1 ⊂ 2 ⊂ 4 cases)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError("labeled", f"must be an integer >= 1, got {n!r}")
    if isinstance(subset_seed, bool) or not isinstance(subset_seed, (int, np.integer)) or subset_seed < 0:
        raise ConfigError("subset seed", f"must be an integer >= 0, got {subset_seed!r}")
    cases = labeled_training_cases(folds, path)
    if n > len(cases):
        raise InputError(path, f"{n} labeled cases requested, only {len(cases)} labeled training "
                               "cases exist")
    rng = np.random.default_rng([int(folds.get("seed", 0)), int(subset_seed)])
    order = rng.permutation(len(cases))
    return sorted(cases[i] for i in order[: int(n)])
