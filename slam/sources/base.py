"""The one interface every frame source implements.

A source yields :class:`FrameData` in order; it exposes its :class:`~slam.camera.Camera`, an optional
field-of-view mask and optional ground truth (a :class:`~slam.evaluation.trajectory.Trajectory`,
camera-to-world). Frames that cannot be read are logged (file and reason) and skipped.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Iterator, TYPE_CHECKING

import numpy as np

from slam.camera import Camera

if TYPE_CHECKING:
    from slam.evaluation.trajectory import Trajectory


@dataclass(frozen=True)
class FrameData:
    """One frame.

    Attributes:
        index: position in the source (after start/stride), 0-based.
        timestamp: seconds.
        image: ``(H, W)`` uint8 grayscale or ``(H, W, 3)`` uint8 BGR, matching ``camera`` size.
        path: file it came from, or ``None`` (video, live camera).
    """

    index: int
    timestamp: float
    image: np.ndarray
    path: str | None = None


class FrameSource(ABC):
    """Iterates frames of one sequence."""

    name: str = "source"

    @property
    @abstractmethod
    def camera(self) -> Camera:
        """Calibration of the frames as yielded (after any resize)."""

    @property
    def mask(self) -> np.ndarray | None:
        """``(H, W)`` uint8, non-zero = usable pixels, or ``None``."""
        return None

    @property
    def groundtruth(self) -> "Trajectory | None":
        """Ground-truth camera-to-world trajectory, or ``None``."""
        return None

    def __len__(self) -> int:
        """Number of frames that will be yielded (an estimate for video; 0 when unknown, e.g. live)."""
        return 0

    @abstractmethod
    def __iter__(self) -> Iterator[FrameData]:
        ...

    def close(self) -> None:
        """Release files or devices (idempotent)."""
