"""The demo's cost model (benchmarks/demo_budget.py) on a small DAG with fake benchmark files:
CPU-minute sums, the median fallback, the jobs the pool's folds checkpoint hides, list scheduling
on 1 and 2 cores and the critical path, all against values worked out by hand; and the jobs one
more method adds under the fold policy."""

import copy
import importlib.util

import pytest
import yaml

from alice import config as cfg

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


@pytest.fixture(scope="module")
def budget():
    spec = importlib.util.spec_from_file_location("demo_budget", cfg.REPO_ROOT / "benchmarks" / "demo_budget.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_tsv(root, rel, s, cpu_time, rss=100.0):
    path = root / "results" / "benchmarks" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + f"{s}\t0:00:00\t{rss}\t1\t1\t1\t0\t0\t90\t{cpu_time}\n")


def small_config(tmp_path):
    """The demo config with a 3-volume pool (2 train + 1 val) and a 2-thread matcher."""
    config = yaml.safe_load((cfg.REPO_ROOT / "config" / "config.yaml").read_text())
    config["phantom"]["counts"]["flare22"]["unlabeled"] = 3
    config["anatomy"]["threads"] = 2
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


# the matcher's landmark evaluation + BTCV's data stage, as from scratch: the dry run lists the
# data-stage jobs and anatomy_evaluate (its input `<TBD>`: the pool's folds checkpoint); the model
# adds anatomy_prepare, anatomy_train (2 threads) and 3 anatomy_embed jobs (every pool volume)
TARGETS = ["results/anatomy/matching.csv", "results/data/btcv/folds.json"]
# Snakemake's samples: every 0.5 s up to 15 s, then at 45, 75, 105, ... s, none at the end: a
# run of s = 15 + 30 k ends on a sample, cpu_time is all of it
MEASURED = {  # path: (s, cpu_time)
    "phantom/flare22.tsv": (75, 60), "phantom/btcv.tsv": (45, 40),
    "prepare/flare22_pool.tsv": (135, 120),
    "prepare/btcv.tsv": (60, 60),           # last sample at 45 s: 60 x 60 / 45 = 80
    "folds/flare22_pool.tsv": (7, 6),
    "folds/btcv.tsv": (4, "NA"),            # no sample: the wall-clock s counts
    "anatomy_prepare.tsv": (105, 90),
    "anatomy_train.tsv": (675, 600),        # cpu_time, not s
    # other volumes than the DAG's placeholders: the DAG's 3 embeddings get the median, 50
    "anatomy_embed/X1.tsv": (15, 30), "anatomy_embed/X2.tsv": (45, 50), "anatomy_embed/X3.tsv": (105, 100),
    # no rule's pattern: ignored
    "stray/thing.tsv": (1000, 1000),
}


def test_costs_schedule_and_critical_path(tmp_path, budget):
    for rel, (s, cpu) in MEASURED.items():
        write_tsv(tmp_path, rel, s, cpu)
    report = budget.budget(TARGETS, small_config(tmp_path), tmp_path, [1, 2], method=None, scheduler_cpu_s=0.0)

    rules = {rule: (r["jobs"], r["measured"], r["median"], r["none"]) for rule, r in report["rules"].items()}
    assert rules == {"phantom": (2, 2, 0, 0), "prepare": (2, 2, 0, 0), "folds": (2, 2, 0, 0),
                     "anatomy_prepare": (1, 1, 0, 0), "anatomy_train": (1, 1, 0, 0),
                     "anatomy_embed": (3, 0, 3, 0), "anatomy_evaluate": (1, 0, 0, 1)}
    assert report["jobs"] == 12 and report["added_behind_checkpoint"] == 5
    assert report["benchmark_files"] == 11
    # CPU seconds: data 60+40+120+80+6+4 = 310, matcher 90+600+3x50+0 = 840
    assert report["families_cpu_min"] == pytest.approx({"data": 310 / 60, "matcher": 840 / 60})
    assert report["total_cpu_min"] == pytest.approx(1150 / 60)
    assert report["rules"]["anatomy_embed"]["cpu_min"] == pytest.approx(150 / 60)
    assert report["estimated"] == [{"rule": "anatomy_embed", "wildcards": {}, "jobs": 3,
                                    "cpu_min": pytest.approx(150 / 60), "n": 3}]
    assert [(g["rule"], g["jobs"]) for g in report["unmeasured"]] == [("anatomy_evaluate", 1)]

    # one core: every job in turn (the matcher's 2 threads get 1 core: 600 s)
    assert report["wall_min"]["1"] == pytest.approx(1150 / 60)
    # two cores, by hand (priority 50: the pool's chain and the matcher; ties: longest chain first):
    #   0-60 phantom flare22 | 0-40 phantom btcv, 40-120 prepare btcv
    #   60-180 prepare pool (chain 476 s > anatomy_prepare's 440) | 120-210 anatomy_prepare
    #   180-186 folds pool | 186-190 folds btcv | 210-510 anatomy_train on both cores (600 / 2)
    #   510-560 two embeddings, 560-610 the third, then anatomy_evaluate (0)
    assert report["wall_min"]["2"] == pytest.approx(610 / 60)
    # phantom 60 + prepare 120 + folds 6 + anatomy_train 300 + embed 50 + evaluate 0
    assert report["critical_path_min"] == pytest.approx(536 / 60)
    assert [step["job"].split("[")[0] for step in report["critical_path"]] == [
        "phantom", "prepare", "folds", "anatomy_train", "anatomy_embed", "anatomy_evaluate"]
    assert report["critical_path"][1]["job"] == "prepare[dataset=flare22_pool]"
    # Snakemake's own CPU (here 5 s a job, 12 jobs) spreads over the cores
    with_scheduler = budget.budget(TARGETS, small_config(tmp_path), tmp_path, [1, 2], method=None, scheduler_cpu_s=5.0)
    assert with_scheduler["scheduler_cpu_min"] == pytest.approx(60 / 60)
    assert with_scheduler["wall_min"]["1"] == pytest.approx((1150 + 60) / 60)
    assert with_scheduler["wall_min"]["2"] == pytest.approx((610 + 30) / 60)


def test_without_embedding_measurements_they_count_nothing(tmp_path, budget):
    for rel, (s, cpu) in MEASURED.items():
        if not rel.startswith("anatomy_embed/"):
            write_tsv(tmp_path, rel, s, cpu)
    report = budget.budget(TARGETS, small_config(tmp_path), tmp_path, [2], method=None, scheduler_cpu_s=0.0)
    assert report["estimated"] == []
    assert [(g["rule"], g["jobs"]) for g in report["unmeasured"]] == [("anatomy_embed", 3), ("anatomy_evaluate", 1)]
    assert report["total_cpu_min"] == pytest.approx(1000 / 60)
    assert report["wall_min"]["2"] == pytest.approx(510 / 60)


def test_benchmark_patterns_cover_every_costly_rule(budget):
    patterns = budget.benchmark_patterns()
    for rules in budget.FAMILIES.values():
        for rule in rules:
            assert patterns[rule].startswith(f"results/benchmarks/{rule}"), rule
            assert patterns[rule].endswith(".tsv")
    assert patterns["finetune"] == "results/benchmarks/finetune/{dataset}/{method}/{backbone}/fold{fold}.tsv"
    regex = budget.pattern_regex(patterns["finetune"])
    assert regex.match("results/benchmarks/finetune/flare22/alice__casa-false/nnformer/fold3.tsv").groupdict() == {
        "dataset": "flare22", "method": "alice__casa-false", "backbone": "nnformer", "fold": "3"}
    assert not regex.match("results/benchmarks/finetune_classifier/alice/vit/fold0.tsv")


@pytest.mark.parametrize("baseline, folds, splits", [(1, ["0"], ["0"]), (None, list("01234"), [str(k) for k in range(10)])])
def test_one_more_method_follows_the_fold_policy(budget, baseline, folds, splits):
    config = cfg.load_config(cfg.REPO_ROOT / "config" / "config.yaml")
    config = copy.deepcopy(config)
    config["reproduce"].update(methods=["rand_init", "alice"], headline=["rand_init", "alice"],
                               backbones=["unetr", "swin_unetr", "nnformer", "vit", "resnet3d"],
                               folds={"headline": None, "baseline": baseline, "ablation": 1})
    jobs = budget.method_jobs(config, "mae", [], curves=False)
    by_rule = {}
    for job in jobs:
        by_rule.setdefault(job.rule, []).append(job.wildcards)
    # Table 1 (FLARE22: UNETR, Swin UNETR, nnFormer), Table 3 (BTCV: nnFormer, the network the
    # harness runs MAE's row on), Tables 4 and 9 (MosMed, ViT)
    assert sorted((w["dataset"], w["backbone"], w["fold"]) for w in by_rule["finetune"]) == sorted(
        [("flare22", b, k) for b in ("nnformer", "swin_unetr", "unetr") for k in folds]
        + [("btcv", "nnformer", k) for k in folds])
    assert sorted(map(str, by_rule["evaluate"])) == sorted(map(str, by_rule["finetune"]))
    assert sorted(w["fold"] for w in by_rule["finetune_classifier"]) == sorted(splits)
    assert sorted(w["encoder"] for w in by_rule["pretrain"]) == ["nnformer", "swin", "vit"]
    assert {w["method"] for ws in by_rule.values() for w in ws} == {"mae"}
    # a finetune job waits for its encoder's pretraining run
    finetune = next(j for j in jobs if j.rule == "finetune" and j.wildcards["backbone"] == "unetr")
    assert "results/pretrain/mae/vit/checkpoint.pt" in finetune.inputs


def test_cpu_time_covers_the_unsampled_tail(tmp_path, budget):
    assert [budget.last_sample(s) for s in (3.2, 15, 44, 45, 74.9, 75, 700)] == [3.2, 15, 15, 45, 45, 75, 675]
    write_tsv(tmp_path, "x.tsv", 42.0, 2.8)  # sampled at 15 s: 2.8 CPU-s of 15
    record = budget.read_benchmark(tmp_path / "results" / "benchmarks" / "x.tsv")
    assert record["cpu_s"] == pytest.approx(2.8 * 42 / 15) and record["wall_s"] == 42.0
    assert record["from"] == "cpu_time" and record["max_rss_mb"] == 100.0
