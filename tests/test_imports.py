"""Stages that neither train nor predict never import torch or MONAI (~2-4 s of start-up each, paid
by every such job of the DAG: docs/demo.md "Start-up cost"): the CLI itself, `alice folds`, the figures
drawn from CSV logs, and the import chains of `alice effect` and the figures that read images.
The table stages: tests/tables/test_light_stages.py."""

from __future__ import annotations

import json


def test_cli_folds_and_curve_figures_import_neither_torch_nor_monai(tmp_path, light_stages):
    data = tmp_path / "data/btcv"
    data.mkdir(parents=True)
    cases = ([{"case_id": f"img{i:04d}", "split": "train"} for i in range(1, 13)]
             + [{"case_id": f"T{i:04d}", "split": "test"} for i in range(1, 3)])
    (data / "manifest.json").write_text(json.dumps({"dataset": "btcv", "cases": cases}))
    (tmp_path / "pretrain.csv").write_text(
        "step,lr,loss,loss_mim\n" + "".join(f"{s},0.001,{2 / s:.4f},{1 / s:.4f}\n" for s in range(1, 21)))
    (tmp_path / "finetune.csv").write_text(
        "step,loss,val_dice\n" + "".join(f"{s},{2 / s:.4f},{0.5 + s / 100:.3f}\n" for s in range(1, 21)))
    light_stages([
        ["folds", "--dataset", "btcv", "--data", "data/btcv"],
        ["figure", "curves", "--log", "pretrain.csv", "--out", "pretrain.png"],
        ["figure", "finetune", "--log", "rand_init=finetune.csv", "--out", "finetune.png"],
        # stages whose inputs (NIfTI images, low-label runs) are built elsewhere: their modules
        ["import:alice.tables.effect"], ["import:alice.figures.effect"],
        ["import:alice.figures.phantom"], ["import:alice.figures.overlays"],
        ["import:alice.figures.matching"], ["import:alice.data.preprocess"],
        ["import:alice.anatomy.evaluate"], ["import:alice.data.phantom"],
    ], cwd=tmp_path)
    assert (data / "folds.json").is_file() and (tmp_path / "finetune.png").is_file()
