"""Trajectory error metrics: ATE after alignment, RPE per frame step and per travelled distance.

Definitions (as evo's ``evo_ape`` / ``evo_rpe`` with the translation part):

* **ATE** of matched pose ``i``: ``|| p_gt[i] - (s R p_est[i] + t) ||`` with ``(R, t, s)`` from Umeyama
  alignment of the matched positions (``sim3``, ``se3`` or ``none``).
* **RPE** of an index pair ``(i, j)``: ``E = (Q_i^-1 Q_j)^-1 (P_i^-1 P_j)`` with ``Q`` ground truth and ``P``
  the *aligned* estimate (so a Sim3 scale is applied; a rigid alignment changes nothing);
  translation error ``||t(E)||``, rotation error ``angle(E)`` in degrees.
  Per frame step the pairs are ``(i, i + delta_frames)`` over the matched poses; per distance they are
  consecutive pairs whose ground-truth path between them first reaches ``delta_m`` metres (evo's
  ``filter_pairs_by_path``, not all pairs).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from slam.errors import InputError
from slam.evaluation.association import associate
from slam.evaluation.trajectory import Trajectory
from slam.geometry.alignment import align_trajectory, transform_trajectory
from slam.geometry.se3 import invert

log = logging.getLogger(__name__)

ALIGN_MODES = ("sim3", "se3", "none")


def error_stats(errors: np.ndarray) -> dict[str, float]:
    """``rmse, mean, median, std, min, max`` of ``errors (K,)``; all NaN when empty (std is population)."""
    e = np.asarray(errors, dtype=np.float64).reshape(-1)
    if e.size == 0:
        return {k: math.nan for k in ("rmse", "mean", "median", "std", "min", "max")}
    return {
        "rmse": float(np.sqrt(np.mean(e * e))),
        "mean": float(np.mean(e)),
        "median": float(np.median(e)),
        "std": float(np.std(e)),
        "min": float(np.min(e)),
        "max": float(np.max(e)),
    }


def rotation_angles(R: np.ndarray) -> np.ndarray:
    """Rotation angles in radians of ``R (K, 3, 3)``; accurate for small angles (atan2 form)."""
    R = np.asarray(R, dtype=np.float64).reshape(-1, 3, 3)
    cos = 0.5 * (np.trace(R, axis1=1, axis2=2) - 1.0)
    axis = np.stack([R[:, 2, 1] - R[:, 1, 2], R[:, 0, 2] - R[:, 2, 0], R[:, 1, 0] - R[:, 0, 1]], axis=1)
    sin = 0.5 * np.linalg.norm(axis, axis=1)
    return np.arctan2(sin, cos)


def relative_pose_errors(
    T_gt: np.ndarray, T_est: np.ndarray, pairs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """RPE of index ``pairs (K, 2)`` between ``T_gt (N, 4, 4)`` and ``T_est (N, 4, 4)`` (camera-to-world).

    Returns ``(translation errors (K,), rotation errors (K,) in degrees)``.
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if len(pairs) == 0:
        return np.zeros(0), np.zeros(0)
    i, j = pairs[:, 0], pairs[:, 1]
    Q_rel = invert(T_gt[i]) @ T_gt[j]
    P_rel = invert(T_est[i]) @ T_est[j]
    E = invert(Q_rel) @ P_rel
    return np.linalg.norm(E[:, :3, 3], axis=1), np.degrees(rotation_angles(E[:, :3, :3]))


def pairs_by_frames(n: int, delta: int = 1) -> np.ndarray:
    """Pairs ``(i, i + delta)`` for ``i = 0 .. n - delta - 1``; ``(K, 2)``."""
    if delta < 1:
        raise InputError(f"RPE frame delta must be >= 1, got {delta}")
    i = np.arange(max(n - delta, 0))
    return np.stack([i, i + delta], axis=1)


def pairs_by_path(positions: np.ndarray, delta_m: float) -> np.ndarray:
    """Consecutive pairs along ``positions (N, 3)`` each spanning at least ``delta_m`` metres of path.

    Starting at pose 0, the path length is accumulated step by step; the first pose where it reaches
    ``delta_m`` closes a pair and starts the next one (the overshoot is dropped). Returns ``(K, 2)``.
    """
    if not delta_m > 0:
        return np.zeros((0, 2), dtype=np.int64)
    steps = np.linalg.norm(np.diff(np.asarray(positions, dtype=np.float64), axis=0), axis=1)
    ids = [0]
    acc = 0.0
    for k, step in enumerate(steps, start=1):
        acc += float(step)
        if acc >= delta_m:
            ids.append(k)
            acc = 0.0
    return np.asarray(list(zip(ids[:-1], ids[1:])), dtype=np.int64).reshape(-1, 2)


@dataclass
class EvalResult:
    """Result of :func:`evaluate`. Lengths are in ground-truth units (metres), angles in degrees.

    ``tracked_fraction``: among the ground-truth poses whose timestamps lie within the estimate's time
    span (first to last estimate stamp, widened by ``max_diff``), the fraction that got an associated
    estimate. It measures tracking gaps inside the evaluated run; it is only meaningful when ground truth
    is sampled at the frame times (TUM, KITTI, the folder layout) -- a 200 Hz EuRoC ground truth against
    20 Hz frames gives about 0.1. ``gt_fraction`` is the same count over all ground-truth poses.
    ``path_length`` is the ground-truth path over the matched poses; ``ate_percent_of_path`` is
    ``100 * ate_rmse / path_length``. ``rpe_dist_*`` use pairs ``rpe_dist_delta_m`` metres of
    ground-truth path apart (default 10 % of ``path_length``); ``rpe_dist_trans_percent`` is
    ``100 * mean translation error / delta``. ``scale`` multiplies the estimate onto ground truth.
    """

    align: str
    num_matched: int
    num_est: int
    num_gt: int
    scale: float
    ate: dict[str, float]
    path_length: float
    rpe_delta_frames: int
    rpe_trans: dict[str, float]
    rpe_rot_deg: dict[str, float]
    rpe_dist_delta_m: float
    rpe_dist_num_pairs: int
    rpe_dist_trans: dict[str, float]
    rpe_dist_rot_deg: dict[str, float]
    tracked_fraction: float
    gt_fraction: float
    max_diff: float
    # Arrays for plots and further analysis (not in to_dict):
    R: np.ndarray = field(repr=False, default_factory=lambda: np.eye(3))
    t: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(3))
    est_idx: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, dtype=np.int64))
    gt_idx: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, dtype=np.int64))
    ate_errors: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    est_aligned: Trajectory | None = field(repr=False, default=None)
    gt: Trajectory | None = field(repr=False, default=None)

    @property
    def ate_rmse(self) -> float:
        return self.ate["rmse"]

    @property
    def ate_percent_of_path(self) -> float:
        return 100.0 * self.ate["rmse"] / self.path_length if self.path_length > 0 else math.nan

    @property
    def rpe_dist_trans_percent(self) -> float:
        d = self.rpe_dist_delta_m
        return 100.0 * self.rpe_dist_trans["mean"] / d if d > 0 else math.nan

    def to_dict(self) -> dict[str, object]:
        """Flat JSON-ready dict (plain floats/ints/str; undefined numbers are None)."""

        def num(x: float) -> float | None:
            x = float(x)
            return x if math.isfinite(x) else None

        out: dict[str, object] = {"align": self.align}
        for k in ("rmse", "mean", "median", "max", "min", "std"):
            out[f"ate_{k}"] = num(self.ate[k])
        out["ate_percent_of_path"] = num(self.ate_percent_of_path)
        out["path_length"] = num(self.path_length)
        out["rpe_delta_frames"] = int(self.rpe_delta_frames)
        for k in ("rmse", "mean", "median", "max"):
            out[f"rpe_trans_{k}"] = num(self.rpe_trans[k])
        for k in ("rmse", "mean", "median", "max"):
            out[f"rpe_rot_deg_{k}"] = num(self.rpe_rot_deg[k])
        out["rpe_dist_delta_m"] = num(self.rpe_dist_delta_m)
        out["rpe_dist_num_pairs"] = int(self.rpe_dist_num_pairs)
        for k in ("rmse", "mean", "median", "max"):
            out[f"rpe_dist_trans_{k}"] = num(self.rpe_dist_trans[k])
        out["rpe_dist_trans_percent"] = num(self.rpe_dist_trans_percent)
        for k in ("rmse", "mean"):
            out[f"rpe_dist_rot_deg_{k}"] = num(self.rpe_dist_rot_deg[k])
        out["tracked_fraction"] = num(self.tracked_fraction)
        out["gt_fraction"] = num(self.gt_fraction)
        out["scale"] = num(self.scale)
        out["num_matched"] = int(self.num_matched)
        out["num_est"] = int(self.num_est)
        out["num_gt"] = int(self.num_gt)
        out["max_diff"] = num(self.max_diff)
        return out


def _subset(traj: Trajectory, idx: np.ndarray) -> Trajectory:
    return Trajectory(traj.timestamps[idx], traj.T_wc[idx])


def evaluate(
    est: Trajectory,
    gt: Trajectory,
    align: str = "sim3",
    max_diff: float = 0.02,
    offset: float = 0.0,
    rpe_delta_frames: int = 1,
    rpe_delta_m: float | None = None,
) -> EvalResult:
    """Associate ``est`` with ``gt`` by timestamp, align, and compute ATE, RPE and coverage.

    Args:
        est, gt: estimated and ground-truth camera-to-world trajectories.
        align: ``sim3`` (monocular: rotation, translation, scale), ``se3`` or ``none``.
        max_diff: largest timestamp difference in seconds for association.
        offset: seconds added to the estimate's timestamps before association.
        rpe_delta_frames: frame step of the per-frame RPE (over matched poses).
        rpe_delta_m: path distance in metres of the per-distance RPE; None = 10 % of the GT path length.

    Raises:
        InputError: an unknown ``align`` mode, or fewer than 3 poses associated.
    """
    align = str(align).lower()
    if align not in ALIGN_MODES:
        raise InputError(f"unknown alignment {align!r}: use one of {', '.join(ALIGN_MODES)}")
    est_idx, gt_idx = associate(est, gt, max_diff=max_diff, offset=offset)
    if len(est_idx) < 3:
        span = (
            f"estimate {est.timestamps[0]:.6f}..{est.timestamps[-1]:.6f} s, "
            f"ground truth {gt.timestamps[0]:.6f}..{gt.timestamps[-1]:.6f} s"
            if len(est) and len(gt)
            else "an empty trajectory"
        )
        raise InputError(
            f"only {len(est_idx)} estimated poses have a ground-truth pose within {max_diff} s "
            f"({span}); need at least 3. Check the timestamps (KITTI files have none: give a times file), "
            "the time offset, or raise --max-diff"
        )
    est_m = _subset(est, est_idx)
    gt_m = _subset(gt, gt_idx)
    est_al, sim = align_trajectory(est_m, gt_m, align)

    ate_errors = np.linalg.norm(gt_m.positions - est_al.positions, axis=1)
    path_length = gt_m.path_length()

    rpe_t, rpe_r = relative_pose_errors(gt_m.T_wc, est_al.T_wc, pairs_by_frames(len(gt_m), rpe_delta_frames))

    delta_m = 0.1 * path_length if rpe_delta_m is None else float(rpe_delta_m)
    if rpe_delta_m is not None and not delta_m > 0:
        raise InputError(f"RPE distance delta must be > 0 metres, got {rpe_delta_m}")
    dist_pairs = pairs_by_path(gt_m.positions, delta_m)
    rpe_dt, rpe_dr = relative_pose_errors(gt_m.T_wc, est_al.T_wc, dist_pairs)
    if len(dist_pairs) == 0:
        log.info("no RPE pairs %.3g m of path apart (ground-truth path %.3g m)", delta_m, path_length)

    lo = est.timestamps.min() + offset - max_diff
    hi = est.timestamps.max() + offset + max_diff
    n_gt_span = int(np.count_nonzero((gt.timestamps >= lo) & (gt.timestamps <= hi)))
    tracked_fraction = len(gt_idx) / n_gt_span if n_gt_span else math.nan

    return EvalResult(
        align=align,
        num_matched=int(len(est_idx)),
        num_est=len(est),
        num_gt=len(gt),
        scale=float(sim.s),
        ate=error_stats(ate_errors),
        path_length=float(path_length),
        rpe_delta_frames=int(rpe_delta_frames),
        rpe_trans=error_stats(rpe_t),
        rpe_rot_deg=error_stats(rpe_r),
        rpe_dist_delta_m=float(delta_m),
        rpe_dist_num_pairs=int(len(dist_pairs)),
        rpe_dist_trans=error_stats(rpe_dt),
        rpe_dist_rot_deg=error_stats(rpe_dr),
        tracked_fraction=float(tracked_fraction),
        gt_fraction=len(gt_idx) / len(gt),
        max_diff=float(max_diff),
        R=sim.R,
        t=sim.t,
        est_idx=est_idx,
        gt_idx=gt_idx,
        ate_errors=ate_errors,
        est_aligned=transform_trajectory(est, sim.R, sim.t, sim.s),
        gt=gt,
    )
