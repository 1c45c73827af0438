"""The paper protocol on a cluster: jobs per table, an estimate of its GPU-hours, and the disk and
RAM of every stage.

    python benchmarks/paper_protocol.py [--config config/paper.yaml] [--markdown] [--step-times gpu.jsonl]

Runs Snakemake's dry run of the full protocol with the SLURM profile, once per table target
(`results/tableN.tex`) and once for all of them with the default target:

    snakemake -n --configfile config/paper.yaml --workflow-profile workflow/profiles/slurm \\
        --config 'datasets={"flare22": {"root": ...}, "btcv": {"root": ...}, "mosmed": {"root": ...}}'

No data is needed: a dataset root is read only by `alice prepare` when it runs, so any path
that is not paper.yaml's `/path/to/` placeholder lets the DAG expand (here /data/<release>).
One part of the DAG cannot be listed before the pool's folds.json exists (a checkpoint): the
learned matcher's training and one `anatomy_embed` job per pool training volume, which
pretraining needs (pretrain.pairs.matcher: sam). The script adds them, the latter from the pool
size (phantom.counts.flare22.unlabeled in paper.yaml mirrors the real pool: 2,000 CTs).

GPU-hours per job = optimizer steps x step time x GPUs, from the paper's iterations and epochs in
the config. Step times (one H200, bf16, batch 8; docs/facts.md "Measured step times"):
  measured, plain PyTorch (not the harness's loop): an Alice-shaped ViT-B pretraining step
  30.7 ms, MONAI UNETR 83 ms, MONAI Swin UNETR 273 ms;
  estimated (nnFormer, the CNN backbones, the classifiers, the Swin / nnFormer / CNN pretraining,
  the anatomical matcher, inference): forward FLOPs of the harness's own networks at the paper's
  sizes, counted by torch's FlopCounterMode on meta tensors (no compute), x 3 for a training step
  (forward + backward; pretraining: x 8, two views forward + backward and two through a momentum
  encoder), divided by the throughput those measurements imply for the same kind of network
  (UNETR's for CNNs, Swin UNETR's for Swin and nnFormer, Alice ViT's for the ViT classifier);
  nnU-Net (nnunetv2's own trainer: 1000 epochs x 250 iterations unless finetune.nnunet says
  otherwise) at the step of its network kind, the nsunet3d backbone's.
`--step-times FILE` (the JSON lines of benchmarks/gpu_pretrain.py): each harness row at the
config's crop and batch replaces the constant or estimate of its step, the harness's own step
with its data path (pretraining per method and encoder: `pretrain <method>/<encoder>`; a run id
with ablation switches takes its method's; fine-tuning per backbone; the config's own fast path
preferred when a step has several rows); rows at other sizes (a --tiny run) are left out, named.
The output says which step times were measured and which estimated.
Inference (validation passes, `evaluate`, `btcv_online`, embeddings) runs sliding windows over an
assumed abdominal CT of 400 x 400 x 300 mm. Data loading, start-up and queueing are not counted
(a measured harness step counts its data path). A per-method table splits the hours of all tables
+ the default target by method and encoder: its pretraining runs, and the downstream jobs that
start from them (fine-tuning, scoring, the MosMed classifiers, the low-label runs, BTCV online).

Disk and RAM (`storage`), for the jobs of the last dry run (all tables + the default target), on
the same assumed CT (source voxels 0.78 x 0.78 x 2.5 mm): every data cache (cases x voxels at the
dataset's spacing x its cache dtype, plus uint8 labels), the anatomy stage's own cache
(`anatomy.data`), the matcher's model and embeddings (`alice.anatomy.learned.embedding_bytes`,
float16; the per-volume figure is checked against the 200 MB budget), each pretraining run's
checkpoint.pt (the encoder) and resume.pt (every weight and buffer plus AdamW's two moments), and
each fine-tuning job's model files (a pretraining run's sizes from its method built on the meta
device: the methods of one encoder differ in their heads and queues, so a row gives their range).
RAM per job counts the arrays the job itself holds: one case being prepared (source and resampled
image and label as float32), a batch of memory-mapped volumes copied to float32, the matcher's
coarse maps, the whole-volume forward of the embedding network (every layer's float32 output: an
upper bound). Page cache of the memory-mapped caches is not counted (shared between jobs,
reclaimable).
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from alice import config as cfg
from alice.anatomy.learned import LearnedMatcher, embedding_bytes
from alice.tables.spec import table_ids

REPO = Path(__file__).resolve().parents[1]
# one H200 GPU, bf16, batch 8 (docs/facts.md "Measured step times")
ALICE_VIT_STEP_MS = 30.7          # ViT-B, two masked 192x192x64 views + EMA target
ALICE_VIT_TFLOPS = 113.0          # the model FLOP/s of that step
UNETR_STEP_MS = 83.0              # MONAI UNETR, 96^3
SWIN_UNETR_STEP_MS = 273.0        # MONAI SwinUNETR, feature size 48, 96^3
BATCH = 8
CT_MM = (400.0, 400.0, 300.0)     # assumed abdominal CT extent (x, y, z) for inference costs


def forward_gflops(net: torch.nn.Module, shape) -> float:
    """Forward FLOPs of one sample, counted on meta tensors (nothing is computed)."""
    from torch.utils.flop_counter import FlopCounterMode

    net = net.to("meta")
    # an encoder without its own forward (nnFormer's) runs as embedding + stages
    has_forward = type(net).forward is not torch.nn.Module.forward
    run = net if has_forward else (lambda x: net.stages(net.embed(x)))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        run(torch.empty(1, 1, *shape, device="meta"))
    return counter.get_total_flops() / 1e9


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters()) + sum(b.numel() for b in net.buffers())


def inference_activation_bytes(net: torch.nn.Module, shape) -> int:
    """Float32 bytes of every layer's output for one whole volume (meta tensors, nothing computed):
    an upper bound of the activations a no-grad forward holds (each is freed once used)."""
    total = 0

    def hook(_module, _inputs, output):
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * 4

    net = net.to("meta")
    handles = [m.register_forward_hook(hook) for m in net.modules() if not list(m.children())]
    with torch.no_grad():
        net(torch.empty(1, 1, *shape, device="meta"))
    for h in handles:
        h.remove()
    return total


def windows(shape_vox, roi, overlap: float) -> int:
    """Sliding windows MONAI's sliding_window_inference visits in a volume."""
    n = 1
    for size, r in zip(shape_vox, roi):
        step = max(1, int(r * (1 - overlap)))
        n *= 1 if size <= r else math.ceil((size - r) / step) + 1
    return n


class CostModel:
    """Step times (ms) and GPU-hours per job of the paper config; `measured` (read_step_times)
    replaces the estimates of the steps it has."""

    def __init__(self, config: dict, measured: Mapping[str, Any] | None = None):
        from alice.anatomy.model import AnatomyNet, AnatomyNetConfig
        from alice.downstream.networks import (build_classification_network, build_segmentation_network,
                                               encoder_of)

        self.c = config
        ft = config["finetune"]
        # how each step time was obtained: key of step_ms (or "pretrain <method>/<encoder>") -> text
        self.source: dict[str, str] = {"unetr": "measured, plain MONAI step",
                                       "swin_unetr": "measured, plain MONAI step",
                                       "pretrain_vit": "measured, plain PyTorch Alice-shaped step"}
        seg = {b: build_segmentation_network(b, 14, ft[b], cfg.encoder_config(config, cfg.backbone_encoder(b)))
               for b in ("unetr", "swin_unetr", "nnformer")}
        self.params = {b: n_params(net) for b, net in seg.items()}  # storage(): model files
        self.fwd = {b: forward_gflops(seg[b], ft[b]["crop"]) for b in seg}
        # throughput (TFLOP/s) each measured step implies: batch x (forward + backward = 3 forwards)
        t_unetr = BATCH * 3 * self.fwd["unetr"] / UNETR_STEP_MS
        t_swin = BATCH * 3 * self.fwd["swin_unetr"] / SWIN_UNETR_STEP_MS
        self.tflops = {"unetr": t_unetr, "swin_unetr": t_swin, "nnformer": t_swin,
                       "resnet3d": t_unetr, "anatomy": t_unetr, "vit": ALICE_VIT_TFLOPS}
        self.step_ms = {"unetr": UNETR_STEP_MS, "swin_unetr": SWIN_UNETR_STEP_MS,
                        "nnformer": BATCH * 3 * self.fwd["nnformer"] / t_swin}
        self.source["nnformer"] = "estimated, FLOPs at Swin UNETR's throughput"
        self.notes = [f"nnFormer step {self.step_ms['nnformer']:.0f} ms = Swin UNETR's {SWIN_UNETR_STEP_MS:.0f} ms x "
                      f"FLOP ratio {self.fwd['nnformer']:.0f}/{self.fwd['swin_unetr']:.0f} GFLOP "
                      f"({ft['nnformer']['crop']} vs {ft['swin_unetr']['crop']}); at UNETR's throughput it "
                      f"would be {BATCH * 3 * self.fwd['nnformer'] / t_unetr:.0f} ms",
                      f"FLOP check: at UNETR's throughput Swin UNETR would take "
                      f"{BATCH * 3 * self.fwd['swin_unetr'] / t_unetr:.0f} ms (measured {SWIN_UNETR_STEP_MS:.0f})"]
        # MosMed classifiers
        size = config["datasets"]["mosmed"]["size"]
        cls = config["classification"]
        for b in ("vit", "resnet3d"):
            net = build_classification_network(b, 2, cls, cfg.encoder_config(config, cfg.backbone_encoder(b)), size)
            self.params[f"cls_{b}"] = n_params(net)
            self.fwd[f"cls_{b}"] = forward_gflops(net, size)
            self.step_ms[f"cls_{b}"] = BATCH * 3 * self.fwd[f"cls_{b}"] / self.tflops[b]
            self.source[f"cls_{b}"] = f"estimated, FLOPs at {'Alice ViT' if b == 'vit' else 'UNETR'}'s throughput"
        # pretraining of the hierarchical encoders (SimMIM: every voxel enters the online encoder):
        # 2 views forward + backward and 2 intact views through the EMA target = 8 encoder forwards
        pre = config["pretrain"]
        self.step_ms["pretrain_vit"] = ALICE_VIT_STEP_MS
        for enc, bb in (("swin", "swin_unetr"), ("nnformer", "nnformer")):
            crop = pre["crop"][enc]
            net = build_segmentation_network(bb, 14, {**ft[bb], "crop": crop}, cfg.encoder_config(config, enc))
            e = forward_gflops(encoder_of(net, bb), crop)
            self.step_ms[f"pretrain_{enc}"] = pre["optim"]["batch_size"] * 8 * e / self.tflops[bb]
            self.source[f"pretrain_{enc}"] = "estimated, 8 encoder forwards at Swin UNETR's throughput"
        self.notes.append(f"Swin / nnFormer pretraining step = batch x 8 encoder forwards at {pre['crop']['swin']} "
                          f"/ Swin UNETR's throughput ({t_swin:.0f} TFLOP/s)")
        self._convolutional(config, t_unetr)
        # learned anatomical matcher: two views per sample
        anat = config["anatomy"]["train"]
        net = AnatomyNet(AnatomyNetConfig.from_dict(anat["model"]))
        self.params["anatomy"] = n_params(net)
        self.anatomy_activations = inference_activation_bytes(net, self.case_voxels_at(config["anatomy"]["data"]["spacing"]))
        self.fwd["anatomy"] = forward_gflops(net, anat["pairs"]["crop"])
        self.step_ms["anatomy"] = anat["batch_size"] * 2 * 3 * self.fwd["anatomy"] / t_unetr
        self.source["anatomy"] = "estimated, FLOPs at UNETR's throughput"
        self.anatomy_crop = anat["pairs"]["crop"]
        self.pretrain_measured: dict[tuple[str, str], tuple[float, str]] = {}  # (ms, device)
        if measured:
            self._measured(measured)

    def _convolutional(self, config: dict, t_unetr: float) -> None:
        """The CNN family (Table 2): pretraining of every CNN encoder the config pretrains (batch x
        8 forwards of the network the methods pretrain, as for Swin / nnFormer: two views forward +
        backward and two through a momentum encoder) and fine-tuning of every CNN backbone the
        config reproduces (batch x 3 forwards), all at UNETR's throughput (a convolutional
        network's); nnU-Net (nnunetv2's own trainer) at the step of its network kind, nsunet3d."""
        from alice.downstream.networks import BACKBONES, build_segmentation_network
        from alice.models.cnn import build_cnn
        from alice.models.configs import CNN_ENCODERS

        pre, ft = config["pretrain"], config["finetune"]
        for enc in CNN_ENCODERS:
            if enc in pre["crop"] and enc in pre["encoders"]:
                e = forward_gflops(build_cnn(cfg.encoder_config(config, enc)), pre["crop"][enc])
                self.fwd[f"pretrain_{enc}"] = e
                self.step_ms[f"pretrain_{enc}"] = pre["optim"]["batch_size"] * 8 * e / t_unetr
                self.source[f"pretrain_{enc}"] = "estimated, 8 network forwards at UNETR's throughput"
        backbones = list(config["reproduce"]["backbones"])
        if "nnunet" in backbones:
            backbones.append("nsunet3d")  # nnU-Net's network kind: its step stands for nnU-Net's
        for b in backbones:
            spec = BACKBONES.get(b)
            if b in self.step_ms or spec is None or spec.task != "segmentation" or not spec.build_by_harness:
                continue
            net = build_segmentation_network(b, 14, ft[b], cfg.encoder_config(config, spec.encoder))
            self.params[b] = n_params(net)
            self.fwd[b] = forward_gflops(net, ft[b]["crop"])
            self.tflops[b] = t_unetr
            self.step_ms[b] = ft[b]["optim"]["batch_size"] * 3 * self.fwd[b] / t_unetr
            self.source[b] = "estimated, FLOPs at UNETR's throughput"
        if "nnunet" in config["reproduce"]["backbones"] and "nsunet3d" in self.step_ms:
            self.fwd["nnunet"], self.tflops["nnunet"] = self.fwd["nsunet3d"], t_unetr
            self.step_ms["nnunet"] = self.step_ms["nsunet3d"]
            self.source["nnunet"] = "estimated, nsunet3d's step (nnU-Net's U-Net at finetune.nsunet3d's crop and batch)"

    def _measured(self, measured: Mapping[str, Any]) -> None:
        """Harness step times of gpu_pretrain.py rows in place of the estimates."""
        for (method, encoder), row in measured["pretrain"].items():
            self.pretrain_measured[(method, encoder)] = (row["harness_ms"], row["device"])
        for backbone, row in measured["finetune"].items():
            self.step_ms[backbone] = row["harness_ms"]
            self.source[backbone] = f"measured, harness step ({row['device']})"

    def online_models(self, method: str) -> tuple[str, int]:
        """(backbone, number of models) behind `method`'s BTCV submission: its Table 3 offline
        cell's models (alice.tables.online), .../{run}/{backbone}/fold{k}/model.pt."""
        from alice.tables.online import online_models

        paths = online_models(self.c, method)
        return Path(paths[0]).parts[-3], len(paths)

    def pretrain_ms(self, run: str, encoder: str) -> float:
        """One pretraining step of run `run` (a method or a variant run id: its method's step)."""
        measured = self.pretrain_measured.get((run.split("__")[0], encoder))
        return measured[0] if measured is not None else self.step_ms[f"pretrain_{encoder}"]

    def step_sources(self) -> tuple[list[str], list[str]]:
        """(measured, estimated) step times, as "name ms (how)" lines."""
        measured = [f"pretrain {m}/{e} {ms:.0f} ms (measured, harness step ({device}))"
                    for (m, e), (ms, device) in sorted(self.pretrain_measured.items())]
        estimated = []
        for key, ms in self.step_ms.items():
            how = self.source.get(key, "estimated")
            (measured if how.startswith("measured") else estimated).append(f"{key} {ms:.0f} ms ({how})")
        return measured, estimated

    # -- inference
    @staticmethod
    def case_voxels_at(spacing) -> list[int]:
        return [round(mm / s) for mm, s in zip(CT_MM, spacing)]

    def case_voxels(self, dataset: str) -> list[int]:
        return self.case_voxels_at(self.c["datasets"][dataset]["spacing"])

    def predict_ms(self, dataset: str, backbone: str) -> float:
        """One case, sliding windows of the backbone's crop."""
        s = self.c["finetune"][backbone]
        n = windows(self.case_voxels(dataset), s["crop"], s["sw_overlap"])
        return n * self.fwd[backbone] / self.tflops[backbone]

    # -- jobs
    def labeled_train(self, dataset: str) -> tuple[int, int]:
        """(training, held-out) cases of one fold: k-fold over the labeled cases."""
        n = self.c["phantom"]["counts"][dataset]["labeled"]
        k = self.c["datasets"][dataset]["folds"]
        return n - n // k, n // k

    def gpu_hours(self, rule: str, wc: dict) -> float:
        c = self.c
        if rule == "pretrain":
            steps = c["pretrain"]["optim"]["iterations"]
            gpus = max(1, int(c["pretrain"].get("gpus") or 0))
            return steps * self.pretrain_ms(wc["method"], wc["encoder"]) * gpus / 3.6e6
        if rule == "finetune":
            s = c["finetune"][wc["backbone"]]
            n_train, n_val = self.labeled_train(wc["dataset"])
            o = s["optim"]
            steps = o["epochs"] * math.ceil(n_train * s["samples_per_volume"] / o["batch_size"])
            validations = o["epochs"] // s["val_every"]
            ms = steps * self.step_ms[wc["backbone"]] + validations * n_val * self.predict_ms(wc["dataset"], wc["backbone"])
            return ms / 3.6e6
        if rule == "finetune_low_label":  # fold `steps_of_fold`'s optimizer steps, then the offline test set
            s = c["finetune"][wc["backbone"]]
            o = s["optim"]
            n_train = self.labeled_train("flare22")[0]
            steps = o["epochs"] * math.ceil(n_train * s["samples_per_volume"] / o["batch_size"])
            n_test = len(c["datasets"]["flare22"]["offline_test"])
            return (steps * self.step_ms[wc["backbone"]] + n_test * self.predict_ms("flare22", wc["backbone"])) / 3.6e6
        if rule == "nnunet":  # nnU-Net's default trainer: 1000 epochs x 250 iterations, then the offline test
            own = c["finetune"]["nnunet"]
            steps = (own.get("epochs") or 1000) * (own.get("iterations_per_epoch") or 250)
            n = (len(c["datasets"]["flare22"]["offline_test"]) if wc["dataset"] == "flare22"
                 else self.labeled_train(wc["dataset"])[1])
            return (steps * self.step_ms["nnunet"] + n * self.predict_ms(wc["dataset"], "nsunet3d")) / 3.6e6
        if rule == "evaluate":
            n = (len(c["datasets"]["flare22"]["offline_test"]) if wc["dataset"] == "flare22"
                 else self.labeled_train(wc["dataset"])[1])
            return n * self.predict_ms(wc["dataset"], wc["backbone"]) / 3.6e6
        if rule == "btcv_online":
            backbone, models = self.online_models(wc["method"])
            return c["phantom"]["counts"]["btcv"]["test"] * models * self.predict_ms("btcv", backbone) / 3.6e6
        if rule == "finetune_classifier":
            trainings = len(c["datasets"]["mosmed"]["label_fractions"])
            return trainings * c["classification"]["optim"]["iterations"] * self.step_ms[f"cls_{wc['backbone']}"] / 3.6e6
        if rule == "anatomy_train":
            return c["anatomy"]["train"]["iterations"] * self.step_ms["anatomy"] / 3.6e6
        if rule == "anatomy_embed":
            voxels = math.prod(self.case_voxels_at(c["anatomy"]["data"]["spacing"]))  # the anatomy cache
            return voxels / math.prod(self.anatomy_crop) * self.fwd["anatomy"] / self.tflops["anatomy"] / 3.6e6
        return 0.0  # CPU jobs: data stage, tables, figures


def read_step_times(path: str | Path, config: dict) -> tuple[dict[str, dict], list[str]]:
    """The harness rows of benchmarks/gpu_pretrain.py's JSON lines that fit `config` (the crop and
    batch it pretrains, resp. fine-tunes, with): ({"pretrain": {(method, encoder): row}, "finetune":
    {backbone: row}}, one line per row left out and why). Of several rows of one step the config's
    own fast path wins (variant "on", or "compile" when the config compiles), then the last."""
    wanted = "compile" if (config.get("fast_path") or {}).get("compile") is True else "on"
    found: dict[str, dict] = {"pretrain": {}, "finetune": {}}
    skipped = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        kind = row.get("kind")
        if kind == "pretrain":
            key, name = (row["method"], row["encoder"]), f"pretrain {row['method']}/{row['encoder']}"
            crop = config["pretrain"]["crop"].get(row["encoder"])
            batch = config["pretrain"]["optim"]["batch_size"]
        elif kind == "finetune":
            key, name = row["backbone"], row["backbone"]
            section = config["finetune"].get(row["backbone"]) or {}
            crop, batch = section.get("crop"), (section.get("optim") or {}).get("batch_size")
        else:
            continue
        if list(row["crop"]) != list(crop or []) or row["batch"] != batch:
            skipped.append(f"line {n} ({name}): crop {row['crop']} batch {row['batch']}, the config's "
                           f"{crop} batch {batch}")
            continue
        held = found[kind].get(key)
        if held is None or row["fast_path"].get("variant") == wanted or held["fast_path"].get("variant") != wanted:
            found[kind][key] = row
    return found, skipped


# GPU rules by what they cost (the rest run on CPUs: data stage, tables, figures)
GROUP = {"pretrain": "pretraining", "finetune": "downstream", "evaluate": "downstream",
         "finetune_classifier": "downstream", "btcv_online": "downstream", "finetune_low_label": "downstream",
         "nnunet": "downstream", "anatomy_train": "matcher", "anatomy_embed": "matcher"}
JOB = re.compile(r"^(?:local)?(?:rule|checkpoint) (\w+):$")


def dry_run(targets: list[str], configfile: str) -> list[tuple[str, dict]]:
    """(rule, wildcards) of every job Snakemake's dry run lists for `targets`."""
    roots = ('datasets={"flare22": {"root": "/data/FLARE22"}, "btcv": {"root": "/data/BTCV"}, '
             '"mosmed": {"root": "/data/COVID19_1110"}}')
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    result = subprocess.run([sys.executable, "-m", "snakemake", "-n", *targets, "--configfile", configfile,
                             "--workflow-profile", "workflow/profiles/slurm", "--config", roots],
                            cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"dry run of {targets} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    jobs: list[tuple[str, dict]] = []
    for line in (result.stdout + "\n" + result.stderr).splitlines():
        m = JOB.match(line.strip())
        if m:
            jobs.append((m[1], {}))
        elif jobs and line.strip().startswith("wildcards:"):
            jobs[-1][1].update(kv.split("=", 1) for kv in line.split(":", 1)[1].strip().split(", "))
    return jobs


def method_hours(model: CostModel, jobs: list[tuple[str, dict]]) -> list[list[str]]:
    """Rows (method, encoder, pretraining runs, GPU-h pretraining, downstream jobs, GPU-h
    downstream, GPU-h total) of a dry run's GPU jobs: a pretraining run under its method and
    encoder, a downstream job under the method it starts from and its backbone's encoder; the
    matcher (training and embeddings), which mines the crops of the runs that need it, in a row of
    its own, as pretraining."""
    from alice.downstream.networks import encoder_name_of

    pre, down = Counter(), Counter()
    runs, n_down = Counter(), Counter()
    for rule, wc in jobs:
        group = GROUP.get(rule)
        if group is None:
            continue
        hours = model.gpu_hours(rule, wc)
        if group == "matcher":
            key = ("(matcher)", "-")
        elif rule == "nnunet":
            key = ("nnunet", "-")
        elif group == "pretraining":
            key = (wc["method"].split("__")[0], wc["encoder"])
        else:
            backbone = wc["backbone"] if "backbone" in wc else model.online_models(wc["method"])[0]
            key = (wc["method"].split("__")[0], encoder_name_of(backbone) or "-")
        if group in ("pretraining", "matcher"):
            pre[key] += hours
            runs[key] += group == "pretraining"
        else:
            down[key] += hours
            n_down[key] += 1
    keys = sorted(set(pre) | set(down), key=lambda k: (k[0].startswith("("), k))
    rows = [[m, e, str(runs[(m, e)]), f"{pre[(m, e)]:,.1f}", str(n_down[(m, e)]), f"{down[(m, e)]:,.1f}",
             f"{pre[(m, e)] + down[(m, e)]:,.1f}"] for m, e in keys]
    rows.append(["total", "", str(sum(runs.values())), f"{sum(pre.values()):,.0f}", str(sum(n_down.values())),
                 f"{sum(down.values()):,.0f}", f"{sum(pre.values()) + sum(down.values()):,.0f}"])
    return rows


def pool_train_size(config: dict) -> int:
    """Training volumes of the unlabeled pool (alice.data.folds: val = round(fraction x n))."""
    n = config["phantom"]["counts"]["flare22"]["unlabeled"]
    return n - min(n - 1, max(1, round(config["datasets"]["flare22_pool"]["val_fraction"] * n)))


# ------------------------------------------------------------------------------ disk and RAM
SOURCE_MM = (400.0 / 512, 400.0 / 512, 2.5)  # assumed source CT voxel (512 x 512 in-plane, 2.5 mm slices)
EMBED_BUDGET = 200e6                          # bytes of matcher cache per pool volume (docs/pretraining.md "Anatomical matching")
# coarse maps a matching process keeps in RAM (LearnedMatcher's default cache_size)
MATCHER_CACHE = inspect.signature(LearnedMatcher).parameters["cache_size"].default
GB = 1e9


def anatomy_volume_bytes(config: dict) -> dict[str, int]:
    """One pool volume's matcher cache at the config's settings, for a CT of CT_MM: the anatomy
    cache's image and its embeddings (fine, coarse, total; alice.anatomy.learned.embedding_bytes)."""
    data = config["anatomy"]["data"]
    model = config["anatomy"]["train"]["model"]
    shape = CostModel.case_voxels_at(data["spacing"])
    emb = embedding_bytes(shape, model["fine_stride"], model["coarse_stride"], model["embed_dim"], "float16")
    return {"shape": shape, "image": math.prod(shape) * np.dtype(data.get("cache_dtype", "float32")).itemsize, **emb}


def _cache_rows(config: dict, model: CostModel) -> list[list[str]]:
    """The data caches (`prepare`, `anatomy_prepare`): disk of every case; RAM of the job, which
    holds one case at a time: the source as float32 and the resampled image and label as float32."""
    counts = config["phantom"]["counts"]
    source = math.prod(CostModel.case_voxels_at(SOURCE_MM)) * 4
    cases = {  # dataset: (cases, labeled cases, voxels per case, cache dtype)
        "flare22": (counts["flare22"]["labeled"] + counts["flare22"]["validation"],
                    counts["flare22"]["labeled"] + counts["flare22"]["validation"]),
        "flare22_pool": (counts["flare22"]["unlabeled"], 0),
        "btcv": (counts["btcv"]["labeled"] + counts["btcv"]["test"], counts["btcv"]["labeled"]),
        "mosmed": (sum(counts["mosmed"]["per_category"]), 0),
    }
    rows = []
    for ds, (n, labeled) in cases.items():
        d = config["datasets"][ds]
        voxels = math.prod(d["size"]) if ds == "mosmed" else math.prod(model.case_voxels(ds))
        item = np.dtype(d.get("cache_dtype", "float32")).itemsize
        disk = n * voxels * item + labeled * voxels
        ram = source + voxels * 4 * (2 if labeled else 1)
        grid = "x".join(map(str, d["size"])) if ds == "mosmed" else \
            " x ".join(f"{s:g}" for s in d["spacing"]) + " mm"
        rows.append([f"prepare {ds}", f"{ds} cache ({grid}, {d.get('cache_dtype', 'float32')})",
                     f"{voxels * item / 1e6:,.0f} MB", f"{n:,}", f"{disk / GB:,.1f}", f"{ram / GB:.2f}"])
    a = anatomy_volume_bytes(config)
    n = counts["flare22"]["unlabeled"]
    data = config["anatomy"]["data"]
    rows.append(["anatomy_prepare", f"anatomy cache ({' x '.join(f'{s:g}' for s in data['spacing'])} mm, "
                 f"{data.get('cache_dtype', 'float32')}, {'x'.join(map(str, a['shape']))})",
                 f"{a['image'] / 1e6:,.0f} MB", f"{n:,}", f"{n * a['image'] / GB:,.1f}",
                 f"{(source + math.prod(a['shape']) * 4) / GB:.2f}"])
    return rows


def _mb_range(values: list[float]) -> str:
    lo, hi = min(values) / 1e6, max(values) / 1e6
    return f"{lo:,.0f} MB" if round(lo) == round(hi) else f"{lo:,.0f}-{hi:,.0f} MB"


_RUN_STATE: dict[tuple[str, str], tuple[int, int]] = {}


def run_state_bytes(config: dict, run: str, encoder: str) -> tuple[int, int]:
    """(checkpoint.pt, resume.pt) bytes of pretraining run `run` on `encoder`, float32: the
    transferable weights, resp. every weight and buffer plus AdamW's two moments of the trainable
    ones. The method is built on the meta device (no memory, no compute) where it allows."""
    from alice.ssl.registry import build_method

    def count(device: str) -> tuple[int, int]:
        s = cfg.pretrain_settings(config, run, encoder)
        with torch.device(device):
            net = build_method(s["method"], s["method_config"], s["encoder"], s["crop"])
        trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
        ckpt = sum(v.numel() for v in net.encoder_state_dict().values()) * 4
        return ckpt, (n_params(net) + 2 * trainable) * 4

    if (run, encoder) not in _RUN_STATE:
        try:
            _RUN_STATE[(run, encoder)] = count("meta")
        except Exception:  # noqa: BLE001 - a method that computes on its tensors while it is built
            _RUN_STATE[(run, encoder)] = count("cpu")
    return _RUN_STATE[(run, encoder)]


def storage(config: dict, model: CostModel, jobs: list[tuple[str, dict]], embeds: int) -> list[list[str]]:
    """Rows (stage, what, per item, items, disk GB, RAM GB per job) at the config's scale for the
    jobs of a dry run (model files and logs per fine-tuning job; one checkpoint per pretraining run)."""
    rows = _cache_rows(config, model)
    anat = config["anatomy"]["train"]
    a = anatomy_volume_bytes(config)
    vol_f32 = math.prod(a["shape"]) * 4
    rows.append(["anatomy_train", "model.pt (float32 weights)", f"{model.params['anatomy'] * 4 / 1e6:,.0f} MB", "1",
                 f"{model.params['anatomy'] * 4 / GB:.1f}",
                 # memory-mapped cache: each drawn volume is copied to float32 once per pair
                 f"{anat['batch_size'] * vol_f32 / GB:.2f}"])
    rows.append(["anatomy_embed", f"embeddings (float16: fine {a['fine'] / 1e6:,.0f} MB + coarse "
                 f"{a['coarse'] / 1e6:,.1f} MB)", f"{a['total'] / 1e6:,.0f} MB", f"{embeds:,}",
                 f"{embeds * a['total'] / GB:,.0f}",
                 # the volume, float32 maps, and at most every layer's output of the whole-volume forward
                 f"{(vol_f32 + 2 * a['total'] + model.anatomy_activations) / GB:.2f}"])
    # pretraining: checkpoint.pt holds the encoder; resume.pt every weight, buffer and AdamW's 2 moments
    runs = sorted({(wc["method"], wc["encoder"]) for rule, wc in jobs if rule == "pretrain"})
    pre = config["pretrain"]
    cache = MATCHER_CACHE
    coarse_f32 = a["coarse"] * 2
    for encoder in sorted({e for _, e in runs}):
        sizes = [run_state_bytes(config, run, encoder) for run, e in runs if e == encoder]
        n = len(sizes)
        crop_bytes = pre["optim"]["batch_size"] * 2 * math.prod(pre["crop"][encoder]) * 4
        gpus = max(1, int(pre.get("gpus") or 0))
        rows.append([f"pretrain ({encoder})", f"checkpoint.pt {_mb_range([c for c, _ in sizes])} + resume.pt "
                     f"{_mb_range([r for _, r in sizes])}", _mb_range([c + r for c, r in sizes]),
                     f"{n} run{'s' * (n != 1)}", f"{sum(c + r for c, r in sizes) / GB:,.1f}",
                     f"{gpus * (cache * coarse_f32 + crop_bytes) / GB:.2f}"])
    # fine-tuning: one model file per job; RAM: a training volume and its label as float32 (the
    # caches are memory-mapped); classification: a batch of memory-mapped volumes as float32
    ft = Counter((wc["dataset"], wc["backbone"]) for rule, wc in jobs if rule == "finetune")
    for (ds, bb), n in sorted(ft.items()):
        size = model.params[bb] * 4
        ram = math.prod(model.case_voxels(ds)) * 4 * 2
        rows.append([f"finetune {ds} {bb}", "model (float32 weights)", f"{size / 1e6:,.0f} MB", f"{n} folds",
                     f"{n * size / GB:,.1f}", f"{ram / GB:.2f}"])
    cl = Counter(wc["backbone"] for rule, wc in jobs if rule == "finetune_classifier")
    fractions = len(config["datasets"]["mosmed"]["label_fractions"])
    for bb, n in sorted(cl.items()):
        size = model.params[f"cls_{bb}"] * 4
        ram = math.prod(config["datasets"]["mosmed"]["size"]) * 4 * config["classification"]["optim"]["batch_size"]
        rows.append([f"finetune_classifier {bb}", f"{fractions} models a split (float32 weights)",
                     f"{fractions * size / 1e6:,.0f} MB", f"{n} splits", f"{n * fractions * size / GB:,.1f}",
                     f"{ram / GB:.2f}"])
    return rows


def print_rows(header: list[str], rows: list[list[str]], markdown: bool) -> None:
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + " --- |" * len(header))
        for row in rows:
            print("| " + " | ".join(row) + " |")
        return
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header[:-1])]
    print("  ".join(h.rjust(w) for h, w in zip(header, widths)) + "  " + header[-1])
    for row in rows:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)) + "  " + row[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/paper.yaml")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--step-times", default=None, metavar="FILE",
                        help="JSON lines of benchmarks/gpu_pretrain.py: its harness step times replace the estimates")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = cfg.load_config(REPO / args.config)
    measured, skipped = read_step_times(args.step_times, config) if args.step_times else (None, [])
    model = CostModel(config, measured)
    embeds = pool_train_size(config)

    targets = {t: [f"results/{t}.tex"] for t in sorted(table_ids(), key=lambda t: int(t[5:]))}
    targets["all tables + default target"] = [t for ts in targets.values() for t in ts] + ["all"]
    rows = []
    jobs = []
    for name, target in targets.items():
        jobs = dry_run(target, args.config)
        if (any(rule == "pretrain" for rule, _ in jobs) and config["pretrain"]["pairs"].get("matcher") == "sam"
                and not any(rule == "anatomy_train" for rule, _ in jobs)):
            # behind the pool's folds checkpoint: the matcher and one embedding job per volume
            jobs = jobs + [("anatomy_train", {})] + [("anatomy_embed", {})] * embeds
        rules = Counter(rule for rule, _ in jobs)
        hours = Counter()
        for rule, wc in jobs:
            hours[GROUP.get(rule, "cpu")] += model.gpu_hours(rule, wc)
        gpu_jobs = sum(n for r, n in rules.items() if r in GROUP)
        encoders: dict[str, set] = {}  # run id -> its encoders
        for rule, wc in jobs:
            if rule == "pretrain":
                encoders.setdefault(wc["method"], set()).add(wc["encoder"])
        runs = [f"{run}/{'+'.join(sorted(e))}" for run, e in sorted(encoders.items())]
        rows.append([name, str(sum(rules.values())), str(gpu_jobs), str(rules["pretrain"]),
                     str(rules["finetune"] + rules["finetune_classifier"])]
                    + [f"{hours[g]:,.0f}" for g in ("pretraining", "downstream", "matcher")]
                    + [f"{sum(hours.values()):,.0f}", ", ".join(runs)])

    header = ["target", "jobs", "GPU jobs", "pretraining runs", "fine-tuning jobs", "GPU-h pretraining",
              "GPU-h fine-tuning + scoring", "GPU-h matcher", "GPU-h total", "pretraining runs (run/encoders)"]
    print_rows(header, rows, args.markdown)
    measured_lines, estimated_lines = model.step_sources()
    print("\nstep times (one GPU, the config's batch; the constants: one H200, "
          f"docs/facts.md \"Measured step times\"{'; ' + args.step_times if args.step_times else ''}):")
    print("- measured: " + ("; ".join(measured_lines) or "none"))
    print("- estimated: " + "; ".join(estimated_lines))
    print("- pretraining runs of a method without a measured step take their encoder's pretrain_<encoder> step")
    for line in skipped:
        print(f"- left out of {args.step_times}: {line}")
    for note in model.notes:
        print("- " + note)
    print(f"- added to a dry run that has pretraining: anatomy_train 1 and anatomy_embed {embeds} "
          "(one per pool training volume; known once the pool's folds.json exists)")

    print("\nGPU-hours per method (all tables + default target; a run id's ablation switches count "
          "with its method; downstream: fine-tuning, scoring, classifiers, low-label runs, BTCV online):")
    print_rows(["method", "encoder", "pretraining runs", "GPU-h pretraining", "downstream jobs",
                "GPU-h downstream", "GPU-h total"], method_hours(model, jobs), args.markdown)

    # disk and RAM of every stage, for the last target's jobs (all tables + the default target)
    a = anatomy_volume_bytes(config)
    print(f"\ndisk and RAM at paper scale (a CT of {' x '.join(f'{v:g}' for v in CT_MM)} mm; source voxels "
          f"{' x '.join(f'{v:g}' for v in SOURCE_MM)} mm; GB = 1e9 bytes), all tables + default target:")
    store = storage(config, model, jobs, embeds)
    print_rows(["job", "what is stored", "per item", "items", "disk GB", "RAM GB per job"], store, args.markdown)
    print(f"\n- total disk: {sum(float(r[4].replace(',', '')) for r in store):,.0f} GB")
    ok = "within" if a["total"] <= EMBED_BUDGET else "OVER"
    print(f"- matcher cache per pool volume (the embeddings the matcher reads, float16): fine "
          f"{a['fine'] / 1e6:.1f} MB + coarse {a['coarse'] / 1e6:.1f} MB = {a['total'] / 1e6:.1f} MB, {ok} the "
          f"{EMBED_BUDGET / 1e6:.0f} MB budget; the anatomy image cache adds {a['image'] / 1e6:.0f} MB "
          f"(read by anatomy_train and anatomy_embed only). A matching process keeps {MATCHER_CACHE} coarse "
          f"maps in RAM ({MATCHER_CACHE * a['coarse'] * 2 / 1e6:.0f} MB as float32) and memory-maps the fine "
          "maps, reading only the cells around the coarse candidates")
    print("- RAM per job: the arrays the job itself holds (estimates); memory-mapped caches add "
          "page cache, shared between jobs and reclaimable; pretraining counts its GPUs' processes; "
          "anatomy_embed includes every layer's float32 output of the whole-volume forward (an upper bound)")


if __name__ == "__main__":
    main()
