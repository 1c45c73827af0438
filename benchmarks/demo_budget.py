"""The demo's cost, measured: CPU-minutes per rule family, the wall time on N cores, the critical
path, and the cost one more method adds under the fold policy.

    python benchmarks/demo_budget.py [TARGET ...] [--config config/config.yaml] [--cores 2 ...]
        [--directory .] [--remaining] [--method NAME] [--markdown | --json]

Jobs. Snakemake's own dry run of the targets (default: the default target), every job as if from
scratch (`snakemake -n -F`; `--remaining`: only the jobs that still need to run), read from its
listing: each job's rule, wildcards, threads, priority, input and output files; a job depends on
the jobs that write its inputs. The pool's `folds` checkpoint hides the jobs behind it while its
folds.json does not exist (or is forced to rerun): the learned matcher's training, one
`anatomy_embed` job per pool volume and, when nothing listed needs it directly, the matcher's
cache (`anatomy_prepare`). They are added from the config as benchmarks/paper_protocol.py adds
them (the volumes' ids from the pool's folds.json when it exists), and the jobs whose input the
dry run shows as `<TBD>` (pretraining, the matcher's evaluation) wait for them.

Costs. Every rule writes a Snakemake `benchmark:` file, results/benchmarks/{rule}/<its output's
wildcards>.tsv (results/benchmarks/{rule}.tsv for a rule without wildcards; the paths mirror the
logs'). A job's cost is the CPU time of its own last run (`cpu_time`, or the wall-clock `s` where
Snakemake took no sample: a job under 0.5 s); a job never measured gets the median of the measured
jobs of its rule with the same cost-determining wildcards (COST_KEYS: fine-tuning and scoring per
(dataset, backbone), pretraining per encoder, ...); one with no such measurement counts 0 and is
named in the output. Snakemake samples a job twice a second for its first 15 s, then every 30 s,
and not at its end, so `cpu_time` lacks up to the last 30 s: it is scaled by s / the time of the
last sample (`last_sample`). A file holds the job's last run, under the settings it had then.

Wall time. Snakemake's list scheduling simulated over the dependencies on `--cores` cores, plus
Snakemake's own CPU (SCHEDULER_CPU_S a job, measured; `--scheduler-cpu-s`) spread over the cores: a job
holds min(threads, cores) cores for cost / that many seconds; whenever cores free up, the ready
jobs start by `priority` (the critical chain's, workflow/rules/common.smk), ties broken by the
longest chain still behind the job (Snakemake breaks them by input size, unknown before the files
exist), a job that does not fit leaving its cores to smaller ones. The critical path is the
longest chain of job times through the DAG: no number of cores finishes sooner.

Per method. The CPU-minutes of every job a reproduced method's runs own (jobs whose `method`
wildcard is the method or one of its variant run ids): what each method adds to the target.

One more method. A method not reproduced yet (`--method NAME`; none by default) is added to
`reproduce.methods`; `alice.tables.spec.cell_runs` over every table spec, which applies the
config's fold policy (`reproduce.folds`), gives the fine-tuning cells its rows add: their
`finetune` + `evaluate` jobs (MosMed: `finetune_classifier`, one job per split for every label
fraction), its BTCV submission if it has a Table 3 offline cell, and one pretraining run per
encoder the cells' backbones use (under the default target also every reproduced encoder: `all`
draws each reproduced method's pretraining curves). Their costs are the medians above, and the
wall time is simulated again with them in the DAG.
"""


import argparse
import copy
import csv
import heapq
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from snakemake.benchmark import BENCHMARK_INTERVAL, BENCHMARK_INTERVAL_SHORT

from alice import config as cfg
from alice.tables.spec import cell_runs, load_spec, table_ids, table_settings

REPO = Path(__file__).resolve().parents[1]


def _paper_protocol():
    """benchmarks/paper_protocol.py (not a package): its dry-run job regex, pool size and table
    printer."""
    spec = importlib.util.spec_from_file_location("paper_protocol", REPO / "benchmarks" / "paper_protocol.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pp = _paper_protocol()

POOL = "flare22_pool"
POOL_FOLDS = f"results/data/{POOL}/folds.json"   # the checkpoint output `<TBD>` inputs wait for
ANATOMY_CACHE = "results/anatomy/data/manifest.json"
ANATOMY_MODEL = "results/anatomy/model/model.pt"
TBD = "<TBD>"
TARGET_RULES = {"all"}  # aggregate targets: no command, no cost

# rule families, in the order printed; any other rule is a table, a figure or a summary
FAMILIES = {
    "data": ("phantom", "prepare", "folds"),
    "matcher": ("anatomy_prepare", "anatomy_train", "anatomy_embed", "anatomy_evaluate"),
    "pretraining": ("pretrain",),
    "fine-tuning + scoring": ("finetune", "evaluate"),
    "classification": ("finetune_classifier",),
    "low-label": ("finetune_low_label",),
    "online test": ("btcv_online",),
}
OTHER_FAMILY = "tables + figures"
# Snakemake's own CPU a job (its scheduling, DAG updates, benchmark sampling), which the benchmark
# files do not hold: the default target from empty in a clean clone on 2 cores (330 jobs) took
# 195.2 CPU-min by /usr/bin/time (Snakemake and every job) against 174.6 CPU-min in its jobs'
# benchmark files: 20.6 CPU-min, 3.7 CPU-s a job.
SCHEDULER_CPU_S = 3.7

# the wildcards that set a job's cost (others, e.g. the method or the fold, do not); a rule not
# listed has one cost (anatomy_embed: every pool volume has the same size)
COST_KEYS = {
    "phantom": ("release",), "prepare": ("dataset",), "folds": ("dataset",),
    "pretrain": ("encoder",), "finetune": ("dataset", "backbone"), "evaluate": ("dataset", "backbone"),
    "finetune_classifier": ("backbone",), "finetune_low_label": ("backbone",),
    "overlays": ("dataset", "backbone"), "finetune_curves": ("dataset", "backbone"),
}


def family_of(rule: str) -> str:
    return next((f for f, rules in FAMILIES.items() if rule in rules), OTHER_FAMILY)


@dataclass
class Job:
    rule: str
    wildcards: dict = field(default_factory=dict)
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    priority: float = 0.0
    threads: int = 1
    added: str = ""  # why a job the dry run did not list is here ("checkpoint", "method")

    @property
    def key(self) -> tuple:
        return self.rule, tuple(sorted(self.wildcards.items()))

    @property
    def label(self) -> str:
        wc = ",".join(f"{k}={v}" for k, v in self.wildcards.items())
        return f"{self.rule}[{wc}]" if wc else self.rule


# ------------------------------------------------------------------------------ the job list
def run_dry_run(targets: list[str], configfile: Path, directory: Path, cores: int,
                forceall: bool) -> str:
    """Snakemake's dry-run listing (stdout + stderr) of `targets` (none: the default target)."""
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    # targets first: --configfile takes several values
    # --rerun-incomplete: a run stopped half-way leaves files marked incomplete, which a dry run
    # would otherwise refuse to plan over
    command = [sys.executable, "-m", "snakemake", *targets, "-n", "--nolock", "--rerun-incomplete",
               "--cores", str(cores),
               "--snakefile", str(REPO / "Snakefile"), "--directory", str(directory),
               "--configfile", str(configfile)] + (["-F"] if forceall else [])
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"dry run of {targets or ['<default target>']} failed:\n"
                 f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout + "\n" + result.stderr


def parse_jobs(listing: str) -> list[Job]:
    """The jobs of a dry-run listing (`rule NAME:` blocks of `key: value` lines)."""
    jobs: list[Job] = []
    for raw in listing.splitlines():
        line = raw.strip()
        match = pp.JOB.match(line)
        if match:
            jobs.append(Job(match[1]))
            continue
        if not jobs or not raw.startswith("    "):
            continue
        key, _, value = line.partition(": ")
        job = jobs[-1]
        if key in ("input", "output"):
            setattr(job, key + "s", [f.strip() for f in value.split(", ") if f.strip()])
        elif key == "wildcards":
            job.wildcards = dict(kv.split("=", 1) for kv in value.split(", "))
        elif key == "priority":
            job.priority = float("inf") if value == "highest" else float(value)
        elif key == "threads":
            job.threads = int(value)
    return [job for job in jobs if job.rule not in TARGET_RULES]


def pool_volumes(config: dict, directory: Path) -> tuple[list[str], list[str]]:
    """(train, val) case ids of the pool: from its folds.json when it exists, else placeholders of
    the config's pool size (paper_protocol.pool_train_size: alice.data.folds' split)."""
    path = directory / POOL_FOLDS
    if path.exists():
        splits = json.loads(path.read_text())
        return list(splits["train"]), list(splits.get("val", []))
    n = config["phantom"]["counts"]["flare22"]["unlabeled"]
    n_train = pp.pool_train_size(config)
    return ([f"pool-train-{i}" for i in range(1, n_train + 1)],
            [f"pool-val-{i}" for i in range(1, n - n_train + 1)])


def add_checkpoint_jobs(jobs: list[Job], config: dict, directory: Path) -> list[Job]:
    """Add the jobs the pool's `folds` checkpoint hides (see the module docstring) and resolve
    every `<TBD>` input into the pool's folds.json and the embeddings behind it."""
    gated = [job for job in jobs if TBD in job.inputs]
    if not gated:
        return jobs
    outputs = {f for job in jobs for f in job.outputs}
    added: list[Job] = []
    embeddings: dict[str, list[str]] = {"train": [], "all": []}
    if not any(job.rule == "anatomy_embed" for job in jobs):
        train, val = pool_volumes(config, directory)
        every = any(job.rule != "pretrain" for job in gated)  # the matcher's evaluation: every volume
        priority = max((job.priority for job in jobs if job.wildcards.get("dataset") == POOL), default=0.0)
        if ANATOMY_CACHE not in outputs:
            release = cfg.RELEASE_OF[POOL]
            root = [] if cfg.dataset_root(config, POOL) else [f"results/phantoms/{release}"]
            added.append(Job("anatomy_prepare", {}, root, [ANATOMY_CACHE], priority, 1, "checkpoint"))
        if ANATOMY_MODEL not in outputs:
            added.append(Job("anatomy_train", {}, [POOL_FOLDS, ANATOMY_CACHE],
                             [ANATOMY_MODEL, "results/anatomy/model/log.csv"], priority,
                             int(config["anatomy"].get("threads", 1)), "checkpoint"))
        for case in train + (val if every else []):
            path = f"results/anatomy/embeddings/{case}.npz"
            added.append(Job("anatomy_embed", {"case": case}, [ANATOMY_MODEL, POOL_FOLDS, ANATOMY_CACHE],
                             [path], priority, 1, "checkpoint"))
            embeddings["all"].append(path)
            if case in train:
                embeddings["train"].append(path)
    for job in gated:
        behind = embeddings["train"] if job.rule == "pretrain" else embeddings["all"]
        at = job.inputs.index(TBD)
        job.inputs[at:at + 1] = [POOL_FOLDS, *behind]
    return jobs + added


def dependencies(jobs: list[Job]) -> list[set[int]]:
    """Per job, the jobs writing its inputs (an output folder counts for every file under it)."""
    producer = {f.rstrip("/"): i for i, job in enumerate(jobs) for f in job.outputs}
    deps = []
    for i, job in enumerate(jobs):
        found = set()
        for f in job.inputs:
            path = f.rstrip("/")
            while path and path not in producer:
                path = path.rpartition("/")[0]
            if path:
                found.add(producer[path])
        deps.append(found - {i})
    return deps


# -------------------------------------------------------------------------------- measurements
def benchmark_patterns(rules_dir: Path = REPO / "workflow" / "rules") -> dict[str, str]:
    """{rule: its `benchmark:` path pattern}, read from the rule files."""
    patterns = {}
    for path in sorted(rules_dir.glob("*.smk")):
        text = path.read_text()
        heads = list(re.finditer(r"^(?:rule|checkpoint) (\w+):", text, re.M))
        for head, nxt in zip(heads, heads[1:] + [None]):
            body = text[head.end(): nxt.start() if nxt else len(text)]
            found = re.search(r'^\s+benchmark:\s*\n\s+"([^"]+)"', body, re.M)
            if found:
                patterns[head[1]] = found[1]
    return patterns


def pattern_regex(pattern: str) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", pattern)
    return re.compile("".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>[^/]+)"
                              for i, p in enumerate(parts)) + "$")


def last_sample(seconds: float) -> float:
    """When Snakemake's benchmark took its last sample of a job that ran `seconds`: every
    BENCHMARK_INTERVAL_SHORT s for the first BENCHMARK_INTERVAL of them, then every
    BENCHMARK_INTERVAL s (snakemake/benchmark.py), none at the end."""
    short = BENCHMARK_INTERVAL * BENCHMARK_INTERVAL_SHORT
    if seconds <= short:
        return seconds
    return short + BENCHMARK_INTERVAL * ((seconds - short) // BENCHMARK_INTERVAL)


def read_benchmark(path: Path) -> dict | None:
    """{"cpu_s", "wall_s", "max_rss_mb", "from"} of a Snakemake benchmark TSV (the mean of its
    repeats), or None when it has no row. `cpu_time` is the job's CPU time at the last sample, so
    it is scaled by s / that sample's time: the CPU rate measured, over the unsampled tail too."""
    with path.open() as f:
        rows = list(csv.DictReader(f, delimiter="\t"))

    def number(value):
        try:
            return float(value)
        except (TypeError, ValueError):
            return None

    cpu, wall, rss, fallback = [], [], [], False
    for row in rows:
        s, c = number(row.get("s")), number(row.get("cpu_time"))
        if s is None:
            continue
        wall.append(s)
        fallback |= not c
        cpu.append(c * s / last_sample(s) if c else s)
        if number(row.get("max_rss")) is not None:
            rss.append(number(row["max_rss"]))
    if not cpu:
        return None
    return {"cpu_s": statistics.fmean(cpu), "wall_s": statistics.fmean(wall),
            "max_rss_mb": max(rss) if rss else None, "from": "s" if fallback else "cpu_time"}


def measurements(directory: Path, patterns: dict[str, str]) -> dict[tuple, dict]:
    """{job key: benchmark} of every TSV under results/benchmarks that matches a rule's pattern."""
    regexes = {rule: pattern_regex(p) for rule, p in patterns.items()}
    found = {}
    for path in sorted((directory / "results" / "benchmarks").rglob("*.tsv")):
        rel = path.relative_to(directory).as_posix()
        for rule, regex in regexes.items():
            match = regex.match(rel)
            if match:
                record = read_benchmark(path)
                if record:
                    found[Job(rule, match.groupdict()).key] = {**record, "path": rel}
                break
    return found


def cost_group(job: Job) -> tuple:
    return job.rule, tuple((k, job.wildcards.get(k)) for k in COST_KEYS.get(job.rule, ()))


def costs(jobs: list[Job], measured: dict[tuple, dict], patterns: dict[str, str]) -> list[dict]:
    """Per job: {"cpu_s", "source": measured | median | none | no benchmark, "n" (measurements
    behind a median), "max_rss_mb"}."""
    groups = defaultdict(list)
    for (rule, wildcards), record in measured.items():
        groups[cost_group(Job(rule, dict(wildcards)))].append(record)
    out = []
    for job in jobs:
        record = measured.get(job.key)
        if job.rule not in patterns:
            out.append({"cpu_s": 0.0, "source": "no benchmark", "n": 0, "max_rss_mb": None})
        elif record:
            out.append({"cpu_s": record["cpu_s"], "source": "measured", "n": 1,
                        "max_rss_mb": record["max_rss_mb"]})
        elif groups.get(cost_group(job)):
            group = groups[cost_group(job)]
            out.append({"cpu_s": statistics.median(r["cpu_s"] for r in group), "source": "median",
                        "n": len(group), "max_rss_mb": max((r["max_rss_mb"] or 0) for r in group) or None})
        else:
            out.append({"cpu_s": 0.0, "source": "none", "n": 0, "max_rss_mb": None})
    return out


# ------------------------------------------------------------------------------- scheduling
def _topological(deps: list[set[int]]) -> list[int]:
    children = [[] for _ in deps]
    waiting = [len(d) for d in deps]
    for i, d in enumerate(deps):
        for p in d:
            children[p].append(i)
    order = [i for i, w in enumerate(waiting) if w == 0]
    for i in order:
        for c in children[i]:
            waiting[c] -= 1
            if waiting[c] == 0:
                order.append(c)
    if len(order) != len(deps):
        raise ValueError("the job graph has a cycle")
    return order


def durations(jobs: list[Job], cpu_s: list[float], cores: int) -> list[float]:
    """Seconds each job holds its cores: its CPU time over the threads it gets."""
    return [c / min(job.threads, cores) for job, c in zip(jobs, cpu_s)]


def critical_path(deps: list[set[int]], duration: list[float]) -> tuple[float, list[int]]:
    """The longest chain of job times through the DAG: (seconds, its jobs in order)."""
    finish, before = [0.0] * len(deps), [None] * len(deps)
    for i in _topological(deps):
        if deps[i]:
            before[i] = max(deps[i], key=lambda p: finish[p])
            finish[i] = finish[before[i]]
        finish[i] += duration[i]
    if not deps:
        return 0.0, []
    i = max(range(len(deps)), key=finish.__getitem__)
    total, chain = finish[i], []
    while i is not None:
        chain.append(i)
        i = before[i]
    return total, chain[::-1]


def simulate(jobs: list[Job], deps: list[set[int]], duration: list[float], cores: int) -> float:
    """Wall seconds of Snakemake's list scheduling on `cores` cores (see the module docstring)."""
    order = _topological(deps)
    children = [[] for _ in deps]
    for i, d in enumerate(deps):
        for p in d:
            children[p].append(i)
    tail = [0.0] * len(deps)  # the longest chain from a job to the end, its own time included
    for i in reversed(order):
        tail[i] = duration[i] + max((tail[c] for c in children[i]), default=0.0)
    waiting = [len(d) for d in deps]
    ready = [i for i, w in enumerate(waiting) if w == 0]
    running: list[tuple[float, int]] = []
    free, now, done = cores, 0.0, 0
    while done < len(jobs):
        ready.sort(key=lambda i: (-jobs[i].priority, -tail[i], i))
        waiting_room = []
        for i in ready:
            need = min(jobs[i].threads, cores)
            if need <= free:
                free -= need
                heapq.heappush(running, (now + duration[i], i))
            else:
                waiting_room.append(i)
        ready = waiting_room
        now = running[0][0]
        while running and running[0][0] <= now:
            _, i = heapq.heappop(running)
            free += min(jobs[i].threads, cores)
            done += 1
            for c in children[i]:
                waiting[c] -= 1
                if waiting[c] == 0:
                    ready.append(c)
    return now


# ---------------------------------------------------------------------------- one more method
def _cells(settings: dict) -> tuple[set[tuple], set[str]]:
    """(every (dataset, run, backbone, fold) a table cell fine-tunes, the methods with a Table 3
    cell) under table settings `settings`."""
    runs, online = set(), set()
    for table in table_ids():
        spec = load_spec(table)
        if spec.get("task") == "settings":  # Table 8 reads the other tables' runs
            continue
        for row in spec["rows"]:
            cells = cell_runs(spec, row, settings)
            if table == "table3" and cells:
                online.add(row["method"])
            for cell in cells.values():
                runs.update((cell["dataset"], cell["run"], cell["backbone"], k) for k in cell["folds"])
    return runs, online


def method_jobs(config: dict, method: str, jobs: list[Job], curves: bool) -> list[Job]:
    """The jobs that adding `method` to `reproduce.methods` adds to `jobs` (module docstring)."""
    from alice.tables.online import online_models

    if method in config["reproduce"]["methods"]:
        sys.exit(f"--method {method}: already in reproduce.methods; name one that is not")
    extended = copy.deepcopy(config)
    extended["reproduce"]["methods"] = list(config["reproduce"]["methods"]) + [method]
    before, online_before = _cells(table_settings(config))
    after, online_after = _cells(table_settings(extended))
    like = {}  # threads and priority of the rule's jobs in the DAG
    for job in jobs:
        like.setdefault(job.rule, job)

    def new(rule, wildcards, inputs, outputs):
        model = like.get(rule)
        return Job(rule, wildcards, inputs, outputs, model.priority if model else 0.0,
                   model.threads if model else 1, "method")

    def checkpoint(run, encoder):
        return f"results/pretrain/{run}/{encoder}/checkpoint.pt"

    pretrain_inputs = like["pretrain"].inputs if "pretrain" in like else [POOL_FOLDS]
    added: list[Job] = []
    pretraining = set()
    for dataset, run, backbone, fold in sorted(after - before):
        encoder = cfg.backbone_encoder(backbone)
        init = [checkpoint(run, encoder)] if encoder else []
        if encoder:
            pretraining.add((run, encoder))
        folds = f"results/data/{dataset}/folds.json"
        out = f"results/finetune/{dataset}/{run}/{backbone}/fold{fold}"
        wildcards = {"method": run, "backbone": backbone, "fold": str(fold)}
        if dataset == "mosmed":
            added.append(new("finetune_classifier", wildcards, [folds, *init], [f"{out}/"]))
        else:
            wildcards = {"dataset": dataset, **wildcards}
            added.append(new("finetune", wildcards, [folds, *init], [f"{out}/model.pt"]))
            added.append(new("evaluate", wildcards, [f"{out}/model.pt", folds], [f"{out}/metrics.json"]))
    if curves:  # `all` draws the pretraining curves of every reproduced method on each reproduced encoder it declares
        from alice.ssl.catalog import method_info

        info = method_info(method)
        encoders = ({cfg.backbone_encoder(b) for b in config["reproduce"]["backbones"]}
                    & set(info.encoders if info else ()))
        for encoder in sorted(encoders):
            pretraining.add((method, encoder))
            added.append(new("pretrain_curves", {"method": method, "encoder": encoder},
                             [checkpoint(method, encoder)], [f"results/figures/pretrain_{method}_{encoder}.png"]))
    for run, encoder in sorted(pretraining):
        added.append(new("pretrain", {"method": run, "encoder": encoder}, list(pretrain_inputs),
                         [checkpoint(run, encoder)]))
    for online in sorted(online_after - online_before):
        added.append(new("btcv_online", {"method": online},
                         online_models(extended, online) + ["results/data/btcv/folds.json"],
                         [f"results/btcv_online/{online}"]))
    listed = {job.key for job in jobs}
    return [job for job in added if job.key not in listed]


# ------------------------------------------------------------------------------------ report
def budget(targets: list[str], configfile: Path, directory: Path, cores: list[int],
           remaining: bool = False, method: str | None = "ibot",
           scheduler_cpu_s: float = SCHEDULER_CPU_S) -> dict:
    """Everything the script prints, as one JSON-able dict."""
    config = cfg.load_config(configfile)
    listing = run_dry_run(targets, configfile, directory, max(cores), forceall=not remaining)
    listed = parse_jobs(listing)
    jobs = add_checkpoint_jobs(listed, config, directory)
    patterns = benchmark_patterns()
    measured = measurements(directory, patterns)

    def model(jobs):
        deps = dependencies(jobs)
        cost = costs(jobs, measured, patterns)
        cpu = [c["cpu_s"] for c in cost]
        # Snakemake's own CPU competes with the jobs for the cores (module docstring)
        walls = {n: simulate(jobs, deps, durations(jobs, cpu, n), n) + len(jobs) * scheduler_cpu_s / n
                 for n in cores}
        path_s, chain = critical_path(deps, durations(jobs, cpu, max(cores)))
        return deps, cost, walls, path_s, chain

    deps, cost, walls, path_s, chain = model(jobs)
    rules = {}
    for job, c in zip(jobs, cost):
        r = rules.setdefault(job.rule, {"family": family_of(job.rule), "jobs": 0, "measured": 0,
                                        "median": 0, "none": 0, "no benchmark": 0, "cpu_min": 0.0,
                                        "max_rss_mb": None})
        r["jobs"] += 1
        r[c["source"]] += 1
        r["cpu_min"] += c["cpu_s"] / 60
        if c["max_rss_mb"] and c["source"] == "measured":
            r["max_rss_mb"] = max(r["max_rss_mb"] or 0, c["max_rss_mb"])
    order = [r for rs in FAMILIES.values() for r in rs]
    rules = dict(sorted(rules.items(), key=lambda kv: (order.index(kv[0]) if kv[0] in order else len(order), kv[0])))
    families = defaultdict(float)
    for r in rules.values():
        families[r["family"]] += r["cpu_min"]

    def grouped(source):
        """[{"rule", "wildcards" (the cost wildcards), "jobs", "cpu_min", "n" (measurements behind
        the median)}] of the jobs whose cost came from `source`."""
        out = {}
        for job, c in zip(jobs, cost):
            if c["source"] == source:
                rule, keys = cost_group(job)
                g = out.setdefault((rule, keys), {"rule": rule, "wildcards": dict(keys), "jobs": 0,
                                                  "cpu_min": 0.0, "n": c["n"]})
                g["jobs"] += 1
                g["cpu_min"] += c["cpu_s"] / 60
        return [out[k] for k in sorted(out)]

    report = {
        "targets": targets or ["<default target>"], "config": str(configfile), "directory": str(directory),
        "mode": "remaining" if remaining else "from scratch",
        "jobs": len(jobs), "added_behind_checkpoint": sum(j.added == "checkpoint" for j in jobs),
        "benchmark_files": len(measured),
        "rules": rules, "families_cpu_min": dict(families),
        "total_cpu_min": sum(c["cpu_s"] for c in cost) / 60,
        "scheduler_cpu_min": len(jobs) * scheduler_cpu_s / 60,
        "wall_min": {str(n): w / 60 for n, w in walls.items()},
        "critical_path_min": path_s / 60,
        "critical_path": [{"job": jobs[i].label, "min": cost[i]["cpu_s"] / 60 / min(jobs[i].threads, max(cores)),
                           "source": cost[i]["source"]} for i in chain],
        "estimated": grouped("median"), "unmeasured": grouped("none"),
        "not_benchmarked_rules": sorted({j.rule for j, c in zip(jobs, cost) if c["source"] == "no benchmark"}),
        "per_method_cpu_min": per_method(jobs, cost),
    }
    if method:
        curves = not targets or "all" in targets
        extra = method_jobs(config, method, jobs, curves)
        _, extra_cost, extra_walls, _, _ = model(jobs + extra)
        extra_cost = extra_cost[len(jobs):]
        per_rule = Counter(j.rule for j in extra)
        report["one_more_method"] = {
            "method": method, "fold_policy": config["reproduce"].get("folds"),
            "jobs": len(extra), "per_rule": dict(per_rule),
            "pretraining": sorted(f"{j.wildcards['method']}/{j.wildcards['encoder']}" for j in extra if j.rule == "pretrain"),
            "cpu_min": sum(c["cpu_s"] for c in extra_cost) / 60,
            "cpu_min_per_rule": {r: sum(c["cpu_s"] for j, c in zip(extra, extra_cost) if j.rule == r) / 60 for r in per_rule},
            "unmeasured": [{"rule": rule, "wildcards": dict(keys), "jobs": n} for (rule, keys), n in sorted(Counter(
                cost_group(j) for j, c in zip(extra, extra_cost) if c["source"] in ("none", "no benchmark")).items())],
            "wall_min": {str(n): w / 60 for n, w in extra_walls.items()},
        }
    return report


def per_method(jobs: list["Job"], cost: list[dict]) -> dict[str, float]:
    """CPU-minutes of the jobs each method's runs own: those whose `method` wildcard is the method
    or one of its variant run ids (`alice__casa-false` counts for alice), largest first."""
    out: dict[str, float] = defaultdict(float)
    for job, c in zip(jobs, cost):
        run = job.wildcards.get("method")
        if run:
            out[run.split("__")[0]] += c["cpu_s"] / 60
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _minutes(x: float) -> str:
    return f"{x:,.1f}"


def _by_rule(groups: list[dict], median: bool = False) -> str:
    """'rule: k=v k=v x3, ...; rule2 x5' from cost groups, one entry per rule."""
    rules = defaultdict(list)
    for g in groups:
        what = " ".join(f"{k}={v}" for k, v in g["wildcards"].items())
        count = f"x{g['jobs']}" + (f" at {g['cpu_min'] / g['jobs']:.2f} CPU-min (n={g['n']})" if median else "")
        rules[g["rule"]].append(f"{what} {count}" if what else count)
    return "; ".join(f"{rule}: {', '.join(parts)}" if not parts[0].startswith("x") else f"{rule} {parts[0]}"
                     for rule, parts in rules.items())


def print_report(report: dict, markdown: bool) -> None:
    header = ["family", "rule", "jobs", "measured", "median", "none", "CPU-min", "min/job", "max RSS MB"]
    rows = []
    for rule, r in report["rules"].items():
        unmeasured = r["none"] + r["no benchmark"]
        rows.append([r["family"], rule, str(r["jobs"]), str(r["measured"]), str(r["median"]), str(unmeasured),
                     _minutes(r["cpu_min"]), f"{r['cpu_min'] / r['jobs']:.2f}",
                     f"{r['max_rss_mb']:,.0f}" if r["max_rss_mb"] else "-"])
    total = report["rules"].values()
    rows.append(["total", "", str(report["jobs"]), *(str(sum(r[k] for r in total)) for k in ("measured", "median")),
                 str(sum(r["none"] + r["no benchmark"] for r in total)), _minutes(report["total_cpu_min"]), "", ""])
    bullet = "- " if markdown else ""
    print(f"{bullet}targets {' '.join(report['targets'])}, config {report['config']}, {report['mode']}: "
          f"{report['jobs']} jobs ({report['added_behind_checkpoint']} behind the pool's folds checkpoint, "
          f"added from the config); {report['benchmark_files']} benchmark files under "
          f"{report['directory']}/results/benchmarks\n")
    pp.print_rows(header, rows, markdown)
    print()
    total = report["total_cpu_min"] or 1.0
    lines = ["CPU-minutes per family: " + ", ".join(
        f"{f} {_minutes(m)} ({100 * m / total:.0f} %)" for f, m in report["families_cpu_min"].items())]
    lines.append(f"total {_minutes(report['total_cpu_min'])} CPU-min in the jobs + "
                 f"{_minutes(report['scheduler_cpu_min'])} in Snakemake itself; wall time (list scheduling): " + ", ".join(
        f"{_minutes(w)} min on {n} core{'s' * (n != '1')}" for n, w in report["wall_min"].items()))
    chain = " > ".join(f"{step['job']} {step['min']:.1f}" for step in report["critical_path"])
    lines.append(f"critical path {_minutes(report['critical_path_min'])} min (no number of cores beats it): {chain}")
    if report["estimated"]:
        lines.append("estimated from the median of the measured jobs of the same rule and cost wildcards "
                     "(jobs x median of n measured): " + _by_rule(report["estimated"], median=True))
    if report["unmeasured"]:
        lines.append("no measurement at all (counted as 0, so the totals are a lower bound): "
                     + _by_rule(report["unmeasured"]))
    if report["not_benchmarked_rules"]:
        lines.append("rules without a benchmark: directive (counted as 0): " + ", ".join(report["not_benchmarked_rules"]))
    if report.get("per_method_cpu_min"):
        lines.append("CPU-minutes of each method's jobs (its pretraining, fine-tuning, scoring, curves): " + ", ".join(
            f"{m} {_minutes(v)}" for m, v in report["per_method_cpu_min"].items()))
    extra = report.get("one_more_method")
    if extra:
        walls = ", ".join(f"{_minutes(report['wall_min'][n])} -> {_minutes(w)} min on {n} core{'s' * (n != '1')}"
                          for n, w in extra["wall_min"].items())
        rules = ", ".join(f"{r} {n} ({_minutes(extra['cpu_min_per_rule'][r])} CPU-min)" for r, n in extra["per_rule"].items())
        lines.append(f"one more method under the fold policy {extra['fold_policy']} ('{extra['method']}' added to "
                     f"reproduce.methods): +{extra['jobs']} jobs: {rules}; pretraining runs "
                     f"{', '.join(extra['pretraining']) or 'none'}; +{_minutes(extra['cpu_min'])} CPU-min; wall {walls}"
                     + (f"; no measurement (counted as 0): {_by_rule(extra['unmeasured'])}" if extra["unmeasured"] else ""))
    for line in lines:
        print(f"- {line}" if markdown else line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", help="Snakemake targets (default: the default target)")
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--cores", type=int, nargs="+", default=[2], help="cores to simulate (one or more)")
    parser.add_argument("--directory", default=str(REPO),
                        help="Snakemake's working directory, whose results/benchmarks are read (default: the repository)")
    parser.add_argument("--remaining", action="store_true",
                        help="only the jobs that still need to run (default: every job, as from scratch)")
    parser.add_argument("--scheduler-cpu-s", type=float, default=SCHEDULER_CPU_S,
                        help="Snakemake's own CPU-seconds a job (default: measured, see SCHEDULER_CPU_S)")
    parser.add_argument("--method", default="",
                        help="a method not in reproduce.methods whose cost to add is reported "
                        "(default: none; every method of the paper's tables is reproduced)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--markdown", action="store_true", help="Markdown tables (for docs/demo.md)")
    output.add_argument("--json", action="store_true", help="one JSON object")
    args = parser.parse_args()
    if min(args.cores) < 1:
        parser.error("--cores must be at least 1")
    config = Path(args.config)
    if not config.exists() and (REPO / config).exists():  # relative to the repository, as in the other scripts
        config = REPO / config
    report = budget(args.targets, config.resolve(), Path(args.directory).resolve(),
                    sorted(set(args.cores)), args.remaining, args.method or None, args.scheduler_cpu_s)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print_report(report, args.markdown)


if __name__ == "__main__":
    main()
