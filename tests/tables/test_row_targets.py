"""Each paper row is its own target: `snakemake -n results/rows/tableN/<row>.csv` from an empty
folder schedules that row's pretraining, fine-tuning and evaluation jobs and no other row's.
`results/summary.csv` asks for every row of every table.

The dry runs use the body-box matcher: with the learned one, pretraining's inputs (the pool's
embeddings) are known only after the `folds` checkpoint has run, so a dry run from nothing
cannot list the pretraining jobs; which jobs a row needs does not depend on the matcher.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from alice import config as cfg
from alice.config import REPO_ROOT
from alice.tables.spec import cell_runs, find_row, load_spec, table_ids, table_settings

JOB = re.compile(r"^(?:local)?(?:rule|checkpoint) (\w+):$")


def dry_run(tmp_path: Path, *targets: str) -> list[tuple[str, dict]]:
    """(rule, wildcards) of every job a dry run of `targets` schedules."""
    config = yaml.safe_load((REPO_ROOT / "config" / "config.yaml").read_text())
    config["pretrain"]["pairs"]["matcher"] = "bbox"
    path = tmp_path / "bbox.yaml"
    path.write_text(yaml.safe_dump(config))
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", *targets, "-n", "--directory", str(tmp_path),
         "--snakefile", str(REPO_ROOT / "Snakefile"), "--configfile", str(path)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs, rule = [], None
    for line in result.stdout.splitlines():
        match = JOB.match(line.strip())
        if match:
            rule = match.group(1)
            jobs.append((rule, {}))
        elif line.strip().startswith("wildcards:") and rule:
            jobs[-1] = (rule, dict(kv.split("=", 1) for kv in line.split(":", 1)[1].strip().split(", ")))
    return jobs


def expected_jobs(table: str, row: str) -> dict[str, set]:
    """What a row needs, from its cells' runs: one pretraining per (run, encoder) (Rand. init.
    has none) and one fine-tuning + evaluation per (dataset, run, backbone, fold)."""
    spec = load_spec(table)
    runs = cell_runs(spec, find_row(spec, row), table_settings(cfg.load_config()))
    folds = {(r["dataset"], r["run"], r["backbone"], str(k)) for r in runs.values() for k in r["folds"]}
    pretrain = {(run, cfg.backbone_encoder(backbone)) for _, run, backbone, _ in folds if run != "rand_init"}
    return {"pretrain": pretrain, "finetune": folds, "evaluate": folds,
            "table_row": {(table, row)}}


def scheduled(jobs: list[tuple[str, dict]]) -> dict[str, set]:
    keys = {"pretrain": ("method", "encoder"), "finetune": ("dataset", "method", "backbone", "fold"),
            "evaluate": ("dataset", "method", "backbone", "fold"), "table_row": ("table", "row")}
    out: dict[str, set] = {rule: set() for rule in keys}
    for rule, wildcards in jobs:
        if rule in keys:
            out[rule].add(tuple(wildcards[k] for k in keys[rule]))
    return out


# Table 10: one variant run on FLARE22 and BTCV; Table 6: the row's two runs (with / without CASA,
# a switch per column); Table 11's baseline row: Rand. init., no pretraining; Table 1's Alice:
# a method row on three backbones (three encoders), every fold
ROWS = [("table10", "mask_0_25"), ("table6", "alice"), ("table11", "none"), ("table1", "alice")]


@pytest.mark.parametrize("table, row", ROWS)
def test_one_row_schedules_only_its_own_jobs(tmp_path, table, row):
    jobs = dry_run(tmp_path, f"results/rows/{table}/{row}.csv")
    expected = expected_jobs(table, row)
    assert expected["finetune"], "the row should have reproduced cells in the demo config"
    assert scheduled(jobs) == expected
    # nothing but the shared data stage besides them: no other row, no table, no other run
    others = {rule for rule, _ in jobs} - set(expected)
    assert others <= {"phantom", "prepare", "folds"}, others


def test_ablation_rows_need_disjoint_runs():
    """Two variant rows of one table share no pretraining or fine-tuning job (only the data
    stage), so regenerating one never reruns the other."""
    for table in ("table5", "table7", "table10", "table11"):
        rows = [r["row"] for r in load_spec(table)["rows"]]
        needs = {r: expected_jobs(table, r) for r in rows}
        variants = [r for r in rows if needs[r]["finetune"]
                    and all(run != "alice" for _, run, _, _ in needs[r]["finetune"])]
        for i, a in enumerate(variants):
            for b in variants[i + 1:]:
                assert not needs[a]["finetune"] & needs[b]["finetune"], (table, a, b)
                assert not needs[a]["pretrain"] & needs[b]["pretrain"], (table, a, b)


def test_summary_asks_for_every_row_of_every_table(tmp_path):
    jobs = dry_run(tmp_path, "results/summary.csv")
    rows = scheduled(jobs)["table_row"]
    assert rows == {(t, r["row"]) for t in table_ids() for r in load_spec(t)["rows"]}
    assert [rule for rule, _ in jobs].count("summary") == 1
    assert "table" not in {rule for rule, _ in jobs}  # rows, not rendered tables, feed it
