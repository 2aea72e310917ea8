"""The plain folder layout (DESIGN.md), and a bare folder of images.

::

    SEQ/
      rgb/ or images/    frames, sorted by file name (numbers compared numerically)
      calib.txt          fx fy cx cy [k1 k2 p1 p2 [k3]]   (or --calib FILE)
      times.txt          optional: one timestamp (s) per frame, strictly increasing
      groundtruth.txt    optional: TUM format, camera-to-world
      mask.png           optional: non-zero = usable pixels

A folder that holds the images itself (no ``rgb/``) works too, with ``calib.txt`` beside the images or in
the parent folder.
"""

from __future__ import annotations

import logging
from pathlib import Path

from slam.errors import CalibrationError, InputError
from slam.evaluation.trajectory import read_tum
from slam.sources.calib import load_calibration, read_times
from slam.sources.images import list_images, read_mask
from slam.sources.raw import ImageListReader, first_readable_size

log = logging.getLogger(__name__)

IMAGE_DIRS = ("rgb", "images")


def image_dir_of(root: Path) -> Path | None:
    """The folder holding the frames of the folder layout at ``root``, or ``None``."""
    for name in IMAGE_DIRS:
        if (root / name).is_dir():
            return root / name
    if root.is_dir() and list_images(root):
        return root
    return None


def open_folder(root: str | Path, calib: str | Path | None = None) -> ImageListReader:
    """Reader of the folder layout at ``root`` (see the module docstring).

    Raises :class:`InputError` for a folder without frames or a ``times.txt`` whose length disagrees,
    :class:`CalibrationError` for a missing or unparsable calibration.
    """
    root = Path(root)
    image_dir = image_dir_of(root)
    if image_dir is None:
        raise InputError(f"{root}: no frames (expected images in {root / 'rgb'}, {root / 'images'} or {root})")
    paths = list_images(image_dir)
    if not paths:
        raise InputError(f"{image_dir}: folder has no image files (.png, .jpg, .bmp, .tif, ...)")
    # the folder that owns calib.txt/times.txt/...: root, or the parent when the images are in root itself
    meta = root
    calib_path = Path(calib) if calib else None
    if calib_path is None:
        for candidate in (root / "calib.txt", image_dir.parent / "calib.txt"):
            if candidate.is_file():
                calib_path = candidate
                meta = candidate.parent
                break
    if calib_path is None:
        raise CalibrationError(
            f"{root}: no calib.txt (one line 'fx fy cx cy [k1 k2 p1 p2 [k3]]'); write one or pass --calib FILE"
        )
    width, height = first_readable_size(paths, str(image_dir))
    camera = load_calibration(calib_path, width, height)

    timestamps = None
    times_path = meta / "times.txt"
    if times_path.is_file():
        timestamps = read_times(times_path)
        if len(timestamps) != len(paths):
            raise InputError(
                f"{times_path}: {len(timestamps)} timestamps but {len(paths)} images in {image_dir}; "
                "times.txt needs exactly one line per frame"
            )
    mask = read_mask(meta / "mask.png") if (meta / "mask.png").is_file() else None
    gt_path = meta / "groundtruth.txt"
    groundtruth = read_tum(gt_path) if gt_path.is_file() else None
    log.info("folder layout %s: %d frames %dx%d", root, len(paths), width, height)
    return ImageListReader(f"folder:{root.name}", paths, camera, timestamps, mask, groundtruth)
