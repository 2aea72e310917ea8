"""A live camera (``--camera INDEX|URL``) through OpenCV's ``VideoCapture``.

Timestamps are seconds since the capture started (monotonic clock at the moment a frame was grabbed).
With ``realtime=True`` a background thread grabs continuously and keeps only the newest frame, so a slow
consumer processes the latest image instead of falling ever further behind (stale frames are dropped;
``start``/``stride`` then count delivered frames). With ``realtime=False`` every frame is read in order.
A camera that stops delivering frames (unplugged, stream ended, no frame for ``timeout_s``) ends the
iteration with a logged warning.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Iterator

import numpy as np

from slam.camera import Camera
from slam.errors import CalibrationError, InputError
from slam.sources.calib import load_calibration
from slam.sources.raw import RawFrame, RawReader

log = logging.getLogger(__name__)


def parse_camera(camera: str | int) -> str | int:
    """``"0"`` -> 0 (device index); anything else (URL, device path) unchanged."""
    if isinstance(camera, int):
        return camera
    text = str(camera).strip()
    return int(text) if text.isdigit() else text


class _LatestFrameGrabber:
    """Background thread that keeps only the newest frame of a capture (no busy waiting)."""

    def __init__(self, cap, t0: float) -> None:
        self._cap = cap
        self._t0 = t0
        self._cond = threading.Condition()
        self._frame: np.ndarray | None = None
        self._stamp = 0.0
        self._seq = 0
        self._ended = False
        self._stop = False
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="live-camera-grabber", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._stop:
                    break
            ok, frame = self._cap.read()
            stamp = time.monotonic() - self._t0
            with self._cond:
                if not ok or frame is None:
                    self._ended = True
                    self._cond.notify_all()
                    return
                if self._frame is not None:
                    self.dropped += 1
                self._frame, self._stamp = frame, stamp
                self._seq += 1
                self._cond.notify_all()

    def next(self, timeout_s: float) -> tuple[np.ndarray, float] | None:
        """The newest frame not yet taken, waiting up to ``timeout_s``; ``None`` when the camera ended."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._frame is not None or self._ended, timeout=timeout_s):
                return None
            if self._frame is None:
                return None
            frame, stamp = self._frame, self._stamp
            self._frame = None
            return frame, stamp

    def stop(self, timeout_s: float = 5.0) -> bool:
        """Ask the thread to finish; True when it has (the capture may then be released)."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout=timeout_s)
        return not self._thread.is_alive()


class LiveReader(RawReader):
    """Frames of a live camera (see the module docstring).

    Args:
        camera: device index or stream URL.
        calib: calibration file (required: ``calib.txt`` line or EuRoC-style YAML).
        realtime: drop stale frames (grab in a background thread, keep the latest).
        timeout_s: a camera silent for this long counts as gone.
    """

    def __init__(
        self,
        camera: str | int,
        calib: str | None,
        realtime: bool = True,
        timeout_s: float = 5.0,
    ) -> None:
        self.device = parse_camera(camera)
        self.name = f"camera:{self.device}"
        self.realtime = realtime
        self.timeout_s = timeout_s
        if not calib:
            raise CalibrationError(
                f"camera {self.device!r}: a live camera needs its intrinsics; pass --calib FILE "
                "(one line 'fx fy cx cy [k1 k2 p1 p2 [k3]]')"
            )
        cap = self._open()
        try:
            ok, frame = cap.read()
        finally:
            cap.release()
        if not ok or frame is None:
            raise InputError(f"camera {self.device!r}: opened but delivered no frame")
        height, width = frame.shape[:2]
        self._camera: Camera = load_calibration(calib, width, height)

    def _open(self):
        import cv2

        cap = cv2.VideoCapture(self.device)
        if not cap.isOpened():
            cap.release()
            raise InputError(f"camera {self.device!r}: cannot open (no such device index, or the URL is unreachable)")
        return cap

    @property
    def camera(self) -> Camera:
        return self._camera

    def frames(self, start: int, stride: int) -> Iterator[RawFrame]:
        cap = self._open()
        t0 = time.monotonic()
        grabber = _LatestFrameGrabber(cap, t0) if self.realtime else None
        delivered = 0
        try:
            while True:
                if grabber is not None:
                    got = grabber.next(self.timeout_s)
                    if got is None:
                        log.warning("%s: camera stopped delivering frames; ending", self.name)
                        return
                    frame, stamp = got
                else:
                    ok, frame = cap.read()
                    stamp = time.monotonic() - t0
                    if not ok or frame is None:
                        log.warning("%s: camera stopped delivering frames; ending", self.name)
                        return
                index = delivered
                delivered += 1
                if index < start or (index - start) % stride:
                    continue
                yield RawFrame(index, stamp, frame, None)
        finally:
            released = True
            if grabber is not None:
                released = grabber.stop()
                if grabber.dropped:
                    log.info("%s: %d stale frame(s) dropped to stay real-time", self.name, grabber.dropped)
            if released:
                cap.release()
            else:
                log.warning("%s: grabber thread did not stop in time; capture left to the garbage collector", self.name)
