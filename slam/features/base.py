"""The interface every keypoint extractor implements, and the container it returns."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


@dataclass
class Features:
    """Keypoints of one image.

    Attributes:
        keypoints: ``(N, 2)`` float32 pixel coordinates (x, y) in the *distorted* input image.
        descriptors: ``(N, D)``; uint8 packed bits when ``binary`` (ORB, D=32), else float32 (SIFT D=128,
            SuperPoint D=256), L2-normalised for float descriptors (RootSIFT for SIFT).
        octaves: ``(N,)`` int32 pyramid level (0 = full resolution); scales the matching uncertainty.
        sizes: ``(N,)`` float32 keypoint diameter in pixels.
        angles: ``(N,)`` float32 orientation in degrees (-1 if none).
        responses: ``(N,)`` float32 detector response.
        binary: descriptors are binary (compare with Hamming distance).
        scale_factor: ratio between consecutive octaves (sigma of level l is ``scale_factor ** l``).
    """

    keypoints: np.ndarray
    descriptors: np.ndarray
    octaves: np.ndarray
    sizes: np.ndarray
    angles: np.ndarray
    responses: np.ndarray
    binary: bool = False
    scale_factor: float = 2.0

    def __len__(self) -> int:
        return len(self.keypoints)

    def subset(self, index: np.ndarray) -> "Features":
        """The features selected by an index or boolean array."""
        return Features(
            self.keypoints[index], self.descriptors[index], self.octaves[index], self.sizes[index],
            self.angles[index], self.responses[index], self.binary, self.scale_factor,
        )

    @staticmethod
    def empty(descriptor_dim: int, binary: bool, scale_factor: float = 2.0) -> "Features":
        dtype = np.uint8 if binary else np.float32
        return Features(
            np.zeros((0, 2), np.float32), np.zeros((0, descriptor_dim), dtype), np.zeros(0, np.int32),
            np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32), binary, scale_factor,
        )


class FeatureExtractor(ABC):
    """Detects keypoints and computes descriptors on ``(H, W)`` uint8 grayscale images."""

    name: str = "base"
    binary: bool = False
    descriptor_dim: int = 0

    @abstractmethod
    def extract(self, gray: np.ndarray, mask: np.ndarray | None = None) -> Features:
        """Detect up to the configured number of keypoints, spread evenly, only where ``mask`` is non-zero."""

    @abstractmethod
    def describe(
        self, gray: np.ndarray, keypoints: np.ndarray, octaves: np.ndarray | None = None
    ) -> tuple[Features, np.ndarray]:
        """Descriptors for given keypoints ``(N, 2)`` (e.g. corners carried by optical flow).

        Returns the Features of the keypoints that could be described (in input order) and ``(M,)`` int64
        indices of those keypoints in the input.
        """
