"""Faults: an error in the mapping thread, Ctrl-C and kills mid-run, frames vanishing under a running source.

Every case has a watchdog (a thread join or a subprocess timeout), so a hang or a deadlock fails the test
instead of stalling the suite. What is checked is what the user keeps: the outputs written so far, in a
form that parses, and a stats.json that says how the run ended.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from slam.config import load_config
from slam.errors import TrackingError
from slam.evaluation.trajectory import Trajectory, read_tum, write_text_atomic, write_tum
from slam.runner import run_source
from slam.sources import open_source
from slam.synth import generate

WATCHDOG_S = 90.0


@pytest.fixture(scope="module")
def room(tmp_path_factory) -> Path:
    """90 frames of the synthetic room (320x240): long enough to interrupt half-way."""
    return generate("room", tmp_path_factory.mktemp("faults") / "room", frames=90, seed=1, size=(320, 240),
                    rotation_stretch=False)


def run_with_watchdog(fn, timeout: float = WATCHDOG_S):
    """Call ``fn()`` in a thread; fail if it does not return within ``timeout``. Returns (value, exception)."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(timeout)
    assert not worker.is_alive(), f"run did not finish within {timeout} s (hang or deadlock)"
    return box.get("value"), box.get("error")


def check_outputs(out: Path) -> dict:
    """The outputs exist and parse; returns stats.json."""
    stats = json.loads((out / "stats.json").read_text())
    text = (out / "trajectory.txt").read_text()
    traj = read_tum(out / "trajectory.txt") if text.strip() else Trajectory(np.zeros(0), np.zeros((0, 4, 4)))
    assert len(traj) == stats["tracked"]
    assert np.all(np.isfinite(traj.T_wc))
    from slam.viz.ply import read_ply

    xyz, _ = read_ply(out / "map.ply")
    assert len(xyz) == stats["map_points"]
    return stats


# ---------------------------------------------------------------------------------------------- mapping thread
def test_mapping_thread_error_surfaces_in_main_thread(room, tmp_path, monkeypatch):
    import slam.mapping

    calls = {"n": 0}
    original = slam.mapping.LocalMapper.process

    def failing_process(self, kf):
        calls["n"] += 1
        if calls["n"] >= 3:
            raise RuntimeError("injected mapping fault")
        return original(self, kf)

    monkeypatch.setattr(slam.mapping.LocalMapper, "process", failing_process)
    cfg = load_config(None, ["system.sync=false", "system.device=cpu"])
    out = tmp_path / "out"
    source = open_source(str(room), cfg.source)
    _, error = run_with_watchdog(lambda: run_source(source, cfg, out))

    assert isinstance(error, TrackingError), repr(error)
    assert "injected mapping fault" in str(error)
    assert isinstance(error.__cause__, RuntimeError) and str(error.__cause__) == "injected mapping fault"
    stats = check_outputs(out)
    assert "TrackingError" in stats["error"] and "injected mapping fault" in stats["error"]
    assert stats["frames"] < 90, "the run went on to the end after the mapping thread died"
    assert not any(t.name == "local-mapping" and t.is_alive() for t in threading.enumerate())


def test_tracking_error_keeps_outputs(room, tmp_path, monkeypatch):
    """An exception in the tracking thread itself: outputs so far are written, then the error is raised."""
    import slam.tracking

    original = slam.tracking.Tracker.track

    def failing_track(self, frame):
        if frame.index == 12:
            raise RuntimeError("injected tracking fault")
        return original(self, frame)

    monkeypatch.setattr(slam.tracking.Tracker, "track", failing_track)
    cfg = load_config(None, ["system.sync=true", "system.device=cpu"])
    out = tmp_path / "out"
    _, error = run_with_watchdog(lambda: run_source(open_source(str(room), cfg.source), cfg, out))
    assert isinstance(error, RuntimeError) and "injected tracking fault" in str(error)
    stats = check_outputs(out)
    assert stats["frames"] == 12 and stats["tracked"] >= 8
    assert "injected tracking fault" in stats["error"]


def test_mapping_fault_through_the_cli(room, tmp_path):
    """What the user sees: ``error: local mapping thread failed: RuntimeError(...)``, exit 2, outputs kept."""
    code = (
        "import sys, slam.mapping\n"
        "orig = slam.mapping.LocalMapper.process\n"
        "n = [0]\n"
        "def bad(self, kf):\n"
        "    n[0] += 1\n"
        "    if n[0] >= 2: raise RuntimeError('injected mapping fault')\n"
        "    return orig(self, kf)\n"
        "slam.mapping.LocalMapper.process = bad\n"
        "from slam.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-c", code, "run", str(room), "--out", str(out), "--quiet", "--device", "cpu",
         "--max-frames", "40"],
        capture_output=True, text=True, timeout=WATCHDOG_S,
    )
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: local mapping thread failed") and "injected mapping fault" in last, proc.stderr
    stats = check_outputs(out)
    assert "injected mapping fault" in stats["error"]


# ---------------------------------------------------------------------------------------------- Ctrl-C / kill
class LiveRun:
    """``slam run`` in a subprocess whose stderr is collected as it comes."""

    def __init__(self, *args: str, cwd: Path):
        # Ctrl-C as in a terminal: a test run started in the background of a non-interactive shell inherits
        # SIGINT ignored (POSIX), and so would the run, which then rightly goes on to the end
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "slam.cli", "run", *args, "--device", "cpu"],
            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ, PYTHONUNBUFFERED="1"),
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        self.err = b""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            chunk = self.proc.stderr.read1(4096)
            if not chunk:
                return
            self.err += chunk

    def wait_for(self, needle: str, timeout: float = WATCHDOG_S) -> None:
        end = time.monotonic() + timeout
        while needle.encode() not in self.err:
            assert self.proc.poll() is None, f"run ended before {needle!r}: {self.err.decode(errors='replace')}"
            assert time.monotonic() < end, f"no {needle!r} within {timeout} s"
            time.sleep(0.05)

    def finish(self, timeout: float = WATCHDOG_S) -> tuple[int, str, str]:
        """Wait for the exit (the reader thread drains stderr; stdout is a few lines)."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail("run did not exit after the signal (hang)")
        self._reader.join(10)
        out = self.proc.stdout.read()
        self.proc.stdout.close()
        self.proc.stderr.close()
        return self.proc.returncode, out.decode(errors="replace"), self.err.decode(errors="replace")


@pytest.mark.parametrize("threaded", [True, False], ids=["threads", "sync"])
def test_ctrl_c_writes_outputs_and_exits_130(room, tmp_path, threaded):
    args = [str(room), "--out", "out", "--set", "system.log_level=INFO"]
    save_map = hasattr(load_config(None).system, "save_map")
    if save_map:
        args += ["--set", "system.save_map=true"]
    if not threaded:
        args.append("--sync")
    run = LiveRun(*args, cwd=tmp_path)
    run.wait_for("initialised from frames")  # the map exists and frames are being tracked
    time.sleep(0.5)
    run.proc.send_signal(signal.SIGINT)
    rc, stdout, stderr = run.finish()

    assert rc == 130, stderr
    assert "Traceback" not in stderr, stderr
    assert "interrupted" in stderr
    stats = check_outputs(tmp_path / "out")
    assert stats["interrupted"] is True
    assert 2 <= stats["frames"] < 90 and stats["tracked"] >= 2, stats
    assert "outputs in" in stdout
    if save_map:
        from slam.map.persistence import load_maps

        maps, camera, _ = load_maps(tmp_path / "out" / "map.npz")
        assert sum(len(m.keyframes) for m in maps) == stats["keyframes"]




def test_kill_never_leaves_outputs_that_look_complete(room, tmp_path):
    """SIGKILL mid-run (no chance to clean up): DIR holds no trajectory/stats that pass for this run's."""
    out = tmp_path / "out"
    out.mkdir()
    # a previous, complete run into the same folder
    write_tum(out / "trajectory.txt", Trajectory(np.array([0.0, 1.0]), np.tile(np.eye(4), (2, 1, 1))))
    write_text_atomic(out / "stats.json", json.dumps({"frames": 2, "tracked": 2, "interrupted": False}))
    run = LiveRun(str(room), "--out", "out", "--sync", "--set", "system.log_level=INFO", cwd=tmp_path)
    run.wait_for("initialised from frames")
    run.proc.send_signal(signal.SIGKILL)
    rc, _, _ = run.finish()
    assert rc == -signal.SIGKILL
    for name in ("trajectory.txt", "stats.json", "keyframes.txt", "map.ply"):
        assert not (out / name).exists(), f"{name} of an earlier run is left and looks like this run's output"


# ---------------------------------------------------------------------------------------------- atomic writes
def test_write_is_atomic_when_killed_before_rename(tmp_path, monkeypatch):
    path = tmp_path / "trajectory.txt"
    path.write_text("previous complete content\n")

    def killed(src, dst):
        raise KeyboardInterrupt  # the process dies between writing the temp file and the rename

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_text_atomic(path, "new content that never lands\n" * 1000)
    assert path.read_text() == "previous complete content\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trajectory.txt"], "temporary file left behind"


def test_write_is_atomic_when_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "stats.json"
    real_fdopen = os.fdopen

    def fdopen(fd, *a, **k):
        fh = real_fdopen(fd, *a, **k)
        original_write = fh.write

        def write(text):
            original_write(text[: len(text) // 2])
            raise OSError(28, "No space left on device")

        fh.write = write
        return fh

    monkeypatch.setattr(os, "fdopen", fdopen)
    with pytest.raises(OSError):
        write_text_atomic(path, "x" * 10000)
    assert not path.exists()
    assert list(tmp_path.iterdir()) == [], "temporary file left behind"


def _files_renamed_into_place(monkeypatch, run) -> tuple[set[str], set[str]]:
    """(files in the output folder after ``run(out)``, names that were renamed into place)."""
    renamed: set[str] = set()
    real_replace = os.replace

    def recording_replace(src, dst, *a, **k):
        renamed.add(Path(dst).name)
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", recording_replace)
    out = run()
    written = {p.name for p in out.iterdir() if p.is_file()}
    assert not [n for n in written if n.startswith(".")], "temporary files left behind"
    return written, renamed


def _short_run(room: Path, out: Path, *overrides: str) -> Path:
    extra = ["system.save_map=true"] if hasattr(load_config(None).system, "save_map") else []
    cfg = load_config(None, ["system.sync=true", "system.device=cpu", "source.max_frames=12", *extra, *overrides])
    run_source(open_source(str(room), cfg.source), cfg, out)
    return out


def test_run_outputs_go_through_rename(room, tmp_path, monkeypatch):
    """Every output file of a run is written to a temporary name and renamed into place."""
    written, renamed = _files_renamed_into_place(monkeypatch, lambda: _short_run(room, tmp_path / "out"))
    core = {"trajectory.txt", "keyframes.txt", "map.ply", "stats.json", "states.txt", "groundtruth.txt",
            "eval.json", "eval.png"}
    assert core <= written, core - written
    not_atomic = written - renamed
    assert not not_atomic, f"written in place (a kill can leave them half-written): {sorted(not_atomic)}"


def test_mask_output_goes_through_rename(room, tmp_path, monkeypatch):
    import cv2

    mask = np.full((240, 320), 255, np.uint8)
    mask[:20] = 0
    cv2.imwrite(str(tmp_path / "mask.png"), mask)
    written, renamed = _files_renamed_into_place(
        monkeypatch, lambda: _short_run(room, tmp_path / "out", f"source.mask={tmp_path / 'mask.png'}"))
    assert "mask_used.png" in written
    assert "mask_used.png" in renamed


# ---------------------------------------------------------------------------------------------- source faults
def test_frames_deleted_while_running(room, tmp_path):
    """Files removed under a running source (a disk unplugged, a sync tool): skipped with a warning, run ends."""
    import shutil

    seq = tmp_path / "seq"
    shutil.copytree(room, seq)
    files = sorted((seq / "rgb").iterdir())
    cfg = load_config(None, ["system.sync=true", "system.device=cpu", "source.max_frames=30"])

    def on_frame(system, fd, res):
        if fd.index == 10:
            for f in files[15:25]:
                f.unlink()

    outcome, error = run_with_watchdog(lambda: run_source(open_source(str(seq), cfg.source), cfg, tmp_path / "out",
                                                          on_frame=on_frame))
    assert error is None, repr(error)
    assert outcome.result.stats["frames"] == 20
    assert [s[0] for s in outcome.result.states] == list(range(15)) + list(range(25, 30))
