"""System: wires a frame source to the tracker and the local mapper and collects the result.

:class:`System` is the synchronous API (``process(frame)`` per frame); :func:`run_source` drives it over
a :class:`~slam.sources.base.FrameSource`, with the mapper in its own thread unless ``system.sync`` is
set, and always returns what it has (also after Ctrl-C or an error half-way, then re-raised by the
caller once outputs are written).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from slam.camera import Camera
from slam.config import Config
from slam.evaluation.trajectory import Trajectory
from slam.geometry.se3 import invert
from slam.map.map import Map
from slam.mapping import LocalMapper, LocalMapperThread
from slam.preprocess import FramePreprocessor
from slam.sources.base import FrameData, FrameSource
from slam.timing import StageTimer
from slam.tracking import LOST, TrackResult, Tracker

log = logging.getLogger(__name__)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; other values are returned as they are."""
    if device != "auto":
        return device
    import importlib.util
    import os

    if not os.path.exists("/dev/nvidiactl") or importlib.util.find_spec("torch") is None:
        return "cpu"  # no NVIDIA driver or no torch: don't pay for importing torch
    import torch  # noqa: PLC0415

    return "cuda" if torch.cuda.is_available() else "cpu"


#: Modules that tracking and mapping import on first use; :class:`System` loads them up front.
_HOT_PATH_MODULES = ("slam.geometry.two_view", "slam.features.matching", "slam.optim", "scipy.optimize", "g2opy")


def import_hot_path() -> None:
    """Import the lazily loaded modules of the per-frame path (scipy.optimize alone takes ~1 s), so that
    start-up pays for them rather than the first frames and the timed run. A missing one is skipped: the
    code that needs it raises the clear error when it is used."""
    import importlib

    for name in _HOT_PATH_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            log.debug("import_hot_path: %s not importable", name)


@dataclass
class RunResult:
    """Everything a run produced."""

    trajectory: Trajectory
    keyframes: Trajectory
    points_xyz: np.ndarray
    points_rgb: np.ndarray
    stats: dict
    interrupted: bool = False
    error: BaseException | None = None
    states: list[tuple[int, float, str, int]] = field(default_factory=list)  # (index, time, state, tracked)


class System:
    """One SLAM run: preprocessing, tracking and local mapping over a sequence of frames."""

    def __init__(self, cfg: Config, camera: Camera, mask: np.ndarray | None = None) -> None:
        from slam.features.factory import create_extractor

        import_hot_path()
        self.cfg = cfg
        self.camera = camera
        self.device = resolve_device(cfg.system.device)
        self.timer = StageTimer()
        self.extractor = create_extractor(cfg.features, device=self.device)
        self.maps: list[Map] = []
        scale_factor = float(getattr(self.extractor, "scale_factor", 2.0))
        levels = int(getattr(self.extractor, "num_levels", 8))
        core = LocalMapper(cfg, camera, lambda: self.tracker.map, self.timer, scale_factor, levels)
        self.mapper_core = core
        self.mapper = core if cfg.system.sync else LocalMapperThread(core)
        self.preprocessor = FramePreprocessor(cfg, camera, self.extractor, mask)
        self.tracker = self._make_tracker()
        self.num_frames = 0
        self.states: list[tuple[int, float, str, int]] = []
        self.last_frame = None
        self.last_mask = None

    def _make_tracker(self) -> Tracker:
        frontend = self.cfg.tracking.frontend
        if frontend == "descriptors":
            cls = Tracker
        elif frontend in ("flow", "hybrid"):
            from slam.flow_tracking import FlowTracker

            cls = FlowTracker
        else:
            from slam.errors import ConfigError

            raise ConfigError(f"tracking.frontend must be descriptors, flow or hybrid, got {frontend!r}")
        return cls(self.cfg, self.camera, self.extractor, self._new_map, self.mapper, self.timer)

    def _new_map(self, reuse_id: int | None = None) -> Map:
        if reuse_id is not None and self.maps and self.maps[-1].id == reuse_id:
            self.maps[-1] = Map(reuse_id)
            return self.maps[-1]
        m = Map(len(self.maps))
        self.maps.append(m)
        return m

    # ------------------------------------------------------------------------------------------ per frame
    def prepare(self, fd: FrameData):
        """Preprocess and extract one frame (stateless: may run ahead in another thread)."""
        with self.timer.stage("extract"):
            return self.tracker.prepare(fd, self.preprocessor)

    def process(self, fd: FrameData, prepared=None) -> TrackResult:
        """Track one frame (raises the mapping thread's error, if it failed).

        ``prepared`` is the ``(frame, mask)`` of :meth:`prepare` when it was computed ahead of time.
        """
        self.mapper.check()
        with self.timer.stage("frame"):
            frame, mask = prepared if prepared is not None else self.prepare(fd)
            with self.timer.stage("track"):
                result = self.tracker.track(frame)
        self.num_frames += 1
        self.states.append((fd.index, fd.timestamp, result.state, result.num_tracked))
        self.last_frame = frame
        self.last_mask = mask
        return result

    def finish(self) -> None:
        """Let the mapper process what is queued, then stop its thread."""
        if isinstance(self.mapper, LocalMapperThread):
            self.mapper.wait_idle()
            self.mapper.stop()
            self.mapper.check()

    # ------------------------------------------------------------------------------------------ results
    def trajectory(self) -> Trajectory:
        recs = self.tracker.records
        if not recs:
            return Trajectory(np.zeros(0), np.zeros((0, 4, 4)))
        for m in self.maps:
            m.lock.acquire()
        try:
            T_wc = np.array([invert(r.T_cw()) for r in recs])
        finally:
            for m in self.maps:
                m.lock.release()
        ts = np.array([r.timestamp for r in recs])
        order = np.argsort(ts, kind="stable")
        return Trajectory(ts[order], T_wc[order])

    def keyframe_trajectory(self) -> Trajectory:
        kfs = []
        for m in self.maps:
            with m.lock:
                kfs.extend((kf.timestamp, invert(kf.T_cw)) for kf in m.keyframes.values())
        if not kfs:
            return Trajectory(np.zeros(0), np.zeros((0, 4, 4)))
        kfs.sort(key=lambda x: x[0])
        return Trajectory(np.array([k[0] for k in kfs]), np.array([k[1] for k in kfs]))

    def point_cloud(self) -> tuple[np.ndarray, np.ndarray]:
        xyz, rgb = [], []
        for m in self.maps:
            a, b = m.point_cloud()
            xyz.append(a)
            rgb.append(b)
        return np.concatenate(xyz) if xyz else np.zeros((0, 3)), np.concatenate(rgb) if rgb else np.zeros((0, 3), np.uint8)

    def stats(self, wall_s: float) -> dict:
        # frames with a pose (the first frame of a two-view initialisation gets its pose afterwards)
        tracked = len(self.tracker.records)
        keyframes = sum(len(m.keyframes) for m in self.maps)
        points = sum(len(m.points) for m in self.maps)
        maps_used = sum(1 for m in self.maps if m.keyframes)
        mean = self.timer.mean_ms()
        return {
            "frames": self.num_frames,
            "tracked": tracked,
            "tracked_fraction": round(tracked / self.num_frames, 4) if self.num_frames else 0.0,
            "lost": sum(1 for s in self.states if s[2] == LOST),
            "initialising": sum(1 for s in self.states if s[2] == "initialising"),
            "keyframes": keyframes,
            "keyframes_culled": sum(len(m.culled_keyframes) for m in self.maps),
            # keyframes tracked before a local BA wrote back, re-localised against its result before mapping
            "keyframes_relocated": int(self.mapper_core.num_relocated),
            "map_points": points,
            "maps": max(maps_used, 1 if keyframes else 0),
            "resets": self.tracker.num_resets,
            # frames whose pose came from a recovery path rather than from tracked map points
            "recovered": {
                "rotation_only": int(self.tracker.num_rotation_only),
                "two_view": int(getattr(self.tracker, "num_two_view", 0)),
                "descriptor_fallback": int(getattr(self.tracker, "num_fallbacks", 0)),
                # frames between the two keyframes of an initialisation, localised once the map exists
                "initialisation_gap": int(getattr(self.tracker, "num_init_gap", 0)),
            },
            # frames where the map's scale could not be carried over (no map point seen on both sides of
            # the motion) and was taken from the scene depth instead: the trajectory's scale may jump there
            "scale_guess_frames": list(getattr(self.tracker, "scale_guess_frames", [])),
            "scale_corrections": int(self.tracker.num_scale_corrections),
            "wall_s": round(wall_s, 3),
            "fps": round(self.num_frames / wall_s, 3) if wall_s > 0 else 0.0,
            "stage_ms": mean,
            "stage_calls": self.timer.counts(),
            "features": self.cfg.features.type,
            "frontend": self.cfg.tracking.frontend,
            "device": self.device,
            "sync": self.cfg.system.sync,
        }


class FramePrefetcher:
    """Reads and prepares (decode, mask, keypoints) the next frames in a worker thread.

    OpenCV releases the GIL while it decodes and extracts, so on a multi-core machine this runs beside
    tracking. Iterating yields ``(FrameData, (frame, mask))`` in source order; an error in the worker is
    re-raised by the iteration. At most ``depth`` frames are held ahead.
    """

    _END = object()

    def __init__(self, frames: Iterable[FrameData], prepare: Callable, depth: int = 3) -> None:
        import queue
        import threading

        self._queue: "queue.Queue" = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(frames, prepare), name="frame-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        import queue

        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, frames: Iterable[FrameData], prepare: Callable) -> None:
        try:
            for fd in frames:
                if self._stop.is_set() or not self._put((fd, prepare(fd))):
                    return
        except BaseException as exc:  # handed to the consumer
            self._put(("error", exc))
            return
        self._put(self._END)

    def __iter__(self):
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) and item[0] == "error":
                raise item[1]
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)


def run_frames(
    system: System,
    frames: Iterable[FrameData],
    on_frame: Callable[[FrameData, TrackResult], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> RunResult:
    """Feed ``frames`` to ``system``; stops cleanly on Ctrl-C, ``should_stop()`` or an error, keeping results."""
    start = time.perf_counter()
    interrupted = False
    error: BaseException | None = None
    prefetcher = None if system.cfg.system.sync else FramePrefetcher(frames, system.prepare)
    try:
        items = prefetcher if prefetcher is not None else ((fd, None) for fd in frames)
        for fd, prepared in items:
            if should_stop is not None and should_stop():
                interrupted = True
                break
            result = system.process(fd, prepared)
            if on_frame is not None:
                on_frame(fd, result)
    except KeyboardInterrupt:
        interrupted = True
        log.warning("interrupted: writing what was tracked so far")
    except Exception as exc:  # kept, outputs written, re-raised by the caller
        error = exc
    finally:
        if prefetcher is not None:
            prefetcher.close()
    try:
        system.finish()
    except Exception as exc:
        error = error or exc
    wall = time.perf_counter() - start
    xyz, rgb = system.point_cloud()
    stats = system.stats(wall)
    stats["interrupted"] = interrupted
    if error is not None:
        stats["error"] = f"{type(error).__name__}: {error}"
    return RunResult(
        trajectory=system.trajectory(),
        keyframes=system.keyframe_trajectory(),
        points_xyz=xyz,
        points_rgb=rgb,
        stats=stats,
        interrupted=interrupted,
        error=error,
        states=list(system.states),
    )
