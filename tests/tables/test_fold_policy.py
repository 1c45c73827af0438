"""The fold policy (`reproduce.folds`): at demo scale a baseline-like row runs fold 0 and its
cells say so; at paper scale every row runs every fold, and a policy that cuts folds is refused."""

import copy
import json

import pytest
import yaml

from alice import config as cfg
from alice.errors import ConfigError
from alice.tables import render
from alice.tables.spec import cell_runs, find_row, load_spec, row_kind, table_settings
from fakes import write_training_record


@pytest.fixture(scope="module")
def demo():
    return cfg.validate_config(yaml.safe_load(cfg.DEFAULT_CONFIG.read_text()))


@pytest.fixture(scope="module")
def paper():
    config = yaml.safe_load((cfg.REPO_ROOT / "config" / "paper.yaml").read_text())
    for release in ("flare22", "btcv", "mosmed"):
        config["datasets"][release]["root"] = f"/data/{release}"
    return cfg.validate_config(config)


def with_method(config: dict, method: str) -> dict:
    """Table settings of `config` with `method` reproduced beside its own methods."""
    settings = copy.deepcopy(table_settings(config))
    settings["reproduce"]["methods"] = [*settings["reproduce"]["methods"], method]
    return settings


def folds_of(table: str, row: str, settings: dict) -> dict[str, list[int]]:
    spec = load_spec(table)
    return {col: run["folds"] for col, run in cell_runs(spec, find_row(spec, row), settings).items()}


def test_row_kinds(demo):
    settings = table_settings(demo)
    t1, t6 = load_spec("table1"), load_spec("table6")
    assert row_kind(t1, find_row(t1, "alice"), settings) == "headline"
    assert row_kind(t1, find_row(t1, "mae"), settings) == "baseline"
    assert all(row_kind(t6, row, settings) == "ablation" for row in t6["rows"])


def test_demo_runs_a_baseline_row_on_fold_0_and_the_headline_on_every_fold(demo):
    settings = with_method(demo, "mae")
    mae = folds_of("table1", "mae", settings)
    assert set(mae) == {"unetr_dsc", "unetr_nsd", "swin_unetr_dsc", "swin_unetr_nsd", "nnformer_dsc",
                        "nnformer_nsd"}
    assert all(folds == [0] for folds in mae.values())
    assert all(folds == [0, 1, 2, 3, 4] for folds in folds_of("table1", "alice", settings).values())
    # MosMed: split 0 of 10 for a baseline row, all 10 for the headline
    mosmed = with_method(demo, "mae")
    assert all(f == [0] for f in folds_of("table4", "mae", mosmed).values())
    assert all(f == list(range(10)) for f in folds_of("table4", "alice", mosmed).values())


def test_paper_runs_every_fold_of_every_row(paper):
    settings = with_method(paper, "mae")
    assert all(folds == [0, 1, 2, 3, 4] for folds in folds_of("table1", "mae", settings).values())
    assert all(folds == [0, 1, 2, 3, 4] for folds in folds_of("table6", "alice", settings).values())


def test_paper_scale_refuses_a_policy_that_cuts_folds(paper):
    config = copy.deepcopy(paper)
    config["reproduce"]["folds"]["baseline"] = 1
    with pytest.raises(ConfigError, match=r"reproduce\.folds\.baseline.*paper scale runs every fold"):
        cfg.validate_config(config)


def test_a_cut_cell_says_which_folds_ran_and_why(demo, tmp_path):
    settings = with_method(demo, "mae")
    spec = load_spec("table1")
    runs = [run for row in spec["rows"] for run in cell_runs(spec, row, settings).values()]
    for run in runs:
        for rel in run["paths"]:
            path = tmp_path / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"mean": {"dsc": 0.5, "nsd": 0.6}, "settings_hash": "h",
                                        "code_version": "v"}))
            write_training_record(tmp_path, rel)
    frame = render.compute_row("table1", "mae", settings, root=tmp_path)
    done = frame[frame["status"] == "reproduced"]
    assert len(done) == 6 and set(done["n_folds"]) == {1} and set(done["folds"]) == {"0"}
    assert set(done["protocol"]) == {"folds 0 of 5 (fold policy: baseline rows), fine-tuning 80 steps, "
                                     "pretraining 300 steps"}
    # the rendered caption states it as well
    rows = {row["row"]: tmp_path / "rows" / f"{row['row']}.csv" for row in spec["rows"]}
    for row in spec["rows"]:
        render.write_row(render.compute_row("table1", row["row"], settings, root=tmp_path), rows[row["row"]])
    assert "fold policy: baseline rows" in render.protocol_note(render.read_rows("table1", rows))
