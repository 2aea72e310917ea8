"""Reading image files as the uint8 arrays every source yields, and listing the images of a folder.

Conventions: grayscale stays ``(H, W)``, colour becomes ``(H, W, 3)`` BGR (OpenCV order). 16-bit images
are scaled to 8 bit (``v / 257``, full range to full range), float images in ``[0, 1]`` are scaled by 255,
alpha is dropped; CMYK files are converted by the decoder (OpenCV, or Pillow as a fallback for files OpenCV
cannot decode).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from slam.errors import InputError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".webp")


class FrameReadError(InputError):
    """One frame could not be read (the source logs it and skips the frame)."""


def natural_key(name: str) -> tuple:
    """Sort key that orders embedded numbers numerically (``frame_2`` before ``frame_10``)."""
    return tuple(int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", name))


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by file name (numbers compared numerically)."""
    folder = Path(folder)
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(files, key=lambda p: natural_key(p.name))


def to_uint8(image: np.ndarray, source: str = "image") -> np.ndarray:
    """Convert a decoded image to ``(H, W)`` uint8 gray or ``(H, W, 3)`` uint8 BGR.

    Raises :class:`FrameReadError` for shapes that are not an image (e.g. 0-sized or 4-D).
    """
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim not in (2, 3) or img.shape[0] == 0 or img.shape[1] == 0:
        raise FrameReadError(f"{source}: not an image (array shape {img.shape})")
    if img.ndim == 3:
        channels = img.shape[2]
        if channels == 2:  # gray + alpha
            img = img[:, :, 0]
        elif channels == 4:  # BGRA (OpenCV also decodes CMYK TIFF to BGRA)
            img = img[:, :, :3]
        elif channels != 3:
            raise FrameReadError(f"{source}: unsupported number of channels {channels}")
    if img.dtype == np.uint8:
        return np.ascontiguousarray(img)
    if img.dtype == np.uint16:
        return ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if img.dtype == np.int8:
        return (img.astype(np.int16) + 128).astype(np.uint8)
    if np.issubdtype(img.dtype, np.floating):
        data = np.nan_to_num(img.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        peak = float(data.max()) if data.size else 0.0
        if peak <= 1.0:
            data = data * 255.0
        return np.clip(np.rint(data), 0, 255).astype(np.uint8)
    if np.issubdtype(img.dtype, np.integer):
        data = img.astype(np.float64)
        bits = np.iinfo(img.dtype).bits
        scale = 255.0 / (2.0 ** min(bits, 32) - 1.0) if data.max() > 255 else 1.0
        return np.clip(np.rint(data * scale), 0, 255).astype(np.uint8)
    if img.dtype == np.bool_:
        return img.astype(np.uint8) * 255
    raise FrameReadError(f"{source}: unsupported pixel type {img.dtype}")


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as uint8 gray ``(H, W)`` or BGR ``(H, W, 3)``.

    Raises :class:`FrameReadError` naming the file and the reason (missing, empty, undecodable).
    """
    import cv2

    path = Path(path)
    if not path.is_file():
        raise FrameReadError(f"{path}: image file not found")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise FrameReadError(f"{path}: cannot access image ({exc.strerror})") from exc
    if size == 0:
        raise FrameReadError(f"{path}: image file is empty (0 bytes)")
    # np.fromfile + imdecode also copes with non-ASCII paths
    try:
        buf = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise FrameReadError(f"{path}: cannot read image ({exc.strerror})") from exc
    image = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if image is None:
        image = _read_with_pillow(path)
    if image is None:
        raise FrameReadError(f"{path}: cannot decode image (corrupt or unsupported format)")
    return to_uint8(image, str(path))


def _read_with_pillow(path: Path) -> np.ndarray | None:
    """Fallback decoder for files OpenCV rejects; ``None`` when Pillow is missing or fails too."""
    try:
        from PIL import Image
    except ImportError:
        return None
    try:
        with Image.open(path) as im:
            if im.mode in ("L", "I;16", "I;16B", "I;16L", "I", "F"):
                return np.asarray(im)
            rgb = np.asarray(im.convert("RGB"))
    except Exception:  # noqa: BLE001 - any decoder failure means "cannot decode"
        return None
    return np.ascontiguousarray(rgb[:, :, ::-1])


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask image as ``(H, W)`` uint8 with 255 = usable, 0 = masked (non-zero counts as usable)."""
    try:
        image = read_image(path)
    except FrameReadError as exc:
        raise InputError(f"mask {exc}") from exc
    if image.ndim == 3:
        image = image.max(axis=2)
    return np.where(image > 0, 255, 0).astype(np.uint8)
