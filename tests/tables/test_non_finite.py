"""Aggregates never drop what they cannot average: a fold value that is not a finite number stops
`alice table row` and `alice summary` naming the metrics file and the key, a cell's n_folds and
folds are the values it averaged, and a bad row file stops `alice table render` with one line
naming the file, the line and the field, writing nothing."""

from __future__ import annotations

import json
import math
import re
import shutil

import pandas as pd
import pytest

from alice.cli import main
from alice.errors import InputError
from alice.tables import render, summary
from alice.tables.spec import load_spec
from fakes import write_training_record

SETTINGS = {"scale": "demo", "reproduce": {"methods": ["rand_init", "alice"], "backbones": ["unetr"],
                                           "headline": ["rand_init", "alice"]},
            "folds": {"flare22": 5, "btcv": 5}}
CASES = [f"FLARETs_{i:04d}" for i in range(1, 5)]
# four folds give 75.00 ± 12.91; the fold between them is the one a mean must not leave out
FOLDS = [0.60, 0.70, 0.75, 0.80, 0.90]


def metrics_path(root, method, fold):
    return root / f"results/finetune/flare22/{method}/unetr/fold{fold}/metrics.json"


def write_folds(root, method="rand_init", values=FOLDS):
    """One metrics.json per fold as alice evaluate writes it (case means equal to the fold's)."""
    for k, value in enumerate(values):
        path = metrics_path(root, method, k)
        path.parent.mkdir(parents=True, exist_ok=True)
        case_mean = {c: {"dsc": value, "nsd": value} for c in CASES}
        path.write_text(json.dumps({"case_mean": case_mean, "mean": {"dsc": value, "nsd": value},
                                    "settings_hash": f"h{k}", "code_version": "v"}))
        write_training_record(root, str(path.relative_to(root)))


def edit(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))  # NaN and Infinity as Python's json writes them


def write_rows(root, table="table1", settings=SETTINGS):
    files = {}
    for row in load_spec(table)["rows"]:
        files[row["row"]] = root / "results/rows" / table / f"{row['row']}.csv"
        render.write_row(render.compute_row(table, row["row"], settings, root=root), files[row["row"]])
    return files


def error_lines(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.strip()]


# ------------------------------------------------------------------------------ alice table row
@pytest.mark.parametrize("value, said", [
    (None, r"mean\.dsc is null \(NaN\): .*; a table cell never leaves a fold out"),
    (math.nan, r"mean\.dsc is NaN: .*; a table cell never leaves a fold out"),
    (math.inf, r"mean\.dsc is Infinity, which no score can be: the file is corrupt"),
    (-math.inf, r"mean\.dsc is -Infinity, which no score can be"),
    ("0.75", r"mean\.dsc is '0\.75', not a number"),
    (True, r"mean\.dsc is True, not a number"),
])
def test_a_fold_mean_that_is_not_a_finite_number_stops_the_row(tmp_path, value, said):
    write_folds(tmp_path)
    edit(metrics_path(tmp_path, "rand_init", 2), lambda d: d["mean"].update(dsc=value))
    with pytest.raises(InputError, match=r"rand_init/unetr/fold2/metrics\.json: " + said):
        render.compute_row("table1", "rand_init", SETTINGS, root=tmp_path)


def test_a_nan_fold_says_that_no_case_was_scored(tmp_path):
    write_folds(tmp_path)
    edit(metrics_path(tmp_path, "rand_init", 2),
         lambda d: (d["mean"].update(dsc=None), d.update(case_mean={c: {"dsc": None, "nsd": 0.5} for c in CASES})))
    with pytest.raises(InputError, match=r"fold2/metrics\.json: mean\.dsc is null \(NaN\): the run "
                                         r"scored no organ of its 4 test cases \(every case mean is NaN\); "
                                         r"a table cell never leaves a fold out"):
        render.compute_row("table1", "rand_init", SETTINGS, root=tmp_path)


@pytest.mark.parametrize("change, said", [
    (lambda d: d.pop("mean"), r"has no 'mean'"),
    (lambda d: d["mean"].pop("nsd"), r"has no mean\.nsd"),
    (lambda d: d.update(mean=[0.7]), r"has no 'mean'"),
])
def test_a_metrics_file_without_the_mean_stops_the_row(tmp_path, change, said):
    write_folds(tmp_path)
    edit(metrics_path(tmp_path, "rand_init", 4), change)
    with pytest.raises(InputError, match=r"fold4/metrics\.json: " + said):
        render.compute_row("table1", "rand_init", SETTINGS, root=tmp_path)


def test_n_folds_and_folds_are_the_values_averaged(tmp_path):
    write_folds(tmp_path)
    cell = render.compute_row("table1", "rand_init", SETTINGS, root=tmp_path).set_index("column").loc["unetr_dsc"]
    assert cell["n_folds"] == 5 and cell["folds"] == "0;1;2;3;4"
    assert cell["reproduced_mean"] == pytest.approx(100 * sum(FOLDS) / 5)
    assert len(cell["sources"].split(";")) == 5


def test_a_mosmed_split_whose_test_part_has_one_class_stops_the_row(tmp_path):
    settings = {"scale": "demo", "reproduce": {"methods": ["alice"], "backbones": ["vit"]},
                "folds": {"mosmed": 10}, "label_fractions": {"mosmed": [1.0]}}
    for k in range(10):
        path = tmp_path / f"results/finetune/mosmed/alice/vit/fold{k}/labels100/metrics.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        auc = None if k == 7 else 0.7
        path.write_text(json.dumps({"mean": {"auc": auc}, "cases": {}, "n_cases": 12,
                                    "n_positive": 0 if k == 7 else 6, "settings_hash": "h",
                                    "code_version": "v"}))
        write_training_record(tmp_path, str(path.relative_to(tmp_path)), steps=200)
    with pytest.raises(InputError, match=r"fold7/labels100/metrics\.json: mean\.auc is null \(NaN\): "
                                         r"its test part holds one class only \(0 positive of 12 cases\)"):
        render.compute_row("table4", "alice", settings, root=tmp_path)


def test_table_row_cli_is_one_line_and_writes_no_row(tmp_path, monkeypatch, capsys):
    write_folds(tmp_path)
    edit(metrics_path(tmp_path, "rand_init", 2), lambda d: d["mean"].update(dsc=None))
    monkeypatch.chdir(tmp_path)
    code = main(["table", "--settings", json.dumps(SETTINGS), "row", "--table", "table1",
                 "--row", "rand_init", "--out", "rows/rand_init.csv"])
    lines = error_lines(capsys)
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith("alice table: error: results/finetune/flare22/rand_init/unetr/fold2/"
                               "metrics.json: mean.dsc is null (NaN)")
    assert not (tmp_path / "rows").exists()


# --------------------------------------------------------------------------- alice table render
@pytest.fixture(scope="module")
def good_rows(tmp_path_factory):
    """Table 1's row files with Rand. init. and Alice reproduced on UNETR (5 folds each)."""
    root = tmp_path_factory.mktemp("rows")
    write_folds(root, "rand_init")
    write_folds(root, "alice", [v + 0.05 for v in FOLDS])
    write_rows(root)
    return root


def set_field(path, field, value, column="unetr_dsc"):
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.loc[frame["column"] == column, field] = value
    frame.to_csv(path, index=False)


def drop_field(path, field):
    pd.read_csv(path, dtype=str, keep_default_na=False).drop(columns=[field]).to_csv(path, index=False)


def header_only(path):
    path.write_text(path.read_text().splitlines()[0] + "\n")


def ragged(path):
    path.write_text(path.read_text() + "x," * 30 + "x\n")


def cut_off(path):
    path.write_text(path.read_text().rstrip("\n").rsplit(",", 5)[0] + "\n")


BAD_ROWS = {
    "nan mean": (lambda p: set_field(p, "reproduced_mean", "nan"),
                 r"line 2 \(cell unetr_dsc\): reproduced_mean is 'nan', not a finite number"),
    "inf mean": (lambda p: set_field(p, "reproduced_mean", "inf"),
                 r"line 2 \(cell unetr_dsc\): reproduced_mean is 'inf', not a finite number"),
    "-inf std": (lambda p: set_field(p, "reproduced_std", "-Infinity", "unetr_nsd"),
                 r"line 3 \(cell unetr_nsd\): reproduced_std is '-Infinity', not a finite number"),
    "text mean": (lambda p: set_field(p, "reproduced_mean", "eighty"),
                  r"reproduced_mean is 'eighty', not a number"),
    "NaN paper": (lambda p: set_field(p, "paper_mean", "NaN"), r"paper_mean is 'NaN', not a finite number"),
    "empty mean": (lambda p: set_field(p, "reproduced_mean", ""),
                   r"reproduced_mean is empty in a reproduced cell"),
    "fractional n_folds": (lambda p: set_field(p, "n_folds", "4.5"), r"n_folds is '4\.5', not a count"),
    "n_folds above folds": (lambda p: set_field(p, "n_folds", "6"),
                            r"n_folds is 6 but the cell names 5 fold\(s\) \(0;1;2;3;4\) and 5 source\(s\)"),
    "folds below n_folds": (lambda p: set_field(p, "folds", "0;1;2;3"),
                            r"n_folds is 5 but the cell names 4 fold\(s\) \(0;1;2;3\)"),
    "unknown status": (lambda p: set_field(p, "status", "done"), r"status is 'done', not one of"),
    "missing field": (lambda p: drop_field(p, "reproduced_std"),
                      r"lacks the row file field\(s\) reproduced_std: regenerate it"),
    "empty file": (lambda p: p.write_text(""), r"is empty: not a row file"),
    "header only": (header_only, r"holds no cell of row 'rand_init' of table1"),
    "ragged line": (ragged, r"line 8 has 31 fields, the header 22"),
    "cut-off line": (cut_off, r"line 7 has 17 fields, the header 22 \(a cut-off or edited file\)"),
    "not text": (lambda p: p.write_bytes(b"\xff\xfe\x00bad"), r"is not a readable CSV"),
}


@pytest.mark.parametrize("name", BAD_ROWS)
def test_a_bad_row_file_stops_render_with_one_line_and_keeps_the_old_outputs(good_rows, tmp_path,
                                                                             monkeypatch, capsys, name):
    corrupt, said = BAD_ROWS[name]
    rows = tmp_path / "rows"
    shutil.copytree(good_rows / "results/rows/table1", rows)
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    args = ["table", "render", "--table", "table1", "--rows-dir", "rows", "--csv", "out/table1.csv",
            "--tex", "out/table1.tex"]
    assert main(args) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(before) == {"table1.csv", "table1.tex", "table1.sources.csv"}
    capsys.readouterr()
    corrupt(rows / "rand_init.csv")
    code = main(args)
    lines = error_lines(capsys)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("alice table: error: rows/rand_init.csv: "), lines[0]
    assert re.search(said, lines[0]), lines[0]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing half-written


def test_read_rows_gives_numbers_and_counts(good_rows):
    files = {r["row"]: good_rows / "results/rows/table1" / f"{r['row']}.csv"
             for r in load_spec("table1")["rows"]}
    rows = render.read_rows("table1", files)
    cell = rows.set_index(["row", "column"]).loc[("rand_init", "unetr_dsc")]
    assert cell["reproduced_mean"] == pytest.approx(75.0) and cell["n_folds"] == 5
    assert rows["n_folds"].dtype.kind == "i" and rows["reproduced_mean"].dtype.kind == "f"
    assert rows.set_index(["row", "column"]).loc[("mae", "unetr_dsc"), "n_folds"] == 0


# -------------------------------------------------------------------------------- alice summary
def run_summary(root):
    return summary.write_summary(root / "results/rows", root / "s.csv", root / "t.csv", root / "f.png",
                                 tables=["table1"], root=root)


@pytest.fixture
def summary_root(good_rows, tmp_path):
    shutil.copytree(good_rows, tmp_path, dirs_exist_ok=True)
    return tmp_path


@pytest.mark.parametrize("value, said", [(None, r"null \(NaN\)"), (math.inf, "Infinity")])
def test_summary_refuses_a_fold_mean_that_became_non_finite(summary_root, value, said):
    edit(metrics_path(summary_root, "alice", 3), lambda d: d["mean"].update(dsc=value))
    with pytest.raises(InputError, match=r"alice/unetr/fold3/metrics\.json: mean\.dsc is " + said):
        run_summary(summary_root)
    assert not (summary_root / "s.csv").exists() and not (summary_root / "t.csv").exists()


def test_summary_leaves_a_nan_case_mean_out_and_says_so(summary_root):
    edit(metrics_path(summary_root, "alice", 0),
         lambda d: d["case_mean"]["FLARETs_0002"].update(dsc=None))
    rows_dir = summary_root / "results/rows"
    tests = summary.tests_frame(summary.read_all_rows(rows_dir, ["table1"]), rows_dir, summary_root)
    case = tests[(tests["unit"] == "case") & (tests["metric"] == "dsc")].iloc[0]
    assert case["n_pairs"] == 4  # the case is still tested, on the 4 folds that scored it
    assert "1 NaN case mean(s) left out (nothing to score): FLARETs_0002" in case["note"]
    nsd = tests[(tests["unit"] == "case") & (tests["metric"] == "nsd")].iloc[0]
    assert "NaN case mean" not in nsd["note"]


@pytest.mark.parametrize("value, said", [(math.inf, "Infinity"), ("high", "'high', not a number")])
def test_summary_refuses_a_case_mean_that_is_no_score(summary_root, value, said):
    edit(metrics_path(summary_root, "rand_init", 1),
         lambda d: d["case_mean"]["FLARETs_0003"].update(dsc=value))
    with pytest.raises(InputError, match=r"rand_init/unetr/fold1/metrics\.json: "
                                         r"case_mean\.FLARETs_0003\.dsc is " + said):
        run_summary(summary_root)


def test_summary_cli_refuses_a_nan_in_a_row_file_in_one_line(summary_root, capsys):
    set_field(summary_root / "results/rows/table1/alice.csv", "reproduced_mean", "nan", "unetr_nsd")
    code = main(["summary", "--rows-dir", str(summary_root / "results/rows"), "--root", str(summary_root),
                 "--table", "1", "--csv", str(summary_root / "s.csv"), "--tests",
                 str(summary_root / "t.csv"), "--figure", str(summary_root / "f.png")])
    lines = error_lines(capsys)
    assert code == 2 and len(lines) == 1
    assert "table1/alice.csv: line 3 (cell unetr_nsd): reproduced_mean is 'nan'" in lines[0]
    assert not (summary_root / "s.csv").exists()
