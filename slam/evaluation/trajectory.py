"""Trajectories: timestamps with camera-to-world poses, and the TUM text format.

Other readers (KITTI, EuRoC csv) live beside this one; every reader returns a :class:`Trajectory`.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slam.errors import EmptyTrajectoryError, InputError
from slam.geometry.se3 import quat_to_rot, rot_to_quat


@dataclass
class Trajectory:
    """A timed sequence of poses.

    Attributes:
        timestamps: ``(N,)`` float64 seconds, non-decreasing.
        T_wc: ``(N, 4, 4)`` float64 camera-to-world poses.
    """

    timestamps: np.ndarray
    T_wc: np.ndarray

    def __post_init__(self) -> None:
        self.timestamps = np.asarray(self.timestamps, dtype=np.float64).reshape(-1)
        self.T_wc = np.asarray(self.T_wc, dtype=np.float64).reshape(-1, 4, 4)
        if len(self.timestamps) != len(self.T_wc):
            raise ValueError(f"{len(self.timestamps)} timestamps but {len(self.T_wc)} poses")

    def __len__(self) -> int:
        return len(self.timestamps)

    @property
    def positions(self) -> np.ndarray:
        """``(N, 3)`` camera centres in the world frame."""
        return self.T_wc[:, :3, 3]

    def path_length(self) -> float:
        """Sum of distances between consecutive positions."""
        if len(self) < 2:
            return 0.0
        return float(np.linalg.norm(np.diff(self.positions, axis=0), axis=1).sum())


def read_tum(path: str | Path) -> Trajectory:
    """Read ``timestamp tx ty tz qx qy qz qw`` lines (``#`` comments allowed). Raises InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: trajectory file not found")
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.replace(",", " ").split()
        if len(parts) != 8:
            raise InputError(
                f"{path}:{lineno}: expected 8 values 'timestamp tx ty tz qx qy qz qw' (TUM format), got {len(parts)}"
            )
        try:
            rows.append([float(p) for p in parts])
        except ValueError as exc:
            raise InputError(f"{path}:{lineno}: not a number in {line!r}") from exc
    if not rows:
        raise EmptyTrajectoryError(f"{path}: trajectory file has no poses")
    data = np.asarray(rows)
    if not np.all(np.isfinite(data)):
        raise InputError(f"{path}: trajectory contains NaN or infinite values")
    T = np.tile(np.eye(4), (len(data), 1, 1))
    T[:, :3, :3] = quat_to_rot(data[:, 4:8])
    T[:, :3, 3] = data[:, 1:4]
    return Trajectory(data[:, 0], T)


def format_tum(traj: Trajectory) -> str:
    """TUM text of a trajectory (one line per pose)."""
    if len(traj) == 0:
        return ""
    q = rot_to_quat(traj.T_wc[:, :3, :3]).reshape(-1, 4)
    lines = [
        f"{ts:.6f} {t[0]:.9f} {t[1]:.9f} {t[2]:.9f} {qq[0]:.9f} {qq[1]:.9f} {qq[2]:.9f} {qq[3]:.9f}"
        for ts, t, qq in zip(traj.timestamps, traj.positions, q)
    ]
    return "\n".join(lines) + "\n"


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename, so a kill never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`write_bytes_atomic`)."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_tum(path: str | Path, traj: Trajectory) -> None:
    """Write a trajectory in TUM format, atomically."""
    write_text_atomic(path, format_tum(traj))
