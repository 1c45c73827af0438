# Shared helpers of the rules: config validation (the same schema and messages as the CLI)
# and the JSON settings each stage receives.

import json
from pathlib import Path
from types import SimpleNamespace

from alice import config as cfg
from alice.data.folds import label_fraction_dir, offline_test_split
from alice.tables.online import online_models
from alice.downstream.networks import BACKBONES
from alice.models.configs import ENCODERS
from alice.ssl.catalog import method_info, needs_matcher
from alice.tables.spec import cell_runs, cell_sources, find_row, load_spec, table_ids, table_settings

# Snakemake reads `configfile:` and `--configfile` with its own YAML loader, which resolves a
# duplicate key or an unquoted `yes` silently: each file is read once more with the harness's
# strict loader first. Then the schema fills defaults in place; a bad key stops the workflow with
# one line naming it.
try:
    for _path in workflow.configfiles:
        cfg.load_yaml(_path)
    cfg.validate_config(config)
except cfg.HarnessError as exc:
    raise WorkflowError(str(exc))

DATASETS = list(cfg.DATASETS)
RELEASES = sorted(set(cfg.RELEASE_OF.values()))

# The DAG's critical path is the unlabeled pool's data stage -> the learned matcher -> the pool's
# embeddings -> pretraining -> the pretrained runs' fine-tuning. Snakemake's `priority` does not
# propagate upstream, so every rule of the chain carries it; the data-stage rules only for the
# pool (and the release it is read from), so the labeled datasets and the Rand. init. folds that
# need none of the chain fill the other cores meanwhile.
CRITICAL_PRIORITY = 50
POOL = "flare22_pool"


def pool_priority(wildcards):
    """CRITICAL_PRIORITY for the pool's data-stage jobs (`prepare`/`folds` of the pool, the
    `phantom` of its release), 0 for the other datasets'."""
    if wildcards.get("dataset") == POOL or wildcards.get("release") == cfg.RELEASE_OF[POOL]:
        return CRITICAL_PRIORITY
    return 0


def as_json(obj):
    """A JSON string for a shell command (quote it with {params.x:q})."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def release_root(wildcards):
    """Inputs of `prepare`: the phantom folder when the dataset's root is null, else nothing
    (a real root is outside the DAG and is validated by `alice prepare` itself)."""
    if cfg.dataset_root(config, wildcards.dataset) is None:
        return f"results/phantoms/{cfg.RELEASE_OF[wildcards.dataset]}"
    return []


TABLES = table_ids()
ABLATION_TABLES = [t for t in TABLES if load_spec(t).get("ablation")]
# a pretraining run: a method, maybe with ablation switches (alice__casa-false, alice.ssl.variants)
RUN_PATTERN = r"[a-z0-9_]+(__[a-z0-9_]+-[a-z0-9_.\-]+)*"
ENCODER_PATTERN = "|".join(ENCODERS)
# the segmentation backbones the harness trains itself (nnunet: nnunetv2's own trainer, nnunet.smk)
SEGMENTATION_BACKBONES = "|".join(n for n, b in BACKBONES.items() if b.task == "segmentation" and b.build_by_harness)


def finetune_init(wildcards):
    """'scratch' for Rand. init., else the checkpoint of the pretraining run (a method or a
    variant run id) of the backbone's encoder (unetr: vit, swin_unetr: swin, nnformer: nnformer)."""
    if wildcards.method == "rand_init":
        return "scratch"
    encoder = cfg.backbone_encoder(wildcards.backbone)
    return f"results/pretrain/{wildcards.method}/{encoder}/checkpoint.pt"


def reproduced_encoders():
    """The encoders of the backbones whose table cells the DAG computes (nnunet has none)."""
    encoders = {cfg.backbone_encoder(b) for b in config["reproduce"]["backbones"]}
    return sorted(e for e in encoders if e)


def pretrain_figures():
    """The pretraining curves of every reproduced method on each reproduced encoder it declares."""
    encoders = reproduced_encoders()
    out = []
    for method in config["reproduce"]["methods"]:
        info = method_info(method)
        if info is not None:
            out += [f"results/figures/pretrain_{method}_{e}.png" for e in info.encoders if e in encoders]
    return out


def finetune_inputs(wildcards):
    init = finetune_init(wildcards)
    inputs = {"folds": f"results/data/{wildcards.dataset}/folds.json"}
    if init != "scratch":
        inputs["init"] = init
    return inputs


# MosMed classification: one job per (run, backbone, split) trains every label fraction (one
# process: its start-up, ~5 s of imports, costs more than a demo training)
LABEL_FRACTIONS = [float(f) for f in config["datasets"]["mosmed"]["label_fractions"]]
LABEL_DIRS = [label_fraction_dir(f) for f in LABEL_FRACTIONS]


def classifier_init(wildcards):
    """'scratch' for Rand. init., else the checkpoint of the pretraining run on the backbone's
    encoder (vit: vit, resnet3d: resnet3d)."""
    if wildcards.method == "rand_init":
        return "scratch"
    encoder = cfg.backbone_encoder(wildcards.backbone)
    return f"results/pretrain/{wildcards.method}/{encoder}/checkpoint.pt"


def classifier_inputs(wildcards):
    init = classifier_init(wildcards)
    inputs = {"folds": "results/data/mosmed/folds.json"}
    if init != "scratch":
        inputs["init"] = init
    return inputs


def row_inputs(wildcards):
    """The metrics files the row's enabled cells are computed from (none: all not reproduced)."""
    spec = load_spec(wildcards.table)
    sources = cell_sources(spec, find_row(spec, wildcards.row), table_settings(config))
    return sorted({path for paths in sources.values() for path in paths})


def online_model_files(wildcards):
    """The fine-tuned models behind a method's BTCV submission: those of its Table 3 offline cell,
    fold 0 alone or every fold (online_test.models)."""
    try:
        return online_models(config, wildcards.method)
    except cfg.ConfigError as exc:
        raise WorkflowError(str(exc))


def online_methods():
    """Methods whose Table 3 offline cell the DAG reproduces on a network the harness trains (and
    so can predict the test set with its models; nnU-Net's models are nnunetv2's own), once each."""
    spec = load_spec("table3")
    settings = table_settings(config)
    methods = []
    for row in spec["rows"]:
        runs = cell_runs(spec, row, settings).values()
        if (runs and all(BACKBONES[run["backbone"]].build_by_harness for run in runs)
                and row["method"] not in methods):
            methods.append(row["method"])
    return methods


def table_rows(wildcards):
    return [f"results/rows/{wildcards.table}/{row['row']}.csv"
            for row in load_spec(wildcards.table)["rows"]]


def pool_cases(split=None):
    """Case ids of the pool's folds.json (a checkpoint: known once `folds` has run)."""
    path = checkpoints.folds.get(dataset="flare22_pool").output[0]
    splits = json.loads(Path(path).read_text())
    if split:
        return list(splits[split])
    return sorted(set(splits["train"]) | set(splits.get("val", [])))


def pool_embeddings(wildcards):
    return [f"results/anatomy/embeddings/{case}.npz" for case in pool_cases()]


def phantom_truth(wildcards):
    """Landmark ground truth exists for the phantom only."""
    if cfg.dataset_root(config, "flare22") is not None:
        raise WorkflowError("the matching evaluation needs the phantom's landmark ground truth; "
                            "datasets.flare22.root is set to real data")
    return "results/phantoms/flare22"


def uses_learned_matcher(run):
    """Whether pretraining run `run` mines its crops with the learned matcher: its method declares
    matched crops, or a switch that turns them on and is on for this run, its variant or its
    config section (alice.ssl.catalog.needs_matcher), and pretrain.pairs.matcher is sam."""
    method_config = cfg.plain_method_config(config, run.split("__")[0])
    return (needs_matcher(run, method_config)
            and config["pretrain"].get("pairs", {}).get("matcher") == "sam")


def pretrain_inputs(wildcards):
    """The pool's splits, plus every train volume's anatomical embeddings when the run mines its
    crops with the learned matcher."""
    inputs = {"folds": "results/data/flare22_pool/folds.json"}
    if uses_learned_matcher(wildcards.method):
        inputs["embeddings"] = [f"results/anatomy/embeddings/{case}.npz"
                                for case in pool_cases("train")]
    return inputs


def anatomy_release(wildcards):
    """Inputs of `anatomy_prepare`: those of the pool's own `prepare` (its phantom or nothing)."""
    return release_root(SimpleNamespace(dataset="flare22_pool"))


def anatomy_cache(wildcards):
    """The anatomy stage's cache when the run mines its crops with the learned matcher. Listed
    apart from the embeddings, which wait for the pool's folds checkpoint, so that the DAG knows
    `anatomy_prepare` from the start and runs it beside the pool's own `prepare`."""
    if uses_learned_matcher(wildcards.method):
        return ["results/anatomy/data/manifest.json"]
    return []


# The low-label experiment (effect.smk)
EFFECT = config["pretraining_effect"]


def effect_runs():
    """The metrics files of every low-label run of the config."""
    return expand("results/pretraining_effect/{backbone}/{method}/labeled{labeled}/seed{seed}/metrics.json",
                  backbone=EFFECT["backbone"], method=EFFECT["methods"], labeled=EFFECT["labeled"],
                  seed=range(EFFECT["seeds"]))


def effect_inputs(wildcards):
    """The FLARE22 splits (the subsets are drawn from them), and the method's checkpoint."""
    init = finetune_init(wildcards)
    inputs = {"folds": "results/data/flare22/folds.json"}
    if init != "scratch":
        inputs["init"] = init
    return inputs
