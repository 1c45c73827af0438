"""The per-subject smooth transform between the canonical anatomy and the scanner's world frame.

Three stages, from world (scanner RAS+ mm) to an organ's canonical coordinates:

1. global similarity-like map: ``q = L^-1 (w - t)`` with ``L = R @ diag(scale_xyz)`` (patient size,
   body aspect, a few degrees of rotation, table position);
2. a low-frequency displacement field given as a sum of Gaussian radial basis functions:
   ``p = q + u(q)`` (p: the subject's "frame" coordinates, shared by body, spine and ribs);
3. per-organ jitter, an affine map about the organ's centre:
   ``local = c + M^-1 (p - c - shift)`` (position, size, shape and orientation of that organ).

Rendering only needs this backward direction (one evaluation per voxel). Landmarks need the
forward direction; stage 2 is inverted by fixed-point iteration ``q <- p - u(q)``, which converges
because the field's Jacobian is kept well below 1 (small amplitudes, wide kernels).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from alice.data.phantom.shapes import rotation


@dataclass
class Jitter:
    """Affine jitter of one organ (group) about its canonical centre."""

    center: np.ndarray
    shift: np.ndarray
    matrix: np.ndarray  # maps local offsets to frame offsets

    def __post_init__(self):
        self.inverse = np.linalg.inv(self.matrix)

    def to_local(self, p: np.ndarray) -> np.ndarray:
        c = self.center.reshape(3, 1).astype(np.float32)
        s = self.shift.reshape(3, 1).astype(np.float32)
        return c + self.inverse.astype(np.float32) @ (p - c - s)

    def to_frame(self, p: np.ndarray) -> np.ndarray:
        """Forward map of points (3, N), float64."""
        c = self.center.reshape(3, 1)
        return c + self.shift.reshape(3, 1) + self.matrix @ (p - c)

    def as_json(self) -> dict:
        return {
            "center_mm": [round(float(v), 3) for v in self.center],
            "shift_mm": [round(float(v), 3) for v in self.shift],
            "matrix": [[round(float(v), 5) for v in row] for row in self.matrix],
        }


@dataclass
class SubjectWarp:
    linear: np.ndarray  # 3x3, L = R diag(scale)
    translation: np.ndarray  # 3
    rbf_centers: np.ndarray  # (K, 3)
    rbf_sigmas: np.ndarray  # (K,)
    rbf_amplitudes: np.ndarray  # (K, 3)
    jitters: dict[str, Jitter] = field(default_factory=dict)

    def __post_init__(self):
        self.linear_inv = np.linalg.inv(self.linear)

    # -- backward (world -> canonical), used for every voxel ---------------------------------
    def displacement(self, q: np.ndarray) -> np.ndarray:
        """u(q) for points (3, ...) -> (3, ...), same dtype as q."""
        u = np.zeros_like(q)
        for c, s, a in zip(self.rbf_centers, self.rbf_sigmas, self.rbf_amplitudes):
            d2 = (q[0] - c[0]) ** 2 + (q[1] - c[1]) ** 2 + (q[2] - c[2]) ** 2
            g = np.exp(d2 * (-0.5 / (s * s)))
            u[0] += a[0] * g
            u[1] += a[1] * g
            u[2] += a[2] * g
        return u

    def grid_to_frame(self, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray) -> np.ndarray:
        """Frame coordinates (3, nx, ny, nz) float32 of the world grid xs x ys x zs (1-D, mm)."""
        m = self.linear_inv
        t = self.translation
        axes = [np.asarray(v, dtype=np.float64) - t[i] for i, v in enumerate((xs, ys, zs))]
        shape = (len(xs), len(ys), len(zs))
        q = np.empty((3, *shape), dtype=np.float32)
        for r in range(3):
            q[r] = (
                (m[r, 0] * axes[0])[:, None, None]
                + (m[r, 1] * axes[1])[None, :, None]
                + (m[r, 2] * axes[2])[None, None, :]
            ).astype(np.float32)
        return q + self.displacement(q)

    def to_local(self, group: str | None, p: np.ndarray) -> np.ndarray:
        if group is None:
            return p
        return self.jitters[group].to_local(p)

    # -- forward (canonical -> world), used for landmarks --------------------------------------
    def frame_to_world(self, p: np.ndarray, tol: float = 1e-5, max_iter: int = 200):
        """World points (3, N) for frame points (3, N); also the max residual |q + u(q) - p| (mm)."""
        p = np.asarray(p, dtype=np.float64)
        q = p.copy()
        for _ in range(max_iter):
            q_new = p - self.displacement(q)
            step = np.abs(q_new - q).max() if q.size else 0.0
            q = q_new
            if step < tol:
                break
        residual = float(np.abs(q + self.displacement(q) - p).max()) if q.size else 0.0
        world = self.linear @ q + self.translation.reshape(3, 1)
        return world, residual

    def local_to_world(self, group: str | None, p_local: np.ndarray, tol: float = 1e-5):
        p = np.asarray(p_local, dtype=np.float64)
        if group is not None:
            p = self.jitters[group].to_frame(p)
        return self.frame_to_world(p, tol=tol)

    def as_json(self) -> dict:
        return {
            "linear": [[round(float(v), 6) for v in row] for row in self.linear],
            "translation_mm": [round(float(v), 3) for v in self.translation],
            "displacement_rbf": [
                {
                    "center_mm": [round(float(v), 2) for v in c],
                    "sigma_mm": round(float(s), 2),
                    "amplitude_mm": [round(float(v), 3) for v in a],
                }
                for c, s, a in zip(self.rbf_centers, self.rbf_sigmas, self.rbf_amplitudes)
            ],
            "organ_jitter": {k: j.as_json() for k, j in self.jitters.items()},
        }


@dataclass(frozen=True)
class JitterSpec:
    """How much one organ group may vary: shift sd (mm), size sd, per-axis shape sd, rotation sd."""

    center: tuple[float, float, float]
    shift_sd: float = 4.0
    size_sd: float = 0.08
    shape_sd: float = 0.06
    rot_sd_deg: float = 5.0


def _clipped_normal(rng: np.random.Generator, sd: float, size=None, limit: float = 2.0):
    return np.clip(rng.normal(0.0, sd, size), -limit * sd, limit * sd)


def draw_warp(
    rng: np.random.Generator,
    scale: np.ndarray,
    rotation_deg: np.ndarray,
    translation: np.ndarray,
    field_box: tuple[np.ndarray, np.ndarray],
    jitter_specs: dict[str, JitterSpec],
    n_rbf: int = 8,
) -> SubjectWarp:
    """Draw the smooth field and the organ jitters (the global part is given)."""
    linear = rotation(*rotation_deg) @ np.diag(scale)
    lo, hi = field_box
    centers = lo + (hi - lo) * rng.random((n_rbf, 3))
    sigmas = rng.uniform(55.0, 90.0, n_rbf)
    amps = _clipped_normal(rng, 3.5, (n_rbf, 3))  # |a| <= 7 mm per kernel
    jitters = {}
    for name, spec in jitter_specs.items():
        size = 1.0 + _clipped_normal(rng, spec.size_sd)
        shape = 1.0 + _clipped_normal(rng, spec.shape_sd, 3)
        rot = rotation(*_clipped_normal(rng, spec.rot_sd_deg, 3))
        jitters[name] = Jitter(
            center=np.asarray(spec.center, dtype=np.float64),
            shift=_clipped_normal(rng, spec.shift_sd, 3),
            matrix=rot @ np.diag(size * shape),
        )
    return SubjectWarp(linear, np.asarray(translation, dtype=np.float64), centers, sigmas, amps, jitters)
