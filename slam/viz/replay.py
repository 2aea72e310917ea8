"""Load a saved run folder (``slam run --out DIR``) as the viewer snapshot of its final state."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from slam.errors import InputError
from slam.evaluation.trajectory import read_tum
from slam.viz.groundtruth import align_groundtruth
from slam.viz.ply import read_ply
from slam.viz.snapshot import ViewerSnapshot

log = logging.getLogger(__name__)

GROUNDTRUTH_NAMES = ("groundtruth.txt", "gt.txt", "groundtruth_tum.txt")


def _last_state(run_dir: Path) -> tuple[str, int] | None:
    """State and tracked-point count of the last line of ``states.txt`` (``index timestamp state tracked``)."""
    path = run_dir / "states.txt"
    if not path.is_file():
        return None
    for line in reversed(path.read_text(encoding="utf-8", errors="replace").splitlines()):
        parts = line.split()
        if len(parts) >= 4 and not line.startswith("#"):
            try:
                return parts[2], int(parts[3])
            except ValueError:
                return None
    return None


def load_run(run_dir: str | Path, groundtruth: str | Path | None = None, max_dt: float = 0.02) -> ViewerSnapshot:
    """The final state of a saved run.

    Reads ``DIR/trajectory.txt`` (TUM, required), ``DIR/keyframes.txt`` and ``DIR/map.ply`` (optional),
    ``DIR/stats.json`` and ``DIR/states.txt`` (optional, for the status line) and ground truth from
    ``groundtruth`` or ``DIR/groundtruth.txt`` (TUM), Sim3-aligned to the trajectory by timestamps within
    ``max_dt`` seconds. Raises InputError when the folder or its trajectory is missing or malformed.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: run folder not found")
    traj_path = run_dir / "trajectory.txt"
    if not traj_path.is_file():
        raise InputError(f"{run_dir}: no trajectory.txt in the run folder (is it the --out folder of 'slam run'?)")
    traj = read_tum(traj_path)
    keyframe_T_wc = np.zeros((0, 4, 4))
    if (run_dir / "keyframes.txt").is_file():
        keyframe_T_wc = read_tum(run_dir / "keyframes.txt").T_wc
    points = np.zeros((0, 3), np.float32)
    colours = np.zeros((0, 3), np.uint8)
    if (run_dir / "map.ply").is_file():
        xyz, rgb = read_ply(run_dir / "map.ply")
        points = xyz.astype(np.float32)
        colours = rgb if rgb is not None else np.full((len(xyz), 3), 200, np.uint8)
    stats: dict = {}
    if (run_dir / "stats.json").is_file():
        try:
            stats = json.loads((run_dir / "stats.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            log.warning("%s: unreadable stats.json (%s); status line from the files only", run_dir, exc)
    gt_xyz = None
    gt_path = Path(groundtruth) if groundtruth is not None else next(
        (run_dir / n for n in GROUNDTRUTH_NAMES if (run_dir / n).is_file()), None)
    if gt_path is not None:
        gt_xyz = align_groundtruth(traj.timestamps, traj.positions, read_tum(gt_path), max_dt)
        if gt_xyz is None:
            log.warning("%s: too few poses match the trajectory's timestamps; ground truth not shown", gt_path)
    last = _last_state(run_dir)
    state, tracked = last if last is not None else ("tracking", 0)
    return ViewerSnapshot(
        frame_index=int(stats.get("frames", len(traj))) - 1,
        timestamp=float(traj.timestamps[-1]),
        state=state,
        fps=float(stats.get("fps", 0.0) or 0.0),
        T_wc=traj.T_wc[-1],
        keyframe_T_wc=keyframe_T_wc,
        trajectory_xyz=traj.positions,
        points_xyz=points,
        points_rgb=colours,
        gt_xyz=gt_xyz,
        num_tracked=tracked,
        num_keyframes=int(stats.get("keyframes", len(keyframe_T_wc))),
        num_map_points=int(stats.get("map_points", len(points))),
    )
