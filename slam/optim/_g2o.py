"""The one place that talks to g2opy: vertex-id scheme, robust kernels, information matrices, graph building.

Conventions shared by :mod:`slam.optim.pose`, :mod:`slam.optim.bundle` and :mod:`slam.optim.graph`:

- Vertex ids: keyframe (or frame) ``k`` has id ``k``; map point ``p`` has id ``num_keyframes + p``
  (:func:`point_vertex_id`). Nothing outside this package sees a g2o id.
- Observations are undistorted pixel coordinates of the ideal pinhole camera ``(fx, fy, cx, cy)``; the
  residual is ``uv - project(T_cw @ X_w)`` (g2o's ``EdgeSE3ProjectXYZ`` convention) and the information
  matrix is ``inv_sigma2 * I2``, so an edge's chi2 is ``inv_sigma2 * |uv - project|^2`` in pixels^2.
- Robust kernel: one Huber kernel object shared by all edges of a problem. Switching it off for a
  refinement stage sets its delta to :data:`QUADRATIC_DELTA` (Huber with a huge delta is the plain
  quadratic cost), which is O(1) instead of a Python loop over every edge.

Why graphs are built in chunks (:class:`GraphBuilder`): g2opy's ``add_vertex``/``add_edge`` keep the
added Python object alive with nanobind's ``keep_alive``, whose bookkeeping walks a list of everything
the graph already holds, so adding n elements one by one costs O(n^2) (measured: 30,000 edges took
3.7 s). Adding them to small :class:`g2opy.OptimizableGraph` chunks and moving each chunk into the
optimizer with ``add_graph`` (which moves, not copies, in g2opy 2.x) keeps it linear (0.2 s for the
same graph). :meth:`GraphBuilder.finish` checks the move semantics and rebuilds directly otherwise.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from slam.errors import DependencyError

log = logging.getLogger(__name__)

#: Huber delta that makes the kernel equivalent to no kernel (chi2 never exceeds delta^2 in practice).
QUADRATIC_DELTA = 1e12
#: Points closer than this to the camera plane (camera-frame z) count as "behind the camera".
MIN_DEPTH = 1e-6
#: Elements per chunk graph in :class:`GraphBuilder` (bounds the keep_alive list walked per add; 128
#: measured ~20% faster per edge than 1024, smaller gains nothing).
CHUNK = 128
#: Relative chi2 gain per iteration below which an optimisation counts as converged and stops.
CONVERGED_GAIN = 1e-3


def g2o() -> Any:
    """The ``g2opy`` module, imported on first use; raises DependencyError with the fix when missing."""
    try:
        import g2opy
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise DependencyError(
            "slam.optim needs the 'g2opy' package (g2o Python bindings); install it with "
            "`pip install g2opy`"
        ) from exc
    return g2opy


# ----------------------------------------------------------------------------------------------- ids
def keyframe_vertex_id(k: int) -> int:
    """g2o vertex id of keyframe index ``k``."""
    return int(k)


def point_vertex_id(p: int, num_keyframes: int) -> int:
    """g2o vertex id of point index ``p`` in a problem with ``num_keyframes`` keyframe vertices."""
    return int(num_keyframes) + int(p)


# ------------------------------------------------------------------------------------ solvers/kernels
def make_optimizer(kind: str) -> Any:
    """A Levenberg-Marquardt ``SparseOptimizer``.

    kind: ``"pose"`` (one SE3 vertex: dense linear solver), ``"ba"`` (SE3 + points with Schur
    complement: sparse Eigen solver) or ``"sim3"`` (Sim3 pose graph: sparse Eigen solver).
    """
    g = g2o()
    if kind == "pose":
        block = g.BlockSolverSE3(g.LinearSolverDenseSE3())
    elif kind == "ba":
        block = g.BlockSolverSE3(g.LinearSolverEigenSE3())
    elif kind == "sim3":
        block = g.BlockSolverSim3(g.LinearSolverEigenSim3())
    else:  # pragma: no cover - internal misuse
        raise ValueError(f"unknown optimizer kind {kind!r}")
    opt = g.SparseOptimizer()
    opt.set_algorithm(g.OptimizationAlgorithmLevenberg(block))
    opt.set_verbose(False)
    return opt


def stop_when_converged(optimizer: Any, gain: float = CONVERGED_GAIN) -> Any:
    """End each ``optimize`` call of ``optimizer`` early once an iteration improves chi2 by less than ``gain``.

    Returns g2o's terminate action; keep it alive as long as the optimizer.
    """
    action = g2o().SparseOptimizerTerminateAction()
    action.set_gain_threshold(float(gain))
    optimizer.add_post_iteration_action(action)
    return action


def make_huber(chi2_threshold: float) -> Any:
    """One Huber kernel with delta ``sqrt(chi2_threshold)``, to be shared by all edges of a problem."""
    return g2o().RobustKernelHuber(float(np.sqrt(chi2_threshold)))


def information_matrices(inv_sigma2: np.ndarray) -> np.ndarray:
    """Information matrices ``(M, 2, 2)`` = ``inv_sigma2[i] * I2``."""
    info = np.zeros((len(inv_sigma2), 2, 2))
    info[:, 0, 0] = inv_sigma2
    info[:, 1, 1] = inv_sigma2
    return info


# ------------------------------------------------------------------------------------- conversions
def se3quat(T_cw: np.ndarray) -> Any:
    """``g2opy.SE3Quat`` of a rigid 4x4 transform."""
    T = np.asarray(T_cw, dtype=np.float64)
    return g2o().SE3Quat(np.ascontiguousarray(T[:3, :3]), np.ascontiguousarray(T[:3, 3]))


def se3quat_matrix(q: Any) -> np.ndarray:
    """4x4 float64 matrix of a ``g2opy.SE3Quat``."""
    return np.array(q.matrix(), dtype=np.float64)


def sim3(S: np.ndarray) -> Any:
    """``g2opy.Sim3`` of a 4x4 similarity ``[[s R, t], [0, 1]]``."""
    S = np.asarray(S, dtype=np.float64)
    A = S[:3, :3]
    s = float(np.cbrt(np.linalg.det(A)))
    R = A / s
    U, _, Vt = np.linalg.svd(R)  # remove round-off so the quaternion is exact
    R = U @ Vt
    return g2o().Sim3(np.asfortranarray(R), np.ascontiguousarray(S[:3, 3]), s)


def sim3_matrix(S: Any) -> np.ndarray:
    """4x4 matrix ``[[s R, t], [0, 1]]`` of a ``g2opy.Sim3``."""
    M = np.eye(4)
    M[:3, :3] = S.scale() * np.asarray(S.rotation().matrix(), dtype=np.float64)
    M[:3, 3] = S.translation()
    return M


# ----------------------------------------------------------------------------------- residuals (numpy)
def reprojection_chi2(
    R_cw: np.ndarray,
    t_cw: np.ndarray,
    points_w: np.ndarray,
    uv: np.ndarray,
    inv_sigma2: np.ndarray,
    intrinsics: tuple[float, float, float, float],
) -> tuple[np.ndarray, np.ndarray]:
    """Per-observation chi2 ``(M,)`` and camera depth ``(M,)``, exactly as g2o's projection edges define them.

    R_cw (M, 3, 3) or (3, 3), t_cw (M, 3) or (3,): world-to-camera rotation/translation per observation;
    points_w (M, 3); uv (M, 2) undistorted pixels; inv_sigma2 (M,). chi2 is ``inf`` where depth <= MIN_DEPTH.
    """
    fx, fy, cx, cy = intrinsics
    if R_cw.ndim == 2:
        Pc = points_w @ R_cw.T + t_cw
    else:
        Pc = np.einsum("mij,mj->mi", R_cw, points_w) + t_cw
    z = Pc[:, 2]
    ok = z > MIN_DEPTH
    zs = np.where(ok, z, 1.0)
    du = uv[:, 0] - (fx * Pc[:, 0] / zs + cx)
    dv = uv[:, 1] - (fy * Pc[:, 1] / zs + cy)
    chi2 = inv_sigma2 * (du * du + dv * dv)
    chi2 = np.where(ok & np.isfinite(chi2), chi2, np.inf)
    return chi2, z


# ----------------------------------------------------------------------------------- graph building
class GraphBuilder:
    """Adds vertices and edges to a SparseOptimizer in linear time (see the module docstring).

    Usage: ``b = GraphBuilder(opt)``; ``b.add_vertex(v)`` / ``b.add_edge(e)`` any number of times;
    ``b.finish()`` once before ``initialize_optimization``. Keep the builder alive as long as the
    optimizer: the chunk graphs own the Python references of the elements.
    """

    def __init__(self, optimizer: Any, chunk: int = CHUNK, deterministic: bool = False) -> None:
        # Edges of a chunk enter the optimizer in memory-address order, so with chunks the summation order
        # of a BA, and the last bits of its result, vary from run to run. ``deterministic`` adds each
        # element straight to the optimizer in insertion order instead (slower for big graphs; --sync).
        self._direct = bool(deterministic)
        self._g = g2o()
        self.optimizer = optimizer
        self._chunk = int(chunk)
        self._chunks: list[Any] = []
        self._cur = self._g.OptimizableGraph()
        self._n = 0
        self._vertices: list[Any] = []
        self._edges: list[Any] = []

    def add_vertex(self, v: Any) -> None:
        """Add a vertex (its id must already be set)."""
        if self._direct:
            if not self.optimizer.add_vertex(v):
                raise ValueError(f"g2o refused vertex id {v.id()} (duplicate id?)")
            self._vertices.append(v)
            return
        if not self._cur.add_vertex(v):
            raise ValueError(f"g2o refused vertex id {v.id()} (duplicate id?)")
        self._vertices.append(v)
        self._bump()

    def add_edge(self, e: Any) -> None:
        """Add an edge whose vertices were added to this builder."""
        if self._direct:
            if not self.optimizer.add_edge(e):
                raise ValueError("g2o refused an edge (vertex missing or duplicate edge)")
            self._edges.append(e)
            return
        if not self._cur.add_edge(e):
            raise ValueError("g2o refused an edge (vertex missing or duplicate edge)")
        self._edges.append(e)
        self._bump()

    def _bump(self) -> None:
        self._n += 1
        if self._n >= self._chunk:
            self._flush()

    def _flush(self) -> None:
        if self._n:
            self.optimizer.add_graph(self._cur)
            self._chunks.append(self._cur)
            self._cur = self._g.OptimizableGraph()
            self._n = 0

    def finish(self) -> None:
        """Move the last chunk into the optimizer and check the elements are the ones we hold."""
        self._flush()
        if not self._vertices:
            return
        probe = self._vertices[-1]
        if self.optimizer.vertex(probe.id()) is not probe:  # pragma: no cover - other g2opy versions
            log.warning("g2opy add_graph copies elements; adding them one by one (slow for big graphs)")
            self.optimizer.clear()
            for v in self._vertices:
                self.optimizer.add_vertex(v)
            for e in self._edges:
                self.optimizer.add_edge(e)


# --------------------------------------------------------------------------------------- abort flag
@contextlib.contextmanager
def stop_on(abort: threading.Event | None, optimizer: Any, poll_s: float = 0.01) -> Iterator[None]:
    """While the block runs, forward ``abort`` being set to g2o's force-stop flag of ``optimizer``.

    g2o's ``optimize`` releases the GIL and checks the flag once per iteration, so an abort set by another
    thread ends the running optimisation after the current iteration. No thread is started when ``abort``
    is None.
    """
    if abort is None:
        yield
        return
    if abort.is_set():
        optimizer.set_force_stop_flag(True)
        yield
        return
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            if abort.wait(poll_s):
                optimizer.set_force_stop_flag(True)
                return

    th = threading.Thread(target=watch, name="g2o-abort-watch", daemon=True)
    th.start()
    try:
        yield
    finally:
        done.set()
        th.join()
