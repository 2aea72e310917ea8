"""Optical-flow front end: pose from LK-tracked corners with known motion, and the descriptor fallback."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest

from slam.camera import read_calib_file
from slam.config import load_config
from slam.evaluation.trajectory import read_tum
from slam.flow_tracking import detect_corners, track_flow
from slam.geometry.se3 import invert, rotation_angle
from slam.optim import optimize_pose
from slam.runner import run_source
from slam.sources import open_source
from slam.synth import generate


@pytest.fixture(scope="module")
def tube(tmp_path_factory):
    return generate("tube", tmp_path_factory.mktemp("flow") / "tube", frames=40, seed=5, size=(320, 240), depth=True)


def test_flow_pair_with_known_motion_recovers_the_pose(tube):
    """Corners of frame 0 lifted to 3D with the rendered depth, carried to frame 3 by LK flow: the pose
    from motion-only BA on those tracks matches the ground truth."""
    gt = read_tum(tube / "groundtruth.txt")
    img0 = cv2.imread(str(tube / "rgb" / "000000.png"), cv2.IMREAD_GRAYSCALE)
    img1 = cv2.imread(str(tube / "rgb" / "000001.png"), cv2.IMREAD_GRAYSCALE)
    depth = cv2.imread(str(tube / "depth" / "000000.png"), cv2.IMREAD_UNCHANGED).astype(np.float64) / 1000.0
    cam = read_calib_file(tube / "calib.txt", 320, 240)
    pts0 = detect_corners(img0, None, np.zeros((0, 2)), 400, 8)
    z = depth[np.rint(pts0[:, 1]).astype(int), np.rint(pts0[:, 0]).astype(int)]
    keep = z > 0
    pts0, z = pts0[keep], z[keep]
    rays = cam.unproject(pts0)
    X_c0 = rays / rays[:, 2:3] * z[:, None]
    X_w = X_c0 @ gt.T_wc[0][:3, :3].T + gt.T_wc[0][:3, 3]
    pts1, good = track_flow(img0, img1, pts0, 21, 3, 1.0)
    assert good.mean() > 0.5
    T_true = invert(gt.T_wc[1])
    T_init = invert(gt.T_wc[0])  # start from the previous frame's pose
    res = optimize_pose(T_init, X_w[good], cam.undistort_points(pts1[good]), np.ones(good.sum()),
                        (cam.fx, cam.fy, cam.cx, cam.cy))
    err = res.T_cw @ invert(T_true)
    assert np.degrees(rotation_angle(err[:3, :3])) < 0.3
    assert np.linalg.norm(invert(res.T_cw)[:3, 3] - gt.T_wc[1][:3, 3]) < 0.01 * np.linalg.norm(
        gt.T_wc[1][:3, 3] - gt.T_wc[0][:3, 3]) + 0.01


def test_flow_without_backward_check_keeps_the_same_tracks_where_they_agree(tube):
    """``fb_threshold <= 0`` skips the backward pass: forward positions are identical, and the checked
    tracks are a subset of the unchecked ones."""
    img0 = cv2.imread(str(tube / "rgb" / "000000.png"), cv2.IMREAD_GRAYSCALE)
    img1 = cv2.imread(str(tube / "rgb" / "000002.png"), cv2.IMREAD_GRAYSCALE)
    pts0 = detect_corners(img0, None, np.zeros((0, 2)), 400, 8)
    p_checked, good_checked = track_flow(img0, img1, pts0, 21, 3, 1.0)
    p_plain, good_plain = track_flow(img0, img1, pts0, 21, 3, 0.0)
    np.testing.assert_array_equal(p_checked, p_plain)
    assert good_checked.sum() > 0.5 * len(pts0)
    assert np.all(good_plain[good_checked])
    # a backward threshold so tight that hardly any track passes shows the check is applied at all
    _, good_tight = track_flow(img0, img1, pts0, 21, 3, 1e-4)
    assert good_tight.sum() < good_checked.sum()


def test_predicted_tracks_searched_on_fewer_levels_land_where_the_full_search_does(tube):
    """A prediction near the truth (here: the full search's answer moved by up to 2 px) lets predicted
    tracks skip the coarse pyramid levels and still land where the full search lands; tracks without a
    prediction (NaN rows) and tracks whose prediction is far off (30 px) are searched from scratch."""
    img0 = cv2.imread(str(tube / "rgb" / "000000.png"), cv2.IMREAD_GRAYSCALE)
    img1 = cv2.imread(str(tube / "rgb" / "000002.png"), cv2.IMREAD_GRAYSCALE)
    pts0 = detect_corners(img0, None, np.zeros((0, 2)), 400, 8)
    p_full, good_full = track_flow(img0, img1, pts0, 21, 3, 1.0)
    rng = np.random.default_rng(0)
    guess = p_full + rng.uniform(-2, 2, p_full.shape).astype(np.float32)
    guess[::5] = np.nan  # no prediction
    far = np.arange(len(guess)) % 5 == 1
    guess[far] = pts0[far] - (p_full[far] - pts0[far]) + 30.0  # a wrong prediction, far from both
    p_short, good_short = track_flow(img0, img1, pts0, 21, 3, 1.0, guess=guess, guess_levels=1)
    both = good_full & good_short
    assert both.sum() > 0.9 * good_full.sum()
    assert np.median(np.linalg.norm(p_short[both] - p_full[both], axis=1)) < 0.01
    assert np.mean(np.linalg.norm(p_short[both] - p_full[both], axis=1) < 0.1) > 0.97
    # the wrongly predicted tracks were searched again from scratch: most of them are kept, and right
    kept_far = far & good_short & good_full
    assert kept_far.sum() > 0.8 * (far & good_full).sum()
    assert np.max(np.linalg.norm(p_short[kept_far] - p_full[kept_far], axis=1)) < 0.1


@pytest.fixture(scope="module")
def room(tmp_path_factory):
    return generate("room", tmp_path_factory.mktemp("flow") / "room", frames=60, seed=1, size=(320, 240))


def test_jump_falls_back_to_descriptors_without_corrupting_the_map(room, tmp_path):
    """Eight frames cut out of the sequence: flow cannot bridge the jump, descriptors do, in the same map."""
    seq = tmp_path / "jump"
    shutil.copytree(room, seq)
    times = (seq / "times.txt").read_text().split()
    for i in range(12, 20):
        (seq / "rgb" / f"{i:06d}.png").unlink()
    (seq / "times.txt").write_text("\n".join(t for i, t in enumerate(times) if not 12 <= i < 20) + "\n")
    cfg = load_config(None, ["system.sync=true", "tracking.frontend=hybrid"])
    outcome = run_source(open_source(str(seq), cfg.source), cfg, tmp_path / "out")
    stats = outcome.result.stats
    assert stats["frames"] == 52 and stats["maps"] == 1
    assert "match" in stats["stage_ms"]  # descriptor matching ran: the fallback
    assert stats["tracked_fraction"] >= 0.9
    assert outcome.evaluation["ate_percent_of_path"] <= 3.0


def test_frames_between_the_initial_keyframes_get_poses(tmp_path):
    """A slow start: initialisation waits for parallax over several frames; once the map exists those
    frames are localised against it (all frames tracked), as accurately as the frames tracked after."""
    from slam.evaluation.trajectory import Trajectory
    from slam.geometry.alignment import align_trajectory

    seq = generate("tube", tmp_path / "slow", frames=30, seed=5, size=(320, 240), speed=0.01)
    cfg = load_config(None, ["system.sync=true", "tracking.frontend=hybrid"])
    outcome = run_source(open_source(str(seq), cfg.source), cfg, tmp_path / "out")
    stats = outcome.result.stats
    assert stats["initialising"] >= 3
    assert stats["recovered"]["initialisation_gap"] >= 2
    assert stats["tracked"] == stats["frames"] == 30

    est = read_tum(tmp_path / "out" / "trajectory.txt")
    gt = read_tum(seq / "groundtruth.txt")
    rows = [int(np.argmin(np.abs(gt.timestamps - t))) for t in est.timestamps]
    aligned, _ = align_trajectory(est, Trajectory(gt.timestamps[rows], gt.T_wc[rows]))
    err = np.linalg.norm(aligned.positions - gt.positions[rows], axis=1)
    kf_times = read_tum(tmp_path / "out" / "keyframes.txt").timestamps[:2]
    gap = (est.timestamps > kf_times[0] + 1e-9) & (est.timestamps < kf_times[1] - 1e-9)
    assert gap.sum() == stats["recovered"]["initialisation_gap"]
    later = est.timestamps > kf_times[1] + 1e-9
    assert err[gap].max() <= max(2.0 * np.sqrt(np.mean(err[later] ** 2)), 1e-3)


def test_frames_before_a_replaced_initialisation_reference_get_poses(tmp_path):
    """A slow start that outlasts the reference's patience (``init_max_frames_gap``): the reference is
    replaced, its surviving tracks carry on, and once the map exists the frames tracked since the first
    reference are localised against it as accurately as the frames tracked after."""
    from slam.evaluation.trajectory import Trajectory
    from slam.geometry.alignment import align_trajectory

    seq = generate("tube", tmp_path / "slow", frames=30, seed=5, size=(320, 240), speed=0.01)
    cfg = load_config(None, ["system.sync=true", "tracking.frontend=hybrid", "tracking.init_max_frames_gap=3"])
    outcome = run_source(open_source(str(seq), cfg.source), cfg, tmp_path / "out")
    stats = outcome.result.stats
    kf_times = read_tum(tmp_path / "out" / "keyframes.txt").timestamps[:2]
    gt = read_tum(seq / "groundtruth.txt")
    assert kf_times[0] >= gt.timestamps[3] - 1e-9  # the first reference was replaced
    assert stats["tracked"] == stats["frames"] == 30

    est = read_tum(tmp_path / "out" / "trajectory.txt")
    rows = [int(np.argmin(np.abs(gt.timestamps - t))) for t in est.timestamps]
    aligned, _ = align_trajectory(est, Trajectory(gt.timestamps[rows], gt.T_wc[rows]))
    err = np.linalg.norm(aligned.positions - gt.positions[rows], axis=1)
    before = est.timestamps < kf_times[0] - 1e-9
    later = est.timestamps > kf_times[1] + 1e-9
    assert before.sum() >= 3
    assert err[before].max() <= max(2.0 * np.sqrt(np.mean(err[later] ** 2)), 1e-3)
