"""Bad inputs through ``slam run``: every one gives a clear one-line message naming the input and the problem.

Each case runs the real command in a subprocess (``python -m slam.cli run ...``) and checks what the user
sees: the exit status (2 where the run cannot go on, 0 where the input is handled), a message on stderr
that names the file or key, and never a Python traceback. Inputs are tiny (160x120, a few frames) so the
whole file stays fast.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from slam.config import SourceConfig
from slam.errors import InputError
from slam.sources import open_source
from slam.sources.images import read_image

W, H = 160, 120
CALIB = "80 80 79.5 59.5\n"


# ---------------------------------------------------------------------------------------------- helpers
def textured(seed: int, size: tuple[int, int] = (W, H)) -> np.ndarray:
    """A ``(h, w, 3)`` uint8 BGR image with blob texture (something for the detector to find)."""
    w, h = size
    rng = np.random.default_rng(seed)
    noise = rng.random((h // 4 + 1, w // 4 + 1)).astype(np.float32)
    img = cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC)
    img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    return cv2.merge([img, np.roll(img, 3, axis=1), np.roll(img, 5, axis=0)])


def make_folder(root: Path, frames: int = 6, calib: str | None = CALIB, size=(W, H), ext: str = ".png") -> Path:
    """The folder layout (rgb/, calib.txt) with ``frames`` textured images."""
    (root / "rgb").mkdir(parents=True, exist_ok=True)
    for i in range(frames):
        cv2.imwrite(str(root / "rgb" / f"{i:06d}{ext}"), textured(i, size))
    if calib is not None:
        (root / "calib.txt").write_text(calib)
    return root


@dataclass
class Outcome:
    """What the user saw: exit status and stderr (log lines included)."""

    returncode: int
    stderr: str


RUN_FLAGS = ("--quiet", "--sync", "--device", "cpu")


def slam_run_subprocess(*args: str, cwd: Path, timeout: float = 120) -> Outcome:
    """``slam run ARGS`` in a fresh interpreter: exactly what a user at a terminal sees."""
    cmd = [sys.executable, "-m", "slam.cli", "run", *args, *RUN_FLAGS]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    return Outcome(proc.returncode, proc.stderr)


@pytest.fixture
def slam_run(tmp_path, monkeypatch, capsys, caplog):
    """``slam run ARGS`` through :func:`slam.cli.main` in this process (cheaper than a subprocess).

    An exception escaping ``main`` fails the test, which is the in-process form of "no traceback".
    Log records are appended to stderr in the ``LEVEL name: message`` form the CLI prints.
    """
    from slam.cli import main

    monkeypatch.chdir(tmp_path)

    def run(*args: str, cwd: Path | None = None) -> Outcome:
        caplog.clear()
        capsys.readouterr()
        with caplog.at_level(logging.INFO):
            rc = main(["run", *args, *RUN_FLAGS])
        err = capsys.readouterr().err
        logs = "\n".join(f"{r.levelname} {r.name}: {r.getMessage()}" for r in caplog.records)
        return Outcome(rc, err + "\n" + logs)

    return run


def assert_user_error(proc: Outcome, *needles: str) -> str:
    """Exit 2, one ``error:`` line naming each needle, no traceback; returns the error line."""
    err = proc.stderr
    assert "Traceback" not in err, err
    assert proc.returncode == 2, (proc.returncode, err)
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle.lower() in lines[0].lower(), (needle, lines[0])
    return lines[0]


def assert_ran(proc: Outcome, out: Path, frames: int) -> dict:
    """Exit 0, no traceback, outputs written, ``frames`` frames processed; returns stats.json."""
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 0, (proc.returncode, proc.stderr)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["frames"] == frames, stats["frames"]
    assert (out / "trajectory.txt").is_file() and (out / "map.ply").is_file()
    return stats


# ---------------------------------------------------------------------------------------------- paths
def test_missing_path(tmp_path, slam_run):
    proc = slam_run(str(tmp_path / "nowhere"), "--out", "out")
    assert_user_error(proc, "nowhere", "no such file or folder")


def test_empty_folder(tmp_path, slam_run):
    (tmp_path / "seq").mkdir()
    proc = slam_run("seq", "--out", "out")
    assert_user_error(proc, "seq", "empty")


def test_folder_without_images(tmp_path, slam_run):
    seq = tmp_path / "seq"
    seq.mkdir()
    (seq / "notes.txt").write_text("no frames here\n")
    (seq / "calib.txt").write_text(CALIB)
    proc = slam_run("seq", "--out", "out")
    assert_user_error(proc, "seq", "no known layout")


def test_empty_image_dir(tmp_path, slam_run):
    seq = make_folder(tmp_path / "seq", frames=0)
    proc = slam_run("seq", "--out", "out")
    assert_user_error(proc, "rgb", "no image files")


def test_all_images_unreadable(tmp_path, slam_run):
    seq = make_folder(tmp_path / "seq", frames=0)
    for i in range(3):
        (seq / "rgb" / f"{i:06d}.png").write_bytes(b"not a png at all")
    proc = slam_run("seq", "--out", "out")
    assert_user_error(proc, "rgb", "cannot decode")


# ---------------------------------------------------------------------------------------------- calibration
def test_missing_calib(tmp_path, slam_run):
    make_folder(tmp_path / "seq", calib=None)
    proc = slam_run("seq", "--out", "out")
    assert_user_error(proc, "seq", "calib.txt", "--calib")


@pytest.mark.parametrize(
    "text, problem",
    [
        ("fx fy cx cy\n", "cannot parse"),
        ("80 80 79.5\n", "expected 4"),
        ("nan 80 79.5 59.5\n", "nan"),
        ("80 inf 79.5 59.5\n", "infinite"),
        ("-80 80 79.5 59.5\n", "focal lengths must be positive"),
        ("0 80 79.5 59.5\n", "focal lengths must be positive"),
        ("", "empty"),
    ],
    ids=["words", "too-few", "nan", "inf", "negative-focal", "zero-focal", "empty"],
)
def test_bad_calib(tmp_path, text, problem, slam_run):
    make_folder(tmp_path / "seq", frames=2, calib=text)
    proc = slam_run("seq", "--out", "out")
    assert_user_error(proc, "calib.txt", problem)


def test_calib_flag_missing_file(tmp_path, slam_run):
    make_folder(tmp_path / "seq", frames=2)
    proc = slam_run("seq", "--out", "out", "--calib", "nope.txt")
    assert_user_error(proc, "nope.txt", "not found")


def test_calib_yaml_wrong_aspect(tmp_path, slam_run):
    make_folder(tmp_path / "seq", frames=2)
    (tmp_path / "cam.yaml").write_text(
        "intrinsics: [80, 80, 80, 80]\nresolution: [160, 160]\ndistortion_model: radial-tangential\n"
        "distortion_coefficients: [0, 0, 0, 0]\n"
    )
    proc = slam_run("seq", "--out", "out", "--calib", "cam.yaml")
    assert_user_error(proc, "cam.yaml", "aspect ratio")


# ---------------------------------------------------------------------------------------------- timestamps / gt
def test_times_wrong_length(tmp_path, slam_run):
    seq = make_folder(tmp_path / "seq", frames=4)
    (seq / "times.txt").write_text("0.0\n0.1\n0.2\n")
    proc = slam_run("seq", "--out", "out")
    assert_user_error(proc, "times.txt", "3 timestamps but 4 images")


def test_times_not_monotonic(tmp_path, slam_run):
    seq = make_folder(tmp_path / "seq", frames=4)
    (seq / "times.txt").write_text("0.0\n0.1\n0.1\n0.3\n")
    proc = slam_run("seq", "--out", "out")
    assert_user_error(proc, "times.txt", "increase strictly", "entry 3")


def test_times_not_numbers(tmp_path, slam_run):
    seq = make_folder(tmp_path / "seq", frames=2)
    (seq / "times.txt").write_text("0.0\nlater\n")
    proc = slam_run("seq", "--out", "out")
    assert_user_error(proc, "times.txt:2", "not a timestamp")


@pytest.mark.parametrize(
    "text, problem",
    [
        ("0 1 2 3 4 5 6 7 8 9 10 11\n", "expected 8 values"),  # a KITTI pose line in a TUM file
        ("0.0 0 0 0 0 0 0 1\n0.1 a b c d e f g\n", "not a number"),
        ("# only a comment\n", "no poses"),
        ("0.0 0 0 nan 0 0 0 1\n", "nan"),
    ],
    ids=["kitti-columns", "words", "no-poses", "nan"],
)
def test_groundtruth_unknown_format(tmp_path, text, problem, slam_run):
    seq = make_folder(tmp_path / "seq", frames=2)
    (seq / "groundtruth.txt").write_text(text)
    proc = slam_run("seq", "--out", "out")
    assert_user_error(proc, "groundtruth.txt", problem)


# ---------------------------------------------------------------------------------------------- images
def test_corrupt_and_truncated_images_are_skipped(tmp_path, slam_run):
    seq = make_folder(tmp_path / "seq", frames=8)
    good = (seq / "rgb" / "000003.png").read_bytes()
    (seq / "rgb" / "000003.png").write_bytes(good[: len(good) // 3])  # truncated
    (seq / "rgb" / "000005.png").write_bytes(os.urandom(500))  # garbage
    (seq / "rgb" / "000006.png").write_bytes(b"")  # empty
    proc = slam_run("seq", "--out", "out")
    stats = assert_ran(proc, tmp_path / "out", frames=5)
    assert stats["frames"] == 5
    for name in ("000003.png", "000005.png", "000006.png"):
        warning = [ln for ln in proc.stderr.splitlines() if name in ln]
        assert warning and "WARNING" in warning[0], proc.stderr
    assert "empty" in proc.stderr
    # the trajectory lines that exist never carry the time of a skipped frame
    states = (tmp_path / "out" / "states.txt").read_text().split("\n")[1:]
    indices = [int(ln.split()[0]) for ln in states if ln.strip()]
    assert 3 not in indices and 5 not in indices and 6 not in indices and len(indices) == 5


def test_truncated_jpeg_is_read_or_skipped(tmp_path, slam_run):
    seq = make_folder(tmp_path / "seq", frames=5, ext=".jpg")
    good = (seq / "rgb" / "000002.jpg").read_bytes()
    (seq / "rgb" / "000002.jpg").write_bytes(good[: len(good) // 2])
    proc = slam_run("seq", "--out", "out")
    assert "Traceback" not in proc.stderr and proc.returncode == 0, proc.stderr
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["frames"] in (4, 5)  # libjpeg decodes the first half (grey rest) or the frame is skipped


def test_images_of_changing_size(tmp_path, slam_run):
    seq = make_folder(tmp_path / "seq", frames=6)
    cv2.imwrite(str(seq / "rgb" / "000002.png"), textured(2, (2 * W, 2 * H)))  # same aspect, larger
    cv2.imwrite(str(seq / "rgb" / "000004.png"), textured(4, (W, H + 40)))  # another aspect ratio
    proc = slam_run("seq", "--out", "out")
    assert_ran(proc, tmp_path / "out", frames=6)
    for name in ("000002.png", "000004.png"):
        line = next((ln for ln in proc.stderr.splitlines() if name in ln), "")
        assert "WARNING" in line and "resized" in line, proc.stderr


def _write_kind(path: Path, bgr: np.ndarray, kind: str) -> None:
    from PIL import Image

    if kind == "gray":
        cv2.imwrite(str(path), cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    elif kind == "gray16":
        cv2.imwrite(str(path), cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY).astype(np.uint16) * 257)
    elif kind == "rgb16":
        cv2.imwrite(str(path), bgr.astype(np.uint16) * 257)
    elif kind == "rgba":
        cv2.imwrite(str(path), cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA))
    elif kind in ("cmyk-jpg", "cmyk-tif"):
        Image.fromarray(bgr[:, :, ::-1].copy()).convert("CMYK").save(path)
    else:
        raise AssertionError(kind)


KINDS = {"gray": ".png", "gray16": ".png", "rgb16": ".tif", "rgba": ".png", "cmyk-jpg": ".jpg", "cmyk-tif": ".tif"}


@pytest.mark.parametrize("kind", list(KINDS))
def test_image_kinds_read_as_uint8(tmp_path, kind):
    """16-bit, grayscale, RGBA and CMYK files read as the same 8-bit picture (within JPEG/rounding error)."""
    bgr = textured(7)
    path = tmp_path / f"img{KINDS[kind]}"
    _write_kind(path, bgr, kind)
    img = read_image(path)
    assert img.dtype == np.uint8 and img.shape[:2] == (H, W)
    gray = img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    ref = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY).astype(np.float64)
    tol = 12.0 if kind.startswith("cmyk") else 1.0
    assert np.abs(gray.astype(np.float64) - ref).mean() < tol, (kind, np.abs(gray - ref).mean())


@pytest.mark.parametrize("kind", ["gray16", "rgba", "cmyk-jpg"])
def test_run_on_image_kinds(tmp_path, kind, slam_run):
    seq = make_folder(tmp_path / "seq", frames=0)
    for i in range(4):
        _write_kind(seq / "rgb" / f"{i:06d}{KINDS[kind]}", textured(i), kind)
    proc = slam_run("seq", "--out", "out")
    assert_ran(proc, tmp_path / "out", frames=4)


def test_4k_images_downscaled_by_config(tmp_path, slam_run):
    seq = make_folder(tmp_path / "seq", frames=3, size=(3840, 2160), calib="1900 1900 1919.5 1079.5\n", ext=".jpg")
    proc = slam_run("seq", "--out", "out", "--set", "source.max_width=320")
    stats = assert_ran(proc, tmp_path / "out", frames=3)
    assert stats["config"]["source"]["max_width"] == 320
    src = open_source(str(seq), SourceConfig(max_width=320))
    assert (src.camera.width, src.camera.height) == (320, 180)
    assert src.camera.fx == pytest.approx(1900 / 12)
    frame = next(iter(src))
    assert frame.image.shape[:2] == (180, 320)


def test_non_image_file_in_folder_is_ignored(tmp_path, slam_run):
    seq = make_folder(tmp_path / "seq", frames=4)
    (seq / "rgb" / "README.txt").write_text("frames of a test\n")
    (seq / "rgb" / "Thumbs.db").write_bytes(os.urandom(64))
    proc = slam_run("seq", "--out", "out")
    assert_ran(proc, tmp_path / "out", frames=4)


# ---------------------------------------------------------------------------------------------- video
def _write_video(path: Path, frames: int = 8) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (W, H))
    assert writer.isOpened()
    for i in range(frames):
        writer.write(textured(i))
    writer.release()


def test_empty_video(tmp_path, slam_run):
    (tmp_path / "clip.mp4").write_bytes(b"")
    (tmp_path / "calib.txt").write_text(CALIB)
    proc = slam_run("clip.mp4", "--out", "out")
    assert_user_error(proc, "clip.mp4", "empty")


def test_undecodable_video(tmp_path, slam_run):
    (tmp_path / "clip.mp4").write_bytes(os.urandom(4096))
    (tmp_path / "calib.txt").write_text(CALIB)
    proc = slam_run("clip.mp4", "--out", "out")
    assert_user_error(proc, "clip.mp4")
    assert "cannot open video" in proc.stderr or "no decodable video frame" in proc.stderr


def test_truncated_video_runs_on_what_decodes(tmp_path, slam_run):
    _write_video(tmp_path / "full.avi", frames=10)
    data = (tmp_path / "full.avi").read_bytes()
    (tmp_path / "clip.avi").write_bytes(data[: len(data) // 2])
    (tmp_path / "calib.txt").write_text(CALIB)
    proc = slam_run("clip.avi", "--out", "out")
    assert "Traceback" not in proc.stderr, proc.stderr
    if proc.returncode == 0:
        stats = json.loads((tmp_path / "out" / "stats.json").read_text())
        assert 1 <= stats["frames"] < 10
    else:
        assert_user_error(proc, "clip.avi")


def test_video_without_calib(tmp_path, slam_run):
    _write_video(tmp_path / "clip.avi", frames=3)
    proc = slam_run("clip.avi", "--out", "out")
    assert_user_error(proc, "clip.avi", "--calib")


def test_good_video_runs(tmp_path, slam_run):
    _write_video(tmp_path / "clip.avi", frames=5)
    (tmp_path / "calib.txt").write_text(CALIB)
    proc = slam_run("clip.avi", "--out", "out")
    assert_ran(proc, tmp_path / "out", frames=5)


# ---------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "yaml_text, needles",
    [
        ("tracking:\n  min_tracked_pionts: 20\n", ["bad.yaml", "tracking.min_tracked_pionts", "unknown"]),
        ("trackin:\n  frontend: flow\n", ["bad.yaml", "trackin", "unknown"]),
        ("features:\n  num_features: many\n", ["bad.yaml", "features.num_features", "expects int"]),
        ("system:\n  sync: 3\n", ["bad.yaml", "system.sync", "expects bool"]),
        ("features: [1, 2]\n", ["bad.yaml", "features", "mapping"]),
        ("tracking: {frontend: flow\n", ["bad.yaml", "invalid yaml"]),
        ("- just\n- a list\n", ["bad.yaml", "mapping"]),
    ],
    ids=["typo-key", "unknown-section", "wrong-type-int", "wrong-type-bool", "section-not-mapping",
         "broken-yaml", "not-a-mapping"],
)
def test_bad_config_file(tmp_path, yaml_text, needles, slam_run):
    make_folder(tmp_path / "seq", frames=2)
    (tmp_path / "bad.yaml").write_text(yaml_text)
    proc = slam_run("seq", "--out", "out", "--config", "bad.yaml")
    assert_user_error(proc, *needles)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--config", "no_such_config"], ["no_such_config", "known configs"]),
        (["--config", "missing.yaml"], ["missing.yaml", "not found"]),
        (["--set", "tracking.nope=1"], ["tracking.nope", "unknown"]),
        (["--set", "source.stride=0"], ["source.stride", ">= 1"]),
        (["--set", "source.resize=-1"], ["source.resize", "positive"]),
        (["--set", "features.type=akaze"], ["akaze"]),
        (["--set", "tracking.frontend=magic"], ["tracking.frontend", "magic"]),
        (["--set", "nonsense"], ["key=value"]),
        (["--mask", "nomask.png"], ["nomask.png", "not found"]),
    ],
    ids=["unknown-name", "missing-file", "unknown-set-key", "stride-0", "negative-resize", "unknown-features",
         "unknown-frontend", "set-without-equals", "missing-mask"],
)
def test_bad_options(tmp_path, args, needles, slam_run):
    make_folder(tmp_path / "seq", frames=2)
    proc = slam_run("seq", "--out", "out", *args)
    assert_user_error(proc, *needles)


# ---------------------------------------------------------------------------------------------- output
def test_output_folder_not_writable(tmp_path, slam_run):
    make_folder(tmp_path / "seq", frames=2)
    (tmp_path / "blocker").write_text("a file where the output folder should go\n")
    proc = slam_run("seq", "--out", "blocker/run")
    assert_user_error(proc, "blocker", "not writable")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write a read-only folder")
def test_output_folder_read_only(tmp_path, slam_run):
    make_folder(tmp_path / "seq", frames=2)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        proc = slam_run("seq", "--out", "ro/run")
    finally:
        ro.chmod(0o755)
    assert_user_error(proc, "ro", "not writable")


def test_source_errors_are_input_errors(tmp_path):
    """The library raises InputError subclasses (what the CLI turns into one line) for bad folders."""
    with pytest.raises(InputError, match="no such file"):
        open_source(str(tmp_path / "nowhere"), SourceConfig())


# ---------------------------------------------------------------------------------------------- a real terminal
def _prepare_case(tmp_path: Path, case: str) -> list[str]:
    """Lay out the input of ``case`` in ``tmp_path``; returns the ``slam run`` arguments."""
    if case == "missing-path":
        return ["nowhere", "--out", "out"]
    make_folder(tmp_path / "seq", frames=4, calib="nan 80 79.5 59.5\n" if case == "nan-calib" else CALIB)
    if case == "bad-config":
        (tmp_path / "bad.yaml").write_text("tracking:\n  min_tracked_pionts: 20\n")
        return ["seq", "--out", "out", "--config", "bad.yaml"]
    if case == "unwritable-out":
        (tmp_path / "blocker").write_text("")
        return ["seq", "--out", "blocker/run"]
    if case == "undecodable-video":
        (tmp_path / "clip.mp4").write_bytes(os.urandom(4096))
        (tmp_path / "calib.txt").write_text(CALIB)
        return ["clip.mp4", "--out", "out"]
    if case == "corrupt-frame":
        (tmp_path / "seq" / "rgb" / "000002.png").write_bytes(os.urandom(300))
    return ["seq", "--out", "out"]


@pytest.mark.parametrize(
    "case, needles",
    [
        ("missing-path", ["nowhere", "no such file"]),
        ("nan-calib", ["calib.txt", "nan"]),
        ("bad-config", ["bad.yaml", "tracking.min_tracked_pionts"]),
        ("unwritable-out", ["blocker", "not writable"]),
        ("undecodable-video", ["clip.mp4"]),
        ("corrupt-frame", []),
    ],
)
def test_terminal_output(tmp_path, case, needles):
    """In a fresh interpreter: one ``error:`` line and exit 2, or a warning naming the skipped file and exit 0."""
    proc = slam_run_subprocess(*_prepare_case(tmp_path, case), cwd=tmp_path)
    if case == "corrupt-frame":
        assert_ran(proc, tmp_path / "out", frames=3)
        assert any("WARNING" in ln and "000002.png" in ln for ln in proc.stderr.splitlines()), proc.stderr
    else:
        assert_user_error(proc, *needles)
