"""The Snakemake DAG: dry run, lint, and a real run of the data stage on a tiny config."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from alice.config import REPO_ROOT


def snakemake(*args, cwd=REPO_ROOT, timeout=600):
    env = dict(os.environ)
    # the rules call the `alice` console script of this interpreter's environment
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_dry_run_lists_the_data_stage(tmp_path):
    result = snakemake("-n", "--directory", str(tmp_path), "--snakefile",
                       str(REPO_ROOT / "Snakefile"), "--configfile",
                       str(REPO_ROOT / "config" / "config.yaml"))
    assert result.returncode == 0, result.stderr
    out = result.stdout + result.stderr
    for rule in ("phantom", "prepare", "folds", "phantom_figure", "pretraining_effect"):
        assert rule in out


def test_building_the_dag_imports_no_heavy_library():
    """The Snakefile's imports of the harness load neither torch nor scikit-learn: every
    Snakemake start-up parses it (and on SLURM every job's own Snakemake), and those two imports
    cost ~2 s each."""
    import re

    sources = [REPO_ROOT / "Snakefile", *sorted((REPO_ROOT / "workflow" / "rules").glob("*.smk"))]
    modules = sorted({m for path in sources
                      for m in re.findall(r"^(?:from|import) (alice[\w.]*)", path.read_text(), re.M)})
    assert "alice.data.folds" in modules and "alice.tables.online" in modules and "alice.ssl.catalog" in modules
    code = ("import sys\n" + "".join(f"import {m}\n" for m in modules)
            + "print(sorted(m for m in ('torch', 'sklearn', 'monai', 'scipy') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=REPO_ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"{modules} load {result.stdout.strip()}"


def test_backbone_picks_its_encoders_checkpoint(tmp_path):
    """A fold of Swin UNETR / nnFormer needs the pretraining run of its own encoder."""
    config = yaml.safe_load((REPO_ROOT / "config" / "config.yaml").read_text())
    config["pretrain"]["pairs"]["matcher"] = "bbox"  # no learned matcher in this DAG
    path = tmp_path / "bbox.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake("results/finetune/flare22/alice/nnformer/fold0/metrics.json",
                       "results/finetune/flare22/alice/swin_unetr/fold1/metrics.json", "-n",
                       "--directory", str(tmp_path), "--snakefile", str(REPO_ROOT / "Snakefile"),
                       "--configfile", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "results/pretrain/alice/nnformer/checkpoint.pt" in out
    assert "results/pretrain/alice/swin/checkpoint.pt" in out
    assert "results/pretrain/alice/vit/" not in out


def test_lint_is_clean():
    result = snakemake("--lint")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations" in result.stdout + result.stderr


def test_bad_config_stops_the_dag(tmp_path):
    config = yaml.safe_load((REPO_ROOT / "config" / "config.yaml").read_text())
    config["datasets"]["btcv"]["foldz"] = 5
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    result = snakemake("-n", "--directory", str(tmp_path), "--snakefile",
                       str(REPO_ROOT / "Snakefile"), "--configfile", str(bad))
    assert result.returncode != 0
    assert "datasets.btcv.foldz" in result.stdout + result.stderr


def tiny_config(tmp_path):
    config = yaml.safe_load((REPO_ROOT / "config" / "config.yaml").read_text())
    config["phantom"]["geometry"] = {"inplane_voxels": 32, "fov_mm": [340, 400],
                                     "slice_mm": [8.0, 10.0]}
    config["phantom"]["counts"]["flare22"] = {"labeled": 5, "unlabeled": 2, "validation": 2}
    config["datasets"]["flare22"]["offline_test"] = ["FLARETs_0001", "FLARETs_0002"]
    config["datasets"]["flare22"]["spacing"] = [12.0, 12.0, 10.0]
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_data_stage_runs_from_an_empty_folder(tmp_path):
    """`snakemake results/data/flare22/folds.json` from nothing: phantom -> prepare -> folds."""
    # targets first: --configfile takes several values
    args = ("results/data/flare22/folds.json", "--cores", "2", "--directory", str(tmp_path),
            "--snakefile", str(REPO_ROOT / "Snakefile"), "--configfile", str(tiny_config(tmp_path)))
    result = snakemake(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    folds = yaml.safe_load((tmp_path / "results/data/flare22/folds.json").read_text())
    assert folds["test"] == ["FLARETs_0001", "FLARETs_0002"]
    assert sorted(c for f in folds["folds"] for c in f["val"]) == [
        f"FLARE22_Tr_{i:04d}" for i in range(1, 6)]
    assert (tmp_path / "results/phantoms/flare22/phantom_truth").is_dir()
    again = snakemake(*args)
    assert "Nothing to be done" in again.stdout + again.stderr


def test_bad_root_fails_without_manifest(tmp_path):
    config = yaml.safe_load(tiny_config(tmp_path).read_text())
    config["datasets"]["btcv"]["root"] = str(tmp_path / "no-such-btcv")
    path = tmp_path / "bad-root.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake("results/data/btcv/manifest.json", "--cores", "1", "--directory",
                       str(tmp_path), "--snakefile", str(REPO_ROOT / "Snakefile"),
                       "--configfile", str(path))
    assert result.returncode != 0
    log = (tmp_path / "results/logs/prepare/btcv.log").read_text()
    assert "no-such-btcv" in log and "error" in log
    assert not (tmp_path / "results/data/btcv/manifest.json").exists()


@pytest.mark.slow
def test_table1_from_an_empty_folder(tmp_path):
    """The headline target on a tiny config: phantom -> prepare -> folds -> 2 folds of UNETR
    fine-tuning -> evaluation -> one CSV per row -> table1.{csv,tex}; then a single row target."""
    config = yaml.safe_load(tiny_config(tmp_path).read_text())
    config["datasets"]["flare22"]["folds"] = 2
    config["phantom"]["counts"]["flare22"] = {"labeled": 4, "unlabeled": 0, "validation": 1}
    config["datasets"]["flare22"]["offline_test"] = ["FLARETs_0001"]
    config["reproduce"]["methods"] = ["rand_init"]  # Alice's pretraining: tests/ssl/test_pretrain_cli.py
    config["reproduce"]["backbones"] = ["unetr"]  # Swin UNETR / nnFormer folds: tests/downstream
    config["pretrain"]["encoders"]["vit"] = {"embed_dim": 24, "depth": 12, "heads": 2,
                                             "mlp_ratio": 2, "patch": [16, 16, 16]}
    unetr = config["finetune"]["unetr"]
    unetr.update(crop=[32, 32, 16], feature_size=4, samples_per_volume=1, val_every=1)
    unetr["optim"].update(epochs=1, warmup_epochs=0, batch_size=2)
    path = tmp_path / "table.yaml"
    path.write_text(yaml.safe_dump(config))
    common = ("--cores", "2", "--directory", str(tmp_path), "--snakefile",
              str(REPO_ROOT / "Snakefile"), "--configfile", str(path))
    result = snakemake("results/table1.tex", *common)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for k in range(2):
        fold = tmp_path / f"results/finetune/flare22/rand_init/unetr/fold{k}"
        assert {"model.pt", "log.csv", "metrics.json"} <= {p.name for p in fold.iterdir()}
    row = (tmp_path / "results/rows/table1/rand_init.csv").read_text()
    assert "reproduced" in row and "fold1/metrics.json" in row
    tex = (tmp_path / "results/table1.tex").read_text()
    assert r"\toprule" in tex and "Rand. init." in tex and r"\textit{n.r.}" in tex
    # the scale (config key `scale`) and the protocol the folds recorded, in the CSV and caption
    steps = {json.loads((tmp_path / f"results/finetune/flare22/rand_init/unetr/fold{k}/"
                                    "train_summary.json").read_text())["steps"] for k in range(2)}
    assert len(steps) == 1
    n = steps.pop()
    protocol = (f"rand_init / unetr: folds 0, 1, fine-tuning {n} step{'' if n == 1 else 's'}, "
                "no pretraining")
    wide = pd.read_csv(tmp_path / "results/table1.csv", dtype=str, keep_default_na=False)
    assert set(wide["scale"]) == {"demo"}
    assert wide.set_index("row").loc["rand_init", "protocol"] == protocol
    assert "Scale: demo scale: phantom data" in tex and protocol.replace("_", r"\_") in tex
    # a row is its own target: removing it reruns only that row (dry run lists one job)
    (tmp_path / "results/rows/table1/alice.csv").unlink()
    dry = snakemake("results/rows/table1/alice.csv", "-n", *common)
    assert dry.returncode == 0
    assert "table_row" in dry.stdout and "finetune" not in dry.stdout


def test_classification_tables_dry_run_one_job_per_split(tmp_path):
    """Tables 4 and 9 on the demo config: one classification job per (run, backbone, split)."""
    result = snakemake("-n", "results/table4.csv", "results/table9.csv", "--quiet", "rules",
                       "--directory", str(tmp_path), "--snakefile", str(REPO_ROOT / "Snakefile"),
                       "--configfile", str(REPO_ROOT / "config" / "config.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
    counts = dict(line.split()[:2] for line in result.stdout.splitlines()
                  if len(line.split()) == 2 and line.split()[1].isdigit())
    # (rand_init resnet3d, rand_init vit, alice vit) x 10 splits; the baselines' ViT rows (MoCo v3,
    # DINO, iBOT, SIM, MAE, SemMAE, CMAE, Tang et al.) and 3-D ResNet rows (MoCo v2, BYOL,
    # ContrastiveCrop, LoGo, PCRL, PCRLv2, PGL, DiRA) split 0 (fold policy)
    assert counts["finetune_classifier"] == "46"
    assert counts["table"] == "2"


def test_pretraining_effect_dry_run_one_job_per_method_count_and_seed(tmp_path):
    """One low-label job per method, labeled count and seed of the config (2 x 3 x `seeds`), one
    aggregation; Alice's runs read its nnFormer checkpoint, Rand. init.'s none; every run matches
    fold 0's step count."""
    effect = yaml.safe_load((REPO_ROOT / "config" / "config.yaml").read_text())["pretraining_effect"]
    seeds = [str(s) for s in range(effect["seeds"])]
    labeled = [str(n) for n in effect["labeled"]]
    expected = {(m, n, s) for m in effect["methods"] for n in labeled for s in seeds}
    result = snakemake("-n", "-p", "results/pretraining_effect.csv", "--directory", str(tmp_path),
                       "--snakefile", str(REPO_ROOT / "Snakefile"), "--configfile",
                       str(REPO_ROOT / "config" / "config.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    commands = [line.split("Shell command: ")[-1] for line in out.splitlines() if "alice finetune" in line]
    runs = {(c.split("--method ")[1].split()[0], c.split("--labeled ")[1].split()[0],
             c.split("--subset-seed ")[1].split()[0]) for c in commands}
    assert effect["methods"] == ["rand_init", "alice"] and len(seeds) >= 3
    assert len(commands) == len(expected) and runs == expected
    for c in commands:
        assert "--fold 0 " in c and "--evaluate" in c
        init = "results/pretrain/alice/nnformer/checkpoint.pt" if "--method alice" in c else "scratch"
        assert f"--init {init} " in c
    assert (f"results/pretraining_effect/nnformer/alice/labeled{labeled[-1]}/seed{seeds[-1]}/"
            "metrics.json") in out
    aggregate = [line for line in out.splitlines() if "alice effect" in line]
    assert len(aggregate) == 1 and aggregate[0].count("--metrics ") == len(expected)
    assert "--scale demo" in aggregate[0]


@pytest.mark.slow
def test_table9_from_an_empty_folder(tmp_path):
    """Rand. init. rows of Table 9 on a tiny MosMed: phantom -> prepare -> folds -> 2 splits x
    2 backbones (3 label fractions each) -> rows -> table9.{csv,tex}."""
    config = yaml.safe_load(tiny_config(tmp_path).read_text())
    config["phantom"]["counts"]["mosmed"] = {"per_category": [12, 6, 3, 2, 1], "masks": 0}
    config["datasets"]["mosmed"].update(size=[16, 16, 16], repeats=2)
    config["reproduce"]["methods"] = ["rand_init"]
    config["pretrain"]["encoders"]["vit"] = {"embed_dim": 24, "depth": 2, "heads": 2,
                                             "mlp_ratio": 2, "patch": [16, 16, 16]}
    cls = config["classification"]
    cls["optim"].update(iterations=2, warmup_iterations=1, batch_size=2)
    cls.update(val_every=1)
    config["pretrain"]["encoders"]["resnet3d"] = {"depth": 10, "widen_factor": 0.125, "features": 4}
    path = tmp_path / "cls.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake("results/table9.csv", "--cores", "2", "--directory", str(tmp_path), "--snakefile",
                       str(REPO_ROOT / "Snakefile"), "--configfile", str(path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for backbone in ("vit", "resnet3d"):
        for k in range(2):
            for labels in ("labels20", "labels50", "labels100"):
                folder = tmp_path / f"results/finetune/mosmed/rand_init/{backbone}/fold{k}/{labels}"
                assert {"model.pt", "log.csv", "metrics.json"} <= {p.name for p in folder.iterdir()}
    table = (tmp_path / "results/table9.csv").read_text()
    assert "rand_init / resnet3d / folds 0,1" in table and "rand_init / vit / folds 0,1" in table
    assert "not reproduced yet" in table  # Alice is not run here


def dry_run_jobs(tmp_path, config_path, *targets):
    """(rule, wildcards, priority) of every job a dry run from an empty folder lists."""
    import re

    result = snakemake(*targets, "-n", "--directory", str(tmp_path), "--snakefile",
                       str(REPO_ROOT / "Snakefile"), "--configfile", str(config_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs = []
    for line in result.stdout.splitlines():
        line = line.strip()
        match = re.match(r"^(?:local)?(?:rule|checkpoint) (\w+):$", line)
        if match:
            jobs.append([match.group(1), {}, 0])
        elif jobs and line.startswith("wildcards:"):
            jobs[-1][1] = dict(kv.split("=", 1) for kv in line.split(":", 1)[1].strip().split(", "))
        elif jobs and line.startswith("priority:"):
            jobs[-1][2] = float(line.split(":", 1)[1])
    return [tuple(job) for job in jobs]


def on_the_critical_path(rule, wildcards):
    """The pool's data stage (its release's phantom, its prepare and folds), the matcher and
    pretraining: what Alice's runs wait for."""
    if rule == "phantom":
        return wildcards.get("release") == "flare22"
    if rule in ("prepare", "folds"):
        return wildcards.get("dataset") == "flare22_pool"
    return rule in ("anatomy_prepare", "anatomy_train", "anatomy_embed", "pretrain")


def pool_folds_done(root):
    """The pool's data stage as if it had run (three pool cases), so the DAG holds the jobs the
    `folds` checkpoint gates: the matcher's training and one embedding job per pool case."""
    import time

    (root / "results/phantoms/flare22").mkdir(parents=True)
    pool = root / "results/data/flare22_pool"
    pool.mkdir(parents=True)
    (pool / "manifest.json").write_text("{}")
    time.sleep(0.05)
    (pool / "folds.json").write_text('{"train": ["P1", "P2"], "val": ["P3"]}')


@pytest.mark.parametrize("matcher, pool_done, chain", [
    ("sam", False, {"phantom", "prepare", "folds", "anatomy_prepare", "pretrain"}),
    ("bbox", False, {"phantom", "prepare", "folds", "pretrain"}),
    ("sam", True, {"anatomy_prepare", "anatomy_train", "anatomy_embed", "pretrain"}),
])
def test_the_critical_path_outranks_every_other_job(tmp_path, matcher, pool_done, chain):
    """Snakemake starts the ready job of highest priority first, and `priority` does not
    propagate upstream: from an empty folder the default target's first ready jobs are the three
    phantoms and the rows that read nothing yet, so the pool's phantom, prepare and folds must
    outrank them as the matcher's cache, the matcher and pretraining do, or the chain starts
    behind them. (With the
    learned matcher its jobs join the DAG once the pool's `folds` checkpoint has run: the third
    case.)"""
    config = yaml.safe_load((REPO_ROOT / "config" / "config.yaml").read_text())
    config["pretrain"]["pairs"]["matcher"] = matcher
    path = tmp_path / f"{matcher}.yaml"
    path.write_text(yaml.safe_dump(config))
    if pool_done:
        pool_folds_done(tmp_path)
    jobs = dry_run_jobs(tmp_path, path)
    critical = [(rule, p) for rule, w, p in jobs if on_the_critical_path(rule, w)]
    others = [(rule, w, p) for rule, w, p in jobs if not on_the_critical_path(rule, w)]
    assert {rule for rule, _ in critical} == chain
    assert {rule for rule, _, _ in others} >= {"table_row", "phantom", "prepare", "folds", "finetune"}
    lowest = min(p for _, p in critical)
    outranking = [(rule, w) for rule, w, p in others if p >= lowest]
    assert lowest > 0 and not outranking, (lowest, outranking[:5])


def test_a_switch_that_mines_matched_crops_adds_the_embeddings(tmp_path):
    """`ibot__inter_volume-true` (Table 5) cuts its global views from matched crop pairs: with the
    learned matcher its pretraining reads every train volume's embeddings (and the anatomy cache);
    the plain `ibot` run reads neither."""
    config = yaml.safe_load((REPO_ROOT / "config" / "config.yaml").read_text())
    config["pretrain"]["pairs"]["matcher"] = "sam"
    path = tmp_path / "sam.yaml"
    path.write_text(yaml.safe_dump(config))
    pool_folds_done(tmp_path)
    matched = dry_run_jobs(tmp_path, path, "results/pretrain/ibot__inter_volume-true/vit/checkpoint.pt")
    assert {rule for rule, _, _ in matched} == {"anatomy_prepare", "anatomy_train", "anatomy_embed", "pretrain"}
    assert sorted(w["case"] for rule, w, _ in matched if rule == "anatomy_embed") == ["P1", "P2"]
    plain = dry_run_jobs(tmp_path, path, "results/pretrain/ibot/vit/checkpoint.pt")
    assert [rule for rule, _, _ in plain] == ["pretrain"]


def test_a_one_core_run_starts_with_the_pools_data_stage(tmp_path):
    """The job log of a real run on one core: among ready jobs of other datasets and a table row
    that reads nothing, the pool's release, prepare and folds run first."""
    import re

    config = yaml.safe_load(tiny_config(tmp_path).read_text())
    config["phantom"]["counts"]["btcv"] = {"labeled": 2, "test": 1}
    config["datasets"]["btcv"]["folds"] = 2
    path = tmp_path / "order.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake("results/rows/table3/dodnet.csv", "results/data/btcv/folds.json",
                       "results/data/flare22/folds.json", "results/data/flare22_pool/folds.json",
                       "--cores", "1", "--directory", str(tmp_path), "--snakefile",
                       str(REPO_ROOT / "Snakefile"), "--configfile", str(path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs, log = [], result.stdout + result.stderr
    for line in log.splitlines():
        line = line.strip()
        match = re.match(r"^(?:local)?(?:rule|checkpoint) (\w+):$", line)
        if match:
            jobs.append((match.group(1), ""))
        elif jobs and line.startswith("wildcards:"):
            jobs[-1] = (jobs[-1][0], line.split(":", 1)[1].strip())
    assert len(jobs) == 9, jobs  # 2 phantoms (FLARE22's is the pool's), 3 prepare, 3 folds, 1 row
    assert jobs[:3] == [("phantom", "release=flare22"), ("prepare", "dataset=flare22_pool"),
                        ("folds", "dataset=flare22_pool")], jobs


@pytest.mark.slow
def test_matcher_chain_on_its_own_cache(tmp_path):
    """`results/anatomy/matching.csv` on a tiny config whose anatomy cache has another spacing than
    the pool's: phantom -> prepare (pool) + anatomy_prepare -> folds -> anatomy_train -> one
    anatomy_embed per pool volume (on the anatomy grid) -> anatomy_evaluate (on the pool grid)."""
    config = yaml.safe_load(tiny_config(tmp_path).read_text())
    config["phantom"]["counts"]["flare22"]["unlabeled"] = 3
    config["datasets"]["flare22_pool"]["spacing"] = [8.0, 8.0, 8.0]
    config["anatomy"]["data"] = {"spacing": [12.0, 12.0, 12.0], "cache_dtype": "float16"}
    config["anatomy"]["train"].update(
        model={"widths": [8, 8, 8], "blocks": [1, 1, 1], "stem_width": 8, "fpn_dim": 8, "embed_dim": 8,
               "fine_stride": 2, "coarse_stride": 8},
        pairs={"crop": [16, 16, 16], "points": 16}, iterations=2, batch_size=2, fine_top=20,
        fine_negatives=10, warmup_iterations=0)
    config["anatomy"]["evaluate"]["pairs"] = 4
    path = tmp_path / "anatomy.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake("results/anatomy/matching.csv", "--cores", "2", "--directory", str(tmp_path),
                       "--snakefile", str(REPO_ROOT / "Snakefile"), "--configfile", str(path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    cases = sorted(p.stem for p in (tmp_path / "results/anatomy/embeddings").glob("*.npz"))
    assert len(cases) == 3
    from alice.anatomy.learned import load_embeddings
    from alice.data.preprocess import load_case

    for case in cases:
        _, _, meta = load_embeddings(tmp_path / f"results/anatomy/embeddings/{case}.npz")
        _, _, anatomy = load_case(tmp_path / "results/anatomy/data", case)
        _, _, pool = load_case(tmp_path / "results/data/flare22_pool", case)
        assert anatomy["cached"]["spacing"] == pytest.approx([12.0, 12.0, 12.0])
        assert pool["cached"]["spacing"] == pytest.approx([8.0, 8.0, 8.0])
        assert meta["shape"] == anatomy["cached"]["shape"] and meta["affine"] == anatomy["cached"]["affine"]
    summary = (tmp_path / "results/anatomy/matching.csv").read_text().splitlines()
    assert summary[0].startswith("matcher,n,") and summary[1].startswith("sam,")
    assert int(summary[1].split(",")[1]) > 0  # landmarks matched through both caches' affines
