"""Calibration and timestamp files shared by the readers.

* :func:`load_calibration`: a ``--calib`` file, either the folder layout's ``calib.txt``
  (``fx fy cx cy [k1 k2 p1 p2 [k3]]``) or a EuRoC-style ``sensor.yaml`` (``intrinsics``,
  ``distortion_model``, ``distortion_coefficients``, ``resolution``).
* :func:`fit_camera_to_image`: a calibration made for another resolution, rescaled (with a warning).
* :func:`read_times`: one timestamp in seconds per line, strictly increasing.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from slam.camera import Camera, read_calib_file
from slam.errors import CalibrationError, InputError

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ cameras
def fit_camera_to_image(camera: Camera, width: int, height: int, what: str = "calibration") -> Camera:
    """``camera`` for images of ``width x height``: unchanged when sizes agree, else rescaled per axis.

    Raises :class:`CalibrationError` when the aspect ratio differs by more than 1 % (a crop, not a resize).
    """
    if (camera.width, camera.height) == (width, height):
        return camera
    sx = width / camera.width
    sy = height / camera.height
    if abs(sx / sy - 1.0) > 0.01:
        raise CalibrationError(
            f"{what} is for {camera.width}x{camera.height} images but the frames are {width}x{height} "
            "(different aspect ratio); give a calibration for this resolution with --calib"
        )
    log.warning(
        "%s is for %dx%d images but the frames are %dx%d; intrinsics rescaled to match",
        what, camera.width, camera.height, width, height,
    )
    return replace(
        camera,
        width=width,
        height=height,
        fx=camera.fx * sx,
        fy=camera.fy * sy,
        cx=(camera.cx + 0.5) * sx - 0.5,
        cy=(camera.cy + 0.5) * sy - 0.5,
    )


def _read_opencv_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping; OpenCV's ``%YAML:1.0`` header and ``!!opencv-matrix`` tags are tolerated."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise CalibrationError(f"{path}: cannot read calibration file ({exc.strerror})") from exc
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("%")]
    text = "\n".join(lines).replace("!!opencv-matrix", "")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CalibrationError(f"{path}: invalid YAML calibration ({exc})") from exc
    if not isinstance(data, dict):
        raise CalibrationError(f"{path}: calibration YAML must be a mapping")
    return data


def _numbers(path: Path, key: str, value: Any, count: tuple[int, ...]) -> list[float]:
    if isinstance(value, dict) and "data" in value:
        value = value["data"]
    if not isinstance(value, (list, tuple)):
        raise CalibrationError(f"{path}: key {key!r} must be a list of numbers, got {value!r}")
    try:
        numbers = [float(v) for v in value]
    except (TypeError, ValueError) as exc:
        raise CalibrationError(f"{path}: key {key!r} has a non-number in {value!r}") from exc
    if len(numbers) not in count:
        raise CalibrationError(f"{path}: key {key!r} needs {' or '.join(map(str, count))} numbers, got {len(numbers)}")
    if not np.all(np.isfinite(numbers)):
        raise CalibrationError(f"{path}: key {key!r} contains NaN or infinite values")
    return numbers


def read_sensor_yaml(path: str | Path) -> tuple[Camera, np.ndarray | None, float | None]:
    """Read a EuRoC ``sensor.yaml``: (camera at its ``resolution``, ``T_BS`` 4x4 or None, ``rate_hz`` or None).

    ``T_BS`` maps camera (sensor) coordinates to the body (IMU) frame.
    """
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"{path}: calibration file not found")
    data = _read_opencv_yaml(path)
    if "intrinsics" not in data:
        raise CalibrationError(f"{path}: no 'intrinsics: [fu, fv, cu, cv]' key (EuRoC sensor.yaml expected)")
    fx, fy, cx, cy = _numbers(path, "intrinsics", data["intrinsics"], (4,))
    if "resolution" not in data:
        raise CalibrationError(f"{path}: no 'resolution: [width, height]' key")
    width, height = (int(v) for v in _numbers(path, "resolution", data["resolution"], (2,)))
    dist: list[float] = []
    if data.get("distortion_coefficients") is not None:
        dist = _numbers(path, "distortion_coefficients", data["distortion_coefficients"], (0, 4, 5, 8))
    model_name = str(data.get("distortion_model", "radial-tangential")).lower()
    if model_name in ("radial-tangential", "radtan", "plumb_bob", "pinhole", "none"):
        model = "pinhole"
    elif model_name in ("equidistant", "fisheye", "kannala-brandt", "kb4"):
        model = "fisheye"
    else:
        raise CalibrationError(
            f"{path}: unsupported distortion_model {model_name!r}; expected radial-tangential or equidistant"
        )
    T_BS = None
    if "T_BS" in data:
        T_BS = np.asarray(_numbers(path, "T_BS", data["T_BS"], (16,)), dtype=np.float64).reshape(4, 4)
    rate = data.get("rate_hz")
    rate_hz = float(rate) if isinstance(rate, (int, float)) and rate > 0 else None
    try:
        camera = Camera(width, height, fx, fy, cx, cy, tuple(dist), model)
    except CalibrationError as exc:
        raise CalibrationError(f"{path}: {exc}") from exc
    return camera, T_BS, rate_hz


def load_calibration(path: str | Path, width: int, height: int) -> Camera:
    """A ``--calib`` file for frames of ``width x height`` (``.yaml``/``.yml``: EuRoC sensor.yaml; else calib.txt).

    Raises :class:`CalibrationError` naming the file when it is missing, unparsable or impossible
    (NaN, non-positive focal length).
    """
    path = Path(path)
    if path.suffix.lower() in (".yaml", ".yml"):
        camera, _, _ = read_sensor_yaml(path)
        return fit_camera_to_image(camera, width, height, what=str(path))
    return read_calib_file(path, width, height)


# --------------------------------------------------------------------------------------- timestamps
def check_increasing(times: np.ndarray, source: str) -> np.ndarray:
    """Return ``times`` if finite and strictly increasing, else raise :class:`InputError` naming the place."""
    times = np.asarray(times, dtype=np.float64).reshape(-1)
    bad = np.flatnonzero(~np.isfinite(times))
    if len(bad):
        raise InputError(f"{source}: timestamp {bad[0] + 1} is not a finite number")
    if len(times) > 1:
        steps = np.diff(times)
        bad = np.flatnonzero(steps <= 0)
        if len(bad):
            i = int(bad[0])
            raise InputError(
                f"{source}: timestamps must increase strictly; entry {i + 2} ({times[i + 1]!r}) "
                f"is not after entry {i + 1} ({times[i]!r})"
            )
    return times


def read_times(path: str | Path) -> np.ndarray:
    """Read ``times.txt``: one timestamp in seconds per line (first column; ``#`` comments allowed)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise InputError(f"{path}: cannot read timestamps ({exc.strerror})") from exc
    values = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        token = line.replace(",", " ").split()[0]
        try:
            values.append(float(token))
        except ValueError as exc:
            raise InputError(f"{path}:{lineno}: not a timestamp in seconds: {line!r}") from exc
    if not values:
        raise InputError(f"{path}: no timestamps")
    return check_increasing(np.asarray(values), str(path))
