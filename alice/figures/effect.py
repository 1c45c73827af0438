"""The pretraining-effect figure: test DSC (and NSD) against the number of labeled training cases.

One panel per metric; per method, each subset seed's value (the mean over test cases of the case
means, faint dots) and their mean ± standard deviation over seeds (line and error bars). Above
each labeled count: the two-sided Wilcoxon p of each method against Rand. init.
(`alice.tables.effect.paired_tests`). The title states the scale; at demo scale it says the numbers
are not comparable with the paper.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from alice.io import atomic_path  # noqa: E402

METRIC_NAMES = {"dsc": "DSC", "nsd": "NSD"}
COLOURS = {"rand_init": "tab:gray", "alice": "tab:red"}
DEMO_STAMP = "demo: phantom data, reduced models/steps — not comparable with the paper"


def title_of(scale: str, dataset: str, backbone: str) -> str:
    from alice.tables.protocol import scale_note

    stamp = DEMO_STAMP if scale == "demo" else scale_note(scale)
    return f"Pretraining effect at low label counts ({dataset}, {backbone})\n{stamp}"


def draw_effect(means: pd.DataFrame, tests: pd.DataFrame, out_png: Path, scale: str) -> Path:
    """`means`: one line per (method, labeled, seed, case) with dsc and nsd (read_runs)."""
    from alice.tables.effect import REFERENCE, label

    per_seed = (means.groupby(["method", "labeled", "seed"])[["dsc", "nsd"]].mean().reset_index())
    labeled = sorted(per_seed["labeled"].unique())
    methods = [REFERENCE] + sorted(set(per_seed["method"]) - {REFERENCE})
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), squeeze=False)
    for ax, metric in zip(axes[0], ("dsc", "nsd")):
        for k, method in enumerate(methods):
            rows = per_seed[per_seed["method"] == method]
            colour = COLOURS.get(method, f"C{k}")
            offset = (k - (len(methods) - 1) / 2) * 0.04  # side by side on the log axis
            xs = [x * (1 + offset) for x in rows["labeled"]]
            ax.scatter(xs, rows[metric], s=12, alpha=0.35, color=colour)
            stats = rows.groupby("labeled")[metric].agg(["mean", "std"]).reindex(labeled)
            ax.errorbar([x * (1 + offset) for x in labeled], stats["mean"], yerr=stats["std"].fillna(0),
                        marker="o", capsize=3, color=colour,
                        label=f"{label(method)} (mean ± sd over seeds)")
        spread = per_seed.groupby(["method", "labeled"])[metric].agg(["mean", "std"])
        # above every seed's dot and every error bar
        top = float(np.nanmax([per_seed[metric].max(), (spread["mean"] + spread["std"].fillna(0)).max()]))
        at = tests[tests["metric"] == metric] if len(tests) else tests
        for n in labeled:
            named = len(methods) > 2  # several methods against Rand. init.: say which p is whose
            lines = [(f"{label(row.method)} " if named else "")
                     + (f"p={row.p_value:.3g}" if pd.notna(row.p_value) else "no test")
                     for row in at[at["labeled"] == n].itertuples()]
            if lines:
                ax.annotate("\n".join(lines), (n, top), xytext=(0, 8), textcoords="offset points",
                            ha="center", va="bottom", fontsize=8)
        ax.set_xscale("log", base=2)
        ax.set_xlim(labeled[0] / 1.5, labeled[-1] * 1.5)
        ax.set_xticks(labeled, [str(n) for n in labeled])
        ax.minorticks_off()
        ax.set_xlabel("labeled training cases")
        ax.set_ylabel(f"test {METRIC_NAMES[metric]} (mean over test cases)")
        ax.set_ylim(bottom=0, top=max(1e-3, top) * 1.25)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    first = means.iloc[0]
    fig.suptitle(title_of(scale, first["dataset"], first["backbone"]) +
                 "\n(p: two-sided Wilcoxon signed-rank vs Rand. init., pairs = seed × test case)",
                 fontsize=9)
    fig.tight_layout()
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return Path(out_png)
