# Pretraining stage: one self-supervised run per (method, encoder) on the unlabeled pool.
# The trainer resumes from results/pretrain/{method}/{encoder}/checkpoint.pt when it exists.


rule pretrain:
    input:
        "results/data/flare22_pool/folds.json",
    output:
        checkpoint="results/pretrain/{method}/{encoder}/checkpoint.pt",
        log="results/pretrain/{method}/{encoder}/log.csv",
    wildcard_constraints:
        method="[a-z0-9_]+",
        encoder="vit|swin|nnformer",
    params:
        settings=lambda w: as_json(cfg.pretrain_settings(config, w.method)),
        out=lambda w: f"results/pretrain/{w.method}/{w.encoder}",
    threads: 2
    conda:
        "../../environment.yml"
    log:
        "results/logs/pretrain/{method}/{encoder}.log",
    shell:
        "alice pretrain --method {wildcards.method} --encoder {wildcards.encoder} "
        "--out {params.out} --threads {threads} --settings {params.settings:q} "
        "--no-progress 2> {log}"


rule pretrain_curves:
    input:
        "results/pretrain/{method}/{encoder}/log.csv",
    output:
        "results/figures/pretrain_{method}_{encoder}.png",
    wildcard_constraints:
        method="[a-z0-9_]+",
        encoder="vit|swin|nnformer",
    conda:
        "../../environment.yml"
    log:
        "results/logs/figures/pretrain_{method}_{encoder}.log",
    shell:
        "alice figure curves --log {input} --out {output} "
        "--title '{wildcards.method} / {wildcards.encoder} pretraining' 2> {log}"
