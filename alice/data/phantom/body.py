"""The body frame shared by the abdomen and the chest: outline, spine and ribs.

These shapes live in the subject's canonical frame (they move with the global transform and the
smooth displacement field but get no per-organ jitter). Coordinates are RAS+ millimetres
(nibabel's convention): x increases towards the patient's Right, y towards Anterior, z towards
Superior. So the liver has x > 0 and the spleen x < 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from alice.data.phantom.shapes import Box, Shape, _box


def mediastinum_half_width(y: np.ndarray, z: np.ndarray, z_superior: float = 1e4) -> np.ndarray:
    """Half-width (mm) of the midline strip the lungs leave free: wide around the spine,
    esophagus, aorta and trachea (y about -70..30), narrow behind the sternum (the lungs almost
    meet anteriorly), and wider above `z_superior` (the superior mediastinum with the great
    vessels' branches)."""
    core = np.exp(-(((y + 20.0) / 48.0) ** 4))
    upper = 0.5 * (1.0 + np.tanh((z - z_superior) / 24.0))
    return (5.0 + core * (17.0 + 14.0 * upper)).astype(np.float32)


def _interp(knots: tuple[tuple[float, float], ...], z: np.ndarray) -> np.ndarray:
    zs, vs = zip(*knots)
    return np.interp(z, zs, vs).astype(np.float32)


@dataclass
class BodyWall(Shape):
    """A superelliptic cylinder whose half-axes vary along z (knots: (z, value) pairs).

    `fat` = (anterior, lateral, posterior) thickness in mm added outside the wall (0 for the
    muscle wall itself, the subject's subcutaneous fat for the skin surface).
    """

    half_width: tuple
    half_ant: tuple
    half_post: tuple
    exponent: float = 2.3
    fat: tuple[float, float, float] = (0.0, 0.0, 0.0)
    y_center: float = 0.0

    def sdf(self, p):
        x, y, z = p[0], p[1] - self.y_center, p[2]
        a = _interp(self.half_width, z)
        b = np.where(y >= 0, _interp(self.half_ant, z), _interp(self.half_post, z))
        r = np.sqrt(x * x + y * y) + 1e-6
        c, s = np.abs(x) / r, y / r
        n = self.exponent
        boundary = ((c / a) ** n + (np.abs(s) / b) ** n) ** (-1.0 / n)
        t_ant, t_lat, t_post = self.fat
        fat = t_lat + (t_ant - t_lat) * np.maximum(s, 0) ** 2 + (t_post - t_lat) * np.maximum(-s, 0) ** 2
        return r - boundary - fat

    def box(self):
        a = max(v for _, v in self.half_width) + max(self.fat)
        b_ant = max(v for _, v in self.half_ant) + max(self.fat)
        b_post = max(v for _, v in self.half_post) + max(self.fat)
        zs = [z for z, _ in self.half_width]
        return _box((-a, self.y_center - b_post, min(zs)), (a, self.y_center + b_ant, max(zs)))


@dataclass
class Spine:
    """Vertebral levels: names, centre z, half-height, body half-axes; the body centre y(z)."""

    names: tuple[str, ...]
    z: tuple[float, ...]
    half_height: tuple[float, ...]
    rx: tuple[float, ...]
    ry: tuple[float, ...]
    y_knots: tuple  # (z, y) of the vertebral-body centre
    transverse: tuple[float, ...]  # transverse-process half-span (x) per level

    def level(self, z: np.ndarray):
        zc = np.asarray(self.z, dtype=np.float32)
        k = np.abs(z[:, None] - zc[None, :]).argmin(axis=1)
        return k, z - zc[k]

    def body_center(self, name: str) -> list[float]:
        i = self.names.index(name)
        return [0.0, float(_interp(self.y_knots, np.array([self.z[i]]))[0]), float(self.z[i])]

    def z_span(self) -> tuple[float, float]:
        return min(self.z) - max(self.half_height) * 1.6, max(self.z) + max(self.half_height) * 1.6

    def canal_y(self, z):
        k, _ = self.level(z)
        return _interp(self.y_knots, z) - np.asarray(self.ry, dtype=np.float32)[k] - 9.0


@dataclass
class VertebralPart(Shape):
    """One part of the spine as a shape: 'body', 'column' (bodies + discs), 'canal', 'arch'."""

    spine: Spine
    part: str

    def sdf(self, p):
        sp = self.spine
        x, y, z = p
        k, dz = sp.level(z)
        yc = _interp(sp.y_knots, z)
        rx = np.asarray(sp.rx, dtype=np.float32)[k]
        ry = np.asarray(sp.ry, dtype=np.float32)[k]
        hh = np.asarray(sp.half_height, dtype=np.float32)[k]
        zlo, zhi = sp.z_span()
        if self.part in ("body", "column"):
            e = np.sqrt((x / rx) ** 2 + ((y - yc) / ry) ** 2)
            radial = (e - 1.0) * np.minimum(rx, ry)
            if self.part == "body":
                return np.maximum(radial, np.abs(dz) - hh)
            return np.maximum(radial + 1.0, np.maximum(zlo - z, z - zhi))
        cy = yc - ry - 9.0  # canal centre
        rc = np.sqrt(x * x + (y - cy) ** 2)
        inside_z = np.maximum(zlo - z, z - zhi)
        if self.part == "canal":
            return np.maximum(rc - 8.5, inside_z)
        # arch: ring around the canal (pedicles + laminae) + spinous and transverse processes
        ring = np.maximum(np.maximum(rc - 16.0, 8.5 - rc), np.abs(dz) - 0.8 * hh)
        ring = np.maximum(ring, (y - cy) - 4.0)  # no bone in front of the canal (body is there)
        spin_y0, spin_y1 = cy - 12.0, cy - 38.0
        spinous = np.maximum.reduce(
            [np.abs(x) - 4.0, (y - spin_y0), (spin_y1 - y), np.abs(dz + 0.25 * hh + 0.15 * (spin_y0 - y)) - 0.55 * hh]
        )
        tspan = np.asarray(sp.transverse, dtype=np.float32)[k]
        transverse = np.maximum.reduce([np.abs(x) - tspan, 10.0 - np.abs(x), np.abs(y - cy - 2.0) - 5.0, np.abs(dz) - 0.35 * hh])
        return np.maximum(np.minimum.reduce([ring, spinous, transverse]), inside_z)

    def box(self):
        sp = self.spine
        zlo, zhi = sp.z_span()
        ys = [v for _, v in sp.y_knots]
        w = max(max(sp.rx), max(sp.transverse)) + 2
        return _box((-w, min(ys) - max(sp.ry) - 50.0, zlo), (w, max(ys) + max(sp.ry) + 2, zhi))


@dataclass
class Ribs(Shape):
    """Curved bone (or cartilage) bands following the inside of the body wall.

    Each rib: (z at the spine, drop towards the front in mm, angular start, angular end), angles
    as fractions of pi measured from the posterior midline (0) to the anterior midline (1).
    """

    wall: BodyWall
    ribs: tuple[tuple[float, float, float, float], ...]
    depth: float = 6.0  # centre of the rib this far inside the wall surface
    half_thickness: float = 4.0
    half_height: float = 4.5

    def sdf(self, p):
        x, y, z = p
        d_wall = self.wall.sdf(p)
        radial = np.abs(d_wall + self.depth) - self.half_thickness
        phi = np.arctan2(np.abs(x), -(y - self.wall.y_center)) / np.pi  # 0 posterior .. 1 anterior
        out = np.full(z.shape, 1e4, dtype=np.float32)
        for z_post, drop, f0, f1 in self.ribs:
            z_rib = z_post - drop * phi
            vert = np.abs(z - z_rib) - self.half_height
            ang = np.maximum(f0 - phi, phi - f1) * 120.0
            out = np.minimum(out, np.maximum.reduce([radial, vert, ang]))
        return out

    def box(self):
        lo, hi = self.wall.box()
        zs_hi = max(r[0] for r in self.ribs) + self.half_height + 2
        zs_lo = min(r[0] - r[1] for r in self.ribs) - self.half_height - 2
        return _box((lo[0], lo[1], zs_lo), (hi[0], hi[1], zs_hi))


@dataclass
class FrameFunction(Shape):
    """A shape given by a function of frame coordinates and an explicit box."""

    fn: object
    lo: tuple
    hi: tuple

    def sdf(self, p):
        return self.fn(p)

    def box(self) -> Box:
        return _box(self.lo, self.hi)
