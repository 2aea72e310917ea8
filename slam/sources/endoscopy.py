"""Readers for public endoscopy data sets, from their published layouts (see ``datasets/README.md``).

* **C3VD** (Bobrow et al. 2023): one folder per video, ``{i}_color.png`` (or ``{i:04d}_color.png``),
  ``pose.txt`` with one camera-to-world 4x4 matrix per line as 16 comma-separated numbers in
  **column-major** order, translation in **millimetres** (an optional 17th leading number, a time, is
  ignored). Ground truth is returned in metres. Intrinsics: ``--calib``, ``calib.txt`` in the folder, or
  :data:`C3VD_FISHEYE` (a Kannala-Brandt fit of the published omnidirectional calibration of the
  Olympus CF-HQ190L, 1350x1080). Frame ``i`` has time ``i / fps``.
* **EndoSLAM** (Ozyoruk et al. 2021): a trajectory folder ``.../<Cam>/<Organ>/<Trajectory>/`` with
  ``Frames/`` (``frame_NNNNNN.jpg``) and ``Poses/`` (one ``.xlsx`` or ``.csv`` table with a header:
  ``ImageFrame, trans_x, trans_y, trans_z, quot_x, quot_y, quot_z, quot_w`` for HighCam/LowCam, joined on
  the frame number in the file name; or ``tX, tY, tZ, rX, rY, rZ, rW`` for UnityCam, one row per frame in
  order). Poses are read as camera-to-world, quaternion ``x y z w``, units as given (metres for the real
  cameras). Intrinsics: ``--calib``, ``calib.txt``, else the camera's ``Calibration/cam.txt`` (or
  ``cam.txt.txt``) found in a parent folder, ``key: value`` lines with ``fx fy cx cy`` and optional
  ``k1 k2 p1 p2 k3``. Frame ``N`` (number in its file name) has time ``N / fps`` with the camera's frame
  rate (HighCam/LowCam 20, UnityCam 30, MiroCam 3; else ``source.fps``).
* **Hamlyn** (rectified sequences as redistributed with Endo-Depth-and-Motion): ``rectifiedNN/`` with
  ``image01/`` (left, rectified) and ``intrinsics.txt`` (3x3 or 3x4 matrix). No distortion, no ground truth;
  frame ``i`` has time ``i / fps``.
"""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path

import numpy as np

from slam.camera import Camera
from slam.errors import CalibrationError, DependencyError, InputError
from slam.evaluation.trajectory import Trajectory, read_tum
from slam.geometry.se3 import quat_to_rot
from slam.sources.calib import fit_camera_to_image, load_calibration
from slam.sources.images import list_images, natural_key, read_mask
from slam.sources.raw import ImageListReader, first_readable_size

log = logging.getLogger(__name__)

# Kannala-Brandt (OpenCV fisheye) fit of C3VD's omnidirectional calibration, 1350x1080 frames.
C3VD_SIZE = (1350, 1080)
C3VD_FISHEYE = Camera(
    C3VD_SIZE[0], C3VD_SIZE[1],
    767.3861511125845, 767.5058656118406, 679.054265997005, 543.646891684636,
    (-0.18867185058223412, -0.003927337093919806, 0.030524814153620117, -0.012756926010904904),
    "fisheye",
)
ENDOSLAM_FPS = {"highcam": 20.0, "lowcam": 20.0, "unitycam": 30.0, "mirocam": 3.0}


def _leading_number(name: str) -> int | None:
    m = re.match(r"(\d+)", name)
    return int(m.group(1)) if m else None


def _last_number(name: str) -> int | None:
    found = re.findall(r"\d+", Path(name).stem)
    return int(found[-1]) if found else None


# ============================================================================================ C3VD
def c3vd_frames(root: Path) -> list[Path]:
    """``*_color.png`` frames of a C3VD folder in frame order (or ``rgb/*.png`` of the raw layout)."""
    frames = [p for p in root.glob("*_color.png") if _leading_number(p.name) is not None]
    if frames:
        return sorted(frames, key=lambda p: _leading_number(p.name))
    if (root / "rgb").is_dir():
        return list_images(root / "rgb")
    return []


def is_c3vd(root: Path) -> bool:
    return (root / "pose.txt").is_file() and bool(c3vd_frames(root))


def read_c3vd_poses(path: Path) -> np.ndarray:
    """``pose.txt`` to ``(N, 4, 4)`` camera-to-world poses in metres (column-major, millimetres in the file)."""
    mats = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        tokens = line.replace(",", " ").split()
        try:
            values = [float(t) for t in tokens]
        except ValueError as exc:
            raise InputError(f"{path}:{lineno}: not a number in {line!r}") from exc
        if len(values) == 17:  # '<time> <16 values>' of the registration tool's pose log
            values = values[1:]
        if len(values) != 16:
            raise InputError(f"{path}:{lineno}: expected 16 numbers (4x4 column-major pose), got {len(values)}")
        mats.append(values)
    if not mats:
        raise InputError(f"{path}: no poses")
    data = np.asarray(mats, dtype=np.float64)
    if not np.all(np.isfinite(data)):
        raise InputError(f"{path}: poses contain NaN or infinite values")
    T = data.reshape(-1, 4, 4).transpose(0, 2, 1).copy()  # column-major -> row-major
    if not np.allclose(T[:, 3, :], [0.0, 0.0, 0.0, 1.0], atol=1e-6):
        raise InputError(f"{path}: a pose's last row is not [0 0 0 1]; is the file row-major rather than column-major?")
    T[:, :3, 3] /= 1000.0  # millimetres -> metres
    return T


def open_c3vd(root: str | Path, calib: str | Path | None = None, fps: float = 30.0) -> ImageListReader:
    """Reader of one C3VD video folder (see the module docstring)."""
    root = Path(root)
    paths = c3vd_frames(root)
    if not paths:
        raise InputError(f"{root}: no C3VD frames ('*_color.png')")
    width, height = first_readable_size(paths, str(root))
    if calib:
        camera = load_calibration(calib, width, height)
    elif (root / "calib.txt").is_file():
        camera = load_calibration(root / "calib.txt", width, height)
    else:
        camera = fit_camera_to_image(C3VD_FISHEYE, width, height, what="C3VD default calibration")
    timestamps = np.arange(len(paths), dtype=np.float64) / fps
    T_wc = read_c3vd_poses(root / "pose.txt")
    n = min(len(T_wc), len(paths))
    if len(T_wc) != len(paths):
        log.warning("%s: %d poses for %d frames; ground truth covers the first %d", root / "pose.txt",
                    len(T_wc), len(paths), n)
    groundtruth = Trajectory(timestamps[:n], T_wc[:n])
    mask = read_mask(root / "mask.png") if (root / "mask.png").is_file() else None
    return ImageListReader(f"c3vd:{root.name}", paths, camera, timestamps, mask, groundtruth)


# ======================================================================================== EndoSLAM
def is_endoslam(root: Path) -> bool:
    return (root / "Frames").is_dir() and bool(list_images(root / "Frames"))


def read_key_value_calib(path: Path, width: int, height: int) -> Camera:
    """EndoSLAM ``cam.txt``: ``key: value`` lines with ``fx fy cx cy`` and optional ``k1 k2 p1 p2 k3``."""
    values: dict[str, float] = {}
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise CalibrationError(f"{path}: cannot read calibration ({exc.strerror})") from exc
    for lineno, line in enumerate(text.splitlines(), 1):
        if ":" not in line and "=" not in line:
            continue
        key, value = re.split(r"[:=]", line, maxsplit=1)
        key = key.strip().lower()
        try:
            values[key] = float(value.strip().split()[0])
        except (ValueError, IndexError) as exc:
            raise CalibrationError(f"{path}:{lineno}: value of {key!r} is not a number: {line.strip()!r}") from exc
    missing = [k for k in ("fx", "fy", "cx", "cy") if k not in values]
    if missing:
        raise CalibrationError(f"{path}: missing {', '.join(missing)} (expected 'fx: ...' lines)")
    if abs(values.get("skew", 0.0)) > 1e-9:
        log.warning("%s: skew %.4g ignored (the camera model has no skew)", path, values["skew"])
    dist: tuple[float, ...] = ()
    if any(k in values for k in ("k1", "k2", "p1", "p2", "k3")):
        dist = tuple(values.get(k, 0.0) for k in ("k1", "k2", "p1", "p2", "k3"))
    try:
        return Camera(width, height, values["fx"], values["fy"], values["cx"], values["cy"], dist)
    except CalibrationError as exc:
        raise CalibrationError(f"{path}: {exc}") from exc


def find_endoslam_calib(root: Path, levels: int = 4) -> Path | None:
    """``Calibration/cam.txt`` (or ``cam.txt.txt``) of the camera folder above a trajectory folder."""
    for parent in [root, *list(root.parents)[:levels]]:
        for name in ("cam.txt", "cam.txt.txt"):
            candidate = parent / "Calibration" / name
            if candidate.is_file():
                return candidate
    return None


def endoslam_fps(root: Path, default: float) -> float:
    for part in [root.name, *(p.name for p in root.parents)]:
        fps = ENDOSLAM_FPS.get(part.lower())
        if fps is not None:
            return fps
    return default


_COLUMN_ALIASES = {
    "frame": ("imageframe", "image_frame", "frame", "frame_id", "frameid", "frame_index"),
    "tx": ("trans_x", "tx", "t_x", "px", "p_x", "pos_x", "x"),
    "ty": ("trans_y", "ty", "t_y", "py", "p_y", "pos_y", "y"),
    "tz": ("trans_z", "tz", "t_z", "pz", "p_z", "pos_z", "z"),
    "qx": ("quot_x", "quat_x", "qx", "q_x", "rx", "rot_x"),
    "qy": ("quot_y", "quat_y", "qy", "q_y", "ry", "rot_y"),
    "qz": ("quot_z", "quat_z", "qz", "q_z", "rz", "rot_z"),
    "qw": ("quot_w", "quat_w", "qw", "q_w", "rw", "rot_w"),
}


def _read_table(path: Path) -> list[list]:
    """Rows of cells of a pose table (``.xlsx`` through openpyxl; ``.csv``/``.txt`` with , ; tab or spaces)."""
    if path.suffix.lower() in (".xlsx", ".xlsm"):
        try:
            import openpyxl
        except ImportError as exc:
            raise DependencyError(
                f"{path}: reading EndoSLAM .xlsx pose files needs openpyxl (pip install openpyxl), "
                "or save the sheet as .csv next to it"
            ) from exc
        try:
            book = openpyxl.load_workbook(path, read_only=True, data_only=True)
        except Exception as exc:  # noqa: BLE001 - openpyxl raises many types for a bad file
            raise InputError(f"{path}: cannot read spreadsheet ({exc})") from exc
        try:
            return [list(row) for row in book.worksheets[0].iter_rows(values_only=True)]
        finally:
            book.close()
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return []
    sample = lines[0]
    delimiter = next((d for d in (",", ";", "\t") if d in sample), None)
    if delimiter is None:
        return [ln.split() for ln in lines]
    return [row for row in csv.reader(lines, delimiter=delimiter)]


def _to_float(cell) -> float | None:
    if cell is None:
        return None
    try:
        return float(str(cell).strip())
    except ValueError:
        return None


def read_endoslam_poses(path: Path) -> tuple[np.ndarray | None, np.ndarray]:
    """A pose table: (frame numbers ``(N,)`` or ``None``, camera-to-world poses ``(N, 4, 4)``)."""
    rows = _read_table(path)
    header_at = None
    columns: dict[str, int] = {}
    for i, row in enumerate(rows[:5]):
        names = [re.sub(r"\s+|\(.*?\)|\[.*?\]", "", str(c or "")).lower() for c in row]
        found = {}
        for key, aliases in _COLUMN_ALIASES.items():
            for alias in aliases:
                if alias in names:
                    found[key] = names.index(alias)
                    break
        if all(k in found for k in ("tx", "ty", "tz", "qx", "qy", "qz", "qw")):
            header_at, columns = i, found
            break
    if header_at is None:
        raise InputError(
            f"{path}: no header with pose columns; expected e.g. 'ImageFrame, trans_x, trans_y, trans_z, "
            "quot_x, quot_y, quot_z, quot_w' or 'tX, tY, tZ, rX, rY, rZ, rW'"
        )
    keys = ("tx", "ty", "tz", "qx", "qy", "qz", "qw")
    frames, data = [], []
    for lineno, row in enumerate(rows[header_at + 1:], header_at + 2):
        cells = [_to_float(row[columns[k]]) if columns[k] < len(row) else None for k in keys]
        frame = None
        if "frame" in columns and columns["frame"] < len(row):
            frame = _to_float(row[columns["frame"]])
        if any(c is None for c in cells) or ("frame" in columns and frame is None):
            if all(c is None for c in cells):
                continue  # unit row or empty row
            log.warning("%s: row %d has missing values; skipped", path, lineno)
            continue
        data.append(cells)
        frames.append(frame)
    if not data:
        raise InputError(f"{path}: pose table has no rows")
    arr = np.asarray(data, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{path}: poses contain NaN or infinite values")
    norms = np.linalg.norm(arr[:, 3:7], axis=1)
    if np.any(norms < 1e-9):
        raise InputError(f"{path}: a quaternion is zero")
    T = np.tile(np.eye(4), (len(arr), 1, 1))
    T[:, :3, :3] = quat_to_rot(arr[:, 3:7])
    T[:, :3, 3] = arr[:, :3]
    frame_numbers = np.asarray(frames, dtype=np.int64) if "frame" in columns else None
    return frame_numbers, T


def open_endoslam(root: str | Path, calib: str | Path | None = None, fps: float = 30.0) -> ImageListReader:
    """Reader of one EndoSLAM trajectory folder (``Frames/`` and ``Poses/``)."""
    root = Path(root)
    paths = list_images(root / "Frames")
    if not paths:
        raise InputError(f"{root / 'Frames'}: folder has no image files")
    width, height = first_readable_size(paths, str(root / "Frames"))
    if calib:
        camera = load_calibration(calib, width, height)
    elif (root / "calib.txt").is_file():
        camera = load_calibration(root / "calib.txt", width, height)
    else:
        cam_txt = find_endoslam_calib(root)
        if cam_txt is None:
            raise CalibrationError(
                f"{root}: no calibration (looked for Calibration/cam.txt in the parent folders and calib.txt); "
                "pass --calib FILE"
            )
        camera = read_key_value_calib(cam_txt, width, height)
    rate = endoslam_fps(root, fps)
    numbers = [_last_number(p.name) for p in paths]
    if any(n is None for n in numbers) or len(set(numbers)) != len(numbers) or numbers != sorted(numbers):
        numbers = list(range(len(paths)))
    timestamps = np.asarray(numbers, dtype=np.float64) / rate

    groundtruth = None
    pose_files = []
    if (root / "Poses").is_dir():
        pose_files = sorted(
            (p for p in (root / "Poses").iterdir() if p.suffix.lower() in (".xlsx", ".xlsm", ".csv", ".txt")),
            key=lambda p: (p.suffix.lower() not in (".xlsx", ".xlsm", ".csv"), natural_key(p.name)),
        )
    if pose_files:
        frame_numbers, T = read_endoslam_poses(pose_files[0])
        if frame_numbers is not None:
            index_of = {n: i for i, n in enumerate(numbers)}
            matched = [(index_of[int(f)], k) for k, f in enumerate(frame_numbers) if int(f) in index_of]
            if not matched:
                raise InputError(f"{pose_files[0]}: no ImageFrame matches a frame number in {root / 'Frames'}")
            matched.sort()
            if len(matched) < len(paths):
                log.info("%s: ground truth for %d of %d frames", pose_files[0], len(matched), len(paths))
            frame_idx = np.array([m[0] for m in matched])
            pose_idx = np.array([m[1] for m in matched])
            groundtruth = Trajectory(timestamps[frame_idx], T[pose_idx])
        else:
            n = min(len(T), len(paths))
            if len(T) != len(paths):
                log.warning("%s: %d poses for %d frames (matched in order); ground truth covers the first %d",
                            pose_files[0], len(T), len(paths), n)
            groundtruth = Trajectory(timestamps[:n], T[:n])
    elif (root / "groundtruth.txt").is_file():
        groundtruth = read_tum(root / "groundtruth.txt")
    return ImageListReader(f"endoslam:{root.name}", paths, camera, timestamps, None, groundtruth)


# ========================================================================================== Hamlyn
HAMLYN_IMAGE_DIRS = ("image01", "color")


def hamlyn_root(root: Path) -> Path | None:
    """The folder with ``intrinsics.txt`` and ``image01/`` (also inside a same-named nested folder)."""
    for candidate in (root, root / root.name):
        if (candidate / "intrinsics.txt").is_file() and any((candidate / d).is_dir() for d in HAMLYN_IMAGE_DIRS):
            return candidate
    return None


def is_hamlyn(root: Path) -> bool:
    return hamlyn_root(root) is not None


def read_matrix_intrinsics(path: Path, width: int, height: int) -> Camera:
    """``intrinsics.txt`` holding a 3x3 K or a 3x4 P matrix (row-major); no distortion (rectified)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
        tokens = re.sub(r"[,\[\];]", " ", text).split()
        values = np.array([float(t) for t in tokens])
    except ValueError as exc:
        raise CalibrationError(f"{path}: cannot parse intrinsics (expected a 3x3 or 3x4 matrix of numbers)") from exc
    except OSError as exc:
        raise CalibrationError(f"{path}: cannot read intrinsics ({exc.strerror})") from exc
    if values.size == 9:
        K = values.reshape(3, 3)
    elif values.size == 12:
        K = values.reshape(3, 4)[:, :3]
    else:
        raise CalibrationError(f"{path}: expected 9 (3x3 K) or 12 (3x4 P) numbers, got {values.size}")
    if not np.all(np.isfinite(K)):
        raise CalibrationError(f"{path}: intrinsics contain NaN or infinite values")
    if not np.allclose(K[2], [0.0, 0.0, 1.0]):
        raise CalibrationError(f"{path}: last row of K must be [0 0 1], got {K[2].tolist()}")
    try:
        return Camera(width, height, float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]))
    except CalibrationError as exc:
        raise CalibrationError(f"{path}: {exc}") from exc


def open_hamlyn(root: str | Path, calib: str | Path | None = None) -> ImageListReader:
    """Reader of one rectified Hamlyn sequence (left images)."""
    root = Path(root)
    seq = hamlyn_root(root)
    if seq is None:
        raise InputError(f"{root}: not a Hamlyn rectified sequence (no intrinsics.txt with image01/)")
    image_dir = next(seq / d for d in HAMLYN_IMAGE_DIRS if (seq / d).is_dir())
    paths = list_images(image_dir)
    if not paths:
        raise InputError(f"{image_dir}: folder has no image files")
    width, height = first_readable_size(paths, str(image_dir))
    if calib:
        camera = load_calibration(calib, width, height)
    else:
        camera = read_matrix_intrinsics(seq / "intrinsics.txt", width, height)
    return ImageListReader(f"hamlyn:{seq.name}", paths, camera, None, None, None)
