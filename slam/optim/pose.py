"""Motion-only bundle adjustment: refine one camera pose against fixed 3D points (ORB-SLAM's PoseOptimization)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from slam.optim import _g2o

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoseResult:
    """Result of :func:`optimize_pose`.

    T_cw (4, 4) refined world-to-camera pose; inliers (N,) bool; num_inliers; chi2 (N,) per-observation
    chi2 at the final pose (``inf`` for points at or behind the camera).
    """

    T_cw: np.ndarray
    inliers: np.ndarray
    num_inliers: int
    chi2: np.ndarray


def _check_inputs(T_cw, points_w, uv, inv_sigma2, intrinsics):
    T_cw = np.asarray(T_cw, dtype=np.float64)
    if T_cw.shape != (4, 4) or not np.isfinite(T_cw).all():
        raise ValueError(f"T_cw must be a finite (4, 4) array, got shape {T_cw.shape}")
    points_w = np.ascontiguousarray(points_w, dtype=np.float64).reshape(-1, 3)
    uv = np.ascontiguousarray(uv, dtype=np.float64).reshape(-1, 2)
    n = len(points_w)
    inv_sigma2 = np.broadcast_to(np.asarray(inv_sigma2, dtype=np.float64), (n,)).copy()
    if len(uv) != n:
        raise ValueError(f"points_w has {n} rows but uv has {len(uv)}")
    if len(intrinsics) != 4:
        raise ValueError(f"intrinsics must be (fx, fy, cx, cy), got {intrinsics!r}")
    return T_cw, points_w, uv, inv_sigma2, tuple(float(x) for x in intrinsics)


def optimize_pose(
    T_cw: np.ndarray,
    points_w: np.ndarray,
    uv: np.ndarray,
    inv_sigma2: np.ndarray,
    intrinsics: tuple[float, float, float, float],
    rounds: int = 4,
    iterations: int = 10,
    chi2_threshold: float = 5.991,
    robust: bool = True,
    min_inliers: int = 3,
) -> PoseResult:
    """Refine ``T_cw`` by minimising reprojection error of fixed points, rejecting outliers round by round.

    T_cw (4, 4) initial world-to-camera pose; points_w (N, 3) world points; uv (N, 2) their undistorted
    pixel observations in the ideal pinhole camera ``intrinsics = (fx, fy, cx, cy)``; inv_sigma2 (N,)
    (or a scalar) = ``1 / scale_factor**(2 * octave)``, the weight of each observation.

    Each of ``rounds`` rounds runs ``iterations`` Levenberg-Marquardt iterations on the current inliers,
    then re-classifies every observation (outlier when chi2 > ``chi2_threshold`` (5.991: 95 % of chi2
    with 2 DoF) or depth <= 0); outliers are left out of the next round but can come back. With
    ``robust`` a Huber kernel (delta ``sqrt(chi2_threshold)``) is used in all rounds but the last.
    When a robust round leaves the inlier set as the round before did, the remaining robust rounds are
    skipped and the final round runs at once.
    Rounds stop early when fewer than ``min_inliers`` observations are left; the pose is then kept.
    Points at or behind the camera at the start are outliers from the first round on.
    """
    T_cw, points_w, uv, inv_sigma2, K = _check_inputs(T_cw, points_w, uv, inv_sigma2, intrinsics)
    n = len(points_w)
    if n == 0:
        return PoseResult(T_cw.copy(), np.zeros(0, bool), 0, np.zeros(0))
    t0 = time.perf_counter()
    g = _g2o.g2o()
    fx, fy, cx, cy = K
    finite = np.isfinite(points_w).all(axis=1) & np.isfinite(uv).all(axis=1) & np.isfinite(inv_sigma2)
    safe_pts = np.where(finite[:, None], points_w, 0.0)

    opt = _g2o.make_optimizer("pose")
    # one vertex and at most a few thousand edges: adding them directly is fast and keeps the edge order
    builder = _g2o.GraphBuilder(opt, deterministic=True)
    vertex = g.VertexSE3Expmap()
    vertex.set_id(_g2o.keyframe_vertex_id(0))
    vertex.set_estimate(_g2o.se3quat(T_cw))
    builder.add_vertex(vertex)

    kernel = _g2o.make_huber(chi2_threshold) if robust else None
    info = _g2o.information_matrices(inv_sigma2)
    unit_weight = (inv_sigma2 == 1.0).tolist()  # a new edge's information is already the identity
    edges = []
    EdgeCls = g.EdgeSE3ProjectXYZOnlyPose
    for i in range(n):
        e = EdgeCls()
        e.set_vertex(0, vertex)
        e.set_measurement(uv[i])
        if not unit_weight[i]:
            e.set_information(info[i])
        e.fx = fx
        e.fy = fy
        e.cx = cx
        e.cy = cy
        e.Xw = safe_pts[i]
        if kernel is not None:
            e.set_robust_kernel(kernel)
        builder.add_edge(e)
        edges.append(e)
    builder.finish()
    t_build = time.perf_counter() - t0

    T = T_cw.copy()
    chi2, z = _g2o.reprojection_chi2(T[:3, :3], T[:3, 3], safe_pts, uv, inv_sigma2, K)
    # Start with every usable observation in; points behind the camera would poison the first round.
    active = finite & (z > _g2o.MIN_DEPTH)
    level = np.zeros(n, dtype=bool)  # True = edge at level 1 (left out)
    _set_levels(edges, level, ~active)
    level = ~active

    r = 0
    while r < rounds:
        if int(active.sum()) < min_inliers:
            log.debug("optimize_pose: %d active observations < %d, stopping", active.sum(), min_inliers)
            break
        last = r == rounds - 1
        if kernel is not None and last:
            kernel.set_delta(_g2o.QUADRATIC_DELTA)
        opt.initialize_optimization(0)
        opt.optimize(int(iterations))
        T_new = _g2o.se3quat_matrix(vertex.estimate())
        if not np.isfinite(T_new).all():  # numerical breakdown: keep the last good pose
            log.warning("optimize_pose: g2o returned a non-finite pose; keeping the previous one")
            break
        T = T_new
        chi2, z = _g2o.reprojection_chi2(T[:3, :3], T[:3, 3], safe_pts, uv, inv_sigma2, K)
        new_active = finite & (chi2 <= chi2_threshold) & (z > _g2o.MIN_DEPTH)
        stable = r > 0 and bool((new_active == active).all())
        _set_levels(edges, level, ~new_active)
        level = ~new_active
        active = new_active
        # Same inlier set as the round before: more robust rounds change nothing, go to the final one.
        r = rounds - 1 if (stable and not last) else r + 1

    chi2 = np.where(finite, chi2, np.inf)
    inliers = finite & (chi2 <= chi2_threshold)
    log.debug(
        "optimize_pose: %d obs, %d inliers, build %.2f ms, total %.2f ms",
        n, int(inliers.sum()), 1e3 * t_build, 1e3 * (time.perf_counter() - t0),
    )
    return PoseResult(T, inliers, int(inliers.sum()), chi2)


def _set_levels(edges: list, old_out: np.ndarray, new_out: np.ndarray) -> None:
    """Put edges whose outlier status changed on level 1 (out) or level 0 (in)."""
    for i in np.flatnonzero(old_out != new_out):
        edges[i].set_level(1 if new_out[i] else 0)
