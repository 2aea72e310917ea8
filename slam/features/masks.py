"""Masks of the pixels that may give features: the endoscope's field of view and specular highlights.

Conventions: every mask is an ``(H, W)`` uint8 array, 255 = usable (or, for :func:`specular_mask`,
255 = highlight), 0 = not. Images are ``(H, W)`` gray or ``(H, W, 3)`` BGR uint8.

Field of view. An endoscope image is a bright disc (or rounded rectangle) on a black border that may carry
text overlays and sensor noise; the disc may be clipped by the image edges. :class:`FovMaskEstimator`
accumulates the first frames as a per-pixel high percentile of their (downscaled) luminance, so that a
single dark frame or a dark moving structure does not carve the region, thresholds it just above the
black level, keeps the largest region and fills its holes. A circle is fitted to the region's outline by
RANSAC (points on the image edges excluded) and a rounded rectangle by robust edge percentiles; the circle
is kept when most of the outline lies on it and the region inside it, else the model that explains the
region best. The mask is that model intersected with the region's convex hull, so that a disc clipped by
something other than the image edges (sinus_dev: curved cuts at top and bottom) is still followed, while
dark structures at the rim do not dent it and text touching the outline is cut off. Without a black border
(ordinary video) the mask is the full image, shape ``"full"``. :meth:`FovMaskEstimator.recheck` compares a
later frame with the mask (light where the border should be black means the scope or crop changed).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from slam.errors import InputError

log = logging.getLogger(__name__)

WORK_WIDTH = 640  # the field of view is estimated at this image width (or less)
_MIN_BORDER_FRACTION = 0.01  # a black border must cover at least this share of the image
_MIN_MODEL_IOU = 0.88  # region vs. best shape model; below this the border is not an endoscope's


@dataclass
class FovMask:
    """The field-of-view mask of an image.

    Attributes:
        mask: ``(H, W)`` uint8, 255 = usable pixel (already eroded by the margin).
        shape: ``"circle"``, ``"rounded_rect"`` or ``"full"`` (no border found).
        params: full-resolution model parameters: circle ``{"centre": (cx, cy), "radius": r}``; rounded
            rectangle ``{"rect": (x0, y0, x1, y1), "corner_radius": r}``; ``{}`` for ``"full"``.
        confidence: in [0, 1]; for a border, the IoU of the thresholded region with the fitted model; for
            ``"full"``, how clearly no border was found (1 = no dark pixels at all).
        threshold: brightness (0-255) below which a pixel counts as border; used by rechecks.
    """

    mask: np.ndarray
    shape: str
    params: dict = field(default_factory=dict)
    confidence: float = 1.0
    threshold: float = 0.0


# --------------------------------------------------------------------------------------------- helpers
def _gray(image: np.ndarray) -> np.ndarray:
    import cv2

    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise InputError(f"expected a uint8 image, got dtype {image.dtype}")
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if image.ndim == 3 and image.shape[2] == 1:
        return image[:, :, 0]
    raise InputError(f"expected an (H, W) or (H, W, 3) image, got shape {image.shape}")


def _work_scale(width: int) -> float:
    return min(1.0, WORK_WIDTH / float(width))


def _downscale(gray: np.ndarray, scale: float) -> np.ndarray:
    import cv2

    if scale >= 1.0:
        return gray
    h, w = gray.shape
    size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
    return cv2.resize(gray, size, interpolation=cv2.INTER_AREA)


def _fill_holes(region: np.ndarray) -> np.ndarray:
    """``region`` (H, W) uint8 0/1 with its holes filled (outer contours drawn filled)."""
    import cv2

    contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    filled = np.zeros_like(region)
    cv2.drawContours(filled, contours, -1, 1, thickness=-1)
    return filled


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    a = a > 0
    b = b > 0
    union = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b)) / union if union else 1.0


def erode_mask(mask: np.ndarray, px: int) -> np.ndarray:
    """``mask`` (H, W) eroded by a disc of radius ``px``; the image edges count as border (uint8 0/255)."""
    import cv2

    out = np.where(np.asarray(mask) > 0, 255, 0).astype(np.uint8)
    px = int(px)
    if px <= 0:
        return out
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1, 2 * px + 1))
    return cv2.erode(out, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)


def usable_at(mask: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """``(N,)`` bool: whether ``mask (H, W)`` (non-zero = usable) is usable at the nearest pixel of each of
    ``uv (N, 2)`` (x, y); positions outside the image take the nearest edge pixel."""
    h, w = mask.shape[:2]
    xi = np.clip(np.rint(uv[:, 0]).astype(int), 0, w - 1)
    yi = np.clip(np.rint(uv[:, 1]).astype(int), 0, h - 1)
    return mask[yi, xi] > 0


def combine_masks(*masks: np.ndarray | None) -> np.ndarray | None:
    """Pixel-wise AND of usable-masks (non-zero = usable); ``None`` entries are ignored.

    Returns ``(H, W)`` uint8 0/255, or ``None`` when every input is ``None``.
    """
    out: np.ndarray | None = None
    for m in masks:
        if m is None:
            continue
        m = np.asarray(m)
        if out is not None and m.shape[:2] != out.shape[:2]:
            raise ValueError(f"cannot combine masks of shapes {out.shape} and {m.shape}")
        usable = m > 0
        out = usable if out is None else (out & usable)
    return None if out is None else np.where(out, 255, 0).astype(np.uint8)


def load_mask(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a mask image (non-zero = usable) as ``(H, W)`` uint8 0/255, resized (nearest) to ``shape (H, W)``."""
    import cv2

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: mask file not found")
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise InputError(f"{path}: not a readable image")
    if raw.ndim == 3:
        raw = raw.max(axis=2)
    mask = np.where(raw > 0, 255, 0).astype(np.uint8)
    if not mask.any():
        raise InputError(f"{path}: mask has no usable (non-zero) pixel")
    if shape is not None and mask.shape != tuple(shape):
        h, w = int(shape[0]), int(shape[1])
        if abs(mask.shape[1] / mask.shape[0] - w / h) > 0.02:
            raise InputError(f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} but the images are {w}x{h}")
        mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
    return mask


# ------------------------------------------------------------------------------------------ shape fits
def _circle_from_3(p: np.ndarray) -> tuple[float, float, float] | None:
    """Circle through three points ``(3, 2)``; None when (nearly) collinear."""
    (x1, y1), (x2, y2), (x3, y3) = p
    d = 2.0 * (x1 * (y2 - y3) + x2 * (y3 - y1) + x3 * (y1 - y2))
    if abs(d) < 1e-9:
        return None
    s1, s2, s3 = x1 * x1 + y1 * y1, x2 * x2 + y2 * y2, x3 * x3 + y3 * y3
    cx = (s1 * (y2 - y3) + s2 * (y3 - y1) + s3 * (y1 - y2)) / d
    cy = (s1 * (x3 - x2) + s2 * (x1 - x3) + s3 * (x2 - x1)) / d
    return cx, cy, float(np.hypot(x1 - cx, y1 - cy))


def _circle_least_squares(pts: np.ndarray) -> tuple[float, float, float]:
    """Algebraic (Kasa) circle fit to ``pts (N, 2)``: solves x^2 + y^2 + D x + E y + F = 0."""
    a = np.column_stack([pts[:, 0], pts[:, 1], np.ones(len(pts))])
    b = -(pts[:, 0] ** 2 + pts[:, 1] ** 2)
    (d, e, f), *_ = np.linalg.lstsq(a, b, rcond=None)
    cx, cy = -d / 2.0, -e / 2.0
    return float(cx), float(cy), float(np.sqrt(max(cx * cx + cy * cy - f, 0.0)))


def fit_circle_ransac(
    pts: np.ndarray, tol: float, iterations: int = 300, seed: int = 0
) -> tuple[tuple[float, float, float], np.ndarray] | None:
    """Robust circle fit to outline points ``(N, 2)``: RANSAC on 3-point circles, least-squares refit.

    Returns ``((cx, cy, r), inlier boolean (N,))`` or None with fewer than 3 usable points.
    """
    pts = np.asarray(pts, dtype=np.float64)
    if len(pts) < 3:
        return None
    rng = np.random.default_rng(seed)
    best_count, best = -1, None
    for _ in range(iterations):
        model = _circle_from_3(pts[rng.choice(len(pts), 3, replace=False)])
        if model is None:
            continue
        cx, cy, r = model
        count = int(np.count_nonzero(np.abs(np.hypot(pts[:, 0] - cx, pts[:, 1] - cy) - r) < tol))
        if count > best_count:
            best_count, best = count, model
    if best is None:
        return None
    for _ in range(3):  # refine on inliers
        cx, cy, r = best
        inliers = np.abs(np.hypot(pts[:, 0] - cx, pts[:, 1] - cy) - r) < tol
        if np.count_nonzero(inliers) < 3:
            break
        best = _circle_least_squares(pts[inliers])
    cx, cy, r = best
    inliers = np.abs(np.hypot(pts[:, 0] - cx, pts[:, 1] - cy) - r) < tol
    return best, inliers


def _rounded_rect_from_region(
    region: np.ndarray, hull: np.ndarray
) -> tuple[tuple[float, float, float, float], float] | None:
    """Robust rounded-rectangle parameters of a filled region (H, W) 0/1 and its convex hull (H, W) 0/1:
    ``((x0, y0, x1, y1), r)``.

    Each edge is the 3rd / 97th percentile extent over the middle half of the region's rows or columns
    (so small blobs and text attached to the outline do not move it); the corner radius follows from the
    area the rounded corners remove from the hull, ``(4 - pi) r^2``.
    """
    rows = np.flatnonzero(region.any(axis=1))
    cols = np.flatnonzero(region.any(axis=0))
    if len(rows) < 4 or len(cols) < 4:
        return None

    def edges(m: np.ndarray, idx: np.ndarray) -> tuple[float, float]:
        lo, hi = idx[0], idx[-1]
        mid = slice(lo + (hi - lo) // 4, hi - (hi - lo) // 4 + 1)
        band = m[mid]
        occupied = band.any(axis=1)
        first = np.argmax(band, axis=1)[occupied]
        last = band.shape[1] - 1 - np.argmax(band[:, ::-1], axis=1)[occupied]
        return float(np.percentile(first, 3)), float(np.percentile(last, 97))

    x0, x1 = edges(region, rows)
    y0, y1 = edges(region.T, cols)
    if x1 - x0 < 4 or y1 - y0 < 4:
        return None
    xi0, yi0, xi1, yi1 = int(round(x0)), int(round(y0)), int(round(x1)), int(round(y1))
    inside = int(np.count_nonzero(hull[yi0 : yi1 + 1, xi0 : xi1 + 1]))
    deficit = max((xi1 - xi0 + 1) * (yi1 - yi0 + 1) - inside, 0)
    r = float(np.sqrt(deficit / (4.0 - np.pi)))
    r = min(r, 0.5 * (x1 - x0), 0.5 * (y1 - y0))
    return (x0, y0, x1, y1), r


def _draw_circle(shape: tuple[int, int], cx: float, cy: float, r: float) -> np.ndarray:
    """Filled disc (H, W) uint8 0/255 with sub-pixel centre and radius."""
    import cv2

    out = np.zeros(shape, np.uint8)
    shift = 4
    f = 1 << shift
    cv2.circle(out, (int(round(cx * f)), int(round(cy * f))), int(round(r * f)), 255, -1, cv2.LINE_8, shift)
    return out


def _draw_rounded_rect(shape: tuple[int, int], rect: tuple[float, float, float, float], r: float) -> np.ndarray:
    """Filled rounded rectangle (H, W) uint8 0/255; ``rect`` = (x0, y0, x1, y1) inclusive pixel centres."""
    h, w = shape
    x0, y0, x1, y1 = rect
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    # distance outside the inner rectangle shrunk by r, compared with r
    dx = np.maximum(np.maximum(x0 + r - xs, xs - (x1 - r)), 0.0)
    dy = np.maximum(np.maximum(y0 + r - ys, ys - (y1 - r)), 0.0)
    inside = (xs >= x0 - 0.5) & (xs <= x1 + 0.5) & (ys >= y0 - 0.5) & (ys <= y1 + 0.5)
    inside &= dx * dx + dy * dy <= (r + 0.5) ** 2
    return np.where(inside, 255, 0).astype(np.uint8)


# ---------------------------------------------------------------------------------------- estimation
def _border_threshold(acc: np.ndarray) -> float:
    """Brightness separating the black border from the image: just above the black level.

    The black level is the median of the image's outermost rows and columns' darkest half (border pixels
    when there is a border); the threshold sits 6 % of the way to the bright content, at least 6 above.
    """
    h, w = acc.shape
    edge = np.concatenate([acc[0], acc[-1], acc[:, 0], acc[:, -1]]).astype(np.float64)
    black = float(np.percentile(edge, 25))
    bright = float(np.percentile(acc, 95))
    return black + max(6.0, 0.06 * (bright - black))


def _estimate_from_accumulated(acc: np.ndarray, full_shape: tuple[int, int], margin_px: int) -> FovMask:
    """Fit the field of view to an accumulated ``(h, w)`` uint8 luminance image at working resolution."""
    import cv2

    H, W = full_shape
    h, w = acc.shape
    sx, sy = W / float(w), H / float(h)
    full = FovMask(erode_mask(np.full((H, W), 255, np.uint8), margin_px), "full", {}, 1.0, 0.0)

    smooth = cv2.medianBlur(acc, 5)
    t = _border_threshold(smooth)
    full.threshold = t
    binary = (smooth > t).astype(np.uint8)
    binary = cv2.morphologyEx(binary, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=4)
    if n < 2:
        full.confidence = 0.0
        log.info("field of view: image is dark everywhere; using the full image")
        return full
    k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    region = _fill_holes((labels == k).astype(np.uint8))
    close_px = max(3, int(round(0.02 * min(h, w)))) | 1
    region = cv2.morphologyEx(
        region, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (close_px, close_px)),
        borderType=cv2.BORDER_REPLICATE,
    )
    region = _fill_holes(region)
    border_fraction = 1.0 - np.count_nonzero(region) / float(h * w)
    if border_fraction < _MIN_BORDER_FRACTION:
        full.confidence = float(min(1.0, 1.0 - border_fraction / _MIN_BORDER_FRACTION * 0.5))
        log.info("field of view: no black border (%.1f %% dark); using the full image", 100 * border_fraction)
        return full
    # the border must be black and featureless, not a dark part of an ordinary scene
    outside = region == 0
    if np.percentile(smooth[outside], 90) > t:
        full.confidence = 0.5
        log.info("field of view: dark area is not a uniform border; using the full image")
        return full

    candidates: list[tuple[float, str, dict, np.ndarray]] = []
    contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    pts = np.concatenate([c.reshape(-1, 2) for c in contours]).astype(np.float64)
    on_edge = (pts[:, 0] <= 1) | (pts[:, 1] <= 1) | (pts[:, 0] >= w - 2) | (pts[:, 1] >= h - 2)
    pts = pts[~on_edge]
    fit = fit_circle_ransac(pts, tol=max(1.5, 0.006 * min(h, w))) if len(pts) >= 20 else None
    circle_outlines_region = False
    if fit is not None:
        (cx, cy, r), inliers = fit
        disc = _draw_circle((h, w), cx, cy, r)
        candidates.append((_iou(disc, region), "circle", {"centre": (cx, cy), "radius": r}, disc))
        # most of the outline on the circle and the region inside it: a disc clipped by something else
        spill = np.count_nonzero(region & (disc == 0)) / float(max(np.count_nonzero(region), 1))
        circle_outlines_region = float(np.mean(inliers)) >= 0.5 and spill <= 0.01
    # the convex hull bridges dents from dark structures at the rim; the models cut off what text or glow
    # attached to the outline adds to it
    hull = np.zeros_like(region)
    cv2.fillConvexPoly(hull, cv2.convexHull(np.concatenate([c.reshape(-1, 2) for c in contours])), 1)
    rr = _rounded_rect_from_region(region, hull)
    if rr is not None:
        rect, rad = rr
        shape_img = _draw_rounded_rect((h, w), rect, rad)
        params_rr = {"rect": rect, "corner_radius": rad}
        candidates.append((_iou(shape_img, region), "rounded_rect", params_rr, shape_img))
    if not candidates:
        full.confidence = 0.5
        return full
    for c in candidates:
        log.debug("field of view candidate %s: IoU %.3f %s", c[1], c[0], c[2])
    # a circle is a rounded rectangle too: prefer it unless the rectangle explains clearly more
    if circle_outlines_region:
        score, shape, params, _ = candidates[0]
    else:
        score, shape, params, _ = max(candidates, key=lambda c: c[0] + (0.01 if c[1] == "circle" else 0.0))
    if score < _MIN_MODEL_IOU and not circle_outlines_region:
        full.confidence = float(1.0 - score)
        log.info("field of view: border fits no circle or rounded rectangle (IoU %.2f); using the full image", score)
        return full

    # model and region at full resolution; the mask is their intersection
    def to_full(x: float, y: float) -> tuple[float, float]:
        return (x + 0.5) * sx - 0.5, (y + 0.5) * sy - 0.5

    if shape == "circle":
        cx, cy = to_full(*params["centre"])
        r = params["radius"] * 0.5 * (sx + sy)
        params = {"centre": (cx, cy), "radius": r}
        model = _draw_circle((H, W), cx, cy, r)
    else:
        x0, y0, x1, y1 = params["rect"]
        # first / last full-resolution pixel centres covered by the small image's edge pixels
        rect = (x0 * sx, y0 * sy, (x1 + 1) * sx - 1.0, (y1 + 1) * sy - 1.0)
        rad = params["corner_radius"] * 0.5 * (sx + sy)
        params = {"rect": rect, "corner_radius": rad}
        model = _draw_rounded_rect((H, W), rect, rad)
    region_full = cv2.resize(hull * 255, (W, H), interpolation=cv2.INTER_LINEAR) >= 128
    mask = np.where((model > 0) & region_full, 255, 0).astype(np.uint8)
    mask = erode_mask(mask, margin_px)
    log.info("field of view: %s %s, IoU with the bright region %.3f", shape, params, score)
    return FovMask(mask, shape, params, float(score), t)


def accumulate_brightness(grays: list[np.ndarray], percentile: float = 80.0) -> np.ndarray:
    """Per-pixel ``percentile`` over frames of ``(h, w)`` uint8 luminance images: ``(h, w)`` uint8.

    A high percentile keeps the field of view bright where any frame showed it, yet is not pulled up by
    one flash or down by one dark frame.
    """
    if len(grays) == 1:
        return grays[0]
    stack = np.stack(grays)
    return np.percentile(stack, percentile, axis=0, method="nearest").astype(np.uint8)


def estimate_fov_mask(frames: list[np.ndarray], margin_px: int = 4) -> FovMask:
    """Field-of-view mask from a few frames ``(H, W[, 3])`` uint8 of one video (see module docstring)."""
    if not frames:
        raise InputError("estimate_fov_mask needs at least one frame")
    est = FovMaskEstimator(num_frames=len(frames), margin_px=margin_px)
    for f in frames:
        est.add(f)
    return est.result if est.result is not None else est.estimate()


class FovMaskEstimator:
    """Accumulates the first ``num_frames`` frames, then fits the field of view; rechecks later frames.

    Use: call :meth:`add` per frame until it returns a :class:`FovMask` (after ``num_frames``), or call
    :meth:`estimate` earlier; then :meth:`recheck` frames now and then. After :attr:`max_failures`
    inconsistent rechecks in a row, :attr:`needs_refit` is set; :meth:`reset` starts over.
    """

    def __init__(
        self, num_frames: int = 10, margin_px: int = 4, recheck_tolerance: float = 0.02, max_failures: int = 3
    ) -> None:
        if num_frames < 1:
            raise ValueError("num_frames must be >= 1")
        self.num_frames = int(num_frames)
        self.margin_px = int(margin_px)
        self.recheck_tolerance = float(recheck_tolerance)
        self.max_failures = int(max_failures)
        self.reset()

    def reset(self) -> None:
        """Forget the accumulated frames and the result."""
        self._grays: list[np.ndarray] = []
        self._full_shape: tuple[int, int] | None = None
        self._scale = 1.0
        self.result: FovMask | None = None
        self._outside_small: np.ndarray | None = None
        self._baseline = 0.0
        self.failures = 0
        self.needs_refit = False

    def add(self, frame: np.ndarray) -> FovMask | None:
        """Accumulate one frame; returns the mask once ``num_frames`` frames were seen (else None)."""
        if self.result is not None:
            return self.result
        gray = _gray(frame)
        if self._full_shape is None:
            self._full_shape = gray.shape
            self._scale = _work_scale(gray.shape[1])
        elif gray.shape != self._full_shape:
            raise InputError(f"frame size changed from {self._full_shape[::-1]} to {gray.shape[::-1]}")
        self._grays.append(_downscale(gray, self._scale))
        if len(self._grays) >= self.num_frames:
            return self.estimate()
        return None

    def estimate(self) -> FovMask:
        """Fit the mask to the frames accumulated so far (at least one)."""
        if not self._grays or self._full_shape is None:
            raise InputError("no frame accumulated for the field-of-view estimate")
        acc = accumulate_brightness(self._grays)
        self.result = _estimate_from_accumulated(acc, self._full_shape, self.margin_px)
        self._prepare_recheck(acc)
        self._grays = []
        return self.result

    def _prepare_recheck(self, acc: np.ndarray) -> None:
        import cv2

        assert self.result is not None
        h, w = acc.shape
        small = cv2.resize(self.result.mask, (w, h), interpolation=cv2.INTER_NEAREST)
        # well outside the mask only: a few pixels of blur at the outline are no change
        grow = max(2, int(round(0.015 * min(h, w))))
        dilated = cv2.dilate(small, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1)))
        self._outside_small = dilated == 0
        self._baseline = self._bright_outside(acc)

    def _bright_outside(self, small_gray: np.ndarray) -> float:
        if self._outside_small is None or not self._outside_small.any() or self.result is None:
            return 0.0
        return float(np.mean(small_gray[self._outside_small] > self.result.threshold + 10))

    def recheck(self, frame: np.ndarray) -> bool:
        """True when ``frame`` is consistent with the mask (its border region is still dark).

        Returns True when there is no border to check (shape "full"). Counts failures in a row and sets
        :attr:`needs_refit` after :attr:`max_failures`.
        """
        if self.result is None:
            raise InputError("recheck called before the field of view was estimated")
        if self.result.shape == "full" or self._outside_small is None:
            return True
        gray = _downscale(_gray(frame), self._scale)
        if gray.shape != self._outside_small.shape:
            raise InputError(f"frame size {gray.shape[::-1]} differs from the estimate's")
        excess = self._bright_outside(gray) - self._baseline
        ok = excess <= self.recheck_tolerance
        self.failures = 0 if ok else self.failures + 1
        if not ok:
            log.debug("field of view recheck: %.1f %% of the border is bright", 100 * excess)
        if self.failures >= self.max_failures and not self.needs_refit:
            self.needs_refit = True
            log.warning("field of view changed (border no longer dark in %d frames); re-estimate it", self.failures)
        return ok


# ------------------------------------------------------------------------------------------- specular
def specular_mask(
    image: np.ndarray, value_threshold: int = 235, saturation_threshold: int = 60, dilate_px: int = 5
) -> np.ndarray:
    """Specular highlights of a BGR or gray uint8 image: ``(H, W)`` uint8, 255 = highlight.

    A highlight pixel is bright (HSV value V >= ``value_threshold``) and nearly white (saturation
    S <= ``saturation_threshold``; ignored for gray images); the set is dilated by ``dilate_px`` so that
    features do not sit on a reflection's rim.
    """
    import cv2

    image = np.asarray(image)
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        gray = image.reshape(image.shape[:2])
        hi = cv2.threshold(gray, int(value_threshold) - 1, 255, cv2.THRESH_BINARY)[1]
    else:
        b, g, r = (cv2.extractChannel(image, i) for i in range(3))
        v = cv2.max(cv2.max(b, g), r)
        hi = cv2.threshold(v, int(value_threshold) - 1, 255, cv2.THRESH_BINARY)[1]
        if cv2.countNonZero(hi):  # usually few: the saturation test runs on the bright pixels only
            ys, xs = np.nonzero(hi)
            vb = v[ys, xs].astype(np.int32)
            mn = np.minimum(np.minimum(b[ys, xs], g[ys, xs]), r[ys, xs]).astype(np.int32)
            # HSV saturation S = 255 (V - min) / V  <=  s_thr   <=>   255 (V - min) <= s_thr V
            coloured = 255 * (vb - mn) > int(saturation_threshold) * vb
            hi[ys[coloured], xs[coloured]] = 0
    px = int(dilate_px)
    if px > 0 and cv2.countNonZero(hi):
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1, 2 * px + 1))
        hi = cv2.dilate(hi, kernel)
    return hi
