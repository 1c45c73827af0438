"""The canonical chest (RAS+ mm; z = 0 at the carina, x > 0 is the patient's right).

Body wall with fat and muscle, scapulae, clavicles, sternum, ribs 1-12 with costal cartilage,
spine C7-L1; lungs (about -860 HU with vessel-like filaments denser near the hila) above a
domed diaphragm; heart in pericardial fat, aorta (ascending, arch, descending), pulmonary trunk
and arteries, SVC and brachiocephalic vessels; trachea, main and lobar bronchi (air tubes with
walls); esophagus; thyroid; and the top of the abdomen under the diaphragm.
"""

from __future__ import annotations

import numpy as np

from alice.data.phantom.anatomy import Anatomy, Layer, landmark_list
from alice.data.phantom.body import BodyWall, FrameFunction, Ribs, Spine, VertebralPart, mediastinum_half_width
from alice.data.phantom.shapes import Ellipsoid, Offset, Tube, Union, rotation
from alice.data.phantom.texture import Fields, vessel_filaments
from alice.data.phantom.warp import JitterSpec

MUSCLE_WALL_MM = 10.0

WALL = dict(
    half_width=((-280, 150), (-150, 152), (-60, 155), (40, 150), (100, 138), (150, 122), (220, 105)),
    half_ant=((-280, 100), (-100, 100), (0, 98), (100, 92), (220, 78)),
    half_post=((-280, 100), (0, 105), (220, 95)),
)

_T = [125.0 - 26.0 * i for i in range(12)]
SPINE = Spine(
    names=("C7", *[f"T{i}" for i in range(1, 13)], "L1"),
    z=(150.0, *_T, -190.0),
    half_height=(8.0, 9.5, 10.0, 10.0, 10.5, 10.5, 11.0, 11.0, 11.5, 11.5, 12.0, 12.0, 12.5, 13.5),
    rx=(15.0, 16.0, 17.0, 18.0, 18.0, 19.0, 19.0, 20.0, 20.0, 21.0, 21.0, 22.0, 23.0, 24.0),
    ry=(11.0, 12.0, 12.0, 13.0, 13.0, 14.0, 14.0, 14.0, 15.0, 15.0, 15.0, 16.0, 16.0, 17.0),
    y_knots=((220, -28), (150, -36), (50, -46), (-50, -48), (-150, -44), (-220, -38)),
    transverse=(26.0, *[30.0] * 12, 42.0),
)
RIBS = (
    (131.0, 25.0, 0.1, 0.85),
    (105.0, 55.0, 0.1, 0.92),
    (79.0, 65.0, 0.1, 0.93),
    (53.0, 72.0, 0.1, 0.93),
    (27.0, 78.0, 0.1, 0.93),
    (1.0, 84.0, 0.1, 0.92),
    (-25.0, 88.0, 0.1, 0.9),
    (-51.0, 90.0, 0.1, 0.86),
    (-77.0, 88.0, 0.1, 0.82),
    (-103.0, 82.0, 0.1, 0.78),
    (-129.0, 40.0, 0.1, 0.55),
    (-155.0, 28.0, 0.1, 0.4),
)
HILA = np.array([[50.0, -5.0, -15.0], [-50.0, -8.0, -18.0]], dtype=np.float32)


def diaphragm_z(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    domes = 22.0 * np.exp(-(((x - 55.0) / 50.0) ** 2)) + 10.0 * np.exp(-(((x + 55.0) / 50.0) ** 2))
    base = -122.0 + domes - 30.0 * (x / 160.0) ** 2
    return base - 50.0 * (np.maximum(-y, 0) / 100.0) ** 2 - 15.0 * (np.maximum(y, 0) / 100.0) ** 2


def apex_z(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return 150.0 - 0.012 * (np.abs(x) - 50.0) ** 2 - 0.004 * (y + 5.0) ** 2


def _t(points, radii, n=3):
    return Tube(points, radii, samples_per_segment=n)


def build_chest(params: dict, fields: Fields) -> Anatomy:
    fat = params["fat_mm"]
    wall = BodyWall(**WALL)
    skin = BodyWall(**WALL, fat=tuple(fat))
    interior = Offset(wall, -MUSCLE_WALL_MM)

    def cavity_fn(p):
        return wall.sdf(p) + 14.0

    def below_fn(p):
        return np.maximum(cavity_fn(p), p[2] - (diaphragm_z(p[0], p[1]) - 5.0))

    below = FrameFunction(below_fn, (-160, -120, -300), (160, 120, 0))

    def lung_fn(sign):
        def fn(p):
            x, y, z = p
            return np.maximum.reduce([cavity_fn(p), diaphragm_z(x, y) - z, z - apex_z(x, y), mediastinum_half_width(y, z, 40.0) - sign * x])

        return fn

    lung_r = FrameFunction(lung_fn(1.0), (0, -110, -200), (160, 110, 160))
    lung_l = FrameFunction(lung_fn(-1.0), (-160, -110, -200), (0, 110, 160))

    def diaphragm_fn(p):
        return np.maximum(wall.sdf(p) + MUSCLE_WALL_MM - 1.0, np.abs(p[2] - diaphragm_z(p[0], p[1]) + 2.5) - 2.5)

    diaphragm = FrameFunction(diaphragm_fn, (-160, -110, -210), (160, 110, -90))

    heart_rot = rotation(deg_y=20, deg_z=-30)
    heart = Ellipsoid((-22, 30, -62), (62, 50, 58), heart_rot)
    aorta_line = [(2, 35, -45), (10, 30, -10), (14, 22, 25), (6, 8, 45), (-12, -12, 46), (-26, -28, 32), (-28, -36, 0),
                  (-26, -34, -80), (-18, -24, -200)]
    aorta = _t(aorta_line, [15, 15, 14, 13, 12.5, 12, 12, 11.5, 11])
    pulmonary = Union(
        [
            _t([(-24, 48, -38), (-22, 38, -12), (-14, 24, -2)], [14, 14, 12]),
            _t([(-14, 24, -2), (12, 18, -4), (40, 4, -10), (58, -4, -18)], [10, 10, 9, 7]),
            _t([(-14, 24, -2), (-30, 12, 2), (-50, -6, -6), (-62, -14, -14)], [10, 10, 9, 7]),
        ]
    )
    veins = Union(
        [
            _t([(38, 16, 70), (40, 16, 20), (34, 24, -25)], 10),
            _t([(-50, 25, 115), (-10, 30, 95), (30, 20, 75), (38, 16, 70)], 7),
            _t([(45, 18, 130), (38, 16, 75)], 7),
        ]
    )
    arch_branches = Union(
        [
            _t([(10, 10, 48), (16, 14, 110), (22, 16, 180)], 6),
            _t([(-6, 4, 50), (-14, 8, 110), (-18, 10, 180)], 5),
            _t([(-20, -14, 46), (-26, -10, 110), (-40, -4, 150), (-70, 0, 175)], 6),
        ]
    )
    trachea_line = [(0, 20, 185), (0, 14, 100), (0, 6, 30), (0, 2, 0)]
    bronchi = [  # (centreline, lumen radius, wall radius)
        ([(0, 2, 0), (22, -2, -12), (40, -6, -24)], 6.0, 8.0),
        ([(0, 2, 0), (-24, -4, -16), (-46, -10, -36)], 5.5, 7.5),
        ([(24, -3, -12), (45, 0, 10), (65, 5, 30)], 3.5, 5.0),
        ([(40, -6, -24), (55, -20, -60), (65, -35, -100)], 4.0, 5.5),
        ([(45, -7, -30), (60, 20, -45), (75, 35, -55)], 3.0, 4.5),
        ([(-40, -8, -30), (-55, 8, -12), (-70, 15, 5)], 3.5, 5.0),
        ([(-46, -10, -36), (-60, -25, -70), (-68, -38, -110)], 4.0, 5.5),
    ]
    airway_wall = Union([_t(trachea_line, 10.5)] + [_t(c, w) for c, _, w in bronchi])
    airway_lumen = Union([_t(trachea_line, 8.0)] + [_t(c, r) for c, r, _ in bronchi])
    esophagus = _t([(-4, -6, 185), (-6, -10, 100), (-10, -20, 30), (-10, -26, 0), (-12, -22, -80), (-22, -4, -150), (-38, 10, -175)], [8, 8, 8, 8, 8.5, 9, 9])
    thyroid = Union([Ellipsoid((20, 18, 165), (10, 12, 22)), Ellipsoid((-20, 18, 165), (10, 12, 22))])
    sternum = Union([Ellipsoid((0, 84, 72), (26, 8, 18)), Ellipsoid((0, 86, -10), (16, 7, 82)), Ellipsoid((0, 82, -96), (9, 5, 12))])
    clavicles = Union([_t([(s * 18, 84, 100), (s * 70, 72, 118), (s * 125, 30, 125)], 8) for s in (1, -1)])
    scapulae = Union([Ellipsoid((s * 104, -84, 60), (48, 5, 70), rotation(deg_z=37 * s)) for s in (1, -1)])
    scapular_muscles = Union([Ellipsoid((s * 100, -80, 60), (62, 18, 85), rotation(deg_z=37 * s)) for s in (1, -1)])
    paraspinal = Union([Ellipsoid((s * 33, -76, 0), (23, 18, 420)) for s in (1, -1)])
    liver = Ellipsoid((60, 10, -200), (95, 90, 90))
    spleen = Ellipsoid((-95, -45, -175), (28, 55, 45), rotation(deg_z=35))
    stomach = Ellipsoid((-50, 25, -178), (40, 40, 40))

    def lung_tissue(subj, pl, pf, d, cur):
        d2 = np.min(np.sum((pf.T[:, None, :] - HILA[None, :, :]) ** 2, axis=2), axis=1)
        width = 0.2 + 0.35 * np.exp(-d2 / (2 * 60.0**2))
        v = vessel_filaments(subj.fields, pf, width)
        return subj.hu["lung"] + v * (subj.hu["vessel_lung"] - subj.hu["lung"])

    def marrow_bone(subj, pl, pf, d, cur):
        return np.where(d > -2.5, subj.hu["bone_cortex"], subj.hu["bone_cancellous"])

    def stomach_tissue(subj, pl, pf, d, cur):
        return np.where(pf[1] > 30.0, subj.hu["air"], np.where(d > -3, subj.hu["stomach_wall"], subj.hu["water"]))

    L = Layer
    layers = [
        L("body", skin, "fat_subcut"),
        L("scapular_muscles", scapular_muscles, "muscle"),
        L("muscle_wall", wall, "muscle"),
        L("mediastinal_fat", interior, "fat"),
        L("paraspinal", paraspinal, "muscle"),
        L("liver", liver, "liver", group="upper_abdomen", clip=below),
        L("spleen", spleen, "spleen", group="upper_abdomen", clip=below),
        L("stomach", stomach, stomach_tissue, group="upper_abdomen", clip=below),
        L("diaphragm", diaphragm, "muscle"),
        L("lung_r", lung_r, lung_tissue, label="lung_r"),
        L("lung_l", lung_l, lung_tissue, label="lung_l"),
        L("pericardial_fat", Offset(heart, 5.0), "fat", group="heart"),
        L("heart", heart, "heart", group="heart"),
        L("pulmonary_arteries", pulmonary, "heart", group="great_vessels"),
        L("veins", veins, "heart", group="great_vessels"),
        L("aorta", aorta, "heart", group="great_vessels"),
        L("arch_branches", arch_branches, "heart", group="great_vessels"),
        L("airway_wall", airway_wall, "airway_wall", group="airway"),
        L("airway_lumen", airway_lumen, "air", group="airway"),
        L("esophagus", esophagus, "esophagus", group="esophagus"),
        L("thyroid", thyroid, "thyroid", group="thyroid"),
        L("spine_column", VertebralPart(SPINE, "column"), "disc"),
        L("vertebral_bodies", VertebralPart(SPINE, "body"), marrow_bone),
        L("vertebral_arches", VertebralPart(SPINE, "arch"), "bone"),
        L("spinal_canal", VertebralPart(SPINE, "canal"), "csf"),
        L("ribs", Ribs(wall, tuple((z, dr, f0, min(f1, 0.72)) for z, dr, f0, f1 in RIBS), depth=8.0, half_height=5.0), "bone"),
        L("costal_cartilage", Ribs(wall, tuple((z, dr, 0.72, f1) for z, dr, f0, f1 in RIBS if f1 > 0.72), depth=8.0, half_height=5.0), "cartilage"),
        L("sternum", sternum, marrow_bone),
        L("clavicles", clavicles, "bone"),
        L("scapulae", scapulae, "bone"),
    ]

    J = JitterSpec
    jitter = {
        "heart": J((-22, 30, -62), 6.0, 0.08, 0.05, 5.0),
        "great_vessels": J((0, 10, 0), 3.0, 0.05, 0.03, 2.0),
        "airway": J((0, 5, 20), 2.0, 0.04, 0.03, 2.0),
        "esophagus": J((-10, -20, 0), 2.0, 0.03, 0.03, 2.0),
        "thyroid": J((0, 18, 165), 3.0, 0.10, 0.08, 3.0),
        "upper_abdomen": J((0, 0, -180), 6.0, 0.06, 0.05, 3.0),
    }
    heart_left = np.array([-22, 30, -62]) + heart_rot @ np.array([-45.0, 0.0, -10.0])
    items = [
        ("trachea_upper", (0, 14, 100), "airway"),
        ("trachea_mid", (0, 6, 30), "airway"),
        ("carina", (0, 2, 0), "airway"),
        ("right_main_bronchus", (40, -6, -24), "airway"),
        ("left_main_bronchus", (-46, -10, -36), "airway"),
        ("right_upper_lobe_bronchus", (45, 0, 10), "airway"),
        ("right_lower_lobe_bronchus", (55, -20, -60), "airway"),
        ("left_upper_lobe_bronchus", (-55, 8, -12), "airway"),
        ("left_lower_lobe_bronchus", (-60, -25, -70), "airway"),
        ("ascending_aorta", (10, 30, -10), "great_vessels"),
        ("aortic_arch", (-3, -2, 47), "great_vessels"),
        ("descending_aorta_carina", (-28, -36, 0), "great_vessels"),
        ("descending_aorta_low", (-26, -34, -80), "great_vessels"),
        ("pulmonary_trunk", (-22, 38, -12), "great_vessels"),
        ("pulmonary_bifurcation", (-14, 24, -2), "great_vessels"),
        ("right_pulmonary_artery", (40, 4, -10), "great_vessels"),
        ("left_pulmonary_artery", (-50, -6, -6), "great_vessels"),
        ("superior_vena_cava", (40, 16, 20), "great_vessels"),
        ("brachiocephalic_artery", (16, 14, 110), "great_vessels"),
        ("heart_center", (-22, 30, -62), "heart"),
        ("heart_left_border", heart_left, "heart"),
        ("esophagus_carina", (-10, -26, 0), "esophagus"),
        ("esophagus_low", (-12, -22, -80), "esophagus"),
        ("thyroid_right", (20, 18, 165), "thyroid"),
        ("thyroid_left", (-20, 18, 165), "thyroid"),
        ("jugular_notch", (0, 84, 88), None),
        ("sternal_body", (0, 86, -10), None),
        ("xiphoid", (0, 82, -96), None),
        ("right_lung_apex", (50, -5, 138), None),
        ("left_lung_apex", (-50, -5, 138), None),
        ("right_lung_base", (65, 0, -92), None),
        ("left_lung_base", (-70, 0, -105), None),
        ("right_hilum", tuple(HILA[0]), None),
        ("left_hilum", tuple(HILA[1]), None),
        ("liver_dome", (60, 10, -118), "upper_abdomen"),
    ]
    items += [(f"vertebral_body_{n}", SPINE.body_center(n), None) for n in SPINE.names]
    return Anatomy(
        region="chest",
        layers=layers,
        landmarks=landmark_list(101, items),
        jitter=jitter,
        field_box=(np.array([-140.0, -100.0, -190.0]), np.array([140.0, 100.0, 170.0])),
        z_full=(-188.0, 168.0),
        half_width=160.0 + max(fat),
    )
