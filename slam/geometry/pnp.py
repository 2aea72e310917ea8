"""Camera pose from 3D-2D correspondences: PnP with RANSAC, then Levenberg-Marquardt refinement.

Conventions: world points ``(N, 3)``; observations are undistorted normalised coordinates ``(N, 2)``
(``K = I``), so OpenCV runs with an identity camera matrix and thresholds are divided by ``focal``
(pixels). The returned pose is world-to-camera ``T_cw (4, 4)``.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

from slam.geometry.se3 import make_T
from slam.geometry.triangulation import depth, reprojection_error_px

log = logging.getLogger(__name__)

_MAX_ITERATIONS = 1000
_CONFIDENCE = 0.999
_MIN_POINTS = 4  # AP3P minimal sample + 1 for disambiguation


def _rt_to_T(rvec: np.ndarray, tvec: np.ndarray) -> np.ndarray:
    R, _ = cv2.Rodrigues(np.asarray(rvec, dtype=np.float64).reshape(3, 1))
    return make_T(R, np.asarray(tvec, dtype=np.float64).reshape(3))


def _inliers(T_cw: np.ndarray, X: np.ndarray, x: np.ndarray, focal: float, threshold_px: float) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return (reprojection_error_px(T_cw, X, x, focal) < threshold_px) & (depth(T_cw, X) > 0)


def _refine(T_cw: np.ndarray, X: np.ndarray, x: np.ndarray, focal: float, threshold_px: float,
            rounds: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Alternate LM refinement on the inliers and re-selection of the inliers (``rounds`` times)."""
    inl = _inliers(T_cw, X, x, focal, threshold_px)
    for _ in range(rounds):
        if np.count_nonzero(inl) < _MIN_POINTS:
            break
        rvec, _ = cv2.Rodrigues(T_cw[:3, :3])
        tvec = T_cw[:3, 3].reshape(3, 1).copy()
        rvec, tvec = cv2.solvePnPRefineLM(X[inl], x[inl], np.eye(3), None, rvec, tvec)
        T_new = _rt_to_T(rvec, tvec)
        inl_new = _inliers(T_new, X, x, focal, threshold_px)
        if np.count_nonzero(inl_new) < np.count_nonzero(inl):
            break
        T_cw, inl = T_new, inl_new
    return T_cw, inl


def solve_pnp(
    points_w: np.ndarray,
    x: np.ndarray,
    focal: float,
    threshold_px: float = 3.0,
    T_cw_guess: np.ndarray | None = None,
    min_inliers: int = 10,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Robust camera pose from world points ``points_w (N, 3)`` seen at normalised ``x (N, 2)``.

    RANSAC with the AP3P minimal solver (``cv2.solvePnPRansac``, EPnP on the inliers), then
    ``cv2.solvePnPRefineLM`` on the inliers, re-selecting inliers (reprojection error below
    ``threshold_px`` pixels and positive depth) after each refinement. With ``T_cw_guess (4, 4)`` the guess
    is refined first and kept without RANSAC when at least half of the points (and ``min_inliers``) are
    its inliers. OpenCV's RNG is seeded with ``seed`` (deterministic).

    Returns:
        ``(T_cw (4, 4), inliers (N,) bool)``, or None when fewer than ``min_inliers`` inliers are found.
    """
    X = np.asarray(points_w, dtype=np.float64).reshape(-1, 3)
    x = np.asarray(x, dtype=np.float64).reshape(-1, 2)
    if len(X) != len(x):
        raise ValueError(f"points_w and x must have the same number of rows, got {len(X)} and {len(x)}")
    n = len(X)
    finite = np.isfinite(X).all(axis=1) & np.isfinite(x).all(axis=1)
    need = max(int(min_inliers), _MIN_POINTS)
    if np.count_nonzero(finite) < need:
        log.debug("PnP: %d finite correspondences < %d", int(finite.sum()), need)
        return None
    idx = np.flatnonzero(finite)
    Xf, xf = X[idx], x[idx]

    def full(mask: np.ndarray) -> np.ndarray:
        out = np.zeros(n, dtype=bool)
        out[idx[mask]] = True
        return out

    if T_cw_guess is not None:
        T_g, inl_g = _refine(np.asarray(T_cw_guess, dtype=np.float64), Xf, xf, focal, threshold_px)
        k = int(np.count_nonzero(inl_g))
        if k >= need and k >= 0.5 * len(idx):
            return T_g, full(inl_g)

    cv2.setRNGSeed(int(seed))
    ok, rvec, tvec, inl = cv2.solvePnPRansac(
        Xf, xf, np.eye(3), None,
        iterationsCount=_MAX_ITERATIONS, reprojectionError=float(threshold_px) / float(focal),
        confidence=_CONFIDENCE, flags=cv2.SOLVEPNP_AP3P,
    )
    if not ok or inl is None or len(inl) < _MIN_POINTS:
        log.debug("PnP RANSAC found no pose (%d points)", len(idx))
        return None
    T_cw, inl_mask = _refine(_rt_to_T(rvec, tvec), Xf, xf, focal, threshold_px)
    k = int(np.count_nonzero(inl_mask))
    if k < need:
        log.debug("PnP: %d inliers < %d", k, need)
        return None
    return T_cw, full(inl_mask)
