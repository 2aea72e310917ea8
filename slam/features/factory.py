"""Build the feature extractor named by ``FeatureConfig.type``."""

from __future__ import annotations

import importlib

from slam.config import FeatureConfig
from slam.errors import ConfigError, DependencyError
from slam.features.base import FeatureExtractor

EXTRACTOR_TYPES = ("sift", "orb", "superpoint")
SIFT_BACKENDS = ("auto", "opencv", "torch")


def create_extractor(cfg: FeatureConfig, device: str = "cpu") -> FeatureExtractor:
    """The extractor for ``cfg.type`` (sift | orb | superpoint).

    ``device`` ('cpu' or 'cuda') matters for SuperPoint and for SIFT, whose ``sift_backend`` 'auto' picks the
    torch implementation on CUDA and OpenCV's on the CPU; heavy modules are imported lazily.
    Raises ConfigError for an unknown type or invalid settings, DependencyError when SuperPoint's module or
    torch is not available.
    """
    kind = str(cfg.type).strip().lower()
    if kind == "sift":
        backend = str(cfg.sift_backend).strip().lower()
        if backend not in SIFT_BACKENDS:
            raise ConfigError(f"features.sift_backend {cfg.sift_backend!r} is unknown; choose one of {', '.join(SIFT_BACKENDS)}")
        if backend == "torch" or (backend == "auto" and str(device).startswith("cuda")):
            # SIFT written in torch: the whole pipeline on the GPU (OpenCV SIFT stays the CPU default;
            # sift_backend=torch runs the same code on the CPU, for comparisons)
            from slam.features.sift_torch import TorchSIFTExtractor

            return TorchSIFTExtractor(cfg, device=device)
        from slam.features.sift import SiftExtractor

        return SiftExtractor(cfg)
    if kind == "orb":
        from slam.features.orb import OrbExtractor

        return OrbExtractor(cfg)
    if kind == "superpoint":
        try:
            module = importlib.import_module("slam.features.superpoint")
        except ModuleNotFoundError as exc:
            if exc.name == "slam.features.superpoint":
                raise DependencyError(
                    "features.type 'superpoint' is not available in this installation "
                    "(module slam.features.superpoint is missing); use features.type sift or orb"
                ) from exc
            raise DependencyError(
                f"features.type 'superpoint' needs the Python package {exc.name!r}, which is not installed "
                "(install torch, e.g. `pip install torch`), or use features.type sift or orb"
            ) from exc
        extractor_cls = getattr(module, "SuperPointExtractor", None)
        if extractor_cls is None:
            raise DependencyError("slam.features.superpoint has no SuperPointExtractor; use features.type sift or orb")
        return extractor_cls(cfg, device=device)
    raise ConfigError(f"features.type {cfg.type!r} is unknown; choose one of {', '.join(EXTRACTOR_TYPES)}")
