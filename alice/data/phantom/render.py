"""Render one case: draw the subject, place the scan, paint the anatomy, add pathology,
intensity texture and noise, and return the stored arrays with their ground truth.

All randomness of a case comes from the one `np.random.Generator` passed in, drawn in a fixed
order, so a case depends only on its seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from alice.data.phantom.abdomen import build_abdomen
from alice.data.phantom.anatomy import CODE, Anatomy, Layer
from alice.data.phantom.chest import build_chest
from alice.data.phantom.pathology import add_ggo, draw_lesions, lesion_layers
from alice.data.phantom.scanner import ORIENTATIONS, ScanGrid, make_grid
from alice.data.phantom.texture import Fields, smooth_noise
from alice.data.phantom.warp import SubjectWarp, draw_warp

PAD_MM = 50.0  # distance value where a layer's pieces were not evaluated (far outside)

PHASES = (("non_contrast", 0.25), ("arterial", 0.3), ("portal_venous", 0.45))
_PHASE_INDEX = {"non_contrast": 0, "arterial": 1, "portal_venous": 2}

# tissue: (non-contrast, arterial, portal-venous) mean HU, and the between-subject sd
HU_TABLE: dict[str, tuple[tuple[float, float, float], float]] = {
    "air": ((-1000, -1000, -1000), 0),
    "fat_subcut": ((-105, -105, -105), 8),
    "fat": ((-95, -95, -95), 8),
    "muscle": ((48, 52, 58), 5),
    "lung": ((-860, -860, -860), 25),
    "vessel_lung": ((35, 200, 140), 10),
    "heart": ((42, 180, 120), 10),
    "liver": ((58, 72, 108), 10),
    "spleen": ((50, 95, 115), 8),
    "kidney_cortex": ((32, 175, 165), 12),
    "kidney_medulla": ((30, 70, 150), 12),
    "renal_sinus": ((-55, -55, -55), 15),
    "urine": ((8, 8, 8), 4),
    "adrenal": ((28, 60, 62), 8),
    "pancreas": ((42, 105, 95), 10),
    "bile": ((10, 10, 10), 6),
    "gb_wall": ((35, 60, 70), 6),
    "stomach_wall": ((40, 85, 90), 8),
    "bowel_wall": ((40, 80, 85), 8),
    "water": ((15, 15, 15), 8),
    "food": ((25, 25, 25), 15),
    "oral_contrast": ((260, 260, 260), 60),
    "stool": ((15, 15, 15), 10),
    "esophagus": ((40, 60, 65), 6),
    "artery": ((42, 280, 165), 25),
    "vein": ((40, 80, 145), 15),
    "portal_blood": ((42, 110, 175), 15),
    "hepatic_vein": ((40, 55, 150), 12),
    "bone": ((550, 550, 550), 70),
    "bone_cortex": ((850, 850, 850), 90),
    "bone_cancellous": ((220, 220, 220), 40),
    "cartilage": ((110, 110, 110), 30),
    "disc": ((85, 85, 85), 10),
    "csf": ((15, 15, 15), 5),
    "airway_wall": ((40, 40, 40), 6),
    "thyroid": ((90, 150, 130), 10),
}


@dataclass
class Subject:
    region: str
    params: dict
    hu: dict
    fields: Fields


def _choice(rng, options):
    names = [o for o, _ in options]
    p = np.array([w for _, w in options], dtype=np.float64)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def draw_subject(rng: np.random.Generator, region: str, truncate_prob: float, category: int | None) -> Subject:
    fields = Fields(rng)
    s = float(rng.uniform(0.88, 1.12))
    params = {
        "body_scale": s,
        "scale_xyz": [s, s * float(rng.uniform(0.9, 1.08)), s * float(rng.uniform(0.93, 1.07))],
        "rotation_deg": [float(v) for v in np.clip(rng.normal(0, [2.0, 1.5, 4.0]), -6, 6)],
        "translation_mm": [float(rng.uniform(-15, 15)), float(rng.uniform(-35, 5)), float(rng.uniform(-700, -100))],
    }
    lat = float(rng.uniform(6.0, 38.0))
    params["fat_mm"] = [lat * float(rng.uniform(1.0, 1.5)), lat, lat * float(rng.uniform(0.4, 0.7))]
    if region == "abdomen":
        params["phase"] = _choice(rng, PHASES)
        params["stomach_content"] = _choice(rng, (("water", 0.45), ("food", 0.35), ("oral_contrast", 0.2)))
        params["stomach_air_y"] = float(rng.uniform(15.0, 75.0))
        params["bowel_content"] = "oral_contrast" if params["stomach_content"] == "oral_contrast" else "water"
        params["gas_threshold"] = float(rng.uniform(0.8, 1.6))
        params["stool_gas"] = float(rng.uniform(0.2, 1.0))
        r = rng.random()
        params["truncation"] = "none" if r >= truncate_prob else ("top" if rng.random() < 0.5 else "bottom")
    else:
        params["phase"] = "non_contrast"
        params["truncation"] = "none"
        params["category"] = int(category)
    params["noise_sd_hu"] = float(rng.uniform(6.0, 18.0))
    params["texture_hu"] = float(rng.uniform(3.0, 8.0))
    params["blur_vox"] = float(rng.uniform(0.35, 0.55))
    params["fov_padding"] = bool(rng.random() < 0.5)
    phase = _PHASE_INDEX[params["phase"]]
    hu = {}
    for name, (means, sd) in HU_TABLE.items():
        hu[name] = float(means[phase] + (rng.normal(0.0, sd) if sd else 0.0))
    return Subject(region, params, hu, fields)


def _draw_geometry(rng, subject: Subject, anatomy: Anatomy, geometry: dict) -> tuple[ScanGrid, list[float]]:
    p = subject.params
    n = int(geometry["inplane_voxels"])
    sx, sy, sz = p["scale_xyz"]
    needed = 2.0 * anatomy.half_width * max(sx, sy) + 20.0
    f_lo, f_hi = geometry["fov_mm"]
    fov = max(float(rng.uniform(f_lo, f_hi)), min(needed, f_hi))
    fov = round(fov, 1)
    d_lo, d_hi = geometry["slice_mm"]
    dz = round(float(rng.uniform(d_lo, d_hi)) * 20.0) / 20.0 or float(d_lo)
    z0, z1 = anatomy.z_full
    bottom, top = z0 + float(rng.uniform(-8, 8)), z1 + float(rng.uniform(-8, 8))
    if p["truncation"] == "top":
        top = float(rng.uniform(20.0, 80.0))
    elif p["truncation"] == "bottom":
        bottom = float(rng.uniform(-70.0, -10.0))
    orientation = _choice(rng, ORIENTATIONS)
    tx, ty, tz = p["translation_mm"]
    cx, cy = tx + float(rng.normal(0, 6)), ty + float(rng.normal(0, 6))
    nz = max(int(round((top - bottom) * sz / dz)), 8)
    lo = (round(cx - fov / 2, 2), round(cy - fov / 2, 2), round(tz + bottom * sz, 2))
    grid = make_grid(orientation, (fov / n, fov / n, dz), (n, n, nz), lo)
    return grid, [round(bottom, 2), round(top, 2)]


class Canvas:
    """The RAS-ordered HU and structure-code volumes being painted, with the frame coordinates
    of every voxel. Each layer (or each piece of a layer: short runs of a tube) is evaluated only
    inside the voxel box that its canonical bounding box maps to (box corners mapped forward,
    plus a margin for the curvature of the smooth displacement field)."""

    MARGIN_MM = 4.0

    def __init__(self, grid: ScanGrid, warp: SubjectWarp):
        self.grid = grid
        self.warp = warp
        self.P = warp.grid_to_frame(grid.xs, grid.ys, grid.zs)
        shape = grid.shape_ras
        self.hu = np.full(shape, -1000.0, dtype=np.float32)
        self.sid = np.zeros(shape, dtype=np.uint8)
        self._origin = np.array([grid.xs[0], grid.ys[0], grid.zs[0]]).reshape(3, 1)
        self._spacing = np.array(grid.spacing_ras).reshape(3, 1)
        self._margin = self.MARGIN_MM / self._spacing[:, 0] + 0.5

    def voxel_boxes(self, group, boxes) -> list:
        """RAS-grid index boxes (tuples of slices, or None) of canonical (lo, hi) boxes."""
        corners = []
        for lo, hi in boxes:
            for c in range(8):
                corners.append([hi[a] if (c >> a) & 1 else lo[a] for a in range(3)])
        pts = np.asarray(corners, dtype=np.float64).T
        pts = np.clip(pts, -1e4, 1e4)
        world, _ = self.warp.local_to_world(group, pts, tol=1e-2)
        idx = ((world - self._origin) / self._spacing).reshape(3, len(boxes), 8)
        lo_i = np.floor(idx.min(axis=2) - self._margin[:, None]).astype(np.int64)
        hi_i = np.ceil(idx.max(axis=2) + self._margin[:, None]).astype(np.int64) + 1
        n = np.array(self.grid.shape_ras).reshape(3, 1)
        lo_i, hi_i = np.clip(lo_i, 0, n), np.clip(hi_i, 0, n)
        out = []
        for b in range(len(boxes)):
            if np.any(hi_i[:, b] <= lo_i[:, b]):
                out.append(None)
            else:
                out.append(tuple(slice(int(lo_i[a, b]), int(hi_i[a, b])) for a in range(3)))
        return out

    def paint(self, layer: Layer, subject: Subject) -> int:
        pieces = layer.shape.pieces() if hasattr(layer.shape, "pieces") else [layer.shape]
        vboxes = self.voxel_boxes(layer.group, [p.box() for p in pieces])
        used = [(p, b) for p, b in zip(pieces, vboxes) if b is not None]
        if not used:
            return 0
        box = tuple(slice(min(b[a].start for _, b in used), max(b[a].stop for _, b in used)) for a in range(3))
        shape = tuple(s.stop - s.start for s in box)
        if len(used) == 1 and used[0][1] == box:
            pf_all = self.P[(slice(None), *box)].reshape(3, -1)
            d_all = used[0][0].sdf(self.warp.to_local(layer.group, pf_all))
        else:
            d_box = np.full(shape, PAD_MM, dtype=np.float32)
            for piece, b in used:
                sub = tuple(slice(b[a].start - box[a].start, b[a].stop - box[a].start) for a in range(3))
                pf = self.P[(slice(None), *b)].reshape(3, -1)
                d = piece.sdf(self.warp.to_local(layer.group, pf)).reshape(tuple(s.stop - s.start for s in b))
                np.minimum(d_box[sub], d, out=d_box[sub])
            d_all = d_box.reshape(-1)
            pf_all = None
        inside = d_all < 0
        sid = self.sid[box].reshape(-1)
        if layer.within:
            inside &= np.isin(sid, [CODE[n] for n in layer.within])
        flat = np.nonzero(inside)[0]
        if len(flat) == 0:
            return 0
        pf = (self.P[(slice(None), *box)].reshape(3, -1) if pf_all is None else pf_all)[:, flat]
        d = d_all[flat]
        if layer.clip is not None:
            dc = layer.clip.sdf(pf)
            keep = dc < 0
            flat, pf, d = flat[keep], pf[:, keep], np.maximum(d[keep], dc[keep])
            if len(flat) == 0:
                return 0
        hu = self.hu[box].reshape(-1)
        if isinstance(layer.tissue, str):
            values = subject.hu[layer.tissue]
        else:
            values = layer.tissue(subject, self.warp.to_local(layer.group, pf), pf, d, hu[flat])
        hu[flat] = values
        sid[flat] = CODE[layer.label] if layer.label else 0
        self.hu[box] = hu.reshape(shape)
        self.sid[box] = sid.reshape(shape)
        return len(flat)


@dataclass
class RenderedCase:
    image: np.ndarray  # int16, stored array order
    structures: np.ndarray  # uint8 internal structure codes, stored array order
    mask: np.ndarray | None  # uint8 GGO mask (chest), stored array order
    affine: np.ndarray
    truth: dict


def _table(canvas: Canvas, subject: Subject) -> None:
    """The patient table (a foam pad on a carbon plate) under the back, in the world frame."""
    p = subject.params
    tx, ty, _ = p["translation_mm"]
    back = (100.0 + p["fat_mm"][2]) * p["scale_xyz"][1]
    y_top = ty - back - 2.0
    ys = canvas.grid.ys[None, :, None]
    xs = canvas.grid.xs[:, None, None]
    curve = 0.0006 * (xs - tx) ** 2  # a slightly curved table top
    pad = (ys <= y_top + curve) & (ys > y_top + curve - 6.0) & (np.abs(xs - tx) < 230)
    plate = (ys <= y_top + curve - 6.0) & (ys > y_top + curve - 18.0) & (np.abs(xs - tx) < 215)
    air = canvas.sid == 0
    air &= canvas.hu <= -999.0
    canvas.hu[np.broadcast_to(pad, canvas.hu.shape) & air] = -880.0
    canvas.hu[np.broadcast_to(plate, canvas.hu.shape) & air] = 120.0


def _finish_intensities(rng, canvas: Canvas, subject: Subject) -> np.ndarray:
    """Partial-volume blur, tissue texture, correlated noise, the scanner's padding value
    outside the reconstruction circle (some cases), rounding to int16 HU."""
    p = subject.params
    sp = canvas.grid.spacing_ras
    blur = p["blur_vox"]
    hu = ndimage.gaussian_filter(canvas.hu, (blur, blur, blur * min(1.0, sp[0] / sp[2]) + 0.2), mode="nearest")
    soft = hu > -400.0
    hu += p["texture_hu"] * smooth_noise(rng, hu.shape, 1.0) * soft
    hu += p["noise_sd_hu"] * smooth_noise(rng, hu.shape, 0.45)
    if p["fov_padding"]:
        n = canvas.grid.shape_ras
        i = (np.arange(n[0]) + 0.5 - n[0] / 2) / (n[0] / 2)
        j = (np.arange(n[1]) + 0.5 - n[1] / 2) / (n[1] / 2)
        outside = (i[:, None] ** 2 + j[None, :] ** 2) > 1.0
        hu[np.broadcast_to(outside[:, :, None], hu.shape)] = -1024.0
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16)


def render_case(rng: np.random.Generator, region: str, geometry: dict, category: int | None = None) -> RenderedCase:
    subject = draw_subject(rng, region, float(geometry.get("truncate_prob", 0.3)), category)
    if region == "abdomen":
        anatomy = build_abdomen(subject.params, subject.fields)
    else:
        anatomy = build_chest(subject.params, subject.fields)
    p = subject.params
    warp = draw_warp(rng, np.array(p["scale_xyz"]), np.array(p["rotation_deg"]), np.array(p["translation_mm"]), anatomy.field_box, anatomy.jitter)
    grid, z_range = _draw_geometry(rng, subject, anatomy, geometry)
    layers = list(anatomy.layers)
    lesions = draw_lesions(rng, layers) if region == "abdomen" else []
    layers += lesion_layers(lesions)
    canvas = Canvas(grid, warp)
    for layer in layers:
        canvas.paint(layer, subject)
    ggo_mask, ggo_info = (None, {})
    if region == "chest":
        ggo_mask, ggo_info = add_ggo(rng, canvas, subject, int(category))
    _table(canvas, subject)
    image = _finish_intensities(rng, canvas, subject)

    # landmarks: canonical -> world (forward map) -> voxel (inverse affine)
    lms = anatomy.landmarks
    world = np.zeros((3, len(lms)))
    residual = 0.0
    for group in dict.fromkeys(lm.group for lm in lms):
        idx = [i for i, lm in enumerate(lms) if lm.group == group]
        pts = np.array([lms[i].point for i in idx], dtype=np.float64).T
        w, res = warp.local_to_world(group, pts)
        world[:, idx] = w
        residual = max(residual, res)
    if residual > 0.1:
        raise RuntimeError(f"phantom landmark forward map did not converge (residual {residual:.3g} mm)")
    vox = grid.world_to_voxel(world)
    shape = np.array(grid.shape, dtype=np.float64).reshape(3, 1)
    in_fov = np.all((vox >= -0.5) & (vox <= shape - 0.5), axis=0)
    landmarks = [
        {
            "id": lm.id,
            "name": lm.name,
            "canonical_mm": [round(v, 3) for v in lm.point],
            "voxel": [float(v) for v in vox[:, i]],
            "world": [float(v) for v in world[:, i]],
            "in_fov": bool(in_fov[i]),
        }
        for i, lm in enumerate(lms)
    ]
    for les in lesions:
        w, _ = warp.local_to_world(les["group"], np.asarray(les["center_canonical_mm"], dtype=np.float64).reshape(3, 1))
        les["center_world_mm"] = [round(float(v), 3) for v in w[:, 0]]
        les["center_voxel"] = [round(float(v), 3) for v in grid.world_to_voxel(w)[:, 0]]
        les.pop("group")
    truth = {
        "region": region,
        "orientation": grid.orientation,
        "shape": [int(v) for v in grid.shape],
        "spacing_mm": [round(float(v), 6) for v in grid.spacing],
        "affine": [[float(v) for v in row] for row in grid.affine],
        "body_scale": round(p["body_scale"], 4),
        "scale_xyz": [round(v, 4) for v in p["scale_xyz"]],
        "rotation_deg": [round(v, 3) for v in p["rotation_deg"]],
        "translation_mm": [round(v, 3) for v in p["translation_mm"]],
        "contrast_phase": p["phase"],
        "truncation": p["truncation"],
        "z_range_canonical_mm": z_range,
        "fat_mm": {k: round(v, 2) for k, v in zip(("anterior", "lateral", "posterior"), p["fat_mm"])},
        "noise_sd_hu": round(p["noise_sd_hu"], 2),
        "hu": {k: round(v, 1) for k, v in subject.hu.items()},
        "contents": {k: p[k] for k in ("stomach_content", "bowel_content") if k in p},
        "lesions": lesions,
        "warp": warp.as_json(),
        "landmark_residual_mm": residual,
        "landmarks": landmarks,
    }
    if region == "chest":
        truth["category"] = int(category)
        truth.update(ggo_info)
    structures = grid.to_array_order(canvas.sid)
    mask = None if ggo_mask is None else grid.to_array_order(ggo_mask.astype(np.uint8))
    return RenderedCase(grid.to_array_order(image), structures, mask, grid.affine, truth)
