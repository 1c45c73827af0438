"""The paper's reference numbers (alice/tables/reference/*.csv) and table specs (specs/*.yaml).

Expected cells are hard-coded here (read off the paper by hand) and, where the paper's text is
available, also looked up in it, so a typo in either the CSV or this file fails.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import pandas as pd
import pytest

from alice.tables.reference import (
    REFERENCE_DIR,
    TABLES,
    load_reference,
    parse_cell,
    reference_cell,
    table_id,
)
from alice.tables.spec import SPEC_DIR, in_paper, load_spec, paper_rows

REPO = Path(__file__).resolve().parents[2]
PAPER_NAME = Path("paper") / "alice-iccv2023.txt"


def _paper_path() -> Path | None:
    candidates = [os.environ.get("ALICE_PAPER_TEXT")]
    candidates += [REPO / "shared" / PAPER_NAME, REPO.parent / "shared" / PAPER_NAME]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


PAPER = _paper_path()
needs_paper = pytest.mark.skipif(PAPER is None, reason="paper text (shared/paper/alice-iccv2023.txt) not found")

SLUG = re.compile(r"^[a-z][a-z0-9_]*$")
METHODS = {
    "rand_init", "mocov3", "dino", "ibot", "sim", "mae", "semmae", "cmae", "medical_mae",
    "tang_swin_unetr", "mocov2", "byol", "contrastive_crop", "logo", "pcrl", "pcrlv2", "pgl",
    "chaitanya", "nnunet", "transvw", "sam", "models_genesis", "dira", "dodnet",
    "unetr_supervised", "pann", "nnformer_supervised", "unimiss", "alice",
}
SPEC_KEYS = {"id", "caption", "task", "dataset", "metric_scale", "rows", "columns"}
NUMERIC_TABLES = [t for t in TABLES if t != "table8"]


# ---------------------------------------------------------------------------------------------
# the paper's text


def _normalise(text: str) -> str:
    """Paper or CSV text -> one comparable form: LaTeX stripped, ± / × tight, spaces collapsed."""
    text = re.sub(r"\\textbf\{([^{}]*)\}", r"\1", text)
    text = text.replace("{\\pm}", "±").replace("\\pm", "±").replace("\\times", "×")
    text = re.sub(r"e\^\{(-?\d+)\}", r"e\1", text)
    text = re.sub(r"[${}]", "", text)
    text = re.sub(r"\s*([±×])\s*", r"\1", text)
    return re.sub(r"\s+", " ", text).strip()


def _alnum(text: str) -> str:
    text = re.sub(r"\\[a-zA-Z]+", "", text)
    return re.sub(r"[^a-z0-9]", "", text.lower())


def _paper_lines() -> list[str]:
    assert PAPER is not None
    return PAPER.read_text(encoding="utf-8").splitlines()


def _table_block(tid: str) -> list[str]:
    """The table's own lines: the run of tab-separated lines right above its caption."""
    number = tid.removeprefix("table")
    lines = _paper_lines()
    starts = [i for i, line in enumerate(lines) if line.startswith(f"Table {number}. ")]
    assert len(starts) == 1, f"caption of Table {number} not found once in the paper text"
    block: list[str] = []
    i = starts[0] - 1
    while i >= 0 and not lines[i].strip():
        i -= 1
    while i >= 0 and "\t" in lines[i]:
        block.insert(0, lines[i])
        i -= 1
    assert len(block) >= 3, f"no table lines above the caption of Table {number}"
    return [_normalise(line) for line in block]


def _find_in_order(line: str, values: list[str]) -> bool:
    pos = 0
    for value in values:
        if value == "-":  # a whole cell, not the hyphen of "nnU-Net"
            pattern = r"(?<!\S)-(?!\S)"
        else:
            pattern = r"(?<![0-9.])" + re.escape(_normalise(value)) + r"(?![0-9])"
        match = re.compile(pattern).search(line, pos)
        if match is None:
            return False
        pos = match.end()
    return True


def _value_columns(tid: str) -> list[str]:
    return [c["column"] for c in load_spec(tid)["columns"]]


# ---------------------------------------------------------------------------------------------
# spot checks: (table, row, column) -> the cell as read off the paper

SPOT = {
    ("table1", "rand_init", "unetr_dsc"): "80.95±3.48",
    ("table1", "mocov3", "unetr_nsd"): "86.49±3.52",
    ("table1", "sim", "unetr_dsc"): "83.04±2.97",
    ("table1", "semmae", "unetr_nsd"): "87.90±3.31",
    ("table1", "semmae", "swin_unetr_dsc"): "-",
    ("table1", "tang_et_al", "nnformer_nsd"): "89.51±3.23",
    ("table1", "alice", "nnformer_dsc"): "86.87±1.84",
    ("table1", "alice", "swin_unetr_nsd"): "91.22±2.12",
    ("table2", "mocov2", "dsc"): "81.96±3.29",
    ("table2", "pcrlv2", "dsc"): "84.45±2.49",
    ("table2", "pcrlv2", "backbone"): "3D nsUNet",
    ("table2", "nnunet", "nsd"): "88.51±2.85",
    ("table2", "nnunet", "parts"): "-",
    ("table2", "models_genesis", "dsc"): "83.35±2.82",
    ("table2", "chaitanya", "parts"): "E.&D.",
    ("table3", "sam", "online_dsc"): "84.07",
    ("table3", "sam", "offline_dsc"): "82.00±3.01",
    ("table3", "dodnet", "offline_dsc"): "-",
    ("table3", "nnunet", "online_dsc"): "87.62",
    ("table3", "nnunet", "ensemble"): "10",
    ("table3", "unimiss", "offline_dsc"): "84.99±1.57",
    ("table3", "tang_et_al", "online_dsc"): "84.72",
    ("table3", "alice", "offline_dsc"): "86.76±0.98",
    ("table3", "alice", "online_dsc"): "88.58",
    ("table4", "contrastive_crop", "auc"): "87.02±3.11",
    ("table4", "pcrlv2", "auc"): "88.36±2.51",
    ("table4", "cmae", "auc"): "87.73±3.02",
    ("table4", "alice", "auc"): "90.88±1.29",
    ("table5", "ibot_intra", "dsc"): "84.04±2.81",
    ("table5", "ibot_inter", "dsc"): "85.41±2.42",
    ("table5", "alice_intra", "nsd"): "90.01±2.32",
    ("table5", "alice_inter", "dsc"): "86.87±1.84",
    ("table6", "ibot", "nsd_with"): "89.88±2.89",
    ("table6", "sim", "dsc_with"): "85.21±2.36",
    ("table6", "alice", "dsc_without"): "85.66±2.18",
    ("table6", "alice", "nsd_without"): "90.02±2.32",
    ("table7", "alice_infonce", "dsc"): "86.83±1.88",
    ("table7", "alice_infonce", "nsd"): "91.20±2.12",
    ("table7", "alice_cosine", "nsd"): "91.28±2.09",
    ("table8", "optimizer", "flare22_nnformer"): "SGD",
    ("table8", "base_lr", "flare22_swin_unetr"): "4e-4",
    ("table8", "momentum", "btcv_nnformer"): "0.99",
    ("table8", "lr_schedule", "btcv_nnformer"): '"poly" decay',
    ("table8", "spacing", "flare22_nnformer"): "0.76×0.76×1.5",
    ("table8", "spacing", "btcv_nnformer"): "0.76×0.76×2",
    ("table8", "crop_size", "flare22_unetr"): "96×96×96",
    ("table9", "rand_init_resnet3d", "auc_100"): "84.73±5.13",
    ("table9", "pcrl", "auc_20"): "79.44±8.44",
    ("table9", "rand_init_vit", "auc_100"): "85.05±4.94",
    ("table9", "tang_et_al", "auc_50"): "81.52±5.05",
    ("table9", "alice", "auc_20"): "83.30±6.04",
    ("table10", "mask_0_75", "flare22_dsc"): "84.45±2.63",
    ("table10", "mask_0_5", "btcv_offline_dsc"): "85.06±1.35",
    ("table10", "mask_0_25", "flare22_dsc"): "86.01±2.27",
    ("table10", "mask_0", "btcv_offline_dsc"): "86.76±0.98",
    ("table11", "none", "dsc"): "81.33±3.05",
    ("table11", "dv", "dsc"): "83.17±2.82",
    ("table11", "mim_st", "dsc"): "85.63±2.11",
    ("table11", "all", "dsc"): "86.87±1.84",
}


def test_spot_checks_cover_every_table():
    for tid in TABLES:
        assert sum(1 for key in SPOT if key[0] == tid) >= 3, tid


@pytest.mark.parametrize("key", sorted(SPOT), ids=lambda k: "-".join(k))
def test_spot_check_csv(key):
    assert reference_cell(*key) == SPOT[key]


@needs_paper
@pytest.mark.parametrize(
    "key", sorted(k for k, v in SPOT.items() if v != "-"), ids=lambda k: "-".join(k)
)
def test_spot_check_in_paper(key):
    """Each hard-coded value occurs in that table of the paper ('-' cells: test_rows_in_paper)."""
    expected = SPOT[key]
    block = _table_block(key[0])
    assert any(_find_in_order(line, [expected]) for line in block), (
        f"{expected!r} not in the paper's {key[0]}"
    )


# ---------------------------------------------------------------------------------------------
# every row against the paper's text


@needs_paper
@pytest.mark.parametrize("tid", TABLES)
def test_rows_in_paper(tid):
    """Each row's printed values occur, in column order, on one line of the table, rows in order."""
    frame = load_reference(tid)
    block = _table_block(tid)
    columns = _value_columns(tid)
    previous: dict[str, int] = {}
    for _, rec in frame.iterrows():
        family = rec.get("family", "")  # Table 4: two side-by-side sub-tables
        values = [rec[c] for c in columns]  # "-" cells included: they must sit in place too
        start = previous.get(family, 0)
        hits = [i for i in range(start, len(block)) if _find_in_order(block[i], values)]
        assert hits, f"{tid} row {rec['row']}: {values} not found in order on one table line"
        previous[family] = hits[0]


@needs_paper
@pytest.mark.parametrize("tid", NUMERIC_TABLES)
def test_number_of_std_cells_matches_paper(tid):
    frame = load_reference(tid)
    ours = sum(1 for c in _value_columns(tid) for v in frame[c] if "±" in v)
    paper = sum(line.count("±") for line in _table_block(tid))
    assert ours == paper


@needs_paper
@pytest.mark.parametrize("tid", TABLES)
def test_caption_in_paper(tid):
    caption = load_spec(tid)["caption"]
    paper = _alnum(PAPER.read_text(encoding="utf-8"))
    assert _alnum(caption) in paper


# ---------------------------------------------------------------------------------------------
# CSV <-> spec structure


@pytest.mark.parametrize("tid", TABLES)
def test_spec_keys(tid):
    spec = load_spec(tid)
    assert SPEC_KEYS <= set(spec), SPEC_KEYS - set(spec)
    assert spec["id"] == tid
    assert spec["task"] in {"segmentation", "classification", "settings"}
    assert spec["dataset"] in {"flare22", "btcv", "mosmed", None}
    if spec["task"] == "settings":
        assert spec["metric_scale"] is None
    else:
        assert spec["metric_scale"] == 100
    assert isinstance(spec["caption"], str) and "\n" not in spec["caption"]
    assert all(isinstance(n, str) for n in spec.get("notes", []))


@pytest.mark.parametrize("tid", TABLES)
def test_csv_matches_spec(tid):
    spec = load_spec(tid)
    frame = load_reference(tid)
    descriptive = [d["column"] for d in spec.get("descriptive_columns", [])]
    values = [c["column"] for c in spec["columns"]]
    assert list(frame.columns) == ["row", "label", *descriptive, *values]
    # the paper's rows, in its order; the harness's extra rows (in_paper: false) are not in the CSV
    assert list(frame["row"]) == [r["row"] for r in paper_rows(spec)]
    assert list(frame["label"]) == [r["label"] for r in paper_rows(spec)]


def test_extra_rows_are_marked_and_not_the_papers():
    """Table 3's Rand. init. is the harness's baseline: marked, and nowhere in the reference."""
    extra = {tid: [r["row"] for r in load_spec(tid)["rows"] if not in_paper(r)] for tid in TABLES}
    assert extra == {tid: (["rand_init"] if tid == "table3" else []) for tid in TABLES}
    row = load_spec("table3")["rows"][0]
    assert row["row"] == "rand_init" and row["in_paper"] is False
    assert "harness" in row["label"] and "not in the paper" in row["note"]
    assert "rand_init" not in set(load_reference("table3")["row"])
    with pytest.raises(KeyError, match="no row 'rand_init'"):
        reference_cell("table3", "rand_init", "offline_dsc")


@pytest.mark.parametrize("tid", TABLES)
def test_slugs_unique(tid):
    spec = load_spec(tid)
    rows = [r["row"] for r in spec["rows"]]
    columns = [c["column"] for c in spec["columns"]]
    columns += [d["column"] for d in spec.get("descriptive_columns", [])]
    for slugs in (rows, columns):
        assert len(set(slugs)) == len(slugs)
        assert all(SLUG.match(s) for s in slugs), slugs


@pytest.mark.parametrize("tid", NUMERIC_TABLES)
def test_value_cells_parse(tid):
    frame = load_reference(tid)
    for column in _value_columns(tid):
        for cell in frame[column]:
            assert cell == cell.strip() and " " not in cell
            mean, std = parse_cell(cell)
            if cell != "-":
                assert 0 < mean <= 100 and (std is None or 0 < std < 20)


@pytest.mark.parametrize("tid", NUMERIC_TABLES)
def test_rows_name_methods_and_columns_metrics(tid):
    spec = load_spec(tid)
    for row in spec["rows"]:
        assert row["method"] in METHODS, row
    for column in spec["columns"]:
        metric = column["metric"]
        assert metric in ({"auc"} if spec["task"] == "classification" else {"dsc", "nsd"})
        dataset = column.get("dataset", spec["dataset"])
        assert dataset in {"flare22", "btcv", "mosmed"}


@pytest.mark.parametrize("tid", NUMERIC_TABLES)
def test_every_cell_has_a_backbone(tid):
    spec = load_spec(tid)
    for row in spec["rows"]:
        for column in spec["columns"]:
            assert "backbone" in row or "backbone" in column, (tid, row["row"], column["column"])


def test_table1_shape_and_alice():
    frame = load_reference("table1")
    assert frame.shape == (11, 2 + 6)
    assert _value_columns("table1") == [
        "unetr_dsc", "unetr_nsd", "swin_unetr_dsc", "swin_unetr_nsd", "nnformer_dsc", "nnformer_nsd",
    ]
    assert reference_cell("table1", "alice", "nnformer_dsc") == "86.87±1.84"


def test_table1_not_applicable_is_exactly_the_dashes():
    spec = load_spec("table1")
    frame = load_reference("table1").set_index("row")
    for row in spec["rows"]:
        dashes = [c for c in _value_columns("table1") if frame.at[row["row"], c] == "-"]
        assert dashes == row.get("not_applicable", [])
    semmae = next(r for r in spec["rows"] if r["row"] == "semmae")
    assert semmae["not_applicable"] == ["swin_unetr_dsc", "swin_unetr_nsd", "nnformer_dsc", "nnformer_nsd"]


def test_table3_online_is_leaderboard_only():
    columns = {c["column"]: c for c in load_spec("table3")["columns"]}
    assert columns["online_dsc"]["source"] == "leaderboard"
    assert load_spec("table3")["substitute"] == ["backbone"]  # every offline fold runs
    assert "source" not in columns["offline_dsc"]
    assert [c["split"] for c in columns.values()] == ["offline", "online"]
    notes = {r["row"]: r.get("note", "") for r in load_spec("table3")["rows"]}
    assert "84.72" in notes["tang_et_al"]
    for row in ("mocov2", "mocov3", "dino", "pcrl", "pgl", "unimiss"):
        assert "UniMiSS" in notes[row], row


def test_classification_specs():
    for tid in ("table4", "table9"):
        spec = load_spec(tid)
        assert spec["dataset"] == "mosmed"
        for column in spec["columns"]:
            assert column["metric"] == "auc" and 0 < column["label_fraction"] <= 1
        for row in spec["rows"]:
            assert row["backbone"] in {"resnet3d", "vit"}
    assert [c["label_fraction"] for c in load_spec("table9")["columns"]] == [0.2, 0.5, 1.0]
    frame4 = load_reference("table4")
    for row, fam in zip(load_spec("table4")["rows"], frame4["family"]):
        assert row["family"] == fam
        assert row["backbone"] == {"cnn": "resnet3d", "vit": "vit"}[fam]
    frame9 = load_reference("table9")
    groups = {"3D ResNet": "resnet3d", "ViT-B": "vit"}
    for row, group in zip(load_spec("table9")["rows"], frame9["backbone_group"]):
        assert row["backbone"] == groups[group]
    assert list(frame9["backbone_group"]) == ["3D ResNet"] * 8 + ["ViT-B"] * 10


def test_table8_settings():
    spec = load_spec("table8")
    assert spec["task"] == "settings" and spec["dataset"] is None
    assert [r["row"] for r in spec["rows"]] == [
        "optimizer", "base_lr", "weight_decay", "momentum", "batch_size", "lr_schedule",
        "warmup_epochs", "epochs", "augmentation", "spacing", "crop_size",
    ]
    assert [r["key"] for r in spec["rows"]] == [
        "optim.optimizer", "optim.lr", "optim.weight_decay", "optim.momentum", "optim.batch_size",
        "optim.schedule", "optim.warmup_epochs", "optim.epochs", "augmentation",
        "dataset_spacing", "crop",
    ]
    assert [(c["column"], c["dataset"], c["backbone"]) for c in spec["columns"]] == [
        ("flare22_unetr", "flare22", "unetr"),
        ("flare22_swin_unetr", "flare22", "swin_unetr"),
        ("flare22_nnformer", "flare22", "nnformer"),
        ("btcv_nnformer", "btcv", "nnformer"),
    ]
    frame = load_reference("table8")
    for column in _value_columns("table8"):
        assert all(cell and cell != "-" for cell in frame[column])
    assert reference_cell("table8", "augmentation", "flare22_unetr") == (
        "random flip, rotation, intensities shifting"
    )


def test_variants():
    t5 = {r["row"]: r for r in load_spec("table5")["rows"]}
    frame5 = load_reference("table5").set_index("row")
    for slug, row in t5.items():
        inter = frame5.at[slug, "inter_volume"] == "yes"
        if "objectives" in row["variant"]:  # Alice's "×": Table 11's MIM + ℓst run (table5.yaml)
            assert not inter and row["variant"] == {"objectives": ["mim", "st"]}, slug
        else:
            assert row["variant"] == {"inter_volume": inter}, slug
    t6 = load_spec("table6")["columns"]
    assert [c["variant"]["casa"] for c in t6] == [True, False, True, False]
    # Alice's "w/o." cells: Table 11's MIM + ℓdv run (table6.yaml)
    alice6 = next(r for r in load_spec("table6")["rows"] if r["row"] == "alice")
    assert alice6["column_variants"] == {c["column"]: {"objectives": ["mim", "dv"]}
                                         for c in t6 if not c["variant"]["casa"]}
    t7 = [r["variant"]["contrastive_loss"] for r in load_spec("table7")["rows"]]
    assert t7 == ["infonce", "cosine"]
    for row in load_spec("table10")["rows"]:
        assert math.isclose(row["variant"]["target_mask_ratio"], float(row["label"]))
    frame11 = load_reference("table11").set_index("row")
    for row in load_spec("table11")["rows"]:
        objectives = row.get("variant", {}).get("objectives", [])
        printed = [o for o in ("mim", "dv", "st") if frame11.at[row["row"], o] == "yes"]
        assert objectives == printed, row["row"]
        assert set(frame11.loc[row["row"], ["mim", "dv", "st"]]) <= {"yes", "no"}
    assert frame11.at["none", "label"] == "nnFormer baseline"


# ---------------------------------------------------------------------------------------------
# consistency the paper implies


def test_table4_repeats_table9_full_labels():
    t4 = load_reference("table4").set_index("row")
    t9 = load_reference("table9").set_index("row")
    shared = [r for r in t4.index if r in t9.index]
    assert len(shared) == 13 and "pcrlv2" not in shared
    for row in shared:
        assert t4.at[row, "auc"] == t9.at[row, "auc_100"], row


def test_nnformer_rows_repeat_table1():
    t1 = load_reference("table1").set_index("row")
    alice_dsc, alice_nsd = t1.at["alice", "nnformer_dsc"], t1.at["alice", "nnformer_nsd"]
    assert reference_cell("table5", "alice_inter", "dsc") == alice_dsc
    assert reference_cell("table5", "alice_inter", "nsd") == alice_nsd
    assert reference_cell("table11", "all", "dsc") == alice_dsc
    assert reference_cell("table11", "none", "dsc") == t1.at["rand_init", "nnformer_dsc"]
    assert reference_cell("table6", "alice", "dsc_with") == alice_dsc
    assert reference_cell("table6", "alice", "nsd_with") == alice_nsd
    assert reference_cell("table7", "alice_cosine", "dsc") == alice_dsc
    assert reference_cell("table7", "alice_cosine", "nsd") == alice_nsd
    assert reference_cell("table10", "mask_0", "flare22_dsc") == alice_dsc
    assert reference_cell("table2", "alice", "dsc") == alice_dsc
    assert reference_cell("table2", "alice", "nsd") == alice_nsd
    for method in ("ibot", "sim"):
        assert reference_cell("table6", method, "dsc_without") == t1.at[method, "nnformer_dsc"]
        assert reference_cell("table6", method, "nsd_without") == t1.at[method, "nnformer_nsd"]
    assert reference_cell("table5", "ibot_intra", "dsc") == t1.at["ibot", "nnformer_dsc"]
    assert reference_cell("table5", "ibot_intra", "nsd") == t1.at["ibot", "nnformer_nsd"]


def test_ablations_agree_with_each_other():
    # Alice without CASA = MIM + l_dv (no l_st); Alice without inter-volume = MIM + l_st.
    assert reference_cell("table6", "alice", "dsc_without") == reference_cell("table11", "mim_dv", "dsc")
    assert reference_cell("table5", "alice_intra", "dsc") == reference_cell("table11", "mim_st", "dsc")
    assert reference_cell("table10", "mask_0", "btcv_offline_dsc") == reference_cell("table3", "alice", "offline_dsc")


def _mean(tid, row, column):
    return parse_cell(reference_cell(tid, row, column))[0]


@pytest.mark.parametrize(
    "claim, value",
    [
        # section 4.3: "outperforms [MoCo v3 and DINO] by at least absolute 3.74% in DSC"
        (3.74, lambda: _mean("table1", "alice", "unetr_dsc") - _mean("table1", "dino", "unetr_dsc")),
        # "at least 2.22% improvement of DSC relative to ... IBOT and CMAE"
        (2.22, lambda: _mean("table1", "alice", "unetr_dsc") - _mean("table1", "cmae", "unetr_dsc")),
        # introduction: 86.76% on BTCV "surpassing previous best results by ... 1.77%"
        (1.77, lambda: _mean("table3", "alice", "offline_dsc") - _mean("table3", "unimiss", "offline_dsc")),
        # COVID-19: CNN methods "at least absolute 2.52%", ViT methods "at least absolute 3.15%"
        (2.52, lambda: _mean("table4", "alice", "auc") - _mean("table4", "pcrlv2", "auc")),
        (3.15, lambda: _mean("table4", "alice", "auc") - _mean("table4", "cmae", "auc")),
        # supplementary B.4: 3.86% (20%) and 3.45% (100%) over MoCov2, BYOL, PCRL, PGL, DiRA
        (3.86, lambda: _mean("table9", "alice", "auc_20") - _mean("table9", "pcrl", "auc_20")),
        (3.45, lambda: _mean("table9", "alice", "auc_100") - _mean("table9", "dira", "auc_100")),
        # "the self-supervised pre-training shows 5.83% higher AUC"
        (5.83, lambda: _mean("table9", "alice", "auc_100") - _mean("table9", "rand_init_vit", "auc_100")),
        # Table 5 prose: gains of 1.37% (iBOT) and 1.24% (Alice)
        (1.37, lambda: _mean("table5", "ibot_inter", "dsc") - _mean("table5", "ibot_intra", "dsc")),
        (1.24, lambda: _mean("table5", "alice_inter", "dsc") - _mean("table5", "alice_intra", "dsc")),
        # Table 6 prose: "more than 1.21% absolute DSC gain" (Alice's gain is exactly 1.21)
        (1.21, lambda: _mean("table6", "alice", "dsc_with") - _mean("table6", "alice", "dsc_without")),
    ],
)
def test_margins_stated_in_the_prose(claim, value):
    assert round(value(), 2) == claim


# ---------------------------------------------------------------------------------------------
# the module's API


@pytest.mark.parametrize(
    "text, expected",
    [
        ("80.95±3.48", (80.95, 3.48)),
        ("84.07", (84.07, None)),
        ("-", (None, None)),
        (" 86.87±1.84 ", (86.87, 1.84)),
        ("86.49 ± 3.52", (86.49, 3.52)),
        ("85", (85.0, None)),
        ("0.98", (0.98, None)),
    ],
)
def test_parse_cell(text, expected):
    assert parse_cell(text) == expected


@pytest.mark.parametrize(
    "text", ["", " ", "abc", "80.95+-3.48", "80.95±", "±3.48", "86.87%", "1e-4", "--", "80.95±3.48±1",
             "80,95", None, 84.07, float("nan")],
)
def test_parse_cell_rejects(text):
    with pytest.raises(ValueError) as info:
        parse_cell(text)
    assert repr(text) in str(info.value)


def test_load_reference_is_strings():
    frame = load_reference("table3")
    assert isinstance(frame.index, pd.RangeIndex)
    assert all(frame[c].map(type).eq(str).all() for c in frame.columns)
    assert frame.at[0, "ensemble"] == "1"
    assert load_reference(3).equals(frame) and load_reference("Table 3").equals(frame)
    frame.loc[0, "label"] = "changed"  # callers get a copy
    assert load_reference("table3").at[0, "label"] == "MoCo v2"
    assert list(load_reference("table11")["label"])[1:4] == ["", "", ""]


def test_reference_cell_errors():
    with pytest.raises(KeyError, match="unknown table 'table12'"):
        reference_cell("table12", "alice", "dsc")
    with pytest.raises(KeyError, match="table1 has no row 'alicee'"):
        reference_cell("table1", "alicee", "nnformer_dsc")
    with pytest.raises(KeyError, match="table1 has no column 'dsc'"):
        reference_cell("table1", "alice", "dsc")
    with pytest.raises(KeyError, match="no column 'row'"):
        reference_cell("table1", "alice", "row")
    assert reference_cell("table1", "tang_et_al", "label") == "Tang et al."
    with pytest.raises(KeyError):
        table_id("table0")


def test_files_are_where_the_module_looks():
    assert sorted(p.stem for p in REFERENCE_DIR.glob("*.csv")) == sorted(TABLES)
    assert sorted(p.stem for p in SPEC_DIR.glob("*.yaml")) == sorted(TABLES)
