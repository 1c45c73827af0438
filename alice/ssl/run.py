"""One pretraining run, whatever the method: `alice pretrain` parses its arguments and calls
`run_pretraining`.

The method's declaration (alice.ssl.catalog) decides what is cut from the pool: its `views`
(alice.ssl.views; `matched_pair` mines crop pairs with `pretrain.pairs`' matcher, reading the
learned matcher's cached embeddings when it is `sam`; a `two_views` / `multi_crop` method whose
`matcher` switch is on for the run, e.g. `ibot__inter_volume-true`, cuts its views from such pairs),
and the encoders it may pretrain. The rest is
the method-agnostic trainer (alice.ssl.trainer.pretrain): schedules, checkpoints, exact resume.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

from alice.errors import ConfigError, HarnessError
from alice.io import read_json
from alice.ssl.catalog import needs_matcher, require

log = logging.getLogger("alice")

POOL = "flare22_pool"


def _pool_train_cases(data: Path) -> list[str]:
    splits_path = data / "folds.json"
    if not splits_path.is_file():
        raise HarnessError(f"{splits_path}: missing; run `alice prepare` and `alice folds` for "
                           f"{POOL} first")
    return list(read_json(splits_path)["train"])


def _loader(views: str, data: Path, train_ids: list[str], settings: Mapping[str, Any],
            method_config: Mapping[str, Any], embeddings: Path | None,
            matched: bool = False) -> tuple[Any, dict[str, Any]]:
    """(loader_factory(seed, start), what besides the trainer's own arguments decides the batches,
    which a resume must share). `matched`: the run mines matched crops (alice.ssl.catalog
    `needs_matcher`), so `two_views` / `multi_crop` views are cut from matched crop pairs."""
    crop, batch_size = settings["crop"], int(settings["optim"]["batch_size"])
    pairs = settings.get("pairs") or {}
    matcher = pairs.get("matcher", "bbox")
    # the learned matcher reads the cached embeddings of every pool volume (never the network)
    matcher_options = {"embeddings_dir": embeddings} if matcher == "sam" else None

    def mining(same_volume: bool) -> dict[str, Any]:
        return {"matcher": matcher, "min_score": pairs.get("min_score", 0.7),
                "max_tries": pairs.get("max_tries", 100), "same_volume": same_volume}

    def pair_dataset(seed: int, same_volume: bool):
        from alice.ssl.pairs import CropPairDataset

        return CropPairDataset(data, train_ids, crop=crop, batch_size=batch_size, seed=seed,
                               matcher_options=matcher_options, **mining(same_volume))

    if views == "matched_pair":
        # Table 5's "intra-volume" variant: Q and K are two crops of the same volume
        same_volume = not method_config.get("inter_volume", True)

        def factory(seed: int, start: int):
            dataset = pair_dataset(seed, same_volume)
            return ({"Q": b["Q"], "K": b["K"]} for b in dataset.batches(start))

        return factory, {"pairs": mining(same_volume)}

    from alice.ssl.views import CropViews, check_view_options

    options = check_view_options(views, method_config.get("views"), "pretrain.methods.views")
    if matched and views == "crop":
        raise ConfigError("pretrain.method", "matched crops make two_views or multi_crop views, not crop")

    def factory(seed: int, start: int):
        # a run that mines matched crops (e.g. iBOT's inter_volume): the views of Q's and K's crops
        dataset = CropViews(views, data, train_ids, crop=crop, batch_size=batch_size, seed=seed,
                            options=options, pairs=pair_dataset(seed, False) if matched else None)
        return ({k: v for k, v in b.items() if k in ("x", "views")} for b in dataset.batches(start))

    identity: dict[str, Any] = {"views": {"kind": views, **options}}
    if matched:
        identity["pairs"] = mining(False)
    return factory, identity


def run_pretraining(run: str, encoder: str, data: str | Path, out: str | Path, settings: Mapping[str, Any],
                    *, embeddings: str | Path | None = None, steps: int | None = None,
                    device: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Pretrain run `run` (a method or a variant run id) on encoder `encoder` with `settings`
    (alice.config.pretrain_settings); returns the trainer's summary."""
    from alice.ssl.registry import build_method
    from alice.ssl.trainer import pretrain, seed_everything, step_seed

    if settings["encoder"]["name"] != encoder:
        raise ConfigError("--encoder", f"the settings' encoder is '{settings['encoder']['name']}', not '{encoder}'")
    if settings.get("run", run) != run:
        raise ConfigError("--settings", f"are for run '{settings['run']}', not '{run}'")
    method_name = settings.get("method", run.split("__")[0])  # the registered method of a variant run id
    info = require(method_name, "--method")
    if encoder not in info.encoders:
        raise ConfigError("--encoder", f"method '{method_name}' pretrains {', '.join(info.encoders)}, not '{encoder}'")
    data = Path(data)
    train_ids = _pool_train_cases(data)
    optim = dict(settings["optim"])
    if steps:
        optim["iterations"] = steps
    method_config = dict(settings["method_config"])
    # the initial weights depend on the seed only (the trainer reseeds every step from then on)
    seed_everything(step_seed(settings["seed"], -1))
    method = build_method(method_name, method_config, settings["encoder"], settings["crop"])
    if hasattr(method, "attach_pool"):  # a method that cuts its own crops (TransVW's visual words)
        method.attach_pool(data, train_ids)
    # the switch values are in method_config already (alice.config.pretrain_settings), so ask for
    # the method itself with them, not for the run id
    factory, batches = _loader(info.views, data, train_ids, settings, method_config,
                               Path(embeddings) if embeddings else None,
                               matched=info.views != "matched_pair" and needs_matcher(method_name, method_config))
    manifest = read_json(data / "manifest.json")
    identity = {**batches, "data": {"settings_hash": manifest.get("settings_hash"), "train_cases": train_ids}}
    summary = pretrain(method, factory, Path(out), optim=optim, encoder_config=settings["encoder"],
                       method_name=method_name, method_config=method_config,
                       preprocessing={"crop": settings["crop"], "dataset": POOL,
                                      "settings_hash": manifest.get("settings_hash"),
                                      "window": manifest.get("settings", {}).get("window")},
                       checkpoint_every=settings["checkpoint_every"], grad_clip=settings["grad_clip"],
                       seed=settings["seed"], device=device or settings["device"], amp=settings["amp"],
                       progress=progress, identity=identity, fast_path=settings.get("fast_path"))
    log.info("pretrained %s/%s: step %d/%d in %.1f s -> %s", run, encoder, summary["step"],
             summary["iterations"], summary["seconds"], summary["checkpoint"])
    return summary
