# Alice benchmark harness: the whole DAG.
#
#   snakemake --cores all                      # default target (see rule all)
#   snakemake --cores all results/data/flare22/folds.json
#   snakemake --configfile config/paper.yaml --workflow-profile workflow/profiles/slurm ...
#
# Every rule runs one `alice <stage>` command; the stage's settings are passed as JSON params,
# so a rule re-runs exactly when its own settings change.

from snakemake.utils import min_version

min_version("9.0")

configfile: "config/config.yaml"

report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/anatomy.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/nnunet.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/online.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/summary.smk"
include: "workflow/rules/effect.smk"


rule all:
    default_target: True
    input:
        # every table of the paper (cells outside `reproduce` say "not reproduced yet")
        expand("results/table{n}.tex", n=range(1, 12)),
        expand("results/btcv_online/{method}", method=online_methods()),
        FIGURE_TARGETS,
        "results/summary.csv",  # + summary_tests.csv and figures/summary.png
        # low-label runs, Alice vs Rand. init. (+ pretraining_effect_tests.csv, figures/pretraining_effect.png)
        "results/pretraining_effect.csv",
        expand("results/data/{dataset}/folds.json", dataset=DATASETS),
        "results/figures/phantom.png",
        # the learned matcher and its landmark evaluation (phantom truth only) are built here when
        # a reproduced method mines its crops with it; otherwise `snakemake results/anatomy/matching.csv`
        ([] if cfg.dataset_root(config, "flare22")
         or not any(uses_learned_matcher(m) for m in config["reproduce"]["methods"])
         else ["results/anatomy/matching.csv", "results/figures/matching.png"]),
        pretrain_figures(),
