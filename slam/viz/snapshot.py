"""What the SLAM threads hand the viewer: immutable snapshots, a drop-old channel, and pause/step requests.

No Qt here: the producer side (tracking thread) imports only this module. The viewer (``viewer.py``) runs
in the main thread and takes the newest snapshot from a :class:`SnapshotChannel` whenever it has time; the
producer never waits for it (``put`` drops the oldest snapshot when the channel is full).
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field

import numpy as np

STATES = ("initialising", "tracking", "lost")


def _frozen(a: np.ndarray | None, dtype, shape_tail: tuple[int, ...] | None, name: str) -> np.ndarray | None:
    """``a`` as a read-only view of dtype ``dtype`` whose trailing shape is ``shape_tail`` (``-1`` any)."""
    if a is None:
        return None
    arr = np.asarray(a, dtype=dtype)
    if shape_tail is not None:
        if arr.size == 0 and arr.ndim < len(shape_tail) + 1:
            arr = arr.reshape((0,) + shape_tail)
        tail = arr.shape[1:]
        if len(tail) != len(shape_tail) or any(s != -1 and s != t for s, t in zip(shape_tail, tail)):
            raise ValueError(f"ViewerSnapshot.{name}: expected shape (N, {', '.join(map(str, shape_tail))}), got {arr.shape}")
    view = arr.view()
    view.flags.writeable = False
    return view


@dataclass(frozen=True)
class ViewerSnapshot:
    """The state of a run at one frame, as the viewer draws it.

    Arrays are stored as read-only views: the producer must hand over arrays it will not modify afterwards
    (fresh copies, not the map's live buffers).

    Attributes:
        frame_index: index of the current frame in the source.
        timestamp: its time in seconds.
        state: ``'initialising'``, ``'tracking'`` or ``'lost'`` (other strings are shown as they are).
        fps: frames per second of the tracking thread.
        image: ``(H, W)`` or ``(H, W, 3)`` BGR uint8 current frame, or None.
        mask: ``(H, W)`` uint8, non-zero where pixels are usable, or None.
        keypoints: ``(N, 2)`` float32 pixel coordinates (pixel centres at integers).
        tracked: ``(N,)`` bool, True where the keypoint is matched to a map point.
        T_wc: ``(4, 4)`` float64 current camera-to-world pose, or None when not tracked.
        keyframe_T_wc: ``(K, 4, 4)`` float64 keyframe camera-to-world poses.
        trajectory_xyz: ``(M, 3)`` float64 estimated camera centres so far.
        points_xyz: ``(P, 3)`` float32 map points (world frame).
        points_rgb: ``(P, 3)`` uint8 RGB colours of the map points.
        gt_xyz: ``(G, 3)`` float64 ground-truth camera centres already aligned to the estimate, or None.
        num_tracked, num_keyframes, num_map_points: counters for the status line; None means "count the
            arrays" (``tracked.sum()``, ``len(keyframe_T_wc)``, ``len(points_xyz)``).
    """

    frame_index: int
    timestamp: float
    state: str
    fps: float = 0.0
    image: np.ndarray | None = None
    mask: np.ndarray | None = None
    keypoints: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    tracked: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    T_wc: np.ndarray | None = None
    keyframe_T_wc: np.ndarray = field(default_factory=lambda: np.zeros((0, 4, 4)))
    trajectory_xyz: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    points_xyz: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.float32))
    points_rgb: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.uint8))
    gt_xyz: np.ndarray | None = None
    num_tracked: int | None = None
    num_keyframes: int | None = None
    num_map_points: int | None = None

    def __post_init__(self) -> None:
        put = object.__setattr__
        put(self, "image", _frozen(self.image, np.uint8, None, "image"))
        put(self, "mask", _frozen(self.mask, np.uint8, None, "mask"))
        put(self, "keypoints", _frozen(self.keypoints, np.float32, (2,), "keypoints"))
        tracked = _frozen(self.tracked, bool, (), "tracked")
        if len(tracked) != len(self.keypoints):
            if len(tracked) != 0:
                raise ValueError(f"ViewerSnapshot.tracked: {len(tracked)} flags for {len(self.keypoints)} keypoints")
            tracked = _frozen(np.zeros(len(self.keypoints), bool), bool, (), "tracked")
        put(self, "tracked", tracked)
        if self.T_wc is not None:
            T = _frozen(self.T_wc, np.float64, None, "T_wc")
            if T.shape != (4, 4):
                raise ValueError(f"ViewerSnapshot.T_wc: expected shape (4, 4), got {T.shape}")
            put(self, "T_wc", T)
        put(self, "keyframe_T_wc", _frozen(self.keyframe_T_wc, np.float64, (4, 4), "keyframe_T_wc"))
        put(self, "trajectory_xyz", _frozen(self.trajectory_xyz, np.float64, (3,), "trajectory_xyz"))
        put(self, "points_xyz", _frozen(self.points_xyz, np.float32, (3,), "points_xyz"))
        rgb = _frozen(self.points_rgb, np.uint8, (3,), "points_rgb")
        if len(rgb) != len(self.points_xyz):
            if len(rgb) != 0:
                raise ValueError(f"ViewerSnapshot.points_rgb: {len(rgb)} colours for {len(self.points_xyz)} points")
            rgb = _frozen(np.full((len(self.points_xyz), 3), 200, np.uint8), np.uint8, (3,), "points_rgb")
        put(self, "points_rgb", rgb)
        put(self, "gt_xyz", _frozen(self.gt_xyz, np.float64, (3,), "gt_xyz"))
        if self.num_tracked is None:
            put(self, "num_tracked", int(np.count_nonzero(self.tracked)))
        if self.num_keyframes is None:
            put(self, "num_keyframes", len(self.keyframe_T_wc))
        if self.num_map_points is None:
            put(self, "num_map_points", len(self.points_xyz))


class SnapshotChannel:
    """A bounded, thread-safe hand-over of snapshots from the SLAM threads to the viewer.

    ``put`` never blocks: when ``maxsize`` snapshots are waiting, the oldest is dropped. ``get_latest``
    returns the newest snapshot and discards the older ones, since the viewer only ever draws the newest.
    """

    def __init__(self, maxsize: int = 2) -> None:
        if maxsize < 1:
            raise ValueError(f"SnapshotChannel: maxsize must be >= 1, got {maxsize}")
        self._queue: collections.deque[ViewerSnapshot] = collections.deque(maxlen=maxsize)
        self._cond = threading.Condition()
        self._dropped = 0
        self._put = 0

    def put(self, snapshot: ViewerSnapshot) -> None:
        """Offer a snapshot; drops the oldest waiting one when full. Never blocks on the consumer."""
        with self._cond:
            if len(self._queue) == self._queue.maxlen:
                self._dropped += 1
            self._queue.append(snapshot)
            self._put += 1
            self._cond.notify_all()

    def get_latest(self, timeout: float | None = 0.0) -> ViewerSnapshot | None:
        """The newest waiting snapshot (older ones are discarded), or None after ``timeout`` seconds.

        ``timeout=0`` polls, ``None`` waits until a snapshot arrives.
        """
        with self._cond:
            if not self._queue and timeout != 0:
                self._cond.wait_for(lambda: bool(self._queue), timeout)
            if not self._queue:
                return None
            latest = self._queue.pop()
            self._dropped += len(self._queue)
            self._queue.clear()
            return latest

    def __len__(self) -> int:
        with self._cond:
            return len(self._queue)

    @property
    def dropped(self) -> int:
        """How many snapshots were never handed to the consumer (overwritten or skipped)."""
        with self._cond:
            return self._dropped

    @property
    def total_put(self) -> int:
        """How many snapshots were offered."""
        with self._cond:
            return self._put


class PlaybackControl:
    """Pause / step / cancel requests from the viewer to a producer that chooses to honour them.

    The producer calls :meth:`wait_turn` before each frame: it returns at once while running, blocks while
    paused until :meth:`step` grants one frame or :meth:`resume` is called, and returns False once
    :meth:`cancel` was called (the producer should then stop).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._paused = False
        self._steps = 0
        self._cancelled = False

    @property
    def paused(self) -> bool:
        with self._cond:
            return self._paused

    @property
    def cancelled(self) -> bool:
        with self._cond:
            return self._cancelled

    def pause(self) -> None:
        with self._cond:
            self._paused = True

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._steps = 0
            self._cond.notify_all()

    def step(self) -> None:
        """While paused, let the producer process one more frame."""
        with self._cond:
            self._steps += 1
            self._cond.notify_all()

    def cancel(self) -> None:
        """Ask the producer to stop (Ctrl-C in the viewer); also releases a paused producer."""
        with self._cond:
            self._cancelled = True
            self._cond.notify_all()

    def wait_turn(self, timeout: float | None = None) -> bool:
        """Block while paused without a granted step; False when cancelled or ``timeout`` ran out."""
        with self._cond:
            ok = self._cond.wait_for(lambda: self._cancelled or not self._paused or self._steps > 0, timeout)
            if not ok or self._cancelled:
                return False
            if self._paused:
                self._steps -= 1
            return True
