"""Loss curves from a training log.csv (pretraining: every loss term; fine-tuning: loss + val)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from alice.errors import InputError  # noqa: E402
from alice.io import atomic_path  # noqa: E402

SKIP = {"step", "epoch", "lr", "grad_norm", "seconds"}


def draw_loss_curves(log_csv: Path, out_png: Path, title: str | None = None,
                     smooth: int = 10) -> Path:
    """One panel per loss column of `log_csv` (raw and a moving average over `smooth` steps)."""
    log_csv = Path(log_csv)
    if not log_csv.is_file():
        raise InputError(log_csv, "missing training log")
    frame = pd.read_csv(log_csv)
    if "step" not in frame or len(frame) == 0:
        raise InputError(log_csv, "not a training log (needs a 'step' column and rows)")
    terms = [c for c in frame.columns
             if c not in SKIP and pd.api.types.is_numeric_dtype(frame[c]) and frame[c].notna().any()]
    fig, axes = plt.subplots(1, len(terms), figsize=(3.2 * len(terms), 3.0), squeeze=False)
    for ax, term in zip(axes[0], terms):
        values = frame[[ "step", term]].dropna()
        ax.plot(values["step"], values[term], color="0.75", lw=0.8, label="per step")
        if len(values) > smooth:
            ax.plot(values["step"], values[term].rolling(smooth, min_periods=1).mean(),
                    color="C0", lw=1.6, label=f"mean of {smooth}")
        first, last = values[term].iloc[:smooth].mean(), values[term].iloc[-smooth:].mean()
        ax.set_title(f"{term}: {first:.3g} → {last:.3g}", fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title or str(log_csv), fontsize=10)
    fig.tight_layout()
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return Path(out_png)
