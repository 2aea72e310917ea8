"""Dominant planes in a point cloud (RANSAC), and the scale between two parts of a map that see one plane.

Pure functions on ``(N, 3)`` arrays. A plane is ``n . x + d = 0`` with a unit normal ``n (3,)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Plane:
    """``normal . x + offset = 0``, fitted to ``num_inliers`` points."""

    normal: np.ndarray  # (3,) unit
    offset: float  # d in n . x + d = 0
    num_inliers: int

    def signed_distance(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, np.float64) @ self.normal + self.offset


def _fit_plane(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares plane through ``points (N, 3)``: the normal is the direction of least spread."""
    centre = points.mean(axis=0)
    normal = np.linalg.svd(points - centre, full_matrices=False)[2][-1]
    return normal, -float(normal @ centre)


def dominant_planes(points: np.ndarray, threshold: float, min_inliers: int, max_planes: int = 3,
                    iterations: int = 300, seed: int = 0) -> list[Plane]:
    """Up to ``max_planes`` planes, largest first, each supported by at least ``min_inliers`` of ``points
    (N, 3)`` within ``threshold`` (the points of one plane are removed before the next is sought)."""
    rng = np.random.default_rng(seed)
    left = np.asarray(points, np.float64)
    planes: list[Plane] = []
    while len(planes) < max_planes and len(left) >= max(min_inliers, 3):
        samples = rng.integers(0, len(left), size=(iterations, 3))
        a, b, c = left[samples[:, 0]], left[samples[:, 1]], left[samples[:, 2]]
        normals = np.cross(b - a, c - a)
        lengths = np.linalg.norm(normals, axis=1)
        ok = lengths > 1e-12
        if not np.any(ok):
            break
        normals = normals[ok] / lengths[ok, None]
        offsets = -np.einsum("ij,ij->i", normals, a[ok])
        counts = (np.abs(left @ normals.T + offsets) < threshold).sum(axis=0)
        best = int(np.argmax(counts))
        inliers = np.abs(left @ normals[best] + offsets[best]) < threshold
        if inliers.sum() < min_inliers:
            break
        normal, offset = _fit_plane(left[inliers])
        inliers = np.abs(left @ normal + offset) < threshold
        planes.append(Plane(normal, offset, int(inliers.sum())))
        left = left[~inliers]
    return planes


def shared_plane_scale(before: np.ndarray, after: np.ndarray, pivot: np.ndarray, max_angle_deg: float = 4.0,
                       min_fraction: float = 0.03, min_inliers: int = 40) -> float | None:
    """The factor that scales ``after (M, 3)`` about ``pivot (3,)`` into the scale of ``before (N, 3)``, from
    a plane both parts see (a floor seen before and after a turn), or None when they share none.

    Both parts are in one world frame and agree in orientation; only the scale of ``after`` about the
    pivot is unknown. A plane of each part (RANSAC, inlier band 1% of the part's median distance from the
    pivot) is the same plane when their normals, turned to face the pivot, agree within ``max_angle_deg``;
    the factor is then the ratio of the pivot's distances to them. Planes of either part facing each
    other across the pivot (floor and ceiling) are told apart by that orientation; parallel planes on
    one side (a table top above the floor) are not, so the factors of all matched pairs must agree within
    10%, else None.
    """
    pivot = np.asarray(pivot, np.float64)
    found = []
    for part in (before, after):
        part = np.asarray(part, np.float64).reshape(-1, 3)
        if len(part) < min_inliers:
            return None
        spread = float(np.median(np.linalg.norm(part - pivot, axis=1)))
        planes = dominant_planes(part, 0.01 * spread, max(min_inliers, int(min_fraction * len(part))), max_planes=4)
        facing = []
        for p in planes:
            s = float(p.signed_distance(pivot))
            if abs(s) < 0.05 * spread:
                continue  # the pivot lies on it: no lever for the scale
            facing.append((p.normal * np.sign(s), abs(s)))
        found.append(facing)
    cos_max = np.cos(np.radians(max_angle_deg))
    factors = [d0 / d1 for n0, d0 in found[0] for n1, d1 in found[1] if n0 @ n1 > cos_max]
    if not factors or max(factors) > 1.1 * min(factors):
        return None
    return float(np.median(factors))
