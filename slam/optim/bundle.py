"""Bundle adjustment of keyframe poses and map points (ORB-SLAM's local and global BA) on arrays."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np

from slam.optim import _g2o

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BAResult:
    """Result of :func:`bundle_adjust`.

    T_cw (K, 4, 4) world-to-camera poses (fixed ones and those without observations unchanged);
    points_w (P, 3) (points without usable observations, or fixed, unchanged); outliers (M,) bool:
    chi2 > threshold or depth <= 0 at the returned estimate; chi2 (M,) per-observation chi2 there
    (``inf`` at or behind the camera); initial_chi2 / final_chi2: sum of chi2 over the observations
    in front of the camera at the start / over the returned inliers; aborted: the abort event stopped
    the optimisation (the returned estimate is the state reached, as ORB-SLAM uses it); iterations:
    Levenberg-Marquardt iterations run in all stages.
    """

    T_cw: np.ndarray
    points_w: np.ndarray
    outliers: np.ndarray
    initial_chi2: float
    final_chi2: float
    chi2: np.ndarray
    aborted: bool
    iterations: int


def _check(T_cw, fixed, points_w, obs_kf, obs_pt, obs_uv, obs_inv_sigma2, intrinsics, fix_points):
    T_cw = np.array(T_cw, dtype=np.float64).reshape(-1, 4, 4)
    k = len(T_cw)
    fixed = np.broadcast_to(np.asarray(fixed, dtype=bool), (k,)).copy()
    points_w = np.array(points_w, dtype=np.float64).reshape(-1, 3)
    p = len(points_w)
    obs_kf = np.asarray(obs_kf, dtype=np.int64).reshape(-1)
    obs_pt = np.asarray(obs_pt, dtype=np.int64).reshape(-1)
    m = len(obs_kf)
    obs_uv = np.ascontiguousarray(obs_uv, dtype=np.float64).reshape(-1, 2)
    obs_inv_sigma2 = np.broadcast_to(np.asarray(obs_inv_sigma2, dtype=np.float64), (m,)).copy()
    if len(obs_pt) != m or len(obs_uv) != m:
        raise ValueError(f"obs_kf, obs_pt, obs_uv must have the same length, got {m}, {len(obs_pt)}, {len(obs_uv)}")
    if m and (obs_kf.min() < 0 or obs_kf.max() >= k):
        raise ValueError(f"obs_kf indexes outside T_cw (K={k})")
    if m and (obs_pt.min() < 0 or obs_pt.max() >= p):
        raise ValueError(f"obs_pt indexes outside points_w (P={p})")
    if len(intrinsics) != 4:
        raise ValueError(f"intrinsics must be (fx, fy, cx, cy), got {intrinsics!r}")
    fix_points = (
        np.zeros(p, dtype=bool) if fix_points is None
        else np.broadcast_to(np.asarray(fix_points, dtype=bool), (p,)).copy()
    )
    K = tuple(float(x) for x in intrinsics)
    return T_cw, fixed, points_w, obs_kf, obs_pt, obs_uv, obs_inv_sigma2, K, fix_points


def bundle_adjust(
    T_cw: np.ndarray,
    fixed: np.ndarray,
    points_w: np.ndarray,
    obs_kf: np.ndarray,
    obs_pt: np.ndarray,
    obs_uv: np.ndarray,
    obs_inv_sigma2: np.ndarray,
    intrinsics: tuple[float, float, float, float],
    iterations: int = 10,
    robust: bool = True,
    chi2_threshold: float = 5.991,
    refine_without_outliers: bool = True,
    fix_points: np.ndarray | None = None,
    abort: threading.Event | None = None,
    deterministic: bool = False,
    first_iterations: int = 5,
) -> BAResult:
    """Jointly refine keyframe poses and points by minimising reprojection error.

    T_cw (K, 4, 4) world-to-camera poses; fixed (K,) bool: poses held constant (local BA: the outer
    keyframes that see local points; full BA: the first keyframe); points_w (P, 3); observation ``i``
    says keyframe ``obs_kf[i]`` saw point ``obs_pt[i]`` at undistorted pixel ``obs_uv[i]`` of the ideal
    pinhole camera ``intrinsics = (fx, fy, cx, cy)`` with weight ``obs_inv_sigma2[i]``
    (``1 / scale_factor**(2 * octave)``); fix_points (P,) bool: points held constant.

    As ORB-SLAM: ``first_iterations`` Levenberg-Marquardt iterations with a Huber kernel (delta
    ``sqrt(chi2_threshold)``; without ``robust`` no kernel), then, with ``refine_without_outliers``,
    observations with chi2 > ``chi2_threshold`` or depth <= 0 are dropped and ``iterations`` more run
    without the kernel. Without ``refine_without_outliers`` one stage of ``iterations`` runs.
    Each stage stops early once an iteration gains less than ``_g2o.CONVERGED_GAIN`` (relative chi2).
    Observations at or behind the camera (or non-finite) at the start take no part. ``abort`` (set by
    another thread) stops the running stage after its current iteration and skips the next stage.
    """
    T_cw, fixed, points_w, obs_kf, obs_pt, obs_uv, inv_s2, K, fix_points = _check(
        T_cw, fixed, points_w, obs_kf, obs_pt, obs_uv, obs_inv_sigma2, intrinsics, fix_points
    )
    m = len(obs_kf)
    n_kf = len(T_cw)
    t0 = time.perf_counter()

    finite = (
        np.isfinite(obs_uv).all(1) & np.isfinite(inv_s2)
        & np.isfinite(points_w).all(1)[obs_pt] & np.isfinite(T_cw).all((1, 2))[obs_kf]
    )
    safe_pts = np.where(np.isfinite(points_w).all(1)[:, None], points_w, 0.0)
    safe_T = np.where(np.isfinite(T_cw).all((1, 2))[:, None, None], T_cw, np.eye(4))

    def residuals(T: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        chi2, z = _g2o.reprojection_chi2(T[obs_kf, :3, :3], T[obs_kf, :3, 3], X[obs_pt], obs_uv, inv_s2, K)
        return np.where(finite, chi2, np.inf), z

    chi2, z = residuals(safe_T, safe_pts)
    usable = finite & (z > _g2o.MIN_DEPTH)
    initial_chi2 = float(chi2[usable].sum())
    if abort is not None and abort.is_set():
        return _result(T_cw, points_w, chi2, chi2_threshold, initial_chi2, True, 0)

    kf_used = np.zeros(n_kf, dtype=bool)
    kf_used[obs_kf[usable]] = True
    pt_used = np.zeros(len(points_w), dtype=bool)
    pt_used[obs_pt[usable]] = True
    free = (kf_used & ~fixed).any() or (pt_used & ~fix_points).any()
    if not usable.any() or not free:
        log.debug("bundle_adjust: nothing to optimise (%d usable observations)", int(usable.sum()))
        return _result(T_cw, points_w, chi2, chi2_threshold, initial_chi2, False, 0)
    if not (fixed & kf_used).any() and not (fix_points & pt_used).any():
        log.debug("bundle_adjust: no fixed vertex; the gauge is held only by damping")

    g = _g2o.g2o()
    opt = _g2o.make_optimizer("ba")
    converged = _g2o.stop_when_converged(opt)  # noqa: F841 - must outlive the optimisation
    builder = _g2o.GraphBuilder(opt, deterministic=deterministic)
    kf_idx = np.flatnonzero(kf_used)
    kf_vertices = {}
    for k in kf_idx:
        v = g.VertexSE3Expmap()
        v.set_id(_g2o.keyframe_vertex_id(k))
        v.set_estimate(_g2o.se3quat(T_cw[k]))
        v.set_fixed(bool(fixed[k]))
        builder.add_vertex(v)
        kf_vertices[int(k)] = v
    pt_idx = np.flatnonzero(pt_used)
    pt_vertices = {}
    for p in pt_idx:
        v = g.VertexPointXYZ()
        v.set_id(_g2o.point_vertex_id(p, n_kf))
        v.set_estimate(points_w[p])
        if fix_points[p]:
            v.set_fixed(True)
        else:
            v.set_marginalized(True)
        builder.add_vertex(v)
        pt_vertices[int(p)] = v

    kernel = _g2o.make_huber(chi2_threshold) if robust else None
    info = _g2o.information_matrices(inv_s2)
    unit_weight = (inv_s2 == 1.0).tolist()  # a new edge's information is already the identity
    fx, fy, cx, cy = K
    obs_idx = np.flatnonzero(usable)
    edges = []
    EdgeCls = g.EdgeSE3ProjectXYZ
    for i, k, p in zip(obs_idx.tolist(), obs_kf[obs_idx].tolist(), obs_pt[obs_idx].tolist()):
        e = EdgeCls()
        e.set_vertex(0, pt_vertices[p])
        e.set_vertex(1, kf_vertices[k])
        e.set_measurement(obs_uv[i])
        if not unit_weight[i]:
            e.set_information(info[i])
        e.fx = fx
        e.fy = fy
        e.cx = cx
        e.cy = cy
        if kernel is not None:
            e.set_robust_kernel(kernel)
        builder.add_edge(e)
        edges.append(e)
    builder.finish()
    t_build = time.perf_counter() - t0

    free_pt_idx = np.array([p for p in pt_vertices if not fix_points[p]], dtype=np.int64)
    free_pt_vertices = [pt_vertices[p] for p in free_pt_idx.tolist()]

    def state() -> tuple[np.ndarray, np.ndarray]:
        T = T_cw.copy()
        for k, v in kf_vertices.items():
            if not fixed[k]:
                T[k] = _g2o.se3quat_matrix(v.estimate())
        X = points_w.copy()
        if len(free_pt_idx):
            X[free_pt_idx] = np.array([v.estimate() for v in free_pt_vertices], dtype=np.float64).reshape(-1, 3)
        return T, X

    def ok(T: np.ndarray, X: np.ndarray) -> bool:
        return bool(np.isfinite(T[kf_idx]).all() and np.isfinite(X[pt_idx]).all())

    aborted = False
    iters = 0
    stage1 = first_iterations if refine_without_outliers else iterations
    t1 = time.perf_counter()
    opt.initialize_optimization(0)
    with _g2o.stop_on(abort, opt):
        iters += opt.optimize(int(stage1))
    T, X = state()
    aborted = abort is not None and abort.is_set()
    t_stage1 = time.perf_counter() - t1
    t_stage2 = 0.0

    if refine_without_outliers and not aborted and iterations > 0 and ok(T, X):
        chi2_e, _ = residuals(T, X)
        out = chi2_e[obs_idx] > chi2_threshold  # inf (behind the camera) included
        for j in np.flatnonzero(out):
            edges[j].set_level(1)
        if kernel is not None:
            kernel.set_delta(_g2o.QUADRATIC_DELTA)
        t2 = time.perf_counter()
        if (~out).any():
            opt.initialize_optimization(0)
            with _g2o.stop_on(abort, opt):
                iters += opt.optimize(int(iterations))
            T2, X2 = state()
            if ok(T2, X2):
                T, X = T2, X2
            else:
                log.warning("bundle_adjust: refinement diverged to non-finite values; keeping stage 1")
        aborted = abort is not None and abort.is_set()
        t_stage2 = time.perf_counter() - t2

    if not ok(T, X):
        log.warning("bundle_adjust: g2o returned non-finite values; returning the input unchanged")
        T, X = T_cw.copy(), points_w.copy()
    chi2, _ = residuals(np.where(np.isfinite(T).all((1, 2))[:, None, None], T, np.eye(4)),
                        np.where(np.isfinite(X).all(1)[:, None], X, 0.0))
    res = _result(T, X, chi2, chi2_threshold, initial_chi2, aborted, iters)
    log.debug(
        "bundle_adjust: %d kf (%d fixed), %d pts, %d obs -> %d outliers, chi2 %.4g -> %.4g, "
        "build %.1f ms, stage1 %.1f ms, stage2 %.1f ms, %d it%s",
        len(kf_idx), int(fixed[kf_idx].sum()), len(pt_idx), len(obs_idx), int(res.outliers.sum()),
        initial_chi2, res.final_chi2, 1e3 * t_build, 1e3 * t_stage1, 1e3 * t_stage2, iters,
        " (aborted)" if aborted else "",
    )
    return res


def _result(T, X, chi2, threshold, initial_chi2, aborted, iters) -> BAResult:
    outliers = ~(chi2 <= threshold)
    return BAResult(
        T_cw=T, points_w=X, outliers=outliers, initial_chi2=initial_chi2,
        final_chi2=float(chi2[~outliers].sum()), chi2=chi2, aborted=bool(aborted), iterations=int(iters),
    )
