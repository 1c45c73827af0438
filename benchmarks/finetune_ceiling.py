"""Two checks that bound what a fine-tuning recipe can score, before any tuning of steps or lr.

    python benchmarks/finetune_ceiling.py ceiling [--dataset flare22] [--spacing 6,6,6 4,4,5 ...]
    python benchmarks/finetune_ceiling.py overfit [--backbone unetr] [--set feature_size=16 ...]

ceiling: the resampling ceiling of a cache spacing. Each labeled case of `--split` (default: the
  offline test cases) is prepared at the given spacing, its cached ground truth is mapped back onto
  the source grid exactly as `alice evaluate` maps a prediction (`invert_to_original`, nearest
  neighbour) and scored with `alice.metrics.score_case`. A perfect model on that cache scores
  these DSCs; a recipe whose goal lies above them cannot reach it by training longer.

overfit: how fast one backbone's untrained network fits ONE crop of one training case with plain
  cross-entropy (the same AdamW, no augmentation): per 10 steps the loss, the voxel accuracy and
  the share of air voxels (image < 0.02) predicted as background. A network that needs tens of
  steps to predict background on air it has seen every step will not learn organs in a demo
  budget; the settings that fix that are what to change first (e.g. the decoder width).

Both read the demo config (`--config`) and the prepared data / phantom of the DAG
(`results/phantoms/<release>`, `results/data/<dataset>`): run `snakemake --cores all
results/data/flare22/folds.json` first.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from alice import config as cfg


def _spacing(text: str) -> list[float]:
    values = [float(v) for v in text.split(",")]
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"a spacing is three numbers x,y,z in mm, got {text!r}")
    return values


def ceiling(args, config) -> None:
    from alice.data.preprocess import invert_to_original, load_case, prepare
    from alice.downstream.data import split_cases
    from alice.downstream.inference import _original_label
    from alice.metrics import score_case

    data = Path(args.data or f"results/data/{args.dataset}")
    root = cfg.resolved_root(config, args.dataset)
    case_ids, _ = split_cases(data, args.split)
    for spacing in args.spacing:
        settings = cfg.dataset_settings(config, args.dataset)
        settings["spacing"] = spacing
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            prepare(args.dataset, root, tmp, settings, progress=False)
            rows = []
            for case_id in case_ids:
                _image, label, meta = load_case(tmp, case_id)
                gt, _affine, zooms = _original_label(meta, case_id, Path(tmp))
                pred = invert_to_original(np.asarray(label), meta)
                rows.append({o: s["dsc"] for o, s in score_case(gt, pred, zooms, args.dataset).items()})
            shape = np.load(Path(tmp) / meta["files"]["image"], mmap_mode="r").shape
        organs = list(rows[0])
        per_organ = {o: float(np.nanmean([r[o] for r in rows])) for o in organs}
        print(f"spacing {spacing} mm  ({len(rows)} cases, last cached shape {list(shape)}, "
              f"{time.perf_counter() - t0:.0f} s)  mean DSC {np.mean(list(per_organ.values())):.3f}")
        print("   " + "  ".join(f"{o} {v:.3f}" for o, v in per_organ.items()))


def overfit(args, config) -> None:
    import torch

    from alice.data.preprocess import load_case
    from alice.downstream.networks import build_segmentation_network, crop_of
    from alice.downstream.segmentation import num_classes_of

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    settings = json.loads(json.dumps(config["finetune"][args.backbone]))
    for item in args.set:
        key, _, value = item.partition("=")
        settings[key] = json.loads(value)
    encoder = cfg.encoder_config(config, cfg.backbone_encoder(args.backbone))
    net = build_segmentation_network(args.backbone, num_classes_of(args.dataset), settings, encoder)
    data = Path(args.data or f"results/data/{args.dataset}")
    image, label, _ = load_case(data, args.case)
    crop = crop_of(settings)
    starts = [max(0, (s - c) // 2) for s, c in zip(image.shape, crop)]
    box = tuple(slice(a, a + c) for a, c in zip(starts, crop))
    x = torch.from_numpy(np.array(image[box], dtype=np.float32))[None, None]
    y = torch.from_numpy(np.array(label[box], dtype=np.int64))[None]
    if tuple(x.shape[2:]) != tuple(crop):
        raise SystemExit(f"case {args.case} {list(image.shape)} is smaller than the crop {crop}")
    air = x[0, 0] < 0.02
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-5)
    print(f"{args.backbone} {settings.get('feature_size')=} crop {crop} lr {args.lr}")
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        out = net(x)
        out = out[0] if isinstance(out, list) else out
        loss = torch.nn.functional.cross_entropy(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 10 == 0:
            pred = out.detach().argmax(1)[0]
            print(f"step {step:4d}  loss {float(loss):.3f}  accuracy {float((pred == y[0]).float().mean()):.3f}  "
                  f"air->background {float((pred[air] == 0).float().mean()):.3f}  "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None)
    parser.add_argument("--dataset", default="flare22")
    parser.add_argument("--data", default=None, help="prepared data (default results/data/<dataset>)")
    sub = parser.add_subparsers(dest="check", required=True)
    c = sub.add_parser("ceiling")
    c.add_argument("--spacing", type=_spacing, nargs="+", default=[[6.0, 6.0, 6.0], [4.0, 4.0, 5.0]])
    c.add_argument("--split", default="test")
    o = sub.add_parser("overfit")
    o.add_argument("--backbone", default="unetr")
    o.add_argument("--case", default="FLARE22_Tr_0001")
    o.add_argument("--set", nargs="*", default=[], help="settings overrides KEY=JSON, e.g. feature_size=16")
    o.add_argument("--lr", type=float, default=5e-3)
    o.add_argument("--steps", type=int, default=80)
    o.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    config = cfg.load_config(args.config)
    (ceiling if args.check == "ceiling" else overfit)(args, config)


if __name__ == "__main__":
    main()
