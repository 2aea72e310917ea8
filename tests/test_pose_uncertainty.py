"""How well a motion-only BA pose is known (slam/optim/pose_uncertainty.py), and the mapper's use of it:
no new points across a baseline that the two keyframes' centre uncertainty does not resolve."""

from __future__ import annotations

import cv2
import numpy as np

from slam.config import load_config
from slam.mapping import LocalMapper
from slam.map.map import Map
from slam.optim.pose_uncertainty import centre_sigma, pose_information
from test_mapping_ba import _camera, _keyframe, _pose

K = (500.0, 500.0, 320.0, 240.0)


def pose(rvec, centre) -> np.ndarray:
    R = cv2.Rodrigues(np.asarray(rvec, np.float64))[0]
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = -R @ np.asarray(centre, np.float64)
    return T


def project(T_cw, X):
    Xc = X @ T_cw[:3, :3].T + T_cw[:3, 3]
    return np.c_[K[0] * Xc[:, 0] / Xc[:, 2] + K[2], K[1] * Xc[:, 1] / Xc[:, 2] + K[3]]


def perturbed(T_cw, dx):
    """Pose with rotation increment ``dx[:3]`` (camera frame) and centre moved by ``dx[3:]``."""
    R = cv2.Rodrigues(dx[:3])[0] @ T_cw[:3, :3]
    C = -T_cw[:3, :3].T @ T_cw[:3, 3] + dx[3:]
    out = np.eye(4)
    out[:3, :3] = R
    out[:3, 3] = -R @ C
    return out


def test_information_is_the_jacobian_product_of_the_reprojection():
    rng = np.random.default_rng(0)
    T = pose([0.1, -0.2, 0.05], [0.3, -0.1, 0.2])
    C = -T[:3, :3].T @ T[:3, 3]
    X = C + (rng.uniform(-2, 2, (40, 3)) + [0, 0, 6]) @ T[:3, :3]  # in front of the camera
    w = rng.uniform(0.5, 2.0, 40)
    J = np.zeros((80, 6))
    eps = 1e-6
    for k in range(6):
        d = np.zeros(6)
        d[k] = eps
        J[:, k] = ((project(perturbed(T, d), X) - project(perturbed(T, -d), X)) / (2 * eps)).ravel()
    expected = J.T @ (J * np.repeat(w, 2)[:, None])
    assert np.allclose(pose_information(T, X, w, K), expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())


def test_a_few_points_at_one_side_leave_the_centre_uncertain():
    rng = np.random.default_rng(1)
    T = np.eye(4)
    spread = np.c_[rng.uniform(-3, 3, (300, 2)), rng.uniform(4, 8, 300)]
    strip = np.c_[rng.uniform(2.6, 3.0, (25, 1)), rng.uniform(-0.3, 0.3, (25, 1)), rng.uniform(5.5, 6.0, 25)]
    well = centre_sigma(pose_information(T, spread, 1.0, K))
    weak = centre_sigma(pose_information(T, strip, 1.0, K))
    assert 0 < well < 0.01
    assert weak > 20 * well
    # the sigma is that of one pixel: four times the weight, half the sigma
    assert np.isclose(centre_sigma(pose_information(T, strip, 4.0, K)), weak / 2, rtol=1e-6)


def test_points_behind_the_camera_give_no_centre():
    X = np.array([[0.0, 0.0, -5.0], [1.0, 1.0, -3.0]])
    assert np.all(pose_information(np.eye(4), X, 1.0, K) == 0)
    assert centre_sigma(pose_information(np.eye(4), X, 1.0, K)) == np.inf


def _two_keyframes(sigma: float):
    rng = np.random.default_rng(5)
    cam = _camera()
    X = np.c_[rng.uniform(-2, 2, (200, 2)), rng.uniform(4, 8, 200)]
    m = Map(0)
    kf1 = _keyframe(m, cam, _pose(np.zeros(3)), X)
    kf2 = _keyframe(m, cam, _pose(np.array([0.3, 0.0, 0.0])), X)
    for kf in (kf1, kf2):
        kf.track_ids = np.arange(len(X))  # the same flow track in both
    kf2.centre_sigma = sigma
    mapper = LocalMapper(load_config(None, ["system.sync=true"]), cam, lambda: m)
    mapper._create_new_points(m, kf2)
    return m


def test_mapper_triangulates_only_across_a_resolved_baseline():
    # baseline 0.3; the check needs it above 3 sigma
    assert len(_two_keyframes(0.0).points) > 150
    assert len(_two_keyframes(0.05).points) > 150
    assert len(_two_keyframes(0.2).points) == 0


def test_a_keyframe_past_a_turn_triangulates_with_the_keyframe_it_shares_tracks_with():
    """The keyframe after a turn shares no map point with any other; the last keyframes (made turning in
    place, their centre not resolved) give it no baseline. The older keyframe it shares its flow tracks
    with does."""
    rng = np.random.default_rng(6)
    cam = _camera()
    X = np.c_[rng.uniform(-2, 2, (200, 2)), rng.uniform(4, 8, 200)]
    m = Map(0)
    anchor = _keyframe(m, cam, _pose(np.zeros(3)), X)
    # unrelated keyframes in between (the view before the turn: no shared track)
    for k in range(3):
        other = _keyframe(m, cam, _pose(np.array([0.0, 0.0, -1.0 - k])), X)
        other.track_ids = np.arange(1000 * (k + 1), 1000 * (k + 1) + len(X))
    turning = [_keyframe(m, cam, _pose(np.zeros(3)), X) for _ in range(2)]
    for kf in turning:
        kf.centre_sigma = 0.2  # their centre, carried from a frame that few edge points placed: not resolved
    new = _keyframe(m, cam, _pose(np.array([0.3, 0.0, 0.0])), X)
    for kf in [anchor, *turning, new]:
        kf.track_ids = np.arange(len(X))
    mapper = LocalMapper(load_config(None, ["system.sync=true"]), cam, lambda: m)
    mapper._create_new_points(m, new)
    assert len(m.points) > 150
    X_new = np.array([p.position for p in m.points.values()])
    assert np.median(np.linalg.norm(X_new[:, None] - X[None], axis=2).min(axis=1)) < 0.01
