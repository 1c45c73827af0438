# Pretraining stage: one self-supervised run per (run, encoder) on the unlabeled pool; a run is a
# method or one of its ablation variants (`alice__casa-false`, see alice.ssl.variants), the encoder
# one of pretrain.encoders (vit, swin, nnformer; the CNN family's resnet3d, unet3d, nsunet3d, unet,
# vnet) with its own pretraining crop.
# checkpoint.pt appears only when the run has finished. The running state is resume.pt and the
# per-step losses log.csv: neither is a declared output, so Snakemake keeps them when a job fails
# or is preempted (exit 75) and the resubmitted job resumes from resume.pt.


# Launch: pretrain.gpus <= 1 runs one process; > 1 one torchrun job of that many processes on one
# node (DDP: one per GPU, gloo on CPU; alice/ssl/trainer.py), all in one cluster job. Preemption:
# the command is `exec`ed, so the process Snakemake (and SLURM) signals is the trainer itself, not a
# shell that would die of the signal; torchrun is told (its --signals-to-handle and shutdown timeout,
# as environment variables, which older torchruns ignore) to forward SIGUSR1 as well as SIGTERM and
# to give its workers 240 s to checkpoint (the profile warns 300 s before the limit) instead of 30.
# README "Cluster (SLURM)".


PRETRAIN_PROCESSES = max(1, int(config["pretrain"].get("gpus") or 0))
PRETRAIN_LAUNCH = (
    "exec alice" if PRETRAIN_PROCESSES == 1 else
    "export PET_SIGNALS_TO_HANDLE=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 TORCH_ELASTIC_SHUTDOWN_TIMEOUT=240; "
    f"exec torchrun --standalone --nnodes=1 --nproc_per_node={PRETRAIN_PROCESSES} -m alice.cli"
)


rule pretrain:
    input:
        unpack(pretrain_inputs),
        anatomy_cache=anatomy_cache,
    output:
        checkpoint="results/pretrain/{method}/{encoder}/checkpoint.pt",
    wildcard_constraints:
        method=RUN_PATTERN,
        encoder=ENCODER_PATTERN,
    params:
        settings=lambda w: as_json(cfg.pretrain_settings(config, w.method, w.encoder)),
        out=lambda w: f"results/pretrain/{w.method}/{w.encoder}",
        launch=PRETRAIN_LAUNCH,
        # torch threads of each process: the job's threads shared by its processes
        threads=lambda w, threads: max(1, threads // PRETRAIN_PROCESSES),
    priority: 40  # on the critical path (common.smk), after the embeddings it reads
    threads: config["pretrain"].get("threads", 1)
    resources:
        gpu=int(config["pretrain"].get("gpus") or 0),  # 0: no GPU asked for (CPU runs)
    conda:
        "../../environment.yml"
    log:
        "results/logs/pretrain/{method}/{encoder}.log",
    benchmark:
        "results/benchmarks/pretrain/{method}/{encoder}.tsv",
    shell:
        "{params.launch} pretrain --method {wildcards.method} --encoder {wildcards.encoder} "
        "--out {params.out} --embeddings results/anatomy/embeddings --threads {params.threads} "
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
        encoder=ENCODER_PATTERN,
    conda:
        "../../environment.yml"
    log:
        "results/logs/figures/pretrain_{method}_{encoder}.log",
    benchmark:
        "results/benchmarks/pretrain_curves/{method}/{encoder}.tsv",
    shell:
        "alice figure curves --log results/pretrain/{wildcards.method}/{wildcards.encoder}/log.csv "
        "--out {output} "
        "--title '{wildcards.method} / {wildcards.encoder} pretraining' 2> {log}"
