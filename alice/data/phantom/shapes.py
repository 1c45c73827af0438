"""Implicit shapes in millimetres: approximate signed distance functions (SDF) on point sets.

Every shape maps points `p` of shape (3, N) (rows x, y, z; float32) to an approximate signed
distance in mm, negative inside. Shapes compose with min (union), max (intersection) and
max(a, -b) (subtraction), which keeps the result an approximate distance, good enough for
painting, thin walls (e.g. `-4 < d < 0`) and soft edges. Each shape also knows an axis-aligned
bounding box so it is evaluated only where it can be non-empty; unions and tubes can split
themselves into `pieces()` (short runs of segments) that a painter evaluates box by box, giving a
large positive value far away from every piece. Only the sign and the distance inside a shape
(and just outside it) are relied on.
"""

from __future__ import annotations

import abc

from dataclasses import dataclass

import numpy as np

Box = tuple[np.ndarray, np.ndarray]


def rotation(deg_x: float = 0.0, deg_y: float = 0.0, deg_z: float = 0.0) -> np.ndarray:
    """Rotation matrix R = Rz @ Ry @ Rx (angles in degrees, right-handed)."""
    ax, ay, az = np.deg2rad([deg_x, deg_y, deg_z])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _box(lo, hi) -> Box:
    return np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)


class Shape(abc.ABC):
    """Base class: `sdf(p)` and `box()`; combine with `|` (union), `&` (intersection), `-`."""

    @abc.abstractmethod
    def sdf(self, p: np.ndarray) -> np.ndarray:
        """Signed distance (mm, negative inside) at points p (..., 3)."""

    @abc.abstractmethod
    def box(self) -> Box:
        """Axis-aligned bounding box (lo, hi) in mm."""

    def __or__(self, other: "Shape") -> "Shape":
        return Union([self, other])

    def __and__(self, other: "Shape") -> "Shape":
        return Intersection([self, other])

    def __sub__(self, other: "Shape") -> "Shape":
        return Subtraction(self, other)


@dataclass
class Ellipsoid(Shape):
    """Ellipsoid with semi-axes `radii` along the columns of `rot` (local axes)."""

    center: tuple[float, float, float]
    radii: tuple[float, float, float]
    rot: np.ndarray | None = None

    def __post_init__(self):
        self._c = np.asarray(self.center, dtype=np.float32).reshape(3, 1)
        self._r = np.asarray(self.radii, dtype=np.float32).reshape(3, 1)
        self._rt = None if self.rot is None else np.asarray(self.rot, dtype=np.float32).T

    def sdf(self, p):
        q = p - self._c
        if self._rt is not None:
            q = self._rt @ q
        k0 = np.sqrt(np.sum((q / self._r) ** 2, axis=0))
        k1 = np.sqrt(np.sum((q / (self._r * self._r)) ** 2, axis=0))
        return k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)

    def box(self):
        c = np.asarray(self.center, dtype=np.float64)
        r = np.asarray(self.radii, dtype=np.float64)
        if self.rot is None:
            half = r
        else:
            half = np.abs(np.asarray(self.rot, dtype=np.float64)) @ r
        return _box(c - half, c + half)


def catmull_rom(points: np.ndarray, samples_per_segment: int = 6) -> np.ndarray:
    """Smooth curve through control points (M, 3) -> (K, 3), passing through every point."""
    pts = np.asarray(points, dtype=np.float64)
    if len(pts) < 3:
        t = np.linspace(0.0, 1.0, samples_per_segment + 1)[:, None]
        return pts[0] + t * (pts[-1] - pts[0])
    ext = np.vstack([2 * pts[0] - pts[1], pts, 2 * pts[-1] - pts[-2]])
    out = []
    t = np.linspace(0.0, 1.0, samples_per_segment, endpoint=False)[:, None]
    for i in range(1, len(ext) - 2):
        p0, p1, p2, p3 = ext[i - 1], ext[i], ext[i + 1], ext[i + 2]
        out.append(
            0.5
            * (
                2 * p1
                + (-p0 + p2) * t
                + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3
            )
        )
    out.append(pts[-1:])
    return np.vstack(out)


class Segments(Shape):
    """Union of capsules with linearly varying radius (cone segments) given as arrays:
    starts `a` (3, M), directions `ab` (3, M), radii `ra`, `rb` (M,)."""

    def __init__(self, a: np.ndarray, ab: np.ndarray, ra: np.ndarray, rb: np.ndarray):
        self._a = np.ascontiguousarray(a, dtype=np.float32)
        self._ab = np.ascontiguousarray(ab, dtype=np.float32)
        self._inv_ab2 = (1.0 / np.maximum(np.sum(self._ab.astype(np.float64) ** 2, axis=0), 1e-9)).astype(np.float32)
        self._ra = np.asarray(ra, dtype=np.float32)
        self._dr = np.asarray(rb, dtype=np.float32) - self._ra

    def sdf(self, p):
        x, y, z = p[0], p[1], p[2]
        out = None
        for m in range(self._a.shape[1]):
            ax, ay, az = self._a[:, m]
            bx, by, bz = self._ab[:, m]
            px, py, pz = x - ax, y - ay, z - az
            t = (px * bx + py * by + pz * bz) * self._inv_ab2[m]
            np.clip(t, 0.0, 1.0, out=t)
            px -= t * bx
            py -= t * by
            pz -= t * bz
            d = np.sqrt(px * px + py * py + pz * pz) - (self._ra[m] + t * self._dr[m])
            out = d if out is None else np.minimum(out, d, out=out)
        return out

    def box(self):
        a = self._a.astype(np.float64)
        b = a + self._ab
        r = np.maximum(self._ra, self._ra + self._dr).astype(np.float64)
        return _box(np.minimum(a, b).min(axis=1) - r.max(), np.maximum(a, b).max(axis=1) + r.max())


class Tube(Segments):
    """A tube of varying radius around a smooth centreline through `points` (rounded ends).

    `pieces()` splits it into short runs of segments so that a painter can evaluate each run
    only inside its own small bounding box."""

    def __init__(self, points, radii, samples_per_segment: int = 3):
        ctrl = np.asarray(points, dtype=np.float64)
        rad = np.broadcast_to(np.asarray(radii, dtype=np.float64), (len(ctrl),))
        curve = catmull_rom(ctrl, samples_per_segment)
        s_ctrl = np.linspace(0.0, 1.0, len(ctrl))
        s_curve = np.linspace(0.0, 1.0, len(curve))
        r_curve = np.interp(s_curve, s_ctrl, rad)
        self.curve = curve
        super().__init__(curve[:-1].T, (curve[1:] - curve[:-1]).T, r_curve[:-1], r_curve[1:])

    def pieces(self, per_piece: int = 2) -> list[Shape]:
        m = self._a.shape[1]
        return [
            Segments(self._a[:, i : i + per_piece], self._ab[:, i : i + per_piece], self._ra[i : i + per_piece], (self._ra + self._dr)[i : i + per_piece])
            for i in range(0, m, per_piece)
        ]


@dataclass
class Union(Shape):
    parts: list

    def sdf(self, p):
        out = self.parts[0].sdf(p)
        for part in self.parts[1:]:
            out = np.minimum(out, part.sdf(p))
        return out

    def box(self):
        boxes = [s.box() for s in self.parts]
        return _box(np.min([b[0] for b in boxes], axis=0), np.max([b[1] for b in boxes], axis=0))

    def pieces(self) -> list[Shape]:
        out = []
        for part in self.parts:
            out.extend(part.pieces() if hasattr(part, "pieces") else [part])
        return out


@dataclass
class SmoothUnion(Shape):
    """Union with a fillet of width `k` mm (polynomial smooth minimum)."""

    a: Shape
    b: Shape
    k: float = 10.0

    def sdf(self, p):
        da, db = self.a.sdf(p), self.b.sdf(p)
        h = np.maximum(self.k - np.abs(da - db), 0.0) / self.k
        return np.minimum(da, db) - h * h * self.k * 0.25

    def box(self):
        return Union([self.a, self.b]).box()


@dataclass
class Intersection(Shape):
    parts: list

    def sdf(self, p):
        out = self.parts[0].sdf(p)
        for part in self.parts[1:]:
            out = np.maximum(out, part.sdf(p))
        return out

    def box(self):
        boxes = [s.box() for s in self.parts]
        return _box(np.max([b[0] for b in boxes], axis=0), np.min([b[1] for b in boxes], axis=0))


@dataclass
class Subtraction(Shape):
    a: Shape
    b: Shape

    def sdf(self, p):
        return np.maximum(self.a.sdf(p), -self.b.sdf(p))

    def box(self):
        return self.a.box()


@dataclass
class Offset(Shape):
    """Grow (positive `mm`) or shrink a shape."""

    shape: Shape
    mm: float

    def sdf(self, p):
        return self.shape.sdf(p) - self.mm

    def box(self):
        lo, hi = self.shape.box()
        return _box(lo - max(self.mm, 0.0), hi + max(self.mm, 0.0))


@dataclass
class Shell(Shape):
    """The band `inner < sdf < outer` of a shape (e.g. a wall of thickness outer - inner)."""

    shape: Shape
    inner: float
    outer: float

    def sdf(self, p):
        d = self.shape.sdf(p)
        mid, half = 0.5 * (self.inner + self.outer), 0.5 * (self.outer - self.inner)
        return np.abs(d - mid) - half

    def box(self):
        lo, hi = self.shape.box()
        return _box(lo - max(self.outer, 0.0), hi + max(self.outer, 0.0))


@dataclass
class Slab(Shape):
    """Half-space-bounded slab: points with lo <= p[axis] <= hi (a box when combined)."""

    axis: int
    lo: float
    hi: float

    def sdf(self, p):
        v = p[self.axis]
        return np.maximum(self.lo - v, v - self.hi)

    def box(self):
        lo = np.full(3, -1e4)
        hi = np.full(3, 1e4)
        lo[self.axis], hi[self.axis] = self.lo, self.hi
        return _box(lo, hi)


@dataclass
class Box3(Shape):
    """Axis-aligned box (exact SDF)."""

    lo: tuple
    hi: tuple

    def __post_init__(self):
        lo = np.asarray(self.lo, dtype=np.float32).reshape(3, 1)
        hi = np.asarray(self.hi, dtype=np.float32).reshape(3, 1)
        self._c, self._h = 0.5 * (lo + hi), 0.5 * (hi - lo)

    def sdf(self, p):
        q = np.abs(p - self._c) - self._h
        outside = np.sqrt(np.sum(np.maximum(q, 0.0) ** 2, axis=0))
        inside = np.minimum(q.max(axis=0), 0.0)
        return outside + inside

    def box(self):
        return _box(self.lo, self.hi)
