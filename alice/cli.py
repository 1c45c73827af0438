"""The `alice` command: one subcommand per pipeline stage.

Every Snakemake rule runs one of these, and each works without Snakemake. Settings come from a
config file (`--config`, default config/config.yaml) or, as the rules pass them, from a JSON
string of just the section the stage needs (`--settings`), so a rule re-runs only when its own
settings change.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import math
import re
import sys
import time
from pathlib import Path

from alice import config as cfg
from alice.models.configs import ENCODERS
from alice.errors import ConfigError, HarnessError

log = logging.getLogger("alice")

# sysexits.h codes of a failed file operation (pretraining's preemption exits 75, EX_TEMPFAIL)
EX_IOERR = 74
EX_NOPERM = 77
EX_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a Ctrl-C
SEED_LIMIT = 2**32  # numpy seeds with 0 <= seed < 2**32


# Option types: argparse reports their ArgumentTypeError as "argument --threads: must be >= 1,
# got -1" before any stage runs.
def _integer(text: str) -> int:
    """ASCII digits only: int() would also take '٣' or '1_0'."""
    if not re.fullmatch(r"[-+]?[0-9]+", text):
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}")
    return int(text)


def positive_int(text: str) -> int:
    """A count of at least one: threads, steps, labeled cases, figure rows."""
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An index: a fold or split number."""
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def seed_int(text: str) -> int:
    """A seed numpy takes: 0 <= seed < 2**32 (it refuses others deep inside a stage)."""
    value = _integer(text)
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"must be a seed from 0 to {SEED_LIMIT - 1}, got {value}")
    return value


def fraction(text: str) -> float:
    """A label fraction: a number in (0, 1] (not nan)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1], got {text!r}")
    return value


def split_name(text: str) -> str:
    """A case list of folds.json: 'test', 'online_test', 'val' (mosmed) or 'val:K' / 'train:K'
    of fold K >= 0 (the stage checks that the fold exists)."""
    kind, sep, fold = text.partition(":")
    if (not sep and text in ("test", "online_test", "val")) or (
            sep and kind in ("val", "train") and re.fullmatch(r"[0-9]+", fold)):
        return text
    raise argparse.ArgumentTypeError("must be 'test', 'online_test', 'val' or 'val:K' / 'train:K' "
                                     f"with a fold K >= 0, got {text!r}")


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, like every other user error of the harness
    ("alice finetune: error: argument --threads: must be >= 1, got -1", exit 2); --help still
    prints the usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _settings(args, from_config) -> dict:
    if getattr(args, "settings", None):
        try:
            settings = json.loads(args.settings)
        except json.JSONDecodeError as exc:
            raise ConfigError("--settings", f"not valid JSON: {exc}") from None
        if not isinstance(settings, dict):
            raise ConfigError("--settings", "must be a JSON object")
        return settings
    return from_config(cfg.load_config(args.config))


def cmd_phantom(args) -> None:
    from alice.data.phantom import write_dataset

    settings = _settings(args, lambda c: cfg.phantom_settings(c, args.dataset))
    seed = args.seed if args.seed is not None else settings["seed"]
    start = time.perf_counter()
    summary = write_dataset(args.dataset, args.out, settings["counts"], seed=seed,
                            geometry=settings.get("geometry"))
    log.info("phantom %s: %d cases in %s (%.1f s)", args.dataset, len(summary["case_ids"]),
             args.out, time.perf_counter() - start)


def cmd_prepare(args) -> None:
    from alice.data.preprocess import prepare

    settings = _settings(args, lambda c: cfg.dataset_settings(c, args.dataset))
    root = args.root
    if root is None:
        root = cfg.resolved_root(cfg.load_config(args.config), args.dataset)
    manifest = prepare(args.dataset, Path(root), Path(args.out), settings,
                       progress=not args.no_progress)
    log.info("prepared %s: %d cases in %s", args.dataset, len(manifest["cases"]), args.out)


def cmd_folds(args) -> None:
    from alice.data.folds import make_folds, write_folds
    from alice.io import read_json

    settings = _settings(args, lambda c: cfg.folds_settings(c, args.dataset))
    data = Path(args.data)
    manifest_path = data / "manifest.json"
    if not manifest_path.is_file():
        raise HarnessError(f"{manifest_path}: missing; run `alice prepare --dataset "
                           f"{args.dataset}` first")
    seed = args.seed if args.seed is not None else settings.pop("seed", 0)
    settings.pop("seed", None)
    folds = make_folds(args.dataset, read_json(manifest_path), settings, seed)
    out = Path(args.out) if args.out else data / "folds.json"
    write_folds(out, folds)
    log.info("folds for %s written to %s", args.dataset, out)


def cmd_pretrain(args) -> None:
    from alice.ssl.run import run_pretraining

    settings = _settings(args, lambda c: cfg.pretrain_settings(c, args.method, args.encoder))
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    run_pretraining(args.method, args.encoder, args.data, args.out, settings, embeddings=args.embeddings,
                    steps=args.steps, device=args.device, progress=not args.no_progress)


def cmd_anatomy(args) -> None:
    """The learned anatomical-embedding matcher: train it, cache embeddings, score matching."""
    from alice.io import read_json

    data = Path(args.data)
    splits_path = Path(args.folds) if args.folds else data / "folds.json"
    if not splits_path.is_file():
        raise HarnessError(f"{splits_path}: missing; run `alice prepare` and `alice folds` for "
                           "flare22_pool first")
    splits = read_json(splits_path)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.action == "train":
        from alice.anatomy.train import train_anatomy

        settings = _settings(args, cfg.anatomy_settings)
        out = Path(args.out or "results/anatomy/model")
        summary = train_anatomy(data, splits["train"], out, settings["train"],
                                seed=settings["seed"], progress=not args.no_progress)
        log.info("anatomy model: %d steps in %.1f s, last loss %.4g -> %s", summary["steps"],
                 summary["seconds"], summary.get("loss", float("nan")), out / "model.pt")
    elif args.action == "embed":
        from alice.anatomy.train import embed_cases, load_model

        known = set(splits["train"]) | set(splits.get("val", []))
        for case in args.case:
            if case not in known:
                raise ConfigError("--case", f"'{case}' is not a case of {splits_path}")
        model = load_model(args.model)
        times = embed_cases(model, data, args.case, Path(args.out_dir),
                            extra_meta={"model": str(args.model)})
        for case, seconds in times.items():
            log.info("embedded %s in %.2f s -> %s", case, seconds, Path(args.out_dir) / f"{case}.npz")
    else:  # evaluate
        from alice.anatomy.evaluate import matching_report
        from alice.anatomy.learned import load_embeddings
        from alice.io import atomic_path

        settings = _settings(args, cfg.matching_settings)
        cases = sorted(set(splits["train"]) | set(splits.get("val", [])))
        summary, points = matching_report(data, Path(args.truth), cases,
                                          embeddings_dir=Path(args.embeddings),
                                          n_pairs=settings["pairs"], seed=settings["seed"])
        # the learned matcher's one-off cost: embedding a volume (recorded by `embed`)
        secs = [load_embeddings(Path(args.embeddings) / f"{c}.npz")[2].get("seconds") for c in cases]
        secs = [x for x in secs if x is not None]
        summary["embed_seconds_per_volume"] = [
            float(sum(secs) / len(secs)) if (m == "sam" and secs) else float("nan")
            for m in summary["matcher"]]
        out = Path(args.out or "results/anatomy/matching.csv")
        points_out = out.with_name(out.stem + "_points.csv")
        with atomic_path(out, suffix=".csv") as tmp, atomic_path(points_out, suffix=".csv") as tmp_p:
            summary.to_csv(tmp, index=False, float_format="%.4f")
            points.to_csv(tmp_p, index=False, float_format="%.4f")
        log.info("landmark matching error (mm) over %d pairs:\n%s", settings["pairs"],
                 summary.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


def cmd_finetune(args) -> None:
    """Check --init against --method (the checkpoint's own method is checked where it is loaded,
    with --allow-unfinished deciding about a pretraining state under way), then fine-tune."""
    scratch = args.init == "scratch"
    if args.method == "rand_init" and not scratch:
        raise ConfigError("--init", f"rand_init trains from scratch: pass --init scratch, not '{args.init}'")
    if args.method != "rand_init" and scratch:
        raise ConfigError("--init", f"scratch is rand_init's initialisation; run '{args.method}' "
                                    "needs its pretraining checkpoint")
    _finetune(args)


def _finetune(args) -> None:
    data = Path(args.data) if args.data else Path("results/data") / args.dataset
    _check_fold(data / "folds.json", args.fold, args.dataset)
    if args.dataset == "mosmed":
        if args.labeled is not None or args.subset_seed is not None:
            raise ConfigError("--labeled", "applies to segmentation (flare22, btcv) only; mosmed "
                                           "uses --label-fraction")
        return _finetune_classification(args)
    from alice.downstream.segmentation import finetune

    if args.label_fraction:
        raise ConfigError("--label-fraction", "applies to --dataset mosmed only")
    if (args.labeled is None) != (args.subset_seed is None):
        raise ConfigError("--labeled", "a low-label run needs both --labeled and --subset-seed")
    settings = _settings(args, lambda c: cfg.finetune_settings(c, args.backbone))
    device = args.device or settings.get("device", "auto")
    threads = args.threads or settings.get("threads", 1)
    summary = finetune(dataset=args.dataset, backbone=args.backbone, method=args.method,
                       init=args.init, fold=args.fold, data_dir=data, out_dir=Path(args.out),
                       settings=settings["finetune"], encoder_config=settings["encoder"],
                       seed=settings["seed"], device=device, threads=threads,
                       progress=not args.no_progress, labeled=args.labeled,
                       subset_seed=args.subset_seed, allow_unfinished=args.allow_unfinished,
                       fast_path=settings.get("fast_path"))
    run = (f"{args.labeled} labeled (subset {args.subset_seed})" if args.labeled is not None
           else f"fold {args.fold}")
    log.info("fine-tuned %s/%s/%s %s: %s", args.dataset, args.method, args.backbone, run,
             {k: summary[k] for k in summary if k in ("steps", "seconds")})
    if args.evaluate:
        _evaluate(args.dataset, Path(args.out), data, Path(args.out) / "metrics.json", "test",
                  device, threads, not args.no_progress)


def _check_fold(path: Path, fold: int, dataset: str) -> None:
    """Refuse a --fold that `path` (folds.json) does not hold, before the stage removes the old
    outputs of the run. A missing or malformed file is left to the stage, which names it."""
    from alice.io import read_json

    key, name = ("repeats", "repeat") if dataset == "mosmed" else ("folds", "fold")
    try:
        entries = read_json(path)[key] if path.is_file() else None
    except (ValueError, TypeError, KeyError):
        return
    if not isinstance(entries, list):
        return
    known = sorted(e[name] for e in entries if isinstance(e, dict) and isinstance(e.get(name), int))
    if fold not in known:
        held = ", ".join(str(k) for k in known) or "none"
        raise ConfigError("--fold", f"{path} has no {name} {fold} ({name}s: {held})")


def _finetune_classification(args) -> None:
    """MosMed: one classifier per label fraction of split --fold, each in OUT/labels<percent>/."""
    from alice.data.folds import label_fraction_dir
    from alice.downstream.classification import evaluate_classifier, finetune_classifier, split_fractions

    settings = _settings(args, lambda c: cfg.classification_settings(c, args.backbone))
    device = args.device or settings.get("device", "auto")
    threads = args.threads or settings.get("threads", 1)
    data = Path(args.data) if args.data else Path("results/data/mosmed")
    fractions = args.label_fraction or split_fractions(data, args.fold)
    for fraction in fractions:
        out = Path(args.out) / label_fraction_dir(fraction)
        summary = finetune_classifier(backbone=args.backbone, method=args.method, init=args.init,
                                      fold=args.fold, label_fraction=fraction, data_dir=data,
                                      out_dir=out, settings=settings["classification"],
                                      encoder_config=settings["encoder"], seed=settings["seed"],
                                      device=device, threads=threads, progress=not args.no_progress,
                                      allow_unfinished=args.allow_unfinished,
                                      fast_path=settings.get("fast_path"))
        log.info("fine-tuned mosmed/%s/%s split %d, %g labels: %d iterations in %.1f s",
                 args.method, args.backbone, args.fold, fraction, summary["iterations"],
                 summary["seconds"])
        if args.evaluate:
            evaluate_classifier(model_dir=out, data_dir=data, out_path=out / "metrics.json",
                                split="test", device=device, threads=threads)


def _evaluate(dataset, model_dir, data, out, split, device, threads, progress,
              allow_fold_mismatch=False) -> None:
    if dataset == "mosmed":  # its splits are the model's own: nothing to mismatch
        from alice.downstream.classification import evaluate_classifier

        evaluate_classifier(model_dir=model_dir, data_dir=data, out_path=out, split=split,
                            device=device, threads=threads)
        return
    from alice.downstream.inference import evaluate

    metrics = evaluate(dataset=dataset, model_dir=model_dir, data_dir=data, out_path=out,
                       split=split, device=device, threads=threads, progress=progress,
                       allow_fold_mismatch=allow_fold_mismatch)
    log.info("%s: mean DSC %.4f, NSD %.4f over %d cases -> %s", model_dir,
             metrics["mean"]["dsc"], metrics["mean"]["nsd"], len(metrics["cases"]), out)


def cmd_evaluate(args) -> None:
    data = Path(args.data) if args.data else Path("results/data") / args.dataset
    out = Path(args.out) if args.out else Path(args.model_dir) / "metrics.json"
    _evaluate(args.dataset, Path(args.model_dir), data, out, args.split, args.device or "auto",
              args.threads or 1, not args.no_progress, args.allow_fold_mismatch)


def cmd_nnunet(args) -> None:
    """nnU-Net v2 on one fold (alice.downstream.nnunet): the nnU-Net rows of Tables 2 and 3."""
    def from_config(c):
        section = c.get("finetune", {}).get("nnunet")
        if section is None:
            raise ConfigError("finetune.nnunet", "missing: no nnU-Net settings")
        return {**section, "seed": c["seed"]}

    from alice.downstream.nnunet import run_nnunet

    settings = _settings(args, from_config)
    data = Path(args.data) if args.data else Path("results/data") / args.dataset
    _check_fold(data / "folds.json", args.fold, args.dataset)
    work = Path(args.work) if args.work else Path("results/nnunet") / args.dataset / f"fold{args.fold}"
    metrics = run_nnunet(dataset=args.dataset, fold=args.fold, data_dir=data, out_dir=Path(args.out),
                         work_dir=work, settings=settings, threads=args.threads or 1,
                         device=args.device or "cpu", progress=not args.no_progress,
                         keep_work=args.keep_work)
    log.info("nnU-Net %s fold %d: mean DSC %.4f, NSD %.4f over %d cases -> %s", args.dataset,
             args.fold, metrics["mean"]["dsc"], metrics["mean"]["nsd"], metrics["n_cases"], args.out)


def cmd_predict(args) -> None:
    """Submission files of a test set whose labels are not public (BTCV online)."""
    from alice.downstream.submission import write_submission

    data = Path(args.data) if args.data else Path("results/data") / args.dataset
    manifest = write_submission(dataset=args.dataset, model_dirs=args.model_dir, data_dir=data,
                                out_dir=Path(args.out), split=args.split,
                                device=args.device or "auto", threads=args.threads or 1,
                                progress=not args.no_progress)
    log.info("%d %s files (%s) -> %s", len(manifest["files"]), args.split, manifest["ensemble"],
             args.out)


def cmd_table(args) -> None:
    from alice.tables import render
    from alice.tables.spec import load_spec, table_settings

    if args.action == "row":
        settings = _settings(args, table_settings)
        frame = render.compute_row(args.table, args.row, settings)
        render.write_row(frame, Path(args.out))
        done = int((frame["status"] == "reproduced").sum())
        log.info("%s row %s: %d/%d cells reproduced -> %s", args.table, args.row, done,
                 len(frame), args.out)
    else:
        rows_dir = Path(args.rows_dir)
        row_files = {r["row"]: rows_dir / f"{r['row']}.csv" for r in load_spec(args.table)["rows"]}
        sources = Path(args.sources) if args.sources else render.default_sources_path(Path(args.csv))
        render.render_table(args.table, row_files, Path(args.csv), Path(args.tex), sources)
        log.info("%s written to %s and %s (cell provenance: %s)", args.table, args.csv, args.tex,
                 sources)


def cmd_summary(args) -> None:
    from alice.tables.reference import table_id
    from alice.tables.summary import write_summary

    try:
        tables = [table_id(t) for t in args.table] or None
    except KeyError as exc:
        raise ConfigError("--table", str(exc).strip("'\"")) from None
    summary, tests = write_summary(Path(args.rows_dir), Path(args.csv), Path(args.tests),
                                   Path(args.figure), tables=tables, root=Path(args.root))
    tested = tests[tests["p_value"].notna()]
    log.info("%d reproduced cells -> %s; %d paired comparisons (%d with a test) -> %s; figure %s",
             len(summary), args.csv, len(tests), len(tested), args.tests, args.figure)


def cmd_effect(args) -> None:
    from alice.figures.effect import write_effect

    cases, tests = write_effect([Path(m) for m in args.metrics], Path(args.csv), Path(args.tests),
                                Path(args.figure), scale=args.scale)
    for row in tests[tests["metric"] == "dsc"].itertuples():
        log.info("%d labeled: %s vs %s DSC %.4f vs %.4f, p %s (%d seeds): %s", row.labeled,
                 row.method, row.reference, row.mean_method, row.mean_reference, row.p_value,
                 row.n_pairs, row.direction)
    log.info("%d lines -> %s; %d tests -> %s; figure %s", len(cases), args.csv, len(tests),
             args.tests, args.figure)


def cmd_figure(args) -> None:
    if args.figure == "curves":
        from alice.figures.curves import draw_loss_curves

        draw_loss_curves(Path(args.log), Path(args.out), title=args.title)
        log.info("figure written to %s", args.out)
    if args.figure == "matching":
        from alice.figures.matching import draw_matching_figure

        draw_matching_figure(Path(args.points), Path(args.data), Path(args.truth),
                             Path(args.embeddings), Path(args.out))
        log.info("figure written to %s", args.out)
    if args.figure == "phantom":
        from alice.figures.phantom import draw_phantom_figure

        draw_phantom_figure(Path(args.flare), Path(args.mosmed), Path(args.out))
        log.info("figure written to %s", args.out)
    if args.figure == "overlays":
        from alice.figures.overlays import draw_overlays

        draw_overlays(_labelled(args.run, "--run"), Path(args.data), Path(args.out),
                      max_cases=args.max_cases, title=args.title)
        log.info("figure written to %s", args.out)
    if args.figure == "finetune":
        from alice.figures.curves import draw_finetune_curves

        runs: dict[str, list[str]] = {}
        for label, path in _labelled(args.log, "--log"):
            runs.setdefault(label, []).append(path)  # a label's logs in the order given
        draw_finetune_curves(list(runs.items()), Path(args.out), title=args.title)
        log.info("figure written to %s", args.out)


def _labelled(values: list[str], option: str) -> list[tuple[str, str]]:
    """LABEL=PATH arguments as (label, path) pairs (the label is everything before the first '=')."""
    pairs = []
    for value in values:
        label, sep, path = value.partition("=")
        if not sep or not label.strip() or not path:
            raise ConfigError(option, f"expects LABEL=PATH, got {value!r}")
        pairs.append((label.strip(), path))
    return pairs


def cmd_config(args) -> None:
    import yaml

    config = cfg.load_config(args.config)
    sys.stdout.write(yaml.safe_dump(config, sort_keys=False))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="alice", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="STAGE")

    def stage(name, func, help_text, settings=True):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", default=None,
                       help="config YAML (default: config/config.yaml of this checkout)")
        if settings:
            p.add_argument("--settings", default=None,
                           help="JSON of the stage's settings (overrides --config; used by rules)")
        p.set_defaults(func=func)
        return p

    p = stage("phantom", cmd_phantom, "write a synthetic CT dataset in the release's layout")
    p.add_argument("--dataset", required=True, choices=["flare22", "btcv", "mosmed"])
    p.add_argument("--out", required=True, help="release root to write")
    p.add_argument("--seed", type=seed_int, default=None, help="override phantom.seed")

    p = stage("prepare", cmd_prepare, "validate a release and build the preprocessing cache")
    p.add_argument("--dataset", required=True, choices=list(cfg.DATASETS))
    p.add_argument("--root", default=None,
                   help="release root (default: the configured root, or the phantom's folder)")
    p.add_argument("--out", required=True, help="cache folder, e.g. results/data/flare22: empty, or an earlier `alice prepare` output (.alice-prepare.json)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    p = stage("folds", cmd_folds, "write the seeded cross-validation splits of a prepared dataset")
    p.add_argument("--dataset", required=True, choices=list(cfg.DATASETS))
    p.add_argument("--data", required=True, help="prepared cache folder (holds manifest.json)")
    p.add_argument("--out", default=None, help="default: DATA/folds.json")
    p.add_argument("--seed", type=seed_int, default=None, help="override the config's seed")

    p = stage("anatomy", cmd_anatomy, "the learned anatomical-embedding matcher (SAM-style): "
              "train | embed | evaluate")
    p.add_argument("action", choices=["train", "embed", "evaluate"])
    p.add_argument("--data", default="results/data/flare22_pool",
                   help="train, embed: the anatomy cache (results/anatomy/data); evaluate: the "
                        "pool's cache, where points are matched")
    p.add_argument("--folds", default=None,
                   help="the pool's folds.json (default: DATA/folds.json)")
    p.add_argument("--out", default=None, help="train: model folder; evaluate: matching.csv "
                   "(per-landmark rows go to <stem>_points.csv)")
    p.add_argument("--model", default="results/anatomy/model/model.pt", help="embed: the model")
    p.add_argument("--case", action="append", default=[], help="embed: a case id (repeatable)")
    p.add_argument("--out-dir", default="results/anatomy/embeddings",
                   help="embed: folder of <case>.npz")
    p.add_argument("--embeddings", default="results/anatomy/embeddings", help="evaluate")
    p.add_argument("--truth", default="results/phantoms/flare22/phantom_truth",
                   help="evaluate: phantom ground truth (landmarks)")
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--no-progress", action="store_true")

    p = stage("pretrain", cmd_pretrain, "self-supervised pretraining of an encoder "
              "(resumes from OUT/resume.pt; OUT/checkpoint.pt appears when finished; exit 75 = preempted, resubmit to resume)")
    p.add_argument("--method", required=True, help="an SSL method (one file: alice.ssl.catalog) or one "
                   "of its ablation variants as a run id <method>__<switch>-<value> (alice.ssl.variants)")
    p.add_argument("--encoder", required=True, choices=list(ENCODERS),
                   help="the transformers vit, swin, nnformer; the CNN family resnet3d, unet3d, "
                   "nsunet3d, unet, vnet (pretrain.encoders)")
    p.add_argument("--out", required=True, help="e.g. results/pretrain/<run>/<encoder>")
    p.add_argument("--embeddings", default="results/anatomy/embeddings",
                   help="cached anatomical embeddings of the pool (methods that mine matched crops "
                   "with pretrain.pairs.matcher: sam)")
    p.add_argument("--data", default="results/data/flare22_pool",
                   help="prepared unlabeled pool (manifest.json + folds.json)")
    p.add_argument("--steps", type=positive_int, default=None, help="override optim.iterations")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    p.add_argument("--device", default=None, choices=["cpu", "cuda", "auto"])
    p.add_argument("--no-progress", action="store_true")

    p = stage("finetune", cmd_finetune, "fine-tune a segmentation network on one fold, or "
              "(mosmed) a classifier on one split per label fraction")
    p.add_argument("--dataset", required=True, choices=["flare22", "btcv", "mosmed"])
    p.add_argument("--backbone", required=True,
                   help="segmentation: unetr, swin_unetr, nnformer (encoders vit, swin, nnformer) or "
                   "Table 2's resnet_unet, unet3d, nsunet3d, unet, vnet (encoders resnet3d, unet3d, "
                   "nsunet3d, unet, vnet); --init must be a checkpoint of that encoder; mosmed: vit, "
                   "resnet3d")
    p.add_argument("--method", required=True, help="pretraining run that made --init (a method "
                   "or a variant run id: the checkpoint must record its method); rand_init: none")
    p.add_argument("--init", required=True, help="'scratch' (rand_init only) or a pretraining "
                   "checkpoint (any other method)")
    p.add_argument("--allow-unfinished", action="store_true", help="also take an unfinished "
                   "pretraining state (resume.pt) as --init")
    p.add_argument("--fold", required=True, type=non_negative_int, help="fold (mosmed: split) "
                   "index; with --labeled: the fold whose number of optimizer steps the run takes")
    p.add_argument("--labeled", type=positive_int, default=None, help="segmentation: train on "
                   "this many labeled training cases (a seeded subset of every fold's cases, no "
                   "validation) instead of the fold's")
    p.add_argument("--subset-seed", type=seed_int, default=None,
                   help="with --labeled: which subset (the same for every method)")
    p.add_argument("--label-fraction", type=fraction, action="append", default=[],
                   help="mosmed: train on this label fraction of the split (repeatable; default: "
                   "every fraction of folds.json), each in OUT/labels<percent>/")
    p.add_argument("--out", required=True, help="fold folder: model.pt, log.csv, ... "
                   "(mosmed: one labels<percent>/ subfolder per label fraction)")
    p.add_argument("--data", default=None, help="prepared cache (default results/data/DATASET)")
    p.add_argument("--device", default=None, choices=["cpu", "cuda", "auto"])
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    p.add_argument("--evaluate", action="store_true", help="also score the test cases")
    p.add_argument("--no-progress", action="store_true")

    p = stage("evaluate", cmd_evaluate, "score a fine-tuned model on the test cases",
              settings=False)
    p.add_argument("--dataset", required=True, choices=["flare22", "btcv", "mosmed"])
    p.add_argument("--model-dir", required=True, help="folder holding model.pt")
    p.add_argument("--out", default=None, help="default: MODEL_DIR/metrics.json; the predictions go beside it, in predictions/ (metrics.json) or <stem>_predictions/ (any other name), replaced with it as one set")
    p.add_argument("--data", default=None, help="prepared cache (default results/data/DATASET)")
    p.add_argument("--split", type=split_name, default="test", help="'test' or 'val:K' (fold K's "
                   "val cases; K must be the model's fold); mosmed: 'test' or 'val' of the model's "
                   "split")
    p.add_argument("--allow-fold-mismatch", action="store_true", help="score 'val:K' even when "
                   "it holds cases the model trained on (another fold's, a low-label subset's)")
    p.add_argument("--device", default=None, choices=["cpu", "cuda", "auto"])
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--no-progress", action="store_true")

    p = stage("predict", cmd_predict, "write the online test set's submission files "
              "(BTCV: labelXXXX.nii.gz on each test image's grid, plus manifest.json)",
              settings=False)
    p.add_argument("--dataset", required=True, choices=["btcv"])
    p.add_argument("--model-dir", required=True, action="append",
                   help="folder holding model.pt; repeat it for the mean softmax of several models")
    p.add_argument("--out", required=True, help="e.g. results/btcv_online/alice (replaced)")
    p.add_argument("--data", default=None, help="prepared cache (default results/data/DATASET)")
    p.add_argument("--split", type=split_name, default="online_test",
                   help="a case list of folds.json")
    p.add_argument("--device", default=None, choices=["cpu", "cuda", "auto"])
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--no-progress", action="store_true")

    p = stage("nnunet", cmd_nnunet, "nnU-Net v2 (nnunetv2: its planning, preprocessing, "
              "training, prediction) on one fold's training cases, scored on the fold's test cases "
              "like `alice evaluate` (Tables 2, 3)")
    p.add_argument("--dataset", required=True, choices=["flare22", "btcv"])
    p.add_argument("--fold", required=True, type=non_negative_int)
    p.add_argument("--out", required=True, help="e.g. results/finetune/flare22/nnunet/nnunet/fold0: "
                   "metrics.json, predictions/, plans.json, checkpoint_final.pth, train_summary.json")
    p.add_argument("--data", default=None, help="prepared cache (default results/data/DATASET)")
    p.add_argument("--work", default=None, help="nnU-Net's raw/preprocessed/results folders "
                   "(default results/nnunet/DATASET/foldK; cleared first, removed after)")
    p.add_argument("--keep-work", action="store_true", help="keep the --work folder")
    p.add_argument("--device", default=None, choices=["cpu", "cuda", "auto"])
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch threads and nnU-Net's processes")
    p.add_argument("--no-progress", action="store_true")

    p = stage("table", cmd_table, "compute a table row, or render a table to CSV + LaTeX")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = actions.add_parser("row", help="one paper row: reproduced cells beside the paper's")
    a.add_argument("--table", required=True, help="e.g. table1")
    a.add_argument("--row", required=True, help="row slug, e.g. rand_init")
    a.add_argument("--out", required=True, help="e.g. results/rows/table1/rand_init.csv")
    a = actions.add_parser("render", help="join a table's rows into CSV + LaTeX")
    a.add_argument("--table", required=True, help="e.g. table1")
    a.add_argument("--rows-dir", required=True, help="e.g. results/rows/table1")
    a.add_argument("--csv", required=True, help="e.g. results/table1.csv")
    a.add_argument("--tex", required=True, help="e.g. results/table1.tex")
    a.add_argument("--sources", default=None, help="per-cell provenance (settings hash, code "
                   "version, result files); default: <csv stem>.sources.csv beside --csv")

    p = stage("summary", cmd_summary, "reproduced vs reported over every table (one line per "
              "reproduced cell, with its scale and protocol; no difference to the paper at demo "
              "scale), paired Wilcoxon tests of Alice against the best reproduced baseline and "
              "of each ablation switch against Alice's default, and a figure",
              settings=False)
    p.add_argument("--rows-dir", default="results/rows", help="folder of the tables' row files")
    p.add_argument("--table", action="append", default=[],
                   help="only this table (repeatable; default: Tables 1-11)")
    p.add_argument("--csv", default="results/summary.csv")
    p.add_argument("--tests", default="results/summary_tests.csv")
    p.add_argument("--figure", default="results/figures/summary.png")
    p.add_argument("--root", default=".", help="folder the row files' source paths are relative to")

    p = stage("effect", cmd_effect, "the pretraining effect at low label counts: per-organ "
              "scores of every low-label run, paired Wilcoxon tests of each method against "
              "rand_init per labeled count (paired over subset seeds, one model each, its test "
              "cases averaged first), and a figure",
              settings=False)
    p.add_argument("--metrics", action="append", required=True, metavar="METRICS_JSON",
                   help="a low-label run's metrics.json (alice finetune --labeled N --subset-seed "
                   "S --evaluate); repeat for every run")
    p.add_argument("--scale", required=True, choices=["demo", "paper"],
                   help="the config's scale, stamped on every output")
    p.add_argument("--csv", default="results/pretraining_effect.csv")
    p.add_argument("--tests", default="results/pretraining_effect_tests.csv")
    p.add_argument("--figure", default="results/figures/pretraining_effect.png")

    p = stage("figure", cmd_figure, "draw a figure", settings=False)
    figs = p.add_subparsers(dest="figure", required=True, metavar="FIGURE")
    f = figs.add_parser("phantom", help="axial/coronal/sagittal slices of two phantoms")
    f.add_argument("--flare", default="results/phantoms/flare22", help="FLARE22 release root")
    f.add_argument("--mosmed", default="results/phantoms/mosmed", help="MosMed release root")
    f.add_argument("--out", default="results/figures/phantom.png")
    f = figs.add_parser("matching", help="matched landmarks on slices (paper Fig. 5/6 style)")
    f.add_argument("--points", default="results/anatomy/matching_points.csv")
    f.add_argument("--data", default="results/data/flare22_pool")
    f.add_argument("--truth", default="results/phantoms/flare22/phantom_truth")
    f.add_argument("--embeddings", default="results/anatomy/embeddings")
    f.add_argument("--out", default="results/figures/matching.png")
    f = figs.add_parser("overlays", help="one axial slice per test case: image, ground truth and "
                        "each method's prediction (paper Fig. 4/7 style)")
    f.add_argument("--run", action="append", required=True, metavar="LABEL=DIR",
                   help="a method's label and its fine-tuned fold folder (metrics.json and "
                   "predictions/ written by `alice evaluate`); repeat per method, in column order")
    f.add_argument("--data", required=True, help="the dataset's preprocessing cache, e.g. "
                   "results/data/flare22 (<case>.json names the source image and label)")
    f.add_argument("--out", required=True, help="e.g. results/figures/overlays_flare22_unetr.png")
    f.add_argument("--max-cases", type=positive_int, default=4,
                   help="rows: the first N test cases by id")
    f.add_argument("--title", default=None)
    f = figs.add_parser("finetune", help="fine-tuning curves: loss and val Dice per fold of "
                        "each method")
    f.add_argument("--log", action="append", required=True, metavar="LABEL=LOG",
                   help="a method's label and one fold's log.csv; repeat per fold and method")
    f.add_argument("--out", required=True, help="e.g. results/figures/finetune_flare22_unetr.png")
    f.add_argument("--title", default=None)
    f = figs.add_parser("curves", help="loss curves of a training log.csv")
    f.add_argument("--log", required=True, help="e.g. results/pretrain/<run>/<encoder>/log.csv")
    f.add_argument("--out", required=True, help="e.g. results/figures/pretrain_alice_vit.png")
    f.add_argument("--title", default=None)

    stage("config", cmd_config, "validate a config and print it with defaults filled in",
          settings=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # a bad option (one line already printed, exit 2) or --help (0)
        return exc.code if isinstance(exc.code, int) else 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        args.func(args)
    except HarnessError as exc:
        print(f"alice {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        if exc.errno is None:  # not a failed system call: a bug, keep its traceback
            raise
        log.debug("alice %s: a file operation failed", args.command, exc_info=True)
        print(f"alice {args.command}: error: {_os_error_line(exc)}", file=sys.stderr)
        return EX_NOPERM if exc.errno in (errno.EACCES, errno.EPERM) else EX_IOERR
    except KeyboardInterrupt:
        # outside a training loop (which checkpoints on the first Ctrl-C), or a second Ctrl-C
        print(f"alice {args.command}: interrupted (Ctrl-C); outputs are written atomically, so none "
              "is half-written", file=sys.stderr)
        return EX_INTERRUPTED
    return 0


def _os_error_line(exc: OSError) -> str:
    """`<file>: permission denied` (or the system's other reason), with the second file of a
    rename; the reason alone when the call named no file (e.g. a full disk while writing)."""
    reason = (exc.strerror or errno.errorcode.get(exc.errno, str(exc.errno))).lower()
    if exc.filename is None:
        return reason
    target = f" -> {exc.filename2}" if exc.filename2 is not None else ""
    return f"{exc.filename}{target}: {reason}"


if __name__ == "__main__":
    sys.exit(main())
