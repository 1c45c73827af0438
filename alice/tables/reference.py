"""The paper's reported numbers (Tables 1-11) and the table specs.

``reference/tableN.csv`` holds every value of Table N exactly as the paper prints it: one line per
table row, columns ``row`` (a stable slug), ``label`` (the printed row label), the table's
descriptive columns, then one column per value column. Value cells are ``80.95±3.48`` (mean±std),
a bare number (``84.07``) where the paper prints no std, or ``-`` where it prints "-". Table 8
holds settings (text), not numbers.

``specs/tableN.yaml`` describes the table's structure (rows, columns, what produces each cell).
Both are plain files next to this module.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

REFERENCE_DIR = Path(__file__).parent / "reference"
TABLES: tuple[str, ...] = tuple(f"table{i}" for i in range(1, 12))

MISSING = "-"
_CELL = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(?:\s*±\s*([0-9]+(?:\.[0-9]+)?))?$")


def table_id(table: str | int) -> str:
    """Normalise ``"table3"``, ``"Table 3"``, ``"3"`` or ``3`` to ``"table3"``.

    Raises KeyError for anything that is not one of the paper's Tables 1-11.
    """
    text = str(table).strip().lower().replace(" ", "")
    if text.isdigit():
        text = f"table{text}"
    if text not in TABLES:
        raise KeyError(f"unknown table {table!r} (known: table1 .. table11)")
    return text


def load_reference(table: str | int) -> pd.DataFrame:
    """The reference CSV of ``table`` as a DataFrame of strings (default RangeIndex).

    Empty cells stay empty strings (Table 11 prints no label for three rows); ``-`` stays ``-``.
    """
    return _load_reference(table_id(table)).copy()


@lru_cache(maxsize=None)
def _load_reference(tid: str) -> pd.DataFrame:
    return pd.read_csv(
        REFERENCE_DIR / f"{tid}.csv", dtype=str, keep_default_na=False, encoding="utf-8"
    )


def parse_cell(text: Any) -> tuple[float | None, float | None]:
    """``"80.95±3.48"`` -> (80.95, 3.48); ``"84.07"`` -> (84.07, None); ``"-"`` -> (None, None).

    Surrounding whitespace and spaces around ``±`` are tolerated; anything else (empty, ``+-``,
    ``%``, a non-string) raises ValueError naming the text.
    """
    if not isinstance(text, str):
        raise ValueError(f"not a reference cell: {text!r} (expected a string such as '80.95±3.48')")
    stripped = text.strip()
    if stripped == MISSING:
        return None, None
    match = _CELL.match(stripped)
    if match is None:
        raise ValueError(
            f"not a reference cell: {text!r} (expected 'mean±std', 'mean' or '-')"
        )
    mean, std = match.groups()
    return float(mean), (float(std) if std is not None else None)


def reference_cell(table: str | int, row: str, column: str) -> str:
    """The printed text of one cell, e.g. ``reference_cell("table1", "alice", "nnformer_dsc")``.

    ``column`` may be any CSV column other than ``row`` (``label``, a descriptive column or a
    value column). Raises KeyError naming the unknown table, row or column.
    """
    tid = table_id(table)
    frame = _load_reference(tid)
    if column == "row" or column not in frame.columns:
        columns = [c for c in frame.columns if c != "row"]
        raise KeyError(f"{tid} has no column {column!r} (columns: {', '.join(columns)})")
    hits = frame.index[frame["row"] == row]
    if len(hits) == 0:
        raise KeyError(f"{tid} has no row {row!r} (rows: {', '.join(frame['row'])})")
    return str(frame.at[hits[0], column])
