"""The scale and protocol every reproduced number states.

Scale: the config's `scale` key (`demo`: the phantom datasets, reduced models, steps and folds,
whose numbers are not comparable with the paper's; `paper`: the paper's data and protocol). The
table stages receive it in their settings (`alice.tables.spec.table_settings`); every row file
records it and every rendered table, the summary and its figure state it.

Protocol of a reproduced cell: its folds (MosMed: splits), the fine-tuning steps (MosMed:
iterations) and the pretraining steps of the runs behind it, as they recorded them, never as the
config says now: each fold's `train_summary.json` (beside its `metrics.json` or `model.pt`) gives
the steps it took and its initialisation; a pretrained initialisation's run folder has the
pretraining `log.csv`, one line per optimizer step taken (alice.ssl.trainer). E.g. "folds 0-4,
fine-tuning 80 steps, pretraining 300 steps"; Rand. init. says "no pretraining".
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from alice.errors import ConfigError, InputError
from alice.io import read_json_object

SCALES = {
    "demo": "demo scale: phantom data, reduced models, steps and folds; not comparable with the "
            "paper's numbers",
    "paper": "paper scale: the paper's data and protocol",
}
TRAIN_SUMMARY = "train_summary.json"
PRETRAIN_LOG = "log.csv"


def check_scale(scale, key: str = "scale") -> str:
    """`scale` if it is one of SCALES; otherwise a ConfigError naming `key`."""
    if scale not in SCALES:
        raise ConfigError(key, f"must be one of {', '.join(SCALES)}, got {scale!r}")
    return scale


def scale_note(scale: str) -> str:
    """"demo scale: phantom data, ...": the sentence every rendered number carries."""
    return SCALES[check_scale(scale)]


def _read_json(path: Path) -> dict:
    return read_json_object(path, "missing: the training record whose steps this table cell states")


def pretraining_steps(path: Path) -> int:
    """The optimizer steps a pretraining run took: the `step` of the last line of its log.csv
    (read from the end: a paper-scale log has a line per step)."""
    if not path.is_file():
        raise InputError(path, "missing: the pretraining log whose step count this table cell states")
    with open(path, "rb") as fh:
        header = fh.readline().decode()
        fh.seek(0, io.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - 65536))
        tail = fh.read().decode(errors="replace").splitlines()
    columns = next(csv.reader([header]), [])
    lines = [line for line in tail if line.strip() and line.strip() != header.strip()]
    if "step" not in columns or not lines:
        raise InputError(path, "has no step column or no step: regenerate the pretraining run")
    try:
        return int(float(next(csv.reader([lines[-1]]))[columns.index("step")]))
    except (ValueError, IndexError):
        raise InputError(path, f"last line is not a step: {lines[-1][:80]!r}") from None


def _span(values: list[int]) -> str:
    """[0, 1, 2, 3, 4] -> "0-4"; [0, 2] -> "0, 2"."""
    values = sorted(set(values))
    if len(values) > 2 and values == list(range(values[0], values[-1] + 1)):
        return f"{values[0]}-{values[-1]}"
    return ", ".join(str(v) for v in values)


def _counts(values: set[int], unit: str) -> str:
    """{80} -> "80 steps"; {80, 90} -> "80 / 90 steps"; {1} -> "1 step"."""
    unit = unit[:-1] if values == {1} else unit
    return f"{' / '.join(str(v) for v in sorted(values))} {unit}"


def cell_protocol(run_dirs: list[str], folds: list[int], root: Path = Path("."),
                  classification: bool = False, of: int | None = None, kind: str = "") -> str:
    """The protocol of one reproduced cell whose fold results lie in `run_dirs` (relative to
    `root`; one per fold, or per model of a settings cell) over `folds`; `of`: the dataset's
    number of folds, stated with the row `kind` of the fold policy when the cell ran fewer
    ("folds 0 of 5 (fold policy: baseline rows)")."""
    if not run_dirs:
        raise InputError(root, "a reproduced cell without a fine-tuning run has no protocol")
    steps: set[int] = set()
    pretrain: set[int] = set()
    scratch = False
    key, unit = ("iterations", "iterations") if classification else ("steps", "steps")
    for rel in run_dirs:
        path = root / rel / TRAIN_SUMMARY
        record = _read_json(path)
        if not isinstance(record.get(key), int):
            raise InputError(path, f"records no integer '{key}': regenerate the fine-tuning run")
        steps.add(record[key])
        init = record.get("init")
        if not isinstance(init, str) or not init:
            raise InputError(path, "records no 'init' (scratch or a pretraining checkpoint)")
        if init == "scratch":
            scratch = True
        else:
            pretrain.add(pretraining_steps(root / Path(init).parent / PRETRAIN_LOG))
    ran = f"{'splits' if classification else 'folds'} {_span(folds)}"
    if of is not None and len(set(folds)) < of:
        ran += f" of {of} (fold policy: {kind} rows)" if kind else f" of {of}"
    parts = [ran, f"fine-tuning {_counts(steps, unit)}"]
    if pretrain:
        parts.append(f"pretraining {_counts(pretrain, 'steps')}")
    if scratch:
        parts.append("no pretraining" if not pretrain else "some from scratch")
    return ", ".join(parts)
