"""Score point matchers against the phantoms' ground-truth landmarks.

For a (query, key) pair of phantom cases and each landmark present in both fields of view, the
query landmark's world position (phantom truth, RAS+ mm) is converted into the query's cached
voxel grid (``inv(cached_affine) @ world``), matched into the key, and the error is the distance
in mm between the match and the key's true landmark, both in the key's cached world frame.
Every scan has its own world origin, so distances are only ever taken inside the key volume.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from alice.anatomy.matcher import Matcher, Volume, build_matcher
from alice.io import read_json


def _landmarks(truth_dir: Path, case_id: str) -> dict[str, np.ndarray]:
    truth = read_json(Path(truth_dir) / f"{case_id}.json")
    return {lm["name"]: np.asarray(lm["world"], dtype=np.float64) for lm in truth["landmarks"] if lm.get("in_fov")}


def _inside(vol: Volume, voxel: np.ndarray) -> bool:
    return bool(np.all(voxel >= -0.5) and np.all(voxel <= np.asarray(vol.shape) - 0.5))


def landmark_error_mm(
    matcher: Matcher,
    data_dir: str | Path,
    truth_dir: str | Path,
    pairs: Iterable[tuple[str, str]],
    *,
    details: bool = False,
) -> list[float] | list[dict[str, Any]]:
    """Per-landmark matching errors (mm) of `matcher` over `pairs` of (query, key) case ids.

    Landmarks count when they are in both fields of view (truth ``in_fov``) and inside both cached
    grids. details=True returns dicts (query, key, landmark, error_mm, score, seconds) instead of
    bare floats; `seconds` is the wall time of that one `match` call.
    """
    vols: dict[str, Volume] = {}
    marks: dict[str, dict[str, np.ndarray]] = {}

    def vol(cid: str) -> Volume:
        if cid not in vols:
            vols[cid] = Volume.load(data_dir, cid)
            marks[cid] = _landmarks(Path(truth_dir), cid)
        return vols[cid]

    out: list[Any] = []
    for q_id, k_id in pairs:
        q, k = vol(q_id), vol(k_id)
        for name in sorted(set(marks[q_id]) & set(marks[k_id])):
            pq = q.world_to_voxel(marks[q_id][name])
            pk_true = k.world_to_voxel(marks[k_id][name])
            if not (_inside(q, pq) and _inside(k, pk_true)):
                continue
            t0 = time.perf_counter()
            pk, score = matcher.match(q, pq, k)
            dt = time.perf_counter() - t0
            err = float(np.linalg.norm(k.voxel_to_world(pk) - marks[k_id][name]))
            if details:
                out.append(
                    {"query": q_id, "key": k_id, "landmark": name, "error_mm": err, "score": float(score), "seconds": dt}
                )
            else:
                out.append(err)
    return out


def random_pairs(case_ids: Sequence[str], n: int, seed: int = 0) -> list[tuple[str, str]]:
    """`n` distinct ordered (query, key) pairs of different cases (all of them if fewer exist)."""
    ids = list(case_ids)
    every = [(a, b) for a, b in itertools.permutations(ids, 2)]
    if n >= len(every):
        return every
    rng = np.random.default_rng(seed)
    return [every[i] for i in sorted(rng.choice(len(every), size=n, replace=False))]


def summarize(errors: Sequence[float]) -> dict[str, float]:
    e = np.asarray(errors, dtype=np.float64)
    if e.size == 0:
        return {"n": 0, "mean": float("nan"), "median": float("nan"), "p90": float("nan")}
    return {"n": int(e.size), "mean": float(e.mean()), "median": float(np.median(e)), "p90": float(np.percentile(e, 90))}


def compare_matchers(
    names: Sequence[str], data_dir: str | Path, truth_dir: str | Path, pairs: Sequence[tuple[str, str]], seed: int = 0
) -> dict[str, dict[str, float]]:
    """Error summary + mean seconds per match for each named matcher (the random one seeded)."""
    result = {}
    for name in names:
        matcher = build_matcher(name, seed=seed) if name == "random" else build_matcher(name)
        rows = landmark_error_mm(matcher, data_dir, truth_dir, pairs, details=True)
        summary = summarize([r["error_mm"] for r in rows])
        secs = [r["seconds"] for r in rows]
        summary["seconds_per_match"] = float(np.mean(secs)) if secs else float("nan")
        result[name] = summary
    return result


# ------------------------------------------------------------------------------------ the report
MATCHING_COLUMNS = ["matcher", "n", "mean_mm", "median_mm", "p90_mm", "seconds_per_match",
                    "pairs", "volumes"]
POINT_COLUMNS = ["matcher", "query", "key", "landmark", "error_mm", "score", "seconds"]


def matching_report(
    data_dir: str | Path,
    truth_dir: str | Path,
    case_ids: Sequence[str],
    *,
    embeddings_dir: str | Path | None,
    n_pairs: int,
    seed: int = 0,
    matchers: Sequence[str] = ("sam", "bbox", "random"),
):
    """(summary, points) DataFrames: landmark errors of each matcher over the same random pairs.

    summary has one row per matcher (MATCHING_COLUMNS); points one row per matched landmark
    (POINT_COLUMNS). The learned matcher ("sam") reads embeddings from `embeddings_dir`.
    """
    import pandas as pd

    pairs = random_pairs(case_ids, n_pairs, seed)
    summaries, points = [], []
    for name in matchers:
        if name == "random":
            matcher = build_matcher(name, seed=seed)
        elif name == "sam":
            matcher = build_matcher(name, embeddings_dir=embeddings_dir)
        else:
            matcher = build_matcher(name)
        rows = landmark_error_mm(matcher, data_dir, truth_dir, pairs, details=True)
        s = summarize([r["error_mm"] for r in rows])
        secs = [r["seconds"] for r in rows]
        summaries.append({"matcher": name, "n": s["n"], "mean_mm": s["mean"], "median_mm": s["median"],
                          "p90_mm": s["p90"], "seconds_per_match": float(np.mean(secs)) if secs else float("nan"),
                          "pairs": len(pairs), "volumes": len(set(case_ids))})
        points += [{"matcher": name, **r} for r in rows]
    return (pd.DataFrame(summaries, columns=MATCHING_COLUMNS),
            pd.DataFrame(points, columns=POINT_COLUMNS))
