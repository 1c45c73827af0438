# nnU-Net rows of Tables 2 and 3: nnU-Net v2 (the nnunetv2 package: its own planning, preprocessing,
# training and prediction) on one fold's training cases, scored on the fold's offline test cases
# like every other row (alice.downstream.nnunet). Settings: the config's finetune.nnunet section
# plus the config's seed. nnU-Net's working folders (raw / preprocessed / results) live in
# results/nnunet/{dataset}/fold{fold} while the job runs and are removed after it.
# The finetune and evaluate rules exclude backbone nnunet (their wildcard constraints).


rule nnunet:
    input:
        folds="results/data/{dataset}/folds.json",
        manifest="results/data/{dataset}/manifest.json",
    output:
        metrics="results/finetune/{dataset}/nnunet/nnunet/fold{fold}/metrics.json",
        plans="results/finetune/{dataset}/nnunet/nnunet/fold{fold}/plans.json",
        summary="results/finetune/{dataset}/nnunet/nnunet/fold{fold}/train_summary.json",
        model="results/finetune/{dataset}/nnunet/nnunet/fold{fold}/checkpoint_final.pth",
    wildcard_constraints:
        dataset="flare22|btcv",
        fold=r"\d+",
    params:
        settings=lambda w: as_json({**config["finetune"]["nnunet"], "seed": config["seed"]}),
        out=lambda w: f"results/finetune/{w.dataset}/nnunet/nnunet/fold{w.fold}",
        work=lambda w: f"results/nnunet/{w.dataset}/fold{w.fold}",
        device=config.get("device", "auto"),
    threads: config.get("finetune", {}).get("threads", 1)
    conda:
        "../../environment.yml"
    log:
        "results/logs/nnunet/{dataset}/fold{fold}.log",
    benchmark:
        "results/benchmarks/nnunet/{dataset}/fold{fold}.tsv",
    shell:
        # nnU-Net prints its progress to stdout (also from its worker processes): both go to the log
        "exec alice nnunet --dataset {wildcards.dataset} --fold {wildcards.fold} "
        "--out {params.out} --work {params.work} --device {params.device} --threads {threads} "
        "--settings {params.settings:q} --no-progress > {log} 2>&1"
