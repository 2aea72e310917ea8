"""Frame sources: layout detection, the SourceConfig options, bad inputs, and every reader.

Real samples come from ../shared/data (skipped where absent); the TUM and EuRoC samples are re-laid out in
their published dataset layouts in tmp_path; videos, bad inputs and the endoscopy data sets are fixtures
built here in the published layouts.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from slam.config import SourceConfig
from slam.errors import CalibrationError, ConfigError, InputError
from slam.sources import detect_layout, open_source
from slam.sources.images import read_image, to_uint8
from tests.conftest import shared_sequence


# ============================================================================== helpers
def write_folder(root: Path, n: int = 5, size=(64, 48), calib: str = "50 52 31.5 23.5", times=None) -> Path:
    """A folder-layout sequence: frame i is a flat gray image of value 10 + 20 i."""
    (root / "rgb").mkdir(parents=True)
    for i in range(n):
        cv2.imwrite(str(root / "rgb" / f"{i:06d}.png"), np.full((size[1], size[0]), 10 + 20 * i, np.uint8))
    if calib is not None:
        (root / "calib.txt").write_text(calib + "\n")
    if times is not None:
        (root / "times.txt").write_text("".join(f"{t}\n" for t in times))
    return root


def write_video(path: Path, n: int = 12, size=(96, 64), fps: float = 10.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    assert writer.isOpened()
    for i in range(n):
        writer.write(np.full((size[1], size[0], 3), 10 + 20 * i, np.uint8))
    writer.release()
    return path


def dot_centroid(image: np.ndarray) -> np.ndarray:
    """Intensity-weighted centroid (x, y) of the bright dot in a dark image."""
    gray = image if image.ndim == 2 else image.max(axis=2)
    w = np.where(gray > 60, gray.astype(np.float64), 0.0)
    assert w.sum() > 0, "no dot in the image"
    ys, xs = np.mgrid[: gray.shape[0], : gray.shape[1]]
    return np.array([(w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()])


def draw_dot(size, uv, radius_px: float = 4.0) -> np.ndarray:
    """Black ``size=(W, H)`` image with an anti-aliased white disc centred at sub-pixel ``uv``."""
    shift = 4
    img = np.zeros((size[1], size[0], 3), np.uint8)
    centre = (int(round(uv[0] * (1 << shift))), int(round(uv[1] * (1 << shift))))
    cv2.circle(img, centre, int(radius_px * (1 << shift)), (255, 255, 255), -1, cv2.LINE_AA, shift)
    return img


def reprojection_errors(source, X_w: np.ndarray) -> list[float]:
    """Distance between the dot in each yielded frame and the projection of X_w with the ground truth."""
    gt = source.groundtruth
    errors = []
    for frame in source:
        k = int(np.argmin(np.abs(gt.timestamps - frame.timestamp)))
        assert abs(gt.timestamps[k] - frame.timestamp) < 1e-9
        T_cw = np.linalg.inv(gt.T_wc[k])
        X_c = T_cw[:3, :3] @ X_w + T_cw[:3, 3]
        uv = source.camera.project(X_c[None])[0]
        errors.append(float(np.linalg.norm(uv - dot_centroid(frame.image))))
    return errors


def look_poses(n: int, scale: float) -> np.ndarray:
    """``(n, 4, 4)`` camera-to-world poses with distinct rotations and translations (in ``scale`` units)."""
    T = np.tile(np.eye(4), (n, 1, 1))
    for i in range(n):
        T[i, :3, :3] = Rotation.from_rotvec([0.15 + 0.03 * i, -0.2 + 0.04 * i, 0.3 - 0.06 * i]).as_matrix()
        T[i, :3, 3] = np.array([0.004 * i, -0.002 * i, 0.003 * i + 0.002]) * scale
    return T


def point_in_front(T_wc: np.ndarray, depth: float, offset=(0.1, -0.05)) -> np.ndarray:
    """A world point at ``depth`` in front of the first camera, slightly off-axis."""
    X_c = np.array([offset[0] * depth, offset[1] * depth, depth])
    return T_wc[:3, :3] @ X_c + T_wc[:3, 3]


# ============================================================================== real samples
def test_sinus_folder_layout():
    root = shared_sequence("sinus_dev")
    assert detect_layout(root) == "folder"
    assert len(open_source(str(root), SourceConfig())) == 35
    src = open_source(str(root), SourceConfig(max_frames=2, resize=0.25))
    calib = [float(v) for v in (root / "calib.txt").read_text().split()]
    assert src.camera.size == (480, 270)
    assert src.camera.fx == pytest.approx(calib[0] * 0.25)
    assert src.camera.cx == pytest.approx((calib[2] + 0.5) * 0.25 - 0.5)
    mask = src.mask
    assert mask.shape == (270, 480) and mask.dtype == np.uint8
    assert 0.3 < (mask > 0).mean() < 0.95  # circular field of view
    times = np.loadtxt(root / "times.txt")
    frames = list(src)
    assert [f.index for f in frames] == [0, 1]
    assert [f.timestamp for f in frames] == pytest.approx(times[:2].tolist())
    assert frames[0].image.shape == (270, 480, 3) and frames[0].image.dtype == np.uint8
    gt = src.groundtruth
    rows = np.loadtxt(root / "groundtruth.txt", comments="#")
    assert len(gt) == 35
    np.testing.assert_allclose(gt.positions, rows[:, 1:4])
    np.testing.assert_allclose(gt.timestamps, times, atol=1e-6)


def test_kitti_clip():
    root = shared_sequence("kitti01_clip")
    assert detect_layout(root) == "kitti"
    src = open_source(str(root), SourceConfig(stride=10, max_frames=3))
    assert len(open_source(str(root), SourceConfig())) == 51
    assert len(src) == 3
    assert src.camera.size == (1241, 376)
    assert (src.camera.fx, src.camera.cx, src.camera.cy) == pytest.approx((718.856, 607.1928, 185.2157))
    times = np.loadtxt(root / "sequences" / "01" / "times.txt")
    frames = list(src)
    assert [f.timestamp for f in frames] == pytest.approx(times[[0, 10, 20]].tolist())
    assert frames[0].image.shape == (376, 1241)  # gray stays 2-D
    gt = src.groundtruth
    poses = np.loadtxt(root / "poses" / "01.txt").reshape(-1, 3, 4)
    assert len(gt) == 51
    np.testing.assert_allclose(gt.T_wc[:, :3, :], poses)
    np.testing.assert_allclose(gt.timestamps, times)
    # camera-to-world: the car drives along the camera's optical axis
    motion = gt.positions[10] - gt.positions[0]
    assert motion @ gt.T_wc[0, :3, 2] / np.linalg.norm(motion) > 0.9
    # the same sequence opened by its sequence folder
    assert open_source(str(root / "sequences" / "01"), SourceConfig()).name == "kitti:01"


def _tum_from_sample(tmp_path: Path, sample: Path, folder_name: str, names, stamps, gt_text: str) -> Path:
    root = tmp_path / folder_name
    (root / "rgb").mkdir(parents=True)
    lines = ["# color images", "# timestamp filename"]
    for src_path, stamp in zip(names, stamps):
        dst = root / "rgb" / f"{stamp:.6f}.png"
        dst.symlink_to(src_path.resolve())
        lines.append(f"{stamp:.6f} rgb/{dst.name}")
    (root / "rgb.txt").write_text("\n".join(lines) + "\n")
    (root / "groundtruth.txt").write_text(gt_text)
    return root


def test_tum_fr3_intrinsics_timestamps_groundtruth(tmp_path):
    sample = shared_sequence("tum_fr3_long_office_4views")
    images = sorted((sample / "rgb").glob("*.png"))
    stamps = [float(p.stem) for p in images]
    root = _tum_from_sample(
        tmp_path, sample, "rgbd_dataset_freiburg3_long_office_household", images, stamps,
        (sample / "groundtruth.txt").read_text(),
    )
    assert detect_layout(root) == "tum"
    src = open_source(str(root), SourceConfig())
    # the sample's own note of the fr3 calibration: "fx fy cx cy width height"
    line = [ln for ln in (sample / "calib" / "intrinsics.txt").read_text().splitlines() if ln and ln[0].isdigit()][0]
    fx, fy, cx, cy, w, h = (float(v) for v in line.split())
    cam = src.camera
    assert (cam.fx, cam.fy, cam.cx, cam.cy, cam.width, cam.height) == pytest.approx((fx, fy, cx, cy, w, h))
    assert not cam.is_distorted
    frames = list(src)
    assert len(frames) == len(src) == 4
    assert [f.timestamp for f in frames] == pytest.approx(stamps)
    assert frames[0].image.shape == (480, 640, 3)
    gt = src.groundtruth
    rows = np.loadtxt(sample / "groundtruth.txt", comments="#")
    np.testing.assert_allclose(gt.positions, rows[:, 1:4])
    R0 = Rotation.from_quat(rows[0, 4:8]).as_matrix()  # TUM order qx qy qz qw
    np.testing.assert_allclose(gt.T_wc[0, :3, :3], R0, atol=1e-6)
    # ground truth within 0.1 s of every frame (association by timestamp is possible)
    assert max(np.min(np.abs(gt.timestamps - t)) for t in stamps) < 0.1


def test_tum_fr1_published_distortion(tmp_path):
    sample = shared_sequence("tum_fr1_xyz_2pairs_rgbd")
    case = sample / "case_1"
    readme = (sample / "README.txt").read_text()
    assert "1305031102.2159" in readme and ".2758" in readme
    stamps = [1305031102.2159, 1305031102.2758]
    gt_text = "\n".join(f"{t:.4f} " + " ".join((case / f"pose_{k}.txt").read_text().split())
                        for t, k in zip(stamps, ("prev", "curr"))) + "\n"
    root = _tum_from_sample(tmp_path, sample, "rgbd_dataset_freiburg1_xyz",
                            [case / "img_prev.png", case / "img_curr.png"], stamps, gt_text)
    src = open_source(str(root), SourceConfig())
    # TUM's published fr1 calibration, as quoted in the sample's calib note
    note = (sample / "calib" / "intrinsics.txt").read_text()
    m = re.search(r"fx ([\d.]+) fy ([\d.]+) cx ([\d.]+) cy ([\d.]+), d = ([-\d. ]+)", note)
    expected = [float(v) for v in m.groups()[:4]] + [float(v) for v in m.group(5).split()]
    cam = src.camera
    assert [cam.fx, cam.fy, cam.cx, cam.cy, *cam.dist] == pytest.approx(expected)
    assert len(src) == 2
    gt = src.groundtruth
    prev = np.array((case / "pose_prev.txt").read_text().split(), dtype=float)
    np.testing.assert_allclose(gt.positions[0], prev[:3])
    np.testing.assert_allclose(gt.T_wc[0, :3, :3], Rotation.from_quat(prev[3:7]).as_matrix(), atol=1e-6)


def _euroc_from_sample(tmp_path: Path, sample: Path) -> Path:
    cam = tmp_path / "V1_01_easy" / "mav0" / "cam0"
    (cam / "data").mkdir(parents=True)
    rows = [ln for ln in (sample / "rgb_timestamps.csv").read_text().splitlines() if ln and not ln.startswith("#")]
    for row in rows:
        name = row.split(",")[1]
        (cam / "data" / name).symlink_to((sample / "rgb" / name).resolve())
    (cam / "data.csv").write_text("#timestamp [ns],filename\n" + "\n".join(rows) + "\n")
    shutil.copy(sample / "calib" / "cam0_sensor.yaml", cam / "sensor.yaml")
    # ground truth csv in EuRoC's column order: ns, p xyz, q w x y z, (velocity and biases)
    gt = np.loadtxt(sample / "groundtruth.txt", comments="#")
    lines = ["#timestamp, p_RS_R_x [m], p_RS_R_y [m], p_RS_R_z [m], q_RS_w [], q_RS_x [], q_RS_y [], q_RS_z []"]
    for r in gt:
        ns = int(round(r[0] * 1e9))
        values = [*r[1:4], r[7], *r[4:7]]  # p xyz, then q w x y z
        lines.append(",".join([str(ns), *(repr(float(v)) for v in values), "0", "0", "0"]))
    gt_dir = cam.parent / "state_groundtruth_estimate0"
    gt_dir.mkdir()
    (gt_dir / "data.csv").write_text("\n".join(lines) + "\n")
    return cam.parent.parent


def test_euroc_layout_and_body_to_camera(tmp_path):
    sample = shared_sequence("euroc_v101_static_f000-039")
    root = _euroc_from_sample(tmp_path, sample)
    assert detect_layout(root) == "euroc"
    src = open_source(str(root), SourceConfig(max_frames=3))
    assert len(open_source(str(root), SourceConfig())) == 40
    cam = src.camera
    assert (cam.width, cam.height, cam.fx, cam.fy, cam.cx, cam.cy) == pytest.approx(
        (752, 480, 458.654, 457.296, 367.215, 248.375))
    assert cam.dist == pytest.approx((-0.28340811, 0.07395907, 0.00019359, 1.76187114e-05))
    ns = [int(ln.split(",")[0]) for ln in (sample / "rgb_timestamps.csv").read_text().splitlines()
          if ln and not ln.startswith("#")]
    frames = list(src)
    assert [f.timestamp for f in frames] == pytest.approx([n * 1e-9 for n in ns[:3]], abs=1e-7)
    assert frames[0].image.shape == (480, 752)
    # T_wc = T_wb @ T_BS, computed here independently (scipy quaternion, x y z w)
    import yaml

    text = "\n".join(ln for ln in (sample / "calib" / "cam0_sensor.yaml").read_text().splitlines()
                     if not ln.startswith("%"))
    T_BS = np.array(yaml.safe_load(text)["T_BS"]["data"]).reshape(4, 4)
    rows = np.loadtxt(sample / "groundtruth.txt", comments="#")
    T_wb = np.eye(4)
    T_wb[:3, :3] = Rotation.from_quat(rows[0, 4:8]).as_matrix()
    T_wb[:3, 3] = rows[0, 1:4]
    gt = src.groundtruth
    assert len(gt) == 40
    np.testing.assert_allclose(gt.T_wc[0], T_wb @ T_BS, atol=1e-6)
    assert np.linalg.norm(gt.positions[0] - rows[0, 1:4]) == pytest.approx(np.linalg.norm(T_BS[:3, 3]), abs=1e-6)


def test_euroc_images_as_folder_with_yaml_calib():
    sample = shared_sequence("euroc_v101_static_f000-039")
    src = open_source(str(sample), SourceConfig(max_frames=1), calib=str(sample / "calib" / "cam0_sensor.yaml"))
    assert src.camera.fx == pytest.approx(458.654) and len(src.camera.dist) == 4
    assert len(list(src)) == 1


# ============================================================================== options
def test_options_start_stride_max_frames_resize_fps(tmp_path):
    root = write_folder(tmp_path / "seq", n=10, size=(64, 48))
    src = open_source(str(root), SourceConfig(start=2, stride=3, max_frames=2, resize=0.5, fps=20.0))
    assert len(src) == 2
    frames = list(src)
    assert [f.index for f in frames] == [0, 1]
    assert [f.timestamp for f in frames] == pytest.approx([2 / 20.0, 5 / 20.0])
    assert [int(f.image.mean()) for f in frames] == [10 + 20 * 2, 10 + 20 * 5]
    assert frames[0].image.shape == (24, 32)
    assert src.camera.size == (32, 24) and src.camera.fx == pytest.approx(25.0)
    assert len(open_source(str(root), SourceConfig(start=2, stride=3))) == 3  # raw 2, 5, 8
    capped = open_source(str(root), SourceConfig(max_width=40))
    assert capped.camera.width == 40 and next(iter(capped)).image.shape == (30, 40)


def test_mask_file_and_override(tmp_path):
    root = write_folder(tmp_path / "seq", n=2, size=(64, 48))
    own = np.zeros((48, 64), np.uint8)
    own[10:40, 10:50] = 7
    cv2.imwrite(str(root / "mask.png"), own)
    src = open_source(str(root), SourceConfig(resize=0.5))
    assert src.mask.shape == (24, 32) and set(np.unique(src.mask)) == {0, 255}
    assert (src.mask > 0).sum() == pytest.approx(15 * 20, rel=0.1)
    other = tmp_path / "other.png"
    cv2.imwrite(str(other), np.full((48, 64), 255, np.uint8))
    assert (open_source(str(root), SourceConfig(mask=str(other))).mask > 0).all()


def test_bad_config_values(tmp_path):
    root = write_folder(tmp_path / "seq", n=2)
    for cfg in (SourceConfig(stride=0), SourceConfig(resize=0.0), SourceConfig(start=-1), SourceConfig(fps=0.0)):
        with pytest.raises(ConfigError):
            open_source(str(root), cfg)


# ============================================================================== images
def test_image_conversions(tmp_path):
    img16 = (np.arange(48 * 64, dtype=np.uint32).reshape(48, 64) * 20).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "a16.png"), img16)
    a = read_image(tmp_path / "a16.png")
    assert a.dtype == np.uint8 and a.shape == (48, 64)
    np.testing.assert_allclose(a.astype(float), img16 / 257.0, atol=0.6)
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 2] = 200
    rgba[..., 3] = 50
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)
    b = read_image(tmp_path / "rgba.png")
    assert b.shape == (8, 8, 3) and b[0, 0].tolist() == [0, 0, 200]
    assert to_uint8(np.full((4, 4, 1), 0.5, np.float32)).tolist() == np.full((4, 4), 128).tolist()
    from PIL import Image

    Image.new("CMYK", (10, 6), (0, 255, 0, 0)).save(tmp_path / "cmyk.jpg")
    c = read_image(tmp_path / "cmyk.jpg")
    assert c.shape == (6, 10, 3)
    assert c[..., 1].mean() < 60 and c[..., 0].mean() > 200 and c[..., 2].mean() > 200  # magenta in BGR


# ============================================================================== bad inputs
def test_empty_and_unknown_inputs(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty"):
        open_source(str(tmp_path / "empty"), SourceConfig())
    (tmp_path / "noimg" / "rgb").mkdir(parents=True)
    (tmp_path / "noimg" / "calib.txt").write_text("1 1 1 1\n")
    with pytest.raises(InputError, match="no image files"):
        open_source(str(tmp_path / "noimg"), SourceConfig())
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="Known layouts") as info:
        open_source(str(tmp_path / "junk"), SourceConfig())
    assert "EuRoC" in str(info.value) and "KITTI" in str(info.value) and "TUM" in str(info.value)
    with pytest.raises(InputError):
        open_source(str(tmp_path / "missing"), SourceConfig())
    with pytest.raises(InputError):
        open_source(None, SourceConfig())


@pytest.mark.parametrize(
    "calib, match",
    [(None, "calib.txt"), ("fx fy cx cy", "cannot parse"), ("nan 50 30 20", "NaN"), ("-50 50 30 20", "positive"),
     ("50 50 30", "expected 4")],
)
def test_bad_calibration(tmp_path, calib, match):
    root = write_folder(tmp_path / "seq", n=2, calib=calib)
    with pytest.raises(CalibrationError, match=match) as info:
        open_source(str(root), SourceConfig())
    if calib is not None:
        assert "calib.txt" in str(info.value)


def test_times_wrong_length_and_not_increasing(tmp_path):
    root = write_folder(tmp_path / "a", n=4, times=[0.0, 0.1, 0.2])
    with pytest.raises(InputError, match="3 timestamps but 4 images"):
        open_source(str(root), SourceConfig())
    root = write_folder(tmp_path / "b", n=4, times=[0.0, 0.2, 0.1, 0.3])
    with pytest.raises(InputError, match="increase"):
        open_source(str(root), SourceConfig())
    root = write_folder(tmp_path / "c", n=3, times=[0.0, 0.5, 1.25])
    assert [f.timestamp for f in open_source(str(root), SourceConfig())] == [0.0, 0.5, 1.25]


def test_corrupt_frame_skipped_and_size_mismatch_resized(tmp_path, caplog):
    root = write_folder(tmp_path / "seq", n=6, size=(64, 48))
    (root / "rgb" / "000002.png").write_bytes(b"\x89PNG not really an image")
    cv2.imwrite(str(root / "rgb" / "000004.png"), np.full((24, 32), 90, np.uint8))
    src = open_source(str(root), SourceConfig())
    with caplog.at_level(logging.WARNING):
        frames = list(src)
    assert [f.index for f in frames] == [0, 1, 3, 4, 5]
    assert [f.timestamp for f in frames] == pytest.approx([0, 1 / 30, 3 / 30, 4 / 30, 5 / 30])
    assert all(f.image.shape == (48, 64) for f in frames)
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "000002.png" in messages and "cannot decode" in messages
    assert "000004.png" in messages and "resized" in messages


# ============================================================================== video and live
def test_video_file(tmp_path):
    video = write_video(tmp_path / "clip.avi", n=12, fps=10.0)
    (tmp_path / "calib.txt").write_text("80 80 47.5 31.5\n")
    assert detect_layout(video) == "video"
    src = open_source(str(video), SourceConfig())
    assert len(src) == 12
    frames = list(src)
    assert len(frames) == 12
    assert [f.timestamp for f in frames] == pytest.approx([i / 10 for i in range(12)], abs=1e-3)
    means = [f.image.mean() for f in frames]
    assert np.all(np.diff(means) > 10)
    sub = list(open_source(str(video), SourceConfig(start=1, stride=3, max_frames=3, resize=0.5)))
    assert [f.timestamp for f in sub] == pytest.approx([0.1, 0.4, 0.7], abs=1e-3)
    assert [f.image.mean() for f in sub] == pytest.approx([means[1], means[4], means[7]], abs=4)
    assert sub[0].image.shape == (32, 48, 3)


def test_video_errors(tmp_path):
    other = tmp_path / "nocalib"
    other.mkdir()
    video = write_video(other / "clip.avi", n=3)
    with pytest.raises(CalibrationError, match="--calib"):
        open_source(str(video), SourceConfig())
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(InputError, match="empty.mp4"):
        open_source(str(tmp_path / "empty.mp4"), SourceConfig(), calib=None)
    (tmp_path / "junk.mkv").write_bytes(b"\x00" * 4096)
    (tmp_path / "calib.txt").write_text("80 80 47.5 31.5\n")
    with pytest.raises(InputError, match="junk.mkv"):
        open_source(str(tmp_path / "junk.mkv"), SourceConfig())


@pytest.mark.parametrize("realtime", [False, True])
def test_live_camera_on_a_stream(tmp_path, caplog, realtime):
    video = write_video(tmp_path / "stream.avi", n=8)
    calib = tmp_path / "cam.txt"
    calib.write_text("80 80 47.5 31.5\n")
    from slam.sources.configured import ConfiguredSource
    from slam.sources.live import LiveReader

    src = ConfiguredSource(LiveReader(str(video), str(calib), realtime=realtime), SourceConfig())
    assert len(src) == 0 and src.camera.size == (96, 64)
    with caplog.at_level(logging.WARNING):
        frames = list(src)
    assert "stopped delivering frames" in caplog.text
    stamps = [f.timestamp for f in frames]
    assert np.all(np.diff(stamps) > 0)
    if realtime:
        assert 1 <= len(frames) <= 8
    else:
        assert len(frames) == 8


def test_live_camera_errors(tmp_path):
    calib = tmp_path / "cam.txt"
    calib.write_text("80 80 47.5 31.5\n")
    with pytest.raises(InputError, match="cannot open"):
        open_source(None, SourceConfig(), calib=str(calib), camera=str(tmp_path / "no_such_stream.avi"))
    with pytest.raises(CalibrationError, match="--calib"):
        open_source(None, SourceConfig(), camera=str(tmp_path / "x.avi"))


# ============================================================================== endoscopy readers
C3VD_K = (767.3861511125845, 767.5058656118406, 679.054265997005, 543.646891684636)
C3VD_D = (-0.18867185058223412, -0.003927337093919806, 0.030524814153620117, -0.012756926010904904)


def test_c3vd_reader(tmp_path):
    root = tmp_path / "cecum_t1_a"
    root.mkdir()
    n = 4
    T_wc_mm = look_poses(n, scale=1000.0)  # translations in millimetres
    X_w_mm = point_in_front(T_wc_mm[0], depth=40.0)  # 4 cm in front of the first camera
    K = np.array([[C3VD_K[0], 0, C3VD_K[2]], [0, C3VD_K[1], C3VD_K[3]], [0, 0, 1]])
    lines = []
    for i in range(n):
        T_cw = np.linalg.inv(T_wc_mm[i])
        X_c = T_cw[:3, :3] @ X_w_mm + T_cw[:3, 3]
        uv, _ = cv2.fisheye.projectPoints(X_c.reshape(1, 1, 3), np.zeros(3), np.zeros(3), K, np.array(C3VD_D))
        cv2.imwrite(str(root / f"{i}_color.png"), draw_dot((1350, 1080), uv.reshape(2), radius_px=6))
        lines.append(",".join(f"{v:.9g}" for v in T_wc_mm[i].flatten(order="F")))  # column-major
    (root / "pose.txt").write_text("\n".join(lines) + "\n")
    assert detect_layout(root) == "c3vd"
    src = open_source(str(root), SourceConfig(resize=0.5, fps=30.0))
    assert len(src) == n
    cam = src.camera
    assert cam.model == "fisheye" and cam.size == (675, 540)
    assert cam.fx == pytest.approx(C3VD_K[0] * 0.5) and cam.dist == pytest.approx(C3VD_D)
    gt = src.groundtruth
    np.testing.assert_allclose(gt.positions, T_wc_mm[:, :3, 3] / 1000.0, atol=1e-9)  # metres
    np.testing.assert_allclose(gt.timestamps, np.arange(n) / 30.0)
    errors = reprojection_errors(src, X_w_mm / 1000.0)
    assert len(errors) == n and max(errors) < 0.5, errors


def _endoslam_tree(tmp_path: Path, size=(640, 360)):
    cam_dir = tmp_path / "EndoSLAM" / "Cameras" / "HighCam"
    (cam_dir / "Calibration").mkdir(parents=True)
    fx, fy, cx, cy, k1, k2 = 520.0, 515.0, 330.0, 170.0, -0.12, 0.03
    (cam_dir / "Calibration" / "cam.txt.txt").write_text(
        f"fx: {fx}\nfy: {fy}\ncx: {cx}\ncy: {cy}\nk1: {k1}\nk2: {k2}\n")
    traj = cam_dir / "Colon-IV" / "TumorfreeTrajectory_1"
    (traj / "Frames").mkdir(parents=True)
    (traj / "Poses").mkdir()
    K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]])
    dist = np.array([k1, k2, 0.0, 0.0])
    return traj, K, dist


@pytest.mark.parametrize("table", ["csv", "xlsx"])
def test_endoslam_reader(tmp_path, table):
    traj, K, dist = _endoslam_tree(tmp_path)
    numbers = [10, 12, 14, 16, 18]
    T_wc = look_poses(len(numbers), scale=1.0)
    X_w = point_in_front(T_wc[0], depth=0.08)
    for n, T in zip(numbers, T_wc):
        T_cw = np.linalg.inv(T)
        X_c = T_cw[:3, :3] @ X_w + T_cw[:3, 3]
        uv, _ = cv2.projectPoints(X_c.reshape(1, 1, 3), np.zeros(3), np.zeros(3), K, dist)
        cv2.imwrite(str(traj / "Frames" / f"frame_{n:06d}.jpg"), draw_dot((640, 360), uv.reshape(2)),
                    [cv2.IMWRITE_JPEG_QUALITY, 98])
    header = ["", "ImageFrame", "Pose_Index", "trans_x", "trans_y", "trans_z", "quot_x", "quot_y", "quot_z", "quot_w"]
    rows = []
    for k, (n, T) in enumerate(zip(numbers, T_wc)):
        q = Rotation.from_matrix(T[:3, :3]).as_quat()  # x y z w
        rows.append([k, n, k, *T[:3, 3], *q])
    rows.insert(2, [99, 11, 99, 0.5, 0.5, 0.5, 0.0, 0.0, 0.0, 1.0])  # a pose for a frame that is not there
    rows = rows[::-1]  # order must not matter: rows are joined on ImageFrame
    if table == "csv":
        text = ",".join(header) + "\n" + "\n".join(",".join(repr(float(v)) if i > 1 else str(int(v))
                                                          for i, v in enumerate(r)) for r in rows)
        (traj / "Poses" / "low_high_pose_colon_test_1_high_images.csv").write_text(text + "\n")
    else:
        openpyxl = pytest.importorskip("openpyxl")
        book = openpyxl.Workbook()
        sheet = book.active
        sheet.append(header)
        for r in rows:
            sheet.append([int(r[0]), int(r[1]), int(r[2]), *map(float, r[3:])])
        book.save(traj / "Poses" / "low_high_pose_colon_test_1_high_images.xlsx")
    assert detect_layout(traj) == "endoslam"
    src = open_source(str(traj), SourceConfig())
    cam = src.camera
    assert (cam.fx, cam.fy, cam.cx, cam.cy) == pytest.approx((520.0, 515.0, 330.0, 170.0))
    assert cam.dist[:2] == pytest.approx((-0.12, 0.03))
    assert len(src) == len(numbers)
    gt = src.groundtruth
    assert len(gt) == len(numbers)
    np.testing.assert_allclose(gt.timestamps, np.array(numbers) / 20.0)  # HighCam: 20 fps
    np.testing.assert_allclose(gt.positions, T_wc[:, :3, 3], atol=1e-9)
    errors = reprojection_errors(src, X_w)
    assert [f.timestamp for f in src] == pytest.approx(np.array(numbers) / 20.0)
    assert max(errors) < 0.5, errors


def test_endoslam_unity_positional_poses(tmp_path, caplog):
    root = tmp_path / "UnityCam" / "Colon"
    (root / "Frames").mkdir(parents=True)
    (root / "Poses").mkdir()
    for i in range(4):
        cv2.imwrite(str(root / "Frames" / f"image_{i:04d}.png"), np.full((32, 32, 3), 40 * i, np.uint8))
    (root / "calib.txt").write_text("156 156 15.5 15.5\n")
    T_wc = look_poses(3, 1.0)
    lines = ["tX,tY,tZ,rX,rY,rZ,rW,time(s)"]
    for i, T in enumerate(T_wc):
        values = [*T[:3, 3], *Rotation.from_matrix(T[:3, :3]).as_quat(), i / 30]
        lines.append(",".join(repr(float(v)) for v in values))
    (root / "Poses" / "colon_position_rotation.csv").write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING):
        src = open_source(str(root), SourceConfig())
    assert "3 poses for 4 frames" in caplog.text
    gt = src.groundtruth
    np.testing.assert_allclose(gt.timestamps, np.arange(3) / 30.0)
    np.testing.assert_allclose(gt.T_wc, T_wc, atol=1e-9)


def test_hamlyn_reader(tmp_path):
    seq = tmp_path / "rectified01" / "rectified01"
    (seq / "image01").mkdir(parents=True)
    (seq / "image02").mkdir()
    fx, fy, cx, cy = 383.19, 381.5, 155.97, 124.33
    (seq / "intrinsics.txt").write_text(f"{fx} 0 {cx} 0\n0 {fy} {cy} 0\n0 0 1 0\n")  # 3x4 P
    X_c = np.array([[0.01, -0.008, 0.05], [-0.012, 0.004, 0.06], [0.0, 0.0, 0.04]])
    for i, X in enumerate(X_c):
        uv = np.array([fx * X[0] / X[2] + cx, fy * X[1] / X[2] + cy])
        cv2.imwrite(str(seq / "image01" / f"{i:010d}.jpg"), draw_dot((320, 240), uv), [cv2.IMWRITE_JPEG_QUALITY, 98])
    assert detect_layout(tmp_path / "rectified01") == "hamlyn"
    src = open_source(str(tmp_path / "rectified01"), SourceConfig(fps=25.0))
    cam = src.camera
    assert (cam.fx, cam.fy, cam.cx, cam.cy, cam.width, cam.height) == pytest.approx((fx, fy, cx, cy, 320, 240))
    assert src.groundtruth is None and len(src) == 3
    frames = list(src)
    assert [f.timestamp for f in frames] == pytest.approx([0.0, 0.04, 0.08])
    for frame, X in zip(frames, X_c):
        assert np.linalg.norm(cam.project(X[None])[0] - dot_centroid(frame.image)) < 0.5
