import numpy as np
import pytest
from scipy import ndimage

from alice.anatomy.grid import cell_centre
from alice.anatomy.learned import (
    Embeddings,
    LearnedMatcher,
    best_cell,
    load_embeddings,
    query_vectors,
    save_embeddings,
    similarity_map,
    trilinear,
)
from alice.anatomy.matcher import MATCHERS, Matcher, Volume, build_matcher
from alice.errors import ConfigError, InputError

FS, CS = 2, 8


def _pool(field, s):
    """(C, X, Y, Z) voxel features -> (C, ceil(X/s), ...) cell means (cell i = voxels i*s..i*s+s-1)."""
    c, *shape = field.shape
    g = [-(-n // s) for n in shape]
    padded = np.pad(field, [(0, 0)] + [(0, gi * s - n) for gi, n in zip(g, shape)], mode="edge")
    out = padded.reshape(c, g[0], s, g[1], s, g[2], s).mean(axis=(2, 4, 6))
    return out / np.linalg.norm(out, axis=0, keepdims=True)


def _canvas(seed=0, shape=(72, 64, 56), c=16, sigma=1.5):
    """Unit random features with detail at `sigma` voxels (fine) plus a 4x broader part (coarse)."""
    rng = np.random.default_rng(seed)
    f = np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), sigma) / np.sqrt(sigma)
                  + ndimage.gaussian_filter(rng.standard_normal(shape), 4 * sigma) for _ in range(c)])
    return f / np.linalg.norm(f, axis=0, keepdims=True)


def _volume(tmp_path, cid, field, meta_extra=None):
    shape = field.shape[1:]
    path = tmp_path / f"{cid}.npz"
    save_embeddings(path, _pool(field, FS).astype(np.float16), _pool(field, CS).astype(np.float16),
                    {"shape": list(shape), "fine_stride": FS, "coarse_stride": CS, **(meta_extra or {})})
    return Volume(cid, np.zeros(shape, np.float32), np.ones(3), np.eye(4), path)


def test_recovers_a_known_translation(tmp_path):
    canvas = _canvas()
    d = np.array([16, 8, 8])  # the query sees the canvas shifted by d voxels
    key = _volume(tmp_path, "key", canvas[:, :48, :48, :40])
    query = _volume(tmp_path, "query", canvas[:, d[0]:d[0] + 48, d[1]:d[1] + 48, d[2]:d[2] + 32])
    m = build_matcher("sam", refine=False)
    assert isinstance(m, LearnedMatcher) and isinstance(m, Matcher) and MATCHERS["sam"] is LearnedMatcher
    rng = np.random.default_rng(1)
    for _ in range(10):
        cell = rng.integers([2, 2, 2], [14, 12, 12])
        p = cell_centre(cell, FS)  # query point at a fine cell centre -> exact answer exists
        out, score = m.match(query, p, key)
        assert np.allclose(out, p + d), (p, out)
        # fine cos = 1 there; the coarse term is an interpolated cosine (< 1 between coarse centres)
        assert 0.6 < score <= 1.0
    # off-centre query points land within one fine cell of the truth; the sub-cell refinement
    # moves at most half a cell and is closer on average
    refined = LearnedMatcher()
    err, err_ref = [], []
    for _ in range(30):
        p = rng.uniform([4, 4, 4], [26, 22, 22])
        out, _ = m.match(query, p, key)
        out_ref, _ = refined.match(query, p, key)
        assert np.abs(out - (p + d)).max() <= FS and np.abs(out_ref - out).max() <= FS / 2 + 1e-9
        err.append(np.linalg.norm(out - (p + d)))
        err_ref.append(np.linalg.norm(out_ref - (p + d)))
    assert np.mean(err_ref) < np.mean(err)


def test_self_match_and_bounds(tmp_path):
    vol = _volume(tmp_path, "v", _canvas(2)[:, :33, :41, :27])  # sizes not divisible by the strides
    m = LearnedMatcher(refine=False)
    p = cell_centre([5, 7, 3], FS)
    out, score = m.match(vol, p, vol)
    assert np.allclose(out, p) and 0.6 < score <= 1.0
    out, _ = m.match(vol, [32, 40, 26], vol)  # last cell's centre (32.5, ...) is clipped into the grid
    assert np.all(out <= np.array([32, 40, 26])) and np.all(out >= 0)


def test_coarse_to_fine_equals_brute_force(tmp_path):
    rng = np.random.default_rng(0)
    for seed in range(3):
        field = _canvas(seed, shape=(40, 32, 24), c=8)
        emb = Embeddings.from_maps(_pool(field, FS), _pool(field, CS), FS, CS, field.shape[1:])
        for _ in range(10):
            qf, qc = rng.standard_normal(8), rng.standard_normal(8)
            qf, qc = qf / np.linalg.norm(qf), qc / np.linalg.norm(qc)
            sim = similarity_map(emb, qf, qc)
            truth = np.unravel_index(np.argmax(sim), sim.shape)
            idx, value = best_cell(emb, qf, qc, top_k=None)  # every coarse cell a candidate
            assert tuple(idx) == truth and value == pytest.approx(sim.max())
        # with a real key's own query vectors the default top-k search finds the brute-force optimum
        for _ in range(10):
            qf, qc = query_vectors(emb, rng.uniform(0, 23, 3))
            sim = similarity_map(emb, qf, qc)
            idx, value = best_cell(emb, qf, qc, top_k=4, window=1)
            assert value == pytest.approx(sim.max(), abs=1e-6)


def test_trilinear_matches_scipy():
    rng = np.random.default_rng(0)
    grid = rng.random((5, 6, 7))
    pts = rng.uniform(0, 4, (20, 3))
    assert np.allclose(trilinear(grid, pts), ndimage.map_coordinates(grid, pts.T, order=1))
    assert np.allclose(trilinear(grid, [[-3.0, 0.0, 0.0]]), grid[0, 0, 0])  # border-clamped
    assert trilinear(rng.random((1, 1, 1, 4)), [[0.3, 0.2, 0.0]]).shape == (1, 4)


def test_embeddings_round_trip_and_errors(tmp_path):
    fine = np.random.default_rng(0).random((4, 3, 3, 2)).astype(np.float16)
    coarse = fine[:, :1, :1, :1]
    meta = {"shape": [6, 6, 4], "fine_stride": 2, "coarse_stride": 8, "case_id": "x"}
    save_embeddings(tmp_path / "x.npz", fine, coarse, meta)
    f2, c2, m2 = load_embeddings(tmp_path / "x.npz")
    assert np.array_equal(f2, fine) and f2.dtype == np.float16 and m2 == meta
    assert [p.name for p in tmp_path.iterdir()] == ["x.npz"]  # no temporary left behind
    with pytest.raises(ValueError):
        save_embeddings(tmp_path / "y.npz", fine, coarse, {"shape": [6, 6, 4]})
    (tmp_path / "bad.npz").write_text("not a zip")
    with pytest.raises(InputError, match="bad.npz"):
        load_embeddings(tmp_path / "bad.npz")


def test_missing_or_stale_embeddings(tmp_path):
    vol = Volume("gone", np.zeros((8, 8, 8), np.float32), np.ones(3), np.eye(4), tmp_path / "gone.npz")
    with pytest.raises(InputError, match="gone.npz"):
        LearnedMatcher().match(vol, [1, 1, 1], vol)
    bare = Volume("bare", np.zeros((16, 16, 16), np.float32), np.ones(3), np.eye(4))
    with pytest.raises(ConfigError):
        LearnedMatcher().match(bare, [1, 1, 1], bare)
    # without Volume.embeddings, embeddings_dir/<case_id>.npz is used
    field = _canvas(0, shape=(16, 16, 16), c=4)
    good = _volume(tmp_path, "bare", field)
    assert LearnedMatcher(embeddings_dir=tmp_path).match(bare, [1, 1, 1], good)[0].shape == (3,)
    wrong = Volume("bare", np.zeros((9, 8, 8), np.float32), np.ones(3), np.eye(4), good.embeddings)
    with pytest.raises(InputError, match="stale"):
        LearnedMatcher().match(wrong, [1, 1, 1], wrong)
    with pytest.raises(ConfigError):
        build_matcher("sam", top_k=0)
