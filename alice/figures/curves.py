"""Training curves from log.csv files.

- `draw_loss_curves`: one pretraining run — a panel per loss term (ℓ_r, ℓ_dv, ℓ_st and their sum,
  eqs. 1, 2, 5 of the paper) and, when the log has them, a second row with the collapse monitors
  (`*_spread` columns, `alice.ssl.alice.spread`: ≈ 1 for embeddings spread over the sphere, 0 for
  a collapsed one).
- `draw_finetune_curves`: the fine-tuning of one (dataset, backbone), several methods, every fold:
  training loss per step and validation Dice where logged (`alice finetune`'s log.csv).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from alice.errors import InputError  # noqa: E402
from alice.io import atomic_path  # noqa: E402

SKIP = {"step", "epoch", "lr", "grad_norm", "seconds"}
MONITOR_SUFFIX = "_spread"


def _read_log(log_csv: Path, needs: Sequence[str] = ("step",)) -> pd.DataFrame:
    log_csv = Path(log_csv)
    if not log_csv.is_file():
        raise InputError(log_csv, "missing training log")
    try:
        frame = pd.read_csv(log_csv)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(log_csv, f"not a readable CSV ({type(exc).__name__})") from None
    missing = [c for c in needs if c not in frame]
    if missing or len(frame) == 0:
        raise InputError(log_csv, f"not a training log (needs columns {list(needs)} and rows; "
                         f"has {list(frame.columns)})")
    for column in needs:
        if not pd.api.types.is_numeric_dtype(frame[column]):
            raise InputError(log_csv, f"column '{column}' is not numeric")
    return frame


def _save(fig, out_png: Path) -> Path:
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return Path(out_png)


def draw_loss_curves(log_csv: Path, out_png: Path, title: str | None = None,
                     smooth: int = 10) -> Path:
    """One panel per loss column of `log_csv` (raw and a moving average over `smooth` steps); the
    collapse monitors (`*_spread`) together in a second row."""
    log_csv = Path(log_csv)
    frame = _read_log(log_csv)
    numeric = [c for c in frame.columns
               if c not in SKIP and pd.api.types.is_numeric_dtype(frame[c]) and frame[c].notna().any()]
    terms = [c for c in numeric if not c.endswith(MONITOR_SUFFIX)]
    monitors = [c for c in numeric if c.endswith(MONITOR_SUFFIX)]
    if not terms:
        raise InputError(log_csv, "has no loss column to plot")
    ncols = len(terms)
    fig = plt.figure(figsize=(3.2 * max(ncols, 2), 3.0 * (2 if monitors else 1)))
    grid = fig.add_gridspec(2 if monitors else 1, ncols)
    axes = [fig.add_subplot(grid[0, i]) for i in range(ncols)]
    for ax, term in zip(axes, terms):
        values = frame[["step", term]].dropna()
        ax.plot(values["step"], values[term], color="0.75", lw=0.8, label="per step")
        if len(values) > smooth:
            ax.plot(values["step"], values[term].rolling(smooth, min_periods=1).mean(),
                    color="C0", lw=1.6, label=f"mean of {smooth}")
        first, last = values[term].iloc[:smooth].mean(), values[term].iloc[-smooth:].mean()
        ax.set_title(f"{term}: {first:.3g} → {last:.3g}", fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    if monitors:
        ax = fig.add_subplot(grid[1, :])
        notes = []
        for i, term in enumerate(monitors):
            values = frame[["step", term]].dropna()
            ax.plot(values["step"], values[term], color=f"C{i}", lw=0.6, alpha=0.35)
            ax.plot(values["step"], values[term].rolling(smooth, min_periods=1).mean(),
                    color=f"C{i}", lw=1.6, label=term)
            notes.append(f"{term} {values[term].iloc[:smooth].mean():.3g} → "
                         f"{values[term].iloc[-smooth:].mean():.3g}")
        ax.axhline(1.0, color="0.4", ls=":", lw=1)
        ax.axhline(0.0, color="C3", ls=":", lw=1)
        ax.set_ylim(bottom=min(-0.05, ax.get_ylim()[0]))
        ax.set_title("collapse monitors (std of l2-normalised embeddings × √C: ≈ 1 spread, "
                     "0 collapsed): " + ", ".join(notes), fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title or str(log_csv), fontsize=10)
    fig.tight_layout()
    return _save(fig, out_png)


def _fold_name(path: Path, index: int) -> str:
    """'fold3' from .../fold3/log.csv, else the log's position."""
    match = re.fullmatch(r"fold([0-9]+)", path.parent.name)
    return f"fold{match.group(1)}" if match else f"log {index}"


def draw_finetune_curves(runs: Sequence[tuple[str, Sequence[str | Path]]], out_png: str | Path,
                         title: str | None = None, smooth: int = 8) -> Path:
    """`runs`: (method label, its folds' log.csv files). Left: training loss per step (each fold a
    thin line, moving average over `smooth` steps; the mean over folds thick). Right, when any log
    has validation scores: `val_dice` per validation (each fold thin, the mean over folds thick)."""
    if not runs:
        raise InputError(out_png, "no fine-tuning logs given to draw")
    loaded = []
    for label, paths in runs:
        if not paths:
            raise InputError(out_png, f"method '{label}' has no log.csv")
        logs = []
        for i, path in enumerate(paths):
            frame = _read_log(Path(path), needs=("step", "loss"))
            logs.append((_fold_name(Path(path), i), frame))
        loaded.append((label, logs))
    has_val = any("val_dice" in f and f["val_dice"].notna().any()
                  for _, logs in loaded for _, f in logs)
    fig, axes = plt.subplots(1, 2 if has_val else 1, figsize=(11 if has_val else 6, 3.8),
                             squeeze=False)
    ax_loss = axes[0][0]
    for i, (label, logs) in enumerate(loaded):
        color = f"C{i}"
        curves = []
        for fold, frame in logs:
            curve = frame.set_index("step")["loss"].dropna().rolling(smooth, min_periods=1).mean()
            ax_loss.plot(curve.index, curve.values, color=color, lw=0.7, alpha=0.35)
            curves.append(curve)
        mean = pd.concat(curves, axis=1).mean(axis=1).sort_index()
        first = sum(f["loss"].dropna().iloc[:smooth].mean() for _, f in logs) / len(logs)
        last = sum(f["loss"].dropna().iloc[-smooth:].mean() for _, f in logs) / len(logs)
        ax_loss.plot(mean.index, mean.values, color=color, lw=2,
                     label=f"{label} ({len(logs)} folds): {first:.3g} → {last:.3g}")
        if has_val:
            ax_val = axes[0][1]
            scores = []
            for fold, frame in logs:
                if "val_dice" not in frame:
                    continue
                val = frame.set_index("step")["val_dice"].dropna()
                if len(val):
                    ax_val.plot(val.index, val.values, color=color, lw=0.7, alpha=0.35, marker=".")
                    scores.append(val)
            if scores:
                mean_val = pd.concat(scores, axis=1).mean(axis=1).sort_index()
                ax_val.plot(mean_val.index, mean_val.values, color=color, lw=2, marker="o",
                            ms=4, label=f"{label}: last {mean_val.iloc[-1]:.3g}")
    ax_loss.set_title(f"training loss (moving average of {smooth} steps; thin: folds, "
                      "thick: their mean)", fontsize=9)
    ax_loss.set_xlabel("step")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend(fontsize=7)
    if has_val:
        ax_val = axes[0][1]
        ax_val.set_title("validation Dice of the fold's val cases (thin: folds, thick: mean)",
                         fontsize=9)
        ax_val.set_xlabel("step")
        ax_val.grid(alpha=0.3)
        ax_val.legend(fontsize=7)
    fig.suptitle(title or "fine-tuning", fontsize=10)
    fig.tight_layout()
    return _save(fig, Path(out_png))
