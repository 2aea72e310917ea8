"""Flow front end after a fast turn: the pose from the flow tracks' own two-view geometry with a keyframe."""

from __future__ import annotations

import numpy as np
import pytest

from slam.camera import Camera
from slam.config import load_config
from slam.geometry.se3 import invert, rotation_angle, so3_exp
from slam.map.frame import Frame
from slam.map.map import KeyFrame
from slam.system import System

from conftest import binary_features

N_TRACKS = 400
N_MAPPED = 15  # fewer than a pose needs (tracking.min_tracked_points), enough to fix the scale


def _project(cam: Camera, T_cw: np.ndarray, X: np.ndarray) -> np.ndarray:
    return cam.project_ideal(X @ T_cw[:3, :3].T + T_cw[:3, 3])


def _setup(motion_T_cw: np.ndarray, X: np.ndarray | None = None, noise_px: float = 0.3, seed: int = 7):
    """A tracker whose only keyframe (at the origin) shares every flow track with the current frame.

    X (N, 3): the tracked points (default: spread over the view, 4-9 units deep)."""
    rng = np.random.default_rng(seed)
    cam = Camera(640, 480, 500.0, 500.0, 320.0, 240.0, (0.0, 0.0, 0.0, 0.0, 0.0), "pinhole")
    cfg = load_config(None, ["system.sync=true", "features.type=orb", "tracking.frontend=hybrid"])
    system = System(cfg, cam)
    tracker = system.tracker
    if X is None:
        X = np.c_[rng.uniform(-2.5, 2.5, (N_TRACKS, 2)), rng.uniform(4.0, 9.0, N_TRACKS)]
    n = len(X)
    T0 = np.eye(4)
    uv0 = _project(cam, T0, X)
    uv1 = _project(cam, motion_T_cw, X) + rng.normal(0, noise_px, (n, 2))
    the_map = tracker.map
    kf = KeyFrame(id=the_map.new_keyframe_id(), frame_index=0, timestamp=0.0, T_cw=T0, features=binary_features(uv0),
                  kp_undist=uv0.astype(np.float64), inv_sigma2=np.ones(n),
                  point_ids=np.full(n, -1, np.int64), colors=np.zeros((n, 3), np.uint8),
                  track_ids=np.arange(n, dtype=np.int64))
    the_map.add_keyframe(kf)
    point_ids = np.full(n, -1, np.int64)
    for j in range(N_MAPPED):
        point_ids[j] = the_map.create_point(X[j], kf.features.descriptors[j], kf, j).id
    tracker._last_kf = tracker._ref_kf = kf
    tracker._pts = uv1.astype(np.float32)
    tracker._tids = np.arange(n, dtype=np.int64)
    tracker._kf_idx = np.arange(n, dtype=np.int64)
    tracker._steps = np.full((n, 2), np.nan, np.float32)
    gray = np.zeros((480, 640), np.uint8)
    frame = Frame(index=5, timestamp=5 / 30, gray=gray, features=binary_features(np.zeros((0, 2))),
                  kp_undist=np.zeros((0, 2)), inv_sigma2=np.zeros(0), colors=np.zeros((0, 3), np.uint8),
                  image=np.zeros((480, 640, 3), np.uint8))
    return tracker, frame, point_ids


def _motion(rot_deg: float, t: tuple[float, float, float]) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = so3_exp(np.radians(rot_deg) * np.array([0.0, 1.0, 0.2]) / np.hypot(1.0, 0.2))
    T[:3, 3] = t
    return T


def test_pose_from_two_view_motion_of_the_tracks_is_metric_in_the_map():
    truth = _motion(6.0, (-0.35, 0.05, 0.1))
    tracker, frame, point_ids = _setup(truth)
    assert tracker._pose_from_keyframe_motion(frame, point_ids)
    err = frame.T_cw @ invert(truth)
    assert np.degrees(rotation_angle(err[:3, :3])) < 0.3
    c_est, c_true = invert(frame.T_cw)[:3, 3], invert(truth)[:3, 3]
    assert np.linalg.norm(c_est - c_true) < 0.05 * np.linalg.norm(c_true)  # scale from the mapped tracks
    assert tracker.num_two_view == 1
    assert tracker.scale_guess_frames == []  # the scale was observed, not guessed
    assert len(frame.point_ids) == len(tracker._pts) and frame.num_matched >= N_MAPPED - 2


def test_two_view_motion_without_shared_map_points_gives_no_pose():
    """No tracked map point spans the motion (a turn into an unmapped view): its scale would be a guess, so
    the frame gets no pose and keeps its tracks (a new map made from them follows)."""
    truth = _motion(6.0, (-0.35, 0.05, 0.1))
    tracker, frame, point_ids = _setup(truth)
    point_ids[:] = -1  # the tracks lost their map points
    n = len(tracker._pts)
    assert not tracker._pose_from_keyframe_motion(frame, point_ids)
    assert frame.T_cw is None and tracker.num_two_view == 0
    assert len(tracker._pts) == n


def test_speed_prior_is_the_cruising_pace_not_the_pace_of_the_stop():
    """A new map after a stop-and-turn takes the scale from the camera's usual speed before the loss."""
    tracker, _, _ = _setup(np.eye(4))
    assert tracker._recent_speed() is None  # too few samples: no prior
    cruise = [0.013, 0.012, 0.014, 0.011, 0.013, 0.012, 0.013, 0.014]
    stop = [0.006, 0.004, 0.003, 0.002, 0.001, 0.0008, 0.0007, 0.0007]  # slowing down, then turning in place
    tracker._speed_samples = cruise + stop
    assert np.median(cruise + stop) < 0.009  # what a median would give
    assert 0.011 <= tracker._recent_speed() <= 0.014
    tracker._speed_samples = cruise
    assert tracker._recent_speed() == pytest.approx(np.percentile(cruise, 75))


def test_cruising_speed_outlasts_a_long_stop():
    """The speed history spans a slow-down longer than the stop itself (rooms: ~40 frames below cruising
    pace before the view is lost), so the prior is still the pace before it."""
    from types import SimpleNamespace

    tracker, _, _ = _setup(np.eye(4))
    tracker._speed_samples = []

    def pose_at(x: float) -> np.ndarray:
        T = np.eye(4)
        T[0, 3] = -x  # T_cw of a camera at (x, 0, 0), no rotation
        return T

    x, last = 0.0, None
    paces = [0.012] * 60 + [0.002] * 40  # cruising, then a long slow approach to the turn
    for i, pace in enumerate(paces):
        x += pace
        frame = SimpleNamespace(index=i, T_cw=pose_at(x))
        tracker._note_motion(frame, last)
        last = frame
    assert tracker.tcfg.speed_history_frames >= 100
    assert tracker._recent_speed() == pytest.approx(0.012, rel=0.02)
    tracker.tcfg.speed_history_frames = 30  # the old window: only the slow frames are left
    tracker._note_motion(SimpleNamespace(index=len(paces), T_cw=pose_at(x + 0.002)), last)
    assert tracker._recent_speed() < 0.003


@pytest.mark.parametrize("t", [(0.0, 0.0, 0.0), (0.002, 0.0, 0.0)])
def test_no_two_view_pose_without_parallax(t):
    """A turn in place (or nearly): the tracks cannot place the camera, so rotation-only tracking takes over."""
    tracker, frame, point_ids = _setup(_motion(8.0, t))
    assert not tracker._pose_from_keyframe_motion(frame, point_ids)
    assert tracker.num_two_view == 0


def _edge_of_view_turn(seed: int, n: int = 100):
    """A 45 degree turn with 1.5 cm of sideways motion (0.2 degrees of parallax) seen by ``n`` tracks in the
    strip of the view that stays in sight: the translation is below what the tracks resolve."""
    rng = np.random.default_rng(100 + seed)
    z = rng.uniform(3.0, 5.0, n)
    u, v = rng.uniform(400.0, 620.0, n), rng.uniform(40.0, 440.0, n)
    X = np.c_[(u - 320.0) / 500.0 * z, (v - 240.0) / 500.0 * z, z]
    T = np.eye(4)
    T[:3, :3] = so3_exp(np.radians(-45.0) * np.array([0.0, 1.0, 0.0]))
    T[:3, 3] = (0.015, 0.0, 0.0)
    return T, X


def test_a_turn_with_unresolved_translation_gives_no_two_view_pose():
    """Where a rotation explains the tracks, an essential matrix fits their noise: its translation points
    anywhere (and sets the new view's scale), so the tracker keeps to rotation-only tracking instead."""
    from slam.geometry.two_view import initialize_two_view

    wrong_essential = 0
    for seed in range(12):
        truth, X = _edge_of_view_turn(seed)
        tracker, frame, point_ids = _setup(truth, X, noise_px=1.0, seed=seed)
        x1 = tracker.camera.normalize(tracker._last_kf.features.keypoints)
        x2 = tracker.camera.normalize(tracker._pts)
        res = initialize_two_view(x1, x2, tracker.focal, min_parallax_deg=1.0, min_triangulated=60, seed=0)
        if res.ok:
            t_est = np.asarray(res.T_21)[:3, 3]
            cos = abs(t_est @ truth[:3, 3]) / (np.linalg.norm(t_est) * np.linalg.norm(truth[:3, 3]))
            wrong_essential += cos < np.cos(np.radians(20.0))
        assert not tracker._pose_from_keyframe_motion(frame, point_ids)
        assert tracker.num_two_view == 0
    assert wrong_essential >= 2  # the case is real: unchecked, an essential matrix passes, pointing elsewhere


def test_a_rotation_does_not_explain_a_translating_camera():
    truth = _motion(6.0, (-0.35, 0.05, 0.1))
    tracker, _, _ = _setup(truth)
    x1 = tracker.camera.normalize(tracker._last_kf.features.keypoints)
    assert not tracker._rotation_explains(x1, tracker.camera.normalize(tracker._pts))


def _keyframe_at(the_map, frame_index: int, T_cw: np.ndarray, n: int = 4) -> KeyFrame:
    uv = np.full((n, 2), 100.0)
    kf = KeyFrame(id=the_map.new_keyframe_id(), frame_index=frame_index, timestamp=frame_index / 30.0,
                  T_cw=T_cw, features=binary_features(uv), kp_undist=uv.astype(np.float64),
                  inv_sigma2=np.ones(n), point_ids=np.full(n, -1, np.int64), colors=np.zeros((n, 3), np.uint8))
    the_map.add_keyframe(kf)
    return kf


def test_a_chained_map_is_rescaled_to_the_speed_before_the_loss():
    """After the chain, the camera moves twice as fast (in map units) as it cruised before the loss, and no
    plane is shared: the new map (keyframes, points, recorded frames, the frame, the motion model) is
    scaled by 1/2 about the lost map's last camera centre."""
    from slam.tracking import FrameRecord

    tracker, frame, _ = _setup(np.eye(4))
    the_map = tracker.map
    the_map.keyframes.clear()
    the_map.points.clear()
    tracker._speed_samples = [0.02] * 10
    tracker._guessed_scale_from(3, np.zeros(3), np.zeros((0, 3)))  # pivot: the origin
    T_new = np.eye(4)
    T_new[:3, :3] = so3_exp(np.radians(40.0) * np.array([0.0, 1.0, 0.0]))
    T_new[:3, 3] = -T_new[:3, :3] @ np.array([0.4, 0.0, 0.2])  # centre (0.4, 0, 0.2)
    new_kf = _keyframe_at(the_map, 3, T_new)
    new_pt = the_map.create_point(np.array([1.0, 0.5, 6.0]), new_kf.features.descriptors[0], new_kf, 0)
    bearing = new_pt.position / np.linalg.norm(new_pt.position)  # from the pivot
    rec = FrameRecord(4, 4 / 30, the_map.id, new_kf, np.eye(4))
    rec.T_c_ref[:3, 3] = [0.0, 0.0, -0.08]
    tracker.records.append(rec)
    T_frame = T_new.copy()
    T_frame[:3, 3] -= T_new[:3, :3] @ np.array([0.08, 0.0, 0.0])  # frame centre (0.48, 0, 0.2)
    frame.T_cw = T_frame.copy()
    tracker._velocity = np.eye(4)
    tracker._velocity[:3, 3] = [0.0, 0.0, -0.04]
    tracker._speed_samples = [0.04] * tracker.tcfg.guess_check_frames
    tracker._check_guessed_scale(frame)
    assert tracker.num_scale_corrections == 1 and tracker._scale_check is None
    np.testing.assert_allclose(new_kf.center, [0.2, 0.0, 0.1], atol=1e-12)
    np.testing.assert_allclose(new_kf.T_cw[:3, :3], T_new[:3, :3])
    np.testing.assert_allclose(new_pt.position, [0.5, 0.25, 3.0], atol=1e-12)
    np.testing.assert_allclose(new_pt.position / np.linalg.norm(new_pt.position), bearing, atol=1e-12)
    np.testing.assert_allclose(rec.T_c_ref[:3, 3], [0.0, 0.0, -0.04])
    np.testing.assert_allclose(invert(frame.T_cw)[:3, 3], [0.24, 0.0, 0.1], atol=1e-12)
    np.testing.assert_allclose(tracker._velocity[:3, 3], [0.0, 0.0, -0.02])


def test_guessed_scale_that_agrees_with_the_speed_before_is_left_alone():
    tracker, frame, _ = _setup(np.eye(4))
    kf = next(iter(tracker.map.keyframes.values()))
    tracker._speed_samples = [0.02] * 10
    tracker._guessed_scale_from(0, np.array([0.0, 0.0, -1.0]), np.zeros((0, 3)))
    frame.T_cw = np.eye(4)
    tracker._speed_samples = [0.022] * tracker.tcfg.guess_check_frames  # within tracking.guess_check_ratio
    tracker._check_guessed_scale(frame)
    assert tracker.num_scale_corrections == 0 and tracker._scale_check is None
    np.testing.assert_allclose(kf.T_cw, np.eye(4))
    np.testing.assert_allclose(frame.T_cw, np.eye(4))


def test_a_chained_maps_scale_is_checked_against_a_plane_of_the_lost_map():
    """A new map placed where the lost one ended takes its scale from the scene depth seen last (here 2x
    what the speed before the loss gives); the floor, mapped in the lost map and again in the new one,
    then 3.2x too far from the pivot, corrects it."""
    tracker, frame, _ = _setup(np.eye(4))
    the_map = tracker.map
    kf0 = next(iter(the_map.keyframes.values()))
    rng = np.random.default_rng(6)

    def floor(n):
        return np.c_[rng.uniform(-3, 3, n), np.full(n, 1.5), rng.uniform(1, 6, n)]  # y down: 1.5 below

    tracker._previous_map_points = floor(300)
    the_map.points.clear()
    new_pts = [the_map.create_point(1.6 * X, kf0.features.descriptors[0], kf0, 0) for X in floor(200)]
    T1 = np.eye(4)
    T1[0, 3] = -0.04  # centre (0.04, 0, 0) two frames on: 0.02 a frame, the speed before the loss
    kf1 = _keyframe_at(the_map, 2, T1)
    tracker._speed_samples = [0.02] * 10
    tracker._last_good_T_wc = np.eye(4)
    tracker._last_good_depth = 2.0  # the new map's median depth is 1
    tracker._chain_to_previous_map(kf0, kf1)
    assert tracker.scale_guess_frames == [0] and tracker._scale_check is not None
    np.testing.assert_allclose(kf1.center, [0.08, 0.0, 0.0], atol=1e-12)  # the depth prior, not the speed
    frame.T_cw = np.eye(4)
    tracker._speed_samples = [0.02] * tracker.tcfg.guess_check_frames  # the speed alone would leave it
    tracker._check_guessed_scale(frame)
    assert tracker.num_scale_corrections == 1 and tracker._scale_check is None
    heights = np.array([p.position[1] for p in new_pts])
    np.testing.assert_allclose(heights, 1.5, rtol=0.01)


def test_without_a_plane_the_speed_check_waits_for_one_before_using_the_speed():
    """No shared plane at the first check: the check stays pending (the map after the guess may not reach
    the floor yet), and only the last try falls back to the speed."""
    tracker, frame, _ = _setup(np.eye(4))
    tracker._speed_samples = [0.02] * 10
    tracker._guessed_scale_from(3, np.zeros(3), np.zeros((0, 3)))
    frame.T_cw = np.eye(4)
    tracker._speed_samples = [0.04] * tracker.tcfg.guess_check_frames
    tracker._check_guessed_scale(frame, last_try=False)
    assert tracker.num_scale_corrections == 0 and tracker._scale_check is not None
    tracker._check_guessed_scale(frame, last_try=True)
    assert tracker.num_scale_corrections == 1 and tracker._scale_check is None


def test_rotation_only_frame_keeps_the_last_centre_and_its_uncertainty():
    """A turn in place tracked from the flow tracks alone: the centre is the last frame's, and so is its
    uncertainty, so that a keyframe made there does not triangulate as if that centre were known better."""
    truth = _motion(4.0, (0.0, 0.0, 0.0))
    tracker, frame, point_ids = _setup(truth)
    prev = tracker._last_kf.features.keypoints.copy()
    last = Frame(index=4, timestamp=4 / 30, gray=frame.gray, features=binary_features(np.zeros((0, 2))),
                 kp_undist=np.zeros((0, 2)), inv_sigma2=np.zeros(0), colors=np.zeros((0, 3), np.uint8),
                 T_cw=np.eye(4), centre_sigma=0.05)
    tracker._last = last
    assert tracker._rotation_from_tracks(frame, prev, point_ids)
    assert np.linalg.norm(invert(frame.T_cw)[:3, 3]) < 1e-12
    assert np.degrees(rotation_angle((frame.T_cw @ invert(truth))[:3, :3])) < 0.1
    assert frame.centre_sigma == pytest.approx(0.05)


def test_the_wait_for_a_plane_ends_within_a_short_speed_history():
    """The check runs 15 samples after the guess, then every 5; its last try comes 15 samples later, or as
    soon as the capped speed history stops growing (here 7 samples past the first check: at 5)."""
    tracker, _, _ = _setup(np.eye(4))
    tracker._speed_samples = [0.02] * 10
    tracker._guessed_scale_from(3, np.zeros(3), np.zeros((0, 3)))
    first = tracker.tcfg.guess_check_frames

    def schedule(n):
        tracker._speed_samples = [0.04] * n
        return tracker._scale_check_due()

    assert schedule(first - 1) == (False, False)
    assert schedule(first) == (True, False)
    assert schedule(first + 3) == (False, False)
    assert schedule(first + 15) == (True, True)
    tracker.tcfg.speed_history_frames = first + 7
    assert schedule(first + 5) == (True, True)


def test_a_chained_map_is_anchored_at_its_earliest_localised_frame():
    """A new map is placed with its first keyframe where the old map's last frame was; when frames before
    that keyframe get poses afterwards, the map moves rigidly so that the earliest of them sits there."""
    from types import SimpleNamespace

    from slam.tracking import FrameRecord

    tracker, frame, point_ids = _setup(np.eye(4))
    kf = tracker._last_kf
    kf.frame_index = 10
    ref = SimpleNamespace(index=10)
    T_early_ref = _motion(2.0, (0.1, 0.0, 0.3))  # frame 5 relative to the keyframe
    tracker.records = [FrameRecord(10, 10 / 30, tracker.map.id, kf, np.eye(4)),
                       FrameRecord(5, 5 / 30, tracker.map.id, kf, T_early_ref)]
    anchor = invert(_motion(30.0, (1.0, -2.0, 0.5)))  # camera-to-world of the old map's last frame
    X = tracker.map.points[point_ids[0]].position.copy()
    uv_before = _project(tracker.camera, kf.T_cw, X[None])

    tracker._chain_anchor_T_wc = anchor.copy()
    tracker._anchor_earliest_frame(ref, frame)
    assert np.allclose(invert(tracker.records[1].T_cw()), anchor, atol=1e-9)
    assert np.allclose(tracker.records[1].T_cw() @ invert(kf.T_cw), T_early_ref, atol=1e-9)  # rigid
    X_after = tracker.map.points[point_ids[0]].position
    assert np.allclose(_project(tracker.camera, kf.T_cw, X_after[None]), uv_before, atol=1e-6)
    assert np.allclose(frame.T_cw, kf.T_cw)
    assert tracker._chain_anchor_T_wc is None

    tracker.records = tracker.records[:1]  # only the keyframe itself: it is already in place
    T_kf = kf.T_cw.copy()
    tracker._chain_anchor_T_wc = anchor.copy()
    tracker._anchor_earliest_frame(ref, frame)
    assert np.allclose(kf.T_cw, T_kf)


def test_a_lost_frame_keeps_its_tracks_and_the_next_one_recovers_from_their_motion():
    """Right after a loss (before a new map is started) the flow tracks are still carried: a frame whose
    tracks now have the parallax the lost one lacked gets its pose from their two-view motion."""
    from types import SimpleNamespace

    from slam.tracking import LOST, TRACKING

    truth = _motion(6.0, (-0.35, 0.05, 0.1))
    tracker, frame, _ = _setup(truth)
    tracker.state = LOST
    tracker._last = SimpleNamespace(index=3, T_cw=np.eye(4), centre_sigma=0.0)
    tracker._carry = lambda frame, mask, guess=None: np.ones(len(tracker._pts), bool)  # tracks land as drawn
    finished = []
    tracker._finish_tracked = lambda frame, mask, force_keyframe, rotation_only=False: finished.append(
        (force_keyframe, rotation_only)) or SimpleNamespace(state=TRACKING)

    assert tracker._track_frame(frame).state == TRACKING
    assert finished == [(True, False)]  # a keyframe from the two-view motion, not a rotation
    assert tracker.num_two_view == 1
    c_est, c_true = invert(frame.T_cw)[:3, 3], invert(truth)[:3, 3]
    assert np.linalg.norm(c_est - c_true) < 0.05 * np.linalg.norm(c_true)


def test_tracks_carried_through_lost_frames_start_the_new_maps_reference():
    """Frames lost before a new map keep their flow tracks; the new map's reference carries them on and
    keeps those frames, so that they are localised once the map exists."""
    from types import SimpleNamespace

    from slam.map.frame import Frame
    from slam.tracking import INITIALISING, LOST

    tracker, frame, _ = _setup(np.eye(4))  # no motion: no pose from the tracks
    tracker.state = LOST
    tracker._last = SimpleNamespace(index=3, T_cw=np.eye(4), centre_sigma=0.0, point_ids=np.zeros(0, np.int64),
                                    features=binary_features(np.zeros((0, 2))))
    tracker._carry = lambda frame, mask, guess=None: np.ones(len(tracker._pts), bool)
    tracker._descriptor_fallback = lambda frame, mask: False
    tids = tracker._tids.copy()
    assert tracker.track(frame).state == LOST
    assert [(i, len(p)) for i, _, p, _ in tracker._lost_frames] == [(frame.index, len(tids))]

    tracker._reset("test")
    assert tracker.state == INITIALISING
    image = np.random.default_rng(0).integers(0, 255, (480, 640), np.uint8)
    nxt = Frame(index=frame.index + 1, timestamp=0.2, gray=image, features=binary_features(np.zeros((0, 2))),
                kp_undist=np.zeros((0, 2)), inv_sigma2=np.zeros(0), colors=np.zeros((0, 3), np.uint8),
                image=np.dstack([image] * 3))
    tracker._initialise(nxt)
    assert tracker._init_frame is nxt
    assert np.array_equal(tracker._tids[:len(tids)], tids)  # the lost frame's tracks carry on
    assert [h[0] for h in tracker._before_init_ref] == [frame.index]
    assert tracker._lost_frames == []
