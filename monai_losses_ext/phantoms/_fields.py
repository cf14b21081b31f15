"""Small numerical helpers: the output grid, smooth random fields, soft occupancy."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Grid", "FourierField", "falloff_occupancy", "random_rotation"]


@dataclass(frozen=True)
class Grid:
    """An axis-aligned voxel grid in world millimetres (RAS, like the MNI template)."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]  # world position of voxel (0, 0, 0)

    @classmethod
    def centred(cls, centre, shape, spacing) -> Grid:
        shape = tuple(int(s) for s in shape)
        spacing = tuple(float(s) for s in spacing)
        origin = tuple(float(c - (n - 1) / 2.0 * s) for c, n, s in zip(centre, shape, spacing))
        return cls(shape, spacing, origin)

    @property
    def affine(self) -> np.ndarray:
        a = np.diag([*self.spacing, 1.0])
        a[:3, 3] = self.origin
        return a

    @property
    def voxel_volume(self) -> float:
        return float(np.prod(self.spacing))

    def axes(self, box: tuple[slice, slice, slice] | None = None) -> list[np.ndarray]:
        """World coordinates (mm) of the voxel centres along each axis (optionally in a box)."""
        box = box or (slice(None),) * 3
        return [
            (o + s * np.arange(n, dtype=np.float64))[b]
            for o, s, n, b in zip(self.origin, self.spacing, self.shape, box)
        ]

    def box_around(self, centre_mm, radius_mm) -> tuple[slice, slice, slice]:
        """Index box covering the ball (centre, radius), clipped to the grid."""
        out = []
        for c, r, o, s, n in zip(centre_mm, np.broadcast_to(radius_mm, 3), self.origin, self.spacing, self.shape):
            lo = int(np.floor((c - r - o) / s))
            hi = int(np.ceil((c + r - o) / s)) + 1
            out.append(slice(max(lo, 0), min(hi, n)))
        return tuple(out)

    def world(self, index) -> np.ndarray:
        return np.asarray(self.origin) + np.asarray(index, dtype=np.float64) * np.asarray(self.spacing)


class FourierField:
    """A smooth, unit-variance Gaussian-like random field defined in world millimetres.

    Random Fourier features: ``f(x) = sqrt(2/K) * sum_k cos(w_k . x + phi_k)`` with
    ``w_k ~ N(0, I / lengthscale^2)`` approximates a Gaussian process with a squared
    exponential kernel of that length scale.  The field is analytic, so it does not depend
    on the grid it is sampled on, and its random draws have a fixed size.
    On an axis-aligned grid it factorises into three 1-D complex exponentials, which makes
    evaluation one small matrix product.
    """

    def __init__(self, rng: np.random.Generator, lengthscale_mm: float, n_features: int = 32):
        self.omega = rng.normal(0.0, 1.0 / lengthscale_mm, size=(n_features, 3))
        phase = rng.uniform(0.0, 2.0 * np.pi, size=n_features)
        self.coef = np.sqrt(2.0 / n_features) * np.exp(1j * phase)

    def on_axes(self, axes: list[np.ndarray]) -> np.ndarray:
        """Evaluate on the grid spanned by three 1-D coordinate arrays -> float32 (X, Y, Z)."""
        ex, ey, ez = (np.exp(1j * np.outer(self.omega[:, d], a)) for d, a in enumerate(axes))  # (K, n_d)
        yz = (ey[:, :, None] * ez[:, None, :]).reshape(len(self.coef), -1)
        out = ((ex * self.coef[:, None]).T @ yz).real
        return out.reshape(len(axes[0]), len(axes[1]), len(axes[2])).astype(np.float32)


def falloff_occupancy(phi: np.ndarray, spacing) -> np.ndarray:
    """Soft occupancy of the region ``phi < 0`` from a signed-distance-like field (mm).

    ``f = clip(0.5 - phi / (|grad phi| * h), 0, 1)``: the fraction of a voxel of width ``h``
    cut by a plane at the estimated distance, so ``f >= 0.5`` exactly where ``phi <= 0``.
    """
    grads = np.gradient(phi, *spacing)
    g = np.sqrt(sum(gi * gi for gi in grads))
    g = np.clip(np.nan_to_num(g, nan=1.0, posinf=1.0), 0.25, 4.0)
    h = float(np.mean(spacing))
    f = np.clip(0.5 - phi / (g * h), 0.0, 1.0)
    f[phi <= 0] = np.maximum(f[phi <= 0], 0.5)  # keep the rule exact at phi == 0 and with clipping
    f[phi > 0] = np.minimum(f[phi > 0], np.nextafter(np.float32(0.5), np.float32(0)))
    return f.astype(np.float32)


def random_rotation(rng: np.random.Generator, first_axis=None) -> np.ndarray:
    """A 3x3 rotation; its first column is ``first_axis`` (normalised) when given."""
    if first_axis is None:
        q = rng.normal(size=4)
        w, x, y, z = q / np.linalg.norm(q)
        return np.array(
            [
                [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
            ]
        )
    a = np.asarray(first_axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    helper = rng.normal(size=3)
    b = helper - a * (helper @ a)
    if np.linalg.norm(b) < 1e-8:
        b = np.eye(3)[np.argmin(np.abs(a))]
        b = b - a * (b @ a)
    b /= np.linalg.norm(b)
    return np.stack([a, b, np.cross(a, b)], axis=1)
