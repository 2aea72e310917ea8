"""Video files (mp4, avi, mkv, mov, ...) through OpenCV's ``VideoCapture``.

Timestamps come from the container (``CAP_PROP_POS_MSEC`` of each decoded frame). Where the container
gives none (all zero or going backwards) the frame index over the container's frame rate is used instead,
with a warning. The calibration is ``--calib FILE``, else a ``calib.txt`` beside the video. A video that
cannot be opened or has no decodable frame is an :class:`InputError` naming the file.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

from slam.camera import Camera
from slam.errors import CalibrationError, InputError
from slam.sources.calib import load_calibration
from slam.sources.raw import RawFrame, RawReader

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv", ".flv")


def is_video(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS


class VideoReader(RawReader):
    """Frames of one video file (see the module docstring)."""

    def __init__(self, path: str | Path, calib: str | Path | None = None, fps: float = 30.0) -> None:
        self.path = Path(path)
        self.name = f"video:{self.path.name}"
        if not self.path.is_file():
            raise InputError(f"{self.path}: video file not found")
        if self.path.stat().st_size == 0:
            raise InputError(f"{self.path}: video file is empty (0 bytes)")
        cap = self._open()
        try:
            ok, frame = cap.read()
            if not ok or frame is None:
                raise InputError(f"{self.path}: no decodable video frame (empty, corrupt or unsupported codec)")
            height, width = frame.shape[:2]
            self._count = int(cap.get(_cv2().CAP_PROP_FRAME_COUNT) or 0)
            container_fps = float(cap.get(_cv2().CAP_PROP_FPS) or 0.0)
        finally:
            cap.release()
        self.fps = container_fps if 0.0 < container_fps < 1000.0 else fps
        calib_path = Path(calib) if calib else self.path.with_name("calib.txt")
        if not calib_path.is_file() and not calib:
            raise CalibrationError(
                f"{self.path}: a video needs its intrinsics: pass --calib FILE "
                "(one line 'fx fy cx cy [k1 k2 p1 p2 [k3]]') or put calib.txt beside the video"
            )
        self._camera: Camera = load_calibration(calib_path, width, height)

    def _open(self):
        cv2 = _cv2()
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            cap.release()
            raise InputError(f"{self.path}: cannot open video (corrupt file or no decoder for this format)")
        return cap

    @property
    def camera(self) -> Camera:
        return self._camera

    def count(self) -> int | None:
        return self._count if self._count > 0 else None

    def frames(self, start: int, stride: int) -> Iterator[RawFrame]:
        cv2 = _cv2()
        cap = self._open()
        try:
            index = -1
            last_ts = None
            use_container_time = True
            offset = 0.0
            while True:
                if not cap.grab():
                    return
                index += 1
                ts_ms = cap.get(cv2.CAP_PROP_POS_MSEC)
                ts = ts_ms / 1000.0 if ts_ms is not None else None
                if use_container_time and (ts is None or (last_ts is not None and ts <= last_ts)):
                    log.warning("%s: container timestamps missing or not increasing from frame %d; "
                                "continuing at %.3g fps", self.path, index, self.fps)
                    use_container_time = False
                    offset = last_ts - (index - 1) / self.fps if last_ts is not None else 0.0
                if use_container_time:
                    last_ts = ts
                else:
                    ts = offset + index / self.fps
                if index < start or (index - start) % stride:
                    continue
                ok, frame = cap.retrieve()
                if not ok or frame is None:
                    yield RawFrame(index, ts, None, str(self.path), f"{self.path}: frame {index} cannot be decoded")
                    continue
                yield RawFrame(index, ts, frame, None)
        finally:
            cap.release()


def _cv2():
    import cv2

    return cv2
