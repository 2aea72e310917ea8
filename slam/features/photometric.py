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


def _masked_lowpass(img: np.ndarray, sigma: float, mask: np.ndarray | None) -> np.ndarray:
    """Large-scale ``(H, W)`` float32 brightness: Gaussian blur of sigma ``sigma`` px, computed on a
    downscaled copy (the result is smooth anyway); with ``mask`` a normalised convolution, so the black
    border does not darken the field of view's rim."""
    import cv2

    h, w = img.shape
    f = min(1.0, 8.0 / max(sigma, 1e-6))  # about 8 samples per sigma are plenty
    small_size = (max(2, int(round(w * f))), max(2, int(round(h * f))))
    small = cv2.resize(img.astype(np.float32), small_size, interpolation=cv2.INTER_AREA)
    s = sigma * f
    if mask is None:
        low = cv2.GaussianBlur(small, (0, 0), s, borderType=cv2.BORDER_REFLECT)
    else:
        m = cv2.resize((np.asarray(mask) > 0).astype(np.float32), small_size, interpolation=cv2.INTER_AREA)
        num = cv2.GaussianBlur(small * m, (0, 0), s, borderType=cv2.BORDER_CONSTANT)
        den = cv2.GaussianBlur(m, (0, 0), s, borderType=cv2.BORDER_CONSTANT)
        low = num / np.maximum(den, 1e-3)
    return cv2.resize(low, (w, h), interpolation=cv2.INTER_LINEAR)


def flatten_illumination(
    gray: np.ndarray, sigma: float | None = None, mask: np.ndarray | None = None, floor: float = 4.0
) -> np.ndarray:
    """Divide out slowly varying brightness (vignetting, light fall-off with distance): ``(H, W)`` uint8.

    ``gray`` (H, W) uint8 is divided by its own blur of ``sigma`` px (default 1/16 of the larger image side)
    and rescaled to the original mean, so texture keeps its local contrast wherever the light is.
    ``mask`` (non-zero = usable, e.g. the field of view) keeps the black border out of the estimate; pixels
    outside it become 0. ``floor`` bounds the divisor so that dark noise is not blown up.
    """
    import cv2

    gray = np.asarray(gray)
    if sigma is None:
        sigma = max(gray.shape) / 16.0
    low = _masked_lowpass(gray, float(sigma), mask)
    valid = None if mask is None else np.asarray(mask) > 0
    mean = float(gray[valid].mean()) if valid is not None and valid.any() else float(gray.mean())
    out = gray.astype(np.float32) * (mean / np.maximum(low, float(floor)))
    out = np.clip(out, 0, 255).astype(np.uint8)
    if valid is not None:
        out[~valid] = 0
    return out


def brightness_change(gray_a: np.ndarray, gray_b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Ratio of image ``gray_b``'s median brightness to ``gray_a``'s (both ``(H, W)`` uint8), over ``mask``.

    1.0 means no change; a value far from 1 (auto exposure, the light source switching) warns that
    brightness-constancy steps (optical flow, direct alignment) need a gain compensation.
    """
    a = np.asarray(gray_a)
    b = np.asarray(gray_b)
    if mask is not None:
        valid = np.asarray(mask) > 0
        a, b = a[valid], b[valid]
    ma = float(np.median(a)) if a.size else 0.0
    mb = float(np.median(b)) if b.size else 0.0
    return (mb + 1.0) / (ma + 1.0)
