"""The viewer: snapshot contract, drop-old channel, PLY I/O, run replay, and real rendering under Xvfb."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from slam.errors import DependencyError, InputError
from slam.evaluation.trajectory import Trajectory, write_tum
from slam.geometry.se3 import make_T, so3_exp
from slam.viz.groundtruth import align_groundtruth
from slam.viz.ply import read_ply, write_ply
from slam.viz.replay import load_run
from slam.viz.scene import frustum_segments
from slam.viz.snapshot import PlaybackControl, SnapshotChannel, ViewerSnapshot

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ scenes
def _look_along_z(centre: np.ndarray) -> np.ndarray:
    """Camera-to-world pose at ``centre`` looking along world +z (camera y down = world y down)."""
    return make_T(np.eye(3), centre)


def helix(n: int, shift=(0.0, 0.0, 0.0)) -> np.ndarray:
    """``(n, 3)`` camera centres on a helix going along +z."""
    t = np.linspace(0, 4 * np.pi, n)
    return np.stack([0.6 * np.cos(t), 0.3 * np.sin(t), 0.5 * t], axis=1) + np.asarray(shift)


def synthetic_snapshot(n_points=4000, n_frames=120, shift=(0.0, 0.0, 0.0), seed=0, with_gt=True) -> ViewerSnapshot:
    """A tube of coloured points around a helix trajectory, keyframe frustums, an image with a round mask."""
    rng = np.random.default_rng(seed)
    traj = helix(n_frames, shift)
    T = np.array([_look_along_z(p) for p in traj])
    ang = rng.uniform(0, 2 * np.pi, n_points)
    z = rng.uniform(-0.5, 7.0, n_points)
    r = 1.5 + 0.1 * rng.normal(size=n_points)
    pts = np.stack([r * np.cos(ang), r * np.sin(ang), z], axis=1) + np.asarray(shift)
    rgb = np.stack([150 + 80 * np.cos(ang), 60 + 40 * np.sin(z), 70 + 50 * np.sin(ang)], axis=1).clip(0, 255)
    img = np.zeros((240, 320, 3), np.uint8)
    img[:] = np.linspace(40, 200, 320).astype(np.uint8)[None, :, None]
    yy, xx = np.mgrid[:240, :320]
    mask = (((yy - 120) ** 2 + (xx - 160) ** 2) < 110 ** 2).astype(np.uint8) * 255
    kp = rng.uniform([60, 30], [260, 210], (300, 2))
    gt = traj + 0.05 * np.sin(np.arange(n_frames))[:, None] if with_gt else None
    return ViewerSnapshot(
        frame_index=n_frames - 1, timestamp=n_frames / 30.0, state="tracking", fps=27.3, image=img, mask=mask,
        keypoints=kp, tracked=rng.random(300) < 0.7, T_wc=T[-1], keyframe_T_wc=T[::8], trajectory_xyz=traj,
        points_xyz=pts, points_rgb=rgb.astype(np.uint8), gt_xyz=gt,
    )


# ------------------------------------------------------------------------------------------ contract
def test_snapshot_is_immutable_and_counts_itself():
    snap = synthetic_snapshot(n_points=50, n_frames=20)
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.state = "lost"
    with pytest.raises(ValueError):
        snap.points_xyz[0, 0] = 1.0
    assert snap.points_xyz.dtype == np.float32 and snap.keypoints.dtype == np.float32
    assert snap.num_map_points == 50 and snap.num_keyframes == len(snap.keyframe_T_wc) == 3
    assert snap.num_tracked == int(snap.tracked.sum())
    empty = ViewerSnapshot(frame_index=0, timestamp=0.0, state="initialising")
    assert empty.points_xyz.shape == (0, 3) and empty.keypoints.shape == (0, 2) and empty.num_map_points == 0
    with pytest.raises(ValueError):
        ViewerSnapshot(frame_index=0, timestamp=0.0, state="tracking", points_xyz=np.zeros((5, 2)))
    with pytest.raises(ValueError):
        ViewerSnapshot(frame_index=0, timestamp=0.0, state="tracking", keypoints=np.zeros((4, 2)), tracked=np.ones(3, bool))


def test_channel_drops_oldest_and_never_blocks():
    channel = SnapshotChannel(maxsize=2)
    snaps = [ViewerSnapshot(frame_index=i, timestamp=i / 30, state="tracking") for i in range(500)]
    t0 = time.perf_counter()
    for s in snaps:  # nobody consumes: put must still return at once
        channel.put(s)
    elapsed = time.perf_counter() - t0
    assert elapsed < 0.5, f"500 puts without a consumer took {elapsed:.3f} s"
    assert len(channel) == 2
    latest = channel.get_latest(0)
    assert latest is not None and latest.frame_index == 499
    assert channel.get_latest(0) is None
    assert channel.dropped == 499 and channel.total_put == 500

    t0 = time.perf_counter()
    assert channel.get_latest(timeout=0.1) is None
    assert time.perf_counter() - t0 >= 0.09

    producer = threading.Timer(0.05, channel.put, args=(snaps[7],))
    producer.start()
    got = channel.get_latest(timeout=5.0)
    producer.join()
    assert got is not None and got.frame_index == 7


def test_playback_control_pauses_steps_and_cancels():
    control = PlaybackControl()
    assert control.wait_turn(timeout=0.01)  # running: no wait
    control.pause()
    assert not control.wait_turn(timeout=0.05)  # paused: times out
    control.step()
    assert control.wait_turn(timeout=0.05)  # one granted frame
    assert not control.wait_turn(timeout=0.05)
    released = []
    waiter = threading.Thread(target=lambda: released.append(control.wait_turn(timeout=5)))
    waiter.start()
    time.sleep(0.05)
    control.resume()
    waiter.join(5)
    assert released == [True]
    control.cancel()
    assert control.wait_turn(timeout=0.01) is False


def test_frustum_segments_sit_in_front_of_the_camera():
    R = so3_exp(np.array([0.2, -0.4, 0.1]))
    T_wc = make_T(R, np.array([1.0, 2.0, 3.0]))
    seg = frustum_segments(T_wc[None], scale=0.5, aspect=2.0)
    assert seg.shape == (16, 3)
    local = (seg - T_wc[:3, 3]) @ R  # back into the camera frame
    apex = local[0:8:2]
    assert np.allclose(apex, 0.0)  # every ray starts at the camera centre
    corners = local[1:8:2]
    assert np.allclose(corners[:, 2], 0.5)  # image plane at depth `scale` along +z (camera looks along +z)
    width = corners[:, 0].max() - corners[:, 0].min()
    height = corners[:, 1].max() - corners[:, 1].min()
    assert width == pytest.approx(2.0 * height)


# ------------------------------------------------------------------------------------------ files
def test_ply_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    xyz = rng.normal(size=(1234, 3)) * 5
    rgb = rng.integers(0, 256, (1234, 3)).astype(np.uint8)
    path = tmp_path / "map.ply"
    write_ply(path, xyz, rgb)
    xyz2, rgb2 = read_ply(path)
    assert xyz2.shape == (1234, 3)
    assert np.array_equal(xyz2, xyz.astype(np.float32).astype(np.float64))
    assert np.array_equal(rgb2, rgb)
    write_ply(tmp_path / "empty.ply", np.zeros((0, 3)), np.zeros((0, 3), np.uint8))
    e_xyz, e_rgb = read_ply(tmp_path / "empty.ply")
    assert e_xyz.shape == (0, 3) and e_rgb.shape == (0, 3)
    try:
        import open3d as o3d
    except ImportError:
        return
    cloud = o3d.io.read_point_cloud(str(path))
    assert len(cloud.points) == 1234
    assert np.allclose(np.asarray(cloud.points), xyz, atol=1e-4 * np.abs(xyz).max())
    assert np.allclose(np.asarray(cloud.colors) * 255, rgb, atol=0.51)


def test_ply_reads_ascii_and_big_endian_and_rejects_bad_files(tmp_path):
    ascii_ply = tmp_path / "a.ply"
    ascii_ply.write_text(
        "ply\nformat ascii 1.0\ncomment test\nelement vertex 3\nproperty double x\nproperty double y\n"
        "property double z\nproperty float nx\nproperty uchar red\nproperty uchar green\nproperty uchar blue\n"
        "element face 1\nproperty list uchar int vertex_indices\nend_header\n"
        "0 0 0 1 255 0 0\n1.5 0 0 1 0 255 0\n0 2.5 -1 1 0 0 255\n3 0 1 2\n"
    )
    xyz, rgb = read_ply(ascii_ply)
    assert np.allclose(xyz, [[0, 0, 0], [1.5, 0, 0], [0, 2.5, -1]])
    assert np.array_equal(rgb, [[255, 0, 0], [0, 255, 0], [0, 0, 255]])

    big = tmp_path / "b.ply"
    pts = np.array([[1, 2, 3], [4, 5, 6]], ">f4")
    big.write_bytes(b"ply\nformat binary_big_endian 1.0\nelement vertex 2\nproperty float x\nproperty float y\n"
                    b"property float z\nend_header\n" + pts.tobytes())
    xyz, rgb = read_ply(big)
    assert np.allclose(xyz, pts) and rgb is None

    with pytest.raises(InputError, match="not found"):
        read_ply(tmp_path / "missing.ply")
    (tmp_path / "bad.ply").write_text("solid cube\n")
    with pytest.raises(InputError, match="not a PLY"):
        read_ply(tmp_path / "bad.ply")
    truncated = tmp_path / "t.ply"
    truncated.write_bytes(big.read_bytes()[:-5])
    with pytest.raises(InputError, match="truncated"):
        read_ply(truncated)


def test_groundtruth_alignment_recovers_a_known_similarity():
    rng = np.random.default_rng(3)
    ts = np.arange(60) / 30.0
    gt_xyz = helix(60) + rng.normal(scale=0.01, size=(60, 3))
    R = so3_exp(np.array([0.3, -1.1, 0.5]))
    est = 0.37 * gt_xyz @ R.T + np.array([4.0, -2.0, 1.0])
    gt = Trajectory(ts, np.array([make_T(np.eye(3), p) for p in gt_xyz]))
    aligned = align_groundtruth(ts[5:50] + 0.001, est[5:50], gt)  # estimate covers part of the sequence
    assert aligned is not None and aligned.shape == (60, 3)
    assert np.abs(aligned - est).max() < 1e-6
    assert align_groundtruth(ts[:2], est[:2], gt) is None  # too few pairs
    assert align_groundtruth(ts + 10.0, est, gt) is None  # no timestamps match


def _write_run(run_dir: Path, n_frames=80, n_points=3000, with_gt=True, seed=0) -> tuple[np.ndarray, np.ndarray]:
    snap = synthetic_snapshot(n_points=n_points, n_frames=n_frames, seed=seed, with_gt=False)
    ts = np.arange(n_frames) / 30.0
    T = np.array([_look_along_z(p) for p in snap.trajectory_xyz])
    write_tum(run_dir / "trajectory.txt", Trajectory(ts, T))
    write_tum(run_dir / "keyframes.txt", Trajectory(ts[::10], T[::10]))
    write_ply(run_dir / "map.ply", snap.points_xyz, snap.points_rgb)
    (run_dir / "stats.json").write_text(json.dumps({"frames": n_frames, "fps": 31.5, "keyframes": len(T[::10]),
                                                    "map_points": n_points}))
    (run_dir / "states.txt").write_text("# index timestamp state tracked_points\n0 0.0 initialising 0\n"
                                        f"{n_frames - 1} {ts[-1]:.6f} tracking 187\n")
    if with_gt:  # ground truth in another frame and scale: the viewer must align it
        R = so3_exp(np.array([0.0, 0.8, 0.2]))
        gt_xyz = 2.5 * snap.trajectory_xyz @ R.T + np.array([10.0, 0.0, -3.0])
        write_tum(run_dir / "groundtruth.txt", Trajectory(ts, np.array([_look_along_z(p) for p in gt_xyz])))
    return snap.trajectory_xyz, snap.points_xyz


def test_load_run_reads_a_run_folder(tmp_path):
    traj, pts = _write_run(tmp_path, n_frames=80, n_points=3000)
    snap = load_run(tmp_path)
    assert snap.trajectory_xyz.shape == (80, 3) and np.allclose(snap.trajectory_xyz, traj, atol=1e-6)
    assert snap.keyframe_T_wc.shape == (8, 4, 4)
    assert snap.points_xyz.shape == (3000, 3) and np.allclose(snap.points_xyz, pts, atol=1e-5)
    assert snap.points_rgb.dtype == np.uint8 and snap.points_rgb.shape == (3000, 3)
    assert np.allclose(snap.T_wc[:3, 3], traj[-1], atol=1e-6)
    assert snap.gt_xyz is not None and np.abs(snap.gt_xyz - traj).max() < 1e-4
    assert snap.state == "tracking" and snap.num_tracked == 187 and snap.frame_index == 79
    assert snap.fps == pytest.approx(31.5) and snap.num_keyframes == 8 and snap.num_map_points == 3000
    with pytest.raises(InputError, match="not found"):
        load_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="trajectory.txt"):
        load_run(tmp_path / "empty")


def test_library_modules_do_not_import_qt():
    code = ("import sys, slam.viz, slam.viz.snapshot, slam.viz.ply, slam.viz.replay, slam.viz.command, slam.viz.xvfb; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('PySide6', 'pyqtgraph', 'OpenGL', 'PyQt5', 'PyQt6')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


def test_ensure_display_without_display_or_xvfb_says_what_to_install(monkeypatch):
    from slam.viz import xvfb

    if not sys.platform.startswith("linux"):
        pytest.skip("X11 only")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(xvfb.shutil, "which", lambda name: None)
    with pytest.raises(DependencyError, match="apt-get install xvfb"):
        with xvfb.ensure_display():
            pass


# ------------------------------------------------------------------------------------------ rendering
@pytest.fixture(scope="session")
def qt_display():
    """One display (Xvfb when installed, else the existing one) and one QApplication for all Qt tests."""
    for module in ("PySide6", "pyqtgraph", "OpenGL"):
        pytest.importorskip(module, reason=f"{module} is needed for the viewer tests")
    from slam.viz.xvfb import ensure_display, has_display

    have_xvfb = shutil.which("Xvfb") is not None
    if not have_xvfb and not has_display():
        pytest.skip("no X display and no Xvfb (apt-get install xvfb libxcb-icccm4 libxcb-keysyms1)")
    with ensure_display(force_xvfb=have_xvfb) as display:
        from slam.viz.viewer import get_qapp

        app = get_qapp("slam-tests")
        yield app, display


def _load_png(path: Path) -> np.ndarray:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, f"{path} is not a readable image"
    return img.astype(np.int16)


def _content(img: np.ndarray) -> tuple[float, float]:
    """Pixel standard deviation and fraction of pixels that differ from the background (corner colour)."""
    bg = img[2, 2]
    differs = np.abs(img - bg).max(axis=2) > 30
    return float(img.std()), float(differs.mean())


def _count_colour(img_bgr: np.ndarray, rgb: tuple[int, int, int], tol: int = 40) -> int:
    target = np.array(rgb[::-1])
    return int((np.abs(img_bgr - target).max(axis=2) <= tol).sum())


@pytest.mark.viewer
def test_render_snapshot_shows_the_map_and_changes_with_it(qt_display, tmp_path):
    from slam.viz.viewer import render_snapshot

    snap_a = synthetic_snapshot(n_points=4000, seed=0)
    snap_b = synthetic_snapshot(n_points=12000, shift=(1.5, 0.5, 0.0), seed=1)
    empty = ViewerSnapshot(frame_index=0, timestamp=0.0, state="initialising")
    t0 = time.perf_counter()
    render_snapshot(snap_a, tmp_path / "a.png")
    took = time.perf_counter() - t0
    render_snapshot(snap_a, tmp_path / "a2.png")
    render_snapshot(snap_b, tmp_path / "b.png")
    render_snapshot(empty, tmp_path / "empty.png")

    window = _load_png(tmp_path / "a.png")
    assert window.shape[:2] == (720, 1280)
    a, a2, b, e = (_load_png(tmp_path / f"{n}_3d.png") for n in ("a", "a2", "b", "empty"))
    std_a, frac_a = _content(a)
    std_e, frac_e = _content(e)
    assert std_a > 15 and frac_a > 0.03, f"3D view looks blank: std {std_a:.1f}, {100 * frac_a:.1f}% drawn"
    assert frac_e < 0.002, f"empty snapshot should draw nothing, {100 * frac_e:.2f}% drawn"
    # the trajectory (yellow), ground truth (magenta), keyframes (blue) and camera (green) are all visible
    assert _count_colour(a, (255, 209, 25)) > 100, "trajectory not visible"
    assert _count_colour(a, (255, 76, 217)) > 30, "ground truth not visible"
    assert _count_colour(a, (89, 153, 255)) > 100, "keyframe frustums not visible"
    assert _count_colour(a, (51, 255, 89)) > 30, "current camera not visible"
    same = np.abs(a - a2).mean()
    changed = np.abs(a - b).mean()
    assert same < 0.5, f"the same snapshot rendered twice differs by {same:.2f}"
    assert changed > 5 * max(same, 0.2), f"a different map changed the image by only {changed:.2f}"
    assert _content(b)[1] > frac_a, "three times the points should cover more pixels"
    # the whole window also has the 2D panel with the frame (right) and the status line (bottom)
    panel = window[200:520, 930:1270]
    assert panel.std() > 20, "2D frame panel is blank"
    assert took < 20


@pytest.mark.viewer
def test_live_viewer_exits_by_itself_and_writes_the_snapshot(qt_display, tmp_path):
    from slam.viz.viewer import run_viewer

    channel = SnapshotChannel(maxsize=2)
    stop = threading.Event()
    put_times: list[float] = []
    frames = 40

    def produce():
        for i in range(1, frames + 1):
            snap = synthetic_snapshot(n_points=100 * i, n_frames=max(i * 3, 2), seed=i)
            t0 = time.perf_counter()
            channel.put(snap)
            put_times.append(time.perf_counter() - t0)
            time.sleep(0.01)
        stop.set()

    # watchdog: should the viewer hang, interrupt it (run_viewer turns SIGINT into KeyboardInterrupt)
    watchdog = threading.Timer(90.0, lambda: os.kill(os.getpid(), signal.SIGINT))
    watchdog.start()
    producer = threading.Thread(target=produce, daemon=True)
    out = tmp_path / "live.png"
    t0 = time.perf_counter()
    try:
        producer.start()
        run_viewer(channel, stop, snapshot_path=out, title="slam test", timeout_s=60.0, size=(1000, 600))
    finally:
        watchdog.cancel()
    elapsed = time.perf_counter() - t0
    producer.join(5)
    assert stop.is_set() and not producer.is_alive()
    assert elapsed < 55, f"viewer took {elapsed:.1f} s to exit after the run ended"
    assert max(put_times) < 0.05, "put() blocked the producer"
    assert out.is_file() and (tmp_path / "live_3d.png").is_file()
    img3d = _load_png(tmp_path / "live_3d.png")
    std, frac = _content(img3d)
    assert std > 10 and frac > 0.02, f"final 3D view looks blank: std {std:.1f}, {100 * frac:.1f}% drawn"
    # the final snapshot (4000 points, 120-frame helix) was drawn, not an early one
    assert _count_colour(img3d, (255, 209, 25)) > 100


@pytest.mark.viewer
def test_view_command_renders_a_saved_run(qt_display, tmp_path):
    from slam.viz import command

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _write_run(run_dir)
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    out = tmp_path / "view.png"
    assert command.run(parser.parse_args([str(run_dir), "--snapshot", str(out), "--size", "960x540"])) == 0
    img = _load_png(out)
    assert img.shape[:2] == (540, 960)
    std, frac = _content(_load_png(tmp_path / "view_3d.png"))
    assert std > 10 and frac > 0.02
    with pytest.raises(InputError, match="--size"):
        command.run(parser.parse_args([str(run_dir), "--snapshot", str(out), "--size", "big"]))


# ------------------------------------------------------------------------------------------ live wiring
class _FakeSystem:
    """The parts of slam.system.System the publisher reads, over a helix scene."""

    def __init__(self, scene: ViewerSnapshot) -> None:
        self.scene = scene
        self.n = 0
        self.last_frame = None
        self.last_mask = scene.mask
        self.cloud_calls = 0

    def step(self, i: int):
        from types import SimpleNamespace

        self.n = i + 1
        kp = self.scene.keypoints
        ids = np.where(self.scene.tracked, np.arange(len(kp)), -1)
        self.last_frame = SimpleNamespace(features=SimpleNamespace(keypoints=kp), point_ids=ids)
        T_cw = np.linalg.inv(_look_along_z(self.scene.trajectory_xyz[i]))
        fd = SimpleNamespace(index=i, timestamp=i / 30.0, image=self.scene.image)
        res = SimpleNamespace(state="tracking" if i else "initialising", T_cw=T_cw if i else None,
                              num_tracked=int(self.scene.tracked.sum()))
        return fd, res

    def keyframe_trajectory(self) -> Trajectory:
        T = np.array([_look_along_z(p) for p in self.scene.trajectory_xyz[: self.n : 8]])
        return Trajectory(np.arange(len(T)), T)

    def point_cloud(self):
        self.cloud_calls += 1
        k = 30 * self.n
        return self.scene.points_xyz[:k].astype(np.float64), self.scene.points_rgb[:k]


def test_publisher_builds_snapshots_from_a_running_system():
    from slam.viz.live import SnapshotPublisher

    scene = synthetic_snapshot(n_points=3000, n_frames=100, with_gt=False)
    ts = np.arange(100) / 30.0
    R = so3_exp(np.array([0.1, 0.5, -0.2]))
    gt = Trajectory(ts, np.array([_look_along_z(p) for p in 3.0 * scene.trajectory_xyz @ R.T]))
    channel = SnapshotChannel(maxsize=2)
    publisher = SnapshotPublisher(channel, groundtruth=gt, max_rate_hz=0, cost_fraction=None)  # every frame
    system = _FakeSystem(scene)
    for i in range(100):
        publisher.on_frame(system, *system.step(i))
    snap = channel.get_latest(0)
    assert snap is not None and snap.frame_index == 99 and snap.state == "tracking"
    assert snap.trajectory_xyz.shape == (99, 3)  # frame 0 had no pose
    assert np.allclose(snap.T_wc[:3, 3], scene.trajectory_xyz[99])
    assert len(snap.points_xyz) == 3000 and snap.num_keyframes == 13
    assert snap.num_tracked == int(scene.tracked.sum()) and np.array_equal(snap.tracked, scene.tracked)
    assert snap.image is not None and snap.mask is not None
    assert snap.gt_xyz is not None and np.abs(snap.gt_xyz - scene.trajectory_xyz).max() < 1e-6
    assert channel.total_put == 100 and channel.dropped == 99

    throttled = SnapshotPublisher(SnapshotChannel(), max_rate_hz=5.0)
    system = _FakeSystem(scene)
    t0 = time.perf_counter()
    for i in range(100):
        throttled.on_frame(system, *system.step(i))
    n_allowed = 1 + int((time.perf_counter() - t0) * 5.0) + 1
    assert 1 <= system.cloud_calls <= n_allowed, "the map was copied more often than the rate limit allows"


@pytest.mark.viewer
def test_run_with_viewer_writes_the_final_view(qt_display, tmp_path, monkeypatch):
    """The --viewer wiring: the run in a worker thread, the viewer in the main thread, PNG at the end."""
    from types import SimpleNamespace

    import slam.runner
    from slam.viz.live import run_with_viewer

    scene = synthetic_snapshot(n_points=4000, n_frames=90, with_gt=False)

    def fake_run_source(source, cfg, out_dir, on_frame=None, should_stop=None, progress=False):
        system = _FakeSystem(scene)
        for i in range(90):
            if should_stop is not None and should_stop():
                break
            on_frame(system, *system.step(i))
            time.sleep(0.002)
        T = np.array([_look_along_z(p) for p in scene.trajectory_xyz])
        result = SimpleNamespace(trajectory=Trajectory(np.arange(90) / 30.0, T),
                                 keyframes=Trajectory(np.arange(12), T[::8][:12]),
                                 points_xyz=scene.points_xyz, points_rgb=scene.points_rgb)
        return SimpleNamespace(result=result, evaluation=None, out_dir=Path(out_dir))

    monkeypatch.setattr(slam.runner, "run_source", fake_run_source)
    watchdog = threading.Timer(90.0, lambda: os.kill(os.getpid(), signal.SIGINT))
    watchdog.start()
    try:
        outcome = run_with_viewer(SimpleNamespace(name="fake"), None, tmp_path / "run", snapshot=tmp_path / "final.png")
    finally:
        watchdog.cancel()
    assert outcome.out_dir == tmp_path / "run"
    img = _load_png(tmp_path / "final_3d.png")
    std, frac = _content(img)
    assert std > 10 and frac > 0.03, f"final view looks blank: std {std:.1f}, {100 * frac:.1f}% drawn"
    assert _count_colour(img, (255, 209, 25)) > 100, "trajectory not visible in the final view"


@pytest.mark.viewer
def test_viewer_controls_pause_step_follow_and_screenshot(qt_display, tmp_path):
    """Press the buttons of a live viewer: pause holds the producer, step lets one frame through."""
    from pyqtgraph.Qt import QtCore, QtWidgets

    from slam.viz.viewer import run_viewer

    app, _ = qt_display
    channel = SnapshotChannel()
    stop = threading.Event()
    control = PlaybackControl()
    produced: list[int] = []
    scene = synthetic_snapshot(n_points=2000, n_frames=60)

    def produce():
        for i in range(2, 400):
            if not control.wait_turn(timeout=30):
                break
            produced.append(i)
            channel.put(dataclasses.replace(scene, frame_index=i, trajectory_xyz=scene.trajectory_xyz[: i % 60 + 2]))
            time.sleep(0.005)
        stop.set()

    log: dict = {}

    def window_parts():
        win = next(w for w in app.topLevelWidgets() if w.isVisible() and w.windowTitle() == "controls test")
        buttons = {b.text(): b for b in win.findChildren(QtWidgets.QPushButton)}
        follow = win.findChildren(QtWidgets.QCheckBox)[0]
        return win, buttons, follow

    def press_pause():
        _, buttons, _ = window_parts()
        buttons["Pause"].click()
        log["after_pause"] = len(produced)

    def check_paused_then_step():
        _, buttons, _ = window_parts()
        log["still_paused"] = len(produced)
        log["resume_label"] = "Resume" in buttons
        buttons["Step"].click()

    def follow_and_screenshot():
        win, buttons, follow = window_parts()
        log["after_step"] = len(produced)
        follow.setChecked(True)
        buttons["Reset view"].click()
        buttons["Screenshot"].click()
        buttons["Resume"].click()

    QtCore.QTimer.singleShot(300, press_pause)
    QtCore.QTimer.singleShot(900, check_paused_then_step)
    QtCore.QTimer.singleShot(1500, follow_and_screenshot)
    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    run_viewer(channel, stop, snapshot_path=tmp_path / "end.png", title="controls test", control=control,
               timeout_s=60, size=(900, 560))
    producer.join(5)
    assert log["resume_label"], "the Pause button did not turn into Resume"
    assert log["still_paused"] - log["after_pause"] <= 1, "the producer kept going while paused"
    assert log["after_step"] - log["still_paused"] == 1, "Step did not let exactly one frame through"
    assert len(produced) == 398, "the producer did not run to the end after Resume"
    shots = list(tmp_path.glob("slam_frame*.png"))
    assert len(shots) == 1 and _content(_load_png(shots[0]))[0] > 10
    assert (tmp_path / "end.png").is_file()
