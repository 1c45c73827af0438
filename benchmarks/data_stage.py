"""Time the data stage on the demo config: phantom generation, preprocessing and folds.

    python benchmarks/data_stage.py [--config config/config.yaml] [--out /tmp/alice-bench]

Prints one line per step and dataset with wall-clock seconds and case counts, so the figures
quoted in docs/demo.md and issue notes can be re-measured on any machine.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from alice import config as cfg
from alice.data.folds import make_folds, write_folds
from alice.data.phantom import write_dataset
from alice.data.preprocess import prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None)
    parser.add_argument("--out", default="/tmp/alice-bench")
    args = parser.parse_args()
    config = cfg.load_config(args.config)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)

    total = 0.0
    for release in ("flare22", "btcv", "mosmed"):
        s = cfg.phantom_settings(config, release)
        t = time.perf_counter()
        summary = write_dataset(release, out / "phantoms" / release, s["counts"], seed=s["seed"],
                                geometry=s["geometry"])
        dt = time.perf_counter() - t
        total += dt
        print(f"phantom  {release:13s} {dt:7.1f} s  {summary.get('counts')}")
    print(f"phantom  {'all':13s} {total:7.1f} s")

    for dataset in cfg.DATASETS:
        t = time.perf_counter()
        manifest = prepare(dataset, out / "phantoms" / cfg.RELEASE_OF[dataset],
                           out / "data" / dataset, cfg.dataset_settings(config, dataset),
                           progress=False)
        dt_prep = time.perf_counter() - t
        t = time.perf_counter()
        fs = cfg.folds_settings(config, dataset)
        seed = fs.pop("seed")
        write_folds(out / "data" / dataset / "folds.json", make_folds(dataset, manifest, fs, seed))
        dt_folds = time.perf_counter() - t
        size = sum(p.stat().st_size for p in (out / "data" / dataset).glob("*.npy")) / 2**20
        print(f"prepare  {dataset:13s} {dt_prep:7.1f} s  {len(manifest['cases'])} cases, "
              f"{size:.1f} MiB cache; folds {dt_folds:.2f} s")


if __name__ == "__main__":
    main()
