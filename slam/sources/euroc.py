"""EuRoC MAV sequences (ASL folder format), camera ``cam0``.

::

    SEQ/mav0/cam0/data.csv          #timestamp [ns],filename
    SEQ/mav0/cam0/data/*.png
    SEQ/mav0/cam0/sensor.yaml       intrinsics, radial-tangential distortion, T_BS (camera -> body)
    SEQ/mav0/state_groundtruth_estimate0/data.csv
                                    timestamp [ns], p_RS_R xyz [m], q_RS_R w x y z, ...  (body in world)

The ground truth gives the body (IMU) pose ``T_wb``; the camera pose is ``T_wc = T_wb @ T_BS``.
Note the quaternion order of the csv: **w x y z**.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np

from slam.errors import InputError
from slam.evaluation.trajectory import Trajectory
from slam.geometry.se3 import quat_to_rot
from slam.sources.calib import check_increasing, fit_camera_to_image, load_calibration, read_sensor_yaml
from slam.sources.raw import ImageListReader, first_readable_size

log = logging.getLogger(__name__)


def find_cam_dir(root: Path, cam: str = "cam0") -> Path | None:
    """The ``cam0`` folder of a EuRoC sequence given its root, its ``mav0`` or the camera folder itself."""
    for candidate in (root / "mav0" / cam, root / cam, root):
        if (candidate / "data.csv").is_file() and (candidate / "sensor.yaml").is_file():
            return candidate
    return None


def is_euroc(root: Path) -> bool:
    return find_cam_dir(root) is not None


def _read_csv_rows(path: Path, min_cols: int) -> list[list[str]]:
    rows = []
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        for lineno, row in enumerate(csv.reader(fh), 1):
            if not row or not row[0].strip() or row[0].lstrip().startswith("#"):
                continue
            if len(row) < min_cols:
                raise InputError(
                    f"{path}:{lineno}: expected at least {min_cols} comma-separated columns, got {len(row)}"
                )
            rows.append([c.strip() for c in row])
    if not rows:
        raise InputError(f"{path}: no rows")
    return rows


def read_image_list(path: Path) -> tuple[np.ndarray, list[str]]:
    """``data.csv`` of a camera: timestamps in seconds and file names."""
    rows = _read_csv_rows(path, 2)
    try:
        stamps_ns = np.array([int(r[0]) for r in rows], dtype=np.int64)
    except ValueError as exc:
        raise InputError(f"{path}: timestamps must be integers in nanoseconds ({exc})") from exc
    return check_increasing(stamps_ns * 1e-9, str(path)), [r[1] for r in rows]


def read_groundtruth_csv(path: Path, T_BS: np.ndarray | None) -> Trajectory:
    """``state_groundtruth_estimate0/data.csv`` as the camera-to-world trajectory ``T_wb @ T_BS``."""
    rows = _read_csv_rows(path, 8)
    try:
        data = np.array([[float(v) for v in r[:8]] for r in rows])
    except ValueError as exc:
        raise InputError(f"{path}: not a number ({exc})") from exc
    if not np.all(np.isfinite(data)):
        raise InputError(f"{path}: ground truth contains NaN or infinite values")
    stamps = np.array([int(r[0]) for r in rows], dtype=np.int64) * 1e-9
    T_wb = np.tile(np.eye(4), (len(data), 1, 1))
    q_wxyz = data[:, 4:8]
    T_wb[:, :3, :3] = quat_to_rot(q_wxyz[:, [1, 2, 3, 0]])
    T_wb[:, :3, 3] = data[:, 1:4]
    T_wc = T_wb @ T_BS if T_BS is not None else T_wb
    return Trajectory(stamps, T_wc)


def open_euroc(root: str | Path, calib: str | Path | None = None) -> ImageListReader:
    """Reader of cam0 of the EuRoC sequence at ``root`` (sequence folder, ``mav0`` or ``cam0``)."""
    root = Path(root)
    cam_dir = find_cam_dir(root)
    if cam_dir is None:
        raise InputError(f"{root}: not a EuRoC sequence (no mav0/cam0/data.csv and sensor.yaml)")
    stamps, names = read_image_list(cam_dir / "data.csv")
    paths = [cam_dir / "data" / n for n in names]
    width, height = first_readable_size(paths, str(cam_dir / "data"))
    yaml_camera, T_BS, _ = read_sensor_yaml(cam_dir / "sensor.yaml")
    if calib:
        camera = load_calibration(calib, width, height)
    else:
        camera = fit_camera_to_image(yaml_camera, width, height, what=str(cam_dir / "sensor.yaml"))
    mav0 = cam_dir.parent
    gt_path = mav0 / "state_groundtruth_estimate0" / "data.csv"
    groundtruth = None
    if gt_path.is_file():
        if T_BS is None:
            log.warning("%s has no T_BS; ground truth is the body pose, not the camera pose", cam_dir / "sensor.yaml")
        groundtruth = read_groundtruth_csv(gt_path, T_BS)
    name = mav0.parent.name if mav0.name == "mav0" else cam_dir.name
    return ImageListReader(f"euroc:{name}", paths, camera, stamps, None, groundtruth)
