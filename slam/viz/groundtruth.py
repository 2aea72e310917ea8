"""Ground truth for display: associate by timestamp and Sim3-align it to the estimated trajectory."""

from __future__ import annotations

import logging

import numpy as np

from slam.evaluation.trajectory import Trajectory

log = logging.getLogger(__name__)


def associate(est_t: np.ndarray, gt_t: np.ndarray, max_dt: float) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs ``(i_est, i_gt)`` of nearest timestamps within ``max_dt`` seconds (``gt_t`` sorted)."""
    est_t = np.asarray(est_t, np.float64).reshape(-1)
    gt_t = np.asarray(gt_t, np.float64).reshape(-1)
    if len(est_t) == 0 or len(gt_t) == 0:
        return np.zeros(0, int), np.zeros(0, int)
    j = np.clip(np.searchsorted(gt_t, est_t), 1, len(gt_t) - 1) if len(gt_t) > 1 else np.zeros(len(est_t), int)
    if len(gt_t) > 1:
        j = np.where(np.abs(gt_t[j - 1] - est_t) <= np.abs(gt_t[j] - est_t), j - 1, j)
    ok = np.abs(gt_t[j] - est_t) <= max_dt
    return np.flatnonzero(ok), j[ok]


def align_groundtruth(est_t: np.ndarray, est_xyz: np.ndarray, groundtruth: Trajectory,
                      max_dt: float = 0.02) -> np.ndarray | None:
    """All ground-truth camera centres ``(G, 3)`` mapped by the Sim3 that best fits them onto the estimate.

    Args:
        est_t: ``(M,)`` estimate timestamps (seconds).
        est_xyz: ``(M, 3)`` estimated camera centres.
        groundtruth: the ground-truth trajectory (camera-to-world).
        max_dt: largest timestamp difference of an associated pair.

    Returns None when fewer than 3 pairs associate or they are degenerate (a monocular run that has not
    moved yet). The fit is Umeyama's least-squares similarity (OpenCV ``estimateAffine3D`` with
    ``force_rotation``).
    """
    import cv2

    est_xyz = np.asarray(est_xyz, np.float64).reshape(-1, 3)
    order = np.argsort(groundtruth.timestamps, kind="stable")
    gt_t = groundtruth.timestamps[order]
    gt_xyz = groundtruth.positions[order]
    i_est, i_gt = associate(est_t, gt_t, max_dt)
    if len(i_est) < 3:
        return None
    src, dst = gt_xyz[i_gt], est_xyz[i_est]
    if np.linalg.norm(src - src.mean(0), axis=1).max() < 1e-9 or np.linalg.norm(dst - dst.mean(0), axis=1).max() < 1e-9:
        return None
    try:
        Rt, scale = cv2.estimateAffine3D(src, dst, force_rotation=True)
    except cv2.error as exc:
        log.debug("ground-truth alignment failed: %s", exc)
        return None
    Rt = np.asarray(Rt, np.float64)
    if Rt.shape != (3, 4) or not np.isfinite(Rt).all() or not np.isfinite(scale) or scale <= 0:
        return None
    return scale * gt_xyz @ Rt[:, :3].T + Rt[:, 3]
