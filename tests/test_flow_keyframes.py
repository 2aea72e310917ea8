"""Flow front end: a keyframe despite low parallax when the tracks die while the map stays in view."""

from __future__ import annotations

import numpy as np

from slam.camera import Camera
from slam.config import load_config
from slam.geometry.se3 import so3_exp
from slam.map.frame import Frame
from slam.map.map import KeyFrame
from slam.system import System

from conftest import binary_features

N_POINTS = 400


def _tracker_with_mapped_keyframe():
    """A flow tracker whose last keyframe (at the origin) observes N_POINTS map points 4-9 m ahead."""
    rng = np.random.default_rng(3)
    cam = Camera(640, 480, 500.0, 500.0, 320.0, 240.0, (0.0, 0.0, 0.0, 0.0, 0.0), "pinhole")
    system = System(load_config(None, ["system.sync=true", "features.type=orb"]), cam)
    tracker = system.tracker
    X = np.c_[rng.uniform(-2.0, 2.0, (N_POINTS, 2)), rng.uniform(4.0, 9.0, N_POINTS)]
    uv = cam.project_ideal(X)
    the_map = tracker.map
    kf = KeyFrame(id=the_map.new_keyframe_id(), frame_index=0, timestamp=0.0, T_cw=np.eye(4), features=binary_features(uv),
                  kp_undist=uv.astype(np.float64), inv_sigma2=np.ones(N_POINTS),
                  point_ids=np.full(N_POINTS, -1, np.int64), colors=np.zeros((N_POINTS, 3), np.uint8),
                  track_ids=np.arange(N_POINTS, dtype=np.int64))
    the_map.add_keyframe(kf)
    points = [the_map.create_point(X[j], kf.features.descriptors[j], kf, j) for j in range(N_POINTS)]
    the_map.update_points_geometry(points, 1.2, 8)
    tracker._last_kf = tracker._ref_kf = kf
    return tracker


def _frame(T_cw: np.ndarray, mask: np.ndarray | None = None) -> Frame:
    frame = Frame(index=4, timestamp=4 / 30, gray=np.zeros((480, 640), np.uint8), features=binary_features(np.zeros((0, 2))),
                  kp_undist=np.zeros((0, 2)), inv_sigma2=np.zeros(0), colors=np.zeros((0, 3), np.uint8),
                  image=np.zeros((480, 640, 3), np.uint8))
    frame.T_cw = T_cw
    frame.mask = mask
    return frame


def _moved(rot_deg: float, t: tuple[float, float, float]) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = so3_exp(np.radians(rot_deg) * np.array([0.0, 1.0, 0.0]))
    T[:3, 3] = t
    return T


def test_dying_tracks_with_the_map_in_view_ask_for_a_keyframe():
    tracker = _tracker_with_mapped_keyframe()
    frame = _frame(_moved(1.0, (0.01, 0.0, 0.0)))  # barely moved: all 400 points still in view
    assert tracker._tracks_fading(frame, 30)  # 400 in view > 6 x 30 tracked
    assert not tracker._tracks_fading(frame, 80)  # 400 < 6 x 80: most of what is in view is tracked
    assert not tracker._tracks_fading(frame, 2 * tracker.tcfg.keyframe_min_tracked)  # tracking is not thin


def test_a_turn_away_from_the_map_is_not_fading_tracks():
    tracker = _tracker_with_mapped_keyframe()
    turned = _frame(_moved(70.0, (0.0, 0.0, 0.0)))  # the points left the field of view
    assert not tracker._tracks_fading(turned, 30)
    behind = _frame(_moved(180.0, (0.0, 0.0, 0.0)))
    assert not tracker._tracks_fading(behind, 30)


def test_points_outside_the_mask_or_their_scale_range_are_not_in_view():
    tracker = _tracker_with_mapped_keyframe()
    blind = np.zeros((480, 640), np.uint8)
    assert not tracker._tracks_fading(_frame(_moved(1.0, (0.01, 0.0, 0.0)), blind), 30)
    far = _frame(_moved(0.0, (0.0, 0.0, -40.0)))  # 40 m back: beyond every point's distance range
    assert not tracker._tracks_fading(far, 30)
