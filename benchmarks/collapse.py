"""Collapse of Alice's contrastive embeddings per loss variant, at the scale of a config.

    python benchmarks/collapse.py [--config config/config.yaml] [--encoders vit nnformer]
        [--variants alice alice__predictor-false alice__head_norm-none
                    alice__contrastive_loss-dino__head_norm-none]
        [--data results/data/flare22_pool] [--matcher bbox] [--out /tmp/alice-collapse]
        [--figure results/figures/collapse.png] [--threads 1] [--steps N]

For every (encoder, variant) it runs `alice pretrain` (the config's pretraining settings; by default
the body-box matcher instead of the learned one, so no anatomy model is needed; `--matcher sam`
keeps the config's) into OUT/{variant}/{encoder} (a finished run is reused), then reads its
log.csv and plots the collapse monitors `dv_spread` (ℓ_dv's student [cls], φ's output) and
`st_spread` (CASA's student embeddings S) against the step: one row per encoder, one column per
monitor, one line per variant (`alice.ssl.alice.spread`: ≈ 1 spread over the sphere, 0 collapsed).
Writes the figure and, beside it, a CSV with each run's first and last values (and the mean of
its last 10 steps). The pool: `snakemake --cores 1 results/data/flare22_pool/folds.json`.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
from pathlib import Path

import yaml

MONITORS = ("dv_spread", "st_spread")
LABELS = {"alice": "predictor + BN heads (default)", "alice__predictor-false": "no predictor",
          "alice__head_norm-none": "predictor, heads without BN",
          "alice__contrastive_loss-dino__head_norm-none": "DINO-style (released code)"}


def read_log(path: Path) -> dict[str, list[float]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: [float(r[k]) for r in rows] for k in ("step",) + MONITORS}


def run(config: Path, variant: str, encoder: str, data: str, out: Path, threads: int, steps: int | None) -> Path:
    log = out / "log.csv"
    if (out / "checkpoint.pt").is_file() and log.is_file():
        return log
    cmd = [sys.executable, "-m", "alice.cli", "pretrain", "--config", str(config), "--method", variant,
           "--encoder", encoder, "--out", str(out), "--data", data, "--threads", str(threads), "--no-progress"]
    if steps:
        cmd += ["--steps", str(steps)]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--encoders", nargs="+", default=["vit", "nnformer"])
    parser.add_argument("--variants", nargs="+", default=list(LABELS))
    parser.add_argument("--data", default="results/data/flare22_pool")
    parser.add_argument("--matcher", default="bbox", choices=["bbox", "sam", "config"])
    parser.add_argument("--out", default="/tmp/alice-collapse")
    parser.add_argument("--figure", default="results/figures/collapse.png")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=None, help="override optim.iterations")
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load(Path(args.config).read_text())
    if args.matcher != "config":
        config["pretrain"]["pairs"]["matcher"] = args.matcher
    run_config = out / "config.yaml"
    run_config.write_text(yaml.safe_dump(config, sort_keys=False))

    logs = {}
    for encoder in args.encoders:
        for variant in args.variants:
            logs[encoder, variant] = read_log(run(run_config, variant, encoder, args.data,
                                                  out / variant / encoder, args.threads, args.steps))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(args.encoders), 2, figsize=(10, 3.2 * len(args.encoders)), squeeze=False,
                             sharey=True)
    for i, encoder in enumerate(args.encoders):
        for j, monitor in enumerate(MONITORS):
            ax = axes[i][j]
            for variant in args.variants:
                log = logs[encoder, variant]
                ax.plot(log["step"], log[monitor], label=LABELS.get(variant, variant), lw=1)
            ax.axhline(0.3, color="grey", ls=":", lw=1)
            ax.set_title(f"{encoder}: {monitor}")
            ax.set_xlabel("step")
            ax.set_ylim(0, 1.1)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    figure = Path(args.figure)
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=120)

    rows = []
    for (encoder, variant), log in logs.items():
        row = {"encoder": encoder, "variant": variant, "steps": int(log["step"][-1])}
        for monitor in MONITORS:
            values = log[monitor]
            row[f"{monitor}_first"] = round(values[0], 4)
            row[f"{monitor}_last"] = round(values[-1], 4)
            row[f"{monitor}_last10_mean"] = round(sum(values[-10:]) / len(values[-10:]), 4)
        rows.append(row)
    table = figure.with_suffix(".csv")
    with open(table, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for row in rows:
        print(", ".join(f"{k}={v}" for k, v in row.items()))
    print(f"wrote {figure} and {table}")


if __name__ == "__main__":
    main()
