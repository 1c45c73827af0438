"""Fake results for the table tests: metrics files for every source of the enabled cells, and
fine-tuned model files (metadata only) plus manifests for Table 8. No training."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from alice import config as cfg
from alice.tables.spec import cell_sources, load_spec, table_ids
from fakes import write_training_record

FLARE_TEST = [f"FLARETs_{i:04d}" for i in range(1, 5)]  # the fixed offline test set


def fake_value(*key) -> float:
    """A deterministic value in [0.30, 0.90) per key (run, fold, case, metric), so runs differ."""
    digest = hashlib.sha256("/".join(map(str, key)).encode()).digest()
    return 0.30 + 0.60 * int.from_bytes(digest[:4], "big") / 2**32


def write_metrics_file(root: Path, rel: str) -> dict:
    """A metrics.json as `alice evaluate` writes it (case_mean per case, mean over cases; MosMed:
    the split's AUC), with the settings hash and code version."""
    parts = rel.split("/")  # results/finetune/{dataset}/{run}/{backbone}/fold{k}[/labels..]/metrics.json
    dataset, run, backbone, fold = parts[2], parts[3], parts[4], int(parts[5][4:])
    if dataset == "mosmed":
        data = {"mean": {"auc": fake_value(rel, "auc")}, "cases": {}}
    else:
        cases = FLARE_TEST if dataset == "flare22" else [f"img{fold:02d}{i}" for i in range(2)]
        case_mean = {c: {m: fake_value(run, backbone, c, m) for m in ("dsc", "nsd")} for c in cases}
        data = {"case_mean": case_mean,
                "mean": {m: sum(v[m] for v in case_mean.values()) / len(cases) for m in ("dsc", "nsd")}}
    data.update(dataset=dataset, fold=fold, settings_hash=f"h-{run}-{backbone}-{fold}",
                code_version="0.1.0+gtest")
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    write_training_record(root, rel)
    return data


def write_model_file(root: Path, rel: str, config: dict) -> None:
    """A fine-tuned model.pt holding what `alice finetune` records (no weights): the backbone's
    fine-tuning section of `config`, as the rule passes it."""
    import torch

    parts = rel.split("/")
    dataset, run, backbone, fold = parts[2], parts[3], parts[4], int(parts[5][4:])
    settings = cfg.finetune_settings(config, backbone)
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "backbone": backbone, "num_classes": 14,
                "settings": settings["finetune"], "encoder_config": settings["encoder"],
                "dataset": dataset, "method": run, "init": "scratch", "fold": fold,
                "seed": settings["seed"], "code_version": "0.1.0+gtest"}, path)
    write_training_record(root, rel)


def write_manifest(root: Path, rel: str, config: dict) -> None:
    dataset = rel.split("/")[2]
    spacing = config["datasets"][dataset]["spacing"]
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"dataset": dataset, "preprocessing": {"spacing": spacing},
                                "settings_hash": f"m-{dataset}", "code_version": "0.1.0+gtest"}))


def make_results(root: Path, settings: dict, config: dict | None = None,
                 tables: list[str] | None = None) -> None:
    """Every source file of every enabled cell of `tables` (default all) under `root`."""
    config = config or cfg.load_config()
    for table in tables or table_ids():
        spec = load_spec(table)
        for row in spec["rows"]:
            for paths in cell_sources(spec, row, settings).values():
                for rel in paths:
                    if rel.endswith("metrics.json"):
                        write_metrics_file(root, rel)
                    elif rel.endswith("model.pt"):
                        write_model_file(root, rel, config)
                    else:
                        write_manifest(root, rel, config)


@pytest.fixture(scope="session")
def fake_results():
    return make_results
