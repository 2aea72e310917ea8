"""Tracker: two-view initialisation, frame-to-frame and local-map tracking, keyframe decision, relocalisation.

Synchronous core: :meth:`Tracker.track` takes one :class:`~slam.map.frame.Frame` and returns a
:class:`TrackResult`. The thread wrapper lives in :mod:`slam.system`. Keyframes are handed to the
mapper through the ``KeyframeSink`` protocol (``insert(kf)``, ``idle``), which the synchronous and the
threaded local mappers both implement.

Front ends (``tracking.frontend``):
    ``descriptors``: keypoints and descriptors on every frame, matched to map points by projection.
    ``flow``: map points of the last frame carried by pyramidal Lucas-Kanade flow; descriptors only on
        keyframes; see :mod:`slam.flow`.
    ``hybrid``: flow, falling back to descriptors when flow loses too much (jumps, blur, light change).

Poses of non-key frames are stored relative to their reference keyframe, so the written trajectory
follows later bundle-adjustment corrections.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from slam.camera import Camera
from slam.config import Config
from slam.features.base import FeatureExtractor
from slam.geometry.se3 import invert
from slam.map.frame import Frame
from slam.map.map import KeyFrame, Map
from slam.timing import StageTimer

log = logging.getLogger(__name__)

INITIALISING, TRACKING, LOST = "initialising", "tracking", "lost"


class KeyframeSink(Protocol):
    """What the tracker needs of a local mapper."""

    @property
    def idle(self) -> bool: ...

    @property
    def num_ba_writes(self) -> int: ...  # local BAs written back to the map so far

    def insert(self, kf: KeyFrame, ba_writes_seen: int | None = None) -> None: ...


@dataclass
class TrackResult:
    """Outcome of tracking one frame."""

    state: str
    T_cw: np.ndarray | None
    num_tracked: int
    new_keyframe: bool = False
    map_created: bool = False


@dataclass
class FrameRecord:
    """Where a tracked frame's pose lives: relative to a reference keyframe of a map."""

    index: int
    timestamp: float
    map_id: int
    ref_kf: KeyFrame
    T_c_ref: np.ndarray

    def T_cw(self) -> np.ndarray:
        return self.T_c_ref @ self.ref_kf.current_T_cw()


def _pose_to_list_matches(n: int) -> np.ndarray:
    return np.full(n, -1, dtype=np.int64)


class Tracker:
    """The tracking state machine of one run (several maps when tracking is lost for long)."""

    def __init__(
        self,
        cfg: Config,
        camera: Camera,
        extractor: FeatureExtractor,
        new_map: "callable",
        mapper: KeyframeSink,
        timer: StageTimer | None = None,
    ) -> None:
        self.cfg = cfg
        self.tcfg = cfg.tracking
        self.camera = camera
        self.extractor = extractor
        self._new_map = new_map
        self.mapper = mapper
        self.timer = timer or StageTimer()
        self.intrinsics = (camera.fx, camera.fy, camera.cx, camera.cy)
        self.focal = 0.5 * (camera.fx + camera.fy)
        self.map: Map = new_map()
        self.state = INITIALISING
        self.records: list[FrameRecord] = []
        self.num_lost = 0
        self.num_resets = 0
        self.num_scale_corrections = 0
        self.num_rotation_only = 0
        self._init_ref: Frame | None = None
        self._last: Frame | None = None
        self._velocity: np.ndarray | None = None
        self._ref_kf: KeyFrame | None = None
        self._last_kf: KeyFrame | None = None
        self._frames_since_kf = 0
        self._tracked_at_last_kf = 0
        self._lost_in_row = 0
        self._last_good_T_wc: np.ndarray | None = None
        # where the last new map was placed (camera-to-world of the old map's last frame), until settled
        self._chain_anchor_T_wc: np.ndarray | None = None
        self._last_good_depth: float | None = None
        self._recent_depth: float | None = None
        self._speed_samples: list[float] = []
        # after a new map chained to a lost one: (its first source frame, the lost map's last camera centre
        # (3,), the cruising speed before the loss, the lost map's points (N, 3))
        self._scale_check: tuple[int, np.ndarray, float, np.ndarray] | None = None
        self._previous_map_points: np.ndarray | None = None  # (N, 3) world points of the map lost last
        self.scale_guess_frames: list[int] = []  # first source frame of each map whose scale is a prior
        self._local_kfs: list[KeyFrame] = []
        self._ba_writes_seen: int | None = None  # local BA write-backs when the current frame was started
        self.max_levels = int(getattr(extractor, "num_levels", 8))

    # =============================================================================== public
    def track(self, frame: Frame) -> TrackResult:
        """Track one frame; never raises on tracking failure (returns state ``lost``)."""
        self._ba_writes_seen = self.mapper.num_ba_writes  # the map this frame is tracked against
        if self.state == INITIALISING:
            return self._initialise(frame)
        result = self._track_frame(frame)
        if result.state == LOST:
            self._lost_in_row += 1
            if self._lost_in_row > self.tcfg.max_lost_before_reset:
                self._reset("tracking lost for %d frames" % self._lost_in_row)
        else:
            self._lost_in_row = 0
        return result

    def prepare(self, fd, preprocessor) -> tuple[Frame, np.ndarray | None]:
        """Build the Frame for source frame ``fd``: full keypoint extraction on every frame."""
        return preprocessor.make_frame(fd.index, fd.timestamp, fd.image)

    # =============================================================================== initialisation
    def _initialise(self, frame: Frame) -> TrackResult:
        from slam.features.matching import match_descriptors
        from slam.geometry.two_view import initialize_two_view

        ref = self._init_ref
        if ref is None or len(ref.features) < self.tcfg.init_min_matches:
            self._init_ref = frame if len(frame.features) >= self.tcfg.init_min_matches else None
            return TrackResult(INITIALISING, None, 0)
        with self.timer.stage("match"):
            matches = match_descriptors(
                ref.features.descriptors, frame.features.descriptors, ref.features.binary,
                ratio=max(self.cfg.features.ratio, 0.85), mutual=True,
            )
        gap = frame.index - ref.index
        if len(matches) < self.tcfg.init_min_matches:
            log.debug("init: %d matches with reference %d; new reference", len(matches), ref.index)
            self._init_ref = frame
            return TrackResult(INITIALISING, None, len(matches))
        x1 = self.camera.normalize(ref.features.keypoints[matches[:, 0]])
        x2 = self.camera.normalize(frame.features.keypoints[matches[:, 1]])
        with self.timer.stage("init"):
            res = initialize_two_view(
                x1, x2, self.focal, min_parallax_deg=self.tcfg.init_min_parallax_deg,
                min_triangulated=self.tcfg.init_min_points, seed=self.cfg.system.seed,
            )
        if res is None or not getattr(res, "ok", True):
            reason = getattr(res, "reason", "no model")
            log.debug("init with reference %d failed: %s", ref.index, reason)
            if gap >= self.tcfg.init_max_frames_gap:
                self._init_ref = frame
            return TrackResult(INITIALISING, None, len(matches))
        if not self._create_initial_map(ref, frame, matches, res):
            if gap >= self.tcfg.init_max_frames_gap:
                self._init_ref = frame
            return TrackResult(INITIALISING, None, len(matches))
        self._init_ref = None
        return TrackResult(TRACKING, frame.T_cw, frame.num_matched, new_keyframe=True, map_created=True)

    def _create_initial_map(self, ref: Frame, cur: Frame, matches: np.ndarray, res) -> bool:
        the_map = self.map
        valid = np.asarray(res.valid, dtype=bool)
        if np.count_nonzero(valid) < self.tcfg.init_min_points:
            return False
        T_1w = np.eye(4)
        T_2w = np.asarray(res.T_21, dtype=np.float64)
        with the_map.lock:
            kf0 = self._make_keyframe(ref, T_1w)
            kf1 = self._make_keyframe(cur, T_2w)
            for k, (i0, i1) in enumerate(matches):
                if not valid[k]:
                    continue
                p = the_map.create_point(res.points_1[k], ref.features.descriptors[i0], kf0, int(i0))
                the_map.add_observation(p, kf1, int(i1))
        # full BA of the two-view map (first keyframe fixed)
        with self.timer.stage("init_ba"):
            self._full_ba([kf0, kf1])
        with the_map.lock:
            pts = the_map.points_of([kf0])
            if len(pts) < self.tcfg.init_min_points:
                log.info("init rejected after BA: %d points", len(pts))
                self._discard_map()
                return False
            depths = np.array([(kf0.T_cw[:3, :3] @ p.position + kf0.T_cw[:3, 3])[2] for p in pts])
            median_depth = float(np.median(depths))
            if not np.isfinite(median_depth) or median_depth <= 0:
                self._discard_map()
                return False
            scale = 1.0 / median_depth
            kf1.T_cw[:3, 3] *= scale
            for p in pts:
                p.position = p.position * scale
            the_map.update_points_geometry(pts, self.extractor_scale_factor(), self.max_levels)
            the_map.update_points_descriptors(pts)
            cur.T_cw = kf1.T_cw.copy()
            cur.point_ids = kf1.point_ids.copy()
        if self._last_good_T_wc is not None:
            self._chain_to_previous_map(kf0, kf1)
            cur.T_cw = kf1.T_cw.copy()
        log.info(
            "map %d initialised from frames %d and %d with %d points (%s)",
            the_map.id, ref.index, cur.index, len(pts), getattr(res, "model", "?"),
        )
        self.state = TRACKING
        self._ref_kf = kf1
        self._last_kf = kf1
        self._frames_since_kf = 0
        self._tracked_at_last_kf = kf1.num_tracked_points(the_map)
        self._last = cur
        self._velocity = None
        self.mapper.insert(kf0)
        self.mapper.insert(kf1)
        self._record(ref, kf0, np.eye(4))
        self._record(cur, kf1, np.eye(4))
        return True

    def _full_ba(self, kfs: list[KeyFrame]) -> None:
        """Bundle adjustment of the whole (two-keyframe) map with the first keyframe fixed."""
        from slam.mapping import adjust_bundle

        fixed = np.zeros(len(kfs), dtype=bool)
        fixed[0] = True
        adjust_bundle(self.map, kfs, self.map.points_of(kfs), fixed, self.intrinsics, iterations=20,
                      deterministic=self.cfg.system.sync)

    def _discard_map(self) -> None:
        self.map = self._new_map(reuse_id=self.map.id)

    def extractor_scale_factor(self) -> float:
        return float(getattr(self.extractor, "scale_factor", 2.0))

    # =============================================================================== keyframes
    def _make_keyframe(self, frame: Frame, T_cw: np.ndarray) -> KeyFrame:
        kf = KeyFrame(
            id=self.map.new_keyframe_id(),
            frame_index=frame.index,
            timestamp=frame.timestamp,
            T_cw=np.array(T_cw, dtype=np.float64),
            features=frame.features,
            kp_undist=frame.kp_undist,
            inv_sigma2=frame.inv_sigma2,
            point_ids=np.full(len(frame.features), -1, dtype=np.int64),
            colors=frame.colors,
            track_ids=None if frame.track_ids is None else frame.track_ids.copy(),
        )
        self.map.add_keyframe(kf)
        return kf

    def _record(self, frame: Frame, ref_kf: KeyFrame, T_c_ref: np.ndarray) -> None:
        self.records.append(FrameRecord(frame.index, frame.timestamp, self.map.id, ref_kf, T_c_ref))

    def _need_keyframe(self, frame: Frame, num_tracked: int) -> bool:
        """A new keyframe when the points tracked fall below a share of those tracked at the last keyframe.

        Comparing with what the last keyframe's own frame tracked (not with all the points the mapper
        later gave it) keeps the rate independent of how many points triangulation adds.
        """
        t = self.tcfg
        if self._last_kf is None:
            return True
        if num_tracked < t.min_tracked_points:
            return False
        since = self._frames_since_kf
        if since < t.keyframe_min_frames:
            return False
        if since >= t.keyframe_max_frames:
            return True
        weak = num_tracked < t.keyframe_tracked_ratio * self._tracked_at_last_kf or num_tracked < t.keyframe_min_tracked
        return bool(weak and (self.mapper.idle or since >= 3 or num_tracked < t.keyframe_min_tracked))

    def _insert_keyframe(self, frame: Frame, rotation_only: bool = False) -> KeyFrame:
        with self.map.lock:
            kf = self._make_keyframe(frame, frame.T_cw)
            kf.rotation_only = rotation_only
            kf.centre_sigma = float(frame.centre_sigma)
            for idx in np.flatnonzero(frame.point_ids >= 0):
                p = self.map.points.get(int(frame.point_ids[idx]))
                if p is None or p.bad:
                    continue
                if kf.id in p.observations:
                    continue
                self.map.add_observation(p, kf, int(idx))
        self.mapper.insert(kf, self._ba_writes_seen)
        self._last_kf = kf
        self._ref_kf = kf
        self._frames_since_kf = 0
        self._tracked_at_last_kf = frame.num_matched
        if self.tcfg.mapper_backpressure:
            # weakly tracked: let the mapper catch up before the next frame; else bound its queue
            weak = frame.num_matched < self.tcfg.keyframe_min_tracked * 2
            with self.timer.stage("wait_mapper"):
                if weak:
                    self.mapper.wait_points()  # its new points, not its local BA
                else:
                    self.mapper.wait_backlog(1)
        return kf

    # =============================================================================== tracking
    def _track_frame(self, frame: Frame) -> TrackResult:
        ok = rotation_only = False
        last = self._last
        if self.state == TRACKING and last is not None and last.T_cw is not None:
            with self.timer.stage("match"):
                ok = self._track_motion_model(frame) or self._track_reference_keyframe(frame)
            if not ok:
                with self.timer.stage("rotation"):
                    ok = rotation_only = self._track_rotation_only(frame)
        if not ok:
            with self.timer.stage("relocalise"):
                ok = self._relocalise(frame)
        if ok:
            with self.timer.stage("local_map"):
                if rotation_only:
                    self._try_local_map(frame)
                else:
                    ok = self._track_local_map(frame)
        if not ok:
            self.state = LOST
            self.num_lost += 1
            self._velocity = None
            return TrackResult(LOST, None, 0)

        self._begin_tracked(frame, last)
        num = frame.num_matched
        new_kf = False
        if self._need_keyframe(frame, num) or (rotation_only and self._frames_since_kf >= 4):
            self._insert_keyframe(frame, rotation_only)
            new_kf = True
        return self._end_tracked(frame, last, rotation_only, new_kf)

    def _begin_tracked(self, frame: Frame, last: Frame | None) -> None:
        """Bookkeeping once ``frame`` has a pose: state, constant-velocity model, keyframe counter."""
        self.state = TRACKING
        if last is not None and last.T_cw is not None and frame.index - last.index <= 2:
            self._velocity = frame.T_cw @ invert(last.T_cw)
        else:
            self._velocity = None
        self._frames_since_kf += 1

    def _end_tracked(self, frame: Frame, last: Frame | None, rotation_only: bool, new_kf: bool) -> TrackResult:
        """Record the frame's pose relative to its reference keyframe and update the motion priors."""
        num = frame.num_matched
        ref = self._ref_kf
        self._record(frame, ref, frame.T_cw @ invert(ref.T_cw))
        if num >= 30 and not rotation_only:
            self._recent_depth = self._median_depth_last_of(frame) or self._recent_depth
            self._note_motion(frame, last)
            due, last_try = self._scale_check_due()
            if due:
                self._check_guessed_scale(frame, last_try)
        self._last = frame
        self._last_good_T_wc = invert(frame.T_cw)
        return TrackResult(TRACKING, frame.T_cw, num, new_keyframe=new_kf)

    def _track_rotation_only(self, frame: Frame) -> bool:
        """The camera turned in place: rotation from 2D-2D matches with the last frame, centre kept.

        Monocular tracking cannot triangulate while the camera only rotates; instead of losing those
        frames, their orientation is tracked and keyframes are still made, so that points can be
        triangulated once the camera translates again.
        """
        from slam.features.matching import match_descriptors
        from slam.geometry.rotation import estimate_rotation_ransac

        last = self._last
        if last is None or len(last.features) == 0 or len(frame.features) == 0 \
                or last.features.descriptors.shape[1] == 0:
            return False
        m = match_descriptors(last.features.descriptors, frame.features.descriptors, frame.features.binary,
                              ratio=0.8, mutual=True)
        if len(m) < 30:
            return False
        c = self.camera
        def bearings(uv):
            b = np.c_[(uv - [c.cx, c.cy]) / [c.fx, c.fy], np.ones(len(uv))]
            return b / np.linalg.norm(b, axis=1, keepdims=True)
        b1, b2 = bearings(last.kp_undist[m[:, 0]]), bearings(frame.kp_undist[m[:, 1]])
        R_21, inl = estimate_rotation_ransac(b1, b2, threshold_rad=2.0 / self.focal, seed=self.cfg.system.seed)
        if inl.sum() < max(30, 0.6 * len(m)) or not self._explained_by_rotation(b1, b2, inl):
            return False
        T_cw = np.eye(4)
        T_cw[:3, :3] = R_21 @ last.T_cw[:3, :3]
        T_cw[:3, 3] = -T_cw[:3, :3] @ invert(last.T_cw)[:3, 3]
        frame.T_cw = T_cw
        frame.point_ids[:] = -1
        carried = last.point_ids[m[inl, 0]]
        frame.point_ids[m[inl, 1]] = carried
        self.num_rotation_only += 1
        log.debug("frame %d: rotation only (%d inliers of %d)", frame.index, int(inl.sum()), len(m))
        return True

    def _explained_by_rotation(self, b1: np.ndarray, b2: np.ndarray, rot_inliers: np.ndarray) -> bool:
        """Whether a rotation explains the matches about as well as a general motion does.

        Under pure rotation every essential matrix fits, so the rotation keeps nearly all of the essential
        matrix's inliers; once the camera translates, the essential matrix keeps many more.
        """
        from slam.geometry.two_view import essential_inliers

        x1 = b1[:, :2] / b1[:, 2:3]
        x2 = b2[:, :2] / b2[:, 2:3]
        front = (b1[:, 2] > 0.1) & (b2[:, 2] > 0.1)
        if front.sum() < 10:
            return True
        _, e_inl = essential_inliers(x1[front], x2[front], self.focal, threshold_px=2.0, seed=self.cfg.system.seed)
        return bool(rot_inliers[front].sum() >= 0.9 * e_inl.sum())

    def _try_local_map(self, frame: Frame) -> bool:
        """Local-map tracking that leaves the frame as it was when it fails."""
        T, ids = frame.T_cw.copy(), frame.point_ids.copy()
        if self._track_local_map(frame):
            return True
        frame.T_cw, frame.point_ids = T, ids
        return False

    def _point_arrays(self, ids: np.ndarray):
        """Positions ``(M, 3)``, descriptors ``(M, D)`` and the ids that are still good map points."""
        points = self.map.points
        with self.map.lock:
            good = [(i, p) for i in np.asarray(ids, np.int64).tolist() if (p := points.get(i)) is not None]
            if not good:
                return np.zeros((0, 3)), None, np.zeros(0, np.int64)
            pos = np.array([p.position for _, p in good])
            desc = np.array([p.descriptor for _, p in good])
        return pos, desc, np.array([i for i, _ in good], dtype=np.int64)

    def _project(self, T_cw: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        Xc = X @ T_cw[:3, :3].T + T_cw[:3, 3]
        uv = self.camera.project_ideal(Xc)
        return uv, Xc[:, 2]

    def _track_motion_model(self, frame: Frame) -> bool:
        from slam.features.matching import search_by_projection
        from slam.optim import optimize_pose

        last = self._last
        T_pred = last.T_cw if self._velocity is None else self._velocity @ last.T_cw
        kp_last = np.flatnonzero(last.point_ids >= 0)
        if len(kp_last) == 0 or len(frame.features) == 0:
            return False
        X, desc, ids = self._point_arrays(last.point_ids[kp_last])
        if len(ids) == 0:
            return False
        # octave of the last observation of each point, for the search radius
        id_to_octave = {int(last.point_ids[k]): int(last.features.octaves[k]) for k in kp_last}
        octs = np.array([id_to_octave.get(int(i), 0) for i in ids])
        uv, z = self._project(T_pred, X)
        vis = (z > 0) & self.camera.in_image(uv)
        sf = frame.features.scale_factor
        for radius_scale in (1.0, 2.0):
            radius = self.tcfg.search_radius_px * radius_scale * sf ** octs[vis]
            match = search_by_projection(
                uv[vis], desc[vis], radius, frame.kp_undist, frame.features.descriptors, frame.features.binary,
                max_distance=self._max_distance(), ratio=0.9,
            )
            if np.count_nonzero(match >= 0) >= self.tcfg.min_tracked_points:
                break
        sel = np.flatnonzero(vis)[match >= 0]
        kp_idx = match[match >= 0]
        if len(sel) < self.tcfg.min_tracked_points:
            return False
        return self._optimise_with(frame, T_pred, X[sel], ids[sel], kp_idx)

    def _optimise_with(self, frame: Frame, T_init: np.ndarray, X: np.ndarray, ids: np.ndarray, kp_idx: np.ndarray) -> bool:
        from slam.optim import optimize_pose

        with self.timer.stage("pose"):
            res = optimize_pose(
                T_init, X, frame.kp_undist[kp_idx], frame.inv_sigma2[kp_idx], self.intrinsics,
            )
        inl = np.asarray(res.inliers, dtype=bool)
        if np.count_nonzero(inl) < self.tcfg.min_tracked_points:
            return False
        frame.T_cw = np.asarray(res.T_cw, dtype=np.float64)
        frame.point_ids[:] = -1
        frame.point_ids[kp_idx[inl]] = ids[inl]
        return True

    def _max_distance(self) -> float:
        from slam.features import matching

        fn = getattr(matching, "default_max_distance", None)
        return float(fn(self.extractor.binary)) if fn is not None else (100.0 if self.extractor.binary else 0.8)

    def _match_keyframe_pnp(self, frame: Frame, kf: KeyFrame, min_matches: int, T_guess: np.ndarray | None) -> bool:
        """Descriptor matching against a keyframe's map points, then PnP-RANSAC and pose optimisation."""
        from slam.features.matching import match_descriptors
        from slam.geometry.pnp import solve_pnp

        with self.map.lock:
            kf_idx = np.flatnonzero(kf.point_ids >= 0)
            kf_idx = np.array([i for i in kf_idx if int(kf.point_ids[i]) in self.map.points], dtype=np.int64)
            if len(kf_idx) < min_matches or len(frame.features) == 0:
                return False
            ids = kf.point_ids[kf_idx].copy()
            X = np.array([self.map.points[int(i)].position for i in ids])
            kf_desc = kf.features.descriptors[kf_idx]
        m = match_descriptors(kf_desc, frame.features.descriptors, frame.features.binary, ratio=0.85, mutual=True)
        if len(m) < min_matches:
            return False
        x = self.camera.normalize(frame.features.keypoints[m[:, 1]])
        sol = solve_pnp(X[m[:, 0]], x, self.focal, threshold_px=self.tcfg.pnp_reprojection_px * 2,
                        min_inliers=min_matches, seed=self.cfg.system.seed)
        if sol is None:
            return False
        T_cw, inl = sol
        inl = np.asarray(inl, dtype=bool)
        if np.count_nonzero(inl) < min_matches:
            return False
        return self._optimise_with(frame, T_cw, X[m[inl, 0]], ids[m[inl, 0]], m[inl, 1])

    def _track_reference_keyframe(self, frame: Frame) -> bool:
        kf = self._ref_kf
        if kf is None or kf.bad:
            return False
        return self._match_keyframe_pnp(frame, kf, max(self.tcfg.min_tracked_points, 15), None)

    def _relocalise(self, frame: Frame) -> bool:
        if not self.tcfg.relocalise:
            return False
        kfs = self.map.keyframe_list()
        if not kfs:
            return False
        # most recent keyframes first; bounded work per lost frame
        for kf in list(reversed(kfs))[:12]:
            if self._match_keyframe_pnp(frame, kf, 30, None):
                log.info("frame %d relocalised against keyframe %d", frame.index, kf.id)
                self._ref_kf = kf
                return True
        return False

    def _local_keyframes(self, frame: Frame) -> list[KeyFrame]:
        with self.map.lock:
            counts: dict[int, int] = {}
            for pid in frame.point_ids[frame.point_ids >= 0]:
                p = self.map.points.get(int(pid))
                if p is None:
                    continue
                for kid in p.observations:
                    counts[kid] = counts.get(kid, 0) + 1
            ranked = [self.map.keyframes[k] for k, _ in sorted(counts.items(), key=lambda kv: (-kv[1], -kv[0]))
                      if k in self.map.keyframes]
            local = ranked[:15]
            seen = {kf.id for kf in local}
            for kf in ranked[:5]:
                for nb in self.map.best_covisible(kf, 5):
                    if nb.id not in seen and len(local) < 25:
                        local.append(nb)
                        seen.add(nb.id)
            if ranked:
                self._ref_kf = ranked[0]
            return local

    @staticmethod
    def _searchable_from(T_cw: np.ndarray, X: np.ndarray, normals: np.ndarray, dmin: np.ndarray,
                         dmax: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Distances ``(N,)`` from the camera ``T_cw`` to points ``X (N, 3)``, and whether the local-map search
        looks for each one from there: within its scale range (0.8 ``dmin`` to 1.2 ``dmax``) and at most 60
        degrees off its mean viewing direction ``normals (N, 3)``. Whether it projects into the image is
        left to the caller."""
        ray = X - invert(T_cw)[:3, 3]
        dist = np.linalg.norm(ray, axis=1)
        cos_view = np.einsum("ij,ij->i", -ray, normals) / np.maximum(dist, 1e-12)
        return dist, (dist >= 0.8 * dmin) & (dist <= 1.2 * dmax) & (cos_view > 0.5)

    def _track_local_map(self, frame: Frame) -> bool:
        from slam.features.matching import search_by_projection

        local_kfs = self._local_keyframes(frame)
        if not local_kfs:
            return frame.num_matched >= self.tcfg.min_tracked_points
        matched = set(int(i) for i in frame.point_ids[frame.point_ids >= 0])
        with self.map.lock:
            pts = [p for p in self.map.points_of(local_kfs) if p.id not in matched]
            if pts:
                X = np.array([p.position for p in pts])
                normals = np.array([p.normal for p in pts])
                dmin = np.array([p.min_distance for p in pts])
                dmax = np.array([p.max_distance for p in pts])
                desc = np.array([p.descriptor for p in pts])
        if pts:
            T = frame.T_cw
            uv, z = self._project(T, X)
            dist, searchable = self._searchable_from(T, X, normals, dmin, dmax)
            vis = (z > 0) & self.camera.in_image(uv) & searchable
            vis_idx = np.flatnonzero(vis)
            if len(vis_idx):
                for i in vis_idx:
                    pts[i].visible += 1
                sf = frame.features.scale_factor
                with np.errstate(divide="ignore", invalid="ignore"):
                    level = np.ceil(np.log(np.maximum(dmax[vis_idx] / 1.2 / np.maximum(dist[vis_idx], 1e-9), 1e-9)) / np.log(sf))
                level = np.clip(np.nan_to_num(level), 0, self.max_levels - 1)
                radius = self.tcfg.local_map_radius_px * sf ** level
                taken = frame.point_ids >= 0
                match = search_by_projection(
                    uv[vis_idx], desc[vis_idx], radius, frame.kp_undist, frame.features.descriptors,
                    frame.features.binary, max_distance=self._max_distance(), ratio=0.8, taken=taken,
                )
                ok = match >= 0
                frame.point_ids[match[ok]] = np.array([pts[i].id for i in vis_idx[ok]], dtype=np.int64)
        kp_idx = np.flatnonzero(frame.point_ids >= 0)
        X2, _, ids = self._point_arrays(frame.point_ids[kp_idx])
        if len(ids) < len(kp_idx):
            keep = np.isin(frame.point_ids[kp_idx], ids)
            kp_idx = kp_idx[keep]
        if len(kp_idx) < self.tcfg.min_tracked_points:
            return False
        ok = self._optimise_with(frame, frame.T_cw, X2, frame.point_ids[kp_idx].copy(), kp_idx)
        if ok:
            with self.map.lock:
                for pid in frame.point_ids[frame.point_ids >= 0]:
                    p = self.map.points.get(int(pid))
                    if p is not None:
                        p.found += 1
        return ok and frame.num_matched >= self.tcfg.min_tracked_points

    # =============================================================================== loss and reset
    def _reset(self, reason: str) -> None:
        """Start a new map; the last tracked frame becomes the reference of its initialisation, so the new
        map can be placed exactly where the old one ended (at the scene depth seen last)."""
        log.warning("%s: starting a new map", reason)
        self.num_resets += 1
        last = self._last
        if last is not None and last.T_cw is not None:
            self._last_good_T_wc = invert(last.T_cw)
        depth = self._median_depth_last()
        if depth is not None:
            self._recent_depth = depth
        self._last_good_depth = self._recent_depth
        self.map.compact()  # only its poses and points are needed from now on
        self._previous_map_points = self.map.point_cloud()[0]  # a plane in them may set the new map's scale
        self.map = self._new_map()
        self.state = INITIALISING
        usable = last is not None and last.T_cw is not None and len(last.features) >= self.tcfg.init_min_matches \
            and last.features.descriptors.shape[1] > 0
        self._init_ref = last if usable else None
        if usable:
            last.point_ids = np.full(len(last.features), -1, np.int64)
        self._last = None
        self._velocity = None
        self._ref_kf = None
        self._last_kf = None
        self._lost_in_row = 0

    def _median_depth_last(self) -> float | None:
        return self._median_depth_last_of(self._last)

    def _median_depth_last_of(self, last: Frame | None) -> float | None:
        """Median depth of the map points a tracked frame observes."""
        if last is None or last.T_cw is None:
            return None
        X, _, ids = self._point_arrays(last.point_ids[last.point_ids >= 0])
        if len(ids) == 0:
            return None
        z = (X @ last.T_cw[:3, :3].T + last.T_cw[:3, 3])[:, 2]
        z = z[z > 0]
        return float(np.median(z)) if len(z) else None

    def _recent_speed(self) -> float | None:
        """The camera's cruising speed (distance per frame) before the loss: the upper quartile over the last
        frames tracked with map points. A view is mostly lost when the camera stops and looks around; it
        then moves on at its usual pace, not at the pace of the stop, which a median over the slowing frames
        would give. While a scale guess awaits its check, the cruising speed from before the guess."""
        if self._scale_check is not None:  # the speeds since a guess are at the guessed scale
            return self._scale_check[2]
        if len(self._speed_samples) < 3:
            return None
        return float(np.percentile(self._speed_samples, 75))

    def _note_motion(self, frame: Frame, last: Frame | None) -> None:
        if last is None or last.T_cw is None or frame.index <= last.index:
            return
        from slam.geometry.se3 import rotation_angle

        rel = frame.T_cw @ invert(last.T_cw)
        if np.degrees(rotation_angle(rel[:3, :3])) > 1.0 * (frame.index - last.index):
            return  # turning: the speed of such frames says little about the usual pace
        step = np.linalg.norm(invert(frame.T_cw)[:3, 3] - invert(last.T_cw)[:3, 3]) / (frame.index - last.index)
        self._speed_samples.append(step)
        del self._speed_samples[:-self._speed_history_len()]

    def _guessed_scale_from(self, from_frame: int, pivot: np.ndarray, before: np.ndarray) -> None:
        """The scale of the current map, chained to a lost one from source frame ``from_frame`` on, is a
        prior (no map point links the two); ``pivot (3,)``: the lost map's last camera centre, ``before
        (N, 3)``: its world points. Once the camera has moved on for a while, :meth:`_check_guessed_scale`
        measures the scale against a plane in both maps, else against the cruising speed before (where a
        check is still pending from an earlier chain, its cruising speed, measured at a known scale)."""
        cruise = self._recent_speed()
        self._scale_check = None
        if cruise is not None:
            self._scale_check = (int(from_frame), np.asarray(pivot, np.float64), cruise, np.asarray(before))
        self._speed_samples = []

    def _speed_history_len(self) -> int:
        """How many speed samples are kept (``tracking.speed_history_frames``, at least 3)."""
        return max(int(self.tcfg.speed_history_frames), 3)

    def _scale_check_due(self) -> tuple[bool, bool]:
        """Whether a pending scale check runs now, and whether it is its last try: from
        ``tracking.guess_check_frames`` speed samples after the guess on, every 5 samples, the last try
        ``tracking.guess_plane_wait_frames`` samples later (sooner where the capped speed history,
        ``tracking.speed_history_frames``, stops growing before that)."""
        t = self.tcfg
        if self._scale_check is None or t.guess_check_frames <= 0:
            return False, False
        waited = len(self._speed_samples) - t.guess_check_frames
        patience = 5 * (min(t.guess_plane_wait_frames, self._speed_history_len() - t.guess_check_frames) // 5)
        return waited >= 0 and waited % 5 == 0, waited >= patience

    def _check_guessed_scale(self, frame: Frame, last_try: bool = True) -> None:
        """After a guessed scale: a plane seen in the lost map and in the new one measures the factor by
        which the new map is scaled about the pivot; while none is found and this is not the ``last_try``,
        the check stays pending. On the last try, where the camera's speed since the guess and its cruising
        speed before (both the upper quartile of the distances a frame, in map units) disagree by more than
        ``tracking.guess_check_ratio``, the new map is scaled so that they agree (a camera that stopped and
        turned moves on at its usual pace). The mapper is let finish first; the frame's pose, the motion
        model and the recorded frames follow."""
        from slam.geometry.triangulation import camera_center

        from_frame, pivot, cruise, before = self._scale_check
        f = self._shared_plane_factor(pivot, before)
        if f is None and not last_try:
            return
        self._scale_check = None
        if f is not None:
            log.info("frame %d: a plane seen in both maps gives the new map's scale factor %.3f", frame.index, f)
            if abs(np.log(f)) <= np.log(1.02):
                return
        else:
            speed = float(np.percentile(self._speed_samples, 75))  # the same statistic as the cruising speed
            if not speed > 0:
                return
            f = cruise / speed
            log.info("frame %d: the speed since the guess %.4g, before it %.4g", frame.index, speed, cruise)
            if abs(np.log(f)) <= np.log(self.tcfg.guess_check_ratio):
                return
        self.mapper.wait_idle()
        about_pivot = np.eye(4)
        about_pivot[:3, 3] = (1.0 - f) * pivot  # x -> pivot + f (x - pivot)
        self.map.transform(about_pivot, f)
        with self.map.lock:
            moved = list(self.map.points.values())
            num_kfs = len(self.map.keyframes)
        self.map.update_points_geometry(moved, self.extractor_scale_factor(), self.max_levels)
        for r in self.records:
            if r.map_id == self.map.id:
                r.T_c_ref = r.T_c_ref.copy()
                r.T_c_ref[:3, 3] *= f
        c = camera_center(frame.T_cw)
        frame.T_cw = frame.T_cw.copy()
        frame.T_cw[:3, 3] = -frame.T_cw[:3, :3] @ (pivot + f * (c - pivot))
        if self._velocity is not None:
            self._velocity = self._velocity.copy()
            self._velocity[:3, 3] *= f
        self._speed_samples = [v * f for v in self._speed_samples]
        if self._recent_depth is not None:
            self._recent_depth *= f
        self.num_scale_corrections += 1
        log.info("frame %d: the map since frame %d was scaled by %.3f (%d keyframes, %d points)", frame.index,
                 from_frame, f, num_kfs, len(moved))

    def _shared_plane_factor(self, pivot: np.ndarray, before: np.ndarray) -> float | None:
        """The scale factor of the current map from a plane it shares with the lost map's points ``before
        (N, 3)`` about ``pivot (3,)`` (see :func:`slam.geometry.planes.shared_plane_scale`), or None."""
        from slam.geometry.planes import shared_plane_scale

        with self.map.lock:
            X = np.array([p.position for p in self.map.points.values()], np.float64).reshape(-1, 3)
        return shared_plane_scale(before, X, pivot)

    def _chain_to_previous_map(self, kf0: KeyFrame, kf1: KeyFrame) -> None:
        """Place a new map so that its first keyframe sits where the camera was last seen.

        The scale comes from the scene depth seen last (the new view taken as deep as the old one), else
        from the camera speed before the loss (distance per frame); both are priors, since no point is
        shared with the old map. :meth:`_check_guessed_scale` checks it later against a plane seen in both
        maps, else against the speed: of the two priors, the depth first and the speed as its check made
        5 of 42 room runs miss 1% of path, the speed alone 8 (docs/RESULTS.md, "Fourteenth session").
        """
        scale, prior = 1.0, "none"
        speed_old = self._recent_speed()
        frames = max(kf1.frame_index - kf0.frame_index, 1)
        speed_new = np.linalg.norm(kf1.center - kf0.center) / frames
        if self._last_good_depth is not None:
            scale, prior = self._last_good_depth, "scene depth seen last"  # the new map's median depth is 1
        elif speed_old is not None and speed_new > 0:
            scale, prior = speed_old / speed_new, "cruising speed before the loss"
        log.info("map %d placed where the last one ended, scale %.4g (prior: %s)", self.map.id, scale, prior)
        T_new_old = self._last_good_T_wc @ kf0.T_cw  # kf0's world frame -> previous world frame
        self.map.transform(T_new_old, scale)
        self._chain_anchor_T_wc = self._last_good_T_wc.copy()
        # the prior is checked once the camera has moved on: against a plane seen in both maps, else the
        # speed over more frames than the two the prior had
        self.scale_guess_frames.append(int(kf0.frame_index))
        before = self._previous_map_points if self._previous_map_points is not None else np.zeros((0, 3))
        self._guessed_scale_from(kf0.frame_index, self._last_good_T_wc[:3, 3], before)
