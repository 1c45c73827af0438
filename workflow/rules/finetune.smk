# Downstream stage: fine-tune each (dataset, method, backbone, fold) and score it; MosMed
# classification: each (run, backbone, split) for every label fraction, scored on the split's test part.
# The training commands are `exec`ed, so a stop signal (preemption, the profile's warning before the
# time limit) reaches the trainer, which writes resume.pt (not an output: it survives the failed
# job) and exits 75; the resubmitted job resumes from it.


rule finetune:
    input:
        unpack(finetune_inputs),
    output:
        model="results/finetune/{dataset}/{method}/{backbone}/fold{fold}/model.pt",
        log="results/finetune/{dataset}/{method}/{backbone}/fold{fold}/log.csv",
    wildcard_constraints:
        dataset="flare22|btcv",
        backbone=SEGMENTATION_BACKBONES,
        fold=r"\d+",
    params:
        settings=lambda w: as_json(cfg.finetune_settings(config, w.backbone)),
        init=finetune_init,
        out=lambda w: f"results/finetune/{w.dataset}/{w.method}/{w.backbone}/fold{w.fold}",
    threads: config.get("finetune", {}).get("threads", 1)
    conda:
        "../../environment.yml"
    log:
        "results/logs/finetune/{dataset}/{method}/{backbone}/fold{fold}.log",
    benchmark:
        "results/benchmarks/finetune/{dataset}/{method}/{backbone}/fold{fold}.tsv",
    shell:
        "exec alice finetune --dataset {wildcards.dataset} --backbone {wildcards.backbone} "
        "--method {wildcards.method} --init {params.init:q} --fold {wildcards.fold} "
        "--out {params.out} --threads {threads} --settings {params.settings:q} "
        "--no-progress 2> {log}"


rule evaluate:
    input:
        model="results/finetune/{dataset}/{method}/{backbone}/fold{fold}/model.pt",
        folds="results/data/{dataset}/folds.json",
    output:
        "results/finetune/{dataset}/{method}/{backbone}/fold{fold}/metrics.json",
    wildcard_constraints:
        dataset="flare22|btcv",
        backbone=SEGMENTATION_BACKBONES,
        fold=r"\d+",
    params:
        model_dir=lambda w, input: str(Path(input.model).parent),
        split=lambda w: offline_test_split(w.dataset, w.fold),
        device=config.get("device", "auto"),
    threads: config.get("finetune", {}).get("threads", 1)
    conda:
        "../../environment.yml"
    log:
        "results/logs/evaluate/{dataset}/{method}/{backbone}/fold{fold}.log",
    benchmark:
        "results/benchmarks/evaluate/{dataset}/{method}/{backbone}/fold{fold}.tsv",
    shell:
        "alice evaluate --dataset {wildcards.dataset} --model-dir {params.model_dir} "
        "--out {output} --split {params.split} --device {params.device} --threads {threads} "
        "--no-progress 2> {log}"


rule finetune_classifier:
    input:
        unpack(classifier_inputs),
    output:
        models=expand("results/finetune/mosmed/{{method}}/{{backbone}}/fold{{fold}}/{labels}/model.pt",
                      labels=LABEL_DIRS),
        metrics=expand("results/finetune/mosmed/{{method}}/{{backbone}}/fold{{fold}}/{labels}/metrics.json",
                       labels=LABEL_DIRS),
    wildcard_constraints:
        method=RUN_PATTERN,
        backbone="vit|resnet3d",
        fold=r"\d+",
    params:
        settings=lambda w: as_json(cfg.classification_settings(config, w.backbone)),
        init=classifier_init,
        fractions=" ".join(f"--label-fraction {f}" for f in LABEL_FRACTIONS),
        out=lambda w: f"results/finetune/mosmed/{w.method}/{w.backbone}/fold{w.fold}",
    threads: config["classification"].get("threads", 1)
    conda:
        "../../environment.yml"
    log:
        "results/logs/finetune/mosmed/{method}/{backbone}/fold{fold}.log",
    benchmark:
        "results/benchmarks/finetune_classifier/{method}/{backbone}/fold{fold}.tsv",
    shell:
        "exec alice finetune --dataset mosmed --backbone {wildcards.backbone} "
        "--method {wildcards.method} --init {params.init:q} --fold {wildcards.fold} "
        "{params.fractions} --out {params.out} --threads {threads} "
        "--settings {params.settings:q} --evaluate --no-progress 2> {log}"
