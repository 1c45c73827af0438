# Pretraining stage: one self-supervised run per (run, encoder) on the unlabeled pool; a run is a
# method or one of its ablation variants (`alice__casa-false`, see alice.ssl.variants), the encoder
# one of pretrain.encoders (vit, swin, nnformer) with its own pretraining crop.
# checkpoint.pt appears only when the run has finished. The running state is resume.pt and the
# per-step losses log.csv: neither is a declared output, so Snakemake keeps them when a job fails
# or is preempted (exit 75) and the resubmitted job resumes from resume.pt.


rule pretrain:
    input:
        unpack(pretrain_inputs),
    output:
        checkpoint="results/pretrain/{method}/{encoder}/checkpoint.pt",
    wildcard_constraints:
        method=RUN_PATTERN,
        encoder="vit|swin|nnformer",
    params:
        settings=lambda w: as_json(cfg.pretrain_settings(config, w.method, w.encoder)),
        out=lambda w: f"results/pretrain/{w.method}/{w.encoder}",
    priority: 40  # on the critical path (see anatomy_train)
    threads: config["pretrain"].get("threads", 1)
    conda:
        "../../environment.yml"
    log:
        "results/logs/pretrain/{method}/{encoder}.log",
    shell:
        "alice pretrain --method {wildcards.method} --encoder {wildcards.encoder} "
        "--out {params.out} --embeddings results/anatomy/embeddings --threads {threads} "
        "--settings {params.settings:q} "
        "--no-progress 2> {log}"


rule pretrain_curves:
    input:
        # log.csv is complete once the checkpoint exists
        "results/pretrain/{method}/{encoder}/checkpoint.pt",
    output:
        report("results/figures/pretrain_{method}_{encoder}.png",
               caption="../report/pretrain_curves.rst", category="Figures",
               subcategory="Pretraining curves",
               labels={"figure": "pretraining curves", "run": "{method}", "encoder": "{encoder}"}),
    wildcard_constraints:
        method=RUN_PATTERN,
        encoder="vit|swin|nnformer",
    conda:
        "../../environment.yml"
    log:
        "results/logs/figures/pretrain_{method}_{encoder}.log",
    shell:
        "alice figure curves --log results/pretrain/{wildcards.method}/{wildcards.encoder}/log.csv "
        "--out {output} "
        "--title '{wildcards.method} / {wildcards.encoder} pretraining' 2> {log}"
