import json

import numpy as np
import pytest
from scipy import ndimage

from alice.anatomy.grid import cell_centre
from alice.anatomy.learned import (
    Embeddings,
    LearnedMatcher,
    best_cell,
    embedding_bytes,
    load_embeddings,
    open_embeddings,
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
    assert np.array_equal(f2, fine) and f2.dtype == np.float16 and m2 == {**meta, "layout": "channels_last"}
    assert np.array_equal(c2, coarse)
    assert [p.name for p in tmp_path.iterdir()] == ["x.npz"]  # no temporary left behind
    # the matcher's view: fine memory-mapped as stored (float16, channels last), coarse float32
    emb = open_embeddings(tmp_path / "x.npz")
    assert isinstance(emb.fine, np.memmap) and emb.fine.dtype == np.float16 and emb.fine.shape == (3, 3, 2, 4)
    assert np.array_equal(emb.fine, np.moveaxis(fine, 0, -1)) and emb.coarse.dtype == np.float32
    assert emb.affine is None and emb.shape == (6, 6, 4)
    with pytest.raises(ValueError):
        save_embeddings(tmp_path / "y.npz", fine, coarse, {"shape": [6, 6, 4]})
    (tmp_path / "bad.npz").write_text("not a zip")
    with pytest.raises(InputError, match="bad.npz"):
        load_embeddings(tmp_path / "bad.npz")
    # an older channels-first file (no layout) is refused, naming the file
    np.savez(tmp_path / "old.npz", fine=fine, coarse=coarse, meta=np.asarray(json.dumps(meta)))
    with pytest.raises(InputError, match="old.npz.*layout"):
        open_embeddings(tmp_path / "old.npz")


def test_embedding_bytes_is_the_file_size(tmp_path):
    shape, c = (37, 30, 21), 16  # not multiples of the strides: ceil(n / s) cells per axis
    b = embedding_bytes(shape, FS, CS, c)
    assert b["fine"] == 19 * 15 * 11 * c * 2 and b["coarse"] == 5 * 4 * 3 * c * 2
    assert b["total"] == b["fine"] + b["coarse"]
    field = _canvas(0, shape=shape, c=c)
    _volume(tmp_path, "v", field)
    size = (tmp_path / "v.npz").stat().st_size
    assert b["total"] < size < b["total"] + 2048  # npz headers and the meta JSON
    assert embedding_bytes(shape, FS, CS, c, np.float32)["total"] == 2 * b["total"]


def test_matches_across_grids_through_the_affines(tmp_path):
    """Embeddings on a coarser grid than the volumes (anatomy cache vs pool cache): query points and
    matches are voxels of the volumes; the maps are read at the world-equivalent positions."""
    canvas = _canvas(3)
    d = np.array([16, 8, 8])  # in embedded voxels (2 mm), as in the translation test
    emb_aff = {"key": np.diag([2.0, 2.0, 2.0, 1.0]), "query": np.diag([2.0, 2.0, 2.0, 1.0])}
    emb_aff["key"][:3, 3] = [100.0, -50.0, 20.0]
    emb_aff["query"][:3, 3] = [-30.0, 10.0, 5.0]
    fields = {"key": canvas[:, :48, :48, :40],
              "query": canvas[:, d[0]:d[0] + 48, d[1]:d[1] + 48, d[2]:d[2] + 32]}
    vols = {}
    for cid, field in fields.items():
        source = {"path": f"/src/{cid}.nii.gz", "size": 1, "mtime_ns": 1}
        _volume(tmp_path, cid, field, {"affine": emb_aff[cid].tolist(), "source": source})
        # the volume's own (pool) grid: 1 mm voxels starting 3 mm before the embedded grid
        pool = np.eye(4)
        pool[:3, 3] = emb_aff[cid][:3, 3] - 3.0
        shape = tuple(2 * n + 6 for n in field.shape[1:])
        vols[cid] = Volume(cid, np.zeros(shape, np.float32), np.ones(3), pool, tmp_path / f"{cid}.npz",
                           {"identity": {"source": {"image": source}}})
    m = LearnedMatcher(refine=False)
    rng = np.random.default_rng(2)
    for _ in range(8):
        cell = rng.integers([2, 2, 2], [14, 12, 12])
        e = cell_centre(cell, FS)  # a fine cell centre of the query's embedded grid
        p = 2.0 * e + 3.0  # the same point in the query volume's 1 mm grid
        out, score = m.match(vols["query"], p, vols["key"])
        assert np.allclose(out, 2.0 * (e + d) + 3.0), (p, out)
        assert 0.6 < score <= 1.0
    # embeddings of another source than the volume's are stale
    other = Volume("key", vols["key"].image, np.ones(3), vols["key"].affine, vols["key"].embeddings,
                   {"identity": {"source": {"image": {"path": "/src/else.nii.gz", "size": 2, "mtime_ns": 1}}}})
    with pytest.raises(InputError, match="stale"):
        m.match(vols["query"], [10, 10, 10], other)


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
