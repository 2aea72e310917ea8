"""Least-squares similarity alignment of two point sets (Umeyama 1991) and its application to poses.

Umeyama, S.: "Least-squares estimation of transformation parameters between two point patterns",
IEEE PAMI 13(4), 1991 -- equations (34)-(43). The transform maps ``src`` onto ``dst``:
``dst_i ~= s * R @ src_i + t``. With ``with_scale=False`` it is the rigid (SE3, Kabsch) solution, s = 1.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np

from slam.errors import InputError

log = logging.getLogger(__name__)

#: Relative variance below which a point set counts as a single point (no rotation or scale observable).
_DEGENERATE_REL_VAR = 1e-20


class Sim3(NamedTuple):
    """A similarity transform ``x -> s * R @ x + t``: ``R (3, 3)``, ``t (3,)``, ``s`` > 0."""

    R: np.ndarray
    t: np.ndarray
    s: float

    def matrix(self) -> np.ndarray:
        """4x4 matrix ``[[s R, t], [0, 1]]``."""
        return sim3_matrix(self.R, self.t, self.s)


def identity_sim3() -> Sim3:
    """The identity transform (R = I, t = 0, s = 1)."""
    return Sim3(np.eye(3), np.zeros(3), 1.0)


def umeyama(src: np.ndarray, dst: np.ndarray, with_scale: bool = True) -> Sim3:
    """Best ``(R, t, s)`` in the least-squares sense with ``dst ≈ s R src + t``.

    Args:
        src: ``(N, 3)`` points to be moved (e.g. estimated positions).
        dst: ``(N, 3)`` target points (e.g. ground-truth positions), same order as ``src``.
        with_scale: estimate the scale (Sim3); otherwise ``s = 1`` (SE3).

    Returns:
        :class:`Sim3` ``(R, t, s)``; unpacks as a tuple ``R, t, s = umeyama(...)``.

    Degenerate input: when ``src`` has (numerically) no spread, neither rotation nor scale is observable;
    the result is then ``R = I, s = 1`` and a pure translation of the centroids (no NaN). Collinear points
    give one valid solution of the (non-unique) rotation.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.ndim != 2 or src.shape[1] != 3 or src.shape != dst.shape:
        raise ValueError(f"umeyama expects two (N, 3) arrays of equal shape, got {src.shape} and {dst.shape}")
    if len(src) == 0:
        raise InputError("cannot align empty point sets")
    if not (np.all(np.isfinite(src)) and np.all(np.isfinite(dst))):
        raise InputError("cannot align point sets that contain NaN or infinite values")

    mu_src = src.mean(axis=0)
    mu_dst = dst.mean(axis=0)
    xs = src - mu_src
    ys = dst - mu_dst
    n = len(src)
    var_src = float(np.sum(xs * xs)) / n  # eq. (36)
    scale_ref = max(float(np.sum(src * src)) / n, 1.0)
    if var_src <= _DEGENERATE_REL_VAR * scale_ref:
        log.warning("alignment: source points have no spread; using translation only (R = I, s = 1)")
        return Sim3(np.eye(3), mu_dst - mu_src, 1.0)

    cov = ys.T @ xs / n  # eq. (38), (3, 3)
    U, d, Vt = np.linalg.svd(cov)
    S = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0.0:  # eq. (43): keep a proper rotation
        S[2, 2] = -1.0
    R = U @ S @ Vt  # eq. (40)
    s = float(np.sum(d * np.diag(S)) / var_src) if with_scale else 1.0  # eq. (42)
    if with_scale and s <= 0.0:
        log.warning("alignment: non-positive scale %.3g (destination has no spread); using s = 1", s)
        s = 1.0
    t = mu_dst - s * (R @ mu_src)  # eq. (41)
    return Sim3(R, t, s)


def sim3_matrix(R: np.ndarray, t: np.ndarray, s: float = 1.0) -> np.ndarray:
    """4x4 matrix ``[[s R, t], [0, 1]]`` of a similarity transform."""
    S = np.eye(4)
    S[:3, :3] = float(s) * np.asarray(R, dtype=np.float64)
    S[:3, 3] = np.asarray(t, dtype=np.float64).reshape(3)
    return S


def transform_points_sim3(points: np.ndarray, R: np.ndarray, t: np.ndarray, s: float = 1.0) -> np.ndarray:
    """``s R p + t`` for every row of ``points (N, 3)``; returns ``(N, 3)``."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    return float(s) * points @ np.asarray(R).T + np.asarray(t).reshape(3)


def transform_poses_sim3(T_wc: np.ndarray, R: np.ndarray, t: np.ndarray, s: float = 1.0) -> np.ndarray:
    """Move camera-to-world poses ``(N, 4, 4)`` into a new world frame by ``x -> s R x + t``.

    Rotations become ``R @ R_wc``, camera centres ``s R c + t``; the result stays a rigid pose per frame
    (the scale acts on positions only), shape ``(N, 4, 4)``.
    """
    T_wc = np.asarray(T_wc, dtype=np.float64).reshape(-1, 4, 4)
    out = T_wc.copy()
    out[:, :3, :3] = np.einsum("ij,njk->nik", np.asarray(R, dtype=np.float64), T_wc[:, :3, :3])
    out[:, :3, 3] = transform_points_sim3(T_wc[:, :3, 3], R, t, s)
    return out


def transform_trajectory(traj, R: np.ndarray, t: np.ndarray, s: float = 1.0):
    """A new trajectory (same type and timestamps as ``traj``) with poses moved by ``x -> s R x + t``.

    ``traj`` is a :class:`slam.evaluation.trajectory.Trajectory` (anything with ``timestamps`` and
    ``T_wc (N, 4, 4)`` and that constructor).
    """
    return type(traj)(np.array(traj.timestamps, copy=True), transform_poses_sim3(traj.T_wc, R, t, s))


def align_trajectory(est, gt, mode: str = "sim3") -> tuple[object, Sim3]:
    """Align ``est`` onto ``gt`` by their positions, row ``i`` of one matching row ``i`` of the other.

    Args:
        est, gt: trajectories of equal length (already associated).
        mode: ``"sim3"`` (rotation, translation, scale: monocular), ``"se3"`` (rigid) or ``"none"``.

    Returns:
        ``(aligned est trajectory, Sim3 used)``.
    """
    mode = mode.lower()
    if mode not in ("sim3", "se3", "none"):
        raise InputError(f"unknown alignment {mode!r}: use sim3, se3 or none")
    if len(est) != len(gt):
        raise ValueError(f"align_trajectory needs associated trajectories, got {len(est)} and {len(gt)} poses")
    if mode == "none":
        sim = identity_sim3()
    else:
        sim = umeyama(est.positions, gt.positions, with_scale=(mode == "sim3"))
    return transform_trajectory(est, *sim), sim
