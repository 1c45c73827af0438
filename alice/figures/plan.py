"""Which segmentation figures the DAG draws: one per (dataset, backbone) that the main method
tables reproduce — Table 1 (FLARE22, UNETR / Swin UNETR / nnFormer columns) and Table 3 (BTCV
offline, nnFormer or `reproduce.substitute.backbone`) — with the methods of their reproduced rows,
in the table's row order. The ablation tables' variants are left out: Fig. 4 and Fig. 7 of the
paper compare methods, not ablations; so is nnU-Net, which nnunetv2 trains and predicts with its
own files (no fine-tuning log or saved predictions of the harness's)."""

from __future__ import annotations

import shlex

from alice.downstream.networks import get_backbone
from alice.errors import ConfigError
from alice.tables.spec import cell_runs, load_spec

FIGURE_TABLES = ("table1", "table3")


def short_label(label: str) -> str:
    """A table row's label without its parenthesised remark: 'Rand. init. (harness baseline)' ->
    'Rand. init.'."""
    return label.split(" (")[0].strip()


def segmentation_figures(settings: dict) -> dict[tuple[str, str], list[dict]]:
    """{(dataset, backbone): [{"label", "run", "folds", "dirs"}, ...]}; `settings` is
    `alice.tables.spec.table_settings(config)`. "dirs" are the runs' fold folders
    (results/finetune/{dataset}/{run}/{backbone}/fold{k}), one per fold the table uses."""
    figures: dict[tuple[str, str], list[dict]] = {}
    for table in FIGURE_TABLES:
        spec = load_spec(table)
        if spec.get("task", "segmentation") != "segmentation":
            continue
        for row in spec["rows"]:
            for run in cell_runs(spec, row, settings).values():
                if not get_backbone(run["backbone"]).build_by_harness:
                    continue
                entries = figures.setdefault((run["dataset"], run["backbone"]), [])
                if any(e["run"] == run["run"] for e in entries):
                    continue  # a row's DSC and NSD columns share the run
                entries.append({
                    "label": short_label(row["label"]), "run": run["run"], "folds": run["folds"],
                    "dirs": [path.rsplit("/", 1)[0] for path in run["paths"]],
                })
    return figures


def runs_of(figures: dict, dataset: str, backbone: str) -> list[dict]:
    """The methods of one (dataset, backbone) figure; asking for a figure no reproduced cell
    makes is a ConfigError naming the ones that exist."""
    if (dataset, backbone) not in figures:
        known = ", ".join(f"{d}_{b}" for d, b in figures) or "none"
        raise ConfigError("reproduce", f"no reproduced cell of {', '.join(FIGURE_TABLES)} "
                          f"fine-tunes {backbone} on {dataset} (figures exist for: {known})")
    return figures[(dataset, backbone)]


def figure_targets(figures: dict) -> list[str]:
    """Every overlay and fine-tuning-curve figure of the plan (the DAG's targets)."""
    return [f"results/figures/{kind}_{dataset}_{backbone}.png"
            for dataset, backbone in figures for kind in ("overlays", "finetune")]


def overlay_metrics(runs: list[dict]) -> list[str]:
    """metrics.json of each method's first fold: FLARE22's fold models all predict the same offline
    test cases; BTCV's fold 0 predicts its own held-out cases."""
    return [f"{run['dirs'][0]}/metrics.json" for run in runs]


def overlay_args(runs: list[dict]) -> str:
    """`alice figure overlays` options: --run LABEL=DIR per method, shell-quoted."""
    return " ".join(f"--run {shlex.quote(run['label'] + '=' + run['dirs'][0])}" for run in runs)


def finetune_logs(runs: list[dict]) -> list[str]:
    """log.csv of every fold of every method."""
    return [f"{d}/log.csv" for run in runs for d in run["dirs"]]


def finetune_log_args(runs: list[dict]) -> str:
    """`alice figure finetune` options: --log LABEL=LOG per fold and method, shell-quoted."""
    return " ".join(f"--log {shlex.quote(run['label'] + '=' + d + '/log.csv')}"
                    for run in runs for d in run["dirs"])
