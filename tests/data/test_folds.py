"""Folds: disjoint, covering, deterministic, seed-dependent, stratified, nested."""

from __future__ import annotations

import json

import numpy as np
import pytest

from alice.data.folds import make_folds, write_folds
from alice.errors import ConfigError, HarnessError


def _manifest(dataset, cases):
    return {"dataset": dataset, "cases": cases}


def _seg_manifest(dataset, n_train, n_test, test_split):
    prefix = "FLARE22_Tr_" if dataset == "flare22" else "img"
    cases = [{"case_id": f"{prefix}{i:04d}", "split": "train"} for i in range(1, n_train + 1)]
    cases += [{"case_id": f"T{i:04d}", "split": test_split} for i in range(1, n_test + 1)]
    return _manifest(dataset, cases)


def _mosmed_manifest(counts=(254, 684, 125, 45, 2)):
    cases, n = [], 0
    for category, count in enumerate(counts):
        for _ in range(count):
            n += 1
            cases.append({"case_id": f"study_{n:04d}", "split": "all", "category": category, "class_label": int(category > 0)})
    return _manifest("mosmed", cases)


MOSMED = {"repeats": 10, "split": [0.7, 0.1, 0.2], "label_fractions": [0.2, 0.5, 1.0]}


@pytest.mark.parametrize("dataset, test_key, test_split", [("flare22", "test", "test"), ("btcv", "online_test", "online_test")])
def test_kfold_disjoint_covering_each_case_validated_once(dataset, test_key, test_split):
    manifest = _seg_manifest(dataset, 30, 20, test_split)
    folds = make_folds(dataset, manifest, {"folds": 5}, seed=0)
    train_ids = sorted(c["case_id"] for c in manifest["cases"] if c["split"] == "train")
    assert folds["dataset"] == dataset and folds["seed"] == 0 and len(folds["folds"]) == 5
    vals = [v for f in folds["folds"] for v in f["val"]]
    assert sorted(vals) == train_ids  # every labeled case validated exactly once
    for k, fold in enumerate(folds["folds"]):
        assert fold["fold"] == k
        assert not set(fold["train"]) & set(fold["val"])
        assert sorted(fold["train"] + fold["val"]) == train_ids
        assert fold["train"] == sorted(fold["train"]) and fold["val"] == sorted(fold["val"])
        assert len(fold["val"]) == 6
    assert folds[test_key] == [f"T{i:04d}" for i in range(1, 21)]
    assert not set(folds[test_key]) & set(train_ids)


def test_kfold_deterministic_and_seed_dependent():
    manifest = _seg_manifest("btcv", 30, 20, "online_test")
    a = make_folds("btcv", manifest, {"folds": 5}, seed=1)
    assert a == make_folds("btcv", manifest, {"folds": 5}, seed=1)
    # the manifest's order does not matter
    shuffled = {**manifest, "cases": manifest["cases"][::-1]}
    assert a == make_folds("btcv", shuffled, {"folds": 5}, seed=1)
    assert a["folds"] != make_folds("btcv", manifest, {"folds": 5}, seed=2)["folds"]


def test_kfold_too_few_cases():
    with pytest.raises(HarnessError, match="needs at least 5 labeled cases, found 3"):
        make_folds("flare22", _seg_manifest("flare22", 3, 0, "test"), {"folds": 5}, seed=0)


def test_kfold_missing_setting():
    with pytest.raises(ConfigError, match="'folds'"):
        make_folds("flare22", _seg_manifest("flare22", 10, 0, "test"), {}, seed=0)


def test_pool_split_paper_sizes():
    cases = [{"case_id": f"Case_{i:05d}", "split": "pool"} for i in range(1, 2001)]
    folds = make_folds("flare22_pool", _manifest("flare22_pool", cases), {"val_fraction": 0.1}, seed=0)
    assert len(folds["train"]) == 1800 and len(folds["val"]) == 200
    assert not set(folds["train"]) & set(folds["val"])
    assert sorted(folds["train"] + folds["val"]) == [c["case_id"] for c in cases]
    assert folds["train"] == sorted(folds["train"])
    again = make_folds("flare22_pool", _manifest("flare22_pool", cases), {"val_fraction": 0.1}, seed=0)
    other = make_folds("flare22_pool", _manifest("flare22_pool", cases), {"val_fraction": 0.1}, seed=1)
    assert folds == again and folds["val"] != other["val"]


def test_pool_tiny_keeps_one_of_each():
    cases = [{"case_id": f"Case_{i:05d}", "split": "pool"} for i in (1, 2, 1001)]
    folds = make_folds("flare22_pool", _manifest("flare22_pool", cases), {"val_fraction": 0.1}, seed=0)
    assert len(folds["val"]) == 1 and len(folds["train"]) == 2


def test_mosmed_repeats_disjoint_covering_stratified_nested():
    manifest = _mosmed_manifest()
    folds = make_folds("mosmed", manifest, MOSMED, seed=0)
    label = {c["case_id"]: c["class_label"] for c in manifest["cases"]}
    all_ids = sorted(label)
    overall = np.mean(list(label.values()))
    assert len(folds["repeats"]) == 10
    for r, rep in enumerate(folds["repeats"]):
        assert rep["repeat"] == r and rep["seed"] == r
        tr, va, te = rep["train"], rep["val"], rep["test"]
        assert (len(tr), len(va), len(te)) == (777, 111, 222)
        assert not (set(tr) & set(va) or set(tr) & set(te) or set(va) & set(te))
        assert sorted(tr + va + te) == all_ids
        for part in (tr, va, te):
            assert part == sorted(part)
            assert abs(np.mean([label[i] for i in part]) - overall) < 0.02
        fr = rep["label_fractions"]
        assert list(fr) == ["0.2", "0.5", "1.0"]
        assert fr["1.0"] == tr
        assert set(fr["0.2"]) < set(fr["0.5"]) < set(fr["1.0"])
        assert len(fr["0.5"]) == round(0.5 * 777) and len(fr["0.2"]) == round(0.2 * 777)
        for key in ("0.2", "0.5"):
            assert abs(np.mean([label[i] for i in fr[key]]) - overall) < 0.02
    assert folds["repeats"][0]["test"] != folds["repeats"][1]["test"]


@pytest.mark.parametrize("counts", [(12, 8, 4, 3, 2), (30, 45, 10, 5, 1), (254, 684, 125, 45, 2)])
def test_mosmed_parts_keep_the_class_ratio_within_rounding(counts):
    """Each split's train/val/test hold round(size x ratio) positives up to one case (the demo
    phantoms, a mid-size set, the real counts); each label fraction keeps its parent's ratio the
    same way and is nested in it."""
    manifest = _mosmed_manifest(counts)
    label = {c["case_id"]: c["class_label"] for c in manifest["cases"]}
    positives = lambda part: sum(label[i] for i in part)  # noqa: E731

    def within_rounding(part, parent):
        return abs(positives(part) - len(part) * positives(parent) / len(parent)) < 1

    folds = make_folds("mosmed", manifest, MOSMED, seed=0)
    for rep in folds["repeats"]:
        for part in ("train", "val", "test"):
            assert within_rounding(rep[part], list(label)), (rep["repeat"], part)
        fr = rep["label_fractions"]
        for small, big in (("0.2", "0.5"), ("0.5", "1.0")):
            assert set(fr[small]) < set(fr[big])
            assert within_rounding(fr[small], fr[big]), (rep["repeat"], small)


def test_mosmed_deterministic_and_seed_dependent():
    manifest = _mosmed_manifest((40, 60, 0, 0, 0))
    a = make_folds("mosmed", manifest, MOSMED, seed=3)
    assert a == make_folds("mosmed", manifest, MOSMED, seed=3)
    b = make_folds("mosmed", manifest, MOSMED, seed=4)
    assert a["repeats"][0]["test"] != b["repeats"][0]["test"]
    assert a["repeats"][1] == b["repeats"][0] | {"repeat": 1}  # repeat r uses seed + r


def test_mosmed_small_set_keeps_both_classes_in_every_part():
    manifest = _mosmed_manifest((12, 12, 0, 0, 0))
    folds = make_folds("mosmed", manifest, MOSMED, seed=0)
    label = {c["case_id"]: c["class_label"] for c in manifest["cases"]}
    for rep in folds["repeats"]:
        for part in (rep["train"], rep["val"], rep["test"], *rep["label_fractions"].values()):
            assert {label[i] for i in part} == {0, 1}


def test_mosmed_too_few_cases_says_how_many_are_needed():
    with pytest.raises(HarnessError, match=r"need at least 11 cases of each of the 2 classes, have \{0: 3, 1: 40\}"):
        make_folds("mosmed", _mosmed_manifest((3, 40, 0, 0, 0)), MOSMED, seed=0)
    with pytest.raises(HarnessError, match="need at least"):
        make_folds("mosmed", _mosmed_manifest((0, 40, 0, 0, 0)), MOSMED, seed=0)


def test_mosmed_bad_split_setting():
    with pytest.raises(ConfigError, match="'split'"):
        make_folds("mosmed", _mosmed_manifest(), {**MOSMED, "split": [0.7, 0.2, 0.2]}, seed=0)


def test_manifest_of_another_dataset():
    with pytest.raises(HarnessError, match="manifest is for 'btcv'"):
        make_folds("flare22", _seg_manifest("btcv", 10, 0, "online_test"), {"folds": 5}, seed=0)


def test_write_folds_atomic_json_and_manifest_path(tmp_path):
    manifest = _seg_manifest("btcv", 10, 2, "online_test")
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    folds = make_folds("btcv", tmp_path / "manifest.json", {"folds": 5}, seed=0)
    write_folds(tmp_path / "out" / "folds.json", folds)
    assert json.loads((tmp_path / "out" / "folds.json").read_text()) == folds
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["folds.json"]


def test_offline_test_split_per_dataset():
    from alice.data.folds import offline_test_split

    assert offline_test_split("flare22", 3) == "test"  # the fixed FLARETs list, every fold
    assert offline_test_split("btcv", 3) == "val:3"    # 5-fold CV: each case tested once
    with pytest.raises(ConfigError, match="--dataset"):
        offline_test_split("mosmed", 0)


def test_btcv_offline_protocol_tests_each_labeled_case_once(tmp_path):
    """Table 3's offline column: fold k is scored on the split the evaluate rule asks for
    (offline_test_split), read back from folds.json as evaluate does; across the 5 folds every
    labeled case is tested exactly once and never trained on in its own fold, and no online test
    case is ever scored."""
    from alice.data.folds import offline_test_split
    from alice.downstream.data import split_cases

    manifest = _seg_manifest("btcv", 30, 20, "online_test")
    write_folds(tmp_path / "folds.json", make_folds("btcv", manifest, {"folds": 5}, seed=0))
    labeled = sorted(c["case_id"] for c in manifest["cases"] if c["split"] == "train")
    tested = []
    for k in range(5):
        cases, fold = split_cases(tmp_path, offline_test_split("btcv", k))
        train, _ = split_cases(tmp_path, f"train:{k}")
        assert fold == k and cases and not set(cases) & set(train)
        tested += cases
    assert sorted(tested) == labeled and len(set(tested)) == len(tested) == 30
    online, fold = split_cases(tmp_path, "online_test")
    assert fold is None and online == [f"T{i:04d}" for i in range(1, 21)]
    assert not set(online) & set(tested)


# ------------------------------------------------------------------------- low-label subsets
def _flare_folds(seed=0, n_train=10, n_test=4):
    return make_folds("flare22", _seg_manifest("flare22", n_train, n_test, "test"), {"folds": 5}, seed)


def test_labeled_training_cases_are_every_fold_case_and_no_test_case():
    from alice.data.folds import labeled_training_cases

    folds = _flare_folds()
    cases = labeled_training_cases(folds, "folds.json")
    assert cases == [f"FLARE22_Tr_{i:04d}" for i in range(1, 11)]
    assert not set(cases) & set(folds["test"])


def test_labeled_subsets_are_deterministic_nested_and_seed_dependent():
    from alice.data.folds import labeled_subset

    folds = _flare_folds()
    subsets = {(n, s): labeled_subset(folds, n, s, "folds.json") for n in (1, 2, 4) for s in range(3)}
    for (n, s), cases in subsets.items():
        assert len(cases) == n and cases == sorted(cases)
        assert cases == labeled_subset(_flare_folds(), n, s, "folds.json")  # same input, same subset
        assert not set(cases) & set(folds["test"])
    for s in range(3):  # one seed's subsets are nested: 1 in 2 in 4
        assert set(subsets[1, s]) <= set(subsets[2, s]) <= set(subsets[4, s])
    assert len({tuple(subsets[4, s]) for s in range(3)}) == 3  # seeds draw different subsets
    # the folds' seed enters the draw, so another split of the same cases draws other subsets
    other = [labeled_subset(_flare_folds(seed=1), 4, s, "folds.json") for s in range(3)]
    assert other != [subsets[4, s] for s in range(3)]


def test_labeled_subset_refuses_bad_counts():
    from alice.data.folds import labeled_subset
    from alice.errors import InputError

    folds = _flare_folds()
    with pytest.raises(InputError, match="folds.json: 11 labeled cases requested, only 10"):
        labeled_subset(folds, 11, 0, "folds.json")
    with pytest.raises(ConfigError, match="labeled"):
        labeled_subset(folds, 0, 0, "folds.json")
    with pytest.raises(ConfigError, match="subset seed"):
        labeled_subset(folds, 1, -1, "folds.json")
    with pytest.raises(InputError, match="test cases inside the folds"):
        labeled_subset({**folds, "test": [folds["folds"][0]["val"][0]]}, 1, 0, "folds.json")
