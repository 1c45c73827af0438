"""Reproduced vs reported over every table, and the paired comparisons the paper makes.

`alice summary` reads every table's row files (`results/rows/tableN/<row>.csv`, alice.tables.render)
and writes the three outputs below. Every line and the figure state the scale the rows were
computed at (`scale`: demo or paper, alice.tables.protocol; rows of two scales are refused) and
the protocol (folds, fine-tuning and pretraining steps) of each reproduced cell. At `demo` scale
(phantom data, reduced models, steps and folds) no reproduced number is set against the paper's
as if the two were comparable: the `difference` to the paper is left empty and the figure shows
the comparisons between reproduced cells instead (Alice against Rand. init., each ablation variant
against Alice's default); at `paper` scale the difference and the reproduced-vs-reported figure.

- `results/summary.csv`: one line per reproduced cell: table, row, column, the paper's value
  (`reported`), ours (`reproduced`, mean ± std over folds), `difference` = reproduced − reported
  mean (table units, e.g. DSC × 100; empty at demo scale, and where the paper has no number: a
  harness row, or a Table 8 setting, whose line says whether it is the paper's), number of
  folds, run, backbone, scale, protocol.
- `results/summary_tests.csv`: paired comparisons. (a) `alice_vs_best_baseline`: per table
  column, Alice's default run against the reproduced non-Alice row with the best mean in that
  column (Tables 1 and 3: Rand. init.; Table 9: the better Rand. init.; Table 11: its baseline
  row). (b) `ablation`: every reproduced cell of an Alice variant (one switch changed: Tables 5,
  6, 7, 10, 11) against the cell of Alice's default run with the same dataset, backbone and
  metric in the same table (Table 6: the "w/." column beside a "w/o." one).
  Each comparison is tested per **fold** (MosMed: per **split**) — the units the tables' ± is
  taken over; fold k of one run against fold k of the other — and, for segmentation, per test
  **case** (a case's value = its mean over organs, `case_mean` of metrics.json; where several
  fold models tested it, the FLARE22 fixed offline set, the mean over those folds), which gives
  more pairs. The test is the Wilcoxon signed-rank test, two-sided (scipy.stats.wilcoxon; zero
  differences dropped, Wilcoxon's convention; the exact null distribution unless there are
  more than 50 pairs or tied |differences|, then the normal approximation); with n non-zero
  pairs an exact test cannot give p below 2 / 2^n (`min_attainable_p`: 0.0625 for 5 folds,
  0.125 for 4 cases), so small studies are reported, not judged. A paired t-test's p
  (scipy.stats.ttest_rel) sits beside it. Both cells of a comparison are reproduced ones, at
  the same scale; each line has the scale and both cells' protocols.
- `results/figures/summary.png`, titled with the scale: at `paper` scale reproduced against
  reported per cell (one colour per table, the diagonal = the paper's value) and the mean
  difference per table; at `demo` scale each comparison's two reproduced means (cell b, e.g.
  Rand. init., against cell a, e.g. Alice; the diagonal = no difference) and the mean difference
  a − b per table and comparison. Under the panels, at both scales, a footnote states the
  protocol of every plotted cell (the `protocol` of summary.csv), grouped: one line per
  distinct protocol, keyed P1, P2, ..., with the tables and numbers of cells that ran it, e.g.
  "P1  folds 0-4, fine-tuning 1200 steps, pretraining 200 steps: T1 (2 cells), T3 (4 cells)";
  each bar's label names the keys of its cells.

Per-fold and per-case values come from each cell's `sources` (the metrics files, in fold
order, that the row file's mean ± std was computed from; see render.compute_row); a row file
whose mean no longer matches them is stale and refused. Nothing is dropped silently: a fold's
mean that is missing, null, NaN, infinite or not a number stops the command naming the metrics
file and the key (render.metric_mean), as it stops the row; a case mean that is null or NaN (a
case with nothing to score, the absent-organ rule of alice.metrics) is left out of the case
pairs, as the fold's own mean leaves it out, and the line's note counts those left out; an
infinite or non-numeric case mean stops the command naming the file, the case and the metric.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from alice.errors import InputError
from alice.io import atomic_path, read_json_object
from alice.tables.protocol import scale_note
from alice.tables.render import NOT_IN_PAPER, finite, metric_mean, read_rows, table_scale, value_text
from alice.tables.spec import cell_experiment, find_row, load_spec, table_ids

SUMMARY_COLUMNS = ["table", "row", "label", "column", "header", "metric", "kind", "reported",
                   "reported_mean", "reported_std", "reproduced", "reproduced_mean",
                   "reproduced_std", "difference", "n_folds", "run", "backbone", "scale",
                   "protocol", "note"]
TEST_COLUMNS = ["table", "comparison", "metric", "unit", "row_a", "label_a", "column_a", "run_a",
                "row_b", "label_b", "column_b", "run_b", "dataset", "backbone", "n_pairs",
                "n_nonzero", "mean_a", "mean_b", "mean_difference", "test", "statistic",
                "p_value", "min_attainable_p", "p_ttest", "scale", "protocol_a", "protocol_b",
                "note"]
ALICE = "alice"


# ------------------------------------------------------------------------------------- inputs
def read_all_rows(rows_dir: Path, tables: list[str] | None = None) -> pd.DataFrame:
    """Every row file of `tables` (default: all), each table in its spec's order; the tables
    must share one scale."""
    frames = []
    for table in tables or table_ids():
        spec = load_spec(table)
        files = {r["row"]: Path(rows_dir) / spec["id"] / f"{r['row']}.csv" for r in spec["rows"]}
        frames.append(read_rows(spec["id"], files))
    scales = {str(f["table"].iloc[0]): table_scale(f) for f in frames}
    if len(set(scales.values())) > 1:
        raise InputError(Path(rows_dir), "row files of different scales ("
                         + ", ".join(f"{t}: {s}" for t, s in scales.items())
                         + "): regenerate the rows of one config")
    return pd.concat(frames, ignore_index=True)


def _plain_run(run: str) -> bool:
    """A method's own run, no ablation switch (alice.ssl.variants: switches follow '__')."""
    return "__" not in run


# ------------------------------------------------------------------------------------ summary
def summary_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """One line per reproduced cell of `rows` (read_all_rows); no difference to the paper's
    value at demo scale."""
    out = []
    for rec in rows[rows["status"] == "reproduced"].to_dict("records"):
        spec = load_spec(rec["table"])
        row = find_row(spec, rec["row"])
        column = next(c for c in spec["columns"] if c["column"] == rec["column"])
        line = {k: rec[k] for k in ("table", "row", "label", "column", "reproduced",
                                    "reproduced_mean", "reproduced_std", "n_folds", "run",
                                    "backbone", "scale", "protocol")}
        demo = rec["scale"] == "demo"
        line["header"] = " ".join(x for x in (rec["group"], rec["header"]) if x)
        line["reported"] = rec["paper"]
        if spec.get("task") == "settings":
            same = _norm(rec["reproduced"]) == _norm(rec["paper"])
            line.update(metric="setting", kind="setting", reported_mean=None, reported_std=None,
                        difference=None,
                        note="setting: the paper's" if same else "setting: differs from the paper's")
        else:
            experiment = cell_experiment(spec, row, column)
            paper_mean = _number(rec["paper_mean"])
            notes = []
            if rec["paper"] == NOT_IN_PAPER:
                notes.append("the harness's own row: no paper value")
            if experiment["backbone"] and rec["backbone"] != experiment["backbone"]:
                notes.append(f"ran on {rec['backbone']} (paper: {experiment['backbone']})")
            if demo and paper_mean is not None:
                notes.append("demo scale: not comparable with the paper's value, no difference")
            line.update(metric=experiment["metric"], kind="value", reported_mean=paper_mean,
                        reported_std=_number(rec["paper_std"]),
                        difference=(None if demo or paper_mean is None
                                    or _number(rec["reproduced_mean"]) is None
                                    else round(float(rec["reproduced_mean"]) - paper_mean, 4)),
                        note="; ".join(notes))
        out.append(line)
    return pd.DataFrame(out, columns=SUMMARY_COLUMNS)


def _norm(text) -> str:
    return " ".join(str(text).lower().split())


def _number(value) -> float | None:
    if value is None or value == "":
        return None
    value = float(value)
    return None if math.isnan(value) else value


# ------------------------------------------------------------------------------ paired tests
def _cells(rows: pd.DataFrame, rows_dir: Path) -> list[dict]:
    """The reproduced numeric cells with what the comparisons need (method, dataset, metric,
    fold-ordered sources)."""
    cells = []
    for rec in rows[rows["status"] == "reproduced"].to_dict("records"):
        spec = load_spec(rec["table"])
        if spec.get("task") == "settings":
            continue
        row = find_row(spec, rec["row"])
        column = next(c for c in spec["columns"] if c["column"] == rec["column"])
        experiment = cell_experiment(spec, row, column)
        folds = [int(k) for k in str(rec["folds"]).split(";") if k != ""]
        sources = [p for p in str(rec["sources"]).split(";") if p]
        if len(folds) != len(sources):
            raise InputError(Path(rows_dir) / rec["table"] / f"{rec['row']}.csv",
                             f"column {rec['column']}: {len(folds)} folds but {len(sources)} "
                             "sources: regenerate the row")
        cells.append({**rec, "method": row.get("method"), "task": spec.get("task"),
                      "dataset": experiment["dataset"], "metric": experiment["metric"],
                      "label_fraction": experiment.get("label_fraction"),
                      "scale": float(spec.get("metric_scale") or 100), "fold_list": folds,
                      "scale_name": rec["scale"],
                      "source_list": sources,
                      "row_file": Path(rows_dir) / rec["table"] / f"{rec['row']}.csv"})
    return cells


def comparisons(cells: list[dict]) -> list[tuple[str, dict, dict]]:
    """(kind, a, b) pairs of cells: Alice's default run against the best reproduced baseline of
    the same column, and each Alice variant against Alice's default run (see the module doc)."""
    out = []
    for a in cells:
        if a["method"] != ALICE:
            continue
        same_table = [c for c in cells if c["table"] == a["table"]]
        if _plain_run(a["run"]):
            baselines = [c for c in same_table if c["column"] == a["column"] and c["method"] != ALICE]
            if baselines:
                best = max(baselines, key=lambda c: float(c["reproduced_mean"]))  # first of ties
                out.append(("alice_vs_best_baseline", a, best))
        else:
            key = ("dataset", "backbone", "metric", "label_fraction")
            defaults = [c for c in same_table if c["method"] == ALICE and _plain_run(c["run"])
                        and all(c[k] == a[k] for k in key)]
            if defaults:
                out.append(("ablation", a, defaults[0]))
    return out


@lru_cache(maxsize=4096)
def _metrics(path: str) -> dict:
    return read_json_object(path, "missing: a fine-tuning result named in a row file's sources")


def fold_values(cell: dict, root: Path) -> dict[int, float]:
    """Fold (MosMed: split) -> the cell's value on it, from `mean.<metric>` of its metrics file;
    every fold the cell names, or an InputError (render.metric_mean)."""
    values = {}
    for fold, rel in zip(cell["fold_list"], cell["source_list"]):
        path = Path(root) / rel
        values[fold] = metric_mean(path, _metrics(str(path)), cell["metric"]) * cell["scale"]
    mean = _number(cell["reproduced_mean"])
    if values and mean is not None and abs(np.mean(list(values.values())) - mean) > 1e-3:
        raise InputError(cell["row_file"], f"column {cell['column']}: mean {mean} but its sources "
                                           f"give {np.mean(list(values.values())):.4f}: the row file "
                                           "is stale, regenerate it")
    return values


def case_values(cell: dict, root: Path, left_out: list | None = None) -> dict[str, float]:
    """Test case -> its value (`case_mean.<case>.<metric>`), averaged over the folds that tested
    it; segmentation only (a MosMed AUC exists per split, not per case). A null or NaN case mean
    (nothing to score in the case) is left out, and (file, case) appended to `left_out`; an
    infinite or non-numeric one is an InputError."""
    per_case: dict[str, list[float]] = {}
    for rel in cell["source_list"]:
        path = str(Path(root) / rel)
        case_mean = _metrics(path).get("case_mean")
        if not isinstance(case_mean, dict):
            raise InputError(path, "records no case_mean: regenerate it (alice evaluate)")
        for case, scores in case_mean.items():
            if not isinstance(scores, dict) or cell["metric"] not in scores:
                raise InputError(path, f"case_mean.{case} has no {cell['metric']}: regenerate it "
                                       "(alice evaluate)")
            value = scores[cell["metric"]]
            if finite(value):
                per_case.setdefault(case, []).append(float(value) * cell["scale"])
            elif value is None or (isinstance(value, float) and math.isnan(value)):
                if left_out is not None:
                    left_out.append((path, case))
            else:
                raise InputError(path, f"case_mean.{case}.{cell['metric']} is {value_text(value)}: "
                                       "not a score, regenerate it (alice evaluate)")
    return {case: float(np.mean(v)) for case, v in per_case.items()}


def paired_test(a: list[float], b: list[float]) -> dict:
    """Two-sided Wilcoxon signed-rank test of a against b (paired), and a paired t-test's p."""
    from scipy import stats

    a_arr, b_arr = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = a_arr - b_arr
    nonzero = diff[diff != 0]
    out = {"n_pairs": len(diff), "n_nonzero": len(nonzero),
           "mean_a": _round(a_arr.mean()) if len(diff) else None,
           "mean_b": _round(b_arr.mean()) if len(diff) else None,
           "mean_difference": _round(diff.mean()) if len(diff) else None,
           "test": "", "statistic": None, "p_value": None, "min_attainable_p": None,
           "p_ttest": None, "note": ""}
    if len(diff) < 2:
        out["note"] = f"{len(diff)} pair(s): no test"
        return out
    if len(nonzero) == 0:
        out.update(test="wilcoxon signed-rank, two-sided", statistic=0.0, p_value=1.0,
                   note="every pair equal")
        return out
    ties = len(np.unique(np.abs(nonzero))) < len(nonzero)
    method = "exact" if len(nonzero) <= 50 and not ties else "approx"
    result = stats.wilcoxon(nonzero, alternative="two-sided", method=method)
    min_p = min(1.0, 2.0 ** (1 - len(nonzero)))
    out.update(test=f"wilcoxon signed-rank, two-sided, {method}", statistic=float(result.statistic),
               p_value=_round(float(result.pvalue), 6), min_attainable_p=_round(min_p, 6))
    if np.std(diff) > 0:
        out["p_ttest"] = _round(float(stats.ttest_rel(a_arr, b_arr).pvalue), 6)
    if min_p > 0.05:
        out["note"] = (f"{len(nonzero)} non-zero pairs: an exact two-sided p cannot fall below "
                       f"{min_p:.4g}")
    return out


def _round(value: float, digits: int = 4) -> float:
    return round(float(value), digits)


def tests_frame(rows: pd.DataFrame, rows_dir: Path, root: Path = Path(".")) -> pd.DataFrame:
    """Every comparison of `comparisons`, per fold/split and (segmentation) per case."""
    out = []
    for kind, a, b in comparisons(_cells(rows, rows_dir)):
        base = {"table": a["table"], "comparison": kind, "metric": a["metric"],
                "row_a": a["row"], "label_a": a["label"], "column_a": a["column"], "run_a": a["run"],
                "row_b": b["row"], "label_b": b["label"], "column_b": b["column"], "run_b": b["run"],
                "dataset": a["dataset"], "backbone": a["backbone"] if a["backbone"] == b["backbone"]
                else f"{a['backbone']} vs {b['backbone']}",
                "scale": a["scale_name"], "protocol_a": a["protocol"], "protocol_b": b["protocol"]}
        fa, fb = fold_values(a, root), fold_values(b, root)
        folds = sorted(set(fa) & set(fb))
        unit = "split" if a["task"] == "classification" else "fold"
        out.append({**base, "unit": unit,
                    **paired_test([fa[k] for k in folds], [fb[k] for k in folds])})
        if a["task"] == "segmentation":
            left_out: list = []
            ca, cb = case_values(a, root, left_out), case_values(b, root, left_out)
            cases = sorted(set(ca) & set(cb))
            result = paired_test([ca[c] for c in cases], [cb[c] for c in cases])
            if left_out:
                note = (f"{len(left_out)} NaN case mean(s) left out (nothing to score): "
                        + ", ".join(sorted({case for _, case in left_out})))
                result["note"] = "; ".join(n for n in (result["note"], note) if n)
            out.append({**base, "unit": "case", **result})
    return pd.DataFrame(out, columns=TEST_COLUMNS)


# ------------------------------------------------------------------------------------- figure
def summary_scale(summary: pd.DataFrame, tests: pd.DataFrame) -> str | None:
    """The one scale of the summary's lines (None when nothing is reproduced)."""
    scales = set(summary["scale"]) | set(tests["scale"])
    return next(iter(scales)) if len(scales) == 1 else None


def draw_summary(summary: pd.DataFrame, tests: pd.DataFrame, out_png: Path,
                 scale: str | None = None) -> Path:
    """The summary figure at `scale` (default: the lines' own), titled with it.

    paper: left, reproduced against reported mean per cell (one colour per table; the diagonal
    is the paper's value); right, mean difference per table (reproduced − reported), ± its std
    over the table's cells. demo: the reproduced cells against each other, never against the
    paper: left, per comparison (per fold / split) the mean of cell b (Rand. init., or Alice's
    default for an ablation) against the mean of cell a (Alice, or the variant); right, the
    mean difference a − b per table and comparison, ± its std over the table's comparisons.

    Below the panels, a footnote states the protocol of every plotted cell (folds or splits,
    fine-tuning and pretraining steps, as the runs recorded them; the `protocol` of
    summary.csv), grouped: one line per distinct protocol, keyed P1, P2, ..., with the tables
    and the number of cells that ran it; each bar's label names the keys of its cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale = scale or summary_scale(summary, tests)
    cells = plotted_cells(summary, tests, scale)
    groups = protocol_groups(cells)
    keys = {protocol: f"P{i}" for i, (protocol, _) in enumerate(groups, 1)}
    bar_keys = {bar: " ".join(sorted({keys[p] for p in part["protocol"]}, key=lambda k: int(k[1:])))
                for bar, part in cells.groupby("bar", sort=False)}
    footnote = protocol_footnote(groups)
    lines = footnote.count("\n") + 1 if footnote else 0
    height = 4.6 + 0.13 * lines
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.5, height))
    if scale == "demo":
        title = _draw_comparisons(tests, left, right, plt, bar_keys)
    else:
        title = _draw_against_paper(summary, left, right, plt, bar_keys)
    stamp = scale_note(scale) if scale else "nothing reproduced"
    fig.suptitle(f"{stamp[0].upper()}{stamp[1:]}\n{title}", fontsize=9)
    bottom = 0.0
    if footnote:
        fig.text(0.01, 0.01, footnote, ha="left", va="bottom", fontsize=7, family="monospace")
        bottom = (0.13 * lines + 0.05) / height
    fig.tight_layout(rect=(0, bottom, 1, 1))
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return Path(out_png)


def plotted_cells(summary: pd.DataFrame, tests: pd.DataFrame, scale: str | None) -> pd.DataFrame:
    """The reproduced cells the figure at `scale` plots, each once: table, row, column,
    protocol, and `bar` (the right panel's bar it falls in: the table at paper scale, the
    (table, comparison) at demo scale; a demo comparison plots both of its cells)."""
    columns = ["table", "row", "column", "protocol", "bar"]
    if scale == "demo":
        per_fold = tests[tests["unit"].isin(["fold", "split"]) & tests["mean_a"].notna()]
        sides = [pd.DataFrame({"table": per_fold["table"], "row": per_fold[f"row_{s}"],
                               "column": per_fold[f"column_{s}"],
                               "protocol": per_fold[f"protocol_{s}"],
                               "bar": list(zip(per_fold["table"], per_fold["comparison"]))})
                 for s in ("a", "b")]
        cells = pd.concat(sides, ignore_index=True) if len(per_fold) else pd.DataFrame(columns=columns)
    else:
        values = summary[(summary["kind"] == "value") & summary["difference"].notna()]
        cells = pd.DataFrame({"table": values["table"], "row": values["row"],
                              "column": values["column"], "protocol": values["protocol"],
                              "bar": values["table"]})
    cells = cells[columns].copy()
    cells["protocol"] = cells["protocol"].fillna("").astype(str).replace("", "protocol not recorded")
    # a cell in two bars (a demo cell b of two comparisons) is listed in each
    return cells.drop_duplicates(["table", "row", "column", "bar"]).reset_index(drop=True)


def protocol_groups(cells: pd.DataFrame) -> list[tuple[str, dict[str, int]]]:
    """[(protocol, {table: number of its cells that ran it})], the protocols in order of first
    appearance (tables in spec order); a cell counts once however many bars it is in."""
    once = cells.drop_duplicates(["table", "row", "column"])
    groups: dict[str, dict[str, int]] = {}
    for table, protocol in zip(once["table"], once["protocol"]):
        groups.setdefault(protocol, {}).setdefault(table, 0)
        groups[protocol][table] += 1
    return list(groups.items())


def protocol_footnote(groups: list[tuple[str, dict[str, int]]], limit: int = 10,
                      width: int = 150) -> str:
    """"Protocol of the plotted cells (as the runs recorded it):" then one line per protocol:
    "P1  folds 0-4, fine-tuning 80 steps, no pretraining: T1 (2 cells)"; past `limit`
    protocols, a line pointing to summary.csv. Empty without cells."""
    import textwrap

    if not groups:
        return ""
    lines = ["Protocol of the plotted cells (as the runs recorded it; summary.csv: protocol):"]
    for i, (protocol, tables) in enumerate(groups[:limit], 1):
        where = ", ".join(f"{t.replace('table', 'T')} ({n} cell{'s' if n != 1 else ''})"
                          for t, n in tables.items())
        lines.extend(textwrap.wrap(f"P{i}  {protocol}: {where}", width=width,
                                   subsequent_indent=" " * (len(str(i)) + 3)))
    if len(groups) > limit:
        lines.append(f"... and {len(groups) - limit} more protocols: see summary.csv, column protocol")
    return "\n".join(lines)


def _draw_against_paper(summary: pd.DataFrame, left, right, plt,
                        bar_keys: dict | None = None) -> str:
    values = summary[(summary["kind"] == "value") & summary["difference"].notna()]
    settings = summary[summary["kind"] == "setting"]
    tables = list(dict.fromkeys(values["table"]))
    colours = {t: plt.get_cmap("tab10")(i % 10) for i, t in enumerate(tables)}
    for table in tables:
        part = values[values["table"] == table]
        left.scatter(part["reported_mean"], part["reproduced_mean"], s=22, color=colours[table],
                     label=table.replace("table", "Table "), alpha=0.85)
    left.plot([0, 100], [0, 100], color="0.5", lw=0.8, ls="--")
    left.set(xlim=(0, 100), ylim=(0, 100), xlabel="reported (paper)", ylabel="reproduced (ours)",
             title="per cell")
    left.grid(alpha=0.3)
    if tables:
        left.legend(fontsize=7, loc="upper left")
        stats_ = values.groupby("table", sort=False)["difference"].agg(["mean", "std", "count"])
        x = np.arange(len(stats_))
        right.bar(x, stats_["mean"], yerr=stats_["std"].fillna(0), color=[colours[t] for t in stats_.index],
                  capsize=3)
        right.set_xticks(x, [_bar_label(t, n, (bar_keys or {}).get(t))
                             for t, n in zip(stats_.index, stats_["count"])], fontsize=8)
    else:
        for ax in (left, right):
            ax.text(0.5, 0.5, "no reproduced cell with a paper value", ha="center", va="center",
                    transform=ax.transAxes)
    right.axhline(0, color="0.3", lw=0.8)
    right.set(ylabel="reproduced − reported (table units)", title="mean difference per table")
    right.grid(alpha=0.3, axis="y")
    title = f"{len(values)} reproduced cells with a paper value in {len(tables)} tables"
    if len(settings):
        same = int((settings["note"] == "setting: the paper's").sum())
        title += f"; Table 8: {same} of {len(settings)} settings as in the paper"
    return title


COMPARISON_LABELS = {"alice_vs_best_baseline": "Alice − best reproduced baseline (Rand. init.)",
                     "ablation": "ablation variant − Alice's default"}


def _bar_label(table: str, n: int, keys: str | None) -> str:
    """A bar's tick label, three lines: the table ("T1"), the number of values averaged
    ("n=4") and the protocol keys of its cells ("P1 P2", protocol_footnote), three a line."""
    words = (keys or "").split()
    rows = [" ".join(words[i:i + 3]) for i in range(0, len(words), 3)]  # narrow bars: 3 keys a line
    return "\n".join([table.replace("table", "T"), f"n={n}", *rows])


def _draw_comparisons(tests: pd.DataFrame, left, right, plt, bar_keys: dict | None = None) -> str:
    per_fold = tests[tests["unit"].isin(["fold", "split"]) & tests["mean_a"].notna()]
    kinds = [k for k in COMPARISON_LABELS if k in set(per_fold["comparison"])]
    colours = {k: plt.get_cmap("tab10")(i) for i, k in enumerate(COMPARISON_LABELS)}
    for kind in kinds:
        part = per_fold[per_fold["comparison"] == kind]
        left.scatter(part["mean_b"], part["mean_a"], s=22, color=colours[kind],
                     label=COMPARISON_LABELS[kind], alpha=0.85)
    if kinds:
        low = float(min(per_fold["mean_a"].min(), per_fold["mean_b"].min()))
        high = float(max(per_fold["mean_a"].max(), per_fold["mean_b"].max()))
        pad = max(1.0, 0.05 * (high - low))
        left.plot([low - pad, high + pad], [low - pad, high + pad], color="0.5", lw=0.8, ls="--")
        left.legend(fontsize=7, loc="upper left")
        groups = per_fold.groupby(["table", "comparison"], sort=False)["mean_difference"]
        stats_ = groups.agg(["mean", "std", "count"])
        x = np.arange(len(stats_))
        right.bar(x, stats_["mean"], yerr=stats_["std"].fillna(0),
                  color=[colours[k] for _, k in stats_.index], capsize=3)
        right.set_xticks(x, [_bar_label(t, n, (bar_keys or {}).get((t, k)))
                             for (t, k), n in zip(stats_.index, stats_["count"])], fontsize=8)
    else:
        for ax in (left, right):
            ax.text(0.5, 0.5, "no comparison of reproduced cells", ha="center", va="center",
                    transform=ax.transAxes)
    left.set(xlabel="cell b, reproduced (Rand. init. / Alice's default)",
             ylabel="cell a, reproduced (Alice / variant)",
             title="reproduced cells compared (mean over folds / splits)")
    left.grid(alpha=0.3)
    right.axhline(0, color="0.3", lw=0.8)
    right.set(ylabel="a − b (table units)", title="mean difference per table and comparison")
    right.grid(alpha=0.3, axis="y")
    return (f"{len(per_fold)} comparisons of reproduced cells in "
            f"{per_fold['table'].nunique()} tables; the paper's numbers are not compared")


def write_summary(rows_dir: Path, out_csv: Path, out_tests: Path, out_png: Path,
                  tables: list[str] | None = None, root: Path = Path(".")) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read the row files, write the three outputs (each atomically); return (summary, tests)."""
    _metrics.cache_clear()  # a long-lived process may see rewritten metrics files
    rows = read_all_rows(Path(rows_dir), tables)
    summary = summary_frame(rows)
    tests = tests_frame(rows, Path(rows_dir), Path(root))
    with atomic_path(out_csv, suffix=".csv") as tmp_csv, atomic_path(out_tests, suffix=".csv") as tmp_tests:
        summary.to_csv(tmp_csv, index=False)
        tests.to_csv(tmp_tests, index=False)
        draw_summary(summary, tests, out_png, table_scale(rows))
    return summary, tests
