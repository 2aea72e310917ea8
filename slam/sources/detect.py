"""Which reader a PATH needs: layout detection, and :func:`open_source`, the one entry point.

Detection order (first match wins): live camera (``camera`` given), video file, EuRoC, KITTI, TUM RGB-D,
C3VD, EndoSLAM, Hamlyn, and last the plain folder layout (``rgb/`` or ``images/`` or images in PATH).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from slam.config import SourceConfig
from slam.errors import InputError
from slam.sources.base import FrameSource
from slam.sources.configured import ConfiguredSource, validate_source_config
from slam.sources.raw import RawReader

log = logging.getLogger(__name__)

LAYOUTS = (
    "video file (.mp4 .avi .mkv .mov ...) with --calib FILE or calib.txt beside it",
    "EuRoC MAV (mav0/cam0/data.csv + sensor.yaml)",
    "KITTI odometry (sequences/NN/image_0, calib.txt, times.txt)",
    "TUM RGB-D (rgb.txt, rgb/, groundtruth.txt)",
    "C3VD (pose.txt + *_color.png)",
    "EndoSLAM trajectory (Frames/, Poses/)",
    "Hamlyn rectified (intrinsics.txt + image01/)",
    "folder layout (rgb/ or images/, calib.txt, optional times.txt, groundtruth.txt, mask.png)",
    "live camera (--camera INDEX|URL)",
)


def detect_layout(path: Path) -> str | None:
    """Name of the layout at ``path`` (``video``, ``euroc``, ``kitti``, ``tum``, ``c3vd``, ``endoslam``,
    ``hamlyn``, ``folder``), or ``None``."""
    from slam.sources import endoscopy, euroc, folder, kitti, tum, video

    if path.is_file():
        return "video" if video.is_video(path) else None
    if not path.is_dir():
        return None
    checks: tuple[tuple[str, Callable[[Path], bool]], ...] = (
        ("euroc", euroc.is_euroc),
        ("kitti", kitti.is_kitti),
        ("tum", tum.is_tum),
        ("c3vd", endoscopy.is_c3vd),
        ("endoslam", endoscopy.is_endoslam),
        ("hamlyn", endoscopy.is_hamlyn),
        ("folder", lambda p: folder.image_dir_of(p) is not None),
    )
    for name, check in checks:
        if check(path):
            return name
    return None


def open_reader(
    path: str | None, cfg: SourceConfig, calib: str | None = None, camera: str | int | None = None
) -> RawReader:
    """The :class:`RawReader` for ``path`` (or the live ``camera``), before the options of ``cfg``."""
    from slam.sources import endoscopy, euroc, folder, kitti, live, tum, video

    if camera is not None:
        return live.LiveReader(camera, calib, realtime=bool(getattr(cfg, "realtime", True)))
    if path is None:
        raise InputError("no input: give a PATH (video, image folder or dataset) or --camera INDEX|URL")
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"{p}: no such file or folder")
    layout = detect_layout(p)
    log.info("%s: detected layout %s", p, layout)
    if layout == "video":
        return video.VideoReader(p, calib, fps=cfg.fps)
    if layout == "euroc":
        return euroc.open_euroc(p, calib)
    if layout == "kitti":
        return kitti.open_kitti(p, calib)
    if layout == "tum":
        return tum.open_tum(p, calib)
    if layout == "c3vd":
        return endoscopy.open_c3vd(p, calib, fps=cfg.fps)
    if layout == "endoslam":
        return endoscopy.open_endoslam(p, calib, fps=cfg.fps)
    if layout == "hamlyn":
        return endoscopy.open_hamlyn(p, calib)
    if layout == "folder":
        return folder.open_folder(p, calib)
    what = "file" if p.is_file() else "folder"
    if p.is_dir() and not any(p.iterdir()):
        raise InputError(f"{p}: folder is empty (no frames)")
    raise InputError(f"{p}: {what} of no known layout. Known layouts: " + "; ".join(LAYOUTS))


def open_source(
    path: str | None, cfg: SourceConfig, calib: str | None = None, camera: str | int | None = None
) -> FrameSource:
    """Open PATH (or the live ``camera``) as a :class:`FrameSource` with the options of ``cfg`` applied.

    Args:
        path: video file, image folder or dataset root; ignored when ``camera`` is given.
        cfg: start, stride, max_frames, resize, max_width, fps, mask (see :class:`SourceConfig`).
        calib: calibration file overriding the layout's own (``calib.txt`` line or EuRoC-style YAML).
        camera: live camera index or URL.

    Raises:
        InputError: no input, unknown layout, no frames, inconsistent timestamps.
        CalibrationError: missing, unparsable or impossible calibration.
        ConfigError: option values out of range.
    """
    validate_source_config(cfg)
    reader = open_reader(path, cfg, calib, camera)
    return ConfiguredSource(reader, cfg)
