"""`slam live` through the camera capture path, fed with a video file (no camera here)."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from slam.synth import generate


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    root = tmp_path_factory.mktemp("live")
    seq = generate("room", root / "seq", frames=60, seed=3, size=(320, 240))
    path = root / "room.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (320, 240))
    for png in sorted((seq / "rgb").glob("*.png")):
        writer.write(cv2.imread(str(png)))
    writer.release()
    return path, seq / "calib.txt"


def slam(*args):
    return subprocess.run([sys.executable, "-m", "slam.cli", *args], capture_output=True, text=True, timeout=600)


def test_live_capture_tracks_as_well_as_run(video, tmp_path):
    path, calib = video
    run = slam("run", str(path), "--calib", str(calib), "--out", str(tmp_path / "run"), "--quiet")
    assert run.returncode == 0, run.stderr
    live = slam("live", "--camera", str(path), "--calib", str(calib), "--out", str(tmp_path / "live"),
                "--quiet", "--set", "source.realtime=false")
    assert live.returncode == 0, live.stderr
    a = json.loads((tmp_path / "run" / "stats.json").read_text())
    b = json.loads((tmp_path / "live" / "stats.json").read_text())
    assert a["frames"] == b["frames"] == 60
    assert a["tracked_fraction"] >= 0.85
    assert b["tracked_fraction"] >= a["tracked_fraction"] - 0.05


def test_realtime_live_capture_drops_rather_than_falls_behind(video, tmp_path):
    path, calib = video
    live = slam("live", "--camera", str(path), "--calib", str(calib), "--out", str(tmp_path / "live"), "--quiet")
    assert live.returncode == 0, live.stderr
    stats = json.loads((tmp_path / "live" / "stats.json").read_text())
    assert 0 < stats["frames"] <= 60
    traj = np.loadtxt(tmp_path / "live" / "trajectory.txt", ndmin=2)
    assert len(traj) == stats["tracked"]
