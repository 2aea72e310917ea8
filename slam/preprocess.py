"""Turns a source image into a :class:`~slam.map.frame.Frame`: luminance, per-frame mask, keypoints.

The static mask (field of view, ``mask.png``) is combined with a per-frame specular-highlight mask when
the config asks for it. Keypoints are undistorted once here, so tracking and mapping only ever see
ideal-pinhole pixel coordinates.
"""

from __future__ import annotations

import numpy as np

from slam.camera import Camera
from slam.config import Config
from slam.features.base import FeatureExtractor, Features
from slam.features.photometric import to_gray
from slam.map.frame import Frame


def sample_colors(image: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
    """``(N, 3)`` uint8 RGB colour of ``image`` (gray or BGR) at ``keypoints (N, 2)``."""
    if len(keypoints) == 0:
        return np.zeros((0, 3), np.uint8)
    h, w = image.shape[:2]
    xs = np.clip(np.rint(keypoints[:, 0]).astype(int), 0, w - 1)
    ys = np.clip(np.rint(keypoints[:, 1]).astype(int), 0, h - 1)
    if image.ndim == 2:
        g = image[ys, xs]
        return np.stack([g, g, g], axis=1).astype(np.uint8)
    return image[ys, xs][:, ::-1].astype(np.uint8)


class FramePreprocessor:
    """Masks, extracts and undistorts; one instance per run."""

    def __init__(self, cfg: Config, camera: Camera, extractor: FeatureExtractor, mask: np.ndarray | None) -> None:
        self.cfg = cfg
        self.camera = camera
        self.extractor = extractor
        self.static_mask = self._prepare_static_mask(mask)

    def _prepare_static_mask(self, mask: np.ndarray | None) -> np.ndarray | None:
        if mask is None:
            return None
        import cv2

        mask = (np.asarray(mask) > 0).astype(np.uint8) * 255
        if mask.shape[:2] != (self.camera.height, self.camera.width):
            mask = cv2.resize(mask, (self.camera.width, self.camera.height), interpolation=cv2.INTER_NEAREST)
        margin = int(self.cfg.masks.fov_margin_px)
        if margin > 0:
            kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin + 1, 2 * margin + 1))
            mask = cv2.erode(mask, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
        return mask

    def frame_mask(self, image: np.ndarray) -> np.ndarray | None:
        """Static mask combined with this frame's specular-highlight mask (255 = usable)."""
        mask = self.static_mask
        if self.cfg.masks.specular:
            import cv2

            from slam.features.masks import specular_mask

            m = self.cfg.masks
            highlights = specular_mask(image, m.specular_value, m.specular_saturation, m.specular_dilate_px)
            usable = cv2.bitwise_not(highlights)
            mask = usable if mask is None else np.minimum(mask, usable)
        return mask

    def make_frame(self, index: int, timestamp: float, image: np.ndarray, extract: bool = True) -> tuple[Frame, np.ndarray | None]:
        """A Frame with keypoints (or none when ``extract`` is False) and the mask used."""
        gray = to_gray(image)
        mask = self.frame_mask(image)
        if extract:
            features = self.extractor.extract(gray, mask)
        else:
            features = Features.empty(self.extractor.descriptor_dim, self.extractor.binary)
        return self.frame_from_features(index, timestamp, image, gray, features), mask

    def frame_from_features(
        self, index: int, timestamp: float, image: np.ndarray, gray: np.ndarray, features: Features
    ) -> Frame:
        kp_undist = self.camera.undistort_points(features.keypoints) if len(features) else np.zeros((0, 2))
        inv_sigma2 = (1.0 / features.scale_factor ** (2.0 * features.octaves.astype(np.float64))).astype(np.float64)
        return Frame(
            index=index,
            timestamp=timestamp,
            gray=gray,
            features=features,
            kp_undist=np.asarray(kp_undist, dtype=np.float64).reshape(-1, 2),
            inv_sigma2=inv_sigma2,
            colors=sample_colors(image, features.keypoints),
            image=image,
        )
