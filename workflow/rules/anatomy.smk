# The learned anatomical-embedding matcher (SAM-style, alice/anatomy): trained on the unlabeled
# pool, then every pool volume's embeddings are cached (one job per volume), which is all that
# Alice's crop mining reads (pretrain.pairs.matcher: sam). On phantoms its landmark error is
# scored against the body-box and random matchers.


rule anatomy_train:
    input:
        "results/data/flare22_pool/folds.json",
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
    shell:
        "alice anatomy train --data results/data/flare22_pool --out results/anatomy/model "
        "--threads {threads} --settings {params.settings:q} --no-progress 2> {log}"


rule anatomy_embed:
    input:
        model="results/anatomy/model/model.pt",
        folds="results/data/flare22_pool/folds.json",
    output:
        "results/anatomy/embeddings/{case}.npz",
    priority: CRITICAL_PRIORITY
    threads: 1
    conda:
        "../../environment.yml"
    log:
        "results/logs/anatomy/embed/{case}.log",
    shell:
        "alice anatomy embed --data results/data/flare22_pool --model {input.model} "
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
    shell:
        "alice figure matching --points {input.points} --data results/data/flare22_pool "
        "--truth {input.truth}/phantom_truth --embeddings results/anatomy/embeddings "
        "--out {output} 2> {log}"
