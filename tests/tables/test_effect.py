"""`alice effect` on fake low-label metrics: the per-organ CSV, the paired tests (hand-checked
exact Wilcoxon p-values), the figure, and clean failures."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from matplotlib.image import imread

from alice.cli import main
from alice.errors import ConfigError, InputError
from alice.tables.effect import read_runs, paired_tests, write_effect

CASES = [f"FLARETs_{i:04d}" for i in range(1, 5)]
ORGANS = ("liver", "spleen")
SEEDS = range(3)


def _diffs(labeled):
    """Alice minus Rand. init. per (seed, case), 12 distinct |differences| 0.01 .. 0.12.
    1 case: all positive -> W- = 0, exact two-sided p = 2 / 2^12, one-sided 1 / 2^12.
    2 cases: the two smallest negative -> W- = 1 + 2 = 3; subsets of ranks 1..12 with sum <= 3:
    {}, {1}, {2}, {3}, {1, 2} -> two-sided p = 2 * 5 / 4096, one-sided ("higher") 5 / 4096."""
    out = {}
    for k, (seed, case) in enumerate((s, c) for s in SEEDS for c in CASES):
        d = 0.01 * (k + 1)
        out[seed, case] = -d if labeled == 2 and k < 2 else d
    return out


def _write_run(root, method, labeled, seed, nan_case=None):
    cases, case_mean = {}, {}
    for case in CASES:
        base = 0.4 + 0.01 * seed
        value = base + (_diffs(labeled)[seed, case] if method == "alice" else 0.0)
        # organs symmetric around the case value: their mean is exactly `value`
        scores = {"liver": {"dsc": value + 0.05, "nsd": value}, "spleen": {"dsc": value - 0.05, "nsd": value}}
        if case == nan_case:
            scores = {o: {"dsc": None, "nsd": None} for o in ORGANS}
        cases[case] = scores
        case_mean[case] = ({"dsc": None, "nsd": None} if case == nan_case
                           else {"dsc": value, "nsd": value})
    metrics = {"dataset": "flare22", "method": method, "backbone": "unetr", "fold": None,
               "split": "test", "cases": cases, "case_mean": case_mean,
               "subset": {"labeled": labeled, "subset_seed": seed, "cases": [f"FLARE22_Tr_{seed + 1:04d}"],
                          "steps_of_fold": 0, "reference_steps": 80, "steps": 80, "epochs": 80}}
    path = root / method / f"labeled{labeled}" / f"seed{seed}" / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics))
    init = "scratch"
    if method != "rand_init":  # a pretraining run of 3 logged steps
        log = root / "pretrain" / method / "log.csv"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("step,loss\n1,2.0\n2,1.5\n3,1.2\n")
        init = str(log.parent / "checkpoint.pt")
    (path.parent / "train_summary.json").write_text(json.dumps({"init": init, "steps": 80}))
    return path


@pytest.fixture
def runs(tmp_path):
    return [_write_run(tmp_path / "runs", m, n, s) for m in ("rand_init", "alice")
            for n in (1, 2) for s in SEEDS]


def test_per_organ_csv_has_every_run_case_and_organ(runs):
    cases, means = read_runs(runs, "demo")
    assert len(cases) == 2 * 2 * 3 * 4 * 2 and len(means) == 2 * 2 * 3 * 4
    assert set(cases["scale"]) == {"demo"} and set(cases["steps"]) == {80}
    row = cases[(cases["method"] == "alice") & (cases["labeled"] == 1) & (cases["seed"] == 2)
                & (cases["case"] == "FLARETs_0004") & (cases["organ"] == "liver")].iloc[0]
    assert row["dsc"] == pytest.approx(0.42 + 0.12 + 0.05)  # pair k = 11 -> difference 0.12
    assert row["train_cases"] == "FLARE22_Tr_0003" and row["pretraining_steps"] == 3
    assert cases[cases["method"] == "rand_init"]["pretraining_steps"].isna().all()


def test_paired_tests_give_the_exact_wilcoxon_p(runs):
    _, means = read_runs(runs, "demo")
    tests = paired_tests(means).set_index(["labeled", "metric"])
    one = tests.loc[(1, "dsc")]
    assert one["n_pairs"] == 12 and one["n_seeds"] == 3 and one["method"] == "alice"
    assert one["steps"] == "80" and one["scale"] == "demo"
    assert one["p_value"] == pytest.approx(2 / 4096, abs=1e-6)
    assert one["p_one_sided_higher"] == pytest.approx(1 / 4096, abs=1e-6)
    assert one["mean_difference"] == pytest.approx(0.065, abs=1e-4)  # mean of 0.01 .. 0.12
    assert one["direction"] == "Alice higher than Rand. init. (p < 0.05, two-sided)"
    two = tests.loc[(2, "dsc")]
    assert two["p_value"] == pytest.approx(10 / 4096, abs=1e-6)
    assert two["p_one_sided_higher"] == pytest.approx(5 / 4096, abs=1e-6)
    assert tests.loc[(2, "nsd")]["p_value"] == pytest.approx(10 / 4096, abs=1e-6)


def test_a_lower_method_is_reported_as_lower(tmp_path):
    paths = [_write_run(tmp_path, m, 1, s) for m in ("rand_init", "alice") for s in SEEDS]
    # swap the roles: the method now scores below the reference on every pair
    for p in paths:
        data = json.loads(p.read_text())
        data["method"] = {"alice": "rand_init", "rand_init": "alice"}[data["method"]]
        p.write_text(json.dumps(data))
    test = paired_tests(read_runs(paths, "demo")[1]).iloc[0]
    assert test["mean_difference"] < 0 and test["p_value"] == pytest.approx(2 / 4096, abs=1e-6)
    assert test["p_one_sided_higher"] == pytest.approx(1.0, abs=1e-3)
    assert test["direction"].startswith("Alice lower than Rand. init.")


def test_nan_cases_leave_their_pair_out(tmp_path):
    paths = [_write_run(tmp_path, m, 1, s, nan_case="FLARETs_0001" if (m, s) == ("alice", 0) else None)
             for m in ("rand_init", "alice") for s in SEEDS]
    test = paired_tests(read_runs(paths, "demo")[1]).iloc[0]
    assert test["n_pairs"] == 11 and "1 pair(s) with a NaN value left out" in test["note"]


def test_write_effect_writes_csvs_and_figure(runs, tmp_path):
    out = tmp_path / "out"
    write_effect(runs, out / "effect.csv", out / "tests.csv", out / "figures" / "effect.png", "demo")
    frame = pd.read_csv(out / "effect.csv")
    text = (out / "effect.csv").read_text()
    assert ",alice,1,0,FLARETs_0001,liver," in text and ",80,80,0,3,test" in text and ",80,80,0,,test" in text
    assert list(frame.columns[:10]) == ["scale", "dataset", "backbone", "method", "labeled", "seed",
                                        "case", "organ", "dsc", "nsd"]
    assert len(pd.read_csv(out / "tests.csv")) == 4  # 2 labeled counts x 2 metrics
    image = imread(out / "figures" / "effect.png")
    assert image.shape[0] > 300 and image.shape[1] > 600
    assert image[..., :3].std() > 0.05  # something is drawn
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


def test_figure_title_states_the_scale():
    from alice.figures.effect import title_of

    assert "demo: phantom data, reduced models/steps — not comparable with the paper" in title_of("demo", "flare22", "unetr")
    assert "not comparable" not in title_of("paper", "flare22", "unetr")


def test_bad_inputs_stop_with_the_file_and_write_nothing(runs, tmp_path, capsys):
    out = tmp_path / "out"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"method": "alice", "cases": {}}))
    with pytest.raises(InputError, match="bad.json: not a low-label run"):
        write_effect([*runs, bad], out / "e.csv", out / "t.csv", out / "f.png", "demo")
    with pytest.raises(InputError, match="missing"):
        read_runs([tmp_path / "nope.json"], "demo")
    with pytest.raises(ConfigError, match="--scale"):
        read_runs(runs, "tiny")
    (runs[0].parent / "train_summary.json").unlink()
    with pytest.raises(InputError, match="train_summary.json: missing"):
        read_runs(runs, "demo")
    (runs[0].parent / "train_summary.json").write_text(json.dumps({"init": "scratch", "steps": 80}))
    with pytest.raises(InputError, match="the same run"):
        read_runs([runs[0], runs[0]], "demo")
    with pytest.raises(ConfigError, match="rand_init"):
        paired_tests(read_runs([r for r in runs if "rand_init" not in str(r)], "demo")[1])
    args = ["effect", "--scale", "demo", "--csv", str(out / "e.csv"), "--tests", str(out / "t.csv"),
            "--figure", str(out / "f.png"), "--metrics", str(bad)]
    assert main(args) != 0
    assert "bad.json" in capsys.readouterr().err
    assert not out.exists() or not any(out.rglob("*.*"))
