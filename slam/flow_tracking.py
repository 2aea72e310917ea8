"""Optical-flow front end: Shi-Tomasi corners carried from frame to frame by pyramidal Lucas-Kanade flow.

Between keyframes no descriptor is computed: the corners of the last keyframe (and the map points they
observe) are carried by ``cv2.calcOpticalFlowPyrLK`` with a forward-backward check, and the pose comes
from motion-only BA on them. At a keyframe new corners fill the empty parts of the image and every
keypoint gets a descriptor (SIFT, ORB or SuperPoint at the corner), so local-map fusion, triangulation
and relocalisation keep working on descriptors. Each keypoint keeps the id of its flow *track*; the
local mapper triangulates new points between keyframes from shared track ids first.

``frontend: hybrid`` falls back to full descriptor extraction and matching when flow keeps too few
inliers (a jump, blur, a sudden light change); ``flow`` uses descriptors only to relocalise after loss.
"""

from __future__ import annotations

import logging

import numpy as np

from slam.features.base import Features
from slam.features.masks import usable_at
from slam.features.photometric import normalize_luminance, to_gray
from slam.geometry.se3 import invert
from slam.map.frame import Frame
from slam.tracking import INITIALISING, LOST, TRACKING, FrameRecord, TrackResult, Tracker

log = logging.getLogger(__name__)

# frames before a replaced initialisation reference kept for localisation once a map exists (a camera
# standing still never initialises: the history stays bounded)
_MAX_FRAMES_BEFORE_REFERENCE = 150


class _PyramidalLK:
    """``cv2.calcOpticalFlowPyrLK`` on ``(N, 2)`` arrays: returns positions ``(N, 2)`` and a converged bool."""

    def __init__(self, win: int, iterations: int, epsilon: float) -> None:
        import cv2

        self._cv2 = cv2
        self.win = (int(win), int(win))
        self.criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, int(iterations), float(epsilon))

    def __call__(self, img0: np.ndarray, img1: np.ndarray, pts: np.ndarray, start: np.ndarray | None,
                 max_level: int) -> tuple[np.ndarray, np.ndarray]:
        if len(pts) == 0:
            return np.zeros((0, 2), np.float32), np.zeros(0, bool)
        cv2 = self._cv2
        a = np.ascontiguousarray(pts, np.float32).reshape(-1, 1, 2)
        b = None if start is None else np.ascontiguousarray(start, np.float32).reshape(-1, 1, 2).copy()
        flags = 0 if start is None else cv2.OPTFLOW_USE_INITIAL_FLOW
        p, st, _ = cv2.calcOpticalFlowPyrLK(img0, img1, a, b, winSize=self.win, maxLevel=int(max_level),
                                            criteria=self.criteria, flags=flags)
        return p.reshape(-1, 2), st.ravel() == 1


def _track_checked(lk: _PyramidalLK, img0: np.ndarray, img1: np.ndarray, p0: np.ndarray, start: np.ndarray | None,
                   search_levels: int, levels: int, fb_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Forward LK from ``start`` on ``search_levels``, then (``fb_threshold > 0``) the backward check from
    scratch on ``levels``."""
    p1, good = lk(img0, img1, p0, start, search_levels)
    if fb_threshold > 0:
        p0r, back = lk(img1, img0, p1, None, levels)
        good &= back & (np.linalg.norm(p0r - p0, axis=1) < fb_threshold)
    return p1, good


def track_flow(prev_gray: np.ndarray, gray: np.ndarray, pts: np.ndarray, win: int, levels: int,
               fb_threshold: float, mask: np.ndarray | None = None, guess: np.ndarray | None = None,
               iterations: int = 30, epsilon: float = 0.01,
               guess_levels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Carry ``pts (N, 2)`` from ``prev_gray`` to ``gray``; returns new positions and a ``(N,)`` bool of good tracks.

    Each pyramid level iterates at most ``iterations`` times or until the update is below ``epsilon`` px.
    ``guess (N, 2)`` predicts where each track lands (NaN rows: no prediction, search from the old
    position). With ``guess_levels`` below ``levels``, predicted tracks search only that many pyramid
    levels above the image (a good prediction needs no coarse search; this is most of the forward cost),
    and those that fail there (or fail the backward check) are searched again from scratch with all levels.

    A track is good when LK converged both ways, the backward track (from scratch, all levels) returns
    within ``fb_threshold`` pixels, and the new position lies inside the image (and the mask).
    ``fb_threshold <= 0`` skips the backward track (half the cost; outliers are then left to the pose's
    robust kernel and the mapper's epipolar checks).
    """
    if len(pts) == 0:
        return np.zeros((0, 2), np.float32), np.zeros(0, bool)
    p0 = np.ascontiguousarray(pts, dtype=np.float32).reshape(-1, 2)
    n = len(p0)
    lk = _PyramidalLK(win, iterations, epsilon)
    predicted = np.zeros(n, bool)
    if guess is not None:
        guess = np.asarray(guess, np.float32).reshape(-1, 2)
        predicted = np.isfinite(guess).all(axis=1)
    short = levels if guess_levels is None else min(int(guess_levels), levels)
    if guess is None or short >= levels:
        start = None if guess is None else np.where(predicted[:, None], guess, p0)
        p1, good = _track_checked(lk, prev_gray, gray, p0, start, levels, levels, fb_threshold)
    else:
        p1 = p0.copy()
        good = np.zeros(n, bool)
        rows = np.flatnonzero(predicted)
        p1[rows], good[rows] = _track_checked(lk, prev_gray, gray, p0[rows], guess[rows], short, levels,
                                              fb_threshold)
        rows = np.flatnonzero(~good)  # no prediction, or lost in the short search: search from scratch
        p1[rows], good[rows] = _track_checked(lk, prev_gray, gray, p0[rows], None, levels, levels, fb_threshold)
    h, w = gray.shape[:2]
    good &= (p1[:, 0] >= 0) & (p1[:, 1] >= 0) & (p1[:, 0] <= w - 1) & (p1[:, 1] <= h - 1)
    if mask is not None and np.any(good):
        good &= usable_at(mask, p1)
    return p1, good


def detect_corners(gray: np.ndarray, mask: np.ndarray | None, existing: np.ndarray, max_corners: int,
                   min_distance: int, quality: float = 0.005) -> np.ndarray:
    """New Shi-Tomasi corners ``(M, 2)`` float32 at least ``min_distance`` from ``existing (N, 2)``."""
    import cv2

    need = max_corners - len(existing)
    if need <= 0:
        return np.zeros((0, 2), np.float32)
    free = np.full(gray.shape[:2], 255, np.uint8) if mask is None else mask.copy()
    for x, y in np.rint(existing).astype(int):
        cv2.circle(free, (int(x), int(y)), int(min_distance), 0, -1)
    corners = cv2.goodFeaturesToTrack(gray, maxCorners=int(need), qualityLevel=quality,
                                      minDistance=int(min_distance), mask=free, blockSize=7)
    if corners is None:
        return np.zeros((0, 2), np.float32)
    corners = corners.reshape(-1, 2)
    if min(gray.shape[:2]) < 11:
        return corners.astype(np.float32)  # too small for the sub-pixel window
    cv2.cornerSubPix(gray, corners.reshape(-1, 1, 2), (3, 3), (-1, -1),
                     (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 20, 0.03))
    return corners.astype(np.float32)


class FlowTracker(Tracker):
    """Tracker whose frame-to-frame association is optical flow (see the module docstring)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.hybrid = self.cfg.tracking.frontend == "hybrid"
        self._next_track_id = 0
        self._prev_gray: np.ndarray | None = None
        self._prev_mask: np.ndarray | None = None
        # tracks carried from frame to frame: pixels (distorted), ids, index into the latest keyframe
        self._pts = np.zeros((0, 2), np.float32)
        self._tids = np.zeros(0, np.int64)
        self._kf_idx = np.zeros(0, np.int64)
        self._steps = np.zeros((0, 2), np.float32)  # each track's last frame-to-frame motion (NaN: none yet)
        self._init_frame: Frame | None = None
        self._init_pts0 = np.zeros((0, 2), np.float32)
        self._num_tracks_at_kf = 0
        self._noise_scale = 1.0  # the flow tracks' pixel noise in units of the 1 px model (>= 1)
        self.num_fallbacks = 0
        self.num_two_view = 0
        self.num_init_gap = 0
        # the last two-view motion tried resolved a translation that no map point scales
        self._unscaled_motion = False
        # frames between the initialisation reference and the current frame: (index, timestamp, pts, tids)
        self._init_gap: list[tuple[int, float, np.ndarray, np.ndarray]] = []
        # frames before the reference (earlier references and their gaps) whose tracks it carried on
        self._before_init_ref: list[tuple[int, float, np.ndarray, np.ndarray]] = []
        # frames lost since the last tracked one, with the flow tracks carried into them
        self._lost_frames: list[tuple[int, float, np.ndarray, np.ndarray]] = []

    # ------------------------------------------------------------------------------------------- frames
    def prepare(self, fd, preprocessor) -> tuple[Frame, np.ndarray | None]:
        """A Frame carrying the flow tracks (no descriptors); keypoints are extracted only when needed."""
        gray = to_gray(fd.image)
        if self.cfg.features.clahe:
            gray = normalize_luminance(gray, self.cfg.features.clahe_clip, self.cfg.features.clahe_tiles)
        mask = preprocessor.frame_mask(fd.image)
        self._preprocessor = preprocessor
        frame = preprocessor.frame_from_features(fd.index, fd.timestamp, fd.image, gray,
                                                 Features.empty(0, self.extractor.binary))
        frame.mask = mask
        return frame, mask

    def _flow_features(self, pts: np.ndarray) -> Features:
        n = len(pts)
        return Features(
            keypoints=np.asarray(pts, np.float32).reshape(-1, 2), descriptors=np.zeros((n, 0), np.float32),
            octaves=np.zeros(n, np.int32), sizes=np.full(n, 7.0, np.float32), angles=np.full(n, -1.0, np.float32),
            responses=np.zeros(n, np.float32), binary=self.extractor.binary, scale_factor=self.extractor_scale_factor(),
        )

    def _set_keypoints(self, frame: Frame, features: Features, track_ids: np.ndarray) -> None:
        from slam.preprocess import sample_colors

        frame.features = features
        frame.kp_undist = self.camera.undistort_points(features.keypoints) if len(features) else np.zeros((0, 2))
        frame.inv_sigma2 = 1.0 / (features.scale_factor ** (2.0 * features.octaves.astype(np.float64))
                                  * self._noise_scale ** 2)
        frame.colors = sample_colors(frame.image, features.keypoints)
        frame.point_ids = np.full(len(features), -1, np.int64)
        frame.track_ids = np.asarray(track_ids, np.int64)

    def _new_track_ids(self, n: int) -> np.ndarray:
        ids = np.arange(self._next_track_id, self._next_track_id + n, dtype=np.int64)
        self._next_track_id += n
        return ids

    def _describe_keyframe_points(self, frame: Frame, mask: np.ndarray | None, pts: np.ndarray,
                                  tids: np.ndarray, add_corners: bool = True) -> None:
        """Fill empty areas with new corners, describe every keypoint, make them the frame's keypoints."""
        t = self.tcfg
        new = detect_corners(frame.gray, mask, pts, t.flow_max_corners, t.flow_min_corner_distance_px) \
            if add_corners else np.zeros((0, 2), np.float32)
        all_pts = np.concatenate([pts.reshape(-1, 2), new]).astype(np.float32)
        all_tids = np.concatenate([tids, self._new_track_ids(len(new))])
        with self.timer.stage("describe"):
            feats, kept = self.extractor.describe(frame.gray, all_pts, None)
        kept = np.asarray(kept, np.int64)
        self._set_keypoints(frame, feats, all_tids[kept])
        self._kept_from_input = kept

    # ------------------------------------------------------------------------------------------- flow
    def _carry(self, frame: Frame, mask: np.ndarray | None, guess: np.ndarray | None = None) -> np.ndarray:
        """Carry the current tracks into ``frame``; returns the bool of surviving tracks."""
        if self._prev_gray is None or len(self._pts) == 0:
            return np.zeros(len(self._pts), bool)
        t = self.tcfg
        with self.timer.stage("flow"):
            p1, good = track_flow(self._prev_gray, frame.gray, self._pts, t.flow_win_size, t.flow_levels,
                                  t.flow_fb_threshold_px * self._noise_scale, mask, guess, t.flow_iterations,
                                  t.flow_epsilon_px,
                                  t.flow_guess_levels if t.flow_guess_levels >= 0 else None)
        self._steps = p1 - self._pts
        self._pts = p1
        return good

    def _keep_tracks(self, keep: np.ndarray) -> None:
        self._pts = self._pts[keep]
        self._tids = self._tids[keep]
        self._kf_idx = self._kf_idx[keep]
        self._steps = self._steps[keep]

    # ------------------------------------------------------------------------------------------- init
    def _initialise(self, frame: Frame) -> TrackResult:
        from slam.geometry.two_view import initialize_two_view

        mask = getattr(frame, "mask", None)
        t = self.tcfg
        if self._init_frame is None:
            lost, self._lost_frames = self._lost_frames, []
            if lost:  # the tracks carried through the lost frames go on into the new map's reference
                self._keep_tracks(self._carry(frame, mask))
            self._start_init_reference(frame, mask, lost)
            return TrackResult(INITIALISING, None, 0)
        good = self._carry(frame, mask)
        self._keep_tracks(good)
        self._init_pts0 = self._init_pts0[good]
        self._prev_gray = frame.gray
        if len(self._pts) < t.init_min_matches:
            self._start_init_reference(frame, mask)
            return TrackResult(INITIALISING, None, 0)
        self._init_gap.append((frame.index, frame.timestamp, self._pts.copy(), self._tids.copy()))
        del self._init_gap[:-t.init_max_frames_gap]  # a camera standing still never initialises: stay bounded
        disp = np.median(np.linalg.norm(self._pts - self._init_pts0, axis=1))
        if disp < 2.0:
            return TrackResult(INITIALISING, None, len(self._pts))
        x1 = self.camera.normalize(self._init_pts0)
        x2 = self.camera.normalize(self._pts)
        with self.timer.stage("init"):
            res = initialize_two_view(x1, x2, self.focal, min_parallax_deg=t.init_min_parallax_deg,
                                      min_triangulated=t.init_min_points, seed=self.cfg.system.seed)
        gap = frame.index - self._init_frame.index
        if res is None or not getattr(res, "ok", True):
            if gap >= t.init_max_frames_gap:
                self._start_init_reference(frame, mask, self._reference_history())
            return TrackResult(INITIALISING, None, len(self._pts))
        ref = self._init_frame
        # reference keyframe: its corners that survived; current: the tracked ones + new corners
        self._describe_keyframe_points(ref, ref.mask, self._init_pts0, self._tids, add_corners=False)
        kept_ref = self._kept_from_input
        self._describe_keyframe_points(frame, mask, self._pts, self._tids)
        kept_cur = self._kept_from_input
        # correspondences through track ids
        common, ia, ib = np.intersect1d(ref.track_ids, frame.track_ids, return_indices=True)
        # map each common track back to its row in the two-view result
        row_of_tid = {int(tid): k for k, tid in enumerate(self._tids)}
        rows = np.array([row_of_tid[int(tid)] for tid in common], dtype=np.int64)
        matches = np.stack([ia, ib], axis=1)
        sub = _SubsetResult(res, rows)
        if not self._create_initial_map(ref, frame, matches, sub):
            if gap >= t.init_max_frames_gap:
                self._start_init_reference(frame, mask, self._reference_history())
            return TrackResult(INITIALISING, None, len(self._pts))
        self._init_frame = None
        self._init_gap.pop()  # the current frame: a keyframe of the new map
        self._localise_waiting_frames(ref)
        self._anchor_earliest_frame(ref, frame)
        self._reset_tracks_from_keyframe(frame)
        return TrackResult(TRACKING, frame.T_cw, frame.num_matched, new_keyframe=True, map_created=True)

    def _localise_waiting_frames(self, ref: Frame) -> None:
        """Give poses, now that there is a map, to the frames tracked while it waited to be initialised.

        Each such frame carried flow tracks that became map points; they give it a motion-only BA (g2o,
        Huber). The frames between the two initial keyframes start from the pose interpolated between
        them; the frames before the reference (earlier references, lost frames) go back in time from the
        reference keyframe, each starting from the pose found for the frame after it. A frame that does
        not fit the map (too few inliers) stays without a pose.
        """
        from slam.geometry.se3 import interpolate_pose

        gap, self._init_gap = self._init_gap, []
        before, self._before_init_ref = self._before_init_ref, []
        kf1 = self._last_kf
        with self.map.lock:
            kf0 = next((k for k in self.map.keyframes.values() if k.frame_index == ref.index), None)
            if kf0 is None or kf1 is None or not (gap or before):
                return
            rows = np.flatnonzero(kf1.point_ids >= 0)
            map_X = self._point_positions(kf1.point_ids[rows])
            in_map = np.isfinite(map_X).all(axis=1)
            map_X, map_tids = map_X[in_map], kf1.track_ids[rows[in_map]]
            T0, T1 = kf0.T_cw.copy(), kf1.T_cw.copy()

        def localise(index: int, timestamp: float, pts: np.ndarray, tids: np.ndarray,
                     T_guess: np.ndarray) -> np.ndarray | None:
            T_cw = self._fit_tracks_to_map(pts, tids, map_X, map_tids, T_guess)
            if T_cw is not None:
                self.records.append(FrameRecord(index, timestamp, self.map.id, kf0, T_cw @ invert(T0)))
                self.num_init_gap += 1
            return T_cw

        span = max(kf1.frame_index - kf0.frame_index, 1)
        for index, timestamp, pts, tids in gap:
            localise(index, timestamp, pts, tids, interpolate_pose(T0, T1, (index - kf0.frame_index) / span))
        T_guess = T0
        for index, timestamp, pts, tids in reversed(before):
            T_cw = localise(index, timestamp, pts, tids, T_guess)
            T_guess = T_guess if T_cw is None else T_cw

    def _anchor_earliest_frame(self, ref: Frame, cur: Frame) -> None:
        """A new map chained to the old one sits with its first keyframe where the old map's last frame was.
        Where frames before that keyframe have been localised since, the earliest of them is nearer in time
        to that last frame: move the map rigidly so that this frame sits there instead."""
        anchor, self._chain_anchor_T_wc = self._chain_anchor_T_wc, None
        mine = [r for r in self.records if r.map_id == self.map.id]
        if anchor is None or not mine:
            return
        earliest = min(mine, key=lambda r: r.index)
        if earliest.index >= ref.index:
            return  # the first keyframe is the earliest frame: already in place
        self.mapper.wait_idle()  # the mapper may be adjusting the new keyframes: no BA result left to apply
        with self.map.lock:
            T_cw = earliest.T_cw()
        self.map.transform(anchor @ T_cw)
        with self.map.lock:
            cur.T_cw = self._last_kf.T_cw.copy()

    def _fit_tracks_to_map(self, pts: np.ndarray, tids: np.ndarray, map_X: np.ndarray, map_tids: np.ndarray,
                           T_guess: np.ndarray) -> np.ndarray | None:
        """Motion-only BA (g2o, Huber) of a frame's tracks ``pts (N, 2)`` (distorted pixels, ids ``tids``) on
        the map points ``map_X (M, 3)`` of the same track ids; ``T_cw`` or None where too few fit."""
        from slam.optim import optimize_pose

        _, i_pts, i_map = np.intersect1d(tids, map_tids, return_indices=True)
        if len(i_pts) < self.tcfg.min_tracked_points:
            return None
        with self.timer.stage("pose"):
            res = optimize_pose(T_guess, map_X[i_map], self.camera.undistort_points(pts[i_pts]),
                                np.ones(len(i_pts)), self.intrinsics)
        if res.num_inliers < max(self.tcfg.min_tracked_points, len(i_pts) // 2):
            return None
        return res.T_cw

    def _reference_history(self) -> list[tuple[int, float, np.ndarray, np.ndarray]]:
        """The waiting reference and the frames tracked since (not the current one), with their tracks."""
        old = self._init_frame
        return [(old.index, old.timestamp, self._init_pts0.copy(), self._tids.copy())] + self._init_gap[:-1]

    def _start_init_reference(self, frame: Frame, mask: np.ndarray | None,
                              history: list[tuple[int, float, np.ndarray, np.ndarray]] | None = None) -> None:
        """Make ``frame`` the two-view reference, with fresh corners where no track is carried on.

        ``history``: the frames tracked before ``frame`` whose tracks carry on into it, ``(index, timestamp,
        pts, tids)`` each: those since a reference that waited too long (too little parallax, an ambiguous
        motion) or since tracking was lost. The tracks in ``self._pts`` must then be ``frame``'s. Once a
        map exists those frames are localised on it (those that share enough tracks, the latest
        ``_MAX_FRAMES_BEFORE_REFERENCE`` of them).
        """
        t = self.tcfg
        kept_pts, kept_tids = np.zeros((0, 2), np.float32), np.zeros(0, np.int64)
        if history and len(self._pts):
            kept_pts, kept_tids = self._pts.astype(np.float32), self._tids.copy()
            # only frames that still share enough tracks can be localised later
            self._before_init_ref = [h for h in self._before_init_ref + history
                                     if np.count_nonzero(np.isin(h[3], kept_tids)) >= t.min_tracked_points]
            del self._before_init_ref[:-_MAX_FRAMES_BEFORE_REFERENCE]
        else:
            self._before_init_ref = []
        new = detect_corners(frame.gray, mask, kept_pts, t.flow_max_corners, t.flow_min_corner_distance_px)
        pts = np.concatenate([kept_pts.reshape(-1, 2), new]).astype(np.float32)
        self._init_frame = frame
        self._init_gap = []
        self._pts = pts
        self._init_pts0 = pts.copy()
        self._tids = np.concatenate([kept_tids, self._new_track_ids(len(new))])
        self._kf_idx = np.full(len(pts), -1, np.int64)
        self._steps = np.full((len(pts), 2), np.nan, np.float32)
        self._prev_gray = frame.gray

    def _reset_tracks_from_keyframe(self, frame: Frame) -> None:
        """After a keyframe, the tracks are exactly its keypoints (tracks carried on keep their last motion)."""
        steps = np.full((len(frame.features), 2), np.nan, np.float32)
        _, i_new, i_old = np.intersect1d(frame.track_ids, self._tids, assume_unique=True, return_indices=True)
        steps[i_new] = self._steps[i_old]
        self._steps = steps
        self._pts = frame.features.keypoints.astype(np.float32).copy()
        self._tids = frame.track_ids.copy()
        self._kf_idx = np.arange(len(self._pts), dtype=np.int64)
        self._num_tracks_at_kf = len(self._pts)
        self._prev_gray = frame.gray

    # ------------------------------------------------------------------------------------------- tracking
    def _predicted_pixels(self, T_pred: np.ndarray, point_ids: np.ndarray) -> np.ndarray:
        """Where each track ``(N, 2)`` should land: its map point ``point_ids (N,)`` projected with ``T_pred``
        (distorted pixels), else its position moved by its last step; NaN rows where neither is known."""
        guess = self._pts + self._steps
        rows = np.flatnonzero(point_ids >= 0)
        if len(rows) == 0:
            return guess
        X = self._point_positions(point_ids[rows])
        Xc = X @ T_pred[:3, :3].T + T_pred[:3, 3]
        ok = np.isfinite(Xc).all(axis=1) & (Xc[:, 2] > 0)
        uv = self.camera.project(Xc[ok])
        fin = np.isfinite(uv).all(axis=1)
        guess[rows[ok][fin]] = uv[fin]
        return guess

    def _track_frame(self, frame: Frame) -> TrackResult:
        mask = getattr(frame, "mask", None)
        last = self._last
        kf = self._last_kf
        ok = False
        # a frame just lost keeps its flow tracks: the next ones (until the loss starts a new map) still try
        # the tracks' two-view motion, which a little more parallax often resolves
        lost = self.state == LOST
        carried = self.state in (TRACKING, LOST) and last is not None and last.T_cw is not None \
            and kf is not None and not kf.bad
        if carried:
            with self.map.lock:
                point_ids = kf.point_ids[self._kf_idx].copy() if len(kf.point_ids) else np.full(len(self._kf_idx), -1)
            T_pred = last.T_cw if self._velocity is None else self._velocity @ last.T_cw
            guess = self._predicted_pixels(T_pred, point_ids) if self._velocity is not None else None
            prev_pts = self._pts.copy()
            good = self._carry(frame, mask, guess)
            self._keep_tracks(good)
            point_ids = point_ids[good]
            ok = self._pose_from_tracks(frame, T_pred, point_ids)
            if not ok:
                with self.timer.stage("two_view"):
                    if self._pose_from_keyframe_motion(frame, point_ids):
                        return self._finish_tracked(frame, mask, force_keyframe=True)
                # not after a lost frame (the turn since ``last`` is unknown), nor where the tracks resolved a
                # translation that no map point scales (a rotation would freeze the moving camera's centre)
                with self.timer.stage("rotation"):
                    if not lost and not self._unscaled_motion \
                            and self._rotation_from_tracks(frame, prev_pts[good], point_ids):
                        force = self._frames_since_kf >= 3
                        return self._finish_tracked(frame, mask, force_keyframe=force, rotation_only=True)
                with self.timer.stage("two_view"):
                    # the tracks are no longer explained by a rotation: the camera moves, so a shorter
                    # baseline is better than losing the view (and starting a map at another scale)
                    if not self._unscaled_motion and self._pose_from_keyframe_motion(
                            frame, point_ids, 0.5 * self.cfg.mapping.min_parallax_deg):
                        return self._finish_tracked(frame, mask, force_keyframe=True)
        if not ok and (self.hybrid or self.state != TRACKING):
            ok = self._descriptor_fallback(frame, mask)
            if ok:
                return self._finish_tracked(frame, mask, force_keyframe=True)
        if not ok:
            self.state = LOST
            self.num_lost += 1
            self._velocity = None
            if carried:
                self._lost_frames.append((frame.index, frame.timestamp, self._pts.copy(), self._tids.copy()))
            else:
                self._lost_frames = []  # the tracks were not carried into this frame
            self._prev_gray = frame.gray
            return TrackResult(LOST, None, 0)
        return self._finish_tracked(frame, mask, force_keyframe=False)

    def _pose_from_tracks(self, frame: Frame, T_pred: np.ndarray, point_ids: np.ndarray) -> bool:
        from slam.optim import optimize_pose
        from slam.optim.pose_uncertainty import centre_sigma, pose_information

        self._set_keypoints(frame, self._flow_features(self._pts), self._tids)
        has = np.flatnonzero(point_ids >= 0)
        X, _, ids = self._point_arrays(point_ids[has])
        if len(ids) < len(has):
            keep = np.isin(point_ids[has], ids)
            has = has[keep]
        if len(has) < self.tcfg.min_tracked_points:
            return False
        with self.timer.stage("pose"):
            res = optimize_pose(T_pred, X, frame.kp_undist[has], frame.inv_sigma2[has], self.intrinsics)
        self._update_noise_scale(np.asarray(res.T_cw, np.float64), X, frame.kp_undist[has])
        inl = np.asarray(res.inliers, bool)
        if np.count_nonzero(inl) < self.tcfg.min_tracked_points:
            return False
        frame.T_cw = np.asarray(res.T_cw, np.float64)
        frame.centre_sigma = centre_sigma(pose_information(frame.T_cw, X[inl], frame.inv_sigma2[has[inl]],
                                                           self.intrinsics))
        frame.point_ids[has[inl]] = ids[inl]
        # outlier tracks are unreliable: drop them
        drop = np.zeros(len(self._pts), bool)
        drop[has[~inl]] = True
        if np.any(drop):
            keep = ~drop
            self._keep_tracks(keep)
            self._set_keypoints(frame, self._flow_features(self._pts), self._tids)
            frame.point_ids[:] = -1
            sel = np.flatnonzero(keep)
            pid_full = np.full(len(drop), -1, np.int64)
            pid_full[has[inl]] = ids[inl]
            frame.point_ids[:] = pid_full[sel]
        return True

    def _update_noise_scale(self, T_cw: np.ndarray, X: np.ndarray, uv: np.ndarray) -> None:
        """Update the running estimate of the tracks' pixel noise from one pose: world points ``X (N, 3)``,
        their tracks ``uv (N, 2)`` (undistorted pixels), the optimised ``T_cw``.

        The median reprojection error of all tracks (inliers or not: the median ignores up to half of them
        being wrong) over 1.1774 (the median of a 2-D Gaussian error's length in sigmas) estimates sigma;
        an exponential average over frames smooths it, clamped to ``[1, flow_noise_max_scale]``, so clean
        video keeps the 1 px model exactly.
        """
        limit = self.tcfg.flow_noise_max_scale
        if limit <= 1.0:
            return
        Xc = X @ T_cw[:3, :3].T + T_cw[:3, 3]
        front = Xc[:, 2] > 0
        if np.count_nonzero(front) < self.tcfg.min_tracked_points:
            return
        err = np.linalg.norm(self.camera.project_ideal(Xc[front]) - uv[front], axis=1)
        sigma = float(np.median(err)) / 1.1774
        self._noise_scale = float(np.clip(0.7 * self._noise_scale + 0.3 * sigma, 1.0, limit))

    def _pose_from_keyframe_motion(self, frame: Frame, point_ids: np.ndarray,
                                   min_parallax_deg: float | None = None) -> bool:
        """The pose from the tracks' own two-view geometry with a recent keyframe, when map points run out.

        After a fast turn into unmapped space too few tracks hold map points for a pose, while the flow
        tracks themselves live on. Once they have parallax, the motion from the oldest keyframe that
        still shares enough of them follows from the essential matrix (or homography) of the tracks; its
        scale from the map points still tracked (without them, no pose: see below). The frame then
        becomes a keyframe, so the mapper triangulates the new view from a real baseline (a keyframe
        kept at the old centre, as rotation-only tracking does, never gives one). ``min_parallax_deg``
        (default ``mapping.min_parallax_deg``) is lowered once a rotation no longer explains the tracks.
        """
        from slam.geometry.two_view import initialize_two_view

        self._unscaled_motion = False
        t = self.tcfg
        min_shared = max(t.init_min_points, 30)
        with self.map.lock:
            recent = [k for k in self.map.keyframe_list()[-30:] if not k.bad and k.track_ids is not None]
        anchor = None
        for kf in reversed(recent):  # back in time while enough tracks are shared: the longest baseline
            common, ia, ib = np.intersect1d(kf.track_ids, self._tids, return_indices=True)
            if np.count_nonzero(common >= 0) < min_shared:
                break
            anchor = kf
            rows_kf, rows_now = ia[common >= 0], ib[common >= 0]
        if anchor is None:
            return False
        x1 = self.camera.normalize(anchor.features.keypoints[rows_kf])
        x2 = self.camera.normalize(self._pts[rows_now])
        if self._rotation_explains(x1, x2):
            # the translation is below what the tracks resolve: an essential matrix would fit the noise
            # (room seed 4: a 45 degree turn with 0.25 degrees of parallax gave a translation 62 degrees
            # off and 5x too long, and the map after it 1.5x too large)
            log.debug("frame %d: a rotation explains the tracks since keyframe %d; no two-view motion",
                      frame.index, anchor.id)
            return False
        if min_parallax_deg is None:
            min_parallax_deg = self.cfg.mapping.min_parallax_deg
        res = initialize_two_view(x1, x2, self.focal, min_parallax_deg=min_parallax_deg,
                                  min_triangulated=min_shared, seed=self.cfg.system.seed)
        if not res.ok:
            log.debug("frame %d: no two-view pose from keyframe %d (%d shared tracks)", frame.index, anchor.id,
                      len(rows_kf))
            return False
        valid = np.asarray(res.valid, bool)
        depth_unit = np.asarray(res.points_1)[:, 2]
        with self.map.lock:
            T_kf = anchor.T_cw.copy()
        scale = self._two_view_scale(T_kf, point_ids[rows_now], depth_unit, valid)
        if scale is None:
            # no map point spans the motion (a turn past the field of view): its scale would be a guess,
            # and its rotation, from tracks the keyframe shares only in a strip of the view, was 1.2
            # degrees off in room seed 13, where the map built on it then turned 0.5-1 degree a frame away
            # from the truth (9.7% of path). The frame is lost instead; the new map that follows is made
            # from the tracks over the whole view, and its scale is checked like a guess (see
            # ``Tracker._chain_to_previous_map``)
            log.debug("frame %d: two-view motion from keyframe %d shares no map point: no scale", frame.index,
                      anchor.id)
            self._unscaled_motion = True
            return False
        T_21 = np.array(res.T_21, np.float64)
        T_21[:3, 3] *= scale
        frame.T_cw = T_21 @ T_kf
        # keep the tracks the two-view model explains and those the anchor does not share
        keep = np.ones(len(self._pts), bool)
        keep[rows_now[~np.asarray(res.inliers, bool)]] = False
        ids = np.where(keep, point_ids, -1)[keep]
        self._keep_tracks(keep)
        self._set_keypoints(frame, self._flow_features(self._pts), self._tids)
        frame.point_ids = self._consistent_point_ids(frame, ids)
        self.num_two_view += 1
        log.debug("frame %d: pose from two-view motion of %d tracks since keyframe %d (scale %.3g)",
                  frame.index, int(valid.sum()), anchor.id, scale)
        return True

    def _rotation_explains(self, x1: np.ndarray, x2: np.ndarray) -> bool:
        """Whether a rotation alone explains the tracks ``x1 -> x2`` (normalised coordinates, ``(N, 2)`` each)
        about as well as an essential matrix does (see :meth:`Tracker._explained_by_rotation`)."""
        from slam.geometry.rotation import estimate_rotation_ransac

        b1 = np.concatenate([x1, np.ones((len(x1), 1))], axis=1)
        b2 = np.concatenate([x2, np.ones((len(x2), 1))], axis=1)
        b1 /= np.linalg.norm(b1, axis=1, keepdims=True)
        b2 /= np.linalg.norm(b2, axis=1, keepdims=True)
        _, inl = estimate_rotation_ransac(b1, b2, threshold_rad=2.0 / self.focal, seed=self.cfg.system.seed)
        return self._explained_by_rotation(b1, b2, inl)

    def _two_view_scale(self, T_kf: np.ndarray, point_ids: np.ndarray, depth_unit: np.ndarray,
                        valid: np.ndarray) -> float | None:
        """Map units per two-view unit, from the map points among the valid tracks (``point_ids``, ``-1``
        for none; ``depth_unit``: their two-view depths in the keyframe ``T_kf``), or None without five of
        them: the scale is then unobservable."""
        rows = np.flatnonzero(valid & (point_ids >= 0))
        if len(rows) < 5:
            return None
        z_map = self._point_positions(point_ids[rows]) @ T_kf[2, :3] + T_kf[2, 3]  # NaN where gone
        z_unit = depth_unit[rows]
        with np.errstate(invalid="ignore"):
            ok = (z_map > 0) & (z_unit > 0)
        return float(np.median(z_map[ok] / z_unit[ok])) if np.count_nonzero(ok) >= 5 else None

    def _consistent_point_ids(self, frame: Frame, ids: np.ndarray) -> np.ndarray:
        """``ids (N,)`` with -1 where the map point does not reproject within 3 px of its track."""
        out = np.full(len(ids), -1, np.int64)
        rows = np.flatnonzero(ids >= 0)
        if len(rows) == 0:
            return out
        Xc = self._point_positions(ids[rows]) @ frame.T_cw[:3, :3].T + frame.T_cw[:3, 3]
        with np.errstate(invalid="ignore"):
            err = np.linalg.norm(self.camera.project_ideal(Xc) - frame.kp_undist[rows], axis=1)
            good = (Xc[:, 2] > 0) & (err < 3.0)  # False where the point is gone (NaN)
        out[rows[good]] = ids[rows[good]]
        return out

    def _point_positions(self, ids: np.ndarray) -> np.ndarray:
        """World positions ``(N, 3)`` of map points ``ids (N,)``, NaN rows for points no longer in the map."""
        X = np.full((len(ids), 3), np.nan)
        points = self.map.points
        with self.map.lock:
            found = [(r, p.position) for r, i in enumerate(np.asarray(ids, np.int64).tolist())
                     if (p := points.get(i)) is not None]
        if found:
            X[[r for r, _ in found]] = np.array([x for _, x in found])
        return X

    def _rotation_from_tracks(self, frame: Frame, prev_pts: np.ndarray, point_ids: np.ndarray) -> bool:
        """The camera turned in place: rotation from the flow tracks themselves, centre kept."""
        from slam.geometry.rotation import estimate_rotation_ransac

        last = self._last
        if last is None or last.T_cw is None or len(self._pts) < 30:
            return False
        b1 = self.camera.unproject(prev_pts)
        b2 = self.camera.unproject(self._pts)
        R_21, inl = estimate_rotation_ransac(b1, b2, threshold_rad=2.0 / self.focal, seed=self.cfg.system.seed)
        if inl.sum() < max(30, 0.6 * len(self._pts)) or not self._explained_by_rotation(b1, b2, inl):
            return False
        self._keep_tracks(inl)
        self._set_keypoints(frame, self._flow_features(self._pts), self._tids)
        T_cw = np.eye(4)
        T_cw[:3, :3] = R_21 @ last.T_cw[:3, :3]
        T_cw[:3, 3] = -T_cw[:3, :3] @ invert(last.T_cw)[:3, 3]
        frame.T_cw = T_cw
        # the centre is the last frame's, and so is its uncertainty: a keyframe made here must not
        # triangulate from a centre that a few edge points placed badly
        frame.centre_sigma = float(last.centre_sigma)
        frame.point_ids = np.asarray(point_ids[inl], np.int64).copy()
        with self.map.lock:
            alive = np.array([int(i) in self.map.points for i in frame.point_ids]) if len(frame.point_ids) else np.zeros(0, bool)
        frame.point_ids[~alive] = -1
        self.num_rotation_only += 1
        log.debug("frame %d: rotation only from %d flow tracks", frame.index, int(inl.sum()))
        return True

    def _descriptor_fallback(self, frame: Frame, mask: np.ndarray | None) -> bool:
        """Full keypoint extraction and descriptor tracking (reference keyframe, relocalisation, local map)."""
        # keyframes hold descriptors of corners at level 0, so describe this frame's corners the same way
        t = self.tcfg
        with self.timer.stage("extract"):
            corners = detect_corners(frame.gray, mask, np.zeros((0, 2)), t.flow_max_corners,
                                     t.flow_min_corner_distance_px)
            feats, _ = self.extractor.describe(frame.gray, corners, None)
        self._set_keypoints(frame, feats, self._new_track_ids(len(feats)))
        self.num_fallbacks += 1
        ok = False
        if self.state == TRACKING:
            with self.timer.stage("match"):
                ok = self._track_reference_keyframe(frame)
        if not ok:
            with self.timer.stage("relocalise"):
                ok = self._relocalise(frame)
        if ok:
            with self.timer.stage("local_map"):
                ok = self._track_local_map(frame)
        if ok:
            log.debug("frame %d: tracked by descriptor fallback", frame.index)
        return ok

    def _finish_tracked(self, frame: Frame, mask: np.ndarray | None, force_keyframe: bool,
                        rotation_only: bool = False) -> TrackResult:
        last = self._last
        self._lost_frames = []
        self._begin_tracked(frame, last)
        new_kf = force_keyframe or self._need_flow_keyframe(frame, frame.num_matched)
        if new_kf:
            self._make_flow_keyframe(frame, mask, rotation_only)
        else:
            self._prev_gray = frame.gray
        return self._end_tracked(frame, last, rotation_only, new_kf)

    def _need_flow_keyframe(self, frame: Frame, num_tracked: int) -> bool:
        t = self.tcfg
        if self._frames_since_kf >= t.keyframe_max_frames:
            return True
        if self._frames_since_kf < max(t.keyframe_min_frames, 1):
            return False
        tracks_left = len(self._pts) / max(self._num_tracks_at_kf, 1)
        with self.map.lock:
            kf_points = int(np.count_nonzero(self._last_kf.point_ids >= 0)) if self._last_kf is not None else 0
        losing_tracks = tracks_left < 0.7  # new corners are needed where the view has moved on
        weak = num_tracked < t.keyframe_tracked_ratio * kf_points or num_tracked < t.keyframe_min_tracked
        if not (weak or losing_tracks):
            return False
        if not losing_tracks and self._track_parallax_deg(frame) < self.cfg.mapping.min_parallax_deg \
                and not self._tracks_fading(frame, num_tracked):
            # few map points but the tracks cannot be triangulated from here yet: a keyframe now would
            # only replace the last one (culled as redundant), and the baseline would never grow; unless
            # the tracks die while the map stays in view (then the keyframe finds its points again)
            return False
        return bool(self.mapper.idle or tracks_left < 0.5 or num_tracked < t.keyframe_min_tracked)

    def _tracks_fading(self, frame: Frame, num_tracked: int) -> bool:
        """Whether the flow tracks are dying while the map stays in view (weak texture, glare, tissue
        that changes its look) rather than the view moving on (a turn).

        True when fewer than ``2 * keyframe_min_tracked`` map points are tracked and more than
        ``keyframe_fading_ratio`` times as many points of the local map (the last keyframe's and its
        covisible keyframes') lie in view as the local-map search sees them: in the image and the mask,
        within their scale range, at most 60 degrees off their mean viewing direction. A keyframe then
        finds those points again (the mapper's fusion projects them into it), although its tracks have
        too little parallax to triangulate new ones.
        """
        kf = self._last_kf
        t = self.tcfg
        if kf is None or frame.T_cw is None or num_tracked >= 2 * t.keyframe_min_tracked:
            return False
        need = t.keyframe_fading_ratio * num_tracked
        with self.map.lock:
            local = [kf] + self.map.best_covisible(kf, self.cfg.mapping.covisible_keyframes)
            pts = self.map.points_of(local)
            if len(pts) <= need:
                return False
            X = np.array([p.position for p in pts])
            normals = np.array([p.normal for p in pts])
            d_range = np.array([(p.min_distance, p.max_distance) for p in pts])
        _, seen = self._searchable_from(frame.T_cw, X, normals, d_range[:, 0], d_range[:, 1])
        uv = self.camera.project(X @ frame.T_cw[:3, :3].T + frame.T_cw[:3, 3])  # distorted, as the mask
        seen &= self.camera.in_image(uv)  # False for NaN (behind the camera)
        mask = getattr(frame, "mask", None)
        if mask is not None and np.any(seen):
            seen[seen] = usable_at(mask, uv[seen])
        in_view = int(np.count_nonzero(seen))
        if in_view <= need:
            return False
        log.debug("frame %d: %d map points tracked, %d of the local map in view: a keyframe despite low parallax",
                  frame.index, num_tracked, in_view)
        return True

    def _track_parallax_deg(self, frame: Frame) -> float:
        """Median angle (degrees) between each track's ray at the last keyframe and its ray in ``frame``.

        Rays are compared in the world frame, so rotation alone gives no parallax: this is the angle a
        point triangulated from the two views would subtend.
        """
        kf = self._last_kf
        if kf is None or frame.T_cw is None or len(self._pts) == 0 or len(kf.features) == 0:
            return 0.0
        idx = self._kf_idx
        ok = (idx >= 0) & (idx < len(kf.features))
        if not np.any(ok):
            return 0.0
        with self.map.lock:
            R_cw_kf = kf.T_cw[:3, :3].copy()
        b_kf = self.camera.unproject(kf.features.keypoints[idx[ok]]) @ R_cw_kf  # rows: R_wc b = b R_cw
        b_now = self.camera.unproject(self._pts[ok]) @ frame.T_cw[:3, :3]
        cos = np.clip(np.sum(b_kf * b_now, axis=1), -1.0, 1.0)
        return float(np.degrees(np.median(np.arccos(cos))))

    def _make_flow_keyframe(self, frame: Frame, mask: np.ndarray | None, rotation_only: bool = False) -> None:
        pids_before = frame.point_ids.copy()
        tids_before = frame.track_ids.copy() if frame.track_ids is not None else self._new_track_ids(len(frame.features))
        if frame.features.descriptors.shape[1] == 0:
            self._describe_keyframe_points(frame, mask, frame.features.keypoints, tids_before)
            kept = self._kept_from_input
            pid = np.full(len(frame.features), -1, np.int64)
            inside = kept < len(pids_before)
            pid[inside] = pids_before[kept[inside]]
            frame.point_ids = pid
        self._insert_keyframe(frame, rotation_only)
        self._reset_tracks_from_keyframe(frame)


class _SubsetResult:
    """A two-view result restricted to the rows of the correspondences that survived description."""

    def __init__(self, res, rows: np.ndarray) -> None:
        self.T_21 = res.T_21
        self.points_1 = np.asarray(res.points_1)[rows]
        self.valid = np.asarray(res.valid, bool)[rows]
        self.model = getattr(res, "model", "?")
        self.ok = True
