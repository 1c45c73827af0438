import math

import numpy as np
import pytest

from alice.anatomy.evaluate import compare_matchers, landmark_error_mm, random_pairs, summarize
from alice.anatomy.matcher import (
    MATCHERS,
    BodyBoxMatcher,
    Matcher,
    RandomMatcher,
    Volume,
    body_box,
    build_matcher,
)
from alice.errors import ConfigError


def _box_volume(cid, shape, lo, hi, spacing=(1.0, 1.0, 1.0), value=0.5):
    img = np.zeros(shape, dtype=np.float32)
    img[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1, lo[2] : hi[2] + 1] = value
    return Volume(cid, img, np.asarray(spacing), np.diag([*spacing, 1.0]))


def test_body_box_keeps_largest_component():
    vol = _box_volume("a", (40, 40, 30), (5, 8, 3), (24, 29, 19))
    vol.image[35:38, 35:38, 25:28] = 0.9  # a small detached blob (table, arm): ignored
    lo, hi = body_box(vol.image)
    assert lo.tolist() == [5, 8, 3] and hi.tolist() == [24, 29, 19]
    lo, hi = body_box(np.zeros((4, 5, 6)))
    assert lo.tolist() == [0, 0, 0] and hi.tolist() == [3, 4, 5]


def test_identity_maps_point_to_itself():
    vol = _box_volume("a", (40, 40, 30), (5, 8, 3), (24, 29, 19))
    m = BodyBoxMatcher()
    assert isinstance(m, Matcher)
    for p in ([5, 8, 3], [10.3, 20.7, 11.2], [24, 29, 19]):
        out, score = m.match(vol, p, vol)
        assert np.allclose(out, p, atol=1e-9) and score == pytest.approx(1.0)


def test_recovers_translation_and_scale():
    q = _box_volume("q", (40, 40, 30), (5, 8, 3), (24, 29, 19))
    # key body: x scaled by 2 and shifted, y shifted, z scaled by 0.5
    k = _box_volume("k", (60, 50, 30), (10, 2, 1), (48, 23, 9))
    m = BodyBoxMatcher()
    for p in ([5, 8, 3], [14.5, 18.5, 11.0], [24, 29, 19]):
        p = np.asarray(p, float)
        expected = np.array([10 + (p[0] - 5) * 2, 2 + (p[1] - 8), 1 + (p[2] - 3) * 0.5])
        out, score = m.match(q, p, k)
        assert np.allclose(out, expected, atol=1e-9)
    # score = product of per-axis extent ratios: x 20/39, y 22/22, z 9/17
    assert score == pytest.approx((20 / 39) * 1.0 * (9 / 17))
    # the same extents in mm (key spacing compensates the voxel counts) score 1
    k2 = _box_volume("k2", (60, 50, 30), (10, 2, 1), (29, 23, 17), spacing=(1.0, 1.0, 1.0))
    assert m.match(q, [10, 10, 10], k2)[1] == pytest.approx(1.0)


def test_point_outside_body_scores_zero():
    q = _box_volume("q", (40, 40, 30), (5, 8, 3), (24, 29, 19))
    out, score = BodyBoxMatcher().match(q, [1, 1, 1], q)
    assert score == 0.0 and np.all(out >= 0)


def test_registry():
    assert set(MATCHERS) >= {"bbox", "random"}
    assert isinstance(build_matcher("bbox"), BodyBoxMatcher)
    assert isinstance(build_matcher("random", seed=3), RandomMatcher)
    with pytest.raises(ConfigError):
        build_matcher("nope")
    with pytest.raises(ConfigError):
        build_matcher("bbox", bogus=1)


def test_random_matcher_inside_key_box_and_seeded():
    k = _box_volume("k", (60, 50, 30), (10, 2, 1), (48, 23, 9))
    a = [RandomMatcher(seed=1).match(k, [0, 0, 0], k)[0] for _ in range(2)]
    assert np.allclose(a[0], a[1])
    out, score = RandomMatcher(seed=2).match(k, [0, 0, 0], k)
    assert score == 0.0 and np.all(out >= [10, 2, 1]) and np.all(out <= [48, 23, 9])


# ----------------------------------------------------------------------- phantom landmarks
@pytest.fixture(scope="module")
def phantom_pool(tmp_path_factory):
    from alice.data.phantom import write_dataset
    from alice.data.preprocess import prepare

    root = tmp_path_factory.mktemp("phantom")
    summary = write_dataset(
        "flare22", root / "FLARE22", {"labeled": 0, "unlabeled": 3, "validation": 0},
        geometry={"inplane_voxels": 32, "slice_mm": [8.0, 10.0], "truncate_prob": 0.0}, workers=1,
    )
    out = root / "cache"
    settings = {"spacing": [12.0, 12.0, 10.0], "window": [-125, 255], "cache_dtype": "float32"}
    manifest = prepare("flare22_pool", root / "FLARE22", out, settings, progress=False)
    return out, summary["truth_dir"], [c["case_id"] for c in manifest["cases"]]


def test_landmark_errors_beat_random_on_phantoms(phantom_pool):
    data_dir, truth_dir, ids = phantom_pool
    assert len(ids) == 3
    pairs = random_pairs(ids, 100)
    assert len(pairs) == 6 and all(a != b for a, b in pairs)
    bbox = landmark_error_mm(build_matcher("bbox"), data_dir, truth_dir, pairs)
    rand = landmark_error_mm(build_matcher("random", seed=0), data_dir, truth_dir, pairs)
    assert len(bbox) == len(rand) > 20
    assert all(math.isfinite(e) and e >= 0 for e in bbox + rand)
    assert np.mean(bbox) < np.mean(rand)
    # a volume matched onto itself: only the landmark -> voxel rounding is left (none: exact)
    self_err = landmark_error_mm(build_matcher("bbox"), data_dir, truth_dir, [(ids[0], ids[0])])
    assert max(self_err) < 1e-6
    rows = landmark_error_mm(build_matcher("bbox"), data_dir, truth_dir, pairs[:1], details=True)
    assert set(rows[0]) == {"query", "key", "landmark", "error_mm", "score", "seconds"}
    summary = compare_matchers(["bbox", "random"], data_dir, truth_dir, pairs)
    assert summary["bbox"]["mean"] < summary["random"]["mean"]
    assert summarize([])["n"] == 0
