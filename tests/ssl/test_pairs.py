import json

import numpy as np
import pytest
import torch

from alice.errors import ConfigError
from alice.ssl.pairs import CropPairDataset, crop_at

SHAPE = (30, 28, 20)


def _write_cache(out, n=3):
    """A minimal preprocessing cache: case i's body box is filled with the value 0.1 * (i + 1)."""
    out.mkdir(parents=True, exist_ok=True)
    ids = []
    for i in range(n):
        cid = f"Case_{i:05d}"
        img = np.zeros(SHAPE, dtype=np.float32)
        img[3 + i : 26, 4 : 24 - i, 2 : 18] = 0.1 * (i + 1)
        np.save(out / f"{cid}_image.npy", img)
        meta = {
            "case_id": cid,
            "files": {"image": f"{cid}_image.npy", "label": None},
            "cached": {"affine": np.diag([2.0, 2.0, 3.0, 1.0]).tolist(), "spacing": [2.0, 2.0, 3.0], "shape": list(SHAPE)},
        }
        (out / f"{cid}.json").write_text(json.dumps(meta))
        ids.append(cid)
    return ids


@pytest.fixture
def cache(tmp_path):
    ids = _write_cache(tmp_path / "cache")
    return tmp_path / "cache", ids


def _ds(cache, **kw):
    d, ids = cache
    kw.setdefault("crop", (16, 12, 8))
    kw.setdefault("batch_size", 4)
    return CropPairDataset(d, ids, **kw)


def _equal(a, b):
    assert torch.equal(a["Q"], b["Q"]) and torch.equal(a["K"], b["K"])
    assert a["q_case"] == b["q_case"] and a["k_case"] == b["k_case"]
    assert torch.equal(a["q_point"], b["q_point"]) and torch.equal(a["k_point"], b["k_point"])


def test_shapes_and_different_volumes(cache):
    b = _ds(cache, seed=1).batch(0)
    assert b["Q"].shape == b["K"].shape == (4, 1, 16, 12, 8) and b["Q"].dtype == torch.float32
    assert all(q != k for q, k in zip(b["q_case"], b["k_case"]))
    assert b["q_point"].shape == b["k_point"].shape == (4, 3) and b["score"].shape == (4,)
    # the crops come from the named volumes: their non-background values are the case's value
    for i in range(4):
        for crop, cid in ((b["Q"][i], b["q_case"][i]), (b["K"][i], b["k_case"][i])):
            vals = np.unique(crop.numpy())
            vals = vals[vals != 0]
            assert vals.size == 1 and vals[0] == pytest.approx(0.1 * (int(cid[-1]) + 1))
    assert torch.all(b["score"] >= 0) and torch.all(b["score"] <= 1)


def test_deterministic_per_seed_and_step(cache):
    a, b = _ds(cache, seed=7), _ds(cache, seed=7)
    _equal(a.batch(5), b.batch(5))
    _equal(a.batch(3), a.batch(3))
    resumed = next(b.batches(start=2))
    _equal(resumed, a.batch(2))
    steps = [x["step"] for x in a.batches(start=4, stop=6)]
    assert steps == [4, 5]
    c = _ds(cache, seed=8).batch(5)
    d = a.batch(6)
    x = a.batch(5)
    assert not torch.equal(c["q_point"], x["q_point"]) or c["q_case"] != x["q_case"]
    assert not torch.equal(d["q_point"], x["q_point"]) or d["q_case"] != x["q_case"]


def test_same_volume_ablation(cache):
    b = _ds(cache, seed=2, same_volume=True, jitter=3).batch(1)
    assert b["q_case"] == b["k_case"]
    assert torch.all((b["k_point"] - b["q_point"]).abs() <= 3)
    assert torch.all(b["score"] == 1)


def test_crop_padding_at_borders():
    img = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE) + 1
    c = crop_at(img, (0, 0, 0), (6, 6, 4))
    assert c.shape == (6, 6, 4)
    assert np.all(c[:3] == 0) and np.all(c[:, :3] == 0) and np.all(c[:, :, :2] == 0)
    assert np.array_equal(c[3:, 3:, 2:], img[:3, :3, :2])
    c = crop_at(img, (29, 27, 19), (6, 6, 4))
    assert np.array_equal(c[:4, :4, :3], img[26:, 24:, 17:]) and np.all(c[4:] == 0)
    assert np.all(crop_at(img, (100, 100, 100), (4, 4, 4)) == 0)
    # a crop larger than the volume
    c = crop_at(img, (15, 14, 10), (40, 40, 30))
    assert c.sum() == img.sum()


class _Scripted:
    """A matcher whose scores follow a script (one per call, then repeat the last)."""

    def __init__(self, scores):
        self.scores = list(scores)
        self.calls = 0

    def match(self, query, point, key):
        s = self.scores[min(self.calls, len(self.scores) - 1)]
        self.calls += 1
        return np.asarray(point, float) + s, s


def test_retry_until_min_score(cache):
    m = _Scripted([0.1, 0.5, 0.8, 0.2])
    b = _ds(cache, batch_size=1, matcher=m, min_score=0.7).batch(0)
    assert m.calls == 3 and b["tries"] == [3] and b["score"][0] == pytest.approx(0.8)


def test_retry_gives_best_after_max_tries(cache):
    m = _Scripted([0.1, 0.6, 0.3, 0.2])
    b = _ds(cache, batch_size=1, matcher=m, min_score=0.7, max_tries=5).batch(0)
    assert m.calls == 5 and b["tries"] == [5] and b["score"][0] == pytest.approx(0.6)
    assert torch.allclose(b["k_point"][0], b["q_point"][0] + 0.6)


def test_bad_config(cache):
    d, ids = cache
    with pytest.raises(ConfigError):
        CropPairDataset(d, ids, crop=(0, 4, 4))
    with pytest.raises(ConfigError):
        CropPairDataset(d, ids[:1])
    with pytest.raises(ConfigError):
        CropPairDataset(d, ids, matcher="nope")
    with pytest.raises(ConfigError):
        CropPairDataset(d, ids, min_score=2)


def test_bbox_pairs_on_body(cache):
    b = _ds(cache, seed=0, batch_size=6).batch(0)
    d, _ = cache
    for i in range(6):
        img = np.load(d / f"{b['q_case'][i]}_image.npy")
        p = b["q_point"][i].numpy().astype(int)
        assert img[tuple(p)] > 0.01


def test_learned_matcher_pairs_on_the_pool_grid(tmp_path, tiny_pool):
    """Pairs mined with the learned matcher whose embeddings live on a coarser anatomy cache: the
    key points are voxels of the pool cache (where the crops are cut), inside the key volume."""
    from alice.anatomy.matcher import Volume
    from alice.anatomy.model import AnatomyNet
    from alice.anatomy.train import embed_cases
    from alice.data.preprocess import prepare

    data = tiny_pool(tmp_path, seed=1, spacing=[6.0, 6.0, 6.0])
    anatomy = tmp_path / "anatomy"
    prepare("flare22_pool", tmp_path / "release", anatomy, {"spacing": [15.0, 15.0, 15.0], "window": [-125, 255]},
            progress=False)
    ids = json.loads((data / "folds.json").read_text())["train"]
    torch.manual_seed(0)
    net = AnatomyNet({"widths": [8, 8, 8], "blocks": [1, 1, 1], "stem_width": 8, "fpn_dim": 8, "embed_dim": 8,
                      "fine_stride": 2, "coarse_stride": 8})
    embed_cases(net, anatomy, ids, tmp_path / "emb")
    ds = CropPairDataset(data, ids, crop=(8, 8, 8), batch_size=6, matcher="sam",
                         matcher_options={"embeddings_dir": tmp_path / "emb"}, min_score=1.0, max_tries=3)
    b = ds.batch(0)
    assert b["K"].shape == (6, 1, 8, 8, 8) and ((b["score"] >= 0) & (b["score"] <= 1)).all()
    beyond = False
    for case, point in zip(b["k_case"], b["k_point"].numpy()):
        pool_vol = Volume.load(data, case)
        anat_vol = Volume.load(anatomy, case)
        assert np.all(point >= 0) and np.all(point <= np.asarray(pool_vol.shape) - 1)
        # the same world point lies inside the anatomy grid the match was found on
        in_anatomy = anat_vol.world_to_voxel(pool_vol.voxel_to_world(point))
        assert np.all(in_anatomy >= -0.5) and np.all(in_anatomy <= np.asarray(anat_vol.shape) - 0.5)
        beyond |= bool(np.any(point > np.asarray(anat_vol.shape)))
    assert beyond  # pool voxels (6 mm), not anatomy voxels (15 mm)
