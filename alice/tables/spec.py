"""Table specs: one YAML per paper table (alice/tables/specs/tableN.yaml) and which experiment
produces each cell.

A spec lists the paper's rows (each naming the pretraining `method`, maybe a `variant`) and
columns (each naming a `backbone`/`metric`, or a label fraction). A cell is reproduced when the
config's `reproduce` section enables its (method, backbone) (and, for MosMed, its label fraction is
configured); its value then comes from the fine-tuning results of every fold (MosMed: split). A variant (an ablation switch, e.g. {"casa": false}) names its
own pretraining run (`alice__casa-false`, alice.ssl.variants). A row's `column_variants`
({column: variant}) gives one of its cells a variant of its own, in place of the row's and the
column's: a cell the paper defines as another table's run reads that run (Table 6's Alice
without CASA is Table 11's MIM + ℓdv run; the spec's notes say why). A table may run on a substitute
backbone (`reproduce.substitute.backbone`, where the spec's `substitute` lists `backbone`: Table 3
and the ablation tables).

The fold policy (`reproduce.folds`) says how much of the cross-validation each kind of row runs
at the config's scale: `headline` rows (the methods of `reproduce.headline`, Rand. init. and
Alice: the comparison the paper is about), `baseline` rows (every other method) and `ablation`
rows (every row of an ablation table) run the first N folds (MosMed: splits), or every fold when
N is null; at paper scale every kind runs every fold (`alice.config.validate_config`). What ran
is read back from the runs' records, so every cell states its folds and steps.

A settings table (Table 8: one row per fine-tuning setting, one column per (dataset, backbone))
is reproduced from what the runs recorded: a column's cells read every fine-tuned model behind a
reproduced cell of any segmentation table on its dataset and backbone (`settings_cell_runs`).

A row marked `in_paper: false` is the harness's own (e.g. Table 3's Rand. init. baseline): it has
no line in the reference CSV, and its paper cells read "not in the paper".
"""

from __future__ import annotations

import functools
from pathlib import Path


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
    from alice.config import load_yaml

    spec = load_yaml(path)
    for key in ("id", "caption", "rows", "columns"):
        if key not in spec:
            raise ConfigError(f"{path.name}:{key}", "missing from the table spec")
    _check_column_variants(spec, path.name)
    return spec


def _check_column_variants(spec: dict, filename: str) -> None:
    """A row's `column_variants` maps columns of the table to variants (mappings)."""
    columns = [c["column"] for c in spec["columns"]]
    for row in spec["rows"]:
        overrides = row.get("column_variants")
        if overrides is None:
            continue
        key = f"{filename}:rows.{row['row']}.column_variants"
        if not isinstance(overrides, dict) or not overrides:
            raise ConfigError(key, "must map column ids to variants")
        for column, variant in overrides.items():
            if column not in columns:
                raise ConfigError(f"{key}.{column}", f"not a column of the table (columns: "
                                                     f"{', '.join(columns)})")
            if not isinstance(variant, dict):
                raise ConfigError(f"{key}.{column}", f"must be a variant mapping, got {variant!r}")


def in_paper(row: dict) -> bool:
    """Whether the paper prints `row` (False for the harness's extra rows)."""
    return row.get("in_paper", True) is not False


def paper_rows(spec: dict) -> list[dict]:
    """The rows the paper prints, in its order (the reference CSV's rows)."""
    return [row for row in spec["rows"] if in_paper(row)]


def find_row(spec: dict, row: str) -> dict:
    for entry in spec["rows"]:
        if entry["row"] == row:
            return entry
    known = ", ".join(r["row"] for r in spec["rows"])
    raise ConfigError("--row", f"table {spec['id']} has no row '{row}' (rows: {known})")


def cell_experiment(spec: dict, row: dict, column: dict) -> dict:
    """The (dataset, method, backbone, variant, metric) that a cell reports. The variant is the
    row's `column_variants` entry of the column if it has one, else the row's and the column's
    variants merged."""
    override = (row.get("column_variants") or {}).get(column["column"])
    if override is not None:
        variant = dict(override)
    else:
        variant = {**(row.get("variant") or {}), **(column.get("variant") or {})}
    return {
        "task": spec.get("task", "segmentation"),
        "dataset": column.get("dataset") or row.get("dataset") or spec.get("dataset"),
        "method": row.get("method"),
        # harness_backbone: the network the harness runs a row on where the paper names none
        "backbone": (column.get("backbone") or row.get("backbone") or row.get("harness_backbone")
                     or spec.get("backbone")),
        "variant": variant,
        "metric": column.get("metric"),
        "label_fraction": column.get("label_fraction"),
    }


def is_enabled(experiment: dict, reproduce: dict) -> bool:
    """Whether the config asks the DAG to compute this cell.

    Segmentation and classification (MosMed) cells of a reproduced (method, backbone), including
    ablation variants made of the method's known switches (alice.ssl.variants). (`cell_runs` also
    needs a classification cell's label fraction among the configured ones.) A settings table's
    cell (Table 8) has no method: it is reproduced when fine-tuning runs of its (dataset,
    backbone) exist, see `settings_cell_runs`.
    """
    from alice.ssl.variants import has_switches

    return (
        experiment["task"] in ("segmentation", "classification")
        and experiment["method"] in reproduce.get("methods", [])
        and experiment["backbone"] in reproduce.get("backbones", [])
        and has_switches(experiment["method"], experiment["variant"])
    )


def finetune_dir(experiment: dict, fold: int) -> str:
    """The fine-tuning folder of a cell's experiment; `experiment["run"]` is the pretraining run.
    A classification cell's label fraction is a subfolder of its split: .../fold3/labels20."""
    from alice.data.folds import label_fraction_dir

    run = experiment.get("run") or experiment["method"]
    path = f"results/finetune/{experiment['dataset']}/{run}/{experiment['backbone']}/fold{fold}"
    if experiment.get("label_fraction") is not None:
        path += "/" + label_fraction_dir(experiment["label_fraction"])
    return path


def _fraction_configured(experiment: dict, settings: dict) -> bool:
    """Whether a cell's label fraction (if any) is one the dataset's splits are made with."""
    fraction = experiment.get("label_fraction")
    if fraction is None:
        return True
    configured = (settings.get("label_fractions") or {}).get(experiment["dataset"]) or []
    return any(abs(float(fraction) - float(f)) < 1e-9 for f in configured)


SUBSTITUTABLE = ("backbone",)
ROW_KINDS = ("headline", "baseline", "ablation")


def substitute_backbone(spec: dict, settings: dict) -> str | None:
    """The backbone that replaces the paper's for this table, if configured.

    `reproduce.substitute.backbone` lets a small budget run a table on another backbone than the
    paper's (Table 3 and the ablation tables: nnFormer); a spec takes it when its `substitute`
    lists `backbone`. The rendered table states any substitution.
    """
    accepted = spec.get("substitute") or []
    unknown = sorted(set(accepted) - set(SUBSTITUTABLE))
    if unknown:
        raise ConfigError(f"{spec['id']}.yaml:substitute",
                          f"unknown entries {unknown} (known: {', '.join(SUBSTITUTABLE)})")
    substitute = settings["reproduce"].get("substitute") or {}
    return substitute.get("backbone") if "backbone" in accepted else None


def row_kind(spec: dict, row: dict, settings: dict) -> str:
    """Which part of the fold policy (`reproduce.folds`) a row falls under: `ablation` for every
    row of an ablation table (Tables 5-7, 10, 11), `headline` for the methods listed in
    `reproduce.headline` (the comparison the paper is about: Rand. init. and Alice), `baseline`
    for every other method's row."""
    if spec.get("ablation"):
        return "ablation"
    if row.get("method") in (settings["reproduce"].get("headline") or []):
        return "headline"
    return "baseline"


def policy_folds(spec: dict, row: dict, settings: dict, n_folds: int) -> list[int]:
    """The folds (MosMed: splits) a row's cells run: the first `reproduce.folds[kind]` of the
    dataset's `n_folds`, or all of them when that is null (the paper's protocol)."""
    limit = (settings["reproduce"].get("folds") or {}).get(row_kind(spec, row, settings))
    return list(range(n_folds if limit is None else min(n_folds, int(limit))))


def cell_runs(spec: dict, row: dict, settings: dict) -> dict[str, dict]:
    """Per enabled column of `row`: what computes it.

    {"run": pretraining run id, "backbone": the backbone that runs, "dataset", "folds": [k, ...],
    "paths": [metrics file per fold]}. `settings` = `table_settings(config)`. MosMed's "folds"
    are its splits (`datasets.mosmed.repeats`), each cell at its column's label fraction. A
    settings table's cells are `settings_cell_runs`.
    """
    from alice.ssl.variants import run_id

    if spec.get("task") == "settings":
        return settings_cell_runs(spec, row, settings)
    backbone_override = substitute_backbone(spec, settings)
    method_configs = settings.get("method_configs", {})
    runs: dict[str, dict] = {}
    for column in spec["columns"]:
        if column["column"] in (row.get("not_applicable") or []):
            continue
        if column.get("source") == "leaderboard":
            continue
        experiment = cell_experiment(spec, row, column)
        if backbone_override:
            experiment["backbone"] = backbone_override
        if not is_enabled(experiment, settings["reproduce"]) or not _fraction_configured(experiment, settings):
            continue
        experiment["run"] = run_id(experiment["method"], experiment["variant"],
                                   method_configs.get(experiment["method"]))
        folds = policy_folds(spec, row, settings, settings["folds"][experiment["dataset"]])
        runs[column["column"]] = {
            "run": experiment["run"], "backbone": experiment["backbone"],
            "dataset": experiment["dataset"], "folds": folds,
            "paths": [f"{finetune_dir(experiment, k)}/metrics.json" for k in folds]}
    return runs


def finetuned_models(settings: dict) -> dict[tuple[str, str], dict[tuple[str, int], str]]:
    """The fine-tuning folders whose settings Table 8 reports, as {(dataset, backbone): {(run,
    fold): folder}}: per (dataset, backbone), those behind the reproduced cells of the headline rows
    (`reproduce.headline`, every fold) of any segmentation table, or, where no headline row ran on
    it, those behind every reproduced cell. Every method fine-tunes from the same
    `finetune.<backbone>` section, so the headline runs stand for the baselines' and the ablations'
    folds, and Table 8 alone costs the headline runs, not every run of Tables 1-11."""
    found: dict[tuple[str, str], dict[tuple[str, int], str]] = {}
    headline: dict[tuple[str, str], dict[tuple[str, int], str]] = {}
    for table in table_ids():
        spec = load_spec(table)
        if spec.get("task") != "segmentation":
            continue
        for row in spec["rows"]:
            is_headline = row_kind(spec, row, settings) == "headline"
            for run in cell_runs(spec, row, settings).values():
                for fold, path in zip(run["folds"], run["paths"]):
                    key = (run["dataset"], run["backbone"])
                    found.setdefault(key, {})[run["run"], fold] = path.rsplit("/", 1)[0]
                    if is_headline:
                        headline.setdefault(key, {})[run["run"], fold] = path.rsplit("/", 1)[0]
    return {key: headline.get(key) or runs for key, runs in found.items()}


def settings_cell_runs(spec: dict, row: dict, settings: dict) -> dict[str, dict]:
    """`cell_runs` of a settings table (supplementary Table 8: fine-tuning settings per
    (dataset, backbone) column): a column is reproduced when some reproduced table cell was
    fine-tuned on its dataset with its backbone, and its value is then read from what those runs
    recorded (the `model.pt` of `finetuned_models`, plus the dataset's preprocessing
    `manifest.json` for the spacing), never from the config file, so the table shows the
    configuration that actually ran.
    "run" lists the runs (comma-separated), "folds" the folds any of them used."""
    models = finetuned_models(settings)
    runs: dict[str, dict] = {}
    for column in spec["columns"]:
        dataset, backbone = column["dataset"], column["backbone"]
        found = models.get((dataset, backbone))
        if not found:
            continue
        runs[column["column"]] = {
            "run": ",".join(sorted({run for run, _ in found})), "backbone": backbone,
            "dataset": dataset, "folds": sorted({fold for _, fold in found}),
            "paths": [f"{found[key]}/model.pt" for key in sorted(found)]
                     + [f"results/data/{dataset}/manifest.json"]}
    return runs


def cell_sources(spec: dict, row: dict, settings: dict) -> dict[str, list[str]]:
    """Per enabled column of `row`: the files its value is computed from (metrics files, one per
    fold; a settings table: the runs' model files and the dataset's manifest)."""
    return {column: run["paths"] for column, run in cell_runs(spec, row, settings).items()}


def table_settings(config: dict) -> dict:
    """The part of the config the table stages depend on (passed to them as JSON): the scale
    (demo or paper, which every row file states), what to reproduce, the folds per dataset
    (MosMed: its splits), MosMed's label fractions, and each method's pretraining settings (an
    ablation variant equal to them is the plain run)."""
    from alice.config import plain_method_config

    methods = (config.get("pretrain") or {}).get("methods") or {}
    method_configs = {name: plain_method_config(config, name) for name in methods}
    datasets = config["datasets"]
    folds = {name: section["folds"] for name, section in datasets.items() if "folds" in section}
    folds.update({name: section["repeats"] for name, section in datasets.items() if "repeats" in section})
    return {
        "scale": config["scale"],
        "reproduce": config.get("reproduce", {"methods": [], "backbones": []}),
        "folds": folds,
        "label_fractions": {name: [float(f) for f in section["label_fractions"]]
                            for name, section in datasets.items() if "label_fractions" in section},
        "method_configs": method_configs,
    }
