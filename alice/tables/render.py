"""Reproduced-vs-reported tables: one row file per paper row, then CSV + LaTeX per table.

`compute_row` turns the fine-tuning results of one paper row into long-format records (one per
column: reproduced mean ± std over folds, the paper's value, provenance: the settings hashes and
code versions the results recorded and the result files themselves, and the scale and protocol
of the number, alice.tables.protocol). A settings table (Table 8)
shows the settings the runs recorded instead (alice.tables.settings_cells). `render_table` joins
the rows of a table into `results/tableN.csv` (wide, text cells), `results/tableN.tex`
(booktabs, best reproduced value per column in bold) and `results/tableN.sources.csv` (one line
per cell: status, settings hash, code version, result files). All three state the scale the rows
were computed at (`scale` column; the LaTeX caption) and the protocol of each reproduced cell
(folds, fine-tuning and pretraining steps: the `protocol` column of the CSV and the sources; the
caption). Which cells exist and where their
numbers come from is data (alice/tables/specs, alice/tables/reference); this module has no
per-table code.

Cell states: `reproduced`; `not reproduced yet` (the DAG has not computed it: never blank and
never filled from the paper); `n/a` (the paper marks the cell "-" because the method does not
apply); `leaderboard` (online-test values only the challenge server can produce: the paper
column holds the leaderboard's numbers, the reproduced one says "leaderboard", never a number).
A harness row the paper does not print (spec `in_paper: false`, e.g. Table 3's Rand. init.)
shows "not in the paper" in every paper cell and a dagger in LaTeX.

Values that cannot be averaged are refused, never dropped: a cell states the folds its mean is
taken over (`n_folds`, `folds`), so a fold left out would make it a wrong number. A fold's
`mean.<metric>` that is missing, null (JSON for NaN), NaN, infinite or not a number stops the row
with one line naming the metrics file and the key (`metric_mean`; alice.tables.summary reads
the folds the same way). NaN below the fold level is not refused: under the absent-organ rule
(alice.metrics) an organ, or a case, with nothing to score is NaN, and the file's own mean
already leaves it out. A row file that is empty or unreadable, lacks a field, holds a numeric
field that is not a finite number, or an `n_folds` that disagrees with its `folds` and `sources`
stops `read_rows` (and so `render_table` and `alice summary`) naming the file, the line and the
field, before any output is written.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from alice.errors import HarnessError, InputError
from alice.io import atomic_path, read_json_object
from alice.tables.protocol import cell_protocol, check_scale, scale_note
from alice.tables.reference import load_reference, parse_cell
from alice.tables.settings_cells import recorded_setting
from alice.tables.spec import cell_experiment, cell_runs, find_row, in_paper, load_spec, row_kind

NOT_REPRODUCED = "not reproduced yet"
# a row the harness cannot run (a spec row's `not_reproducible: <why>`), the cell says why
NOT_REPRODUCIBLE = "not reproducible"
NOT_APPLICABLE = "n/a"
LEADERBOARD = "leaderboard"
NOT_IN_PAPER = "not in the paper"
ROW_COLUMNS = ["table", "row", "label", "column", "group", "header", "status", "reproduced",
               "reproduced_mean", "reproduced_std", "n_folds", "paper", "paper_mean", "paper_std",
               "run", "backbone", "folds", "scale", "protocol", "settings_hash", "code_version",
               "sources"]
# numeric fields of a row file, each empty (no value) or a finite number; the others are text
NUMBER_COLUMNS = ("reproduced_mean", "reproduced_std", "paper_mean", "paper_std")
STATUSES = ("reproduced", "not_reproduced", "not_applicable", "leaderboard")


def format_value(mean: float | None, std: float | None) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return ""
    return f"{mean:.2f}" if std is None or math.isnan(std) else f"{mean:.2f}±{std:.2f}"


def finite(value) -> bool:
    """A JSON number (not a bool) that is neither NaN nor infinite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def value_text(value) -> str:
    """How a JSON value that is not a finite number reads in a message."""
    if value is None:
        return "null (NaN)"
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, float) and math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return f"{value!r}, not a number"


def _why_no_mean(data: dict, metric: str) -> str:
    """Why a fold's mean is NaN, as far as its metrics file tells."""
    if metric == "auc":
        n, positive = data.get("n_cases"), data.get("n_positive")
        if isinstance(n, int) and isinstance(positive, int) and positive in (0, n):
            return f"its test part holds one class only ({positive} positive of {n} cases)"
        return "no AUC (undefined when a test part holds one class only)"
    case_mean = data.get("case_mean")
    if not isinstance(case_mean, dict) or not case_mean:
        return "the run scored no organ of any test case"
    scored = sum(1 for v in case_mean.values() if isinstance(v, dict) and finite(v.get(metric)))
    if scored:
        return f"yet {scored} of its {len(case_mean)} test cases have a {metric}: the file is inconsistent"
    return f"the run scored no organ of its {len(case_mean)} test cases (every case mean is NaN)"


def metric_mean(path: Path, data: dict, metric: str) -> float:
    """A fold's `mean.<metric>` (unscaled) from its metrics file's `data`. Anything but a finite
    number is an InputError naming the file and the key: a mean over the other folds would
    state a fold it did not average."""
    mean = data.get("mean")
    if not isinstance(mean, dict) or metric not in mean:
        what = "'mean'" if not isinstance(mean, dict) else f"mean.{metric}"
        raise InputError(path, f"has no {what}: not a metrics file of alice evaluate, regenerate it")
    value = mean[metric]
    if finite(value):
        return float(value)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        problem = (f": {_why_no_mean(data, metric)}; a table cell never leaves a fold out, "
                   "re-run or re-evaluate this one")
    elif isinstance(value, float):
        problem = ", which no score can be: the file is corrupt, regenerate it (alice evaluate)"
    else:
        problem = ": regenerate it (alice evaluate)"
    raise InputError(path, f"mean.{metric} is {value_text(value)}{problem}")


def _fold_value(path: Path, metric: str, scale: float) -> tuple[float, dict]:
    """One fold's value of a cell, from its metrics file; a file without the settings hash and
    code version that made it is refused (every reproduced cell must be traceable)."""
    data = read_json_object(path, "missing: the fine-tuning result this table cell needs")
    value = metric_mean(path, data, metric)
    missing = [k for k in ("settings_hash", "code_version") if not data.get(k)]
    if missing:
        raise InputError(path, f"records no {' or '.join(missing)}, so a table cell computed from it "
                               "would not be traceable: regenerate it (alice evaluate)")
    return value * scale, data


def compute_row(table: str, row_id: str, settings: dict, root: Path = Path(".")) -> pd.DataFrame:
    """Long-format records of one paper row (one per column of the table). `settings` =
    `table_settings(config)`, whose `scale` every record states."""
    config_scale = check_scale(settings.get("scale"), "--settings:scale")
    spec = load_spec(table)
    row = find_row(spec, row_id)
    reference = load_reference(table).set_index("row")
    runs = cell_runs(spec, row, settings)
    scale = float(spec.get("metric_scale") or 100)
    records = []
    for column in spec["columns"]:
        col = column["column"]
        if not in_paper(row):
            paper_text = NOT_IN_PAPER
        else:
            paper_text = str(reference.loc[row_id, col]) if col in reference.columns else "-"
        # settings tables (Table 8) hold text, not numbers
        numeric = spec.get("task") != "settings" and paper_text != NOT_IN_PAPER
        paper_mean, paper_std = parse_cell(paper_text) if numeric else (None, None)
        record = {"table": table, "row": row_id, "label": row.get("label", row_id), "column": col,
                  "group": column.get("group", ""), "header": column.get("header", col),
                  "paper": paper_text, "paper_mean": paper_mean, "paper_std": paper_std,
                  "reproduced": "", "reproduced_mean": None, "reproduced_std": None,
                  "n_folds": 0, "run": "", "backbone": "", "folds": "", "scale": config_scale,
                  "protocol": "", "settings_hash": "", "code_version": "", "sources": ""}
        if col in runs and spec.get("task") == "settings":
            text, read, hashes, versions = recorded_setting(
                row["key"], runs[col]["dataset"], runs[col]["backbone"], runs[col]["paths"], root,
                spec.get("vocabulary"))
            record.update(status="reproduced", reproduced=text,
                          # the runs the setting describes (the spacing is read from their cache)
                          n_folds=sum(1 for p in runs[col]["paths"] if p.endswith("model.pt")),
                          run=runs[col]["run"], backbone=runs[col]["backbone"],
                          folds=";".join(str(k) for k in runs[col]["folds"]),
                          # the runs the setting describes, also for the spacing
                          protocol=cell_protocol([p.rsplit("/", 1)[0] for p in runs[col]["paths"]
                                                  if p.endswith("model.pt")],
                                                 runs[col]["folds"], root),
                          settings_hash=";".join(sorted(hashes)),
                          code_version=";".join(sorted(versions)), sources=";".join(read))
        elif col in runs:
            metric = cell_experiment(spec, row, column)["metric"]
            # each fold's value is a finite number (metric_mean) or the row stops, so the cell
            # averages exactly the folds it names
            folds, values, hashes, versions = [], [], set(), set()
            for fold, path in zip(runs[col]["folds"], runs[col]["paths"], strict=True):
                value, data = _fold_value(root / path, metric, scale)
                folds.append(fold)
                values.append(value)
                hashes.add(str(data.get("settings_hash") or ""))
                versions.add(str(data.get("code_version") or ""))
            arr = np.asarray(values, dtype=float)
            mean = float(arr.mean())
            # sample standard deviation over folds (ddof=1); undefined for a single fold, so
            # such a cell shows the mean alone
            std = float(arr.std(ddof=1)) if arr.size > 1 else float("nan")
            if not math.isfinite(mean) or math.isinf(std):  # finite values beyond float's range
                raise InputError(root / runs[col]["paths"][0], f"mean.{metric} of the folds "
                                 f"{';'.join(map(str, folds))} overflows when averaged: not scores, "
                                 "regenerate them (alice evaluate)")
            record.update(status="reproduced", reproduced=format_value(mean, std),
                          reproduced_mean=round(mean, 4),
                          reproduced_std=None if math.isnan(std) else round(std, 4),
                          n_folds=arr.size, run=runs[col]["run"], backbone=runs[col]["backbone"],
                          folds=";".join(str(k) for k in folds),
                          protocol=cell_protocol([p.rsplit("/", 1)[0] for p in runs[col]["paths"]],
                                                 runs[col]["folds"], root,
                                                 classification=spec.get("task") == "classification",
                                                 of=settings["folds"][runs[col]["dataset"]],
                                                 kind=row_kind(spec, row, settings)),
                          settings_hash=";".join(sorted(hashes - {""})),
                          code_version=";".join(sorted(versions - {""})),
                          sources=";".join(runs[col]["paths"]))
        elif col in (row.get("not_applicable") or []):
            record.update(status="not_applicable", reproduced=NOT_APPLICABLE)
        elif column.get("source") == LEADERBOARD:
            record.update(status="leaderboard", reproduced=LEADERBOARD)
        elif row.get("not_reproducible"):
            record.update(status="not_reproduced",
                          reproduced=f"{NOT_REPRODUCIBLE}: {' '.join(str(row['not_reproducible']).split())}")
        else:
            record.update(status="not_reproduced", reproduced=NOT_REPRODUCED)
        records.append(record)
    return pd.DataFrame.from_records(records, columns=ROW_COLUMNS)


def write_row(frame: pd.DataFrame, out: Path) -> None:
    with atomic_path(out, suffix=".csv") as tmp:
        frame.to_csv(tmp, index=False)


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def _row_text(path: Path) -> pd.DataFrame:
    """A row file's fields as text ("" where empty); an empty or unreadable file, or a line
    with more or fewer fields than the header (pandas would fill a short one with ""), is an
    InputError."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            for fields in reader:
                if header and fields and len(fields) != len(header):
                    raise InputError(path, f"line {reader.line_num} has {len(fields)} fields, the "
                                           f"header {len(header)} (a cut-off or edited file): "
                                           "regenerate it (alice table row)")
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise InputError(path, "is empty: not a row file, regenerate it (alice table row)") from None
    except (csv.Error, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(path, f"is not a readable CSV ({_one_line(exc)}): regenerate it "
                               "(alice table row)") from None


def _row_numbers(path: Path, frame: pd.DataFrame, settings: bool) -> pd.DataFrame:
    """`frame` (text) with NUMBER_COLUMNS as floats (NaN where empty) and n_folds as counts. A
    field that is not a finite number, an unknown status, or a reproduced value whose n_folds
    is not the number of its folds and sources is an InputError naming the line (the header is
    line 1), the cell and the field; a row file is written by compute_row, never by hand."""
    out = frame.copy()
    numbers: dict[str, list[float]] = {c: [] for c in NUMBER_COLUMNS}
    counts = []
    for i, rec in enumerate(frame.to_dict("records")):
        def bad(field: str, problem: str) -> InputError:
            return InputError(path, f"line {i + 2} (cell {rec['column']}): {field} {problem}: "
                                    "regenerate the row (alice table row)")

        if rec["status"] not in STATUSES:
            raise bad("status", f"is {rec['status']!r}, not one of {', '.join(STATUSES)}")
        for field in NUMBER_COLUMNS:
            text = rec[field].strip()
            try:
                value = float(text) if text else math.nan
            except ValueError:
                raise bad(field, f"is {rec[field]!r}, not a number") from None
            if text and not math.isfinite(value):
                raise bad(field, f"is {rec[field]!r}, not a finite number")
            numbers[field].append(value)
        if not re.fullmatch(r"[0-9]+", rec["n_folds"].strip()):
            raise bad("n_folds", f"is {rec['n_folds']!r}, not a count")
        counts.append(int(rec["n_folds"]))
        if rec["status"] == "reproduced" and not settings:
            folds = rec["folds"].split(";") if rec["folds"] else []
            sources = [s for s in rec["sources"].split(";") if s]
            if math.isnan(numbers["reproduced_mean"][-1]):
                raise bad("reproduced_mean", "is empty in a reproduced cell")
            if not all(re.fullmatch(r"[0-9]+", k) for k in folds):
                raise bad("folds", f"is {rec['folds']!r}, not fold numbers joined by ';'")
            if not 0 < counts[-1] == len(folds) == len(sources):
                raise bad("n_folds", f"is {counts[-1]} but the cell names {len(folds)} fold(s) "
                                     f"({rec['folds'] or 'none'}) and {len(sources)} source(s)")
    for field in NUMBER_COLUMNS:
        out[field] = pd.Series(numbers[field], index=out.index, dtype=float)
    out["n_folds"] = pd.Series(counts, index=out.index, dtype=int)
    return out


def read_rows(table: str, row_files: dict[str, Path]) -> pd.DataFrame:
    """All row files of a table, in the spec's order, their numbers checked (_row_numbers); a
    missing, empty, unreadable or foreign file is an error, and so are rows computed at
    different scales."""
    spec = load_spec(table)
    frames = []
    scales: dict[str, Path] = {}
    for row in spec["rows"]:
        path = Path(row_files[row["row"]])
        if not path.is_file():
            raise InputError(path, f"missing row file of {table}")
        frame = _row_text(path)
        lacking = [c for c in ROW_COLUMNS if c not in frame.columns]
        if lacking:
            raise InputError(path, f"lacks the row file field(s) {', '.join(lacking)}: "
                                   "regenerate it (alice table row)")
        if frame.empty:
            raise InputError(path, f"holds no cell of row '{row['row']}' of {table} (a header "
                                   "only): regenerate it (alice table row)")
        expected = [c["column"] for c in spec["columns"]]
        if (list(frame.columns) != ROW_COLUMNS or list(frame["column"]) != expected
                or set(frame["row"]) != {row["row"]}):
            raise InputError(path, f"does not hold row '{row['row']}' of {table} with columns "
                                   f"{expected} and fields {ROW_COLUMNS}: regenerate it")
        frame = _row_numbers(path, frame, spec.get("task") == "settings")
        for scale in set(frame["scale"]):
            check_scale(scale, f"{path}:scale")
            scales.setdefault(scale, path)
        frames.append(frame)
    if len(scales) > 1:
        (a, path_a), (b, path_b) = sorted(scales.items())[:2]
        raise InputError(path_b, f"was computed at scale {b} but {path_a} at {a}: regenerate the "
                                 "rows of one config")
    return pd.concat(frames, ignore_index=True)


def table_scale(rows: pd.DataFrame) -> str:
    """The one scale of `rows` (read_rows has checked they agree)."""
    return str(rows["scale"].iloc[0])


def cell_protocols(rows: pd.DataFrame) -> list[str]:
    """"run / backbone: protocol" of every reproduced cell of `rows`, each once, sorted."""
    done = rows[rows["status"] == "reproduced"]
    return sorted({f"{r} / {b}: {p}" for r, b, p in zip(done["run"], done["backbone"], done["protocol"])})


def _best_per_column(rows: pd.DataFrame) -> dict[str, float]:
    done = rows[rows["status"] == "reproduced"]
    return done.groupby("column")["reproduced_mean"].max().to_dict()


def wide_csv(table: str, rows: pd.DataFrame) -> pd.DataFrame:
    """One line per paper row; for each paper column a reproduced and a paper column; `scale`
    (demo or paper) on every line, and per row the run / backbone / folds (`reproduced with`)
    and the protocol (`protocol`: folds, fine-tuning and pretraining steps) of its reproduced
    cells."""
    spec = load_spec(table)
    reference = load_reference(table).set_index("row")
    out = []
    for row in spec["rows"]:
        part = rows[rows["row"] == row["row"]].set_index("column")
        line = {"row": row["row"], spec.get("label_header", "Method"): row.get("label", row["row"]),
                "scale": table_scale(rows)}
        for header, cells in _descriptive_by_header(spec, reference, row).items():
            line[header] = joined_descriptive(cells)
        for column in spec["columns"]:
            name = " ".join(x for x in (column.get("group"), column.get("header")) if x)
            cell = part.loc[column["column"]]
            line[f"{name} (reproduced)"] = cell["reproduced"]
            line[f"{name} ({_paper_header(column)})"] = cell["paper"]
        # provenance: pretraining run / backbone / folds of the reproduced cells
        done = part[part["status"] == "reproduced"]
        line["reproduced with"] = "; ".join(sorted(
            {f"{r} / {b} / folds {f.replace(';', ',')}"
             for r, b, f in zip(done["run"], done["backbone"], done["folds"])})) or "-"
        line["protocol"] = "; ".join(cell_protocols(part)) or "-"
        out.append(line)
    return pd.DataFrame(out)


def _paper_header(column: dict) -> str:
    """The paper sub-column's name: "paper", or "paper, leaderboard" for leaderboard values."""
    return "paper, leaderboard" if column.get("source") == LEADERBOARD else "paper"


def _descriptive_cell(reference: pd.DataFrame, row: dict, desc: dict) -> str:
    """A descriptive cell (e.g. Ensemble): the paper's, or for a harness row its spec value."""
    if in_paper(row):
        return reference.loc[row["row"], desc["column"]]
    return str((row.get("descriptive") or {}).get(desc["column"], NOT_IN_PAPER))


def deviation_note(table: str, rows: pd.DataFrame) -> str:
    """A sentence for reproduced cells that ran on another backbone than the paper's (a table
    under `reproduce.substitute`), naming what ran; "" when none did."""
    spec = load_spec(table)
    paper_backbone = {(r["row"], c["column"]): cell_experiment(spec, r, c)["backbone"]
                      for r in spec["rows"] for c in spec["columns"]}
    done = rows[rows["status"] == "reproduced"]
    ran, paper = set(), set()
    for row, col, b, f in zip(done["row"], done["column"], done["backbone"], done["folds"]):
        wanted = paper_backbone.get((row, col))
        if b and wanted and b != wanted:
            ran.add((b, f))
            paper.add(wanted)
    if not ran:
        return ""
    what = "; ".join(f"{b} on fold(s) {f.replace(';', ', ')}" for b, f in sorted(ran))
    return (f"Reproduced cells ran with {what} (paper: {', '.join(sorted(paper))}); the backbone is "
            "substituted by the config's reproduce.substitute.")


def protocol_note(rows: pd.DataFrame) -> str:
    """The scale of the table's numbers and the protocol of its reproduced cells, as sentences:
    "Scale: demo scale: ... Protocol of the reproduced cells: alice / unetr: folds 0-4, ..."."""
    scale = table_scale(rows)
    note = f"Scale: {scale_note(scale)}."
    protocols = cell_protocols(rows)
    if protocols:
        note += f" Protocol of the reproduced cells ({scale}): {'; '.join(protocols)}."
    return note


def leaderboard_note(table: str) -> str:
    """A sentence naming the columns whose values only the challenge server can produce."""
    spec = load_spec(table)
    names = [" ".join(x for x in (c.get("group"), c.get("header")) if x)
             for c in spec["columns"] if c.get("source") == LEADERBOARD]
    if not names:
        return ""
    return (f"{', '.join(names)}: the challenge leaderboard's values as the paper prints them; "
            "never computed here (the test labels are not public).")


def _descriptive_by_header(spec: dict, reference: pd.DataFrame, row: dict) -> dict[str, list[str]]:
    """Descriptive cells of `row` grouped by printed header, in order (Table 2 prints backbone
    and pre-trained parts as one "Pre-trained Parts" cell, e.g. "3D ResNet E.")."""
    grouped: dict[str, list[str]] = {}
    for desc in _descriptive(spec):
        grouped.setdefault(desc["header"], []).append(str(_descriptive_cell(reference, row, desc)))
    return grouped


def joined_descriptive(cells: list[str]) -> str:
    """Cells sharing one printed header, joined by a space; all "-" stays one "-"."""
    return "-" if all(c == "-" for c in cells) else " ".join(cells)


def _descriptive(spec: dict) -> list[dict]:
    """The paper's descriptive columns (e.g. Ensemble, Pre-trained Parts) that it prints."""
    return [d for d in spec.get("descriptive_columns") or [] if d.get("printed", True)]


# One pass over the text: LaTeX's special characters, and characters of the paper's text that
# plain (pdf)LaTeX cannot typeset as they are.
_LATEX_MAP = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#",
              "$": r"\$", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
              "^": r"\textasciicircum{}", "ℓ": r"$\ell$", "×": r"$\times$",
              "✓": r"$\checkmark$", "±": r"$\pm$", "≥": r"$\geq$", "≤": r"$\leq$",
              "³": r"$^3$", "²": r"$^2$"}
_LATEX_CHARS = re.compile("|".join(re.escape(c) for c in _LATEX_MAP))


def _latex_escape(text) -> str:
    return _LATEX_CHARS.sub(lambda m: _LATEX_MAP[m.group(0)], str(text))


def _latex_value(text: str, bold: bool) -> str:
    if text in ("", "-"):
        return "--"
    if text == NOT_REPRODUCED:
        return r"\textit{n.r.}"
    if text.startswith(NOT_REPRODUCIBLE + ":"):
        return r"\textit{n.p.}"
    if text == NOT_APPLICABLE:
        return r"n/a"
    if text == LEADERBOARD:
        return r"\textit{lb.}"
    if text == NOT_IN_PAPER:
        return r"\textit{n.i.p.}"
    body = _latex_escape(text)
    return rf"\textbf{{{body}}}" if bold else body


def latex_table(table: str, rows: pd.DataFrame) -> str:
    """booktabs LaTeX via pandas' Styler; columns grouped as paper column -> (ours, paper)."""
    spec = load_spec(table)
    best = _best_per_column(rows)
    has_groups = any(c.get("group") for c in spec["columns"])
    reference = load_reference(table).set_index("row")
    descriptive = _descriptive(spec)
    tuples, data = [], []
    for desc in descriptive:
        head = ("", _latex_escape(desc["header"])) if has_groups else (_latex_escape(desc["header"]),)
        tuples.append(head + ("",))
    for column in spec["columns"]:
        head = (_latex_escape(column.get("group", "")), _latex_escape(column.get("header", "")))
        head = head if has_groups else head[1:]
        paper_head = "paper (lb.)" if column.get("source") == LEADERBOARD else "paper"
        tuples += [head + ("ours",), head + (paper_head,)]
    for row in spec["rows"]:
        part = rows[rows["row"] == row["row"]].set_index("column")
        line = [_latex_escape(_descriptive_cell(reference, row, d)) for d in descriptive]
        for column in spec["columns"]:
            cell = part.loc[column["column"]]
            mean = cell["reproduced_mean"]
            bold = (cell["status"] == "reproduced" and not pd.isna(mean)
                    and math.isclose(float(mean), best.get(column["column"], math.inf)))
            line += [_latex_value(cell["reproduced"], bold), _latex_value(cell["paper"], False)]
        data.append(line)
    labels = [_latex_escape(r.get("label", r["row"])) + ("" if in_paper(r) else r"$^\dagger$")
              for r in spec["rows"]]
    frame = pd.DataFrame(data, columns=pd.MultiIndex.from_tuples(tuples), index=labels)
    frame.index.name = None
    caption = (_latex_escape(spec["caption"]) + r" Reproduced values (\emph{ours}, mean$\pm$std "
               r"over folds) beside the paper's; best reproduced value per column in bold; "
               r"\textit{n.r.}: not reproduced yet; \textit{lb.}: leaderboard only.")
    why = [f"{r.get('label', r['row'])}: {' '.join(str(r['not_reproducible']).split())}"
           for r in spec["rows"] if r.get("not_reproducible")]
    if why:
        caption += " " + _latex_escape("n.p.: not reproducible here (" + "; ".join(why) + ").")
    if not all(in_paper(r) for r in spec["rows"]):
        caption += (r" $^\dagger$: the harness's own row, not in the paper "
                    r"(\textit{n.i.p.}: not in the paper).")
    caption += " " + _latex_escape(protocol_note(rows))
    for note in (leaderboard_note(table), deviation_note(table, rows)):
        if note:
            caption += " " + _latex_escape(note)
    tex = frame.style.to_latex(hrules=True, multicol_align="c", caption=caption,
                               label=f"tab:{table}", position="t", position_float="centering",
                               column_format="l" + "r" * frame.shape[1], environment="table*")
    # the row-label header ("Method") goes into the last header line, not a line of its own
    head, sep, body = tex.partition("\\midrule")
    lines = head.rstrip("\n").split("\n")
    lines[-1] = _latex_escape(spec.get("label_header", "Method")) + lines[-1]
    return "\n".join(lines) + "\n" + sep + body


SOURCE_COLUMNS = ["table", "row", "column", "header", "status", "reproduced", "paper", "n_folds",
                  "run", "backbone", "folds", "scale", "protocol", "settings_hash", "code_version",
                  "sources"]


def sources_csv(table: str, rows: pd.DataFrame) -> pd.DataFrame:
    """Provenance of every cell of the rendered table, one line per (row, column) in the table's
    order: the scale of every cell; for a reproduced cell its protocol, the settings hash(es)
    and code version(s) recorded by the results it was computed from and those files
    (";"-separated, fold order); empty otherwise."""
    spec = load_spec(table)
    frame = rows.copy()
    frame["header"] = [" ".join(x for x in (g, h) if x) for g, h in zip(frame["group"], frame["header"])]
    order = {(r["row"], c["column"]): i for i, (r, c) in enumerate(
        (r, c) for r in spec["rows"] for c in spec["columns"])}
    frame["_order"] = [order[(r, c)] for r, c in zip(frame["row"], frame["column"])]
    return frame.sort_values("_order")[SOURCE_COLUMNS].reset_index(drop=True)


def default_sources_path(out_csv: Path) -> Path:
    """results/table1.csv -> results/table1.sources.csv"""
    out_csv = Path(out_csv)
    return out_csv.with_name(f"{out_csv.stem}.sources.csv")


def render_table(table: str, row_files: dict[str, Path], out_csv: Path, out_tex: Path,
                 out_sources: Path | None = None) -> None:
    """`out_csv` (wide, text cells), `out_tex` (booktabs) and `out_sources` (per-cell provenance,
    default `<csv stem>.sources.csv` beside `out_csv`), all or none written."""
    rows = read_rows(table, row_files)
    wide = wide_csv(table, rows)
    tex = latex_table(table, rows)
    provenance = sources_csv(table, rows)
    out_sources = Path(out_sources) if out_sources else default_sources_path(out_csv)
    with atomic_path(out_csv, suffix=".csv") as tmp_csv, atomic_path(out_tex, suffix=".tex") as tmp_tex, \
            atomic_path(out_sources, suffix=".csv") as tmp_sources:
        wide.to_csv(tmp_csv, index=False)
        tmp_tex.write_text(tex)
        provenance.to_csv(tmp_sources, index=False)


def check_latex(tex: str) -> None:
    """Structural check of a rendered table (used when no LaTeX engine is installed)."""
    depth = 0
    for ch in tex.replace(r"\{", "").replace(r"\}", ""):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth < 0:
            raise HarnessError("unbalanced braces in the rendered LaTeX")
    if depth:
        raise HarnessError("unbalanced braces in the rendered LaTeX")
    for env in ("table*", "tabular"):
        if tex.count(rf"\begin{{{env}}}") != 1 or tex.count(rf"\end{{{env}}}") != 1:
            raise HarnessError(f"environment {env} not opened and closed exactly once")
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        if rule not in tex:
            raise HarnessError(f"{rule} missing (booktabs)")
