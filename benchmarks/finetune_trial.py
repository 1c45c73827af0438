"""One fine-tuning trial: a backbone's recipe with overrides, one fold, scored per organ.

    python benchmarks/finetune_trial.py --backbone nnformer --spacing 4,4,5 \
        --set optim.lr=5e-3 optim.epochs=75 augmentation=[] batch_dice=true samples_per_volume=4 \
        [--encoder-set embed_dim=48 heads=[2,4,8] --score-train]

Trains Rand. init. on `--fold`'s training cases with `finetune.<backbone>` of the config plus the
`--set` overrides (dotted keys, JSON values; `--encoder-set` changes the encoder's architecture,
e.g. its width), through `alice.downstream.segmentation.finetune` exactly as the DAG does, then
scores the offline test cases (FLARE22; BTCV: the fold's held-out cases) with
`alice.downstream.inference.evaluate` and prints the mean DSC and each organ's, the steps and the
seconds; `--score-train` also scores the fold's training cases (the gap to the test cases is
overfitting, a low score on both underfitting). `--spacing` prepares the dataset's phantom at
another cache spacing first (in `--work`, reused on the next call); without it the DAG's cache
`results/data/<dataset>` is used (build it with `snakemake --cores all
results/data/<dataset>/folds.json`). Nothing is written under results/. This is how the
per-recipe numbers in docs/finetuning.md "Fine-tuning and evaluation" ("What bounds the demo's
scores") were measured.
"""

from __future__ import annotations

import argparse
import copy
import shutil
import time
from pathlib import Path

import numpy as np

from alice import config as cfg
from overrides import set_override  # benchmarks/overrides.py, beside this script


def _data(args, config) -> Path:
    if not args.spacing:
        return Path(f"results/data/{args.dataset}")
    from alice.data.preprocess import prepare

    spacing = [float(v) for v in args.spacing.split(",")]
    out = Path(args.work) / f"{args.dataset}_{'x'.join(f'{v:g}' for v in spacing)}"
    if not (out / "manifest.json").is_file():
        settings = cfg.dataset_settings(config, args.dataset)
        settings["spacing"] = spacing
        prepare(args.dataset, cfg.resolved_root(config, args.dataset), out, settings, progress=False)
    folds = Path(f"results/data/{args.dataset}/folds.json")
    if not folds.is_file():
        raise SystemExit(f"{folds} not found: run `snakemake --cores all {folds}` first (the folds are the DAG's)")
    shutil.copyfile(folds, out / "folds.json")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None)
    parser.add_argument("--dataset", default="flare22", choices=["flare22", "btcv"])
    parser.add_argument("--backbone", default="nnformer")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--spacing", default=None, help="x,y,z in mm: prepare the phantom at this cache spacing")
    parser.add_argument("--set", nargs="*", default=[], help="overrides of finetune.<backbone>: KEY=JSON")
    parser.add_argument("--encoder-set", nargs="*", default=[],
                        help="overrides of the backbone's pretrain.encoders entry: KEY=JSON (e.g. embed_dim=48)")
    parser.add_argument("--work", default="/tmp/alice-trial")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--score-train", action="store_true",
                        help="also score the fold's training cases (the gap to the test cases is overfitting)")
    args = parser.parse_args()

    from alice.downstream.inference import evaluate
    from alice.downstream.segmentation import finetune

    config = cfg.load_config(args.config)
    settings = copy.deepcopy(config["finetune"][args.backbone])
    for item in args.set:
        set_override(settings, item)
    encoder = copy.deepcopy(cfg.encoder_config(config, cfg.backbone_encoder(args.backbone)))
    for item in args.encoder_set:
        set_override(encoder, item)
    data = _data(args, config)
    out = Path(args.work) / f"run_{args.backbone}_{args.dataset}_fold{args.fold}"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    summary = finetune(dataset=args.dataset, backbone=args.backbone, method="rand_init", init="scratch",
                       fold=args.fold, data_dir=data, out_dir=out, settings=settings, encoder_config=encoder,
                       seed=int(config["seed"]), threads=args.threads, progress=True)
    t1 = time.perf_counter()
    print(f"{args.backbone} {args.dataset} fold {args.fold}: {summary['steps']} steps, train {t1 - t0:.0f} s")
    splits = ["test" if args.dataset == "flare22" else f"val:{args.fold}"]
    if args.score_train:
        splits.append(f"train:{args.fold}")
    for split in splits:
        metrics = evaluate(dataset=args.dataset, model_dir=out, data_dir=data,
                           out_path=out / f"metrics_{split.split(':')[0]}.json",
                           split=split, threads=args.threads, progress=False, save_predictions=False)
        organs = list(next(iter(metrics["cases"].values())))
        per_organ = {o: float(np.nanmean([c[o]["dsc"] for c in metrics["cases"].values()])) for o in organs}
        print(f"  {split}: mean DSC {metrics['mean']['dsc']:.3f} over {metrics['n_cases']} cases")
        print("  " + "  ".join(f"{o} {v:.2f}" for o, v in per_organ.items()))


if __name__ == "__main__":
    main()
