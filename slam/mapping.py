"""Local mapping: new map points between covisible keyframes, duplicate fusion, point and keyframe culling,
local bundle adjustment (g2o through :mod:`slam.optim`).

:class:`LocalMapper` is the synchronous core (``insert`` processes the keyframe at once; ``--sync`` and
tests use it). :class:`LocalMapperThread` runs the same core in a worker thread fed by a queue; an
exception there is kept and re-raised in the caller's thread by :meth:`LocalMapperThread.check`.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

import numpy as np

from slam.camera import Camera
from slam.config import Config
from slam.errors import TrackingError
from slam.geometry.se3 import invert
from slam.map.map import KeyFrame, Map, MapPoint
from slam.timing import StageTimer

log = logging.getLogger(__name__)

CHI2_2DOF = 5.991
MIN_BA_OBSERVATIONS = 20  # a keyframe seeing fewer points is held fixed in local BA
MIN_RELOCATE_POINTS = 30  # a queued keyframe seeing fewer map points keeps its tracked pose


class LocalMapper:
    """Processes keyframes one at a time (synchronous core)."""

    def __init__(self, cfg: Config, camera: Camera, get_map, timer: StageTimer | None = None,
                 scale_factor: float = 2.0, num_levels: int = 8) -> None:
        self.cfg = cfg
        self.mcfg = cfg.mapping
        self.camera = camera
        self._get_map = get_map
        self.timer = timer or StageTimer()
        self.intrinsics = (camera.fx, camera.fy, camera.cx, camera.cy)
        self.scale_factor = scale_factor
        self.num_levels = num_levels
        self.abort_ba = threading.Event()
        self.bundle_solver = None  # bundle_adjust's stand-in (LocalMapperThread: a BundleProcess); None: in-process
        self._recent_points: list[tuple[MapPoint, int]] = []
        self.num_processed = 0
        # local BAs written back so far, and that count when each queued keyframe's pose was tracked
        self.num_ba_writes = 0
        self._queued_ba_writes: dict[int, int] = {}
        self.num_relocated = 0
        # called once per processed keyframe, as soon as its new points are in the map (before local BA)
        self.on_points_ready: Callable[[], None] | None = None

    @property
    def idle(self) -> bool:
        return True

    def insert(self, kf: KeyFrame, ba_writes_seen: int | None = None) -> None:
        self.note_queued(kf, ba_writes_seen)
        self.process(kf)

    @property
    def backlog(self) -> int:
        return 0

    def wait_backlog(self, max_backlog: int, timeout: float = 10.0) -> None:
        """Nothing is ever waiting in the synchronous core."""

    def wait_points(self, timeout: float = 10.0) -> None:
        """The synchronous core has made every inserted keyframe's points already."""

    def wait_idle(self) -> None:
        """The synchronous core is idle between calls."""

    def check(self) -> None:
        """Nothing to check in the synchronous core (errors propagate directly)."""

    def stop(self) -> None:
        pass

    def note_queued(self, kf: KeyFrame, ba_writes_seen: int | None = None) -> None:
        """``kf`` is to be processed; its pose was tracked against the map after ``ba_writes_seen`` local BA
        write-backs (None: the map as it is now). :meth:`process` re-localises it if more have happened."""
        self._queued_ba_writes[kf.id] = self.num_ba_writes if ba_writes_seen is None else int(ba_writes_seen)

    # ----------------------------------------------------------------------------------------- core
    def process(self, kf: KeyFrame) -> None:
        the_map = self._get_map()
        ba_writes_seen = self._queued_ba_writes.pop(kf.id, self.num_ba_writes)
        if kf.bad or the_map.keyframes.get(kf.id) is not kf:
            return  # culled meanwhile, or from a map that was replaced after tracking loss
        with self.timer.stage("mapping"):
            # the descriptors and viewing geometry of kf's points (new observations: kf itself, then
            # fusion) are brought up to date once, at the end of _fuse
            self._cull_recent_points(the_map, kf)
            if ba_writes_seen != self.num_ba_writes and not kf.rotation_only:
                with self.timer.stage("relocate"):
                    self._relocate_keyframe(the_map, kf)
            with self.timer.stage("triangulate"):
                self._create_new_points(the_map, kf)
            with self.timer.stage("fuse"):
                self._fuse(the_map, kf)
            if self.on_points_ready is not None:
                self.on_points_ready()
            if len(the_map.keyframes) >= 2:
                with self.timer.stage("ba"):
                    self._local_ba(the_map, kf)
            self._cull_keyframes(the_map, kf)
        self.num_processed += 1

    def _relocate_keyframe(self, the_map: Map, kf: KeyFrame) -> None:
        """Refine ``kf``'s pose (motion-only BA) against its map points as a local BA has left them.

        Threaded, a keyframe's pose may have been tracked against the map before a local BA (running at the
        time) moved its neighbours and points. Triangulating between the stale pose and the adjusted
        neighbours would give points at a wrong scale (README, "Tenth session").
        """
        from slam.optim import optimize_pose

        with the_map.lock:
            rows = np.flatnonzero(kf.point_ids >= 0)
            points = [the_map.points.get(int(i)) for i in kf.point_ids[rows]]
            keep = [j for j, p in enumerate(points) if p is not None and not p.bad]
            if len(keep) < MIN_RELOCATE_POINTS:
                return
            rows = rows[keep]
            X = np.array([points[j].position for j in keep])
            T_before = kf.T_cw.copy()
        res = optimize_pose(T_before, X, kf.kp_undist[rows], kf.inv_sigma2[rows], self.intrinsics)
        if res.num_inliers < 0.5 * len(rows):
            return  # the pose the tracker found stays
        with the_map.lock:
            if kf.bad:
                return
            kf.T_cw = res.T_cw
        self.num_relocated += 1
        log.debug("keyframe %d re-localised after local BA: centre moved %.4g", kf.id,
                  float(np.linalg.norm(invert(res.T_cw)[:3, 3] - invert(T_before)[:3, 3])))

    # ----------------------------------------------------------------------------------------- culling
    def _cull_recent_points(self, the_map: Map, kf: KeyFrame) -> None:
        keep = []
        with the_map.lock:
            for p, born in self._recent_points:
                if p.bad or the_map.points.get(p.id) is not p:
                    continue  # culled, or a point of a map replaced after tracking loss
                age = kf.id - born
                if p.found_ratio < self.mcfg.point_min_found_ratio and p.visible > 4:
                    the_map.erase_point(p)
                elif age >= 2 and len(p.observations) <= 2 and age >= 3:
                    the_map.erase_point(p)
                elif age >= 3:
                    continue  # survived its probation
                else:
                    keep.append((p, born))
        self._recent_points = keep

    def _cull_keyframes(self, the_map: Map, kf: KeyFrame) -> None:
        with the_map.lock:
            neighbours = the_map.best_covisible(kf, 20)
            octaves: dict[int, list[int]] = {}  # keyframe id -> its keypoints' octaves (plain ints)

            def octaves_of(k: KeyFrame) -> list[int]:
                if k.id not in octaves:
                    octaves[k.id] = k.features.octaves.tolist()
                return octaves[k.id]

            for nb in neighbours:
                if nb.id == 0 or nb.bad or nb.id >= kf.id:
                    continue  # never the origin, nor keyframes newer than the one processed
                idx = np.flatnonzero(nb.point_ids >= 0)
                if len(idx) == 0:
                    continue
                redundant = 0
                total = 0
                oct_of_nb = octaves_of(nb)
                for i, pid in zip(idx.tolist(), nb.point_ids[idx].tolist()):
                    p = the_map.points.get(pid)
                    if p is None:
                        continue
                    total += 1
                    if len(p.observations) > 3:
                        max_octave = oct_of_nb[i] + 1
                        n_ok = 0
                        for kid, j in p.observations.items():
                            if kid == nb.id:
                                continue
                            other = the_map.keyframes.get(kid)
                            if other is not None and octaves_of(other)[j] <= max_octave:
                                n_ok += 1
                                if n_ok >= 3:
                                    break
                        if n_ok >= 3:
                            redundant += 1
                # a keyframe with only a few points (made while turning into an unmapped view) is not
                # judged by them: its flow tracks are what later triangulates the view (the baseline)
                if total >= MIN_BA_OBSERVATIONS and redundant > self.mcfg.keyframe_redundancy * total:
                    parents = [k for k in the_map.best_covisible(nb, 5) if k.id != nb.id]
                    if parents:
                        log.debug("culling redundant keyframe %d", nb.id)
                        the_map.erase_keyframe(nb, parents[0])
            max_kfs = self.mcfg.max_keyframes
            if max_kfs is not None and len(the_map.keyframes) > max_kfs:
                oldest = sorted(the_map.keyframes.values(), key=lambda k: k.id)
                for old in oldest[: len(the_map.keyframes) - max_kfs]:
                    if old.id == kf.id:
                        continue
                    parents = [k for k in the_map.best_covisible(old, 5) if k.id != old.id]
                    parent = parents[0] if parents else kf
                    the_map.erase_keyframe(old, parent)

    # ----------------------------------------------------------------------------------------- new points
    def _track_sharing_first(self, the_map: Map, kf: KeyFrame, neighbours: list[KeyFrame]) -> list[KeyFrame]:
        """``neighbours`` led by the recent keyframes that share the most flow tracks with ``kf`` (at least 30).

        A keyframe made in a view the map does not reach yet (after a turn past the field of view) shares
        few points with any keyframe, so covisibility offers only the last keyframes, made while turning
        in place at the old centre. The keyframe its two-view pose was measured from shares its tracks,
        and the baseline to it is the one that pose measured. Caller holds the map lock."""
        if kf.track_ids is None:
            return neighbours
        shared = []
        for other in the_map.keyframe_list()[-30:]:
            if other.id == kf.id or other.bad or other.track_ids is None:
                continue
            n = len(np.intersect1d(kf.track_ids[kf.track_ids >= 0], other.track_ids))
            if n >= 30:
                shared.append((n, other.id, other))
        first = [k for _, _, k in sorted(shared, key=lambda s: (-s[0], -s[1]))][: self.mcfg.covisible_keyframes]
        ids = {k.id for k in first}
        return first + [k for k in neighbours if k.id not in ids]

    def _create_new_points(self, the_map: Map, kf: KeyFrame) -> None:
        from slam.features.matching import match_descriptors

        with the_map.lock:
            neighbours = the_map.best_covisible(kf, self.mcfg.covisible_keyframes)
            if not neighbours:
                # right after initialisation the newest keyframes share points with kf through observations
                neighbours = [k for k in the_map.keyframe_list() if k.id != kf.id][-2:]
            T1 = kf.T_cw.copy()
            C1 = kf.center
            pts1 = the_map.points_of([kf])
            if len(pts1) < MIN_BA_OBSERVATIONS:
                neighbours = self._track_sharing_first(the_map, kf, neighbours)
            median_depth = np.median([(T1[:3, :3] @ p.position + T1[:3, 3])[2] for p in pts1]) if pts1 else 1.0
        free1 = np.flatnonzero(kf.point_ids < 0)
        if len(free1) == 0:
            return
        created = 0
        cos_min = np.cos(np.deg2rad(self.mcfg.min_parallax_deg))
        for nb in neighbours:
            # threaded, LocalMapperThread.insert() has set this flag for the keyframe before this one, so a
            # keyframe triangulates with its first neighbours until one gives points; --sync uses them all.
            # Using all of them threaded too made the mapper slower, local BA was cut short three times as
            # often and ORB tube ATE went from 0.7-4.8% to 5-10% (README, "Ninth session")
            if self.abort_ba.is_set() and created > 0:
                break
            with the_map.lock:
                if nb.bad:
                    continue
                T2 = nb.T_cw.copy()
                C2 = nb.center
                free1 = np.flatnonzero(kf.point_ids < 0)
                free2 = np.flatnonzero(nb.point_ids < 0)
            baseline = np.linalg.norm(C2 - C1)
            if baseline / max(median_depth, 1e-9) < 0.01 or len(free1) == 0 or len(free2) == 0:
                continue
            # a baseline not well above the uncertainty of the two centres would triangulate pose noise
            if baseline < self.mcfg.min_baseline_sigmas * np.hypot(kf.centre_sigma, nb.centre_sigma):
                log.debug("keyframe %d: no new points with keyframe %d (baseline %.3g, centre sigmas %.3g, %.3g)",
                          kf.id, nb.id, baseline, kf.centre_sigma, nb.centre_sigma)
                continue
            pairs = self._match_for_triangulation(kf, nb, free1, free2, T1, T2)
            if len(pairs) == 0:
                continue
            i1, i2 = pairs[:, 0], pairs[:, 1]
            X = self._triangulate(T1, T2, kf.kp_undist[i1], nb.kp_undist[i2])
            good = np.all(np.isfinite(X), axis=1)
            z1 = X @ T1[2, :3] + T1[2, 3]
            z2 = X @ T2[2, :3] + T2[2, 3]
            good &= (z1 > 0) & (z2 > 0)
            r1 = X - C1
            r2 = X - C2
            d1 = np.linalg.norm(r1, axis=1)
            d2 = np.linalg.norm(r2, axis=1)
            cosp = np.einsum("ij,ij->i", r1, r2) / np.maximum(d1 * d2, 1e-12)
            good &= cosp < cos_min
            e1 = self._reproj_chi2(T1, X, kf.kp_undist[i1], kf.inv_sigma2[i1])
            e2 = self._reproj_chi2(T2, X, nb.kp_undist[i2], nb.inv_sigma2[i2])
            good &= (e1 < CHI2_2DOF) & (e2 < CHI2_2DOF)
            # scale consistency between the distance ratio and the octave ratio
            ratio_dist = d2 / np.maximum(d1, 1e-12)
            sf = self.scale_factor
            ratio_oct = sf ** (kf.features.octaves[i1].astype(float) - nb.features.octaves[i2].astype(float))
            factor = 1.5 * sf
            good &= (ratio_dist * factor > ratio_oct) & (ratio_dist < ratio_oct * factor)
            with the_map.lock:
                if kf.bad or nb.bad:
                    continue
                born = []
                for k in np.flatnonzero(good):
                    a, b = int(i1[k]), int(i2[k])
                    if kf.point_ids[a] >= 0 or nb.point_ids[b] >= 0:
                        continue
                    p = the_map.create_point(X[k], kf.features.descriptors[a], kf, a)
                    the_map.add_observation(p, nb, b)
                    born.append(p)
                    self._recent_points.append((p, kf.id))
                the_map.update_points_geometry(born, self.scale_factor, self.num_levels)
                created += len(born)
        log.debug("keyframe %d: %d new points", kf.id, created)

    def _match_for_triangulation(self, kf: KeyFrame, nb: KeyFrame, free1: np.ndarray, free2: np.ndarray,
                                 T1: np.ndarray, T2: np.ndarray) -> np.ndarray:
        """Descriptor matches between unmatched keypoints that satisfy the epipolar constraint, ``(K, 2)``."""
        from slam.features.matching import match_descriptors

        shared = None
        if kf.track_ids is not None and nb.track_ids is not None:
            # optical-flow tracks: the same track id is a correspondence
            t1 = kf.track_ids[free1]
            t2 = nb.track_ids[free2]
            common, a, b = np.intersect1d(t1, t2, return_indices=True)
            ok = common >= 0
            shared = np.stack([free1[a[ok]], free2[b[ok]]], axis=1) if np.any(ok) else np.zeros((0, 2), np.int64)
        m = match_descriptors(
            kf.features.descriptors[free1], nb.features.descriptors[free2], kf.features.binary,
            ratio=self.cfg.features.ratio, mutual=True,
        )
        pairs = np.stack([free1[m[:, 0]], free2[m[:, 1]]], axis=1) if len(m) else np.zeros((0, 2), np.int64)
        if shared is not None and len(shared):
            pairs = np.concatenate([shared, pairs], axis=0)
            _, first = np.unique(pairs[:, 0], return_index=True)
            pairs = pairs[np.sort(first)]
            _, first = np.unique(pairs[:, 1], return_index=True)
            pairs = pairs[np.sort(first)]
        if len(pairs) == 0:
            return pairs
        # epipolar check in normalised coordinates: x2^T E x1 with E = [t]x R, R/t of T2 * T1^-1
        T21 = T2 @ invert(T1)
        R, t = T21[:3, :3], T21[:3, 3]
        tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
        E = tx @ R
        K = self.camera.K
        Kinv = np.linalg.inv(K)
        F = Kinv.T @ E @ Kinv
        u1 = np.c_[kf.kp_undist[pairs[:, 0]], np.ones(len(pairs))]
        u2 = np.c_[nb.kp_undist[pairs[:, 1]], np.ones(len(pairs))]
        l2 = u1 @ F.T  # epipolar lines in image 2
        num = np.abs(np.einsum("ij,ij->i", l2, u2))
        den = np.sqrt(l2[:, 0] ** 2 + l2[:, 1] ** 2)
        dist2 = (num / np.maximum(den, 1e-12)) ** 2
        sigma2 = 1.0 / nb.inv_sigma2[pairs[:, 1]]
        return pairs[dist2 < 3.84 * sigma2 * 2.0]

    def _triangulate(self, T1: np.ndarray, T2: np.ndarray, uv1: np.ndarray, uv2: np.ndarray) -> np.ndarray:
        from slam.geometry.triangulation import triangulate

        c = self.camera
        x1 = (uv1 - [c.cx, c.cy]) / [c.fx, c.fy]
        x2 = (uv2 - [c.cx, c.cy]) / [c.fx, c.fy]
        return np.asarray(triangulate(T1, T2, x1, x2), dtype=np.float64)

    def _reproj_chi2(self, T: np.ndarray, X: np.ndarray, uv: np.ndarray, inv_sigma2: np.ndarray) -> np.ndarray:
        Xc = X @ T[:3, :3].T + T[:3, 3]
        proj = self.camera.project_ideal(Xc)
        err = np.sum((proj - uv) ** 2, axis=1) * inv_sigma2
        return np.nan_to_num(err, nan=np.inf)

    # ----------------------------------------------------------------------------------------- fusion
    def _fuse(self, the_map: Map, kf: KeyFrame) -> None:
        """Project kf's points into its neighbours (and theirs into kf); merge duplicates, add observations."""
        from slam.features.matching import search_by_projection

        with the_map.lock:
            neighbours = the_map.best_covisible(kf, self.mcfg.covisible_keyframes)
            targets = list(neighbours)
            for nb in neighbours[:5]:
                for nb2 in the_map.best_covisible(nb, 5):
                    if nb2.id != kf.id and nb2 not in targets:
                        targets.append(nb2)
        points_kf = None
        for target in targets:
            with the_map.lock:
                if points_kf is None:
                    points_kf = the_map.points_of([kf])
                self._fuse_into(the_map, points_kf, target, search_by_projection)
        with the_map.lock:
            others = [p for p in the_map.points_of(targets) if kf.id not in p.observations]
            self._fuse_into(the_map, others, kf, search_by_projection)
            fused = the_map.points_of([kf])
            the_map.update_points_descriptors(fused)
            the_map.update_points_geometry(fused, self.scale_factor, self.num_levels)

    def _fuse_into(self, the_map: Map, points: list[MapPoint], target: KeyFrame, search_by_projection) -> None:
        pts = [p for p in points if not p.bad and target.id not in p.observations]
        if not pts or target.bad or len(target.features) == 0:
            return
        X = np.array([p.position for p in pts])
        T = target.T_cw
        Xc = X @ T[:3, :3].T + T[:3, 3]
        uv = self.camera.project_ideal(Xc)
        vis = (Xc[:, 2] > 0) & self.camera.in_image(uv)
        if not np.any(vis):
            return
        idx = np.flatnonzero(vis)
        desc = np.array([pts[i].descriptor for i in idx])
        from slam.features import matching

        fn = getattr(matching, "default_max_distance", None)
        max_d = float(fn(target.features.binary)) if fn else (100.0 if target.features.binary else 0.8)
        match = search_by_projection(
            uv[idx], desc, 3.0 * np.ones(len(idx)), target.kp_undist, target.features.descriptors,
            target.features.binary, max_distance=max_d, ratio=1.0,
        )
        for k in np.flatnonzero(match >= 0):
            p = pts[idx[k]]
            j = int(match[k])
            if p.bad:
                continue
            # reprojection check at the keypoint's scale
            e = np.sum((uv[idx[k]] - target.kp_undist[j]) ** 2) * target.inv_sigma2[j]
            if e > CHI2_2DOF:
                continue
            existing = int(target.point_ids[j])
            if existing >= 0 and existing in the_map.points:
                other = the_map.points[existing]
                if other.id == p.id:
                    continue
                if len(other.observations) >= len(p.observations):
                    the_map.replace_point(p, other)
                else:
                    the_map.replace_point(other, p)
            else:
                the_map.add_observation(p, target, j)

    # ----------------------------------------------------------------------------------------- local BA
    def _local_ba(self, the_map: Map, kf: KeyFrame) -> None:
        self.abort_ba.clear()
        with the_map.lock:
            local = [kf] + [k for k in the_map.best_covisible(kf, self.mcfg.local_ba_keyframes - 1) if not k.bad]
            local_ids = {k.id for k in local}
            points = the_map.points_of(local)
            fixed_counts: dict[int, int] = {}
            for p in points:
                for kid in p.observations:
                    if kid not in local_ids and kid in the_map.keyframes:
                        fixed_counts[kid] = fixed_counts.get(kid, 0) + 1
            fixed_kfs = [the_map.keyframes[k] for k, _ in sorted(fixed_counts.items(), key=lambda kv: -kv[1])[:20]]
            kfs = local + fixed_kfs
            if len(kfs) < 2 or not points:
                return
            # a keyframe that sees only a handful of the points (made while turning in place into an
            # unmapped view) is not constrained by them: BA would drag it anywhere, so it stays put
            seen = {k.id: 0 for k in local}
            for p in points:
                for kid in p.observations:
                    if kid in seen:
                        seen[kid] += 1
            fixed = np.array([k.id not in local_ids for k in kfs])
            if not np.any(fixed):
                fixed[min(range(len(kfs)), key=lambda i: kfs[i].id)] = True  # gauge: the oldest keyframe
            fixed |= np.array([k.id in local_ids and seen[k.id] < MIN_BA_OBSERVATIONS for k in kfs])
            # a keyframe made while turning in place keeps the centre tracked before the turn: the points
            # it sees all lie in the new view, so BA would shift it (and the new view with it) freely
            fixed |= np.array([k.rotation_only for k in kfs])
            # with only two keyframes, scale is still free; the full BA after initialisation already ran
            if len(the_map.keyframes) <= 2:
                fixed[:] = True
        adjusted = adjust_bundle(the_map, kfs, points, fixed, self.intrinsics, self.mcfg.ba_iterations,
                                 abort=self.abort_ba, deterministic=self.cfg.system.sync,
                                 solver=self.bundle_solver)
        if adjusted:
            self.num_ba_writes += 1
        with the_map.lock:
            the_map.update_points_geometry([p for p in adjusted if not p.bad], self.scale_factor, self.num_levels)


def adjust_bundle(the_map: Map, kfs: list[KeyFrame], points: list[MapPoint], fixed: np.ndarray,
                  intrinsics: tuple[float, float, float, float], iterations: int,
                  abort: threading.Event | None = None, deterministic: bool = False,
                  solver=None) -> list[MapPoint]:
    """Bundle adjustment of ``kfs`` (``fixed (K,)`` held still) and ``points`` through g2o, written back.

    Observations are gathered and results written under ``the_map.lock``; the optimisation runs without
    it, through ``solver`` (called as :func:`slam.optim.bundle_adjust`; None: that function, in this
    thread). Outlier observations are erased. Returns the points that took part.
    """
    from slam.optim import bundle_adjust

    solver = solver or bundle_adjust

    with the_map.lock:
        index = {k.id: i for i, k in enumerate(kfs)}
        triples = [(i, j, idx) for j, p in enumerate(points) for kid, idx in p.observations.items()
                   if (i := index.get(kid)) is not None]
        if not triples:
            return []
        obs = np.array(triples, dtype=np.int64).reshape(-1, 3)
        obs_kf, obs_pt, obs_kp = obs[:, 0], obs[:, 1], obs[:, 2]
        obs_uv = np.zeros((len(obs), 2))
        obs_w = np.zeros(len(obs))
        for i in np.unique(obs_kf):  # gathered one keyframe at a time
            rows = np.flatnonzero(obs_kf == i)
            obs_uv[rows] = kfs[i].kp_undist[obs_kp[rows]]
            obs_w[rows] = kfs[i].inv_sigma2[obs_kp[rows]]
        T = np.array([k.T_cw for k in kfs])
        X = np.array([p.position for p in points])
    result = solver(
        T, fixed, X, obs_kf, obs_pt, obs_uv, obs_w,
        intrinsics, iterations=iterations, abort=abort, deterministic=deterministic,
    )
    with the_map.lock:
        for k, T_new, is_fixed in zip(kfs, result.T_cw, fixed):
            if not is_fixed and not k.bad:
                k.T_cw = np.array(T_new)
        for p, x in zip(points, result.points_w):
            if not p.bad:
                p.position = np.array(x)
        for r in np.flatnonzero(result.outliers):
            p, k = points[obs_pt[r]], kfs[obs_kf[r]]
            if not p.bad and k.id in p.observations:
                the_map.erase_observation(p, k)
    return points


class LocalMapperThread:
    """Runs a :class:`LocalMapper` in a worker thread fed by a queue of keyframes."""

    def __init__(self, core: LocalMapper, max_queue: int = 0) -> None:
        self.core = core
        self._queue: queue.Queue[KeyFrame | None] = queue.Queue(max_queue)
        self._busy = threading.Event()
        self._idle_cond = threading.Condition()
        self._error: BaseException | None = None
        self._bundle_process = None
        # keyframes inserted, and keyframes whose new points are in the map (both only grow; FIFO order)
        self._inserted = 0
        self._points_done = 0
        self._points_signalled = False
        core.on_points_ready = self._signal_points
        if core.mcfg.ba_process and core.bundle_solver is None:
            from slam.optim.bundle_process import BundleProcess

            try:
                core.bundle_solver = self._bundle_process = BundleProcess()
            except OSError as exc:  # no child process possible here: bundle adjustment stays in this thread
                log.warning("cannot start the bundle adjustment process (%s); it runs in the mapping thread", exc)
        self._thread = threading.Thread(target=self._run, name="local-mapping", daemon=True)
        self._thread.start()

    @property
    def idle(self) -> bool:
        return self._queue.empty() and not self._busy.is_set()

    @property
    def num_ba_writes(self) -> int:
        return self.core.num_ba_writes

    def insert(self, kf: KeyFrame, ba_writes_seen: int | None = None) -> None:
        self.check()
        self.core.note_queued(kf, ba_writes_seen)
        self.core.abort_ba.set()
        self._inserted += 1
        self._queue.put(kf)

    def _signal_points(self) -> None:
        """Mapping thread: the keyframe in work has its new points (at most once per keyframe)."""
        if not self._points_signalled:
            self._points_signalled = True
            with self._idle_cond:
                self._points_done += 1
                self._idle_cond.notify_all()

    def check(self) -> None:
        """Re-raise, in the caller's thread, an exception that stopped the mapping thread."""
        if self._error is not None:
            raise TrackingError(f"local mapping thread failed: {self._error!r}") from self._error

    def _run(self) -> None:
        while True:
            kf = self._queue.get()
            if kf is None:
                self._queue.task_done()
                return
            self._busy.set()
            self._points_signalled = False
            try:
                if self._error is None:
                    self.core.process(kf)
            except BaseException as exc:  # surfaced in the main thread by check()
                log.debug("local mapping failed on keyframe %d", kf.id, exc_info=True)
                self._error = exc
            finally:
                self._signal_points()  # skipped keyframes (culled, old map) and failures count as done
                self._busy.clear()
                self._queue.task_done()
                with self._idle_cond:
                    self._idle_cond.notify_all()

    @property
    def backlog(self) -> int:
        """Keyframes queued or being processed."""
        return self._queue.unfinished_tasks  # queued + in work (counts down in task_done)

    def wait_backlog(self, max_backlog: int, timeout: float = 10.0) -> None:
        """Block (up to ``timeout`` s) until at most ``max_backlog`` keyframes are waiting or in work.

        Back-pressure for file input: a tracker far ahead of its mapper tracks against a map that has
        not grown into the new view yet and loses it. A live camera drops frames instead.
        """
        self._wait_until(lambda: self.backlog <= max_backlog, timeout)

    def wait_points(self, timeout: float = 10.0) -> None:
        """Block (up to ``timeout`` s) until every keyframe inserted so far has its new points in the map.

        Unlike :meth:`wait_backlog` this does not wait for local BA: the tracker needs the points that
        reach into the new view, and BA refines them while it tracks on.
        """
        target = self._inserted
        self._wait_until(lambda: self._points_done >= target, timeout)

    def _wait_until(self, done: Callable[[], bool], timeout: float) -> None:
        """Block until ``done()`` (checked whenever the mapping thread finishes a step), the thread stops
        or fails, or ``timeout`` s pass."""
        import time

        end = time.monotonic() + timeout
        with self._idle_cond:
            while not done() and self._thread.is_alive() and self._error is None:
                left = end - time.monotonic()
                if left <= 0:
                    return
                self._idle_cond.wait(left)

    def wait_idle(self) -> None:
        """Block until every queued keyframe is processed."""
        self._queue.join()

    def stop(self, timeout: float = 30.0) -> None:
        self.core.abort_ba.set()
        self._queue.put(None)
        self._thread.join(timeout)
        if self._bundle_process is not None:
            self._bundle_process.close()
            self.core.bundle_solver = None
