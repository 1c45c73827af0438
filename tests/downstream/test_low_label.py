"""Low-label fine-tuning (`finetune(labeled=n, subset_seed=s)`): the subset's cases, the fold's step
count, pairing across methods, the subset recorded through evaluation, and bad arguments."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from alice.cli import main
from alice.data.folds import labeled_subset
from alice.downstream.inference import evaluate
from alice.downstream.segmentation import finetune, subset_schedule
from alice.errors import ConfigError


def test_subset_schedule_matches_the_folds_steps():
    # the demo's fold: 8 cases x 2 crops / batch 2 = 8 steps per epoch, 10 epochs, 2 warm-up epochs
    one = subset_schedule(8, 1, 2, 2, 10, 2)
    assert one == {"epochs": 80, "warmup_steps": 16, "steps": 80, "reference_steps": 80,
                   "steps_per_epoch": 1}
    assert subset_schedule(8, 2, 2, 2, 10, 2)["epochs"] == 40
    assert subset_schedule(8, 4, 2, 2, 10, 2)["epochs"] == 20
    # 3 cases: 3 steps per epoch; 80 steps round up to 27 whole epochs = 81 steps
    three = subset_schedule(8, 3, 2, 2, 10, 2)
    assert (three["epochs"], three["steps"], three["reference_steps"]) == (27, 81, 80)


def _run(data, out, dx, method="rand_init", labeled=1, subset_seed=0):
    settings = copy.deepcopy(dx.SETTINGS)
    settings["samples_per_volume"] = 2  # fold 0: 2 cases x 2 crops / batch 2 = 2 steps per epoch
    return finetune(dataset="flare22", backbone="unetr", method=method, init="scratch", fold=0,
                    data_dir=data, out_dir=out, settings=settings, encoder_config=dx.ENCODER, seed=3,
                    threads=1, progress=False, labeled=labeled, subset_seed=subset_seed)


@pytest.fixture(scope="module")
def low_label_runs(tiny_data, tmp_path_factory, dx):
    base = tmp_path_factory.mktemp("low_label")
    a = _run(tiny_data, base / "rand_init", dx, method="rand_init")
    b = _run(tiny_data, base / "other", dx, method="other")
    return base, a, b


def test_a_low_label_run_trains_its_subset_for_the_folds_steps(low_label_runs, tiny_data):
    base, summary, _ = low_label_runs
    folds = json.loads((tiny_data / "folds.json").read_text())
    expected = labeled_subset(folds, 1, 0, tiny_data / "folds.json")
    assert summary["subset"]["cases"] == expected and summary["n_train"] == 1
    assert summary["n_val"] == 0 and summary["val_dice"] == {}
    # fold 0: 2 epochs x 2 steps = 4 steps; 1 case x 2 crops / batch 2 = 1 step per epoch -> 4 epochs
    assert summary["subset"]["reference_steps"] == 4 and summary["steps"] == 4
    assert summary["epochs"] == 4 and summary["steps_per_epoch"] == 1
    assert summary["warmup_steps"] == 2 and summary["fold"] is None
    model = torch.load(base / "rand_init" / "model.pt", map_location="cpu", weights_only=True)
    assert model["subset"]["labeled"] == 1 and model["subset"]["subset_seed"] == 0
    assert model["fold"] is None


def test_two_methods_on_one_subset_are_paired(low_label_runs):
    """The seeds come from (seed, labeled, subset seed): with the same initial weights (both from
    scratch here) two methods train identically, so only the init differs between methods."""
    base, a, b = low_label_runs
    assert a["subset"] == b["subset"] and a["run_seed"] == b["run_seed"]
    assert (base / "rand_init" / "log.csv").read_text() == (base / "other" / "log.csv").read_text()


def test_another_subset_seed_draws_other_seeds(tiny_data, tmp_path, dx, low_label_runs):
    _, a, _ = low_label_runs
    c = _run(tiny_data, tmp_path / "s1", dx, subset_seed=1)
    assert c["run_seed"] != a["run_seed"]


def test_evaluation_records_the_subset(low_label_runs, tiny_data):
    base, summary, _ = low_label_runs
    metrics = evaluate(dataset="flare22", model_dir=base / "rand_init", data_dir=tiny_data,
                       out_path=base / "rand_init" / "metrics.json", split="test", threads=1,
                       progress=False)
    assert metrics["subset"] == summary["subset"] and metrics["fold"] is None
    assert set(metrics["cases"]) == set(json.loads((tiny_data / "folds.json").read_text())["test"])


def test_half_a_subset_is_refused(tiny_data, tmp_path, dx):
    with pytest.raises(ConfigError, match="labeled"):
        finetune(dataset="flare22", backbone="unetr", method="rand_init", init="scratch", fold=0,
                 data_dir=tiny_data, out_dir=tmp_path / "x", settings=dx.SETTINGS,
                 encoder_config=dx.ENCODER, seed=0, labeled=1)
    assert not (tmp_path / "x" / "model.pt").exists()


def test_cli_needs_both_options(tiny_data, tmp_path, capsys):
    rc = main(["finetune", "--dataset", "flare22", "--backbone", "unetr", "--method", "rand_init",
               "--init", "scratch", "--fold", "0", "--labeled", "1", "--out", str(tmp_path / "x"),
               "--data", str(tiny_data)])
    assert rc != 0
    assert "--labeled" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
