"""The one place where :class:`~slam.config.SourceConfig` is applied, for every reader.

:class:`ConfiguredSource` wraps a :class:`~slam.sources.raw.RawReader` and implements
:class:`~slam.sources.base.FrameSource`:

* ``start``, ``stride``, ``max_frames`` select frames; ``FrameData.index`` is the position among the
  selected frames (a skipped unreadable frame keeps its index, so indices may have gaps);
* ``resize`` (and ``max_width``, which only ever shrinks) scale images, the camera and the mask together;
* ``fps`` gives timestamps ``raw_index / fps`` to layouts that have none;
* ``mask`` replaces the layout's own mask file;
* every image becomes uint8 (gray ``(H, W)`` or BGR ``(H, W, 3)``); a frame whose size differs from the
  first frame's is resized to it with a warning; an unreadable frame is logged (file, reason) and skipped.
"""

from __future__ import annotations

import logging
import math
from typing import Iterator, TYPE_CHECKING

import numpy as np

from slam.camera import Camera
from slam.config import SourceConfig
from slam.errors import ConfigError
from slam.sources.base import FrameData, FrameSource
from slam.sources.images import FrameReadError, read_mask, to_uint8
from slam.sources.raw import RawReader

if TYPE_CHECKING:
    from slam.evaluation.trajectory import Trajectory

log = logging.getLogger(__name__)


def validate_source_config(cfg: SourceConfig) -> None:
    """Raise :class:`ConfigError` for values no source can honour."""
    if cfg.start < 0:
        raise ConfigError(f"source.start must be >= 0, got {cfg.start}")
    if cfg.stride < 1:
        raise ConfigError(f"source.stride must be >= 1, got {cfg.stride}")
    if cfg.max_frames is not None and cfg.max_frames < 0:
        raise ConfigError(f"source.max_frames must be >= 0 or null, got {cfg.max_frames}")
    if not (math.isfinite(cfg.resize) and cfg.resize > 0):
        raise ConfigError(f"source.resize must be a positive number, got {cfg.resize}")
    if cfg.max_width is not None and cfg.max_width < 16:
        raise ConfigError(f"source.max_width must be >= 16 or null, got {cfg.max_width}")
    if not (math.isfinite(cfg.fps) and cfg.fps > 0):
        raise ConfigError(f"source.fps must be a positive number, got {cfg.fps}")


def output_scale(width: int, cfg: SourceConfig) -> float:
    """Scale factor applied to native frames of ``width`` pixels: ``resize``, then capped by ``max_width``."""
    scale = float(cfg.resize)
    if cfg.max_width is not None and width * scale > cfg.max_width:
        scale = cfg.max_width / width
    return scale


class ConfiguredSource(FrameSource):
    """A :class:`RawReader` with the options of ``cfg`` applied (see the module docstring)."""

    def __init__(self, reader: RawReader, cfg: SourceConfig) -> None:
        validate_source_config(cfg)
        self.reader = reader
        self.cfg = cfg
        self.name = reader.name
        native = reader.camera
        self._native_size = (native.width, native.height)
        self._scale = output_scale(native.width, cfg)
        self._camera = native if self._scale == 1.0 else native.scaled(self._scale)
        self._mask: np.ndarray | None = None
        self._mask_loaded = False

    # ------------------------------------------------------------------ FrameSource
    @property
    def camera(self) -> Camera:
        return self._camera

    @property
    def mask(self) -> np.ndarray | None:
        if not self._mask_loaded:
            self._mask = self._load_mask()
            self._mask_loaded = True
        return self._mask

    @property
    def groundtruth(self) -> "Trajectory | None":
        return self.reader.groundtruth

    def __len__(self) -> int:
        total = self.reader.count()
        if total is None:
            return 0
        n = max(0, -(-(total - self.cfg.start) // self.cfg.stride))
        if self.cfg.max_frames is not None:
            n = min(n, self.cfg.max_frames)
        return n

    def __iter__(self) -> Iterator[FrameData]:
        import cv2

        limit = self.cfg.max_frames
        if limit == 0:
            return
        out_size = (self._camera.width, self._camera.height)
        selected = 0
        skipped = 0
        frames = self.reader.frames(self.cfg.start, self.cfg.stride)
        try:
            for raw in frames:
                index = selected
                selected += 1
                if raw.image is None:
                    skipped += 1
                    log.warning("%s: skipped frame %d (%s)", self.name, raw.raw_index, raw.error or "unreadable")
                else:
                    where = raw.path or f"{self.name} frame {raw.raw_index}"
                    try:
                        image = to_uint8(raw.image, where)
                    except FrameReadError as exc:
                        skipped += 1
                        log.warning("%s: skipped frame %d (%s)", self.name, raw.raw_index, exc)
                        image = None
                    if image is not None:
                        size = (image.shape[1], image.shape[0])
                        if size != self._native_size:
                            log.warning(
                                "%s: frame is %dx%d but the sequence is %dx%d; resized to match",
                                where, size[0], size[1], *self._native_size,
                            )
                            image = cv2.resize(image, self._native_size, interpolation=cv2.INTER_AREA)
                        if out_size != self._native_size:
                            interp = cv2.INTER_AREA if self._scale < 1.0 else cv2.INTER_LINEAR
                            image = cv2.resize(image, out_size, interpolation=interp)
                        ts = raw.timestamp if raw.timestamp is not None else raw.raw_index / self.cfg.fps
                        yield FrameData(index, float(ts), image, raw.path)
                if limit is not None and selected >= limit:
                    break
        finally:
            close = getattr(frames, "close", None)
            if close is not None:
                close()
            if skipped:
                log.info("%s: %d unreadable frame(s) skipped", self.name, skipped)

    def close(self) -> None:
        self.reader.close()

    # ------------------------------------------------------------------ helpers
    def _load_mask(self) -> np.ndarray | None:
        import cv2

        if self.cfg.mask:
            mask = read_mask(self.cfg.mask)
            origin = str(self.cfg.mask)
        else:
            mask = self.reader.mask
            origin = f"{self.name} mask"
            if mask is None:
                return None
        if (mask.shape[1], mask.shape[0]) != self._native_size:
            log.warning(
                "%s is %dx%d but the frames are %dx%d; resized to match",
                origin, mask.shape[1], mask.shape[0], *self._native_size,
            )
            mask = cv2.resize(mask, self._native_size, interpolation=cv2.INTER_NEAREST)
        out_size = (self._camera.width, self._camera.height)
        if out_size != self._native_size:
            mask = cv2.resize(mask, out_size, interpolation=cv2.INTER_NEAREST)
        return np.where(mask > 0, 255, 0).astype(np.uint8)
