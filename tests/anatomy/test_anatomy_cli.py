"""`alice anatomy train | embed | evaluate` and `alice figure matching` end to end on a tiny
phantom pool: the report's columns, the per-landmark file, the figure."""

import json

import numpy as np
import pandas as pd
import pytest

from alice.anatomy.evaluate import MATCHING_COLUMNS, POINT_COLUMNS
from alice.anatomy.learned import load_embeddings
from alice.cli import main
from alice.data.preprocess import load_case, prepare

TINY = {"model": {"widths": [8, 8, 8], "blocks": [1, 1, 1], "stem_width": 8, "fpn_dim": 8,
                  "embed_dim": 8, "fine_stride": 2, "coarse_stride": 8},
        "pairs": {"crop": [24, 24, 16], "points": 16}, "iterations": 2, "batch_size": 2,
        "fine_top": 20, "fine_negatives": 10, "warmup_iterations": 0}


@pytest.fixture(scope="module")
def pool(tmp_path_factory, tiny_pool):
    root = tmp_path_factory.mktemp("anatomy")
    return root, tiny_pool(root, seed=5, spacing=[10.0, 10.0, 10.0])


def test_train_embed_evaluate_and_figure(pool, tmp_path):
    """Trained and embedded on its own cache (the pool at another spacing, as the DAG's
    anatomy_prepare makes it), scored on the pool's cache."""
    root, data = pool
    anatomy = tmp_path / "anatomy_data"
    prepare("flare22_pool", root / "release", anatomy, {"spacing": [12.0, 12.0, 12.0], "window": [-125, 255]},
            progress=False)
    folds = ["--folds", str(data / "folds.json")]
    model_dir = tmp_path / "model"
    settings = json.dumps({"train": TINY, "seed": 0})
    assert main(["anatomy", "train", "--data", str(anatomy), *folds, "--out", str(model_dir),
                 "--settings", settings, "--no-progress"]) == 0
    assert (model_dir / "model.pt").is_file() and (model_dir / "log.csv").is_file()

    cases = sorted(p.name[: -len("_image.npy")] for p in data.glob("*_image.npy"))
    emb = tmp_path / "emb"
    args = ["anatomy", "embed", "--data", str(anatomy), *folds, "--model", str(model_dir / "model.pt"),
            "--out-dir", str(emb)]
    for case in cases:
        args += ["--case", case]
    assert main(args) == 0
    fine, coarse, meta = load_embeddings(emb / f"{cases[0]}.npz")
    assert meta["seconds"] > 0 and fine.shape[0] == coarse.shape[0] == 8
    norms = np.linalg.norm(fine.astype(np.float32), axis=0)
    assert np.allclose(norms, 1.0, atol=1e-2)  # l2-normalised (float16 cache)
    # the maps know their grid (the anatomy cache's) and source, not the pool's
    _, _, anatomy_meta = load_case(anatomy, cases[0])
    _, _, pool_meta = load_case(data, cases[0])
    assert meta["shape"] == anatomy_meta["cached"]["shape"] != pool_meta["cached"]["shape"]
    assert np.allclose(meta["affine"], anatomy_meta["cached"]["affine"])
    assert meta["source"] == pool_meta["identity"]["source"]["image"]

    out = tmp_path / "matching.csv"
    assert main(["anatomy", "evaluate", "--data", str(data), "--embeddings", str(emb),
                 "--truth", str(root / "release" / "phantom_truth"), "--out", str(out),
                 "--settings", json.dumps({"pairs": 4, "seed": 0})]) == 0
    summary = pd.read_csv(out)
    assert list(summary.columns) == MATCHING_COLUMNS + ["embed_seconds_per_volume"]
    assert list(summary["matcher"]) == ["sam", "bbox", "random"]
    assert (summary["n"] > 0).all() and (summary["median_mm"] >= 0).all()
    assert summary.loc[0, "embed_seconds_per_volume"] > 0
    assert np.isnan(summary.loc[1, "embed_seconds_per_volume"])
    points = pd.read_csv(tmp_path / "matching_points.csv")
    assert list(points.columns) == POINT_COLUMNS
    assert set(points["matcher"]) == {"sam", "bbox", "random"}
    # the three matchers are scored on the same landmarks
    counts = points.groupby("matcher").size()
    assert counts.nunique() == 1

    png = tmp_path / "matching.png"
    assert main(["figure", "matching", "--points", str(tmp_path / "matching_points.csv"),
                 "--data", str(data), "--truth", str(root / "release" / "phantom_truth"),
                 "--embeddings", str(emb), "--out", str(png)]) == 0
    assert png.stat().st_size > 10_000


def test_embed_rejects_an_unknown_case(pool, tmp_path, capsys):
    _, data = pool
    code = main(["anatomy", "embed", "--data", str(data), "--model", str(tmp_path / "none.pt"),
                 "--case", "Case_99999", "--out-dir", str(tmp_path)])
    assert code == 2 and "'Case_99999' is not a case of" in capsys.readouterr().err
