"""``slam run --viewer`` / ``slam live``: SLAM in a worker thread, the viewer in the main thread.

:class:`SnapshotPublisher` runs in the tracking thread (no Qt): after each frame it builds a
:class:`ViewerSnapshot` and puts it into the drop-old channel. Copying the map (keyframes, points) takes
the map locks, so it is done at most ``max_rate_hz`` times a second and never more often than keeps its
cost under ``cost_fraction`` (a tenth) of the tracking time; the camera path is kept incrementally. :func:`run_with_viewer`
wires it to :func:`slam.runner.run_source` and :func:`slam.viz.viewer.run_viewer`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path

import numpy as np

from slam.geometry.se3 import invert
from slam.viz.groundtruth import align_groundtruth
from slam.viz.snapshot import PlaybackControl, SnapshotChannel, ViewerSnapshot

log = logging.getLogger(__name__)


class SnapshotPublisher:
    """Builds snapshots from a running :class:`slam.system.System` and hands them to a channel.

    Call ``on_frame(system, frame_data, track_result)`` after each frame (the signature of
    ``run_source``'s ``on_frame``), and :meth:`publish_final` with the run's result at the end.
    """

    def __init__(self, channel: SnapshotChannel, groundtruth=None, max_rate_hz: float = 15.0,
                 cost_fraction: float | None = 0.1, gt_period_s: float = 2.0) -> None:
        """``max_rate_hz`` (0: no limit) and ``cost_fraction`` (the share of the tracking thread's time that
        copying the map may take; None: no limit) bound how often a snapshot is built; the ground truth is
        re-aligned every ``gt_period_s`` seconds."""
        self.channel = channel
        self.cost_fraction = cost_fraction
        self.groundtruth = groundtruth
        self.min_interval = 1.0 / max_rate_hz if max_rate_hz > 0 else 0.0
        self.gt_period_s = gt_period_s
        self._times: list[float] = []
        self._centres: list[np.ndarray] = []
        self._last_publish = -np.inf
        self._build_s = 0.0
        self._last_gt = -np.inf
        self._gt_xyz: np.ndarray | None = None
        self._last_wall: float | None = None
        self._fps = 0.0
        self._frame_part: dict = {}

    def _frame_fields(self, system, fd, res) -> dict:
        """The per-frame fields: image, mask, keypoints and which of them are tracked."""
        frame = getattr(system, "last_frame", None)
        keypoints = np.zeros((0, 2), np.float32)
        tracked = np.zeros(0, bool)
        if frame is not None and getattr(frame, "features", None) is not None:
            keypoints = np.array(frame.features.keypoints, np.float32).reshape(-1, 2)
            ids = getattr(frame, "point_ids", None)
            if ids is not None and len(ids) == len(keypoints):
                tracked = np.asarray(ids) >= 0
        mask = getattr(system, "last_mask", None)
        return {
            "frame_index": int(fd.index), "timestamp": float(fd.timestamp), "state": str(res.state),
            "image": fd.image, "mask": None if mask is None else np.array(mask, np.uint8),
            "keypoints": keypoints, "tracked": tracked, "num_tracked": int(res.num_tracked),
        }

    def on_frame(self, system, fd, res) -> None:
        now = time.perf_counter()
        if self._last_wall is not None:
            dt = now - self._last_wall
            if dt > 0:
                self._fps = 1.0 / dt if self._fps == 0 else 0.9 * self._fps + 0.1 / dt
        self._last_wall = now
        T_wc = None
        if res.T_cw is not None:
            T_wc = invert(np.asarray(res.T_cw, np.float64))
            self._times.append(float(fd.timestamp))
            self._centres.append(T_wc[:3, 3].copy())
        self._frame_part = self._frame_fields(system, fd, res)
        cost_interval = self._build_s / self.cost_fraction if self.cost_fraction else 0.0
        if now - self._last_publish < max(self.min_interval, cost_interval):
            return
        t0 = time.perf_counter()
        keyframes = system.keyframe_trajectory().T_wc
        xyz, rgb = system.point_cloud()
        self._publish(T_wc, keyframes, xyz, rgb, now)
        self._build_s = time.perf_counter() - t0
        self._last_publish = now

    def _publish(self, T_wc, keyframe_T_wc, xyz, rgb, now: float) -> None:
        centres = np.array(self._centres).reshape(-1, 3)
        if self.groundtruth is not None and now - self._last_gt >= self.gt_period_s and len(centres) >= 3:
            self._gt_xyz = align_groundtruth(np.array(self._times), centres, self.groundtruth)
            self._last_gt = now
        self.channel.put(ViewerSnapshot(
            fps=self._fps, T_wc=T_wc, keyframe_T_wc=keyframe_T_wc, trajectory_xyz=centres,
            points_xyz=np.asarray(xyz, np.float32), points_rgb=rgb, gt_xyz=self._gt_xyz, **self._frame_part,
        ))

    def publish_final(self, result) -> None:
        """The end state from a :class:`slam.system.RunResult` (refined poses, all map points)."""
        traj = result.trajectory
        fields = dict(self._frame_part) or {"frame_index": 0, "timestamp": 0.0, "state": "lost"}
        if len(traj):
            self._times = list(traj.timestamps)
            self._centres = list(traj.positions)
        self._last_gt = -np.inf
        T_wc = traj.T_wc[-1] if len(traj) and fields.get("state") == "tracking" else None
        self._frame_part = fields
        self._publish(T_wc, result.keyframes.T_wc, result.points_xyz, result.points_rgb, time.perf_counter())


def run_with_viewer(source, cfg, out_dir: str | Path, snapshot: str | Path | None = None, progress: bool = False,
                    title: str | None = None, max_rate_hz: float = 15.0):
    """Run SLAM over ``source`` with the live viewer; returns ``run_source``'s RunOutcome.

    The viewer's Pause/Step pause and step tracking. With ``snapshot`` the final view is written to that
    PNG and the window closes by itself (Xvfb is started when there is no display); without it the window
    stays open after the run until it is closed. Closing the window early lets the run finish headless;
    Ctrl-C stops the run, whose outputs are still written.
    """
    from slam.runner import run_source
    from slam.viz.viewer import get_qapp, run_viewer
    from slam.viz.xvfb import ensure_display

    channel = SnapshotChannel(maxsize=2)
    stop = threading.Event()
    control = PlaybackControl()
    publisher = SnapshotPublisher(channel, getattr(source, "groundtruth", None), max_rate_hz)
    box: dict = {}

    def work() -> None:
        try:
            outcome = run_source(source, cfg, out_dir, on_frame=publisher.on_frame,
                                 should_stop=lambda: not control.wait_turn(), progress=progress)
            box["outcome"] = outcome
            publisher.publish_final(outcome.result)
        except BaseException as exc:  # handed to the main thread
            box["error"] = exc
        finally:
            stop.set()

    worker = threading.Thread(target=work, name="slam-run", daemon=True)
    name = title or f"slam {getattr(source, 'name', '')}".strip()
    with ensure_display() if snapshot else contextlib.nullcontext():
        get_qapp(name)  # Qt installed and a display there, before the run starts
        worker.start()
        try:
            run_viewer(channel, stop, snapshot_path=snapshot, title=name, exit_when_stopped=snapshot is not None,
                       control=control)
        except KeyboardInterrupt:
            log.warning("interrupted: stopping the run and writing what was tracked so far")
            control.cancel()
        except BaseException:
            control.cancel()
            worker.join()
            raise
        if worker.is_alive() and not stop.is_set():
            log.info("viewer closed; the run goes on without it")
        while worker.is_alive():
            try:
                worker.join(0.2)
            except KeyboardInterrupt:
                log.warning("interrupted: stopping the run and writing what was tracked so far")
                control.cancel()
    if "error" in box:
        raise box["error"]
    return box["outcome"]
