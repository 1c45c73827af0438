"""Table rendering: reproduced cells beside the paper's, never blank, valid booktabs LaTeX."""

import json
import shutil
import subprocess

import pandas as pd
import pytest

from alice.errors import InputError
from alice.tables import render
from alice.tables.spec import cell_sources, find_row, load_spec, table_ids
from fakes import write_training_record

SETTINGS = {"scale": "demo", "reproduce": {"methods": ["rand_init"], "backbones": ["unetr"]},
            "folds": {"flare22": 5, "btcv": 5}}
FOLD_DSC = [0.80, 0.82, 0.81, 0.79, 0.83]


def write_metrics(root, method="rand_init", backbone="unetr", dsc=FOLD_DSC):
    for k, value in enumerate(dsc):
        path = root / f"results/finetune/flare22/{method}/{backbone}/fold{k}/metrics.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"mean": {"dsc": value, "nsd": value + 0.05},
                                    "settings_hash": "abc", "code_version": "v"}))
        write_training_record(root, str(path.relative_to(root)))


def all_rows(tmp_path, table="table1", settings=SETTINGS):
    files = {}
    for row in load_spec(table)["rows"]:
        frame = render.compute_row(table, row["row"], settings, root=tmp_path)
        files[row["row"]] = tmp_path / "rows" / f"{row['row']}.csv"
        render.write_row(frame, files[row["row"]])
    return files


def test_enabled_cells_point_at_every_fold():
    spec = load_spec("table1")
    sources = cell_sources(spec, find_row(spec, "rand_init"), SETTINGS)
    assert set(sources) == {"unetr_dsc", "unetr_nsd"}
    assert sources["unetr_dsc"][4] == "results/finetune/flare22/rand_init/unetr/fold4/metrics.json"
    assert cell_sources(spec, find_row(spec, "alice"), SETTINGS) == {}


def test_row_mean_and_std_over_folds(tmp_path):
    write_metrics(tmp_path)
    frame = render.compute_row("table1", "rand_init", SETTINGS, root=tmp_path).set_index("column")
    cell = frame.loc["unetr_dsc"]
    assert cell["status"] == "reproduced" and cell["n_folds"] == 5
    assert cell["reproduced_mean"] == pytest.approx(81.0)
    assert cell["reproduced_std"] == pytest.approx(pd.Series(FOLD_DSC).std() * 100, abs=1e-4)
    assert cell["reproduced"] == "81.00±1.58"
    assert cell["paper"] == "80.95±3.48"
    assert frame.loc["swin_unetr_dsc", "reproduced"] == render.NOT_REPRODUCED
    assert frame.loc["swin_unetr_dsc", "paper"] == "81.04±3.29"  # paper kept beside, not copied


def test_missing_fold_result_is_an_error(tmp_path):
    write_metrics(tmp_path, dsc=FOLD_DSC[:4])
    with pytest.raises(InputError, match="fold4/metrics.json: missing"):
        render.compute_row("table1", "rand_init", SETTINGS, root=tmp_path)


def test_table1_has_the_papers_rows_and_columns_and_no_blank_cell(tmp_path):
    write_metrics(tmp_path)
    files = all_rows(tmp_path)
    render.render_table("table1", files, tmp_path / "table1.csv", tmp_path / "table1.tex")
    wide = pd.read_csv(tmp_path / "table1.csv", keep_default_na=False)
    spec = load_spec("table1")
    assert list(wide["row"]) == [r["row"] for r in spec["rows"]]
    assert len(wide) == 11 and wide.shape[1] == 3 + 2 * 6 + 2
    assert list(wide.columns[-2:]) == ["reproduced with", "protocol"]
    assert wide.set_index("row").loc["rand_init", "reproduced with"] == "rand_init / unetr / folds 0,1,2,3,4"
    assert wide.set_index("row").loc["rand_init", "protocol"] == (
        "rand_init / unetr: folds 0-4, fine-tuning 80 steps, no pretraining")
    assert wide.set_index("row").loc["mae", "reproduced with"] == "-"
    assert wide.set_index("row").loc["mae", "protocol"] == "-"
    assert set(wide["scale"]) == {"demo"}
    assert list(wide.columns[:5]) == ["row", "Method", "scale", "UNETR DSC (reproduced)",
                                      "UNETR DSC (paper)"]
    assert (wide != "").all().all()
    alice = wide.set_index("row").loc["alice"]
    assert alice["nnFormer DSC (paper)"] == "86.87±1.84"
    assert alice["nnFormer DSC (reproduced)"] == render.NOT_REPRODUCED
    semmae = wide.set_index("row").loc["semmae"]
    assert semmae["Swin UNETR DSC (reproduced)"] == render.NOT_APPLICABLE


def test_best_reproduced_value_is_bold(tmp_path):
    write_metrics(tmp_path)
    write_metrics(tmp_path, method="mae", dsc=[0.9] * 5)
    settings = {**SETTINGS, "reproduce": {"methods": ["rand_init", "mae"], "backbones": ["unetr"]}}
    files = all_rows(tmp_path, settings=settings)
    tex_rows = render.read_rows("table1", files)
    tex = render.latex_table("table1", tex_rows)
    assert r"\textbf{90.00$\pm$0.00}" in tex
    assert r"\textbf{81.00" not in tex
    assert r"\toprule" in tex and r"\bottomrule" in tex


def test_stale_row_file_is_rejected(tmp_path):
    write_metrics(tmp_path)
    files = all_rows(tmp_path)
    files["alice"].write_text(files["mae"].read_text())
    with pytest.raises(InputError, match="does not hold row 'alice'"):
        render.read_rows("table1", files)


NOTHING_ENABLED = {"scale": "demo", "reproduce": {"methods": [], "backbones": []},
                   "folds": SETTINGS["folds"]}


@pytest.mark.parametrize("table", table_ids())
def test_every_table_renders_to_valid_latex(tmp_path, table):
    """Every paper table renders (all cells "not reproduced yet") to LaTeX that compiles."""
    files = all_rows(tmp_path, table=table, settings=NOTHING_ENABLED)
    render.render_table(table, files, tmp_path / f"{table}.csv", tmp_path / f"{table}.tex")
    tex = (tmp_path / f"{table}.tex").read_text()
    render.check_latex(tex)
    if shutil.which("pdflatex"):  # compile for real where a LaTeX engine is installed (CI is)
        doc = tmp_path / "doc.tex"
        doc.write_text("\\documentclass{article}\n\\usepackage{booktabs,amssymb}\n"
                       "\\usepackage[T1]{fontenc}\n\\begin{document}\n" + tex +
                       "\n\\end{document}\n")
        result = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error",
                                 doc.name], cwd=tmp_path, capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, result.stdout[-2000:]


def test_check_latex_catches_broken_markup():
    with pytest.raises(Exception, match="unbalanced"):
        render.check_latex("\\begin{table*}\\begin{tabular}{l}\\toprule\\midrule{\\bottomrule"
                           "\\end{tabular}\\end{table*}")


ABLATION_SETTINGS = {"scale": "demo", "reproduce": {"methods": ["rand_init", "alice"], "backbones": ["unetr"],
                                   "headline": ["rand_init", "alice"], "folds": {"ablation": 1},
                          "substitute": {"backbone": "unetr"}},
                     "folds": {"flare22": 5, "btcv": 5},
                     "method_configs": {"alice": {"target_mask_ratio": 0.0}}}


def test_ablation_cells_name_their_variant_run():
    spec = load_spec("table6")
    sources = cell_sources(spec, find_row(spec, "alice"), ABLATION_SETTINGS)
    # the default (with CASA) is the plain alice run; without CASA Table 11's MIM + ℓdv run
    # (table6.yaml); fold 0 only
    assert sources == {
        "dsc_with": ["results/finetune/flare22/alice/unetr/fold0/metrics.json"],
        "nsd_with": ["results/finetune/flare22/alice/unetr/fold0/metrics.json"],
        "dsc_without": ["results/finetune/flare22/alice__objectives-mim-dv/unetr/fold0/metrics.json"],
        "nsd_without": ["results/finetune/flare22/alice__objectives-mim-dv/unetr/fold0/metrics.json"]}
    # iBOT is not reproduced: no sources
    assert cell_sources(spec, find_row(spec, "ibot"), ABLATION_SETTINGS) == {}
    table10 = load_spec("table10")
    assert cell_sources(table10, find_row(table10, "mask_0_25"), ABLATION_SETTINGS)["btcv_offline_dsc"] == [
        "results/finetune/btcv/alice__target_mask_ratio-0.25/unetr/fold0/metrics.json"]
    table11 = load_spec("table11")
    assert cell_sources(table11, find_row(table11, "none"), ABLATION_SETTINGS)["dsc"] == [
        "results/finetune/flare22/rand_init/unetr/fold0/metrics.json"]


def test_ablation_tables_need_their_backbone_without_override():
    # the paper's backbone (nnFormer) is not reproduced: without the override nothing runs
    settings = {**ABLATION_SETTINGS, "reproduce": {**ABLATION_SETTINGS["reproduce"], "substitute": {}}}
    spec = load_spec("table7")
    assert cell_sources(spec, find_row(spec, "alice_cosine"), settings) == {}
    # all folds when folds is null
    settings["reproduce"] = {"methods": ["alice"], "backbones": ["nnformer"], "substitute": {}}
    assert len(cell_sources(spec, find_row(spec, "alice_cosine"), settings)["dsc"]) == 5


def test_substituted_backbone_is_stated_in_the_table(tmp_path):
    write_metrics(tmp_path, method="alice", dsc=[0.5])
    write_metrics(tmp_path, method="alice__contrastive_loss-infonce", dsc=[0.4])
    files = all_rows(tmp_path, "table7", ABLATION_SETTINGS)
    render.render_table("table7", files, tmp_path / "t7.csv", tmp_path / "t7.tex")
    tex = (tmp_path / "t7.tex").read_text()
    assert "ran with unetr on fold(s) 0 (paper: nnformer)" in tex
    wide = pd.read_csv(tmp_path / "t7.csv", dtype=str)
    assert list(wide["reproduced with"]) == ["alice__contrastive_loss-infonce / unetr / folds 0",
                                             "alice / unetr / folds 0"]
    # one fold: the mean alone (a standard deviation needs two folds)
    assert list(wide["FLARE 2022 DSC (reproduced)"]) == ["40.00", "50.00"]


@pytest.mark.parametrize("table", table_ids())
def test_rendered_column_names_are_unique(table):
    spec = load_spec(table)
    names = [" ".join(x for x in (c.get("group"), c.get("header")) if x) for c in spec["columns"]]
    assert len(names) == len(set(names)), names


# Table 3: BTCV offline 5-fold CV for Rand. init. (the harness's extra row) and Alice; the online
# column is the leaderboard's and never computed.
TABLE3_SETTINGS = {"scale": "demo", "reproduce": {"methods": ["rand_init", "alice"], "backbones": ["unetr"],
                                 "headline": ["rand_init", "alice"], "folds": {"ablation": 1},
                          "substitute": {"backbone": "unetr"}},
                   "folds": {"flare22": 5, "btcv": 5}}
BTCV_DSC = {"rand_init": [0.60, 0.62, 0.64, 0.66, 0.68], "alice": [0.70, 0.71, 0.72, 0.73, 0.74]}


def write_btcv_metrics(root, method, dsc):
    for k, value in enumerate(dsc):
        path = root / f"results/finetune/btcv/{method}/unetr/fold{k}/metrics.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"mean": {"dsc": value, "nsd": None}, "split": f"val:{k}",
                                    "settings_hash": f"h{k}", "code_version": "v"}))
        write_training_record(root, str(path.relative_to(root)))


def test_table3_offline_cells_are_five_fold_cv_on_the_substitute_backbone(tmp_path):
    for method, dsc in BTCV_DSC.items():
        write_btcv_metrics(tmp_path, method, dsc)
    spec = load_spec("table3")
    for method in BTCV_DSC:
        sources = cell_sources(spec, find_row(spec, method), TABLE3_SETTINGS)
        # every fold (the ablation tables' one-fold cut does not apply), never the online column
        assert sources == {"offline_dsc": [
            f"results/finetune/btcv/{method}/unetr/fold{k}/metrics.json" for k in range(5)]}
    rand = render.compute_row("table3", "rand_init", TABLE3_SETTINGS, root=tmp_path).set_index("column")
    assert rand.loc["offline_dsc", "status"] == "reproduced" and rand.loc["offline_dsc", "n_folds"] == 5
    assert rand.loc["offline_dsc", "reproduced"] == "64.00±3.16"
    assert rand.loc["offline_dsc", "paper"] == render.NOT_IN_PAPER  # never invented
    assert pd.isna(rand.loc["offline_dsc", "paper_mean"])
    assert rand.loc["online_dsc", "status"] == "leaderboard"
    assert rand.loc["online_dsc", "reproduced"] == render.LEADERBOARD
    alice = render.compute_row("table3", "alice", TABLE3_SETTINGS, root=tmp_path).set_index("column")
    assert alice.loc["offline_dsc", "reproduced"] == "72.00±1.58"
    assert alice.loc["offline_dsc", "paper"] == "86.76±0.98"
    assert alice.loc["offline_dsc", "settings_hash"] == "h0;h1;h2;h3;h4"
    assert alice.loc["online_dsc", "paper"] == "88.58"
    assert alice.loc["online_dsc", "reproduced"] == render.LEADERBOARD
    assert alice.loc["online_dsc", "sources"] == "" and alice.loc["online_dsc", "n_folds"] == 0

    files = all_rows(tmp_path, "table3", TABLE3_SETTINGS)
    render.render_table("table3", files, tmp_path / "t3.csv", tmp_path / "t3.tex")
    wide = pd.read_csv(tmp_path / "t3.csv", dtype=str, keep_default_na=False).set_index("row")
    assert list(wide.index) == ["rand_init"] + list(load_reference_rows("table3"))
    assert wide.loc["rand_init", "Method"] == "Rand. init. (harness baseline)"
    assert wide.loc["rand_init", "Ensemble"] == "1"
    assert wide.loc["rand_init", "Offline Test Set (paper)"] == "not in the paper"
    assert wide.loc["alice", "Online Test Set (paper, leaderboard)"] == "88.58"
    assert wide.loc["alice", "Online Test Set (reproduced)"] == "leaderboard"
    assert wide.loc["alice", "reproduced with"] == "alice / unetr / folds 0,1,2,3,4"
    assert wide.loc["mae", "Offline Test Set (reproduced)"] == render.NOT_REPRODUCED
    tex = (tmp_path / "t3.tex").read_text()
    render.check_latex(tex)
    assert r"Rand. init. (harness baseline)$^\dagger$" in tex and r"\textit{n.i.p.}" in tex
    assert "not in the paper" in tex
    assert "ran with unetr on fold(s) 0, 1, 2, 3, 4 (paper: nnformer)" in tex
    assert "Online Test Set: the challenge leaderboard" in tex and "paper (lb.)" in tex
    assert r"\textbf{72.00$\pm$1.58}" in tex


def load_reference_rows(table):
    from alice.tables.reference import load_reference

    return load_reference(table)["row"]


def test_table3_online_column_is_never_computed():
    """Even with every method and backbone enabled, no online cell has a source."""
    spec = load_spec("table3")
    everything = {"reproduce": {"methods": [r["method"] for r in spec["rows"]],
                                "backbones": ["unetr", "swin_unetr", "nnformer"]},
                  "folds": {"btcv": 5}}
    for row in spec["rows"]:
        assert "online_dsc" not in cell_sources(spec, row, everything), row["row"]


def test_substitute_entries_are_checked():
    from alice.errors import ConfigError
    from alice.tables.spec import substitute_backbone

    settings = {"reproduce": {"substitute": {"backbone": "unetr"}}}
    assert substitute_backbone(load_spec("table3"), settings) == "unetr"
    assert substitute_backbone(load_spec("table7"), settings) == "unetr"
    assert substitute_backbone(load_spec("table1"), settings) is None
    with pytest.raises(ConfigError, match=r"table3.yaml:substitute.*unknown entries \['folds'\]"):
        substitute_backbone({"id": "table3", "substitute": ["backbone", "folds"]}, settings)


# ------------------------------------------------------------------------------ classification (MosMed)
CLS_SETTINGS = {"scale": "demo", "reproduce": {"methods": ["rand_init", "alice"], "backbones": ["unetr", "vit", "resnet3d"]},
                "folds": {"flare22": 5, "btcv": 5, "mosmed": 10},
                "label_fractions": {"mosmed": [0.2, 0.5, 1.0]}}
SPLIT_AUC = {"rand_init/resnet3d": 0.60, "rand_init/vit": 0.55, "alice/vit": 0.70}


def write_auc(root, run, backbone, fraction_dir, base, n=10):
    values = [base + 0.01 * k for k in range(n)]
    for k, value in enumerate(values):
        path = root / f"results/finetune/mosmed/{run}/{backbone}/fold{k}/{fraction_dir}/metrics.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"mean": {"auc": value}, "cases": {}, "settings_hash": "h",
                                    "code_version": "v"}))
        write_training_record(root, str(path.relative_to(root)), steps=200)
    return values


def test_classification_cells_read_every_split_at_their_label_fraction():
    spec = load_spec("table9")
    sources = cell_sources(spec, find_row(spec, "rand_init_resnet3d"), CLS_SETTINGS)
    assert set(sources) == {"auc_20", "auc_50", "auc_100"}
    assert len(sources["auc_20"]) == 10
    assert sources["auc_20"][3] == "results/finetune/mosmed/rand_init/resnet3d/fold3/labels20/metrics.json"
    assert sources["auc_100"][9] == "results/finetune/mosmed/rand_init/resnet3d/fold9/labels100/metrics.json"
    assert cell_sources(spec, find_row(spec, "alice"), CLS_SETTINGS)["auc_50"][0] == (
        "results/finetune/mosmed/alice/vit/fold0/labels50/metrics.json")
    assert cell_sources(spec, find_row(spec, "mae"), CLS_SETTINGS) == {}
    table4 = load_spec("table4")
    assert cell_sources(table4, find_row(table4, "alice"), CLS_SETTINGS) == {
        "auc": [f"results/finetune/mosmed/alice/vit/fold{k}/labels100/metrics.json" for k in range(10)]}
    assert cell_sources(table4, find_row(table4, "byol"), CLS_SETTINGS) == {}


def test_classification_needs_its_backbone_and_label_fraction():
    spec = load_spec("table9")
    row = find_row(spec, "rand_init_vit")
    no_vit = {**CLS_SETTINGS, "reproduce": {"methods": ["rand_init"], "backbones": ["unetr", "resnet3d"]}}
    assert cell_sources(spec, row, no_vit) == {}
    full_only = {**CLS_SETTINGS, "label_fractions": {"mosmed": [1.0]}}
    assert set(cell_sources(spec, row, full_only)) == {"auc_100"}
    assert cell_sources(spec, row, SETTINGS) == {}  # no label fractions configured: not reproduced


def test_tables_4_and_9_from_fake_metrics(tmp_path):
    values = {}
    for run_backbone, base in SPLIT_AUC.items():
        run, backbone = run_backbone.split("/")
        for fraction_dir, shift in (("labels20", -0.1), ("labels50", -0.05), ("labels100", 0.0)):
            values[run_backbone, fraction_dir] = write_auc(tmp_path, run, backbone, fraction_dir, base + shift)
    frame = render.compute_row("table9", "rand_init_resnet3d", CLS_SETTINGS, root=tmp_path).set_index("column")
    cell = frame.loc["auc_20"]
    expected = pd.Series(values["rand_init/resnet3d", "labels20"]) * 100
    assert cell["status"] == "reproduced" and cell["n_folds"] == 10
    assert cell["reproduced_mean"] == pytest.approx(expected.mean())
    assert cell["reproduced_std"] == pytest.approx(expected.std(), abs=1e-4)  # sample std over the splits
    assert cell["reproduced"] == f"{expected.mean():.2f}±{expected.std():.2f}" == "54.50±3.03"
    assert cell["paper"] == "73.55±9.33"
    for table in ("table4", "table9"):
        files = all_rows(tmp_path, table, CLS_SETTINGS)
        render.render_table(table, files, tmp_path / f"{table}.csv", tmp_path / f"{table}.tex")
        render.check_latex((tmp_path / f"{table}.tex").read_text())
    t4 = pd.read_csv(tmp_path / "table4.csv", dtype=str, keep_default_na=False).set_index("row")
    assert t4.loc["alice", "AUC on COVID-19 (reproduced)"] == "74.50±3.03"  # the 100 % splits
    assert t4.loc["alice", "AUC on COVID-19 (paper)"] == "90.88±1.29"
    assert t4.loc["alice", "reproduced with"] == "alice / vit / folds 0,1,2,3,4,5,6,7,8,9"
    assert t4.loc["byol", "AUC on COVID-19 (reproduced)"] == render.NOT_REPRODUCED
    t9 = pd.read_csv(tmp_path / "table9.csv", dtype=str, keep_default_na=False).set_index("row")
    assert t9.loc["rand_init_vit", "COVID-19 50% (reproduced)"] == "54.50±3.03"
    assert t9.loc["alice", "COVID-19 100% (reproduced)"] == "74.50±3.03"
    assert t9.loc["dira", "COVID-19 20% (reproduced)"] == render.NOT_REPRODUCED
    assert (t9 != "").all().all()


def test_table_settings_of_the_demo_config():
    from alice import config as cfg
    from alice.tables.spec import table_settings

    settings = table_settings(cfg.load_config())
    assert settings["folds"]["mosmed"] == 10
    assert settings["label_fractions"] == {"mosmed": [0.2, 0.5, 1.0]}
    assert {"vit", "resnet3d"} <= set(settings["reproduce"]["backbones"])


# ------------------------------------------------------------------------------ traceability
def test_metrics_without_provenance_are_refused(tmp_path):
    """A reproduced cell must name the settings hash and code version that made it."""
    write_metrics(tmp_path)
    path = tmp_path / "results/finetune/flare22/rand_init/unetr/fold3/metrics.json"
    data = json.loads(path.read_text())
    del data["settings_hash"]
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match="fold3/metrics.json: records no settings_hash"):
        render.compute_row("table1", "rand_init", SETTINGS, root=tmp_path)


def test_render_cli_writes_the_provenance_sidecar(tmp_path, monkeypatch):
    from alice.cli import main

    write_metrics(tmp_path)
    files = all_rows(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["table", "render", "--table", "table1", "--rows-dir", str(files["alice"].parent),
                 "--csv", "out/table1.csv", "--tex", "out/table1.tex"]) == 0
    sources = pd.read_csv(tmp_path / "out/table1.sources.csv", dtype=str, keep_default_na=False)
    assert list(sources.columns) == render.SOURCE_COLUMNS and len(sources) == 11 * 6
    cell = sources.set_index(["row", "column"]).loc[("rand_init", "unetr_nsd")]
    assert cell["status"] == "reproduced" and cell["settings_hash"] == "abc" and cell["code_version"] == "v"
    assert cell["sources"].split(";") == [
        f"results/finetune/flare22/rand_init/unetr/fold{k}/metrics.json" for k in range(5)]
    assert cell["header"] == "UNETR NSD" and cell["reproduced"] == "86.00±1.58"
    assert sources.set_index(["row", "column"]).loc[("alice", "unetr_dsc"), "sources"] == ""
