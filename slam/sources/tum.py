"""TUM RGB-D sequences (``rgbd_dataset_freiburgN_*``): ``rgb.txt``, ``rgb/``, ``groundtruth.txt``.

``rgb.txt`` lists ``timestamp filename`` per frame (``#`` comments). The intrinsics are, in order of
preference: ``--calib FILE``, a ``calib.txt`` in the sequence folder, or TUM's published calibration of
the Kinect/Xtion used for the sequence, picked by ``freiburg1|2|3`` in the folder name (the images are not
undistorted; fr3 images are, so fr3 has no distortion). Ground truth: ``groundtruth.txt`` (TUM format,
camera-to-world, the motion-capture clock; associate by timestamp).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from slam.camera import Camera
from slam.errors import CalibrationError, InputError
from slam.evaluation.trajectory import read_tum
from slam.sources.calib import check_increasing, load_calibration
from slam.sources.raw import ImageListReader, first_readable_size

log = logging.getLogger(__name__)

# Published intrinsics of the TUM RGB-D colour cameras, 640x480: fx fy cx cy, OpenCV k1 k2 p1 p2 k3.
TUM_INTRINSICS: dict[int, tuple[tuple[float, float, float, float], tuple[float, ...]]] = {
    1: ((517.3, 516.5, 318.6, 255.3), (0.2624, -0.9531, -0.0054, 0.0026, 1.1633)),
    2: ((520.9, 521.0, 325.1, 249.7), (0.2312, -0.7849, -0.0033, -0.0001, 0.9172)),
    3: ((535.4, 539.2, 320.1, 247.6), ()),
}
TUM_SIZE = (640, 480)


def is_tum(root: Path) -> bool:
    return (root / "rgb.txt").is_file()


def freiburg_number(root: Path) -> int | None:
    """1, 2 or 3 from ``freiburgN`` / ``frN`` in the folder name or its parents' names, else ``None``."""
    for part in [root.name, *(p.name for p in root.parents)]:
        m = re.search(r"(?:freiburg|(?<![a-z])fr)([123])(?!\d)", part.lower())
        if m:
            return int(m.group(1))
    return None


def tum_camera(number: int) -> Camera:
    """The published calibration of TUM's freiburg ``number`` camera (640x480)."""
    (fx, fy, cx, cy), dist = TUM_INTRINSICS[number]
    return Camera(TUM_SIZE[0], TUM_SIZE[1], fx, fy, cx, cy, dist)


def read_file_list(path: Path) -> tuple[np.ndarray, list[str]]:
    """``timestamp filename`` lines of ``rgb.txt`` (extra columns ignored)."""
    stamps, names = [], []
    for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.replace(",", " ").split()
        if len(parts) < 2:
            raise InputError(f"{path}:{lineno}: expected 'timestamp filename', got {line!r}")
        try:
            stamps.append(float(parts[0]))
        except ValueError as exc:
            raise InputError(f"{path}:{lineno}: timestamp {parts[0]!r} is not a number") from exc
        names.append(parts[1])
    if not names:
        raise InputError(f"{path}: lists no frames")
    return check_increasing(np.asarray(stamps), str(path)), names


def open_tum(root: str | Path, calib: str | Path | None = None) -> ImageListReader:
    """Reader of the TUM RGB-D sequence at ``root``."""
    root = Path(root)
    stamps, names = read_file_list(root / "rgb.txt")
    paths = [root / n for n in names]
    width, height = first_readable_size(paths, str(root / "rgb.txt"))
    if calib:
        camera = load_calibration(calib, width, height)
    elif (root / "calib.txt").is_file():
        camera = load_calibration(root / "calib.txt", width, height)
    else:
        number = freiburg_number(root)
        if number is None:
            raise CalibrationError(
                f"{root}: cannot tell the TUM camera (no 'freiburg1|2|3' in the folder name) and no calib.txt; "
                "pass --calib FILE"
            )
        camera = tum_camera(number)
        if (camera.width, camera.height) != (width, height):
            raise CalibrationError(
                f"{root}: TUM freiburg{number} intrinsics are for 640x480 but the images are {width}x{height}; "
                "pass --calib FILE"
            )
        log.info("TUM %s: freiburg%d intrinsics", root.name, number)
    gt_path = root / "groundtruth.txt"
    groundtruth = read_tum(gt_path) if gt_path.is_file() else None
    return ImageListReader(f"tum:{root.name}", paths, camera, stamps, None, groundtruth)
