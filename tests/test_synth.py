"""Synthetic sequence generator: folder layout, determinism, and ground truth consistent with the images."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
pytest.importorskip("open3d")

from slam.camera import read_calib_file  # noqa: E402
from slam.errors import ConfigError, InputError  # noqa: E402
from slam.evaluation.trajectory import read_tum  # noqa: E402
from slam.geometry.se3 import invert, rotation_angle  # noqa: E402
from slam.synth import PRESETS, generate, resolve_options  # noqa: E402
from slam.synth import command  # noqa: E402

REQUIRED = ("tube", "room", "tube_fisheye", "tube_specular", "tube_fast", "tube_bubbles", "tube_lowcontrast")


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _camera(seq: Path):
    h, w = cv2.imread(str(seq / "rgb" / "000000.png"), cv2.IMREAD_GRAYSCALE).shape
    return read_calib_file(seq / "calib.txt", w, h)


# ------------------------------------------------------------------------------------------ layout
def test_required_presets_exist():
    for name in REQUIRED:
        assert name in PRESETS
    assert resolve_options("tube_fisheye").lens == "fisheye"
    assert resolve_options("tube_fast").speed < 0 and resolve_options("tube_fast").motion_blur > 1


@pytest.mark.parametrize("preset", ["tube_fisheye", "room"])
def test_folder_layout(tmp_path, preset):
    seq = generate(preset, tmp_path / preset, frames=6, seed=3, size="96x72")
    images = sorted((seq / "rgb").glob("*.png"))
    times = [float(x) for x in (seq / "times.txt").read_text().split()]
    gt = read_tum(seq / "groundtruth.txt")
    assert len(images) == len(times) == len(gt) == 6
    assert [p.name for p in images] == [f"{i:06d}.png" for i in range(6)]
    np.testing.assert_allclose(gt.timestamps, times, atol=1e-6)
    assert np.all(np.diff(times) > 0)
    img = cv2.imread(str(images[0]), cv2.IMREAD_UNCHANGED)
    assert img.shape == (72, 96, 3) and img.dtype == np.uint8
    R = gt.T_wc[:, :3, :3]
    np.testing.assert_allclose(R @ np.swapaxes(R, 1, 2), np.tile(np.eye(3), (6, 1, 1)), atol=1e-6)
    cam = _camera(seq)
    meta = json.loads((seq / "synth.json").read_text())
    assert meta["preset"] == preset and meta["seed"] == 3 and meta["options"]["frames"] == 6
    if preset == "tube_fisheye":
        assert cam.model == "fisheye" and (seq / "calib.txt").read_text().startswith("fisheye ")
        mask = cv2.imread(str(seq / "mask.png"), cv2.IMREAD_GRAYSCALE)
        assert mask.shape == (72, 96)
        assert 0.3 < (mask > 0).mean() < 0.9  # a circle inside the frame
        assert mask[0, 0] == 0 and mask[36, 48] > 0
        assert img[mask == 0].mean() < 3 and img[mask > 0].mean() > 10  # black border
    else:
        assert cam.model == "pinhole" and not (seq / "mask.png").exists()


def test_deterministic_per_seed(tmp_path):
    a = generate("tube_endo", tmp_path / "a", frames=4, seed=7, size="80x64")
    b = generate("tube_endo", tmp_path / "b", frames=4, seed=7, size="80x64")
    c = generate("tube_endo", tmp_path / "c", frames=4, seed=8, size="80x64")
    fa, fb, fc = _files(a), _files(b), _files(c)
    assert fa == fb
    assert fa.keys() == fc.keys()
    assert fa["rgb/000000.png"] != fc["rgb/000000.png"]
    assert fa["groundtruth.txt"] != fc["groundtruth.txt"]


def test_bad_inputs(tmp_path):
    with pytest.raises(ConfigError, match="unknown synth preset"):
        generate("nope", tmp_path / "x", frames=2, size="32x32")
    with pytest.raises(ConfigError, match="unknown synth option 'sped'"):
        generate("tube", tmp_path / "x", frames=2, size="32x32", sped=1.0)
    with pytest.raises(ConfigError, match="fov_deg"):
        resolve_options("tube", fov_deg=179)
    with pytest.raises(InputError, match="WxH"):
        generate("tube", tmp_path / "x", frames=2, size="32by32")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        generate("tube", tmp_path / "full", frames=2, size="32x32")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_regenerating_replaces_a_previous_output(tmp_path):
    generate("room", tmp_path / "s", frames=5, size="48x36")
    seq = generate("room", tmp_path / "s", frames=3, size="48x36")
    assert len(list((seq / "rgb").glob("*.png"))) == 3 == len(read_tum(seq / "groundtruth.txt"))


# ------------------------------------------------------------------------------------------ content
def test_first_frames_translate(tmp_path):
    """Monocular initialisation needs translation from the start: over the first 10 frames the camera
    moves at least 6 % of the median scene depth, in every kind of scene."""
    for preset in ("tube", "tube_fast", "room"):
        seq = generate(preset, tmp_path / preset, frames=12, size="32x24", seed=5, depth=True)
        scale = json.loads((seq / "synth.json").read_text())["options"]["depth_scale"]
        depth = cv2.imread(str(seq / "depth" / "000000.png"), cv2.IMREAD_UNCHANGED) / scale
        gt = read_tum(seq / "groundtruth.txt")
        baseline = np.linalg.norm(gt.positions[10] - gt.positions[0])
        assert baseline > 0.06 * np.median(depth[depth > 0]), (preset, baseline)


def test_room_has_a_stretch_of_near_pure_rotation(tmp_path):
    seq = generate("room", tmp_path / "room", frames=60, size="32x24", seed=2)
    meta = json.loads((seq / "synth.json").read_text())
    a, b = meta["scene"]["rotation_stretch_frames"]
    gt = read_tum(seq / "groundtruth.txt")
    step = np.linalg.norm(np.diff(gt.positions, axis=0), axis=1)
    inside = step[a + 2:b - 2].mean()
    outside = np.concatenate([step[: a - 3], step[b + 3:]]).mean()
    turn = rotation_angle(gt.T_wc[a + 2, :3, :3].T @ gt.T_wc[b - 2, :3, :3])
    assert inside < 0.15 * outside
    assert np.degrees(turn) > 10


def test_bubbles_make_bright_textureless_frames(tmp_path):
    seq = generate("tube_bubbles", tmp_path / "b", frames=40, size="80x60", seed=1)
    first, last = json.loads((seq / "synth.json").read_text())["scene"]["bubble_frames"][0]
    mask = cv2.imread(str(seq / "mask.png"), cv2.IMREAD_GRAYSCALE) > 0

    def bright_flat_fraction(i: int) -> float:
        gray = cv2.imread(str(seq / "rgb" / f"{i:06d}.png"), cv2.IMREAD_GRAYSCALE).astype(np.float32)
        grad = np.hypot(cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1))
        return float(((gray > 200) & (grad < 40))[mask].mean())

    middle = (first + last) // 2
    assert bright_flat_fraction(middle) > 0.15
    assert bright_flat_fraction(0) < 0.02


# ------------------------------------------------------------------------------------------ ground truth
def _track(seq: Path, frames: list[int]) -> dict[int, np.ndarray]:
    """Shi-Tomasi corners in the first frame tracked frame to frame by pyramidal LK (forward-backward
    checked); returns ``{frame: (N, 2)}`` pixel positions of the corners that survive."""
    ims = [cv2.imread(str(seq / "rgb" / f"{i:06d}.png"), cv2.IMREAD_GRAYSCALE)
           for i in range(frames[0], frames[-1] + 1)]
    clahe = cv2.createCLAHE(2.0, (8, 8))
    ims = [clahe.apply(im) for im in ims]
    h, w = ims[0].shape
    mask = np.full((h, w), 255, np.uint8)
    if (seq / "mask.png").exists():
        mask = cv2.erode(cv2.imread(str(seq / "mask.png"), cv2.IMREAD_GRAYSCALE), np.ones((9, 9), np.uint8))
    pts = cv2.goodFeaturesToTrack(ims[0], 500, 0.01, max(3, w // 80), mask=mask).reshape(-1, 2).astype(np.float32)
    alive = np.ones(len(pts), bool)
    out = {frames[0]: pts.copy()}
    for k in range(1, len(ims)):
        nxt, st, _ = cv2.calcOpticalFlowPyrLK(ims[k - 1], ims[k], pts, None, winSize=(15, 15), maxLevel=3)
        back, st2, _ = cv2.calcOpticalFlowPyrLK(ims[k], ims[k - 1], nxt, None, winSize=(15, 15), maxLevel=3)
        alive &= (st.ravel() == 1) & (st2.ravel() == 1) & (np.linalg.norm(back - pts, axis=1) < 0.3)
        pts = nxt
        if frames[0] + k in frames:
            out[frames[0] + k] = pts.copy()
    return {f: out[f][alive].astype(np.float64) for f in frames}


def _reprojection_errors(cam, T_wc: np.ndarray, obs: dict[int, np.ndarray]) -> np.ndarray:
    """Triangulate from the first and last frame with the given poses (undistorting through the camera),
    reproject into every frame with the lens model; ``(N,)`` worst error per point (inf if behind)."""
    frames = sorted(obs)
    P = {f: invert(T_wc[f])[:3] for f in frames}
    a, b = frames[0], frames[-1]
    X = cv2.triangulatePoints(P[a], P[b], cam.normalize(obs[a]).T, cam.normalize(obs[b]).T)
    X = (X[:3] / X[3]).T
    worst = np.zeros(len(X))
    for f in frames:
        pc = X @ P[f][:, :3].T + P[f][:, 3]
        err = np.linalg.norm(cam.project(pc) - obs[f], axis=1)
        err[~(pc[:, 2] > 0)] = np.inf
        worst = np.maximum(worst, np.nan_to_num(err, nan=np.inf))
    return worst


@pytest.mark.parametrize("preset", ["tube", "room", "tube_endo", "tube_fisheye"])
def test_ground_truth_is_consistent_with_images(tmp_path, preset):
    """Corners tracked over frames 0, 4, 8, triangulated with the ground-truth poses of frames 0 and 8,
    reproject into all three frames within 1 px (median); with a wrong pose they do not."""
    seq = generate(preset, tmp_path / preset, frames=9, size="320x240", seed=1)
    cam = _camera(seq)
    gt = read_tum(seq / "groundtruth.txt").T_wc
    obs = _track(seq, [0, 4, 8])
    assert len(obs[0]) >= 30, f"only {len(obs[0])} corners tracked"
    baseline = np.linalg.norm(gt[8, :3, 3] - gt[0, :3, 3])
    assert baseline > 0.1
    err = _reprojection_errors(cam, gt, obs)
    assert np.median(err) < 1.0, f"{preset}: median reprojection error {np.median(err):.3f} px"
    assert np.mean(err < 2.0) > 0.7
    wrong = gt.copy()
    wrong[4] = gt[2]  # the middle frame's pose taken from another time
    assert np.median(_reprojection_errors(cam, wrong, obs)) > 2.0 * max(np.median(err), 0.5)


# ------------------------------------------------------------------------------------------ CLI
def test_command_list_and_generate(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    assert command.run(parser.parse_args(["--list"])) == 0
    listing = capsys.readouterr().out
    for name in REQUIRED:
        assert name in listing
    out = tmp_path / "seq"
    args = parser.parse_args(["tube_lowcontrast", str(out), "--frames", "3", "--seed", "2", "--size", "64x48",
                              "-o", "noise=0", "-o", "depth=true"])
    assert command.run(args) == 0
    meta = json.loads((out / "synth.json").read_text())
    assert meta["options"]["noise"] == 0.0 and meta["options"]["width"] == 64 and meta["seed"] == 2
    depth = cv2.imread(str(out / "depth" / "000000.png"), cv2.IMREAD_UNCHANGED)
    assert depth.dtype == np.uint16 and depth.shape == (48, 64) and depth.max() > 0
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        command.run(parser.parse_args(["tube", str(out), "-o", "speed"]))
    with pytest.raises(ConfigError, match="PRESET and OUT"):
        command.run(parser.parse_args([]))
