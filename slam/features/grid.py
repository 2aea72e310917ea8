"""Keypoint selection shared by the extractors: input checks, OpenCV keypoints to arrays, mask erosion and
look-up, and grid bucketing for an even spatial distribution.

Detectors are run with low thresholds so that they return more candidates than needed (typically 2-3x);
:func:`select_grid` then keeps the strongest candidates of every grid cell in turn (round robin over the
per-cell response ranks), so that a highly textured corner cannot take all the keypoints while a cell that
has few candidates still keeps its best ones. Pure functions on arrays (OpenCV keypoints only in
:func:`keypoint_arrays`).
"""

from __future__ import annotations

import numpy as np

from slam.config import FeatureConfig
from slam.errors import ConfigError, InputError


def check_config(cfg: FeatureConfig) -> None:
    """ConfigError for feature settings every extractor relies on."""
    if cfg.num_features <= 0:
        raise ConfigError(f"features.num_features must be > 0, got {cfg.num_features}")
    if cfg.grid_cols <= 0 or cfg.grid_rows <= 0:
        raise ConfigError(f"features.grid_cols and grid_rows must be > 0, got {cfg.grid_cols}x{cfg.grid_rows}")
    if cfg.clahe and (cfg.clahe_clip <= 0 or cfg.clahe_tiles <= 0):
        raise ConfigError(
            f"features.clahe_clip and clahe_tiles must be > 0, got {cfg.clahe_clip} and {cfg.clahe_tiles}"
        )


def check_gray(gray: np.ndarray) -> np.ndarray:
    """The ``(H, W)`` uint8 image, converted from BGR if needed; InputError for anything else."""
    gray = np.asarray(gray)
    if gray.dtype != np.uint8:
        raise InputError(f"feature extraction expects a uint8 image, got dtype {gray.dtype}")
    if gray.ndim == 3 and gray.shape[2] in (3, 4):
        from slam.features.photometric import to_gray

        gray = to_gray(gray[..., :3])
    if gray.ndim != 2:
        raise InputError(f"feature extraction expects an (H, W) grayscale image, got shape {gray.shape}")
    return np.ascontiguousarray(gray)


def keypoint_arrays(kps) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Arrays of a sequence of ``cv2.KeyPoint``: ``(N, 2)`` float32 xy, ``(N,)`` float32 size, angle,
    response and ``(N,)`` int64 packed octave (as OpenCV stores it)."""
    import cv2

    n = len(kps)
    if n == 0:
        z = np.zeros(0, np.float32)
        return np.zeros((0, 2), np.float32), z, z.copy(), z.copy(), np.zeros(0, np.int64)
    xy = cv2.KeyPoint_convert(kps).astype(np.float32).reshape(n, 2)
    size = np.fromiter((k.size for k in kps), np.float32, n)
    angle = np.fromiter((k.angle for k in kps), np.float32, n)
    response = np.fromiter((k.response for k in kps), np.float32, n)
    octave = np.fromiter((k.octave for k in kps), np.int64, n)
    return xy, size, angle, response, octave


def prepare_mask(mask: np.ndarray | None, shape: tuple[int, int], margin_px: int) -> np.ndarray | None:
    """``(H, W)`` bool usable-pixel mask eroded by ``margin_px``, or None when ``mask`` is None.

    ``mask`` is ``(H, W)`` (any dtype, non-zero = usable); ``shape`` is the image's ``(H, W)``. Erosion keeps
    keypoints (and most of their descriptor support) away from the mask's border, whose strong artificial
    edge (e.g. the black rim of an endoscope image) would otherwise attract detections.
    """
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.ndim == 3:
        mask = mask[..., 0]
    if mask.shape != tuple(shape):
        raise InputError(f"feature mask has shape {mask.shape} but the image is {tuple(shape)}; resize the mask")
    usable = (mask != 0).astype(np.uint8)
    if margin_px > 0:
        import cv2

        k = 2 * int(margin_px) + 1
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
        # Pixels outside the image count as usable so that only the mask's own border is eroded.
        usable = cv2.erode(usable, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=1)
    return usable.astype(bool)


def in_mask(xy: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """``(N,)`` bool: whether each ``(N, 2)`` pixel position (x, y) rounds to a usable pixel of ``mask``."""
    n = len(xy)
    if mask is None:
        return np.ones(n, bool)
    h, w = mask.shape
    ix = np.rint(xy[:, 0]).astype(np.int64)
    iy = np.rint(xy[:, 1]).astype(np.int64)
    inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    ok = np.zeros(n, bool)
    ok[inside] = mask[iy[inside], ix[inside]]
    return ok


def cell_index(xy: np.ndarray, width: int, height: int, cols: int, rows: int) -> np.ndarray:
    """``(N,)`` int64 row-major grid cell of each ``(N, 2)`` position in a ``width`` x ``height`` image."""
    cx = np.clip((xy[:, 0] * (cols / float(width))).astype(np.int64), 0, cols - 1)
    cy = np.clip((xy[:, 1] * (rows / float(height))).astype(np.int64), 0, rows - 1)
    return cy * cols + cx


def _rank_in_group(group: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``(N,)`` position of each element within its group, given ``order`` sorting by group first."""
    n = len(group)
    sorted_group = group[order]
    first = np.r_[0, np.flatnonzero(np.diff(sorted_group)) + 1]
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n) - np.repeat(first, np.diff(np.r_[first, n]))
    return rank


def select_grid(
    xy: np.ndarray,
    responses: np.ndarray,
    num: int,
    width: int,
    height: int,
    cols: int,
    rows: int,
) -> np.ndarray:
    """Indices of at most ``num`` keypoints spread over a ``cols`` x ``rows`` grid.

    Args:
        xy: ``(N, 2)`` pixel positions (x, y).
        responses: ``(N,)`` detector responses (larger = stronger).
        num: number of keypoints to keep.
        width, height: image size in pixels.
        cols, rows: grid size.

    Returns:
        ``(K,)`` int64 indices, K = min(N, num). Every cell's best candidate comes before any cell's second
        best, and so on; within one rank stronger responses win. Cells with few candidates thus keep all of
        them and their unused share goes to the other cells.
    """
    n = len(xy)
    if n <= num:
        return np.argsort(-responses, kind="stable").astype(np.int64)
    cell = cell_index(xy, width, height, cols, rows)
    rank = _rank_in_group(cell, np.lexsort((-responses, cell)))  # by cell, then by decreasing response
    return np.lexsort((-responses, rank))[:num].astype(np.int64)


def level_shares(levels: int, scale_factor: float) -> np.ndarray:
    """``(levels,)`` share of keypoints per pyramid level, proportional to ``scale_factor ** -level`` (as ORB
    and ORB-SLAM share them out), summing to 1."""
    share = scale_factor ** -np.arange(levels, dtype=np.float64)
    return share / share.sum()


def select_grid_levels(
    xy: np.ndarray,
    responses: np.ndarray,
    levels: np.ndarray,
    shares: np.ndarray,
    num: int,
    width: int,
    height: int,
    cols: int,
    rows: int,
) -> np.ndarray:
    """:func:`select_grid` for keypoints of several pyramid levels whose responses are not comparable.

    Across cells it is the same round robin; within a cell the candidates are taken level by level in
    proportion to ``shares`` (``(L,)``, e.g. :func:`level_shares`), strongest first within a level, so the
    fine levels, which localise best, keep their share wherever there are candidates for them.
    ``levels`` is ``(N,)`` int in ``[0, L)``. Returns ``(K,)`` int64 indices, K = min(N, num).
    """
    n = len(xy)
    levels = np.asarray(levels, np.int64)
    cell = cell_index(xy, width, height, cols, rows)
    group = cell * len(shares) + levels
    rank_level = _rank_in_group(group, np.lexsort((-responses, group)))
    priority = (rank_level + 0.5) / np.asarray(shares, np.float64)[levels]  # order of taking within a cell
    rank_cell = _rank_in_group(cell, np.lexsort((-responses, priority, cell)))
    return np.lexsort((priority, rank_cell))[: min(n, num)].astype(np.int64)
