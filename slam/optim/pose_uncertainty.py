"""How well a motion-only BA pose is known: the information of its reprojection residuals.

Motion-only BA over a few map points, or over points that all lie near one viewing direction, leaves a
combination of rotation and translation nearly unobserved: a small rotation and a translation across the
view move those points alike (a camera turning in place with its last map points at the edge of the
view). The centre's standard deviation along that direction says how far the pose may be off; a baseline
shorter than that is not one to triangulate from.

Pose parameters ``x = (theta, C)``: a rotation increment in the camera frame, ``R' = exp([theta]x) R``, and
the camera centre in the world frame. Pixel noise of one unit per ``inv_sigma2`` weight.
"""

from __future__ import annotations

import numpy as np

from slam.geometry.se3 import transform_points


def pose_information(T_cw: np.ndarray, points_w: np.ndarray, inv_sigma2: np.ndarray | float,
                     intrinsics: tuple[float, float, float, float]) -> np.ndarray:
    """Information matrix ``(6, 6)`` (``J^T W J``) of the pixel reprojection residuals of ``points_w (N, 3)``
    (weights ``inv_sigma2 (N,)`` or a scalar) in ``(theta, C)`` at the pose ``T_cw (4, 4)``; points at or
    behind the camera are left out."""
    fx, fy = float(intrinsics[0]), float(intrinsics[1])
    R = T_cw[:3, :3]
    Xc = transform_points(T_cw, points_w)
    w = np.broadcast_to(np.asarray(inv_sigma2, np.float64), (len(Xc),))
    front = Xc[:, 2] > 1e-9
    Xc, w = Xc[front], w[front]
    if len(Xc) == 0:
        return np.zeros((6, 6))
    x, y, z = Xc[:, 0], Xc[:, 1], Xc[:, 2]
    zero = np.zeros_like(z)
    # d(pixel)/d(Xc): (N, 2, 3)
    d_uv = np.stack([np.stack([fx / z, zero, -fx * x / z**2], 1), np.stack([zero, fy / z, -fy * y / z**2], 1)], 1)
    # d(Xc)/d(theta) = -[Xc]x, d(Xc)/d(C) = -R: (N, 3, 6)
    skew = np.zeros((len(Xc), 3, 3))
    skew[:, 0, 1], skew[:, 0, 2], skew[:, 1, 2] = -z, y, -x
    skew[:, 1, 0], skew[:, 2, 0], skew[:, 2, 1] = z, -y, x
    d_x = np.concatenate([-skew, np.broadcast_to(-R, (len(Xc), 3, 3))], axis=2)
    J = (d_uv @ d_x).reshape(-1, 6)  # (2N, 6): rows u, v of each point
    return J.T @ (J * np.repeat(w, 2)[:, None])


def centre_sigma(information: np.ndarray) -> float:
    """The largest standard deviation of the camera centre (map units) given a pose's ``information (6, 6)``
    from :func:`pose_information`, rotation free; ``inf`` where the centre is not observed."""
    try:
        cov = np.linalg.inv(information)[3:, 3:]
    except np.linalg.LinAlgError:
        return float("inf")
    top = float(np.linalg.eigvalsh(0.5 * (cov + cov.T)).max())
    return float(np.sqrt(top)) if np.isfinite(top) and top >= 0 else float("inf")
