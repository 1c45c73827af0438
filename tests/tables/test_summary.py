"""results/summary.csv, results/summary_tests.csv and the summary figure, from synthetic row
files and metrics (no training)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from alice import config as cfg
from alice.cli import main
from alice.errors import InputError
from alice.tables import render, summary
from alice.tables.spec import load_spec, table_settings
from fakes import write_training_record

CONFIG = cfg.load_config()
SETTINGS = {**table_settings(CONFIG),
            "reproduce": {"methods": ["rand_init", "alice"], "backbones": ["unetr"],
                          "headline": ["rand_init", "alice"], "folds": {"ablation": 1},
                          "substitute": {"backbone": "unetr"}}}
CASES = [f"FLARETs_{i:04d}" for i in range(1, 5)]
NOT_COMPARABLE = "demo scale: not comparable with the paper's value, no difference"
# Table 1, UNETR DSC per fold: Alice − Rand. init. = +1, −2, +3, +4, +5 points
RAND_DSC = [0.60, 0.62, 0.64, 0.66, 0.68]
ALICE_DSC = [0.61, 0.60, 0.67, 0.70, 0.73]
# per-case offsets of Alice (sum 0, so the fold means stay the values above)
ALICE_CASE = [0.03, -0.03, 0.01, -0.01]


def write_fold(root, run, fold, fold_value, offsets):
    path = root / f"results/finetune/flare22/{run}/unetr/fold{fold}/metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    case_mean = {c: {"dsc": fold_value + o, "nsd": fold_value + o + 0.05} for c, o in zip(CASES, offsets)}
    path.write_text(json.dumps({"case_mean": case_mean, "mean": {"dsc": fold_value, "nsd": fold_value + 0.05},
                                "settings_hash": f"h-{run}-{fold}", "code_version": "v"}))
    write_training_record(root, str(path.relative_to(root)))


def write_rows(root, tables, settings=SETTINGS):
    for table in tables:
        for row in load_spec(table)["rows"]:
            frame = render.compute_row(table, row["row"], settings, root=root)
            render.write_row(frame, root / "results" / "rows" / table / f"{row['row']}.csv")


@pytest.fixture
def results(tmp_path, fake_results):
    """Tables 1, 6 and 11 on UNETR: Table 1 with the fold values above, the ablation variant
    runs with fake values."""
    fake_results(tmp_path, SETTINGS, CONFIG, tables=["table6", "table11"])
    for fold, (r, a) in enumerate(zip(RAND_DSC, ALICE_DSC)):
        write_fold(tmp_path, "rand_init", fold, r, [0.0] * 4)
        write_fold(tmp_path, "alice", fold, a, ALICE_CASE)
    write_rows(tmp_path, ["table1", "table6", "table11"])
    return tmp_path


def run_summary(root, tables=("table1", "table6", "table11")):
    return summary.write_summary(root / "results" / "rows", root / "summary.csv",
                                 root / "summary_tests.csv", root / "figures" / "summary.png",
                                 tables=list(tables), root=root)


def test_one_line_per_reproduced_cell(results):
    cells, _ = run_summary(results)
    written = pd.read_csv(results / "summary.csv", keep_default_na=False)
    assert list(written.columns) == summary.SUMMARY_COLUMNS
    # Table 1: 2 rows x 2 UNETR columns; Table 6: Alice x 4; Table 11: 5 rows x 1
    assert len(cells) == len(written) == 4 + 4 + 5
    line = cells.set_index(["table", "row", "column"]).loc[("table1", "rand_init", "unetr_dsc")]
    assert line["reported"] == "80.95±3.48" and line["reported_mean"] == 80.95
    assert line["reproduced"] == "64.00±3.16" and line["n_folds"] == 5
    # demo scale: the paper's value beside ours, but no difference as if they were comparable
    assert line["scale"] == "demo" and pd.isna(line["difference"])
    assert line["note"] == NOT_COMPARABLE  # Table 1's UNETR columns are the paper's own backbone
    assert line["protocol"] == "folds 0-4, fine-tuning 80 steps, no pretraining"
    t6 = cells.set_index(["table", "row", "column"]).loc[("table6", "alice", "dsc_without")]
    assert t6["run"] == "alice__objectives-mim-dv" and t6["n_folds"] == 1
    assert t6["note"] == f"ran on unetr (paper: nnformer); {NOT_COMPARABLE}"
    assert t6["protocol"] == ("folds 0 of 5 (fold policy: ablation rows), fine-tuning 80 steps, "
                              "pretraining 300 steps")
    assert set(cells["kind"]) == {"value"} and set(cells["scale"]) == {"demo"}
    assert written["difference"].eq("").all() and set(written["scale"]) == {"demo"}


def test_paper_scale_lines_state_the_difference(tmp_path, fake_results):
    paper = {**SETTINGS, "scale": "paper"}
    fake_results(tmp_path, paper, CONFIG, tables=["table1"])
    write_rows(tmp_path, ["table1"], paper)
    cells, tests = run_summary(tmp_path, ["table1"])
    line = cells.set_index(["row", "column"]).loc[("rand_init", "unetr_dsc")]
    assert line["scale"] == "paper" and line["note"] == ""
    assert line["difference"] == pytest.approx(line["reproduced_mean"] - 80.95, abs=1e-3)
    assert set(tests["scale"]) == {"paper"}


def test_rows_of_two_scales_are_refused(results):
    table6 = results / "results/rows/table6/alice.csv"
    frame = pd.read_csv(table6, dtype=str, keep_default_na=False)
    frame["scale"] = "paper"
    frame.to_csv(table6, index=False)
    with pytest.raises(InputError, match=r"table6/.*scale"):  # within a table
        run_summary(results, ["table6"])
    assert not (results / "summary.csv").exists()
    for row in load_spec("table6")["rows"]:
        path = results / f"results/rows/table6/{row['row']}.csv"
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        frame["scale"] = "paper"
        frame.to_csv(path, index=False)
    run_summary(results, ["table6"])  # one table, one scale: fine
    with pytest.raises(InputError, match=r"different scales \(table1: demo, table6: paper"):
        run_summary(results, ["table1", "table6"])


def test_alice_against_rand_init_per_fold_and_per_case(results):
    _, tests = run_summary(results)
    t1 = tests[(tests["table"] == "table1") & (tests["metric"] == "dsc")].set_index("unit")
    fold = t1.loc["fold"]
    assert (fold["comparison"], fold["row_a"], fold["row_b"]) == ("alice_vs_best_baseline", "alice", "rand_init")
    assert fold["n_pairs"] == 5 and fold["mean_difference"] == pytest.approx(2.2)
    # differences +1 -2 +3 +4 +5: W- = 2; exact two-sided p = 2 * #{subsets of ranks with sum <= 2} / 2^5
    assert fold["statistic"] == 2 and fold["p_value"] == pytest.approx(6 / 32)
    assert fold["min_attainable_p"] == pytest.approx(2 / 32)
    assert "exact" in fold["test"] and 0 < fold["p_ttest"] < 1
    # per case (the same 4 FLARE22 test cases for every fold; a case's value = its mean over the
    # 5 fold models): 2.2 + (3, -3, 1, -1) = 5.2, -0.8, 3.2, 1.2 -> W- = 1, p = 2 * 2 / 16
    case = t1.loc["case"]
    assert case["n_pairs"] == 4 and case["statistic"] == 1 and case["p_value"] == pytest.approx(0.25)
    assert case["min_attainable_p"] == pytest.approx(0.125)
    assert "cannot fall below 0.125" in case["note"]


def test_each_ablation_switch_against_alices_default(results):
    _, tests = run_summary(results)
    t6 = tests[tests["table"] == "table6"]
    # without CASA (its own run) against with CASA (the plain alice run), per metric
    assert set(zip(t6["column_a"], t6["column_b"])) == {("dsc_without", "dsc_with"), ("nsd_without", "nsd_with")}
    assert set(t6["comparison"]) == {"ablation"} and set(t6["run_b"]) == {"alice"}
    fold = t6[(t6["unit"] == "fold") & (t6["metric"] == "dsc")].iloc[0]
    assert fold["n_pairs"] == 1 and pd.isna(fold["p_value"]) and fold["note"] == "1 pair(s): no test"
    case = t6[(t6["unit"] == "case") & (t6["metric"] == "dsc")].iloc[0]
    assert case["n_pairs"] == 4 and 0 < case["p_value"] <= 1
    # Table 11: each objective subset against all three, and Alice against the baseline row
    t11 = tests[(tests["table"] == "table11") & (tests["unit"] == "case")]
    assert sorted(t11[t11["comparison"] == "ablation"]["row_a"]) == ["dv", "mim_dv", "mim_st"]
    assert set(t11[t11["comparison"] == "ablation"]["row_b"]) == {"all"}
    base = t11[t11["comparison"] == "alice_vs_best_baseline"]
    assert list(zip(base["row_a"], base["row_b"])) == [("all", "none")]


def test_case_values_come_from_the_metrics_files(results):
    """The paired values are recomputed from each cell's sources, fold by fold."""
    rows = summary.read_all_rows(results / "results" / "rows", ["table1"])
    cells = summary._cells(rows, results / "results" / "rows")
    alice = next(c for c in cells if c["row"] == "alice" and c["column"] == "unetr_dsc")
    assert summary.fold_values(alice, results) == pytest.approx(
        {k: 100 * v for k, v in enumerate(ALICE_DSC)})
    per_case = summary.case_values(alice, results)
    mean = 100 * sum(ALICE_DSC) / 5
    assert per_case == pytest.approx({c: mean + 100 * o for c, o in zip(CASES, ALICE_CASE)})


def test_best_baseline_is_the_better_reproduced_row(tmp_path, fake_results):
    """Table 9: Alice against the better of its two Rand. init. rows, per split (AUC)."""
    settings = {**table_settings(CONFIG),
                "reproduce": {"methods": ["rand_init", "alice"], "backbones": ["vit", "resnet3d"]}}
    fake_results(tmp_path, settings, CONFIG, tables=["table9"])
    write_rows(tmp_path, ["table9"], settings)
    cells, tests = run_summary(tmp_path, ["table9"])
    assert len(tests) == 3 and set(tests["unit"]) == {"split"} and set(tests["n_pairs"]) == {10}
    means = cells.set_index(["row", "column"])["reproduced_mean"]
    for line in tests.to_dict("records"):
        col = line["column_a"]
        best = max(("rand_init_resnet3d", "rand_init_vit"), key=lambda r: means[r, col])
        assert line["row_b"] == best and line["row_a"] == "alice"
        assert line["mean_b"] == pytest.approx(means[best, col], abs=1e-3)


def test_stale_row_file_is_refused(results):
    path = results / "results/finetune/flare22/alice/unetr/fold2/metrics.json"
    data = json.loads(path.read_text())
    data["mean"]["dsc"] += 0.1
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"table1/alice.csv: column unetr_dsc: .* stale"):
        run_summary(results)
    assert not (results / "summary.csv").exists()


def test_table8_settings_are_listed_without_a_difference(tmp_path, fake_results):
    settings = {**SETTINGS, "reproduce": {**SETTINGS["reproduce"]}}
    fake_results(tmp_path, settings, CONFIG, tables=["table8"])
    write_rows(tmp_path, ["table8"])
    cells, tests = run_summary(tmp_path, ["table8"])
    assert len(cells) == 11 and set(cells["kind"]) == {"setting"} and tests.empty
    lines = cells.set_index("row")
    assert lines.loc["weight_decay", "note"] == "setting: the paper's"  # 1e-5 in both
    assert lines.loc["base_lr", "note"] == "setting: differs from the paper's"
    assert lines["difference"].isna().all()


def test_figure_and_cli(results):
    out = results / "out"
    code = main(["summary", "--rows-dir", str(results / "results/rows"), "--root", str(results),
                 "--table", "1", "--table", "table6", "--table", "11",
                 "--csv", str(out / "s.csv"), "--tests", str(out / "t.csv"),
                 "--figure", str(out / "f.png")])
    assert code == 0
    assert (out / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(pd.read_csv(out / "s.csv")) == 13 and len(pd.read_csv(out / "t.csv")) > 0
    assert main(["summary", "--table", "12", "--csv", str(out / "x.csv")]) == 2
    assert not (out / "x.csv").exists()
    # an empty summary still draws (a figure saying so)
    summary.draw_summary(pd.DataFrame(columns=summary.SUMMARY_COLUMNS),
                         pd.DataFrame(columns=summary.TEST_COLUMNS), out / "empty.png")
    assert (out / "empty.png").stat().st_size > 0


def test_demo_comparisons_are_between_reproduced_cells(results):
    """At demo scale every comparison pairs two reproduced cells of the same scale (Alice against
    Rand. init., a variant against Alice's default), each with its protocol."""
    cells, tests = run_summary(results)
    reproduced = set(zip(cells["table"], cells["row"], cells["column"]))
    for line in tests.to_dict("records"):
        assert (line["table"], line["row_a"], line["column_a"]) in reproduced
        assert (line["table"], line["row_b"], line["column_b"]) in reproduced
    assert set(tests["scale"]) == {"demo"}
    t1 = tests[(tests["table"] == "table1") & (tests["unit"] == "fold")].iloc[0]
    assert (t1["label_a"], t1["label_b"]) == ("Alice", "Rand. init.")
    assert t1["protocol_a"] == "folds 0-4, fine-tuning 80 steps, pretraining 300 steps"
    assert t1["protocol_b"] == "folds 0-4, fine-tuning 80 steps, no pretraining"
    assert set(tests[tests["table"] != "table1"]["comparison"]) >= {"ablation"}


def drawn_figure(monkeypatch):
    """The matplotlib figure the next draw_summary saves."""
    import matplotlib.figure

    seen = []
    save = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda fig, *a, **k: (seen.append(fig), save(fig, *a, **k))[1])
    return seen


def test_figure_states_the_scale_and_at_demo_compares_reproduced_cells(results, tmp_path,
                                                                       fake_results, monkeypatch):
    seen = drawn_figure(monkeypatch)
    _, tests = run_summary(results)
    fig = seen[-1]
    title = fig._suptitle.get_text()
    assert title.startswith("Demo scale: phantom data, reduced models, steps and folds; "
                            "not comparable with the paper's numbers")
    per_fold = tests[tests["unit"] == "fold"]
    assert f"{len(per_fold)} comparisons of reproduced cells" in title
    left, right = fig.axes
    labels = " ".join([left.get_xlabel(), left.get_ylabel(), right.get_ylabel()])
    assert "paper" not in labels and "reported" not in labels
    assert len(right.patches) == per_fold.groupby(["table", "comparison"]).ngroups
    # the paper scale: reproduced against reported
    paper = {**SETTINGS, "scale": "paper"}
    root = tmp_path / "paper"
    fake_results(root, paper, CONFIG, tables=["table1"])
    write_rows(root, ["table1"], paper)
    run_summary(root, ["table1"])
    fig = seen[-1]
    assert fig._suptitle.get_text().startswith("Paper scale: the paper's data and protocol")
    assert fig.axes[0].get_xlabel() == "reported (paper)"


def footnote_of(fig) -> str:
    """The figure's protocol footnote (its one text starting so; the suptitle is another)."""
    [text] = [t.get_text() for t in fig.texts if t.get_text().startswith("Protocol of the plotted cells")]
    return text


def test_figure_states_each_plotted_cells_protocol(results, tmp_path, fake_results, monkeypatch):
    """A footnote groups the plotted cells by the protocol their runs recorded (the `protocol`
    of summary.csv), with the tables and cell counts; each bar names its cells' protocol keys."""
    seen = drawn_figure(monkeypatch)
    cells, tests = run_summary(results)
    fig = seen[-1]
    footnote = footnote_of(fig)
    rand = "folds 0-4, fine-tuning 80 steps, no pretraining"
    alice = "folds 0-4, fine-tuning 80 steps, pretraining 300 steps"
    plotted = summary.plotted_cells(cells, tests, "demo")
    groups = dict(summary.protocol_groups(plotted))
    # Table 1: Alice (cell a) against Rand. init. (cell b), UNETR DSC and NSD
    assert groups[alice]["table1"] == 2 and groups[rand] == {"table1": 2}
    assert set(groups) == set(plotted["protocol"]) and len(groups) >= 3  # + the one-fold ablations
    assert sum(n for tables in groups.values() for n in tables.values()) == len(
        plotted.drop_duplicates(["table", "row", "column"]))
    for i, protocol in enumerate(groups, 1):  # one keyed line per protocol, in order
        assert f"P{i}  {protocol}: " in footnote
    assert "T1 (2 cells)" in footnote
    ticks = [t.get_text() for t in fig.axes[1].get_xticklabels()]
    t1 = next(t for t in ticks if t.startswith("T1\n"))
    keys = {f"P{i}": p for i, p in enumerate(groups, 1)}
    assert {keys[k] for k in " ".join(t1.split("\n")[2:]).split()} == {alice, rand}
    # the paper scale: the cells against the paper's values, grouped the same way
    paper = {**SETTINGS, "scale": "paper"}
    root = tmp_path / "paper"
    fake_results(root, paper, CONFIG, tables=["table1"])
    write_rows(root, ["table1"], paper)
    cells, _ = run_summary(root, ["table1"])
    footnote = footnote_of(seen[-1])
    for protocol, n in cells[cells["difference"].notna()].groupby("protocol").size().items():
        assert f"{protocol}: T1 ({n} cells)" in footnote


def test_protocol_footnote_is_compact():
    cells = pd.DataFrame({"table": ["table1"] * 3 + ["table6"] * 2, "row": list("abcde"),
                          "column": ["x"] * 5, "protocol": ["p"] * 4 + [""], "bar": ["table1"] * 5})
    cells["protocol"] = cells["protocol"].replace("", "protocol not recorded")
    groups = summary.protocol_groups(cells)
    assert groups == [("p", {"table1": 3, "table6": 1}), ("protocol not recorded", {"table6": 1})]
    text = summary.protocol_footnote(groups)
    assert text.splitlines()[1:] == ["P1  p: T1 (3 cells), T6 (1 cell)",
                                     "P2  protocol not recorded: T6 (1 cell)"]
    many = [(f"folds 0-4, fine-tuning {k} steps", {"table1": 1}) for k in range(14)]
    lines = summary.protocol_footnote(many, limit=10).splitlines()
    assert len(lines) == 12 and lines[-1].startswith("... and 4 more protocols")
    assert summary.protocol_footnote([]) == ""
