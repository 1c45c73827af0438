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


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/anatomy.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/online.smk"
include: "workflow/rules/summary.smk"


rule all:
    default_target: True
    input:
        "results/table1.tex",
        "results/table3.tex",
        expand("results/btcv_online/{method}", method=online_methods()),
        expand("results/{table}.tex", table=ABLATION_TABLES),
        expand("results/data/{dataset}/folds.json", dataset=DATASETS),
        "results/figures/phantom.png",
        # the learned matcher and its landmark evaluation (phantom truth only) are built here when
        # pretraining mines pairs with it; otherwise `snakemake results/anatomy/matching.csv`
        ([] if cfg.dataset_root(config, "flare22")
         or config["pretrain"]["pairs"].get("matcher") != "sam"
         else ["results/anatomy/matching.csv", "results/figures/matching.png"]),
        expand("results/figures/pretrain_{method}_{encoder}.png",
               method=[m for m in config["reproduce"]["methods"] if m != "rand_init"],
               encoder=reproduced_encoders()),
