"""MosMed Rand. init. classifiers under one recipe (config + overrides): test AUC per backbone and
label fraction, mean ± sd over the splits, and the seconds it took.

    python benchmarks/mosmed_trial.py                       # the config's recipe, 10 splits, both backbones
    python benchmarks/mosmed_trial.py --backbones resnet3d --folds 0 1 2 --fractions 1.0 \
        --set optim.iterations=100 optim.lr=1e-3 'augmentation=["flip"]'

Trains `alice.downstream.classification.finetune_classifier` from scratch (`--init scratch`,
`classification` of the config plus the `--set` overrides: dotted keys, JSON values) on every
(backbone, split, label fraction) and scores the split's test part with `evaluate_classifier`,
exactly as the `finetune_classifier` rule does, one process and one torch thread
(`classification.threads`). Reads the DAG's cache `results/data/mosmed` (build it with
`snakemake --cores 1 results/data/mosmed/folds.json`); writes only under `--work` (a temporary
folder unless given) and, with `--json`, the per-run results. This is how the MosMed demo numbers of
docs/finetuning.md "Classification" were measured. The seconds are the trainings' and evaluations' own, without the ≈ 5 s
process start a DAG job adds.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from alice import config as cfg
from overrides import set_override  # benchmarks/overrides.py, beside this script


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def main() -> None:
    from alice.downstream.classification import evaluate_classifier, finetune_classifier

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--backbones", nargs="+", default=["resnet3d", "vit"])
    parser.add_argument("--folds", nargs="+", type=int, default=list(range(10)))
    parser.add_argument("--fractions", nargs="+", type=float, default=None, help="default: the config's")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=JSON")
    parser.add_argument("--data", default="results/data/mosmed")
    parser.add_argument("--work", default=None)
    parser.add_argument("--json", default=None, help="write every run's AUC, iteration and seconds here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    config = cfg.load_config(args.config)
    fractions = args.fractions or [float(f) for f in config["datasets"]["mosmed"]["label_fractions"]]
    work = Path(args.work or tempfile.mkdtemp(prefix="mosmed_trial_"))
    runs, t0 = [], time.perf_counter()
    for backbone in args.backbones:
        settings = cfg.classification_settings(config, backbone)
        section = copy.deepcopy(settings["classification"])
        for item in args.set:
            set_override(section, item)
        for fold in args.folds:
            for fraction in fractions:
                out = work / backbone / f"fold{fold}" / f"labels{round(fraction * 100)}"
                t = time.perf_counter()
                summary = finetune_classifier(
                    backbone=backbone, method="rand_init", init="scratch", fold=fold, label_fraction=fraction,
                    data_dir=args.data, out_dir=out, settings=section, encoder_config=settings["encoder"],
                    seed=settings["seed"], device=settings["device"], threads=section.get("threads", 1),
                    progress=False)
                metrics = evaluate_classifier(model_dir=out, data_dir=args.data, out_path=out / "metrics.json",
                                              device=settings["device"], threads=section.get("threads", 1))
                runs.append({"backbone": backbone, "fold": fold, "label_fraction": fraction,
                             "auc": metrics["mean"]["auc"], "best_val_auc": summary["best_val_auc"],
                             "selected_iteration": summary["selected_iteration"],
                             "final_loss": summary["final_loss"], "n_test": summary["n_test"],
                             "seconds": round(time.perf_counter() - t, 2)})
                print(f"{backbone:9s} split {fold} {fraction:4.0%}: test AUC {metrics['mean']['auc']:.3f} "
                      f"(val {_num(summary['best_val_auc'])} at it {summary['selected_iteration']}, final loss "
                      f"{summary['final_loss']:.3f}, {runs[-1]['seconds']:.1f} s)", flush=True)
    total = time.perf_counter() - t0
    print(f"\nrecipe: {json.dumps(section)}" if args.backbones else "")
    for backbone in args.backbones:
        cells = []
        for fraction in fractions:
            values = [r["auc"] for r in runs if r["backbone"] == backbone and r["label_fraction"] == fraction]
            sd = np.std(values, ddof=1) if len(values) > 1 else float("nan")
            cells.append(f"{fraction:.0%} {100 * np.mean(values):.1f} ± {100 * sd:.1f}")
        secs = sum(r["seconds"] for r in runs if r["backbone"] == backbone)
        print(f"{backbone:9s} test AUC (mean ± sd over {len(args.folds)} splits): {' / '.join(cells)}; {secs:.0f} s")
    print(f"total {total:.0f} s, {len(runs)} trainings")
    if args.json:
        Path(args.json).write_text(json.dumps({"recipe": args.set, "runs": runs, "seconds": round(total, 1)},
                                              indent=1))


if __name__ == "__main__":
    main()
