# The learned anatomical-embedding matcher (SAM-style, alice/anatomy): trained on its own cache of
# the unlabeled pool (anatomy.data: SAM's 2 mm at paper scale), then every pool volume's embeddings
# are cached (one job per volume), which is all that Alice's crop mining reads
# (pretrain.pairs.matcher: sam; points move between the pool cache and the anatomy cache through
# the cached affines). On phantoms its landmark error is scored against the body-box and random
# matchers.

rule anatomy_prepare:
    input:
        anatomy_release,
    output:
        "results/anatomy/data/manifest.json",
    params:
        root=lambda w: str(cfg.resolved_root(config, "flare22_pool")),
        settings=lambda w: as_json(cfg.anatomy_data_settings(config)),
    priority: CRITICAL_PRIORITY  # on the critical path (common.smk)
    conda:
        "../../environment.yml"
    log:
        "results/logs/anatomy/prepare.log",
    benchmark:
        "results/benchmarks/anatomy_prepare.tsv",
    shell:
        "alice prepare --dataset flare22_pool --root {params.root:q} --out results/anatomy/data "
        "--settings {params.settings:q} --no-progress 2> {log}"


rule anatomy_train:
    input:
        folds="results/data/flare22_pool/folds.json",
        data="results/anatomy/data/manifest.json",
    output:
        model="results/anatomy/model/model.pt",
        log="results/anatomy/model/log.csv",
    params:
        settings=lambda w: as_json(cfg.anatomy_settings(config)),
    # on the critical path (common.smk): before the Rand. init. folds, which need none of it and
    # fill the other core meanwhile
    priority: CRITICAL_PRIORITY
    threads: config["anatomy"].get("threads", 1)
    conda:
        "../../environment.yml"
    log:
        "results/logs/anatomy/train.log",
    benchmark:
        "results/benchmarks/anatomy_train.tsv",
    shell:
        "exec alice anatomy train --data results/anatomy/data --folds {input.folds} --out results/anatomy/model "
        "--threads {threads} --settings {params.settings:q} --no-progress 2> {log}"


rule anatomy_embed:
    input:
        model="results/anatomy/model/model.pt",
        folds="results/data/flare22_pool/folds.json",
        data="results/anatomy/data/manifest.json",
    output:
        "results/anatomy/embeddings/{case}.npz",
    priority: CRITICAL_PRIORITY
    threads: 1
    conda:
        "../../environment.yml"
    log:
        "results/logs/anatomy/embed/{case}.log",
    benchmark:
        "results/benchmarks/anatomy_embed/{case}.tsv",
    shell:
        "alice anatomy embed --data results/anatomy/data --folds {input.folds} --model {input.model} "
        "--case {wildcards.case} --out-dir results/anatomy/embeddings --threads 1 2> {log}"


rule anatomy_evaluate:
    input:
        embeddings=pool_embeddings,
        truth=phantom_truth,
    output:
        csv=report("results/anatomy/matching.csv", caption="../report/matching_csv.rst",
                   category="Anatomical matching", labels={"result": "landmark errors"}),
        points="results/anatomy/matching_points.csv",
    params:
        settings=lambda w: as_json(cfg.matching_settings(config)),
    conda:
        "../../environment.yml"
    log:
        "results/logs/anatomy/evaluate.log",
    benchmark:
        "results/benchmarks/anatomy_evaluate.tsv",
    shell:
        "alice anatomy evaluate --data results/data/flare22_pool --embeddings results/anatomy/embeddings "
        "--truth {input.truth}/phantom_truth --out {output.csv} --settings {params.settings:q} "
        "2> {log}"


rule matching_figure:
    input:
        points="results/anatomy/matching_points.csv",
        embeddings=pool_embeddings,
        truth=phantom_truth,
    output:
        report("results/figures/matching.png", caption="../report/matching.rst",
               category="Anatomical matching", labels={"result": "matched points"}),
    conda:
        "../../environment.yml"
    log:
        "results/logs/figures/matching.log",
    benchmark:
        "results/benchmarks/matching_figure.tsv",
    shell:
        "alice figure matching --points {input.points} --data results/data/flare22_pool "
        "--truth {input.truth}/phantom_truth --embeddings results/anatomy/embeddings "
        "--out {output} 2> {log}"
