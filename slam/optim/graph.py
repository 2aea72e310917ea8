"""Pose-graph optimisation over Sim3 (ORB-SLAM's essential-graph optimisation after a loop closure)."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np

from slam.optim import _g2o

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoseGraphResult:
    """Result of :func:`optimize_pose_graph`.

    S_cw (K, 4, 4) optimised world-to-camera similarities ``[[s R, t], [0, 1]]``; T_cw (K, 4, 4) the
    rigid poses they stand for, ``[[R, t / s], [0, 1]]`` (ORB-SLAM's conversion); scale (K,) the ``s``.
    A point ``X_w`` whose reference keyframe ``k`` had pose ``T_cw_old[k]`` before the optimisation is
    corrected as ``X_w_new = inv(S_cw[k]) @ T_cw_old[k] @ X_w`` (homogeneous). initial_chi2 / final_chi2:
    sum of the edges' chi2 before and after; iterations: Levenberg-Marquardt iterations run.
    """

    S_cw: np.ndarray
    T_cw: np.ndarray
    scale: np.ndarray
    initial_chi2: float
    final_chi2: float
    iterations: int


def optimize_pose_graph(
    T_cw: np.ndarray,
    edges: np.ndarray,
    T_ji: np.ndarray,
    fixed: np.ndarray,
    weights: np.ndarray | None = None,
    iterations: int = 20,
    fix_scale: bool = False,
    abort: threading.Event | None = None,
) -> PoseGraphResult:
    """Optimise keyframe poses so that they agree with relative measurements, over Sim3.

    T_cw (K, 4, 4) initial world-to-camera poses (rigid, or similarities ``[[s R, t], [0, 1]]``, e.g. the
    Sim3-corrected poses around a loop); edges (E, 2) int pairs ``(i, j)``; T_ji (E, 4, 4) measured
    transform from camera ``i`` to camera ``j``, i.e. what ``T_cw[j] @ inv(T_cw[i])`` should equal (a
    similarity for a loop edge with scale correction); fixed (K,) bool poses held constant (ORB-SLAM
    fixes the loop keyframe); weights (E,) scale the identity information of each edge (default 1).
    With ``fix_scale`` (stereo / RGB-D) all edges must be rigid, and the result is rigid up to round-off.
    """
    T_cw = np.array(T_cw, dtype=np.float64).reshape(-1, 4, 4)
    k = len(T_cw)
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    T_ji = np.array(T_ji, dtype=np.float64).reshape(-1, 4, 4)
    fixed = np.broadcast_to(np.asarray(fixed, dtype=bool), (k,)).copy()
    n_e = len(edges)
    if len(T_ji) != n_e:
        raise ValueError(f"edges has {n_e} rows but T_ji has {len(T_ji)}")
    if n_e and (edges.min() < 0 or edges.max() >= k):
        raise ValueError(f"edges index outside T_cw (K={k})")
    if n_e and (edges[:, 0] == edges[:, 1]).any():
        raise ValueError("edges contains a self-loop (i == j)")
    if not (np.isfinite(T_cw).all() and np.isfinite(T_ji).all()):
        raise ValueError("T_cw and T_ji must be finite")
    weights = np.ones(n_e) if weights is None else np.broadcast_to(np.asarray(weights, float), (n_e,)).copy()

    t0 = time.perf_counter()
    g = _g2o.g2o()
    S0 = T_cw.copy()
    used = np.zeros(k, dtype=bool)
    used[edges.ravel()] = True
    if n_e == 0 or (fixed | ~used).all():
        return _result(S0, 0.0, 0.0, 0)

    opt = _g2o.make_optimizer("sim3")
    builder = _g2o.GraphBuilder(opt)
    vertices = {}
    for i in np.flatnonzero(used):
        v = g.VertexSim3Expmap()
        v.set_id(_g2o.keyframe_vertex_id(i))
        v.set_estimate(_g2o.sim3(T_cw[i]))
        v.set_fixed(bool(fixed[i]))
        builder.add_vertex(v)
        vertices[int(i)] = v
    if fix_scale:
        # g2opy does not expose VertexSim3Expmap's fix_scale; huge information on the scale part of the
        # error (the 7th component of the Sim3 log) keeps relative scales at their measured values.
        scale_info = 1e8
    es = []
    for (i, j), M, w in zip(edges.tolist(), T_ji, weights):
        e = g.EdgeSim3()
        e.set_vertex(0, vertices[i])
        e.set_vertex(1, vertices[j])
        e.set_measurement(_g2o.sim3(M))
        info = np.eye(7) * float(w)
        if fix_scale:
            info[6, 6] *= scale_info
        e.set_information(info)
        builder.add_edge(e)
        es.append(e)
    builder.finish()

    opt.initialize_optimization(0)
    opt.compute_active_errors()
    chi0 = float(opt.active_chi2())
    with _g2o.stop_on(abort, opt):
        iters = opt.optimize(int(iterations))
    opt.compute_active_errors()
    chi1 = float(opt.active_chi2())

    S = S0.copy()
    for i, v in vertices.items():
        if not fixed[i]:
            S[i] = _g2o.sim3_matrix(v.estimate())
    if not np.isfinite(S).all():
        log.warning("optimize_pose_graph: g2o returned non-finite poses; returning the input")
        S, chi1 = S0, chi0
    log.debug(
        "optimize_pose_graph: %d vertices, %d edges, chi2 %.4g -> %.4g, %d it, %.1f ms",
        len(vertices), n_e, chi0, chi1, iters, 1e3 * (time.perf_counter() - t0),
    )
    return _result(S, chi0, chi1, iters)


def _result(S: np.ndarray, chi0: float, chi1: float, iters: int) -> PoseGraphResult:
    s = np.cbrt(np.linalg.det(S[:, :3, :3]))
    T = S.copy()
    T[:, :3, :3] = S[:, :3, :3] / s[:, None, None]
    T[:, :3, 3] = S[:, :3, 3] / s[:, None]
    return PoseGraphResult(S_cw=S, T_cw=T, scale=s, initial_chi2=chi0, final_chi2=chi1, iterations=int(iters))
