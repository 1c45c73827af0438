"""Pathology: focal lesions in abdominal organs, ground-glass opacities (GGO) in the lungs.

Lesions are ellipsoids inside liver, kidneys, spleen or pancreas, hypo- or hyper-dense (or cysts),
painted only over their organ and labeled as that organ (as FLARE22 does).

GGOs are smooth blobs of -700..-300 HU inside the lungs, preferring the periphery and the
dependent (posterior) lung as COVID-19 pneumonia does. Their volume is set exactly: the voxels
with the highest "propensity" are chosen up to a target share of the lung volume, drawn inside
the band of the study's MosMed category.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from alice.data.phantom.anatomy import CODE, Layer
from alice.data.phantom.shapes import Ellipsoid, rotation

LESION_ORGANS = (("liver", 0.55), ("kidney_r", 0.1), ("kidney_l", 0.1), ("spleen", 0.1), ("pancreas", 0.15))
LESION_RADIUS_MM = {"liver": (6.0, 24.0), "kidney_r": (5.0, 14.0), "kidney_l": (5.0, 14.0), "spleen": (5.0, 14.0), "pancreas": (6.0, 12.0)}
ORGAN_TISSUE = {"liver": "liver", "kidney_r": "kidney_cortex", "kidney_l": "kidney_cortex", "spleen": "spleen", "pancreas": "pancreas"}

# MosMed categories: share of lung volume with GGO, [lo, hi) (CT-4 includes 1.0); targets are
# drawn inside with a margin so the achieved fraction stays in band on any grid. CT-1 starts at 8 %,
# not 3 %: a 3 % GGO of -700 HU edges is a few voxels of the demo's 64x64x32 MosMed volumes, and
# the scratch ViT classifier separated CT-0 from CT-1+ by no better than 0.62 AUC on such phantoms
# (0.68 at CT-1 8-23 %; benchmarks/mosmed_trial.py, docs/finetuning.md "Classification").
GGO_BANDS = {0: (0.0, 0.0), 1: (0.0, 0.25), 2: (0.25, 0.50), 3: (0.50, 0.75), 4: (0.75, 1.0)}
GGO_TARGETS = {0: (0.0, 0.0), 1: (0.08, 0.23), 2: (0.28, 0.47), 3: (0.53, 0.72), 4: (0.78, 0.95)}
GGO_BLOBS = {1: (2, 6), 2: (5, 10), 3: (8, 14), 4: (10, 18)}


def draw_lesions(rng: np.random.Generator, layers: list[Layer]) -> list[dict]:
    """Random lesions (0-3) placed inside the canonical organ shapes."""
    by_name = {layer.name: layer for layer in layers}
    n = int(rng.choice([0, 0, 0, 1, 1, 2, 3]))
    names = [o for o, _ in LESION_ORGANS]
    probs = np.array([p for _, p in LESION_ORGANS])
    lesions = []
    for _ in range(n):
        organ = names[int(rng.choice(len(names), p=probs / probs.sum()))]
        layer = by_name[organ]
        r_lo, r_hi = LESION_RADIUS_MM[organ]
        base = float(rng.uniform(r_lo, r_hi))
        radii = base * rng.uniform(0.8, 1.2, 3)
        angles = rng.uniform(-90.0, 90.0, 3)
        kind = str(rng.choice(["cyst", "hypodense", "hyperdense"], p=[0.35, 0.45, 0.2]))
        delta = {"cyst": float(rng.uniform(0.0, 18.0)), "hypodense": -float(rng.uniform(22.0, 55.0)), "hyperdense": float(rng.uniform(30.0, 80.0))}[kind]
        lo, hi = layer.shape.box()
        cand = lo[:, None] + (hi - lo)[:, None] * rng.random((3, 256))
        d = layer.shape.sdf(cand.astype(np.float32))
        ok = np.nonzero(d < -0.6 * base)[0]
        if len(ok) == 0:
            ok = np.nonzero(d < 0)[0]
        if len(ok) == 0:
            continue
        center = cand[:, ok[0]]
        lesions.append(
            {
                "organ": organ,
                "kind": kind,
                "center_canonical_mm": [round(float(v), 2) for v in center],
                "radii_mm": [round(float(v), 2) for v in radii],
                "rotation_deg": [round(float(v), 1) for v in angles],
                "hu_delta" if kind != "cyst" else "hu": round(delta, 1),
                "group": layer.group,
            }
        )
    return lesions


def lesion_layers(lesions: list[dict]) -> list[Layer]:
    out = []
    for i, les in enumerate(lesions):
        organ = les["organ"]

        def tissue(subj, pl, pf, d, cur, les=les, organ=organ):
            target = les["hu"] if les["kind"] == "cyst" else subj.hu[ORGAN_TISSUE[organ]] + les["hu_delta"]
            w = np.clip(-d / 2.5, 0.0, 1.0)
            return cur * (1.0 - w) + target * w

        shape = Ellipsoid(tuple(les["center_canonical_mm"]), tuple(les["radii_mm"]), rotation(*les["rotation_deg"]))
        out.append(Layer(f"lesion_{i}", shape, tissue, group=les["group"], label=organ, within=(organ,)))
    return out


def add_ggo(rng, canvas, subject, category: int) -> tuple[np.ndarray | None, dict]:
    """Paint GGOs into the canvas' lungs; returns the RAS-ordered mask and truth entries."""
    lung = (canvas.sid == CODE["lung_r"]) | (canvas.sid == CODE["lung_l"])
    n_lung = int(lung.sum())
    voxel_ml = float(np.prod(canvas.grid.spacing_ras)) / 1000.0
    info = {"lung_volume_ml": round(n_lung * voxel_ml, 1), "ggo_band": list(GGO_BANDS[category])}
    if category == 0 or n_lung == 0:
        info.update(ggo_fraction=0.0, ggo_target_fraction=0.0, ggo_volume_ml=0.0, ggo_blobs=[])
        return (np.zeros(lung.shape, dtype=bool) if category == 0 else None), info
    lo, hi = GGO_TARGETS[category]
    target = float(rng.uniform(lo, hi))
    pts = canvas.P[:, lung]  # frame coordinates (3, N)
    k_lo, k_hi = GGO_BLOBS[category]
    n_blobs = int(rng.integers(k_lo, k_hi + 1))
    idx = rng.choice(n_lung, size=min(n_blobs, n_lung), replace=False)
    centers = pts[:, idx].astype(np.float64)
    sigmas = rng.uniform(18.0, 45.0, len(idx))
    weights = rng.uniform(0.6, 1.2, len(idx))
    g = 0.35 * subject.fields["ggo"].sample(pts)
    for c, s, w in zip(centers.T, sigmas, weights):
        d2 = np.sum((pts - c.reshape(3, 1).astype(np.float32)) ** 2, axis=0)
        g += w * np.exp(-d2 / (2 * s * s))
    # periphery (distance to the lung border) and dependent (posterior) preference
    dist = ndimage.distance_transform_edt(lung, sampling=canvas.grid.spacing_ras)[lung]
    g += 0.6 * np.exp(-dist / 20.0) + 0.25 * np.clip(-pts[1] / 80.0, -1.0, 1.0)
    k = int(np.clip(round(target * n_lung), 1, n_lung))
    order = np.argpartition(-g, k - 1)
    chosen = np.zeros(n_lung, dtype=bool)
    chosen[order[:k]] = True
    thr = float(g[order[k - 1]])
    top = float(g.max())
    t = np.clip((g[chosen] - thr) / max(top - thr, 1e-6), 0.0, 1.0) ** 0.6
    hu_ggo = -700.0 + 400.0 * t
    hu_lung = canvas.hu[lung]
    hu_lung[chosen] = np.maximum(hu_lung[chosen], hu_ggo)
    canvas.hu[lung] = hu_lung
    mask = np.zeros(lung.shape, dtype=bool)
    mask[lung] = chosen
    info.update(
        ggo_fraction=k / n_lung,
        ggo_target_fraction=round(target, 4),
        ggo_volume_ml=round(k * voxel_ml, 1),
        ggo_blobs=[
            {"center_frame_mm": [round(float(v), 1) for v in c], "sigma_mm": round(float(s), 1)} for c, s in zip(centers.T, sigmas)
        ],
    )
    return mask, info
