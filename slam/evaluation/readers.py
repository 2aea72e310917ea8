"""Trajectory file readers: KITTI (3x4 rows), EuRoC csv (ns timestamps, qw first), and format detection.

Every reader returns a :class:`~slam.evaluation.trajectory.Trajectory` (timestamps in seconds, ``T_wc``
as stored in the file). The TUM reader itself lives in :mod:`slam.evaluation.trajectory`.

Formats:
    * ``tum``: ``timestamp tx ty tz qx qy qz qw`` per line, ``#`` comments.
    * ``kitti``: 12 numbers per line, the row-major top 3x4 of a 4x4 pose; no timestamps in the file.
    * ``euroc``: comma-separated ``timestamp[ns], px, py, pz, qw, qx, qy, qz[, ...]`` with a ``#`` header
      (EuRoC ``state_groundtruth_estimate0/data.csv``, extra columns ignored). Poses are of the body (IMU)
      frame; converting them to a camera frame is the job of the dataset source, not of this reader.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from slam.errors import EmptyTrajectoryError, InputError
from slam.evaluation.trajectory import Trajectory, read_tum
from slam.geometry.se3 import quat_to_rot

FORMATS = ("tum", "kitti", "euroc")


def _data_lines(path: Path) -> list[tuple[int, str]]:
    """``(line number, stripped text)`` of non-empty, non-comment lines; InputError if missing/unreadable."""
    if not path.is_file():
        raise InputError(f"{path}: trajectory file not found")
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise InputError(f"{path}: cannot read trajectory file ({exc})") from exc
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line and not line.startswith(("#", "%", "//")):
            out.append((lineno, line))
    return out


def _parse_rows(path: Path, lines: list[tuple[int, str]], sep: str | None, ncols: int | None, what: str) -> np.ndarray:
    """Parse numeric rows; ``ncols`` None accepts any count >= 8 (truncated to the first 8)."""
    rows = []
    for lineno, line in lines:
        parts = [p.strip() for p in (line.split(sep) if sep else line.split()) if p.strip()]
        if ncols is not None and len(parts) != ncols:
            raise InputError(f"{path}:{lineno}: expected {ncols} values ({what}), got {len(parts)}")
        if ncols is None:
            if len(parts) < 8:
                raise InputError(f"{path}:{lineno}: expected at least 8 values ({what}), got {len(parts)}")
            parts = parts[:8]
        try:
            rows.append([float(p) for p in parts])
        except ValueError as exc:
            raise InputError(f"{path}:{lineno}: not a number in {line!r}") from exc
    if not rows:
        raise EmptyTrajectoryError(f"{path}: trajectory file has no poses")
    data = np.asarray(rows, dtype=np.float64)
    if not np.all(np.isfinite(data)):
        raise InputError(f"{path}: trajectory contains NaN or infinite values")
    return data


def read_timestamps(path: str | Path) -> np.ndarray:
    """Read one timestamp in seconds per line (KITTI ``times.txt``); returns ``(N,)`` float64."""
    path = Path(path)
    data = _parse_rows(path, _data_lines(path), None, 1, "one timestamp in seconds per line")
    return data[:, 0]


def read_kitti(path: str | Path, timestamps: np.ndarray | str | Path | None = None) -> Trajectory:
    """Read a KITTI pose file: 12 numbers per line, row-major ``[R | t]`` (3x4) of ``T_wc``.

    Args:
        path: the pose file.
        timestamps: ``(N,)`` seconds, or the path of a ``times.txt`` with one per line; without them
            pose ``i`` gets timestamp ``i`` (the frame index), so two KITTI files associate by index.

    Raises:
        InputError: missing file, wrong column count, or a timestamp count different from the pose count.
    """
    path = Path(path)
    data = _parse_rows(path, _data_lines(path), None, 12, "KITTI format: 12 numbers of a 3x4 pose")
    T = np.tile(np.eye(4), (len(data), 1, 1))
    T[:, :3, :] = data.reshape(-1, 3, 4)
    if timestamps is None:
        stamps = np.arange(len(data), dtype=np.float64)
    else:
        if isinstance(timestamps, (str, Path)):
            stamps = read_timestamps(timestamps)
            source = str(timestamps)
        else:
            stamps = np.asarray(timestamps, dtype=np.float64).reshape(-1)
            source = "the given timestamps"
        if len(stamps) != len(data):
            raise InputError(f"{path}: {len(data)} poses but {len(stamps)} timestamps in {source}")
    return Trajectory(stamps, T)


def read_euroc_csv(path: str | Path) -> Trajectory:
    """Read an EuRoC ground-truth csv: ``timestamp[ns], p_x, p_y, p_z, q_w, q_x, q_y, q_z, ...``.

    Returns body-to-world poses (the file's frame) with timestamps converted to seconds. Extra columns
    (velocity, biases) are ignored.
    """
    path = Path(path)
    lines = _data_lines(path)
    what = "EuRoC csv: timestamp[ns], p_x, p_y, p_z, q_w, q_x, q_y, q_z"
    # Parse the timestamp as an integer where possible: 19-digit nanoseconds lose precision as a float.
    stamps = []
    for lineno, line in lines:
        first = line.split(",", 1)[0].strip()
        try:
            stamps.append(int(first) * 1e-9 if first.lstrip("-").isdigit() else float(first) * 1e-9)
        except ValueError as exc:
            raise InputError(f"{path}:{lineno}: not a timestamp in {line!r}") from exc
    data = _parse_rows(path, lines, ",", None, what)
    T = np.tile(np.eye(4), (len(data), 1, 1))
    q_wxyz = data[:, 4:8]
    norms = np.linalg.norm(q_wxyz, axis=1)
    if np.any(norms < 1e-9):
        raise InputError(f"{path}: a quaternion has zero norm")
    T[:, :3, :3] = quat_to_rot(q_wxyz[:, [1, 2, 3, 0]])
    T[:, :3, 3] = data[:, 1:4]
    return Trajectory(np.asarray(stamps, dtype=np.float64), T)


def detect_format(path: str | Path) -> str:
    """Guess ``"tum"``, ``"kitti"`` or ``"euroc"`` from the first data line; InputError when none fits."""
    path = Path(path)
    lines = _data_lines(path)
    if not lines:
        raise EmptyTrajectoryError(f"{path}: trajectory file has no poses")
    lineno, line = lines[0]
    if "," in line:
        parts = [p.strip() for p in line.split(",") if p.strip()]
        first = parts[0]
        # EuRoC: integer nanosecond stamps (> 1e12) and at least 8 columns with the quaternion w first.
        if len(parts) >= 8 and first.isdigit() and int(first) > 10**12:
            return "euroc"
        if len(parts) == 8:
            return "tum"  # comma-separated TUM rows (the TUM reader accepts them)
        if len(parts) == 12:
            raise InputError(f"{path}:{lineno}: comma-separated 12-column rows are not a supported format")
    else:
        parts = line.split()
        if len(parts) == 8:
            return "tum"
        if len(parts) == 12:
            return "kitti"
    raise InputError(
        f"{path}:{lineno}: unknown trajectory format ({len(parts)} values per line); expected TUM "
        "'timestamp tx ty tz qx qy qz qw' (8), KITTI 3x4 rows (12) or EuRoC csv "
        "'timestamp[ns],px,py,pz,qw,qx,qy,qz,...'"
    )


def read_trajectory(
    path: str | Path, fmt: str = "auto", timestamps: np.ndarray | str | Path | None = None
) -> Trajectory:
    """Read a trajectory in ``fmt`` (``auto``, ``tum``, ``kitti`` or ``euroc``).

    ``timestamps`` (array or times file) is only used for KITTI files, which carry none.
    """
    path = Path(path)
    fmt = (fmt or "auto").lower()
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt == "tum":
        return read_tum(path)
    if fmt == "kitti":
        return read_kitti(path, timestamps)
    if fmt == "euroc":
        return read_euroc_csv(path)
    raise InputError(f"{path}: unknown trajectory format {fmt!r}; use one of auto, {', '.join(FORMATS)}")


def find_kitti_times(path: str | Path) -> Path | None:
    """A times file for a KITTI pose file, if one sits where KITTI or evo put it, else None.

    Looks for ``<stem>_times.txt`` beside the file (evo's test data), then the odometry layout
    ``poses/NN.txt`` -> ``sequences/NN/times.txt``.
    """
    path = Path(path)
    candidates = [path.with_name(f"{path.stem}_times.txt")]
    if path.parent.name == "poses":
        candidates.append(path.parent.parent / "sequences" / path.stem / "times.txt")
    for cand in candidates:
        if cand.is_file():
            return cand
    return None
