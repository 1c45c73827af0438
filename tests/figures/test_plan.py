"""Which overlay and fine-tuning-curve figures the DAG draws, and the rules' arguments."""

import copy
import shlex

import pytest

from alice import config as cfg
from alice.errors import ConfigError
from alice.figures import plan
from alice.tables.spec import table_settings


@pytest.fixture(scope="module")
def demo():
    return cfg.load_config(None)


def test_demo_figures_follow_tables_1_and_3(demo):
    figures = plan.segmentation_figures(table_settings(demo))
    assert list(figures) == [("flare22", "unetr"), ("flare22", "swin_unetr"), ("flare22", "nnformer"),
                             ("btcv", "nnformer"), ("btcv", "resnet_unet"), ("btcv", "unet3d"),
                             ("btcv", "nsunet3d"), ("btcv", "unet"), ("btcv", "unetr"),
                             ("btcv", "swin_unetr")]  # nnU-Net's row: nnunetv2's files, no figure
    table1 = ["rand_init", "mocov3", "dino", "ibot", "sim", "mae", "semmae", "cmae", "medical_mae",
              "tang_swin_unetr", "alice"]
    expected = {
        ("flare22", "unetr"): table1,
        # SemMAE's Swin UNETR and nnFormer cells are "-" in the paper
        ("flare22", "swin_unetr"): [m for m in table1 if m != "semmae"],
        ("flare22", "nnformer"): [m for m in table1 if m != "semmae"],
        # Table 3's reproduced rows in its order (Tang et al. on Swin UNETR, its own network)
        ("btcv", "nnformer"): ["rand_init", "mocov3", "dino", "mae", "ibot", "cmae", "medical_mae",
                               "unimiss", "alice"],
        ("btcv", "swin_unetr"): ["tang_swin_unetr"],
        # the CNN rows on their Table 2 networks, the supervised UNETR row (trained from scratch)
        ("btcv", "resnet_unet"): ["mocov2", "pgl"],
        ("btcv", "unet3d"): ["pcrl", "sam", "dira"],
        ("btcv", "nsunet3d"): ["pcrlv2"],
        ("btcv", "unet"): ["chaitanya"],
        ("btcv", "unetr"): ["rand_init"],
    }
    for (dataset, backbone), runs in figures.items():
        # the table's row order; baseline rows run fold 0 (fold policy), the headline every fold
        assert [r["run"] for r in runs] == expected[(dataset, backbone)]
        folds = range(5) if runs[-1]["run"] in ("rand_init", "alice") else [0]  # the headline rows
        assert runs[-1]["dirs"] == [f"results/finetune/{dataset}/{runs[-1]['run']}/{backbone}/fold{k}"
                                    for k in folds]
        for run in runs:
            if run["run"] not in ("rand_init", "alice"):
                assert run["dirs"] == [f"results/finetune/{dataset}/{run['run']}/{backbone}/fold0"]
    assert plan.figure_targets(figures)[:2] == ["results/figures/overlays_flare22_unetr.png",
                                                "results/figures/finetune_flare22_unetr.png"]


def test_substitute_backbone_and_methods(demo):
    config = copy.deepcopy(demo)
    config["reproduce"]["substitute"]["backbone"] = "unetr"  # Table 3 on UNETR
    config["reproduce"]["methods"] = ["alice"]
    figures = plan.segmentation_figures(table_settings(config))
    assert ("btcv", "unetr") in figures and ("btcv", "nnformer") not in figures
    assert [r["label"] for r in figures[("flare22", "unetr")]] == ["Alice"]
    with pytest.raises(ConfigError, match="btcv_unetr"):
        plan.runs_of(figures, "btcv", "nnformer")


def test_rule_arguments_round_trip_through_the_shell():
    runs = [{"label": "Rand. init.", "dirs": ["results/a/fold0", "results/a/fold1"]},
            {"label": "Alice's", "dirs": ["results/b/fold0", "results/b/fold1"]}]
    assert shlex.split(plan.overlay_args(runs)) == [
        "--run", "Rand. init.=results/a/fold0", "--run", "Alice's=results/b/fold0"]
    assert plan.overlay_metrics(runs) == ["results/a/fold0/metrics.json", "results/b/fold0/metrics.json"]
    assert shlex.split(plan.finetune_log_args(runs))[-2:] == ["--log", "Alice's=results/b/fold1/log.csv"]
    assert len(plan.finetune_logs(runs)) == 4
    assert plan.short_label("Rand. init. (harness baseline)") == "Rand. init."
