"""The pretraining-effect figure: test DSC (and NSD) against the number of labeled training cases.

One panel per metric; per method, each subset seed's value (the run's mean over its test cases of
the case means, faint dots: one model per dot) and their mean ± standard deviation over seeds
(line and error bars). Above each labeled count: the p-values of each method against the
reference (Rand. init.), paired over seeds (`alice.tables.effect.paired_tests`): W, the two-sided
Wilcoxon signed-rank p, and t, the paired t-test's; the subtitle states the unit and the smallest
p the Wilcoxon test can give with that many seeds. The title states the scale; at demo scale it
says the numbers are not comparable with the paper.

`draw_effect` takes the reference, the method labels and the per-seed values as arguments;
`write_effect` (the `alice effect` stage) computes them with alice.tables.effect and writes the two
CSVs beside the figure.
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


def _p(value) -> str:
    return f"{value:.3g}" if pd.notna(value) else "–"


def unit_line(tests: pd.DataFrame) -> str:
    """The subtitle, two lines: the unit of the tests, and the tests with the floor of the exact
    Wilcoxon p at the numbers of seeds present."""
    floors = sorted({(int(n), float(p)) for n, p in zip(tests.get("n_nonzero", []),
                                                        tests.get("min_attainable_p", []))
                     if pd.notna(p) and float(p) > 0.05})
    floor = "".join(f"; with {n} seeds W ≥ {p:.3g}" for n, p in floors)
    return ("p over seeds (the unit: one model per method and seed, its test cases averaged first)\n"
            f"W: two-sided Wilcoxon signed-rank{floor}; t: paired t-test")


def draw_effect(per_seed: pd.DataFrame, tests: pd.DataFrame, out_png: Path, scale: str,
                reference: str, labels: dict[str, str]) -> Path:
    """`per_seed`: one line per run (method, labeled, seed) with dsc, nsd, dataset and backbone
    (alice.tables.effect.seed_means); `tests`: paired_tests; `reference`: the method the tests
    compare against; `labels`: display names of methods (default: the method's name)."""
    def label(method: str) -> str:
        return labels.get(method, method)

    labeled = sorted(per_seed["labeled"].unique())
    methods = [reference] + sorted(set(per_seed["method"]) - {reference})
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), squeeze=False)
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
            named = len(methods) > 2  # several methods against the reference: say which p is whose
            lines = [(f"{label(row.method)} " if named else "")
                     + (f"W {_p(row.p_value)}, t {_p(row.p_ttest)}" if pd.notna(row.p_value) else "no test")
                     for row in at[at["labeled"] == n].itertuples()]
            if lines:
                ax.annotate("\n".join(lines), (n, top), xytext=(0, 8), textcoords="offset points",
                            ha="center", va="bottom", fontsize=7)
        ax.set_xscale("log", base=2)
        ax.set_xlim(labeled[0] / 1.5, labeled[-1] * 1.5)
        ax.set_xticks(labeled, [str(n) for n in labeled])
        ax.minorticks_off()
        ax.set_xlabel("labeled training cases")
        ax.set_ylabel(f"test {METRIC_NAMES[metric]} (mean over test cases)")
        ax.set_ylim(bottom=0, top=max(1e-3, top) * 1.25)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    first = per_seed.iloc[0]
    fig.suptitle(title_of(scale, first["dataset"], first["backbone"]) + f"\n{unit_line(tests)}",
                 fontsize=9)
    fig.tight_layout()
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return Path(out_png)


def write_effect(metrics: list[Path], out_csv: Path, out_tests: Path, out_png: Path,
                 scale: str, root: Path = Path(".")) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The stage's three outputs: read the runs and test them (alice.tables.effect), write the
    two CSVs and the figure, each atomically; return (cases, tests)."""
    from alice.tables.effect import LABELS, REFERENCE, paired_tests, read_runs, seed_means

    cases, means = read_runs(metrics, scale, root)
    tests = paired_tests(means)
    with atomic_path(out_csv, suffix=".csv") as tmp_csv, atomic_path(out_tests, suffix=".csv") as tmp_tests:
        cases.to_csv(tmp_csv, index=False)
        tests.to_csv(tmp_tests, index=False)
        draw_effect(seed_means(means), tests, out_png, scale, reference=REFERENCE, labels=LABELS)
    return cases, tests
