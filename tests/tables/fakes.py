"""Fake training records for the table tests: the `train_summary.json` beside a fold's result and,
for a pretrained initialisation, the pretraining run's `log.csv`, which a reproduced cell's
protocol is read from (alice.tables.protocol). No training."""

from __future__ import annotations

import json
from pathlib import Path

from alice import config as cfg
from alice.errors import ConfigError

FINETUNE_STEPS = 80      # segmentation steps (MosMed: iterations) every fake fold records
PRETRAIN_STEPS = 300     # pretraining steps every fake pretraining log ends with


def _encoder(backbone: str) -> str:
    """The backbone's pretraining encoder; a backbone the harness lacks (everything-enabled
    table tests: CNNs of Table 2) gets a folder of its own name."""
    try:
        return cfg.backbone_encoder(backbone) or backbone
    except ConfigError:
        return backbone


def write_training_record(root: Path, rel: str, steps: int = FINETUNE_STEPS,
                          pretrain_steps: int = PRETRAIN_STEPS) -> None:
    """`rel`: a fold's metrics.json or model.pt, results/finetune/{dataset}/{run}/{backbone}/fold{k}/..."""
    parts = rel.split("/")
    dataset, run, backbone = parts[2], parts[3], parts[4]
    folder = root / Path(rel).parent
    folder.mkdir(parents=True, exist_ok=True)
    if run == "rand_init":
        init = "scratch"
    else:
        encoder = "vit" if dataset == "mosmed" else _encoder(backbone)
        init = f"results/pretrain/{run}/{encoder}/checkpoint.pt"
        log = root / Path(init).parent / "log.csv"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("step,lr,loss\n" + "".join(f"{s},0.001,{1.0 / s:.4f}\n"
                                                  for s in range(1, pretrain_steps + 1)))
    key = "iterations" if dataset == "mosmed" else "steps"
    (folder / "train_summary.json").write_text(json.dumps({key: steps, "init": init}))
