"""`alice.ssl.run`'s loader for a run that mines matched crops with `multi_crop` / `two_views`
views (Table 5's `ibot__inter_volume-true`): the batches a method expects, cut from CropPairDataset's
pairs, deterministic per (seed, step), resumable, with the mining options in the run identity;
with the switch off the loader is the one-crop loader, unchanged."""

from __future__ import annotations

import math

import pytest
import torch

from alice.io import read_json
from alice.ssl.pairs import CropPairDataset
from alice.ssl.run import _loader
from alice.ssl.views import CropViews

pytestmark = pytest.mark.usefixtures("one_thread")

CROP = [32, 32, 16]
PAIRS = {"matcher": "bbox", "min_score": 0.5, "max_tries": 5}
VIEWS = {"global_views": 2, "local_views": 1}


@pytest.fixture(scope="module")
def pool(tmp_path_factory, tiny_pool):
    return tiny_pool(tmp_path_factory.mktemp("pool"), seed=3, spacing=[12.0, 12.0, 10.0])


def _settings(pool):
    return {"crop": CROP, "optim": {"batch_size": 2}, "pairs": PAIRS}


def test_matched_multi_crop_batches(pool):
    train = list(read_json(pool / "folds.json")["train"])
    factory, identity = _loader("multi_crop", pool, train, _settings(pool), {"views": VIEWS}, None, matched=True)
    assert identity["pairs"] == {**PAIRS, "same_volume": False}
    assert identity["views"]["kind"] == "multi_crop" and identity["views"]["local_views"] == 1
    batches = factory(7, 0)
    first = [next(batches) for _ in range(4)]
    assert set(first[0]) == {"views"} and first[0]["views"].shape == (3, 2, 1, *CROP)
    # the same (seed, step): the same batch, from a new loader or one resumed at that step
    assert torch.equal(next(factory(7, 0))["views"], first[0]["views"])
    assert torch.equal(next(factory(7, 3))["views"], first[3]["views"])
    assert not torch.equal(next(factory(8, 0))["views"], first[0]["views"])
    # they are CropViews' views of CropPairDataset's pairs (another volume for global view 1)
    pairs = CropPairDataset(pool, train, crop=CROP, batch_size=2, seed=7, **PAIRS)
    direct = CropViews("multi_crop", pool, train, crop=CROP, batch_size=2, seed=7, options=VIEWS, pairs=pairs)
    batch = direct.batch(2)
    assert torch.equal(batch["views"], first[2]["views"])
    assert all(q != k for q, k in zip(batch["case"], batch["matched_case"]))


@pytest.mark.parametrize("views, options", [("multi_crop", {"views": VIEWS}), ("two_views", {}), ("crop", {})])
def test_without_mining_the_loader_is_unchanged(pool, views, options):
    train = list(read_json(pool / "folds.json")["train"])
    factory, identity = _loader(views, pool, train, _settings(pool), options, None)
    assert set(identity) == {"views"}
    key = "x" if views == "crop" else "views"
    direct = CropViews(views, pool, train, crop=CROP, batch_size=2, seed=5, options=options.get("views"))
    assert torch.equal(next(factory(5, 1))[key], direct.batch(1)[key])


def test_ibot_inter_volume_pretrains_on_matched_views(pool, tmp_path):
    """Two steps of `ibot__inter_volume-true` (small widths): the mining is part of its identity;
    the plain `ibot` run's identity has none."""
    from alice.ssl.catalog import methods
    from alice.ssl.run import run_pretraining

    info = methods()["ibot"]
    encoder = {"name": "vit", "embed_dim": 24, "depth": 12, "heads": 2, "mlp_ratio": 2, "patch": [16, 16, 16]}
    optim = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05, "betas": [0.9, 0.95], "batch_size": 2,
             "schedule": "cosine", "warmup_iterations": 1, "iterations": 2}
    identities = {}
    for run, inter_volume in (("ibot__inter_volume-true", True), ("ibot", False)):
        method_config = {**info.smoke, "mask_ratio": 0.5, "inter_volume": inter_volume}
        settings = {"method": "ibot", "run": run, "encoder": encoder, "crop": CROP, "method_config": method_config,
                    "optim": optim, "checkpoint_every": 10, "grad_clip": 3.0, "amp": None, "seed": 0,
                    "device": "cpu", "pairs": PAIRS}
        out = tmp_path / run
        summary = run_pretraining(run, "vit", pool, out, settings, progress=False)
        assert summary["step"] == 2
        rows = (out / "log.csv").read_text().splitlines()
        header = rows[0].split(",")
        assert all(math.isfinite(float(r.split(",")[header.index("loss")])) for r in rows[1:])
        ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
        identities[run] = ckpt["identity"]["parts"]
    assert identities["ibot__inter_volume-true"]["pairs"] == {**PAIRS, "same_volume": False}
    assert "pairs" not in identities["ibot"]
