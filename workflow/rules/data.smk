# Data stage: phantom -> prepare -> folds, and the phantom figure.


rule phantom:
    output:
        directory("results/phantoms/{release}"),
    wildcard_constraints:
        release="|".join(RELEASES),
    priority: pool_priority  # the pool's release heads the critical path (common.smk)
    params:
        settings=lambda w: as_json(cfg.phantom_settings(config, w.release)),
    conda:
        "../../environment.yml"
    log:
        "results/logs/phantom/{release}.log",
    benchmark:
        "results/benchmarks/phantom/{release}.tsv",
    shell:
        "alice phantom --dataset {wildcards.release} --out {output} "
        "--settings {params.settings:q} 2> {log}"


rule prepare:
    input:
        release_root,
    output:
        "results/data/{dataset}/manifest.json",
    wildcard_constraints:
        dataset="|".join(DATASETS),
    priority: pool_priority
    params:
        root=lambda w: str(cfg.resolved_root(config, w.dataset)),
        settings=lambda w: as_json(cfg.dataset_settings(config, w.dataset)),
        out=lambda w: f"results/data/{w.dataset}",
    conda:
        "../../environment.yml"
    log:
        "results/logs/prepare/{dataset}.log",
    benchmark:
        "results/benchmarks/prepare/{dataset}.tsv",
    shell:
        "alice prepare --dataset {wildcards.dataset} --root {params.root:q} "
        "--out {params.out} --settings {params.settings:q} --no-progress 2> {log}"


checkpoint folds:  # a checkpoint: the pool's case ids name the per-volume anatomy jobs
    input:
        "results/data/{dataset}/manifest.json",
    output:
        "results/data/{dataset}/folds.json",
    wildcard_constraints:
        dataset="|".join(DATASETS),
    priority: pool_priority
    params:
        settings=lambda w: as_json(cfg.folds_settings(config, w.dataset)),
        data=lambda w: f"results/data/{w.dataset}",
    conda:
        "../../environment.yml"
    log:
        "results/logs/folds/{dataset}.log",
    benchmark:
        "results/benchmarks/folds/{dataset}.tsv",
    shell:
        "alice folds --dataset {wildcards.dataset} --data {params.data} --out {output} "
        "--settings {params.settings:q} 2> {log}"


rule phantom_figure:
    input:
        flare="results/phantoms/flare22",
        mosmed="results/phantoms/mosmed",
    output:
        report("results/figures/phantom.png", caption="../report/phantom.rst", category="Figures",
               subcategory="Data", labels={"figure": "phantom datasets"}),
    conda:
        "../../environment.yml"
    log:
        "results/logs/figures/phantom.log",
    benchmark:
        "results/benchmarks/phantom_figure.tsv",
    shell:
        "alice figure phantom --flare {input.flare} --mosmed {input.mosmed} --out {output} "
        "2> {log}"
