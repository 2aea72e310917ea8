"""Photometric normalisation of images before feature extraction or flow."""

from __future__ import annotations

import numpy as np


def to_gray(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` uint8 luminance of a grayscale or BGR uint8 image."""
    import cv2

    if image.ndim == 2:
        return image
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)


def normalize_luminance(gray: np.ndarray, clip_limit: float = 2.0, tiles: int = 8) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation (OpenCV CLAHE) of a ``(H, W)`` uint8 image."""
    import cv2

    clahe = cv2.createCLAHE(clipLimit=float(clip_limit), tileGridSize=(int(tiles), int(tiles)))
    return clahe.apply(gray)
