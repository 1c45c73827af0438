import csv
import json

import numpy as np
import pytest
import torch
from scipy import ndimage

from alice.anatomy.learned import LearnedMatcher, load_embeddings
from alice.anatomy.matcher import Volume
from alice.anatomy.train import (
    embed_cases,
    embed_volume,
    load_model,
    resolve_settings,
    train_anatomy,
)
from alice.errors import ConfigError, InputError

TINY = {
    "model": {"widths": [4, 8, 8], "blocks": [1, 1, 1], "stem_width": 4, "stem_kernel": [3, 3, 3], "fpn_dim": 8,
              "embed_dim": 8},
    "pairs": {"crop": [16, 16, 16], "points": 8},
    "iterations": 2,
    "batch_size": 2,
    "fine_top": 20,
    "fine_negatives": 10,
    "warmup_iterations": 1,
}


@pytest.fixture
def cache(tmp_path):
    """A preprocessing-cache look-alike with three small smooth volumes (4x4x5 mm)."""
    d = tmp_path / "cache"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        img = ndimage.gaussian_filter(rng.random((26, 30, 20)), 2.0)
        img = ((img - img.min()) / (img.max() - img.min())).astype(np.float32)
        np.save(d / f"c{i}_image.npy", img)
        meta = {"files": {"image": f"c{i}_image.npy", "label": None},
                "cached": {"spacing": [4.0, 4.0, 5.0], "affine": np.diag([4.0, 4.0, 5.0, 1.0]).tolist()}}
        (d / f"c{i}.json").write_text(json.dumps(meta))
    return d


def test_training_smoke_checkpoint_and_log(cache, tmp_path):
    out = tmp_path / "run"
    summary = train_anatomy(cache, ["c0", "c1", "c2"], out, TINY, seed=0, progress=False)
    assert summary["steps"] == 2 and np.isfinite(summary["loss"])
    rows = list(csv.DictReader((out / "log.csv").open()))
    assert [int(r["step"]) for r in rows] == [0, 1]
    assert all(np.isfinite(float(r[k])) for r in rows for k in ("loss", "fine", "coarse", "lr"))
    ckpt = torch.load(out / "model.pt", weights_only=True)
    assert set(ckpt) >= {"model", "config", "settings", "step"} and ckpt["step"] == 2
    assert ckpt["config"]["embed_dim"] == 8 and ckpt["settings"]["iterations"] == 2
    net = load_model(out / "model.pt")
    assert not net.training
    for k, v in net.state_dict().items():
        assert torch.equal(v, ckpt["model"][k])
    assert sorted(p.name for p in out.iterdir()) == ["log.csv", "model.pt"]  # no temporaries


def test_training_options_smoke(cache, tmp_path):
    # SAM's coarse negatives from other volumes off, an extra view per volume, per-axis zoom, remap
    opts = {**TINY, "coarse_other_volumes": False, "fine_random_negatives": 0, "iterations": 1,
            "pairs": {**TINY["pairs"], "extra_view": True, "zoom_per_axis": True, "intensity_remap": 0.1}}
    summary = train_anatomy(cache, ["c0", "c1"], tmp_path / "run", opts, seed=1, progress=False)
    assert np.isfinite(summary["loss"]) and summary["steps"] == 1


def test_same_seed_same_weights(cache, tmp_path):
    runs = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        train_anatomy(cache, ["c0", "c1"], tmp_path / name, {**TINY, "optimizer": "sgd", "lr": 0.02}, seed=seed,
                      progress=False)
        runs.append(torch.load(tmp_path / name / "model.pt", weights_only=True)["model"])
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


def test_embed_and_match(cache, tmp_path):
    train_anatomy(cache, ["c0", "c1"], tmp_path / "run", TINY, seed=0, progress=False)
    net = load_model(tmp_path / "run" / "model.pt")
    img = np.load(cache / "c0_image.npy", mmap_mode="r")
    fine, coarse = embed_volume(net, img)
    assert fine.shape == (8, 13, 15, 10) and coarse.shape == (8, 4, 4, 3) and fine.dtype == np.float16
    assert np.allclose(np.linalg.norm(fine.astype(np.float32), axis=0), 1.0, atol=2e-3)
    times = embed_cases(net, cache, ["c0", "c1"], tmp_path / "emb")
    assert set(times) == {"c0", "c1"}
    f2, _, meta = load_embeddings(tmp_path / "emb" / "c0.npz")
    assert np.array_equal(f2, fine) and meta["shape"] == [26, 30, 20] and meta["fine_stride"] == 2
    q, k = Volume.load(cache, "c0", tmp_path / "emb"), Volume.load(cache, "c1", tmp_path / "emb")
    out, score = LearnedMatcher().match(q, [10.0, 12.0, 8.0], k)
    assert out.shape == (3,) and 0.0 <= score <= 1.0 and np.all(out <= np.asarray(k.shape) - 1)


def test_settings_validation(tmp_path):
    s = resolve_settings({"model": {"embed_dim": 16}, "lr": "0.01"})
    assert s["model"]["embed_dim"] == 16 and s["model"]["fine_stride"] == 2 and s["lr"] == 0.01
    json.dumps(s)  # plain values only
    for bad in ({"bogus": 1}, {"optimizer": "adam"}, {"iterations": 0}, {"model": {"fine_stride": 3}},
                {"pairs": {"crop": [8, 8]}}, {"temperature": 0}):
        with pytest.raises(ConfigError):
            resolve_settings(bad)
    (tmp_path / "bad.pt").write_bytes(b"nope")
    with pytest.raises(InputError, match="bad.pt"):
        load_model(tmp_path / "bad.pt")


def _without_seconds(path):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(path.open())]


@pytest.mark.parametrize("how", ["sigterm", "periodic state"])
def test_interrupted_training_resumes_exactly(cache, tmp_path, how):
    import os
    import signal

    from alice.runstate import Preempted

    settings = {**TINY, "iterations": 5, "checkpoint_every": 2 if how == "periodic state" else 0}
    cases = ["c0", "c1", "c2"]
    train_anatomy(cache, cases, tmp_path / "straight", settings, seed=0, progress=False)

    class Killed(Exception):
        pass

    def stop(step):
        if step == 3:
            if how == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)
            else:  # dies without a word, like SIGKILL: only the periodic state of step 2 is left
                raise Killed

    out = tmp_path / "cut"
    with pytest.raises(Preempted if how == "sigterm" else Killed):
        train_anatomy(cache, cases, out, settings, seed=0, progress=False, step_callback=stop)
    assert (out / "resume.pt").is_file() and not (out / "model.pt").exists()
    summary = train_anatomy(cache, cases, out, settings, seed=0, progress=False)
    assert summary["resumed_from"] == [3 if how == "sigterm" else 2]
    assert not (out / "resume.pt").exists()
    a = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)["model"]
    b = torch.load(out / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _without_seconds(tmp_path / "straight" / "log.csv") == _without_seconds(out / "log.csv")
    with pytest.raises(Preempted):
        train_anatomy(cache, cases, tmp_path / "other", settings, seed=0, progress=False,
                      step_callback=lambda s: s == 1 and os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(InputError, match="cannot resume.*settings.lr"):
        train_anatomy(cache, cases, tmp_path / "other", {**settings, "lr": 0.5}, seed=0, progress=False)
