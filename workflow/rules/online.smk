# Online test set: submission files of the BTCV test cases (labels not public, never scored here).


rule btcv_online:
    input:
        models=online_model_files,
        folds="results/data/btcv/folds.json",
    output:
        directory("results/btcv_online/{method}"),
    wildcard_constraints:
        method="[a-z0-9_]+",
    params:
        model_dirs=lambda w, input: " ".join(
            f"--model-dir {Path(m).parent}" for m in input.models
        ),
        device=config.get("device", "auto"),
    threads: config.get("finetune", {}).get("threads", 1)
    conda:
        "../../environment.yml"
    log:
        "results/logs/btcv_online/{method}.log",
    benchmark:
        "results/benchmarks/btcv_online/{method}.tsv",
    shell:
        "alice predict --dataset btcv --split online_test {params.model_dirs} --out {output} "
        "--device {params.device} --threads {threads} --no-progress 2> {log}"
