# Figures of the fine-tuning stage, one per (dataset, backbone) that Table 1 (FLARE22) or Table 3
# (BTCV offline) reproduces, with the methods of their reproduced rows (alice.figures.plan):
# qualitative overlays like the paper's Fig. 4 / Fig. 7, and the fine-tuning curves of every fold.
# Both only read what `finetune` and `evaluate` wrote: a few seconds each.

from alice.figures import plan as figure_plan

SEGMENTATION_FIGURES = figure_plan.segmentation_figures(table_settings(config))
# results/figures/{overlays,finetune}_{dataset}_{backbone}.png of every planned figure
FIGURE_TARGETS = figure_plan.figure_targets(SEGMENTATION_FIGURES)


rule overlays:
    input:
        lambda w: figure_plan.overlay_metrics(
            figure_plan.runs_of(SEGMENTATION_FIGURES, w.dataset, w.backbone)),
    output:
        report("results/figures/overlays_{dataset}_{backbone}.png",
               caption="../report/overlays.rst", category="Figures",
               subcategory="Qualitative segmentation",
               labels={"figure": "overlays", "dataset": "{dataset}", "backbone": "{backbone}"}),
    wildcard_constraints:
        dataset="flare22|btcv",
        backbone=SEGMENTATION_BACKBONES,
    params:
        runs=lambda w: figure_plan.overlay_args(
            figure_plan.runs_of(SEGMENTATION_FIGURES, w.dataset, w.backbone)),
        # the first fold of the methods (the same for all: a table's cells share their folds)
        title=lambda w: "{} / {}, fold {}".format(
            w.dataset.upper(), w.backbone,
            figure_plan.runs_of(SEGMENTATION_FIGURES, w.dataset, w.backbone)[0]["folds"][0]),
    conda:
        "../../environment.yml"
    log:
        "results/logs/figures/overlays_{dataset}_{backbone}.log",
    benchmark:
        "results/benchmarks/overlays/{dataset}/{backbone}.tsv",
    shell:
        "alice figure overlays {params.runs} --data results/data/{wildcards.dataset} "
        "--out {output} --title {params.title:q} 2> {log}"


rule finetune_curves:
    input:
        lambda w: figure_plan.finetune_logs(
            figure_plan.runs_of(SEGMENTATION_FIGURES, w.dataset, w.backbone)),
    output:
        report("results/figures/finetune_{dataset}_{backbone}.png",
               caption="../report/finetune_curves.rst", category="Figures",
               subcategory="Fine-tuning curves",
               labels={"figure": "fine-tuning curves", "dataset": "{dataset}",
                       "backbone": "{backbone}"}),
    wildcard_constraints:
        dataset="flare22|btcv",
        backbone=SEGMENTATION_BACKBONES,
    params:
        logs=lambda w: figure_plan.finetune_log_args(
            figure_plan.runs_of(SEGMENTATION_FIGURES, w.dataset, w.backbone)),
        title=lambda w: f"{w.dataset.upper()} / {w.backbone} fine-tuning",
    conda:
        "../../environment.yml"
    log:
        "results/logs/figures/finetune_{dataset}_{backbone}.log",
    benchmark:
        "results/benchmarks/finetune_curves/{dataset}/{backbone}.tsv",
    shell:
        "alice figure finetune {params.logs} --out {output} --title {params.title:q} 2> {log}"
