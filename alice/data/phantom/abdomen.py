"""The canonical abdomen (RAS+ mm; z = 0 at the centre of L1, x > 0 is the patient's right).

Body wall with subcutaneous fat and muscle, spine T9-S1 with discs and posterior elements,
ribs 7-12 with costal cartilage, lung bases and the heart above a domed diaphragm, psoas,
quadratus and paraspinal muscles, iliac crests, bowel loops and colon, and the organs of the
FLARE22 and BTCV label sets: liver (with hepatic veins and portal branches), spleen, kidneys
(cortex, medulla, sinus, pelvis), adrenals, pancreas, duodenum, stomach, gallbladder, esophagus,
aorta (bifurcating into the iliac arteries), IVC, portal and splenic veins, plus unlabeled
celiac trunk, SMA, SMV and renal veins.
"""

from __future__ import annotations

import numpy as np

from alice.data.phantom.anatomy import Anatomy, Layer, landmark_list
from alice.data.phantom.body import BodyWall, FrameFunction, Ribs, Spine, VertebralPart, mediastinum_half_width
from alice.data.phantom.shapes import (
    Box3,
    Ellipsoid,
    Intersection,
    Offset,
    Shell,
    SmoothUnion,
    Subtraction,
    Tube,
    Union,
    rotation,
)
from alice.data.phantom.texture import Fields, vessel_filaments
from alice.data.phantom.warp import JitterSpec

MUSCLE_WALL_MM = 12.0
CAVITY_INSET_MM = 15.0  # organs stay this far inside the wall's outer surface (ribs live there)

WALL = dict(
    half_width=((-280, 152), (-175, 150), (-120, 141), (0, 138), (100, 139), (220, 140)),
    half_ant=((-280, 88), (-120, 95), (0, 96), (100, 100), (220, 102)),
    half_post=((-280, 96), (0, 100), (220, 100)),
)

SPINE = Spine(
    names=("T9", "T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5", "S1"),
    z=(133.0, 102.0, 70.0, 36.0, 0.0, -38.0, -77.0, -116.0, -155.0, -193.0),
    half_height=(11.0, 11.5, 12.0, 12.5, 13.5, 14.0, 14.0, 14.0, 14.0, 14.0),
    rx=(20.0, 21.0, 22.0, 23.0, 24.0, 25.0, 26.0, 26.0, 27.0, 28.0),
    ry=(15.0, 15.0, 16.0, 16.0, 17.0, 17.0, 18.0, 18.0, 18.0, 18.0),
    y_knots=((220, -44), (100, -42), (0, -36), (-80, -30), (-150, -32), (-220, -42)),
    transverse=(30.0, 30.0, 30.0, 32.0, 42.0, 46.0, 48.0, 46.0, 42.0, 52.0),
)

# (z at the spine, drop towards the front, angular start, angular end); bone until 0.68
RIBS = ((190.0, 95.0, 0.1, 0.9), (160.0, 100.0, 0.1, 0.88), (130.0, 95.0, 0.1, 0.85), (100.0, 85.0, 0.1, 0.8), (68.0, 45.0, 0.1, 0.55), (36.0, 32.0, 0.1, 0.4))


def diaphragm_z(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Height of the diaphragm's upper surface: two domes (right higher), deep posterior recesses."""
    domes = 26.0 * np.exp(-(((x - 50.0) / 45.0) ** 2)) + 16.0 * np.exp(-(((x + 50.0) / 45.0) ** 2))
    base = 96.0 + domes - 35.0 * (x / 150.0) ** 2
    return base - 60.0 * (np.maximum(-y, 0) / 95.0) ** 2 - 15.0 * (np.maximum(y, 0) / 95.0) ** 2


def _t(points, radii, n=3):
    return Tube(points, radii, samples_per_segment=n)


def build_abdomen(params: dict, fields: Fields) -> Anatomy:
    """The layers, landmarks and jitter groups of the abdomen; `params` holds the subject's
    fat thicknesses and content choices (drawn in `render.draw_subject`), `fields` its random
    fields (the bowel loops are a level set of one)."""
    fat = params["fat_mm"]  # (anterior, lateral, posterior)
    wall = BodyWall(**WALL)
    skin = BodyWall(**WALL, fat=tuple(fat))
    interior = Offset(wall, -MUSCLE_WALL_MM)

    def cavity_fn(p):
        return wall.sdf(p) + CAVITY_INSET_MM

    def below_diaphragm_fn(p):
        return np.maximum(cavity_fn(p), p[2] - (diaphragm_z(p[0], p[1]) - 5.0))

    cavity = FrameFunction(cavity_fn, (-160, -120, -300), (160, 120, 250))
    below = FrameFunction(below_diaphragm_fn, (-160, -120, -300), (160, 120, 200))

    def lung_fn(p):
        x, y, z = p
        return np.maximum.reduce([wall.sdf(p) + 14.0, diaphragm_z(x, y) - z, mediastinum_half_width(y, z) - np.abs(x)])

    lungs = FrameFunction(lung_fn, (-160, -110, 0), (160, 110, 260))

    def diaphragm_fn(p):
        return np.maximum(wall.sdf(p) + MUSCLE_WALL_MM - 1.0, np.abs(p[2] - diaphragm_z(p[0], p[1]) + 2.5) - 2.5)

    diaphragm = FrameFunction(diaphragm_fn, (-160, -110, 0), (160, 110, 150))

    # ---- organs (canonical shapes) -------------------------------------------------------------
    liver = Subtraction(
        SmoothUnion(
            SmoothUnion(
                Ellipsoid((60, 6, 64), (70, 80, 62)),
                Ellipsoid((-22, 42, 80), (60, 36, 28), rotation(deg_z=-10)),
                20.0,
            ),
            Ellipsoid((82, 0, 12), (36, 48, 42)),
            20.0,
        ),
        Union([Ellipsoid((44, -44, 26), (24, 22, 46)), Ellipsoid((48, -30, -12), (18, 16, 30))]),  # fat around
    )  # the right adrenal, the kidney's upper pole and its hilum
    spleen_rot = rotation(deg_x=-20, deg_z=35)
    spleen = Subtraction(Ellipsoid((-94, -42, 52), (26, 56, 46), spleen_rot), Ellipsoid((-48, -22, 48), (40, 46, 60)))
    gb_rot = rotation(deg_x=35, deg_z=-15)
    gallbladder = Ellipsoid((46, 50, 16), (15, 18, 34), gb_rot)

    kidneys = {}
    for side, sgn in (("r", 1.0), ("l", -1.0)):
        c = np.array([66.0 * sgn, -36.0, -8.0 if side == "r" else 6.0])
        rot = rotation(deg_y=-12.0 * sgn, deg_z=-30.0 * sgn)
        medial = rot @ np.array([-sgn, 0.0, 0.0])
        up = rot @ np.array([0.0, 0.0, 1.0])
        body = Subtraction(Ellipsoid(c, (23, 27, 52), rot), Ellipsoid(c + 21.0 * medial, (11, 10, 17), rot))
        kidneys[side] = dict(
            center=c,
            body=body,
            sinus=Ellipsoid(c + 8.0 * medial, (9, 10, 27), rot),
            pelvis=Ellipsoid(c + 14.0 * medial - 6.0 * up, (7, 7, 10), rot),
            hilum=c + 18.0 * medial,
            upper=c + 42.0 * up,
            lower=c - 42.0 * up,
        )

    adrenal_r = Union(
        [Ellipsoid((40, -34, 50), (5.5, 15, 16), rotation(deg_z=30)), Ellipsoid((35, -27, 43), (5, 11, 10), rotation(deg_z=-25))]
    )
    adrenal_l = Union(
        [Ellipsoid((-40, -22, 40), (5.5, 15, 16), rotation(deg_z=-30)), Ellipsoid((-35, -15, 33), (5, 11, 10), rotation(deg_z=25))]
    )

    pancreas_line = [(28, 14, -14), (25, 20, -2), (6, 28, 8), (-24, 22, 16), (-54, 8, 24), (-80, -14, 32)]
    pancreas = Union([_t(pancreas_line, [15, 15, 12, 11, 10, 8]), Ellipsoid((22, 8, -20), (14, 12, 14))])
    duodenum_line = [(16, 48, 20), (36, 38, 20), (50, 22, 12), (54, 12, -12), (50, 10, -36), (30, 12, -50),
                     (6, 15, -54), (-16, 15, -48), (-28, 18, -32), (-34, 22, -18)]
    duodenum = _t(duodenum_line, 11.0)
    stomach_line = [(-52, -10, 92), (-62, 6, 72), (-58, 30, 48), (-36, 52, 30), (-6, 58, 22), (14, 50, 21)]
    stomach = _t(stomach_line, [30, 38, 36, 28, 18, 11])
    esophagus_line = [(-6, -6, 220), (-10, -2, 150), (-14, 2, 120), (-24, 6, 98), (-40, 6, 84)]
    esophagus = _t(esophagus_line, [9, 9, 9, 10, 11])

    aorta_line = [(-28, -22, 220), (-25, -19, 140), (-18, -12, 80), (-13, -8, 30), (-11, -5, -20), (-9, -3, -70), (-6, -2, -110)]
    aorta = _t(aorta_line, [12, 12, 11.5, 11, 10, 9.5, 9])
    iliac_a = Union([_t([(-6, -2, -108), (18, -2, -140), (45, 2, -200)], 7), _t([(-6, -2, -108), (-30, -2, -140), (-52, 2, -200)], 7)])
    celiac = _t([(-12, -2, 24), (-10, 14, 28), (-4, 22, 31)], 4)
    sma = _t([(-11, -2, 10), (-9, 14, 4), (-6, 24, -20), (-2, 30, -80)], 4.5)
    ivc_line = [(12, -8, 220), (16, -12, 140), (21, -16, 105), (22, -14, 70), (22, -10, 30), (20, -7, -10), (19, -8, -60), (14, -10, -112)]
    ivc = _t(ivc_line, [12, 12, 12, 11.5, 11, 10.5, 10, 9])
    iliac_v = Union([_t([(14, -10, -112), (38, -12, -150), (42, -6, -200)], 8), _t([(14, -10, -112), (-20, -12, -145), (-46, -6, -200)], 8)])
    kr, kl = kidneys["r"], kidneys["l"]
    renal_v = Union([_t([kl["hilum"], (-25, -8, 7), (-10, 8, 5), (19, -5, 0)], 4.5), _t([kr["hilum"], (30, -14, -4), (20, -8, -4)], 5)])
    portal_line = [(44, 14, 44), (30, 16, 26), (8, 15, 6)]
    splenic_line = [(8, 15, 6), (-20, 10, 12), (-50, -4, 20), (-80, -24, 30)]
    portal = Union([_t(portal_line, 8), _t(splenic_line, [6, 5, 5, 5])])
    smv = _t([(8, 15, 6), (10, 22, -20), (8, 28, -70)], 5.5)
    hepatic_veins = Union(
        [
            _t([(20, -14, 108), (60, -20, 95), (100, -10, 70)], [6, 4.5, 3]),
            _t([(20, -14, 108), (35, 10, 100), (45, 50, 75)], [5.5, 4, 3]),
            _t([(20, -14, 108), (-5, 5, 105), (-40, 40, 88)], [5, 4, 3]),
        ]
    )
    portal_branches = Union(
        [_t([(44, 14, 44), (70, 8, 50), (100, 0, 55)], [6, 4.5, 3]), _t([(44, 14, 44), (25, 30, 60), (-15, 45, 75)], [5.5, 4, 3])]
    )
    colon_line = [(78, 5, -130), (90, -5, -60), (88, 0, 0), (78, 35, 20), (40, 72, 5), (0, 80, -10), (-45, 70, 10),
                  (-88, 20, 40), (-98, -10, 0), (-98, -12, -70), (-70, 10, -140), (-20, 20, -175)]
    colon = _t(colon_line, [26, 24, 23, 21, 20, 20, 20, 19, 17, 17, 15, 14])

    heart = Ellipsoid((-22, 45, 168), (62, 45, 55), rotation(deg_z=-25))
    muscles = [  # erector spinae, quadratus lumborum, psoas
        Ellipsoid((s * 35, -78, 0), (25, 19, 420)) for s in (1, -1)
    ] + [
        Ellipsoid((s * 68, -68, -45), (24, 10, 85), rotation(deg_z=-30 * s)) for s in (1, -1)
    ] + [
        _t([(s * 26, -40, 25), (s * 34, -38, -40), (s * 45, -32, -110), (s * 62, -22, -200)], [5, 14, 22, 24]) for s in (1, -1)
    ]
    # iliac wings: the lateral half of an ellipsoidal shell, opening antero-medially
    iliac_bones = [
        Intersection([Shell(Ellipsoid((s * 70, -45, -215), (62, 55, 90), rotation(deg_z=-25 * s)), -8.0, 0.0),
                      Box3((72, -100, -300) if s > 0 else (-150, -100, -300), (150, 5, -120) if s > 0 else (-72, 5, -120))])
        for s in (1, -1)
    ]

    # ---- tissues ---------------------------------------------------------------------------
    def kidney_tissue(subj, pl, pf, d, cur):
        return np.where(d > -5.0, subj.hu["kidney_cortex"], subj.hu["kidney_medulla"])

    def walled(wall_key, content):
        def fn(subj, pl, pf, d, cur):
            inner = content(subj, pl, pf, d) if callable(content) else subj.hu[content]
            return np.where(d > -2.5, subj.hu[wall_key], inner)

        return fn

    def stomach_content(subj, pl, pf, d):
        base = subj.hu[subj.params["stomach_content"]]
        food = 0.0
        if subj.params["stomach_content"] == "food":
            food = 35.0 * subj.fields["food"].sample(pf)
        return np.where(pf[1] > subj.params["stomach_air_y"], subj.hu["air"], base + food)

    def duodenum_content(subj, pl, pf, d):
        gas = subj.fields["content"].sample(pf + 40.0) > subj.params["gas_threshold"] + 0.4
        return np.where(gas, subj.hu["air"], subj.hu[subj.params["bowel_content"]])

    def loops(p):
        return fields["bowel"].sample(p) + 0.4 * fields["organ"].sample(p * 1.3 + 17.0)

    def bowel_tissue(subj, pl, pf, d, cur):
        n = loops(pf)
        gas = subj.fields["content"].sample(pf) > subj.params["gas_threshold"]
        content = np.where(gas, subj.hu["air"], subj.hu[subj.params["bowel_content"]])
        return np.where(n > 0.45, content, subj.hu["bowel_wall"])

    def bowel_fn(p):
        region = np.maximum.reduce([cavity_fn(p), p[2] - 15.0, -(p[1] + 18.0)])
        return np.maximum(region, (0.05 - loops(p)) * 12.0)

    def stool(subj, pl, pf, d):
        s = subj.fields["stool"].sample(pf)
        return np.where(s > subj.params["stool_gas"], subj.hu["air"], subj.hu["stool"] + 25.0 * s)

    def lung_tissue(subj, pl, pf, d, cur):
        v = vessel_filaments(subj.fields, pf, 0.22)
        return subj.hu["lung"] + v * (subj.hu["vessel_lung"] - subj.hu["lung"])

    def spine_body(subj, pl, pf, d, cur):
        return np.where(d > -2.5, subj.hu["bone_cortex"], subj.hu["bone_cancellous"])

    def spleen_tissue(subj, pl, pf, d, cur):
        # arterial-phase "zebra" heterogeneity of the spleen
        amp = 28.0 if subj.params["phase"] == "arterial" else 4.0
        return subj.hu["spleen"] + amp * subj.fields["organ"].sample(pl * 1.7)

    def liver_tissue(subj, pl, pf, d, cur):
        return subj.hu["liver"] + 4.0 * subj.fields["organ"].sample(pl)

    bowel = FrameFunction(bowel_fn, (-150, -20, -300), (150, 110, 15))

    L = Layer
    layers = [
        L("body", skin, "fat_subcut"),
        L("muscle_wall", wall, "muscle"),
        L("visceral_fat", interior, "fat"),
        *[L(f"muscle_{i}", m, "muscle") for i, m in enumerate(muscles)],
        L("lungs", lungs, lung_tissue),
        L("pericardial_fat", Offset(heart, 6.0), "fat", group="heart", clip=FrameFunction(lambda p: diaphragm_z(p[0], p[1]) - p[2] - 1.0, (-160, -110, 0), (160, 110, 260))),
        L("heart", heart, "heart", group="heart", clip=FrameFunction(lambda p: diaphragm_z(p[0], p[1]) - p[2] + 1.0, (-160, -110, 0), (160, 110, 260))),
        L("diaphragm", diaphragm, "muscle"),
        L("small_bowel", bowel, bowel_tissue),
        L("colon", colon, walled("bowel_wall", stool), group="colon", clip=cavity),
        *[L(f"iliac_bone_{i}", b, "bone") for i, b in enumerate(iliac_bones)],
        L("spine_column", VertebralPart(SPINE, "column"), "disc"),
        L("vertebral_bodies", VertebralPart(SPINE, "body"), spine_body),
        L("vertebral_arches", VertebralPart(SPINE, "arch"), "bone"),
        L("spinal_canal", VertebralPart(SPINE, "canal"), "csf"),
        L("ribs", Ribs(wall, tuple((z, dr, f0, min(f1, 0.68)) for z, dr, f0, f1 in RIBS), depth=9.0), "bone"),
        L("costal_cartilage", Ribs(wall, tuple((z, dr, 0.68, f1) for z, dr, f0, f1 in RIBS if f1 > 0.68), depth=9.0), "cartilage"),
        L("liver", liver, liver_tissue, group="liver", clip=below, label="liver"),
        L("hepatic_veins", hepatic_veins, "hepatic_vein", group="liver", label="liver", within=("liver",)),
        L("portal_branches", portal_branches, "portal_blood", group="liver", label="liver", within=("liver",)),
        L("spleen", spleen, spleen_tissue, group="spleen", clip=below, label="spleen"),
        L("stomach", stomach, walled("stomach_wall", stomach_content), group="stomach", clip=below, label="stomach"),
    ]
    for side in ("r", "l"):
        k = kidneys[side]
        name = f"kidney_{side}"
        layers += [
            L(name, k["body"], kidney_tissue, group=name, clip=cavity, label=name),
            L(f"{name}_sinus", k["sinus"], "renal_sinus", group=name, label=name, within=(name,)),
            L(f"{name}_pelvis", k["pelvis"], "urine", group=name, label=name, within=(name,)),
        ]
    layers += [
        L("adrenal_r", adrenal_r, "adrenal", group="adrenal_r", clip=cavity, label="adrenal_r"),
        L("adrenal_l", adrenal_l, "adrenal", group="adrenal_l", clip=cavity, label="adrenal_l"),
        L("gallbladder", gallbladder, walled("gb_wall", "bile"), group="gallbladder", clip=cavity, label="gallbladder"),
        L("pancreas", pancreas, "pancreas", group="pancreas", clip=cavity, label="pancreas"),
        L("duodenum", duodenum, walled("bowel_wall", duodenum_content), group="pancreas", clip=cavity, label="duodenum"),
        L("esophagus", esophagus, "esophagus", group="esophagus", label="esophagus"),
        L("smv", smv, "portal_blood", group="portal"),
        L("portal_splenic_vein", portal, "portal_blood", group="portal", label="portal_splenic_vein"),
        L("renal_veins", renal_v, "vein", group="ivc"),
        L("ivc", ivc, "vein", group="ivc", label="ivc"),
        L("iliac_veins", iliac_v, "vein", group="ivc"),
        L("aorta", aorta, "artery", group="aorta", label="aorta"),
        L("iliac_arteries", iliac_a, "artery", group="aorta"),
        L("celiac", celiac, "artery", group="aorta"),
        L("sma", sma, "artery", group="aorta"),
    ]

    J = JitterSpec
    jitter = {
        "liver": J((55, 15, 65), 5.0, 0.08, 0.06, 4.0),
        "spleen": J((-94, -42, 52), 5.0, 0.12, 0.08, 6.0),
        "stomach": J((-40, 30, 55), 6.0, 0.10, 0.08, 5.0),
        "kidney_r": J(tuple(kr["center"]), 5.0, 0.08, 0.06, 5.0),
        "kidney_l": J(tuple(kl["center"]), 5.0, 0.08, 0.06, 5.0),
        "adrenal_r": J((38, -31, 47), 2.5, 0.10, 0.08, 6.0),
        "adrenal_l": J((-38, -19, 37), 2.5, 0.10, 0.08, 6.0),
        "gallbladder": J((46, 50, 16), 5.0, 0.15, 0.10, 8.0),
        "pancreas": J((10, 18, 0), 4.0, 0.07, 0.05, 4.0),
        "esophagus": J((-20, 2, 110), 2.0, 0.03, 0.03, 2.0),
        "portal": J((20, 15, 20), 2.5, 0.04, 0.03, 2.0),
        "ivc": J((20, -10, 0), 2.0, 0.04, 0.03, 1.5),
        "aorta": J((-12, -8, 0), 2.0, 0.04, 0.03, 1.5),
        "colon": J((0, 30, -40), 8.0, 0.06, 0.05, 3.0),
        "heart": J((-22, 45, 168), 6.0, 0.08, 0.05, 5.0),
    }

    spleen_axis = spleen_rot @ np.array([0.0, 1.0, 0.0])
    gb_axis = gb_rot @ np.array([0.0, 0.0, 1.0])
    items = [
        ("liver_right_lobe", (62, 6, 64), "liver"),
        ("liver_left_lobe", (-5, 45, 85), "liver"),
        ("liver_inferior_tip", (84, 2, 0), "liver"),
        ("liver_segment_4", (20, 40, 70), "liver"),
        ("hepatic_vein_confluence", (20, -14, 108), "liver"),
        ("spleen_center", (-98, -44, 52), "spleen"),
        ("spleen_anterior_pole", np.array([-98, -44, 52]) + 28.0 * spleen_axis, "spleen"),
        ("spleen_posterior_pole", np.array([-98, -44, 52]) - 26.0 * spleen_axis, "spleen"),
        ("right_kidney_center", kr["center"], "kidney_r"),
        ("right_kidney_upper_pole", kr["upper"], "kidney_r"),
        ("right_kidney_lower_pole", kr["lower"], "kidney_r"),
        ("right_kidney_hilum", kr["hilum"], "kidney_r"),
        ("left_kidney_center", kl["center"], "kidney_l"),
        ("left_kidney_upper_pole", kl["upper"], "kidney_l"),
        ("left_kidney_lower_pole", kl["lower"], "kidney_l"),
        ("left_kidney_hilum", kl["hilum"], "kidney_l"),
        ("right_adrenal", (40, -34, 50), "adrenal_r"),
        ("left_adrenal", (-40, -22, 40), "adrenal_l"),
        ("gallbladder_center", (46, 50, 16), "gallbladder"),
        ("gallbladder_fundus", np.array([46, 50, 16]) - 24.0 * gb_axis, "gallbladder"),
        ("pancreas_head", (28, 14, -14), "pancreas"),
        ("pancreas_neck", (6, 28, 8), "pancreas"),
        ("pancreas_body", (-24, 22, 16), "pancreas"),
        ("pancreas_tail", (-76, -10, 31), "pancreas"),
        ("duodenal_bulb", (36, 38, 20), "pancreas"),
        ("duodenum_descending", (54, 12, -12), "pancreas"),
        ("duodenum_horizontal", (6, 15, -54), "pancreas"),
        ("duodenojejunal_flexure", (-28, 18, -32), "pancreas"),
        ("stomach_fundus", (-60, 0, 78), "stomach"),
        ("stomach_body", (-58, 30, 48), "stomach"),
        ("stomach_antrum", (-6, 58, 22), "stomach"),
        ("pylorus", (9, 53, 21), "stomach"),
        ("gastroesophageal_junction", (-40, 6, 84), "esophagus"),
        ("esophagus_distal", (-14, 2, 120), "esophagus"),
        ("aorta_T10", (-18, -12, 80), "aorta"),
        ("aorta_hiatus", (-13, -8, 30), "aorta"),
        ("celiac_trunk", (-10, 14, 28), "aorta"),
        ("sma_origin", (-9, 14, 4), "aorta"),
        ("aorta_L3", (-9, -3, -70), "aorta"),
        ("aortic_bifurcation", (-6, -2, -110), "aorta"),
        ("ivc_intrahepatic", (22, -14, 70), "ivc"),
        ("ivc_renal_level", (20, -7, -10), "ivc"),
        ("ivc_L4", (15.5, -9.5, -98), "ivc"),
        ("porta_hepatis", (44, 14, 44), "portal"),
        ("portal_vein", (30, 16, 26), "portal"),
        ("splenoportal_confluence", (8, 15, 6), "portal"),
        ("splenic_vein_hilum", (-80, -24, 30), "portal"),
    ]
    items += [(f"vertebral_body_{n}", SPINE.body_center(n), None) for n in SPINE.names]
    items += [("linea_alba_L3", (0, 96 - MUSCLE_WALL_MM / 2, -77), None), ("heart_base", (-22, 45, 150), "heart")]
    return Anatomy(
        region="abdomen",
        layers=layers,
        landmarks=landmark_list(1, items),
        jitter=jitter,
        field_box=(np.array([-140.0, -100.0, -180.0]), np.array([140.0, 100.0, 150.0])),
        z_full=(-172.0, 142.0),
        half_width=152.0 + max(fat),
    )
