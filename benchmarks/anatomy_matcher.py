"""Train the demo-scale SAM-style matcher on the phantom pool and compare it with the baselines.

    python benchmarks/anatomy_matcher.py [--data results/data/flare22_pool] \
        [--truth results/phantoms/flare22/phantom_truth] [--out /tmp/alice-anatomy] \
        [--threads 2] [--pairs 60] [--seed 0] [--pair-seed 0] [--settings '{"iterations": 300}']

Steps: train `alice.anatomy.train.train_anatomy` on the pool's folds.json "train" ids with
DEFAULT_SETTINGS (overridden by --settings), embed every pool case, then score the learned
matcher ("sam"), the body-box matcher ("bbox") and the random one with
`alice.anatomy.evaluate.landmark_error_mm` on `random_pairs(all pool ids, --pairs, --pair-seed)`. The landmark
truth is only used for scoring, never for training. Prints train time, embedding time per
volume, match time per point and the error table (mm); writes a JSON summary next to the model.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from alice.anatomy.evaluate import landmark_error_mm, random_pairs, summarize
from alice.anatomy.learned import LearnedMatcher
from alice.anatomy.matcher import BodyBoxMatcher, RandomMatcher
from alice.anatomy.train import embed_cases, load_model, resolve_settings, train_anatomy
from alice.io import read_json, write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="results/data/flare22_pool")
    parser.add_argument("--truth", default="results/phantoms/flare22/phantom_truth")
    parser.add_argument("--out", default="/tmp/alice-anatomy")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--pair-seed", type=int, default=0, help="seed of the evaluation pairs")
    parser.add_argument("--settings", default="{}", help="JSON overriding DEFAULT_SETTINGS")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    folds = read_json(Path(args.data) / "folds.json")
    train_ids, all_ids = list(folds["train"]), list(folds["train"]) + list(folds["val"])
    settings = resolve_settings(json.loads(args.settings))

    t = time.perf_counter()
    train_anatomy(args.data, train_ids, out / "model", settings, seed=args.seed, progress=not args.no_progress)
    train_s = time.perf_counter() - t
    model = load_model(out / "model" / "model.pt")
    embed_s = embed_cases(model, args.data, all_ids, out / "embeddings")

    pairs = random_pairs(all_ids, args.pairs, seed=args.pair_seed)
    matchers = {"sam": LearnedMatcher(embeddings_dir=out / "embeddings"), "bbox": BodyBoxMatcher(),
                "random": RandomMatcher(seed=args.seed)}
    results = {}
    for name, matcher in matchers.items():
        landmark_error_mm(matcher, args.data, args.truth, pairs[:1])  # warm the per-volume caches
        rows = landmark_error_mm(matcher, args.data, args.truth, pairs, details=True)
        results[name] = {**summarize([r["error_mm"] for r in rows]),
                         "ms_per_match": 1e3 * float(np.mean([r["seconds"] for r in rows]))}
    coarse_mm = np.asarray(read_json(Path(args.data) / f"{all_ids[0]}.json")["cached"]["spacing"]) \
        * settings["model"]["coarse_stride"]

    print(f"threads {args.threads}  train ids {len(train_ids)}  pairs {len(pairs)} (seed {args.pair_seed})"
          f"  training seed {args.seed}")
    print(f"train   {train_s:7.1f} s  ({settings['iterations']} iterations)")
    print(f"embed   {np.mean(list(embed_s.values())):7.2f} s / volume (mean of {len(embed_s)})")
    print(f"coarse cell {coarse_mm.tolist()} mm -> 2x = {2 * coarse_mm.min():.0f}..{2 * coarse_mm.max():.0f} mm")
    print(f"{'matcher':8s} {'n':>5s} {'mean':>7s} {'median':>7s} {'p90':>7s} {'ms/match':>9s}")
    for name, r in results.items():
        print(f"{name:8s} {r['n']:5d} {r['mean']:7.1f} {r['median']:7.1f} {r['p90']:7.1f} {r['ms_per_match']:9.2f}")
    write_json(out / "summary.json", {"settings": settings, "seed": args.seed, "threads": args.threads,
                                      "train_seconds": train_s, "embed_seconds": embed_s, "results": results})


if __name__ == "__main__":
    main()
