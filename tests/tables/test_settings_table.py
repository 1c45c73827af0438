"""Table 8 (fine-tuning settings) shows what the runs recorded: their model files' settings and
their cache's spacing, so a config change reaches the table only through the runs it changes."""

from __future__ import annotations

import copy

import pytest

from alice import config as cfg
from alice.errors import InputError
from alice.tables import render
from alice.tables.settings_cells import format_setting
from alice.tables.spec import cell_sources, find_row, load_spec, table_settings

CONFIG = cfg.load_config()


def unetr_only(config: dict) -> dict:
    """Table settings where only UNETR runs (Rand. init. and Alice, Table 1's 5 folds; the
    ablation tables on UNETR fold 0)."""
    config = copy.deepcopy(config)
    config["reproduce"]["backbones"] = ["unetr"]
    config["reproduce"]["substitute"] = {"backbone": "unetr"}
    config["reproduce"]["folds"] = {"headline": None, "baseline": 1, "ablation": 1}
    return config


def table8_row(row, config, root):
    return render.compute_row("table8", row, table_settings(config), root=root).set_index("column")


def test_columns_read_the_headline_runs_or_every_run_behind_a_reproduced_cell():
    spec = load_spec("table8")
    sources = cell_sources(spec, find_row(spec, "base_lr"), table_settings(unetr_only(CONFIG)))
    # only UNETR ran: the Swin UNETR and nnFormer columns are not reproduced
    assert set(sources) == {"flare22_unetr"}
    models = [p for p in sources["flare22_unetr"] if p.endswith("model.pt")]
    # the headline rows' runs (Rand. init. and Alice of Table 1) on every fold; the baselines and
    # the ablation variants fine-tune from the same finetune.unetr section
    assert models == [f"results/finetune/flare22/{m}/unetr/fold{k}/model.pt"
                      for m in ("alice", "rand_init") for k in range(5)]
    assert sources["flare22_unetr"][-1] == "results/data/flare22/manifest.json"
    # the demo config runs the paper's backbones: every column has runs (BTCV: Table 3 on nnFormer)
    full = cell_sources(spec, find_row(spec, "base_lr"), table_settings(CONFIG))
    assert set(full) == {"flare22_unetr", "flare22_swin_unetr", "flare22_nnformer", "btcv_nnformer"}
    assert "results/finetune/btcv/alice/nnformer/fold4/model.pt" in full["btcv_nnformer"]
    assert not any("/mae/" in p for p in full["btcv_nnformer"])
    # where no headline row ran, every reproduced run of the column is read
    config = unetr_only(CONFIG)
    config["reproduce"]["methods"] = ["mae"]
    only = cell_sources(spec, find_row(spec, "base_lr"), table_settings(config))
    assert [p for p in only["flare22_unetr"] if p.endswith("model.pt")] == [
        "results/finetune/flare22/mae/unetr/fold0/model.pt"]


def test_cells_show_the_recorded_settings_and_follow_a_config_change(tmp_path, fake_results):
    config = unetr_only(CONFIG)
    fake_results(tmp_path, table_settings(config), config, tables=["table8"])
    lr = table8_row("base_lr", config, tmp_path).loc["flare22_unetr"]
    assert lr["status"] == "reproduced"
    assert lr["reproduced"] == format_setting(CONFIG["finetune"]["unetr"]["optim"]["lr"]) == "5e-3"
    assert lr["paper"] == "1e-4"  # beside it, never copied
    assert lr["n_folds"] == 10 and lr["sources"].count("model.pt") == 10  # the headline rows: 2 x 5 folds
    assert table8_row("crop_size", config, tmp_path).loc["flare22_unetr", "reproduced"] == "32×32×32"
    assert table8_row("spacing", config, tmp_path).loc["flare22_unetr", "reproduced"] == "6×6×6"
    # the config's words in the paper's (the spec's vocabulary)
    assert table8_row("augmentation", config, tmp_path).loc["flare22_unetr", "reproduced"] == "none"
    assert table8_row("optimizer", config, tmp_path).loc["flare22_unetr", "reproduced"] == "AdamW"
    assert table8_row("base_lr", config, tmp_path).loc["flare22_nnformer", "reproduced"] == (
        render.NOT_REPRODUCED)

    # change the config and rerun the fine-tuning (as Snakemake does when a rule's settings
    # change): the cell follows; the file on disk, not the config, is what the row reads
    changed = copy.deepcopy(config)
    changed["finetune"]["unetr"]["optim"]["lr"] = 2.5e-4
    changed["finetune"]["unetr"]["crop"] = [64, 64, 32]
    changed["datasets"]["flare22"]["spacing"] = [0.76, 0.76, 1.5]
    assert table8_row("base_lr", changed, tmp_path).loc["flare22_unetr", "reproduced"] == "5e-3"
    fake_results(tmp_path, table_settings(changed), changed, tables=["table8"])
    assert table8_row("base_lr", changed, tmp_path).loc["flare22_unetr", "reproduced"] == "2.5e-4"
    assert table8_row("crop_size", changed, tmp_path).loc["flare22_unetr", "reproduced"] == "64×64×32"
    assert table8_row("spacing", changed, tmp_path).loc["flare22_unetr", "reproduced"] == (
        "0.76×0.76×1.5")


def test_runs_with_different_settings_are_refused(tmp_path, fake_results):
    config = unetr_only(CONFIG)
    fake_results(tmp_path, table_settings(config), config, tables=["table8"])
    import torch

    stale = tmp_path / "results/finetune/flare22/rand_init/unetr/fold3/model.pt"
    model = torch.load(stale, weights_only=True)
    model["settings"]["optim"]["lr"] = 0.1
    torch.save(model, stale)
    with pytest.raises(InputError, match=r"rand_init/unetr/fold3/model.pt: was fine-tuned with "
                                         r"optim.lr = 0.1 but .* with 5e-3"):
        table8_row("base_lr", config, tmp_path)
    # other settings of the same runs still agree
    epochs = str(config["finetune"]["unetr"]["optim"]["epochs"])
    assert table8_row("epochs", config, tmp_path).loc["flare22_unetr", "reproduced"] == epochs


def test_missing_or_foreign_model_is_an_error(tmp_path, fake_results):
    config = unetr_only(CONFIG)
    fake_results(tmp_path, table_settings(config), config, tables=["table8"])
    model = tmp_path / "results/finetune/flare22/alice/unetr/fold2/model.pt"
    model.write_bytes(b"not a torch file")
    with pytest.raises(InputError, match="alice/unetr/fold2/model.pt: not a readable weights-only"):
        table8_row("optimizer", config, tmp_path)
    model.unlink()
    with pytest.raises(InputError, match="fold2/model.pt: missing"):
        table8_row("optimizer", config, tmp_path)


def test_settings_hash_links_table8_to_the_metric_cells(tmp_path, fake_results):
    """A Table 8 cell records each model's settings hash as `alice evaluate` computes it."""
    import torch

    from alice.downstream.inference import model_settings_hash

    config = unetr_only(CONFIG)
    fake_results(tmp_path, table_settings(config), config, tables=["table8"])
    cell = table8_row("batch_size", config, tmp_path).loc["flare22_unetr"]
    model = torch.load(tmp_path / "results/finetune/flare22/alice/unetr/fold0/model.pt", weights_only=True)
    assert model_settings_hash(model, tmp_path / "results/data/flare22") in cell["settings_hash"].split(";")
    assert cell["code_version"] == "0.1.0+gtest"
    spacing = table8_row("spacing", config, tmp_path).loc["flare22_unetr"]
    assert spacing["sources"] == "results/data/flare22/manifest.json"
    assert spacing["settings_hash"] == "m-flare22"


@pytest.mark.parametrize("value, text", [
    (1e-4, "1e-4"), (2.5e-4, "2.5e-4"), (0.005, "5e-3"), (0.01, "0.01"), (0.9, "0.9"), (8, "8"),
    (1000, "1000"), ("AdamW", "AdamW"), ([96, 96, 96], "96×96×96"), ([0.76, 0.76, 1.5], "0.76×0.76×1.5"),
    (["flip", "rotation"], "flip, rotation"), ([], "none"), (True, "yes")])
def test_format_setting(value, text):
    assert format_setting(value) == text


@pytest.mark.parametrize("value", [None, {"a": 1}, float("nan"), [1, "a"]])
def test_format_setting_rejects(value):
    with pytest.raises(ValueError):
        format_setting(value)


def configured_table8(config_file: str) -> dict[tuple[str, str], str]:
    """(row, column) -> how Table 8 prints the setting `config_file` would make the runs record."""
    from alice.config import REPO_ROOT

    config = cfg.load_config(REPO_ROOT / "config" / config_file)
    spec = load_spec("table8")
    cells = {}
    for column in spec["columns"]:
        section = cfg.finetune_settings(config, column["backbone"])["finetune"]
        for row in spec["rows"]:
            if row["key"] == "dataset_spacing":
                value = config["datasets"][column["dataset"]]["spacing"]
            else:
                value = section
                for part in row["key"].split("."):
                    value = value[part]
            cells[row["row"], column["column"]] = format_setting(value, spec.get("vocabulary"))
    return cells


def test_every_table8_key_is_a_setting_of_the_demo_config():
    """Every row key names a fine-tuning setting of every column's backbone (or the dataset's
    spacing), so a run records it and its cell can be reproduced."""
    cells = configured_table8("config.yaml")
    assert len(cells) == 11 * 4 and all(cells.values())
    assert cells["base_lr", "flare22_unetr"] == "5e-3"  # the demo's, not the paper's 1e-4


def test_paper_config_prints_the_papers_table8():
    """config/paper.yaml holds supplementary Table 8: run with it, every cell reads as printed."""
    from alice.tables.reference import reference_cell

    for (row, column), text in configured_table8("paper.yaml").items():
        assert text == reference_cell("table8", row, column), (row, column)
