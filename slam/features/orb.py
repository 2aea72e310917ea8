"""ORB keypoints (OpenCV: FAST + Harris ranking, intensity-centroid orientation, rBRIEF) spread over a grid.

:meth:`OrbExtractor.extract`: optional CLAHE -> ORB detection of ``oversample x num_features`` candidates
over ``orb_levels`` pyramid levels (scale ``orb_scale_factor``) inside the eroded mask -> keep
``num_features`` spread over the ``grid_cols`` x ``grid_rows`` grid, the levels within each cell in
proportion to ``orb_scale_factor ** -level`` (Harris scores of different levels are not comparable) ->
descriptors of the kept keypoints only.

As in ORB-SLAM, grid cells left with few candidates (low texture, or ORB's per-level budget spent on a
textured region) are searched again with a lower FAST threshold (``0.4 x orb_fast_threshold``); to stay
fast this second pass runs plain FAST on the full-resolution image only (its corners get level 0 and ORB's
intensity-centroid orientation).

Descriptors are ``(N, 32)`` uint8 (256 packed bits, Hamming distance); ``Features.octaves`` is the pyramid
level and ``Features.scale_factor`` is ``orb_scale_factor``.
"""

from __future__ import annotations

import logging

import numpy as np

from slam.config import FeatureConfig
from slam.errors import ConfigError
from slam.features.base import FeatureExtractor, Features
from slam.features.grid import (
    cell_index,
    check_config,
    check_gray,
    in_mask,
    keypoint_arrays,
    level_shares,
    prepare_mask,
    select_grid,
    select_grid_levels,
)

log = logging.getLogger(__name__)

PATCH_SIZE = 31  # rBRIEF patch and orientation disc diameter (OpenCV's default, as in ORB-SLAM)
HALF_PATCH = PATCH_SIZE // 2
EDGE_THRESHOLD = 19  # no detection closer than this to the image border (OpenCV default 31 is wasteful)
LOW_THRESHOLD_RATIO = 0.4  # second pass FAST threshold / orb_fast_threshold (ORB-SLAM: 7 / 20)
SPARSE_CELL_RATIO = 0.5  # a cell with fewer candidates than this x its even share of num_features: second pass


def _disc_offsets(radius: int) -> tuple[np.ndarray, np.ndarray]:
    """``(S,)`` int64 (du, dv) offsets of the pixels of a disc of ``radius`` (ORB's orientation patch)."""
    d = np.arange(-radius, radius + 1)
    dv, du = np.meshgrid(d, d, indexing="ij")
    inside = du**2 + dv**2 <= radius * radius + radius  # rounds the boundary like ORB's umax table
    return du[inside], dv[inside]


def intensity_centroid_angle(level_img: np.ndarray, xy_level: np.ndarray, radius: int = HALF_PATCH) -> np.ndarray:
    """ORB orientation of keypoints, vectorised: the angle of the intensity centroid of a disc.

    Args:
        level_img: ``(H, W)`` uint8 pyramid level image.
        xy_level: ``(N, 2)`` positions in that level's pixels.

    Returns:
        ``(N,)`` float32 degrees in [0, 360), ``atan2(m01, m10)`` with y pointing down (OpenCV's convention).
    """
    import cv2

    pad = radius + 1
    padded = cv2.copyMakeBorder(level_img, pad, pad, pad, pad, cv2.BORDER_REFLECT_101)
    du, dv = _disc_offsets(radius)
    c = np.rint(xy_level).astype(np.int64) + pad
    c[:, 0] = np.clip(c[:, 0], pad, padded.shape[1] - 1 - pad)
    c[:, 1] = np.clip(c[:, 1], pad, padded.shape[0] - 1 - pad)
    stride = padded.shape[1]
    flat = (c[:, 1] * stride + c[:, 0])[:, None] + (dv * stride + du)[None, :]
    values = padded.ravel().take(flat).astype(np.float32)  # (N, S) disc pixels
    m10 = values @ du.astype(np.float32)
    m01 = values @ dv.astype(np.float32)
    return (np.degrees(np.arctan2(m01, m10)) % 360.0).astype(np.float32)


class OrbExtractor(FeatureExtractor):
    """OpenCV ORB with grid bucketing.

    Args:
        cfg: feature settings (num_features, grid_cols/rows, clahe*, orb_fast_threshold, orb_levels,
            orb_scale_factor).
        oversample: candidates detected per kept keypoint before bucketing.
        mask_margin_px: the mask is eroded by this many pixels before keypoints are kept.
    """

    name = "orb"
    binary = True
    descriptor_dim = 32

    def __init__(self, cfg: FeatureConfig, oversample: float = 2.0, mask_margin_px: int = 4) -> None:
        import cv2

        check_config(cfg)
        if cfg.orb_levels < 1:
            raise ConfigError(f"features.orb_levels must be >= 1, got {cfg.orb_levels}")
        if cfg.orb_scale_factor <= 1.0:
            raise ConfigError(f"features.orb_scale_factor must be > 1, got {cfg.orb_scale_factor}")
        if not 0 < cfg.orb_fast_threshold < 255:
            raise ConfigError(f"features.orb_fast_threshold must be in 1..254, got {cfg.orb_fast_threshold}")
        if oversample < 1.0:
            raise ConfigError(f"ORB oversample must be >= 1, got {oversample}")
        self.cfg = cfg
        self.mask_margin_px = int(mask_margin_px)
        self.scale_factor = float(cfg.orb_scale_factor)  # ratio between consecutive levels
        self.num_levels = int(cfg.orb_levels)  # levels are 0 .. num_levels - 1
        self.oversample = float(oversample)
        self._orb = self._create(cfg, int(cfg.orb_fast_threshold))
        low = max(3, int(round(LOW_THRESHOLD_RATIO * cfg.orb_fast_threshold)))
        self._fast_low = cv2.FastFeatureDetector_create(low, True, cv2.FAST_FEATURE_DETECTOR_TYPE_9_16)

    def _create(self, cfg: FeatureConfig, fast_threshold: int):
        import cv2

        return cv2.ORB_create(
            nfeatures=int(round(self.oversample * cfg.num_features)),
            scaleFactor=self.scale_factor,
            nlevels=int(cfg.orb_levels),
            edgeThreshold=EDGE_THRESHOLD,
            firstLevel=0,
            WTA_K=2,
            scoreType=cv2.ORB_HARRIS_SCORE,
            patchSize=PATCH_SIZE,
            fastThreshold=fast_threshold,
        )

    def _prepare(self, gray: np.ndarray) -> np.ndarray:
        gray = check_gray(gray)
        if self.cfg.clahe:
            from slam.features.photometric import normalize_luminance

            gray = normalize_luminance(gray, self.cfg.clahe_clip, self.cfg.clahe_tiles)
        return gray

    def _compute(self, img: np.ndarray, kps: list) -> tuple[np.ndarray, np.ndarray]:
        """Descriptors of OpenCV keypoints whose class_id is their index; returns (indices, desc) sorted."""
        kps_out, desc = self._orb.compute(img, kps)
        if desc is None or len(kps_out) == 0:
            return np.zeros(0, np.int64), np.zeros((0, 32), np.uint8)
        ids = np.fromiter((k.class_id for k in kps_out), np.int64, len(kps_out))
        order = np.argsort(ids)
        return ids[order], np.ascontiguousarray(desc[order])

    def _detect(self, img: np.ndarray, usable: np.ndarray | None) -> tuple[list, np.ndarray]:
        """Candidate keypoints inside ``usable``: a list of cv2.KeyPoint and ``(N,)`` bool, True for fill-in
        corners.

        ORB runs with the configured FAST threshold; grid cells it leaves with few candidates are then filled
        with FAST corners of the full-resolution image found with the low threshold (angles still unset).
        """
        import cv2

        h, w = img.shape
        cols, rows = self.cfg.grid_cols, self.cfg.grid_rows
        kps = list(self._orb.detect(img, None if usable is None else usable.view(np.uint8)))
        xy = cv2.KeyPoint_convert(kps).reshape(-1, 2) if kps else np.zeros((0, 2), np.float32)
        inside = in_mask(xy, usable)
        if not inside.all():
            kps = [kps[i] for i in np.flatnonzero(inside)]
            xy = xy[inside]
        counts = np.bincount(cell_index(xy, w, h, cols, rows), minlength=cols * rows)
        sparse = (counts < SPARSE_CELL_RATIO * self.cfg.num_features / (cols * rows)).reshape(rows, cols)
        if usable is not None:  # cells that are mostly masked out are not worth a second pass
            usable_share = cv2.resize(usable.astype(np.float32), (cols, rows), interpolation=cv2.INTER_AREA)
            sparse &= usable_share > 0.25
        if not sparse.any():
            return kps, np.zeros(len(kps), bool)
        cell_mask = cv2.resize(sparse.view(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
        if usable is not None:
            cell_mask &= usable
        extra = self._fast_low.detect(img, None)
        xy_extra = cv2.KeyPoint_convert(extra).reshape(-1, 2) if extra else np.zeros((0, 2), np.float32)
        ok = in_mask(xy_extra, cell_mask)
        ok &= (xy_extra[:, 0] >= EDGE_THRESHOLD) & (xy_extra[:, 0] < w - EDGE_THRESHOLD)
        ok &= (xy_extra[:, 1] >= EDGE_THRESHOLD) & (xy_extra[:, 1] < h - EDGE_THRESHOLD)
        # drop fill-in corners on the same pixel as a first-pass level-0 keypoint
        level0 = np.fromiter((k.octave == 0 for k in kps), bool, len(kps))
        taken = np.rint(xy[level0]).astype(np.int64) @ np.array([1, w])
        ok &= ~np.isin(np.rint(xy_extra).astype(np.int64) @ np.array([1, w]), taken)
        second = np.flatnonzero(ok)
        # keep only the strongest fill-in corners per cell, at most an even share each (bounds the work below)
        if len(second) > 0:
            score = np.fromiter((extra[i].response for i in second), np.float32, len(second))
            cap = int(np.ceil(self.cfg.num_features / (cols * rows))) * int(sparse.sum())
            second = second[select_grid(xy_extra[second], score, cap, w, h, cols, rows)]
        log.debug("orb: %d sparse cells, %d fill-in FAST corners", int(sparse.sum()), len(second))
        return kps + [extra[i] for i in second], np.r_[np.zeros(len(kps), bool), np.ones(len(second), bool)]

    def extract(self, gray: np.ndarray, mask: np.ndarray | None = None) -> Features:
        """Up to ``cfg.num_features`` ORB keypoints spread over the grid, inside the eroded ``mask``.

        ``responses`` are ORB's Harris scores; fill-in FAST corners report ``1e-6 x`` their FAST score, and
        within a grid cell they are only taken after all Harris-ranked candidates.
        """
        img = self._prepare(gray)
        h, w = img.shape
        usable = prepare_mask(mask, (h, w), self.mask_margin_px)
        if usable is not None and not usable.any():
            return Features.empty(32, True, self.scale_factor)
        kps, fill = self._detect(img, usable)
        xy, size, angle, response, octave = keypoint_arrays(kps)
        response[fill] *= 1e-6
        rank_key = np.where(fill, response - 1.0, response)  # fill-in corners rank below ORB's
        shares = level_shares(self.cfg.orb_levels, self.scale_factor)
        chosen = select_grid_levels(
            xy, rank_key, octave, shares, self.cfg.num_features, w, h, self.cfg.grid_cols, self.cfg.grid_rows
        )
        filled = chosen[fill[chosen]]
        if len(filled):
            size[filled] = PATCH_SIZE
            angle[filled] = intensity_centroid_angle(img, xy[filled])
        selected = [kps[i] for i in chosen]
        for i, (k, j) in enumerate(zip(selected, chosen)):
            k.class_id = i
            if fill[j]:
                k.angle, k.size, k.octave = float(angle[j]), float(PATCH_SIZE), 0
        ids, desc = self._compute(img, selected)
        idx = chosen[ids]
        log.debug("orb: %d candidates (%d fill-in), %d described", len(kps), int(fill.sum()), len(idx))
        return Features(
            keypoints=xy[idx],
            descriptors=desc,
            octaves=octave[idx].astype(np.int32),
            sizes=size[idx],
            angles=angle[idx],
            responses=response[idx],
            binary=True,
            scale_factor=self.scale_factor,
        )

    def describe(
        self, gray: np.ndarray, keypoints: np.ndarray, octaves: np.ndarray | None = None
    ) -> tuple[Features, np.ndarray]:
        """ORB descriptors at given ``(N, 2)`` positions and pyramid levels (default level 0).

        Orientations are computed as ORB does (intensity centroid on the level image). Keypoints outside the
        image are dropped; returns their Features (input order) and ``(M,)`` int64 indices into the input.
        """
        import cv2

        img = self._prepare(gray)
        h, w = img.shape
        xy = np.asarray(keypoints, np.float64).reshape(-1, 2)
        n = len(xy)
        levels = np.zeros(n, np.int64) if octaves is None else np.asarray(octaves, np.int64).reshape(n)
        levels = np.clip(levels, 0, self.cfg.orb_levels - 1)
        valid = np.flatnonzero(
            np.isfinite(xy).all(axis=1) & (xy[:, 0] >= 0) & (xy[:, 0] <= w - 1) & (xy[:, 1] >= 0) & (xy[:, 1] <= h - 1)
        )
        if len(valid) == 0:
            return Features.empty(32, True, self.scale_factor), np.zeros(0, np.int64)
        angle = np.zeros(len(valid), np.float32)
        for level in np.unique(levels[valid]):
            sel = np.flatnonzero(levels[valid] == level)
            scale = self.scale_factor ** float(level)
            if level == 0:
                level_img = img
            else:  # the same level size and resampling as OpenCV's ORB pyramid
                size = (int(round(w / scale)), int(round(h / scale)))
                level_img = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR_EXACT)
            angle[sel] = intensity_centroid_angle(level_img, xy[valid[sel]] / scale)
        size = PATCH_SIZE * self.scale_factor ** levels[valid].astype(np.float64)
        kps = [
            cv2.KeyPoint(float(x), float(y), float(s), float(a), 0.0, int(o), i)
            for i, (x, y, s, a, o) in enumerate(zip(xy[valid, 0], xy[valid, 1], size, angle, levels[valid]))
        ]
        ids, desc = self._compute(img, kps)
        index = valid[ids]
        feats = Features(
            keypoints=xy[index].astype(np.float32),
            descriptors=desc,
            octaves=levels[index].astype(np.int32),
            sizes=size[ids].astype(np.float32),
            angles=angle[ids],
            responses=np.zeros(len(index), np.float32),
            binary=True,
            scale_factor=self.scale_factor,
        )
        return feats, index.astype(np.int64)
