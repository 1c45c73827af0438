"""What the demo's runs learned, recomputed from what they saved: per backbone and method, the
13-organ mean DSC (and NSD) over each fold's test cases, mean ± sd over the folds, and chosen
organs; MosMed AUC per label fraction from each split's saved test scores; every pretraining
run's loss, first and last steps, and its embedding spreads at the end.

    python benchmarks/demo_scores.py [--results results]

Segmentation: every `results/finetune/{flare22,btcv}/{method}/{backbone}/fold{k}/predictions/*.nii.gz`
(what `alice evaluate` wrote) is scored again against the source label its cached case records
(`results/data/{dataset}/{case}.json` → `source.label`) with `alice.metrics.score_case`, the same
rules as the tables; a fold whose recomputed mean differs from its `metrics.json` by more than
1e-6 is reported, since then the table's number is not the predictions'. MosMed: AUC of each
split's `metrics.json` test labels and scores (`alice.metrics.auc`). Pretraining: from
`results/pretrain/{run}/{encoder}/log.csv`, the loss of the first and the last 10 steps and every
collapse monitor at the last step (`*spread`: the spread of the l2-normalised embeddings across a
batch; near 0 means collapse). Reads only; writes nothing.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

ORGANS_SHOWN = ("liver", "right_kidney", "left_kidney", "spleen", "aorta", "pancreas", "stomach")


def _fold_scores(fold_dir: Path, dataset: str, data_dir: Path, root: Path) -> tuple[dict, float | None]:
    """{case: {organ: {"dsc", "nsd"}}} recomputed from the fold's predictions, and its recorded mean DSC."""
    import nibabel as nib
    from nibabel.affines import voxel_sizes

    from alice.metrics import score_case

    cases = {}
    for pred_path in sorted((fold_dir / "predictions").glob("*.nii.gz")):
        case_id = pred_path.name[: -len(".nii.gz")]
        meta = json.loads((data_dir / f"{case_id}.json").read_text())
        source = Path(meta["source"]["label"])
        gt_img = nib.load(source if source.is_absolute() else root / source)  # relative to the run's folder
        gt = np.rint(np.asanyarray(gt_img.dataobj)).astype(np.int16)
        pred = np.asanyarray(nib.load(pred_path).dataobj).astype(np.int16)
        cases[case_id] = score_case(gt, pred, tuple(float(v) for v in voxel_sizes(gt_img.affine)), dataset)
    metrics = fold_dir / "metrics.json"
    recorded = json.loads(metrics.read_text())["mean"]["dsc"] if metrics.is_file() else None
    return cases, recorded


def _case_mean(scores: dict, metric: str) -> float:
    return float(np.nanmean([s[metric] for s in scores.values()]))


def segmentation(results: Path) -> list[dict]:
    rows = []
    for dataset in ("flare22", "btcv"):
        data_dir = results / "data" / dataset
        for run_dir in sorted((results / "finetune" / dataset).glob("*/*")):
            method, backbone = run_dir.parent.name, run_dir.name
            folds = sorted(run_dir.glob("fold*"), key=lambda p: int(p.name[4:]))
            per_fold, organs, mismatched = [], defaultdict(list), []
            for fold_dir in folds:
                cases, recorded = _fold_scores(fold_dir, dataset, data_dir, results.parent)
                if not cases:
                    continue
                dsc = float(np.mean([_case_mean(s, "dsc") for s in cases.values()]))
                nsd = float(np.mean([_case_mean(s, "nsd") for s in cases.values()]))
                per_fold.append((dsc, nsd))
                if recorded is not None and abs(recorded - dsc) > 1e-6:
                    mismatched.append(f"{fold_dir.name}: {recorded:.4f} recorded, {dsc:.4f} recomputed")
                for organ in next(iter(cases.values())):
                    organs[organ].append(float(np.nanmean([c[organ]["dsc"] for c in cases.values()])))
            if not per_fold:
                continue
            dsc = np.array([d for d, _ in per_fold])
            nsd = np.array([n for _, n in per_fold])
            rows.append({"dataset": dataset, "method": method, "backbone": backbone, "folds": len(per_fold),
                         "dsc": dsc.mean(), "dsc_sd": dsc.std(ddof=1) if len(dsc) > 1 else float("nan"),
                         "nsd": nsd.mean(), "organs": {o: float(np.mean(v)) for o, v in organs.items()},
                         "mismatched": mismatched})
    return rows


def classification(results: Path) -> list[dict]:
    from alice.metrics import auc

    rows = []
    for run_dir in sorted((results / "finetune" / "mosmed").glob("*/*")):
        by_fraction = defaultdict(list)
        for metrics in sorted(run_dir.glob("fold*/labels*/metrics.json")):
            data = json.loads(metrics.read_text())
            cases = data["cases"].values()
            by_fraction[metrics.parent.name].append(
                auc([c["label"] for c in cases], [c["score"] for c in cases]))
        for fraction, values in sorted(by_fraction.items(), key=lambda kv: int(re.sub(r"\D", "", kv[0]))):
            v = np.array(values)
            rows.append({"method": run_dir.parent.name, "backbone": run_dir.name, "labels": fraction,
                         "splits": len(v), "auc": v.mean(), "auc_sd": v.std(ddof=1) if len(v) > 1 else float("nan"),
                         "min": v.min()})
    return rows


def pretraining(results: Path, window: int = 10) -> list[dict]:
    """Per run: the loss averaged over its first and last `window` steps (does it fall?) and every
    collapse monitor (columns ending in `spread`) at its last step."""
    rows = []
    for log in sorted((results / "pretrain").glob("*/*/log.csv")):
        with open(log, newline="") as fh:
            lines = list(csv.DictReader(fh))
        if not lines:
            continue
        last = lines[-1]
        loss = [float(r["loss"]) for r in lines]
        rows.append({"run": log.parent.parent.name, "encoder": log.parent.name, "step": int(float(last["step"])),
                     "loss_first": float(np.mean(loss[:window])), "loss_last": float(np.mean(loss[-window:])),
                     "spreads": {k: float(v) for k, v in last.items() if k.endswith("spread") and v}})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results", type=Path)
    args = parser.parse_args()

    seg = segmentation(args.results)
    _table(["dataset", "method", "backbone", "folds", "DSC (mean ± sd over folds)", "NSD", *ORGANS_SHOWN],
           [[r["dataset"], r["method"], r["backbone"], r["folds"], f"{r['dsc']:.3f} ± {r['dsc_sd']:.3f}",
             f"{r['nsd']:.3f}", *(f"{r['organs'].get(o, float('nan')):.2f}" for o in ORGANS_SHOWN)] for r in seg])
    for r in seg:
        for line in r["mismatched"]:
            print(f"MISMATCH {r['dataset']}/{r['method']}/{r['backbone']} {line}")
    _table(["method", "backbone", "labels", "splits", "AUC (mean ± sd)", "lowest split"],
           [[r["method"], r["backbone"], r["labels"], r["splits"], f"{r['auc']:.3f} ± {r['auc_sd']:.3f}",
             f"{r['min']:.3f}"] for r in classification(args.results)])
    _table(["pretraining run", "encoder", "steps", "loss, first → last 10 steps", "spread at the end"],
           [[r["run"], r["encoder"], r["step"], f"{r['loss_first']:.3f} → {r['loss_last']:.3f}",
             ", ".join(f"{k} {v:.2f}" for k, v in r["spreads"].items())] for r in pretraining(args.results)])


def _table(header: list[str], rows: list[list]) -> None:
    """A markdown table, preceded by a blank line; nothing when there are no rows."""
    if not rows:
        return
    print("\n| " + " | ".join(header) + " |\n" + "| --- " * len(header) + "|")
    for row in rows:
        print("| " + " | ".join(str(v) for v in row) + " |")


if __name__ == "__main__":
    main()
