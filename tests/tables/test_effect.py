"""`alice effect` on fake low-label metrics: the per-organ CSV, the paired tests over seeds (the
unit: one model per method and seed; hand-checked exact Wilcoxon p-values), the figure, and clean
failures."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from alice.cli import main
from alice.errors import ConfigError, InputError
from alice.figures.effect import write_effect
from alice.tables.effect import paired_tests, read_runs, seed_means

CASES = [f"FLARETs_{i:04d}" for i in range(1, 5)]
ORGANS = ("liver", "spleen")
SEEDS = range(6)
# Alice's case offsets around its seed's difference (sum 0): single (seed, case) differences
# change sign where a seed's mean difference does not, so the per-case pairs would test
# something else than the per-seed ones
CASE_OFFSETS = (0.05, -0.05, 0.02, -0.02)


def _seed_diffs(labeled, seeds=SEEDS):
    """Alice minus Rand. init. per seed (mean over the test cases), distinct |differences|
    0.01 .. 0.01 n for n seeds.
    1 case: all positive -> W- = 0, exact two-sided p = 2 / 2^n, one-sided 1 / 2^n.
    2 cases: the two smallest negative -> W- = 1 + 2 = 3; subsets of ranks 1..6 with sum <= 3:
    {}, {1}, {2}, {3}, {1, 2} -> two-sided p = 2 * 5 / 64, one-sided ("higher") 5 / 64."""
    return {seed: (-1 if labeled == 2 and k < 2 else 1) * 0.01 * (k + 1) for k, seed in enumerate(seeds)}


def _diffs(labeled, seeds=SEEDS):
    """Alice minus Rand. init. per (seed, case)."""
    per_seed = _seed_diffs(labeled, seeds)
    return {(seed, case): per_seed[seed] + o for seed in seeds for case, o in zip(CASES, CASE_OFFSETS)}


def _write_run(root, method, labeled, seed, nan_case=None, seeds=SEEDS):
    cases, case_mean = {}, {}
    for case in CASES:
        base = 0.4 + 0.01 * seed
        value = base + (_diffs(labeled, seeds)[seed, case] if method == "alice" else 0.0)
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
    assert len(cases) == 2 * 2 * 6 * 4 * 2 and len(means) == 2 * 2 * 6 * 4
    assert set(cases["scale"]) == {"demo"} and set(cases["steps"]) == {80}
    row = cases[(cases["method"] == "alice") & (cases["labeled"] == 1) & (cases["seed"] == 2)
                & (cases["case"] == "FLARETs_0004") & (cases["organ"] == "liver")].iloc[0]
    assert row["dsc"] == pytest.approx(0.42 + (0.03 - 0.02) + 0.05)  # seed 2: +0.03, case 4: -0.02
    assert row["train_cases"] == "FLARE22_Tr_0003" and row["pretraining_steps"] == 3
    assert cases[cases["method"] == "rand_init"]["pretraining_steps"].isna().all()


def test_the_unit_is_the_seed_not_the_test_case(runs):
    """One model per (method, seed): its test cases are averaged first, then paired over seeds."""
    _, means = read_runs(runs, "demo")
    per_seed = seed_means(means)
    assert len(per_seed) == 2 * 2 * 6 and set(per_seed["n_cases"]) == {4}
    alice = per_seed[(per_seed["method"] == "alice") & (per_seed["labeled"] == 1)].set_index("seed")
    rand = per_seed[(per_seed["method"] == "rand_init") & (per_seed["labeled"] == 1)].set_index("seed")
    assert (alice["dsc"] - rand["dsc"]).to_dict() == pytest.approx(_seed_diffs(1))
    tests = paired_tests(means)
    assert set(tests["unit"]) == {"seed"} and set(tests["n_pairs"]) == {6}
    assert set(tests["cases_per_seed"]) == {"4"}
    # a per-(seed, case) pairing would see 24 pairs, some negative; the test sees 6, all positive
    assert min(_diffs(1).values()) < 0 and tests.iloc[0]["n_nonzero"] == 6


def test_paired_tests_give_the_exact_wilcoxon_p(runs):
    _, means = read_runs(runs, "demo")
    tests = paired_tests(means).set_index(["labeled", "metric"])
    one = tests.loc[(1, "dsc")]
    assert one["n_pairs"] == 6 and one["method"] == "alice" and one["unit"] == "seed"
    assert one["steps"] == "80" and one["scale"] == "demo"
    assert one["p_value"] == pytest.approx(2 / 64, abs=1e-6)
    assert one["p_one_sided_higher"] == pytest.approx(1 / 64, abs=1e-6)
    assert one["min_attainable_p"] == pytest.approx(2 / 64, abs=1e-6) and one["note"] == ""
    assert one["mean_difference"] == pytest.approx(0.035, abs=1e-4)  # mean of 0.01 .. 0.06
    diffs = np.array(list(_seed_diffs(1).values()))
    t = diffs.mean() / (diffs.std(ddof=1) / np.sqrt(len(diffs)))
    from scipy import stats
    assert one["p_ttest"] == pytest.approx(2 * stats.t.sf(t, len(diffs) - 1), abs=1e-5)
    assert one["direction"] == "Alice higher than Rand. init. (p < 0.05, two-sided)"
    two = tests.loc[(2, "dsc")]
    assert two["p_value"] == pytest.approx(10 / 64, abs=1e-6)
    assert two["p_one_sided_higher"] == pytest.approx(5 / 64, abs=1e-6)
    assert two["direction"] == "Alice higher than Rand. init. (not significant at 0.05, two-sided)"
    assert tests.loc[(2, "nsd")]["p_value"] == pytest.approx(10 / 64, abs=1e-6)


@pytest.mark.parametrize("n_seeds, floor", [(3, 0.25), (5, 0.0625)])
def test_few_seeds_state_the_smallest_attainable_p(tmp_path, n_seeds, floor):
    seeds = range(n_seeds)
    paths = [_write_run(tmp_path, m, 1, s, seeds=seeds) for m in ("rand_init", "alice") for s in seeds]
    test = paired_tests(read_runs(paths, "demo")[1]).iloc[0]
    assert test["n_pairs"] == n_seeds and test["p_value"] == pytest.approx(floor, abs=1e-6)
    assert test["min_attainable_p"] == pytest.approx(floor, abs=1e-6)
    assert f"an exact two-sided Wilcoxon p cannot fall below {floor:.4g}" in test["note"]
    assert test["direction"] == (f"Alice higher than Rand. init. ({n_seeds} seeds: p cannot fall "
                                 f"below {floor:.4g}, no verdict at 0.05, two-sided)")
    assert 0 < test["p_ttest"] < 1


def test_a_lower_method_is_reported_as_lower(tmp_path):
    paths = [_write_run(tmp_path, m, 1, s) for m in ("rand_init", "alice") for s in SEEDS]
    # swap the roles: the method now scores below the reference on every seed
    for p in paths:
        data = json.loads(p.read_text())
        data["method"] = {"alice": "rand_init", "rand_init": "alice"}[data["method"]]
        p.write_text(json.dumps(data))
    test = paired_tests(read_runs(paths, "demo")[1]).iloc[0]
    assert test["mean_difference"] < 0 and test["p_value"] == pytest.approx(2 / 64, abs=1e-6)
    assert test["p_one_sided_higher"] == pytest.approx(1.0, abs=1e-3)
    assert test["direction"].startswith("Alice lower than Rand. init.")


def test_nan_cases_leave_the_seeds_means_not_the_seed(tmp_path):
    paths = [_write_run(tmp_path, m, 1, s, nan_case="FLARETs_0001" if (m, s) == ("alice", 0) else None)
             for m in ("rand_init", "alice") for s in SEEDS]
    _, means = read_runs(paths, "demo")
    test = paired_tests(means).iloc[0]
    assert test["n_pairs"] == 6 and test["cases_per_seed"] == "3-4"
    assert "1 test case(s) with a NaN value left out of their seed's means (seed 0)" in test["note"]
    # seed 0 is averaged over the 3 cases both runs scored: 0.01 + mean(-0.05, 0.02, -0.02)
    assert test["mean_difference"] == pytest.approx((sum(_seed_diffs(1).values()) - 0.05 / 3) / 6, abs=1e-4)


def test_a_seed_without_its_partner_is_left_out(tmp_path):
    paths = [_write_run(tmp_path, m, 1, s) for m in ("rand_init", "alice") for s in SEEDS
             if (m, s) != ("alice", 5)]
    test = paired_tests(read_runs(paths, "demo")[1]).iloc[0]
    assert test["n_pairs"] == 5 and "1 seed(s) without a partner run left out" in test["note"]
    assert test["min_attainable_p"] == pytest.approx(0.0625)


def test_write_effect_writes_csvs_and_figure(runs, tmp_path):
    out = tmp_path / "out"
    write_effect(runs, out / "effect.csv", out / "tests.csv", out / "figures" / "effect.png", "demo")
    frame = pd.read_csv(out / "effect.csv")
    text = (out / "effect.csv").read_text()
    assert ",alice,1,0,FLARETs_0001,liver," in text and ",80,80,0,3,test" in text and ",80,80,0,,test" in text
    assert list(frame.columns[:10]) == ["scale", "dataset", "backbone", "method", "labeled", "seed",
                                        "case", "organ", "dsc", "nsd"]
    tests = pd.read_csv(out / "tests.csv")
    assert len(tests) == 4  # 2 labeled counts x 2 metrics
    assert set(tests["unit"]) == {"seed"} and set(tests["n_pairs"]) == {6}
    image = imread(out / "figures" / "effect.png")
    assert image.shape[0] > 300 and image.shape[1] > 600
    assert image[..., :3].std() > 0.05  # something is drawn
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


def test_figure_states_the_unit_and_the_p_floor(runs, tmp_path, monkeypatch):
    import matplotlib.figure

    seen = []
    save = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda fig, *a, **k: (seen.append(fig), save(fig, *a, **k))[1])
    three = [r for r in runs if "seed3" not in str(r) and "seed4" not in str(r) and "seed5" not in str(r)]
    write_effect(three, tmp_path / "e.csv", tmp_path / "t.csv", tmp_path / "f.png", "demo")
    title = seen[-1]._suptitle.get_text()
    assert "p over seeds" in title and "one model per method and seed" in title
    assert "with 3 seeds W ≥ 0.25" in title
    notes = [t.get_text() for ax in seen[-1].axes for t in ax.texts]
    assert "W 0.25, t " in notes[0]


def test_the_tables_module_does_not_import_the_figures():
    """No import circle: the figure module (the stage) reads alice.tables.effect; the tables module
    imports nothing of alice.figures."""
    import alice.tables.effect as tables

    tree = ast.parse(Path(tables.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any(m and m.startswith("alice.figures") for m in imported)


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


@pytest.mark.parametrize("change, said", [
    (lambda m: m["cases"]["FLARETs_0002"]["liver"].update(dsc=float("inf")),
     r"cases\.FLARETs_0002\.liver\.dsc is Infinity: not a score"),
    (lambda m: m["case_mean"]["FLARETs_0002"].update(nsd=float("-inf")),
     r"case_mean\.FLARETs_0002\.nsd is -Infinity: not a score"),
    (lambda m: m["case_mean"]["FLARETs_0002"].update(dsc="0.5"),
     r"case_mean\.FLARETs_0002\.dsc is '0\.5', not a number"),
    (lambda m: m["case_mean"].pop("FLARETs_0002"), r"case_mean\.FLARETs_0002 has no dsc"),
    (lambda m: m["cases"]["FLARETs_0002"]["liver"].pop("nsd"), r"cases\.FLARETs_0002\.liver has no nsd"),
    (lambda m: m["subset"].update(subset_seed="1"), r"subset\.subset_seed is '1', not an integer"),
], ids=["inf organ", "-inf case", "text case", "missing case mean", "missing organ score", "text seed"])
def test_a_score_that_is_no_number_stops_naming_the_file_and_key(tmp_path, change, said):
    paths = [_write_run(tmp_path, m, 1, s) for m in ("rand_init", "alice") for s in range(2)]
    data = json.loads(paths[3].read_text())
    change(data)
    paths[3].write_text(json.dumps(data))  # Infinity as Python's json writes it
    with pytest.raises(InputError, match=re.escape(str(paths[3])) + ": " + said):
        read_runs(paths, "demo")


def test_a_null_organ_is_kept_as_nan_and_its_case_mean_used(tmp_path):
    """An organ with nothing to score (alice.metrics) is NaN in the per-organ CSV, not an error."""
    paths = [_write_run(tmp_path, m, 1, s) for m in ("rand_init", "alice") for s in range(2)]
    data = json.loads(paths[3].read_text())
    data["cases"]["FLARETs_0002"]["spleen"] = {"dsc": None, "nsd": None}
    paths[3].write_text(json.dumps(data))
    cases, means = read_runs(paths, "demo")
    spleen = cases[(cases["method"] == "alice") & (cases["seed"] == 1) & (cases["case"] == "FLARETs_0002")
                   & (cases["organ"] == "spleen")].iloc[0]
    assert np.isnan(spleen["dsc"]) and np.isnan(spleen["nsd"])
    assert means["dsc"].notna().all()


def test_an_infinite_score_is_one_line_from_the_cli_and_writes_nothing(tmp_path, capsys):
    paths = [_write_run(tmp_path, m, 1, s) for m in ("rand_init", "alice") for s in range(2)]
    data = json.loads(paths[1].read_text())
    data["case_mean"]["FLARETs_0001"]["dsc"] = float("inf")
    paths[1].write_text(json.dumps(data))
    out = tmp_path / "out"
    code = main(["effect", "--scale", "demo", "--csv", str(out / "e.csv"), "--tests", str(out / "t.csv"),
                 "--figure", str(out / "f.png"), *[a for p in paths for a in ("--metrics", str(p))]])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and "Traceback" not in err[0]
    assert err[0] == (f"alice effect: error: {paths[1]}: case_mean.FLARETs_0001.dsc is Infinity: not a "
                      "score, regenerate it (alice evaluate)")
    assert not out.exists()
