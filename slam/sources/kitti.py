"""KITTI odometry sequences, left gray camera ``image_0``.

::

    ROOT/sequences/NN/image_0/*.png
    ROOT/sequences/NN/calib.txt     'P0: 12 numbers' (3x4 projection, row-major); bare rows are read as P0..
    ROOT/sequences/NN/times.txt     one timestamp (s) per frame
    ROOT/poses/NN.txt               optional: one 3x4 camera-to-world matrix per line (row-major)

PATH may be ``ROOT`` (when it has a single sequence), ``ROOT/sequences`` (same) or ``ROOT/sequences/NN``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from slam.camera import Camera
from slam.errors import CalibrationError, InputError
from slam.evaluation.trajectory import Trajectory
from slam.sources.calib import load_calibration, read_times
from slam.sources.images import list_images
from slam.sources.raw import ImageListReader, first_readable_size

log = logging.getLogger(__name__)

CAMERA_DIR = "image_0"


def find_sequence_dir(root: Path) -> Path | None:
    """The ``sequences/NN`` folder for ``root``; InputError when several sequences are there to choose from."""
    if (root / CAMERA_DIR).is_dir():
        return root
    seqs_dir = root / "sequences" if (root / "sequences").is_dir() else root
    if not seqs_dir.is_dir():
        return None
    candidates = sorted(p for p in seqs_dir.iterdir() if p.is_dir() and (p / CAMERA_DIR).is_dir())
    if not candidates:
        return None
    if len(candidates) > 1:
        raise InputError(
            f"{root}: {len(candidates)} KITTI sequences ({', '.join(p.name for p in candidates[:8])}...); "
            f"give one, e.g. {candidates[0]}"
        )
    return candidates[0]


def is_kitti(root: Path) -> bool:
    try:
        return find_sequence_dir(root) is not None
    except InputError:
        return True  # a KITTI root with several sequences: open_kitti explains


def read_projection(path: Path, key: str = "P0") -> np.ndarray:
    """The 3x4 projection matrix ``key`` of a KITTI ``calib.txt`` (first bare row when unlabelled)."""
    if not path.is_file():
        raise CalibrationError(f"{path}: KITTI calibration file not found")
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    chosen = None
    for line in lines:
        if ":" in line:
            label, rest = line.split(":", 1)
            if label.strip() == key:
                chosen = rest
                break
    if chosen is None:
        bare = [ln for ln in lines if ":" not in ln]
        if bare and key == "P0":
            chosen = bare[0]
    if chosen is None:
        raise CalibrationError(f"{path}: no '{key}:' line (expected 'P0: 12 numbers')")
    try:
        values = np.array([float(v) for v in chosen.split()])
    except ValueError as exc:
        raise CalibrationError(f"{path}: cannot parse the {key} row {chosen.strip()!r}") from exc
    if values.size != 12:
        raise CalibrationError(f"{path}: {key} needs 12 numbers (3x4 matrix), got {values.size}")
    if not np.all(np.isfinite(values)):
        raise CalibrationError(f"{path}: {key} contains NaN or infinite values")
    return values.reshape(3, 4)


def read_kitti_poses(path: Path, timestamps: np.ndarray) -> Trajectory:
    """``poses/NN.txt`` (3x4 camera-to-world per line) with the frames' timestamps."""
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            values = [float(v) for v in line.split()]
        except ValueError as exc:
            raise InputError(f"{path}:{lineno}: not a number in {line.strip()!r}") from exc
        if len(values) != 12:
            raise InputError(f"{path}:{lineno}: expected 12 numbers (3x4 pose, row-major), got {len(values)}")
        rows.append(values)
    if not rows:
        raise InputError(f"{path}: no poses")
    data = np.asarray(rows)
    if not np.all(np.isfinite(data)):
        raise InputError(f"{path}: poses contain NaN or infinite values")
    n = min(len(data), len(timestamps))
    if len(data) != len(timestamps):
        log.warning("%s: %d poses for %d frames; using the first %d", path, len(data), len(timestamps), n)
    T = np.tile(np.eye(4), (n, 1, 1))
    T[:, :3, :] = data[:n].reshape(n, 3, 4)
    return Trajectory(timestamps[:n], T)


def open_kitti(root: str | Path, calib: str | Path | None = None) -> ImageListReader:
    """Reader of a KITTI odometry sequence (see the module docstring for PATH)."""
    root = Path(root)
    seq = find_sequence_dir(root)
    if seq is None:
        raise InputError(f"{root}: not a KITTI odometry sequence (no {CAMERA_DIR}/ folder)")
    image_dir = seq / CAMERA_DIR
    paths = list_images(image_dir)
    if not paths:
        raise InputError(f"{image_dir}: folder has no image files")
    width, height = first_readable_size(paths, str(image_dir))
    if calib:
        camera = load_calibration(calib, width, height)
    else:
        P = read_projection(seq / "calib.txt")
        try:
            camera = Camera(width, height, float(P[0, 0]), float(P[1, 1]), float(P[0, 2]), float(P[1, 2]))
        except CalibrationError as exc:
            raise CalibrationError(f"{seq / 'calib.txt'}: {exc}") from exc
    if (seq / "times.txt").is_file():
        timestamps = read_times(seq / "times.txt")
        if len(timestamps) != len(paths):
            raise InputError(
                f"{seq / 'times.txt'}: {len(timestamps)} timestamps but {len(paths)} images in {image_dir}"
            )
    else:
        log.warning("%s: no times.txt; using KITTI's 10 Hz frame rate for timestamps", seq)
        timestamps = np.arange(len(paths), dtype=np.float64) * 0.1
    groundtruth = None
    for pose_path in (seq.parent.parent / "poses" / f"{seq.name}.txt", seq / "poses.txt"):
        if pose_path.is_file():
            groundtruth = read_kitti_poses(pose_path, timestamps)
            break
    return ImageListReader(f"kitti:{seq.name}", paths, camera, timestamps, None, groundtruth)
