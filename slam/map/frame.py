"""A tracked frame: its keypoints, their map-point associations and its pose."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from slam.features.base import Features


@dataclass(eq=False)
class Frame:
    """One input frame as the tracker sees it.

    Attributes:
        index, timestamp: position and time in the source.
        gray: ``(H, W)`` uint8 luminance (contrast-normalised when the config says so).
        features: keypoints in distorted pixels and their descriptors (descriptors may be empty for the
            optical-flow front end between keyframes).
        kp_undist: ``(N, 2)`` undistorted pixels of the ideal pinhole camera.
        inv_sigma2: ``(N,)`` keypoint information weights.
        point_ids: ``(N,)`` int64 matched map point id or -1.
        colors: ``(N, 3)`` uint8 RGB at the keypoints.
        T_cw: ``(4, 4)`` world-to-camera pose once tracked.
        track_ids: ``(N,)`` optical-flow track id of each keypoint (flow front end), else None.
        centre_sigma: the largest standard deviation (map units) of the camera centre as motion-only BA on
            the tracked map points placed it (:mod:`slam.optim.pose_uncertainty`); 0 where another path
            placed the frame (initialisation, a turn in place, two-view motion) or none was computed.
    """

    index: int
    timestamp: float
    gray: np.ndarray
    features: Features
    kp_undist: np.ndarray
    inv_sigma2: np.ndarray
    colors: np.ndarray
    point_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    T_cw: np.ndarray | None = None
    track_ids: np.ndarray | None = None
    image: np.ndarray | None = None
    mask: np.ndarray | None = None  # (H, W) uint8 usable pixels of this frame (flow front end)
    centre_sigma: float = 0.0

    def __post_init__(self) -> None:
        if len(self.point_ids) != len(self.features):
            self.point_ids = np.full(len(self.features), -1, dtype=np.int64)

    @property
    def num_matched(self) -> int:
        return int(np.count_nonzero(self.point_ids >= 0))
