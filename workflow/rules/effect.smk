# The pretraining effect at low label counts (not in the paper): one backbone (pretraining_effect.backbone)
# fine-tuned on FLARE22 from each method with 1, 2, 4 labeled training cases, one subset per seed,
# scored on the offline test cases, then aggregated with paired tests and a figure (alice effect).
# One job per (method, labeled, seed): training + evaluation in one process.


rule finetune_low_label:
    input:
        unpack(effect_inputs),
    output:
        model="results/pretraining_effect/{backbone}/{method}/labeled{labeled}/seed{seed}/model.pt",
        log="results/pretraining_effect/{backbone}/{method}/labeled{labeled}/seed{seed}/log.csv",
        metrics="results/pretraining_effect/{backbone}/{method}/labeled{labeled}/seed{seed}/metrics.json",
    wildcard_constraints:
        backbone="unetr|swin_unetr|nnformer",
        method=r"[a-z0-9_]+",
        labeled=r"\d+",
        seed=r"\d+",
    params:
        settings=lambda w: as_json(cfg.finetune_settings(config, w.backbone)),
        init=finetune_init,
        out=lambda w: f"results/pretraining_effect/{w.backbone}/{w.method}/labeled{w.labeled}/seed{w.seed}",
        fold=EFFECT["steps_of_fold"],
    threads: config.get("finetune", {}).get("threads", 1)
    conda:
        "../../environment.yml"
    log:
        "results/logs/pretraining_effect/{backbone}/{method}/labeled{labeled}/seed{seed}.log",
    benchmark:
        "results/benchmarks/finetune_low_label/{backbone}/{method}/labeled{labeled}/seed{seed}.tsv",
    shell:
        "exec alice finetune --dataset flare22 --backbone {wildcards.backbone} "
        "--method {wildcards.method} --init {params.init:q} --fold {params.fold} "
        "--labeled {wildcards.labeled} --subset-seed {wildcards.seed} --out {params.out} "
        "--threads {threads} --settings {params.settings:q} --evaluate --no-progress 2> {log}"


rule pretraining_effect:
    input:
        effect_runs(),
    output:
        csv=report("results/pretraining_effect.csv", caption="../report/pretraining_effect.rst",
                   category="Pretraining effect", labels={"file": "per organ, per seed"}),
        tests=report("results/pretraining_effect_tests.csv",
                     caption="../report/pretraining_effect.rst", category="Pretraining effect",
                     labels={"file": "paired tests"}),
        figure=report("results/figures/pretraining_effect.png",
                      caption="../report/pretraining_effect.rst", category="Pretraining effect",
                      labels={"file": "figure"}),
    params:
        metrics=lambda w, input: " ".join(f"--metrics {m}" for m in input),
        scale=config["scale"],
    conda:
        "../../environment.yml"
    log:
        "results/logs/pretraining_effect.log",
    benchmark:
        "results/benchmarks/pretraining_effect.tsv",
    shell:
        "alice effect {params.metrics} --scale {params.scale} --csv {output.csv} "
        "--tests {output.tests} --figure {output.figure} 2> {log}"
