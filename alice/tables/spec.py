"""Table specs: one YAML per paper table (alice/tables/specs/tableN.yaml) and which experiment
produces each cell.

A spec lists the paper's rows (each naming the pretraining `method`, maybe a `variant`) and
columns (each naming a `backbone`/`metric`, or a label fraction). A cell is reproduced when the
config's `reproduce` section enables its (method, backbone); its value then comes from the
fine-tuning results of every fold.
"""

from __future__ import annotations

import functools
from pathlib import Path

import yaml

from alice.errors import ConfigError

SPEC_DIR = Path(__file__).parent / "specs"


def table_ids() -> list[str]:
    return sorted((p.stem for p in SPEC_DIR.glob("table*.yaml")), key=lambda t: int(t[5:]))


def load_spec(table: str | int) -> dict:
    """The spec of `table` ("table3", "Table 3" or 3); cached, so treat it as read-only."""
    from alice.tables.reference import table_id

    try:
        return _load_spec(table_id(table))
    except KeyError as exc:
        raise ConfigError("--table", str(exc).strip("'\"")) from None


@functools.lru_cache(maxsize=None)
def _load_spec(table: str) -> dict:
    path = SPEC_DIR / f"{table}.yaml"
    if not path.is_file():
        raise ConfigError("--table", f"unknown table '{table}' (known: {', '.join(table_ids())})")
    spec = yaml.safe_load(path.read_text())
    for key in ("id", "caption", "rows", "columns"):
        if key not in spec:
            raise ConfigError(f"{path.name}:{key}", "missing from the table spec")
    return spec


def find_row(spec: dict, row: str) -> dict:
    for entry in spec["rows"]:
        if entry["row"] == row:
            return entry
    known = ", ".join(r["row"] for r in spec["rows"])
    raise ConfigError("--row", f"table {spec['id']} has no row '{row}' (rows: {known})")


def cell_experiment(spec: dict, row: dict, column: dict) -> dict:
    """The (dataset, method, backbone, variant, metric) that a cell reports."""
    variant = {**(row.get("variant") or {}), **(column.get("variant") or {})}
    return {
        "task": spec.get("task", "segmentation"),
        "dataset": column.get("dataset") or row.get("dataset") or spec.get("dataset"),
        "method": row.get("method"),
        "backbone": column.get("backbone") or row.get("backbone") or spec.get("backbone"),
        "variant": variant,
        "metric": column.get("metric"),
        "label_fraction": column.get("label_fraction"),
    }


def is_enabled(experiment: dict, reproduce: dict) -> bool:
    """Whether the config asks the DAG to compute this cell.

    Only plain segmentation cells exist so far; ablation variants, classification and the
    settings table arrive with issues C, E and F and are reported as not reproduced until then.
    """
    return (
        experiment["task"] == "segmentation"
        and not experiment["variant"]
        and experiment["method"] in reproduce.get("methods", [])
        and experiment["backbone"] in reproduce.get("backbones", [])
    )


def finetune_dir(experiment: dict, fold: int) -> str:
    return (f"results/finetune/{experiment['dataset']}/{experiment['method']}/"
            f"{experiment['backbone']}/fold{fold}")


def cell_sources(spec: dict, row: dict, settings: dict) -> dict[str, list[str]]:
    """Per enabled column of `row`: the metrics files (one per fold) its value is computed from.

    `settings` = {"reproduce": config["reproduce"], "folds": {dataset: number of folds}}.
    """
    sources: dict[str, list[str]] = {}
    for column in spec["columns"]:
        if column["column"] in (row.get("not_applicable") or []):
            continue
        if column.get("source") == "leaderboard":
            continue
        experiment = cell_experiment(spec, row, column)
        if is_enabled(experiment, settings["reproduce"]):
            n_folds = settings["folds"][experiment["dataset"]]
            sources[column["column"]] = [
                f"{finetune_dir(experiment, k)}/metrics.json" for k in range(n_folds)]
    return sources


def table_settings(config: dict) -> dict:
    """The part of the config the table stages depend on (passed to them as JSON)."""
    return {
        "reproduce": config.get("reproduce", {"methods": [], "backbones": []}),
        "folds": {name: section["folds"] for name, section in config["datasets"].items()
                  if "folds" in section},
    }
