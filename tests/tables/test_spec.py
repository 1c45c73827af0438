"""Table specs: which run each cell reads, and the checks of a spec's per-cell variants."""

from __future__ import annotations

from collections import defaultdict

import pytest
import yaml

from alice import config as cfg
from alice.errors import ConfigError
from alice.tables import spec as spec_module
from alice.tables.reference import load_reference
from alice.tables.spec import cell_experiment, cell_runs, find_row, load_spec, table_ids, table_settings


def paper_cells_by_value(settings: dict) -> dict[tuple, list[tuple]]:
    """(paper text "mean±std", dataset, metric) -> [(table, row, column, run read)] over every
    reproduced numeric cell."""
    groups = defaultdict(list)
    for table in table_ids():
        spec = load_spec(table)
        if spec.get("task") == "settings":
            continue
        reference = load_reference(table).set_index("row")
        for row in spec["rows"]:
            runs = cell_runs(spec, row, settings)
            for column in spec["columns"]:
                if column["column"] not in runs or row["row"] not in reference.index:
                    continue
                text = str(reference.loc[row["row"], column["column"]])
                if "±" not in text:
                    continue
                experiment = cell_experiment(spec, row, column)
                groups[text, experiment["dataset"], experiment["metric"]].append(
                    (table, row["row"], column["column"], runs[column["column"]]["run"]))
    return groups


@pytest.mark.parametrize("config_name", ["config.yaml", "paper.yaml"])
def test_cells_the_paper_prints_alike_read_one_run(config_name):
    """Two reproduced cells with the same printed mean ± std (same dataset and metric) are one
    experiment of the paper: they read the same pretraining run."""
    config = cfg.load_config(cfg.REPO_ROOT / "config" / config_name)
    groups = paper_cells_by_value(table_settings(config))
    shared = {key: cells for key, cells in groups.items() if len(cells) > 1}
    differing = {key: cells for key, cells in shared.items() if len({c[3] for c in cells}) > 1}
    # one coincidence of the printed values across tables, two different experiments: Table 1's
    # DINO on Swin UNETR and Table 2's LoGo on a 3-D ResNet both print NSD 87.08±3.17
    differing.pop(("87.08±3.17", "flare22", "nsd"), None)
    assert not differing, differing
    # the two pairs the ablation tables print twice with a variant run behind them
    runs = {key[0]: {c[3] for c in cells} for key, cells in shared.items()}
    assert runs["85.66±2.18"] == {"alice__objectives-mim-dv"}  # Table 6 w/o CASA = Table 11 MIM + ℓdv
    assert runs["85.63±2.11"] == {"alice__objectives-mim-st"}  # Table 5 "×" = Table 11 MIM + ℓst


def test_alices_ablation_cells_read_table11s_runs():
    settings = table_settings(cfg.load_config())
    table6 = load_spec("table6")
    runs = cell_runs(table6, find_row(table6, "alice"), settings)
    assert {c: r["run"] for c, r in runs.items()} == {
        "dsc_with": "alice", "nsd_with": "alice",
        "dsc_without": "alice__objectives-mim-dv", "nsd_without": "alice__objectives-mim-dv"}
    # iBOT keeps the column's own switch
    ibot = cell_experiment(table6, find_row(table6, "ibot"),
                           next(c for c in table6["columns"] if c["column"] == "dsc_without"))
    assert ibot["variant"] == {"casa": False}
    table5 = load_spec("table5")
    runs = cell_runs(table5, find_row(table5, "alice_intra"), settings)
    assert {r["run"] for r in runs.values()} == {"alice__objectives-mim-st"}


def write_spec(tmp_path, monkeypatch, rows):
    spec = {"id": "table99", "caption": "c", "rows": rows,
            "columns": [{"column": "dsc", "metric": "dsc"}, {"column": "nsd", "metric": "nsd"}]}
    (tmp_path / "table99.yaml").write_text(yaml.safe_dump(spec))
    monkeypatch.setattr(spec_module, "SPEC_DIR", tmp_path)
    spec_module._load_spec.cache_clear()


@pytest.mark.parametrize("overrides, key, problem", [
    ({"dice": {"casa": False}}, "table99.yaml:rows.a.column_variants.dice", "not a column"),
    ({"dsc": ["mim"]}, "table99.yaml:rows.a.column_variants.dsc", "must be a variant mapping"),
    ([{"dsc": {}}], "table99.yaml:rows.a.column_variants", "must map column ids"),
])
def test_bad_column_variants_name_the_key(tmp_path, monkeypatch, overrides, key, problem):
    write_spec(tmp_path, monkeypatch, [{"row": "a", "method": "alice", "column_variants": overrides}])
    try:
        with pytest.raises(ConfigError) as err:
            spec_module._load_spec("table99")
        assert err.value.key == key and problem in err.value.problem
    finally:
        spec_module._load_spec.cache_clear()


def test_a_column_variant_replaces_the_rows_and_the_columns(tmp_path, monkeypatch):
    write_spec(tmp_path, monkeypatch, [{"row": "a", "method": "alice", "variant": {"casa": False},
                                        "column_variants": {"nsd": {"objectives": ["mim"]}}}])
    try:
        spec = spec_module._load_spec("table99")
        row = find_row(spec, "a")
        dsc, nsd = spec["columns"]
        assert cell_experiment(spec, row, dsc)["variant"] == {"casa": False}
        assert cell_experiment(spec, row, nsd)["variant"] == {"objectives": ["mim"]}
    finally:
        spec_module._load_spec.cache_clear()
