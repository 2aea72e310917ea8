"""SIFT keypoints (OpenCV) on contrast-normalised luminance, spread over a grid, with RootSIFT descriptors.

Pipeline of :meth:`SiftExtractor.extract`: CLAHE (``cfg.clahe``, see :mod:`slam.features.photometric`; OpenCV
SIFT with its default contrast threshold finds almost nothing in dark endoscopy images) -> SIFT detection
with a low contrast threshold -> drop keypoints outside the eroded mask -> keep ``cfg.num_features`` spread
over a ``grid_cols`` x ``grid_rows`` grid -> SIFT descriptors -> RootSIFT (L1 normalise, square root: unit
L2 norm, float32).

Speed: OpenCV's SIFT always doubles the input image first (its first octave is -1), which makes it ~4x slower
than the rest of the scale space together. By default (``upsample=False``) the detector is run on the image
downsampled 2x with area averaging; OpenCV's internal 2x upsampling then brings the first octave back to the
full-resolution pixel grid. This is SIFT with first octave 0 (as VLFeat's default): keypoint positions are
refined on the full-resolution grid; only blobs finer than sigma 1.6 px (mostly noise in endoscopy video)
are lost. ``upsample=True`` runs OpenCV's SIFT on the full image (first octave -1, 3-6x slower, 1.5-4x more
keypoints). Measured on the real sinus frames at 960x540, masked, consecutive pairs: 400 keypoints and a
median of 153 essential-matrix inliers without upsampling, 1320 and 212 with it.

Without upsampling, detection and description share one pass over the scale space (there are rarely many
more candidates than wanted); with it, only the keypoints kept by the grid are described (a second pass,
cheaper than describing thousands of candidates).

Pyramid levels: ``level = (octave - first_octave) * 3 + (layer - 1)`` with 3 layers per octave, so
``Features.scale_factor = 2 ** (1 / 3)`` and the keypoint's Gaussian scale is proportional to
``scale_factor ** level`` (level 0 = the finest scale computed). Bundle adjustment weights a measurement at
level l by ``1 / scale_factor ** (2 l)``.
"""

from __future__ import annotations

import logging

import numpy as np

from slam.config import FeatureConfig
from slam.errors import ConfigError
from slam.features.base import FeatureExtractor, Features
from slam.features.grid import check_config, check_gray, in_mask, keypoint_arrays, prepare_mask, select_grid

log = logging.getLogger(__name__)

OCTAVE_LAYERS = 3  # SIFT layers per octave (Lowe's choice, OpenCV's default)
SCALE_FACTOR = 2.0 ** (1.0 / OCTAVE_LAYERS)  # scale ratio between consecutive levels
SIGMA0 = 1.6  # Gaussian scale of layer 0 of each octave (octave-relative pixels)
MAX_LEVEL = 8 * OCTAVE_LAYERS - 1  # levels beyond this (8 octaves) are clamped
ORI_BINS = 36  # orientation histogram bins (as in Lowe's SIFT)
ORI_SIGMA = 1.5  # orientation window sigma, in units of the keypoint scale
ORI_RADIUS = 3.0 * ORI_SIGMA  # orientation window radius, in units of the keypoint scale
_DIFF_X = np.array([[-1.0, 0.0, 1.0]], np.float32)  # I(x+1) - I(x-1)
_DIFF_Y_UP = np.array([[1.0], [0.0], [-1.0]], np.float32)  # I(y-1) - I(y+1)


def unpack_octave(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's packed ``KeyPoint.octave`` of SIFT keypoints to ``(octave, layer)`` int64 arrays
    (octave -1 = the 2x upsampled image, layer in 1..3)."""
    packed = np.asarray(packed, np.int64)
    octave = (packed & 255).astype(np.uint8).view(np.int8).astype(np.int64)
    layer = (packed >> 8) & 255
    return octave, layer


def rootsift(desc: np.ndarray) -> np.ndarray:
    """RootSIFT of ``(N, 128)`` SIFT descriptors: L1-normalise, square root; rows have unit L2 norm."""
    desc = np.maximum(np.asarray(desc, np.float32), 0.0)
    desc /= np.maximum(desc.sum(axis=1, keepdims=True), 1e-12)
    return np.sqrt(desc, out=desc)


def _octave_image(img: np.ndarray, octave: int) -> np.ndarray:
    """``img`` resampled to the pixel grid of ``octave`` (pixel size 2**octave full-resolution pixels)."""
    import cv2

    h, w = img.shape
    if octave == 0:
        return img
    if octave < 0:
        return cv2.resize(img, (w * 2, h * 2), interpolation=cv2.INTER_LINEAR)
    f = 2**octave
    return cv2.resize(img, (max(w // f, 1), max(h // f, 1)), interpolation=cv2.INTER_AREA)


def dominant_orientation(img: np.ndarray, xy: np.ndarray, octave: np.ndarray, layer: np.ndarray) -> np.ndarray:
    """SIFT-style dominant gradient orientation of keypoints, vectorised over keypoints.

    Args:
        img: ``(H, W)`` uint8 image.
        xy: ``(N, 2)`` full-resolution pixel positions.
        octave, layer: ``(N,)`` int SIFT octave (pixel size ``2**octave``) and layer (1..3).

    Returns:
        ``(N,)`` float32 angles in degrees, OpenCV's SIFT convention (``atan2(gy, gx)`` with y pointing down,
        in [0, 360)): a 36-bin histogram of gradient orientations weighted by magnitude and a Gaussian window
        (sigma 1.5 scale), smoothed, its highest peak refined by a parabola.
    """
    import cv2

    n = len(xy)
    angles = np.zeros(n, np.float32)
    for o in np.unique(octave):
        img_o = _octave_image(img, int(o)).astype(np.float32)
        f = 2.0 ** float(o)
        sel_o = np.flatnonzero(octave == o)
        for ly in np.unique(layer[sel_o]):
            sel = sel_o[layer[sel_o] == ly]
            sigma = SIGMA0 * 2.0 ** (float(ly) / OCTAVE_LAYERS)
            blur = cv2.GaussianBlur(img_o, (0, 0), sigma)
            h, w = blur.shape
            gx = cv2.filter2D(blur, -1, _DIFF_X, borderType=cv2.BORDER_REPLICATE)
            gy = cv2.filter2D(blur, -1, _DIFF_Y_UP, borderType=cv2.BORDER_REPLICATE)  # upward, as OpenCV's SIFT
            mag, ori = cv2.cartToPolar(gx, gy, angleInDegrees=True)
            mag, ori = mag.ravel(), ori.ravel()
            radius = max(int(round(ORI_RADIUS * sigma)), 1)
            d = np.arange(-radius, radius + 1)
            dy, dx = np.meshgrid(d, d, indexing="ij")
            dx, dy = dx.ravel(), dy.ravel()
            wgt = np.exp(-(dx**2 + dy**2) / (2.0 * (ORI_SIGMA * sigma) ** 2)).astype(np.float32)
            centre = np.rint((xy[sel] + 0.5) / f - 0.5).astype(np.int64)
            px = centre[:, :1] + dx[None]
            py = centre[:, 1:] + dy[None]
            ok = (px >= 1) & (px < w - 1) & (py >= 1) & (py < h - 1)
            flat = np.where(ok, py * w + px, 0)
            weight = np.where(ok, mag[flat] * wgt[None], 0.0)
            bins = np.rint(ori[flat] * (ORI_BINS / 360.0)).astype(np.int64) % ORI_BINS
            rows = np.arange(len(sel))[:, None]
            hist = np.bincount((rows * ORI_BINS + bins).ravel(), weights=weight.ravel(), minlength=len(sel) * ORI_BINS)
            hist = hist.reshape(len(sel), ORI_BINS)
            hist = (
                (np.roll(hist, 2, 1) + np.roll(hist, -2, 1)) / 16.0
                + (np.roll(hist, 1, 1) + np.roll(hist, -1, 1)) * (4.0 / 16.0)
                + hist * (6.0 / 16.0)
            )
            peak = hist.argmax(axis=1)
            r = np.arange(len(sel))
            left, centre_v, right = hist[r, (peak - 1) % ORI_BINS], hist[r, peak], hist[r, (peak + 1) % ORI_BINS]
            denom = left - 2.0 * centre_v + right
            offset = np.where(np.abs(denom) > 1e-12, 0.5 * (left - right) / np.where(denom == 0, 1, denom), 0.0)
            bin_f = (peak + offset) % ORI_BINS
            ang = (360.0 - bin_f * (360.0 / ORI_BINS)) % 360.0
            angles[sel] = ang.astype(np.float32)
    return angles


class SiftExtractor(FeatureExtractor):
    """OpenCV SIFT on CLAHE-normalised luminance with grid bucketing and RootSIFT descriptors.

    Args:
        cfg: feature settings (num_features, grid_cols/rows, clahe*, sift_contrast_threshold,
            sift_edge_threshold).
        upsample: run SIFT with OpenCV's 2x upsampled first octave (slower; see the module docstring).
        mask_margin_px: the mask is eroded by this many pixels before keypoints are kept.

    Attributes ``scale_factor`` (2 ** (1/3)) and ``num_levels`` (24) describe the levels in
    ``Features.octaves`` for scale prediction and measurement weights.
    """

    name = "sift"
    binary = False
    descriptor_dim = 128

    def __init__(self, cfg: FeatureConfig, upsample: bool = False, mask_margin_px: int = 4) -> None:
        import cv2

        check_config(cfg)
        if cfg.sift_contrast_threshold <= 0:
            raise ConfigError(f"features.sift_contrast_threshold must be > 0, got {cfg.sift_contrast_threshold}")
        if cfg.sift_edge_threshold <= 0:
            raise ConfigError(f"features.sift_edge_threshold must be > 0, got {cfg.sift_edge_threshold}")
        self.cfg = cfg
        self.upsample = bool(upsample)
        self.first_octave = -1 if self.upsample else 0
        self.mask_margin_px = int(mask_margin_px)
        self.scale_factor = SCALE_FACTOR  # ratio between consecutive levels (Features.scale_factor)
        self.num_levels = MAX_LEVEL + 1  # levels are 0 .. num_levels - 1
        self._sift = cv2.SIFT_create(
            nfeatures=0,
            nOctaveLayers=OCTAVE_LAYERS,
            contrastThreshold=float(cfg.sift_contrast_threshold),
            edgeThreshold=float(cfg.sift_edge_threshold),
        )

    # ------------------------------------------------------------------------------------------ helpers
    def _prepare(self, gray: np.ndarray) -> np.ndarray:
        gray = check_gray(gray)
        if self.cfg.clahe:
            from slam.features.photometric import normalize_luminance

            gray = normalize_luminance(gray, self.cfg.clahe_clip, self.cfg.clahe_tiles)
        return gray

    def _detection_image(self, img: np.ndarray) -> np.ndarray:
        """The image handed to OpenCV: the full image (upsample) or its exact 2x area downsampling."""
        import cv2

        if self.upsample:
            return img
        h2, w2 = img.shape[0] // 2, img.shape[1] // 2
        return cv2.resize(img[: 2 * h2, : 2 * w2], (w2, h2), interpolation=cv2.INTER_AREA)

    def _to_full(self, xy: np.ndarray, size: np.ndarray, octave: np.ndarray) -> tuple:
        """Detection-image keypoint geometry to full resolution. OpenCV reports positions in its upsampled
        octave -1 halved, i.e. shifted by a quarter pixel of the input; with an exact 2x area downsampling
        that shift cancels and full-resolution x = 2 x_reported."""
        if self.upsample:
            return xy, size, octave
        return xy * 2.0, size * 2.0, octave + 1

    def _level(self, octave_full: np.ndarray, layer: np.ndarray) -> np.ndarray:
        return ((octave_full - self.first_octave) * OCTAVE_LAYERS + (layer - 1)).astype(np.int32)

    def _describe_cv(self, det_img: np.ndarray, kps: list) -> tuple[np.ndarray, np.ndarray]:
        """RootSIFT descriptors of OpenCV keypoints whose class_id is their index; returns (indices, desc)."""
        kps_out, desc = self._sift.compute(det_img, kps)
        if desc is None or len(kps_out) == 0:
            return np.zeros(0, np.int64), np.zeros((0, 128), np.float32)
        ids = np.fromiter((k.class_id for k in kps_out), np.int64, len(kps_out))
        return ids, rootsift(desc)

    # ------------------------------------------------------------------------------------------ API
    def extract(self, gray: np.ndarray, mask: np.ndarray | None = None) -> Features:
        """Up to ``cfg.num_features`` SIFT keypoints spread over the grid, inside the eroded ``mask``."""
        img = self._prepare(gray)
        h, w = img.shape
        usable = prepare_mask(mask, (h, w), self.mask_margin_px)
        if usable is not None and not usable.any():
            return Features.empty(128, False, self.scale_factor)
        det_img = self._detection_image(img)
        if self.upsample:  # many candidates: describe only the selected ones (a second scale space)
            kps = self._sift.detect(det_img, None)
            all_desc = None
        else:  # few candidates: one pass over the scale space is cheaper than two
            kps, all_desc = self._sift.detectAndCompute(det_img, None)
        xy, size, angle, response, packed = keypoint_arrays(kps)
        octave, layer = unpack_octave(packed)
        xy, size, octave = self._to_full(xy, size, octave)
        keep = np.flatnonzero(in_mask(xy, usable))
        chosen = keep[
            select_grid(xy[keep], response[keep], self.cfg.num_features, w, h, self.cfg.grid_cols, self.cfg.grid_rows)
        ]
        if all_desc is not None:
            idx, desc = chosen, rootsift(all_desc[chosen]) if len(chosen) else np.zeros((0, 128), np.float32)
        else:
            selected = [kps[i] for i in chosen]
            for i, k in enumerate(selected):
                k.class_id = i
            ids, desc = self._describe_cv(det_img, selected)
            idx = chosen[ids]
        log.debug("sift: %d candidates, %d in mask, %d described", len(kps), len(keep), len(idx))
        return Features(
            keypoints=xy[idx].astype(np.float32),
            descriptors=desc,
            octaves=self._level(octave[idx], layer[idx]),
            sizes=size[idx],
            angles=angle[idx],
            responses=response[idx],
            binary=False,
            scale_factor=self.scale_factor,
        )

    def describe(
        self, gray: np.ndarray, keypoints: np.ndarray, octaves: np.ndarray | None = None
    ) -> tuple[Features, np.ndarray]:
        """RootSIFT descriptors at given ``(N, 2)`` full-resolution positions.

        ``octaves`` are levels as in :meth:`extract` (default: the first layer of the full-resolution octave,
        a Gaussian scale of ~2 px). Orientations are estimated like SIFT's (dominant gradient direction), so
        the descriptors are comparable with those of :meth:`extract`. Keypoints outside the image are
        dropped; returns their Features (input order) and ``(M,)`` int64 indices into the input.
        """
        import cv2

        img = self._prepare(gray)
        h, w = img.shape
        xy = np.asarray(keypoints, np.float64).reshape(-1, 2)
        n = len(xy)
        if octaves is None:
            levels = np.full(n, -self.first_octave * OCTAVE_LAYERS, np.int64)
        else:
            levels = np.clip(np.asarray(octaves, np.int64).reshape(n), 0, MAX_LEVEL)
        valid = np.flatnonzero(
            np.isfinite(xy).all(axis=1) & (xy[:, 0] >= 0) & (xy[:, 0] <= w - 1) & (xy[:, 1] >= 0) & (xy[:, 1] <= h - 1)
        )
        if len(valid) == 0:
            return Features.empty(128, False, self.scale_factor), np.zeros(0, np.int64)
        xy_v, lv = xy[valid], levels[valid]
        octave_full = lv // OCTAVE_LAYERS + self.first_octave
        layer = lv % OCTAVE_LAYERS + 1
        size_full = 2.0 * SIGMA0 * 2.0 ** (layer / OCTAVE_LAYERS) * 2.0**octave_full
        angle = dominant_orientation(img, xy_v, octave_full, layer)
        if self.upsample:
            pt, size, octave_det = xy_v, size_full, octave_full
        else:
            pt, size, octave_det = xy_v / 2.0, size_full / 2.0, octave_full - 1
        packed = (octave_det & 255) | (layer << 8)
        kps = [
            cv2.KeyPoint(float(x), float(y), float(s), float(a), 0.0, int(p), i)
            for i, (x, y, s, a, p) in enumerate(zip(pt[:, 0], pt[:, 1], size, angle, packed))
        ]
        ids, desc = self._describe_cv(self._detection_image(img), kps)
        order = np.argsort(ids)
        ids, desc = ids[order], desc[order]
        index = valid[ids]
        feats = Features(
            keypoints=xy[index].astype(np.float32),
            descriptors=desc,
            octaves=levels[index].astype(np.int32),
            sizes=size_full[ids].astype(np.float32),
            angles=angle[ids],
            responses=np.zeros(len(index), np.float32),
            binary=False,
            scale_factor=self.scale_factor,
        )
        return feats, index.astype(np.int64)

