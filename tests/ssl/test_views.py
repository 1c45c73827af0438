"""Views cut from matched crop pairs (Table 5's "iBOT, inter-volume"): global view 0 and the local
views from Q's crop, the other global views from K's matched crop of another volume, augmented as
the views of one crop are; without pairs the views are those of one crop, drawn as before."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from alice.ssl.augment import ViewAugmentConfig, view_augment
from alice.ssl.pairs import CropPairDataset
from alice.ssl.views import CropViews

SHAPE = (30, 28, 20)
CROP = (16, 12, 8)
# no geometry or intensity change: a view is its source crop (up to resampling round-off)
IDENTITY = {"scale_range": [1.0, 1.0], "ratio_range": [1.0, 1.0], "max_angle_deg": 0.0, "flip_prob": 0.0,
            "intensity_scale": 0.0, "intensity_shift": 0.0}
MULTI = {"global_views": 3, "local_views": 2, "global_scale": [1.0, 1.0], "local_scale": [1.0, 1.0],
         "augment": IDENTITY}


@pytest.fixture
def cache(tmp_path):
    """A minimal pool cache: case i's body box holds the value 0.1 * (i + 1), so a crop's
    non-background values name its case."""
    out = tmp_path / "cache"
    out.mkdir()
    ids = []
    for i in range(4):
        cid = f"Case_{i:05d}"
        img = np.zeros(SHAPE, dtype=np.float32)
        img[3 + i: 26, 4: 24 - i, 2: 18] = 0.1 * (i + 1)
        np.save(out / f"{cid}_image.npy", img)
        meta = {"case_id": cid, "files": {"image": f"{cid}_image.npy", "label": None},
                "cached": {"affine": np.diag([2.0, 2.0, 3.0, 1.0]).tolist(), "spacing": [2.0, 2.0, 3.0],
                           "shape": list(SHAPE)}}
        (out / f"{cid}.json").write_text(json.dumps(meta))
        ids.append(cid)
    return out, ids


def _case_value(case_id: str) -> float:
    return 0.1 * (int(case_id.split("_")[1]) + 1)


def _views(cache, kind="multi_crop", options=MULTI, seed=3, batch_size=4, matched=True):
    data, ids = cache
    pairs = (CropPairDataset(data, ids, crop=CROP, batch_size=batch_size, seed=seed, matcher="bbox",
                             min_score=0.5, max_tries=5) if matched else None)
    return CropViews(kind, data, ids, crop=CROP, batch_size=batch_size, seed=seed, options=options, pairs=pairs)


@pytest.mark.parametrize("kind, options, n_views", [("multi_crop", MULTI, 5),
                                                     ("two_views", {"augment": IDENTITY}, 2)])
def test_global_view_1_comes_from_the_matched_crop_of_another_volume(cache, kind, options, n_views):
    dataset = _views(cache, kind, options)
    batch = dataset.batch(2)
    pair = dataset.pairs.batch(2)
    views = batch["views"]
    assert views.shape == (n_views, 4, 1, *CROP) and views.dtype == torch.float32
    assert batch["case"] == pair["q_case"] and batch["matched_case"] == pair["k_case"]
    assert all(q != k for q, k in zip(batch["case"], batch["matched_case"]))
    # global view 0 and the local views: Q's crop; the other global views: K's
    sources = [pair["Q"]] + [pair["K"]] * (2 if kind == "multi_crop" else 1) + [pair["Q"]] * (n_views - 3)
    for view, source in zip(views, sources[:n_views]):
        torch.testing.assert_close(view, source, atol=1e-5, rtol=0)
    for b, (q, k) in enumerate(zip(batch["case"], batch["matched_case"])):
        for v, case in ((0, q), (1, k)):
            values = views[v, b].numpy()
            values = values[np.abs(values) > 1e-4]
            assert values.size and np.allclose(values, _case_value(case), atol=1e-4)


def test_matched_views_are_augmented_as_the_views_of_one_crop(cache):
    """The same augmentations, drawn in the same order from the same generator, only the source of
    global views 1, 2 changes."""
    dataset = _views(cache, options={"global_views": 3, "local_views": 2})
    batch = dataset.batch(5)
    pair = dataset.pairs.batch(5)
    generator = torch.Generator().manual_seed(int(np.random.default_rng([3, 5]).integers(2**62)))
    o = dataset.options
    expected = []
    for i, scale in enumerate([o["global_scale"]] * 3 + [o["local_scale"]] * 2):
        config = ViewAugmentConfig(scale_range=tuple(scale))
        expected.append(view_augment(pair["K"] if i in (1, 2) else pair["Q"], generator, config))
    assert torch.equal(batch["views"], torch.stack(expected))


@pytest.mark.parametrize("kind, options", [("multi_crop", {"global_views": 2, "local_views": 3}),
                                           ("two_views", None), ("crop", None)])
def test_without_pairs_the_views_are_those_of_one_crop_as_before(cache, kind, options):
    """The switch off: one crop per sample, every view of it, drawn as CropViews always drew them."""
    dataset = _views(cache, kind, options, matched=False)
    batch = dataset.batch(7)
    x, cases = dataset.crops(7)
    assert batch["case"] == cases and "matched_case" not in batch
    if kind == "crop":
        assert torch.equal(batch["x"], x) and "views" not in batch
        return
    generator = torch.Generator().manual_seed(int(np.random.default_rng([3, 7]).integers(2**62)))
    if kind == "two_views":
        expected = [view_augment(x, generator, ViewAugmentConfig()) for _ in range(2)]
    else:
        scales = [[0.4, 1.0]] * 2 + [[0.05, 0.4]] * 3
        expected = [view_augment(x, generator, ViewAugmentConfig(scale_range=tuple(s))) for s in scales]
    assert torch.equal(batch["views"], torch.stack(expected))


def test_matched_views_are_deterministic_per_seed_and_step(cache):
    a, b = _views(cache, options={"global_views": 2, "local_views": 1}), _views(cache, options={
        "global_views": 2, "local_views": 1})
    first, again = a.batch(4), b.batch(4)
    assert torch.equal(first["views"], again["views"]) and first["matched_case"] == again["matched_case"]
    assert not torch.equal(first["views"], a.batch(5)["views"])
    resumed = next(b.batches(4))
    assert torch.equal(resumed["views"], first["views"])


def test_pairs_must_match_the_views(cache):
    data, ids = cache
    pairs = CropPairDataset(data, ids, crop=CROP, batch_size=4, seed=1)
    with pytest.raises(ValueError, match="crop, batch size and seed"):
        CropViews("multi_crop", data, ids, crop=CROP, batch_size=4, seed=2, pairs=pairs)
    with pytest.raises(ValueError, match="not crop"):
        CropViews("crop", data, ids, crop=CROP, batch_size=4, seed=1, pairs=pairs)
