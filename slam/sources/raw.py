"""The reader layer under every frame source: native frames, before the options of :class:`SourceConfig`.

A :class:`RawReader` knows one layout (folder, video, TUM, ...): its native camera, mask and ground truth,
and how to produce frames from a start index with a stride. It does not resize, limit, convert or log
unreadable frames: :class:`slam.sources.configured.ConfiguredSource` does that once for all readers.
:class:`ImageListReader` is the reader of every layout that is a list of image files.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, TYPE_CHECKING

import numpy as np

from slam.camera import Camera
from slam.errors import InputError
from slam.sources.images import FrameReadError, read_image

if TYPE_CHECKING:
    from slam.evaluation.trajectory import Trajectory


@dataclass(frozen=True)
class RawFrame:
    """One native frame.

    Attributes:
        raw_index: index in the whole sequence (before start/stride).
        timestamp: seconds, or ``None`` when the layout has none (then ``raw_index / fps`` is used).
        image: decoded image (any dtype/channels :func:`slam.sources.images.to_uint8` accepts), or ``None``
            when the frame could not be read.
        path: file it came from, or ``None``.
        error: why ``image`` is ``None``.
    """

    raw_index: int
    timestamp: float | None
    image: np.ndarray | None
    path: str | None = None
    error: str | None = None


class RawReader(ABC):
    """Native frames of one layout."""

    name: str = "raw"

    @property
    @abstractmethod
    def camera(self) -> Camera:
        """Calibration at the native frame size."""

    @property
    def mask(self) -> np.ndarray | None:
        """``(H, W)`` uint8 native-size mask (non-zero = usable), or ``None``."""
        return None

    @property
    def groundtruth(self) -> "Trajectory | None":
        """Camera-to-world ground truth, timestamps in the same clock as the frames, or ``None``."""
        return None

    def count(self) -> int | None:
        """Total number of frames in the sequence, or ``None`` when unknown (live camera)."""
        return None

    @abstractmethod
    def frames(self, start: int, stride: int) -> Iterator[RawFrame]:
        """Frames ``start, start + stride, ...`` in order (unreadable ones with ``image=None``)."""

    def close(self) -> None:
        """Release files or devices (idempotent)."""


def first_readable_size(paths: list[Path], what: str) -> tuple[int, int]:
    """``(width, height)`` of the first image in ``paths`` that decodes; InputError when none does."""
    reasons = []
    for path in paths:
        try:
            image = read_image(path)
        except FrameReadError as exc:
            reasons.append(str(exc))
            if len(reasons) >= 20:
                break
            continue
        return int(image.shape[1]), int(image.shape[0])
    detail = "; ".join(reasons[:3])
    raise InputError(f"{what}: none of the first {len(reasons)} images can be read ({detail})")


class ImageListReader(RawReader):
    """Frames from a list of image files with optional timestamps.

    Args:
        name: shown in logs and ``FrameSource.name``.
        paths: image files in frame order.
        camera: native calibration (its size must be the frames' size).
        timestamps: ``(N,)`` seconds, or ``None`` (``raw_index / fps`` is used).
        mask: native-size mask or ``None``.
        groundtruth: camera-to-world trajectory or ``None``.
    """

    def __init__(
        self,
        name: str,
        paths: list[Path],
        camera: Camera,
        timestamps: np.ndarray | None = None,
        mask: np.ndarray | None = None,
        groundtruth: "Trajectory | None" = None,
    ) -> None:
        if not paths:
            raise InputError(f"{name}: no frames")
        if timestamps is not None and len(timestamps) != len(paths):
            raise InputError(f"{name}: {len(timestamps)} timestamps for {len(paths)} images")
        self.name = name
        self.paths = list(paths)
        self._camera = camera
        self.timestamps = None if timestamps is None else np.asarray(timestamps, dtype=np.float64)
        self._mask = mask
        self._groundtruth = groundtruth

    @property
    def camera(self) -> Camera:
        return self._camera

    @property
    def mask(self) -> np.ndarray | None:
        return self._mask

    @property
    def groundtruth(self) -> "Trajectory | None":
        return self._groundtruth

    def count(self) -> int:
        return len(self.paths)

    def frames(self, start: int, stride: int) -> Iterator[RawFrame]:
        for i in range(start, len(self.paths), stride):
            path = self.paths[i]
            ts = None if self.timestamps is None else float(self.timestamps[i])
            try:
                image = read_image(path)
            except FrameReadError as exc:
                yield RawFrame(i, ts, None, str(path), str(exc))
                continue
            yield RawFrame(i, ts, image, str(path))
