"""Local BA in the mapper: well-observed keyframes are refined; a keyframe that sees a handful of points, or one made while turning in place, stays put; a keyframe queued while a local BA ran is relocated against its result."""

from __future__ import annotations

import numpy as np

from slam.camera import Camera
from slam.config import load_config
from slam.features.base import Features
from slam.geometry.se3 import invert
from slam.map.map import KeyFrame, Map
from slam.mapping import MIN_BA_OBSERVATIONS, MIN_RELOCATE_POINTS, LocalMapper


def _camera() -> Camera:
    return Camera(640, 480, 500.0, 500.0, 320.0, 240.0, (0.0, 0.0, 0.0, 0.0, 0.0), "pinhole")


def _pose(centre: np.ndarray) -> np.ndarray:
    T_wc = np.eye(4)
    T_wc[:3, 3] = centre
    return invert(T_wc)


def _keyframe(m: Map, cam: Camera, T_cw: np.ndarray, X: np.ndarray) -> KeyFrame:
    Xc = X @ T_cw[:3, :3].T + T_cw[:3, 3]
    uv = cam.project_ideal(Xc)
    n = len(X)
    feats = Features(
        keypoints=uv.astype(np.float32), descriptors=np.zeros((n, 32), np.uint8), octaves=np.zeros(n, np.int32),
        sizes=np.full(n, 7.0, np.float32), angles=np.full(n, -1.0, np.float32), responses=np.ones(n, np.float32),
        binary=True, scale_factor=1.2,
    )
    kf = KeyFrame(id=m.new_keyframe_id(), frame_index=m._next_kf_id, timestamp=0.0, T_cw=T_cw.copy(), features=feats,
                  kp_undist=uv.astype(np.float64), inv_sigma2=np.ones(n), point_ids=np.full(n, -1, np.int64),
                  colors=np.zeros((n, 3), np.uint8))
    m.add_keyframe(kf)
    return kf


def test_local_ba_holds_a_weakly_observed_keyframe_and_refines_the_others():
    rng = np.random.default_rng(3)
    cam = _camera()
    X = np.c_[rng.uniform(-2, 2, (300, 2)), rng.uniform(4, 8, 300)]
    truth = [_pose(np.array([0.3 * i, 0.0, 0.0])) for i in range(4)]
    m = Map(0)
    kfs = [_keyframe(m, cam, T, X) for T in truth]
    few = 5  # < MIN_BA_OBSERVATIONS
    for j, x in enumerate(X):
        observers = kfs[:3] + ([kfs[3]] if j < few else [])
        p = m.create_point(x, kfs[0].features.descriptors[j], observers[0], j)
        for kf in observers[1:]:
            m.add_observation(p, kf, j)
    # the weak keyframe is far off where its few points say; a well-observed one is a little off
    kfs[3].T_cw = _pose(np.array([2.0, 1.0, -1.0]))
    weak_before = kfs[3].T_cw.copy()
    kfs[2].T_cw = _pose(np.array([0.6 + 0.05, 0.04, 0.03]))
    err_before = np.linalg.norm(invert(kfs[2].T_cw)[:3, 3] - invert(truth[2])[:3, 3])

    mapper = LocalMapper(load_config(None, ["system.sync=true"]), cam, lambda: m)
    mapper._local_ba(m, kfs[2])

    assert np.array_equal(kfs[3].T_cw, weak_before)
    err_after = np.linalg.norm(invert(kfs[2].T_cw)[:3, 3] - invert(truth[2])[:3, 3])
    assert err_after < 0.1 * err_before, (err_before, err_after)


def test_local_ba_keeps_a_keyframe_made_while_turning_in_place():
    """Its centre is the one tracked before the turn; BA must not shift it with the new view's points."""
    rng = np.random.default_rng(4)
    cam = _camera()
    X = np.c_[rng.uniform(-2, 2, (300, 2)), rng.uniform(4, 8, 300)]
    truth = [_pose(np.array([0.3 * i, 0.0, 0.0])) for i in range(4)]
    m = Map(0)
    kfs = [_keyframe(m, cam, T, X) for T in truth]
    many = 3 * MIN_BA_OBSERVATIONS  # enough points that only the flag holds it
    for j, x in enumerate(X):
        observers = kfs[:3] + ([kfs[3]] if j < many else [])
        p = m.create_point(x, kfs[0].features.descriptors[j], observers[0], j)
        for kf in observers[1:]:
            m.add_observation(p, kf, j)
    kfs[3].rotation_only = True
    turned_before = kfs[3].T_cw.copy()
    kfs[2].T_cw = _pose(np.array([0.6 + 0.05, 0.04, 0.03]))
    err_before = np.linalg.norm(invert(kfs[2].T_cw)[:3, 3] - invert(truth[2])[:3, 3])

    mapper = LocalMapper(load_config(None, ["system.sync=true"]), cam, lambda: m)
    mapper._local_ba(m, kfs[2])

    assert np.array_equal(kfs[3].T_cw, turned_before)
    err_after = np.linalg.norm(invert(kfs[2].T_cw)[:3, 3] - invert(truth[2])[:3, 3])
    assert err_after < 0.1 * err_before, (err_before, err_after)


def _map_with_stale_keyframe(seed: int):
    """Three keyframes at their true poses and a fourth, seeing the same points, tracked 5 cm off."""
    rng = np.random.default_rng(seed)
    cam = _camera()
    X = np.c_[rng.uniform(-2, 2, (200, 2)), rng.uniform(4, 8, 200)]
    truth = [_pose(np.array([0.3 * i, 0.0, 0.0])) for i in range(4)]
    m = Map(0)
    kfs = [_keyframe(m, cam, T, X) for T in truth]
    for j, x in enumerate(X):
        p = m.create_point(x, kfs[0].features.descriptors[j], kfs[0], j)
        for kf in kfs[1:]:
            m.add_observation(p, kf, j)
    kfs[3].T_cw = _pose(np.array([0.9 + 0.05, -0.03, 0.04]))
    return cam, m, kfs, truth


def _centre_error(kf: KeyFrame, T_true: np.ndarray) -> float:
    return float(np.linalg.norm(invert(kf.T_cw)[:3, 3] - invert(T_true)[:3, 3]))


def test_a_keyframe_queued_before_a_local_ba_wrote_back_is_relocated_against_the_adjusted_map():
    cam, m, kfs, truth = _map_with_stale_keyframe(5)
    mapper = LocalMapper(load_config(None, []), cam, lambda: m)
    mapper.note_queued(kfs[3], ba_writes_seen=mapper.num_ba_writes)
    mapper.num_ba_writes += 1  # a local BA wrote the map back after kfs[3]'s pose was tracked
    err_before = _centre_error(kfs[3], truth[3])
    mapper._relocate_keyframe(m, kfs[3])
    assert _centre_error(kfs[3], truth[3]) < 0.05 * err_before

    mapper.process(kfs[3])
    assert mapper.num_relocated == 2  # once above, once in process() because of the write-back


def test_a_keyframe_queued_with_no_local_ba_since_is_not_relocated():
    cam, m, kfs, _ = _map_with_stale_keyframe(6)
    mapper = LocalMapper(load_config(None, []), cam, lambda: m)
    mapper.insert(kfs[3], ba_writes_seen=mapper.num_ba_writes)  # no write-back in between: the tracked
    # pose goes to triangulation as it is
    assert mapper.num_relocated == 0
    assert mapper.num_ba_writes == 1  # process() ran its own local BA


def test_a_keyframe_seeing_too_few_map_points_keeps_its_tracked_pose():
    cam, m, kfs, _ = _map_with_stale_keyframe(7)
    for i in np.flatnonzero(kfs[3].point_ids >= 0)[MIN_RELOCATE_POINTS - 1:]:
        m.erase_observation(m.points[int(kfs[3].point_ids[i])], kfs[3])
    before = kfs[3].T_cw.copy()
    LocalMapper(load_config(None, []), cam, lambda: m)._relocate_keyframe(m, kfs[3])
    assert np.array_equal(kfs[3].T_cw, before)
