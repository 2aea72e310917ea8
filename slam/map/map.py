"""The map: keyframes, map points and the covisibility graph they imply.

Lock discipline (the one rule for every thread):
    ``Map.lock`` (a re-entrant lock) guards *all* mutable state of the map and of the KeyFrame and
    MapPoint objects it holds. Any code that reads more than one field consistently, or writes anything,
    holds ``with the_map.lock:``. Long computations (bundle adjustment, descriptor matching) copy what
    they need under the lock, release it, compute, and write the results back under the lock, checking
    that the objects are not ``bad`` meanwhile. No other lock is ever taken while holding ``Map.lock``.

Map points and keyframes have integer ids, unique within a map; keyframes store, per keypoint, the id of
the map point it observes (``-1`` when none).
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from itertools import chain

import numpy as np

from slam.features.base import Features
from slam.geometry.se3 import invert

#: number of set bits of each byte value (Hamming distances of binary descriptors)
_POPCOUNT = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(axis=1).astype(np.uint8)
#: elements of the pairwise-difference array of one descriptor batch (4M: 16 MB of float32)
_PAIRWISE_BUDGET = 1 << 22


@dataclass(eq=False)
class KeyFrame:
    """A frame kept in the map.

    Attributes:
        id: unique within the map.
        frame_index, timestamp: where it came from in the source.
        T_cw: ``(4, 4)`` world-to-camera pose (refined by BA).
        features: keypoints (distorted pixels) and descriptors.
        kp_undist: ``(N, 2)`` undistorted pixels of the ideal pinhole camera.
        inv_sigma2: ``(N,)`` information weight of each keypoint, ``1 / scale_factor ** (2 * octave)``.
        point_ids: ``(N,)`` int64 id of the observed map point, ``-1`` for none.
        colors: ``(N, 3)`` uint8 image colour at each keypoint (RGB).
        bad: culled; its pose then follows ``parent`` through ``T_c_parent``.
        rotation_only: made while the camera turned in place, so its centre is the one tracked before the
            turn; local BA keeps its pose (the few points it sees cannot place it better).
        centre_sigma: the tracker's uncertainty of its centre when it was made (see ``Frame``); the mapper
            triangulates only across baselines well above it.
    """

    id: int
    frame_index: int
    timestamp: float
    T_cw: np.ndarray
    features: Features
    kp_undist: np.ndarray
    inv_sigma2: np.ndarray
    point_ids: np.ndarray
    colors: np.ndarray
    bad: bool = False
    parent: "KeyFrame | None" = None
    T_c_parent: np.ndarray | None = None
    track_ids: np.ndarray | None = None  # flow front end: id of the optical-flow track of each keypoint
    rotation_only: bool = False
    centre_sigma: float = 0.0

    @property
    def T_wc(self) -> np.ndarray:
        return invert(self.T_cw)

    @property
    def center(self) -> np.ndarray:
        """Camera centre in the world frame, ``(3,)``."""
        return -self.T_cw[:3, :3].T @ self.T_cw[:3, 3]

    def current_T_cw(self) -> np.ndarray:
        """Pose of this keyframe, following the parent chain when it was culled."""
        kf, T = self, np.eye(4)
        depth = 0
        while kf.bad and kf.parent is not None and kf.T_c_parent is not None and depth < 10000:
            T = T @ kf.T_c_parent
            kf = kf.parent
            depth += 1
        return T @ kf.T_cw

    def num_tracked_points(self, the_map: "Map", min_observations: int = 1) -> int:
        ids = self.point_ids[self.point_ids >= 0]
        return sum(
            1 for i in ids if (p := the_map.points.get(int(i))) is not None and len(p.observations) >= min_observations
        )


@dataclass(eq=False)
class MapPoint:
    """A 3D point of the map.

    Attributes:
        position: ``(3,)`` world coordinates.
        descriptor: representative descriptor (the one closest to the others among its observations).
        observations: keyframe id -> keypoint index in that keyframe.
        normal: mean viewing direction (unit, world), from the point towards the cameras.
        min_distance, max_distance: scale-invariance distance range.
        visible, found: how often it was predicted in view / actually matched by tracking.
        first_kf_id: keyframe that created it.
        color: ``(3,)`` uint8 RGB.
    """

    id: int
    position: np.ndarray
    descriptor: np.ndarray
    first_kf_id: int
    color: np.ndarray
    observations: dict[int, int] = field(default_factory=dict)
    normal: np.ndarray = field(default_factory=lambda: np.zeros(3))
    min_distance: float = 0.0
    max_distance: float = np.inf
    visible: int = 1
    found: int = 1
    bad: bool = False
    descriptor_source: int = 0  # hash of the observations the descriptor was last chosen from (0: never)

    @property
    def found_ratio(self) -> float:
        return self.found / max(self.visible, 1)


class Map:
    """Keyframes and map points of one map, with the covisibility graph derived from observations."""

    def __init__(self, map_id: int = 0) -> None:
        self.id = map_id
        self.lock = threading.RLock()
        self.keyframes: dict[int, KeyFrame] = {}
        self.points: dict[int, MapPoint] = {}
        self.culled_keyframes: list[KeyFrame] = []
        self._next_kf_id = 0
        self._next_point_id = 0

    # ------------------------------------------------------------------ creation
    def new_keyframe_id(self) -> int:
        with self.lock:
            self._next_kf_id += 1
            return self._next_kf_id - 1

    def add_keyframe(self, kf: KeyFrame) -> None:
        with self.lock:
            self.keyframes[kf.id] = kf

    def create_point(self, position: np.ndarray, descriptor: np.ndarray, kf: KeyFrame, kp_index: int) -> MapPoint:
        """A new map point observed by ``kf`` at keypoint ``kp_index``."""
        with self.lock:
            point = MapPoint(
                id=self._next_point_id,
                position=np.asarray(position, dtype=np.float64).copy(),
                descriptor=descriptor,
                first_kf_id=kf.id,
                color=kf.colors[kp_index].copy(),
            )
            self._next_point_id += 1
            self.points[point.id] = point
            self.add_observation(point, kf, kp_index)
            return point

    # ------------------------------------------------------------------ observations
    def add_observation(self, point: MapPoint, kf: KeyFrame, kp_index: int) -> None:
        with self.lock:
            old = int(kf.point_ids[kp_index])
            if old >= 0 and old != point.id and old in self.points:
                self.points[old].observations.pop(kf.id, None)
            if kf.id in point.observations and point.observations[kf.id] != kp_index:
                kf.point_ids[point.observations[kf.id]] = -1
            point.observations[kf.id] = kp_index
            kf.point_ids[kp_index] = point.id

    def erase_observation(self, point: MapPoint, kf: KeyFrame) -> None:
        """Remove ``kf``'s observation of ``point``; the point dies when fewer than 2 observations are left."""
        with self.lock:
            idx = point.observations.pop(kf.id, None)
            if idx is not None and kf.point_ids[idx] == point.id:
                kf.point_ids[idx] = -1
            if len(point.observations) < 2 and not point.bad:
                self.erase_point(point)

    def erase_point(self, point: MapPoint) -> None:
        with self.lock:
            point.bad = True
            for kf_id, idx in point.observations.items():
                kf = self.keyframes.get(kf_id)
                if kf is not None and kf.point_ids[idx] == point.id:
                    kf.point_ids[idx] = -1
            point.observations = {}
            self.points.pop(point.id, None)

    def replace_point(self, old: MapPoint, new: MapPoint) -> None:
        """Merge ``old`` into ``new`` (fusing duplicates)."""
        with self.lock:
            if old.id == new.id or old.bad or new.bad:
                return
            for kf_id, idx in list(old.observations.items()):
                kf = self.keyframes.get(kf_id)
                if kf is None:
                    continue
                if kf_id in new.observations:
                    if kf.point_ids[idx] == old.id:
                        kf.point_ids[idx] = -1
                else:
                    new.observations[kf_id] = idx
                    kf.point_ids[idx] = new.id
            new.visible += old.visible
            new.found += old.found
            old.observations = {}
            old.bad = True
            self.points.pop(old.id, None)

    def erase_keyframe(self, kf: KeyFrame, parent: KeyFrame) -> None:
        """Cull ``kf``: its observations go, its pose thereafter follows ``parent``."""
        with self.lock:
            kf.T_c_parent = kf.T_cw @ invert(parent.T_cw)
            kf.parent = parent
            kf.bad = True
            for idx in np.flatnonzero(kf.point_ids >= 0):
                point = self.points.get(int(kf.point_ids[idx]))
                if point is not None:
                    self.erase_observation(point, kf)
            self.keyframes.pop(kf.id, None)
            self.culled_keyframes.append(kf)
            # drop the heavy per-keypoint data; the pose chain is all that is needed
            kf.features = kf.features.subset(np.zeros(0, dtype=np.int64))
            kf.kp_undist = kf.kp_undist[:0]
            kf.inv_sigma2 = kf.inv_sigma2[:0]
            kf.point_ids = kf.point_ids[:0]
            kf.colors = kf.colors[:0]
            kf.track_ids = None

    # ------------------------------------------------------------------ point geometry
    def update_points_geometry(self, points: list[MapPoint], scale_factor: float, num_levels: int) -> None:
        """Recompute each point's mean viewing direction and scale-invariance distance range, vectorised over
        all their observations.

        normal: mean of the unit vectors point -> observing keyframe centres; distance range from the
        distance to the reference keyframe (the creating one when it still observes the point, else
        the first observer) and the octave the point was seen at there.
        """
        with self.lock:
            keyframes = self.keyframes
            row_of_kf: dict[int, int] = {}  # only the keyframes these points' observations name
            ref_kfs: list[KeyFrame] = []
            owners, rows, ref_rows, ref_idx, used = [], [], [], [], []
            for point in points:
                obs = [(kid, idx) for kid, idx in point.observations.items() if kid in keyframes]
                if not obs:
                    continue
                for kid, _ in obs:
                    row = row_of_kf.get(kid)
                    if row is None:
                        row = row_of_kf[kid] = len(row_of_kf)
                    rows.append(row)
                kid, idx = next(((k, i) for k, i in obs if k == point.first_kf_id), obs[0])
                ref_rows.append(row_of_kf[kid])
                ref_kfs.append(keyframes[kid])
                ref_idx.append(idx)
                owners += [len(used)] * len(obs)
                used.append(point)
            if not used:
                return
            centers = np.array([keyframes[kid].center for kid in row_of_kf])  # dicts keep insertion order
            ref_octaves = [int(kf.features.octaves[i]) for kf, i in zip(ref_kfs, ref_idx)]
            X = np.array([p.position for p in used], dtype=np.float64)
            owners_a = np.asarray(owners, np.int64)
            v = centers[np.asarray(rows, np.int64)] - X[owners_a]
            n = np.sqrt((v * v).sum(axis=1))
            unit = np.where(n[:, None] > 0, v / np.maximum(n, 1e-300)[:, None], 0.0)
            sums = np.zeros_like(X)
            np.add.at(sums, owners_a, unit)
            counts = np.bincount(owners_a, weights=(n > 0).astype(np.float64), minlength=len(used))
            mean = sums / np.maximum(counts, 1)[:, None]
            norm = np.sqrt((mean * mean).sum(axis=1))
            ref_dist = np.sqrt(((centers[np.asarray(ref_rows, np.int64)] - X) ** 2).sum(axis=1))
            max_d = ref_dist * scale_factor ** np.asarray(ref_octaves, np.float64) * 1.2
            min_d = max_d / (scale_factor ** max(num_levels - 1, 1)) / 1.44
            normals = mean / np.maximum(norm, 1e-12)[:, None]
            has_rays = (counts > 0).tolist()
            for point, normal, ok, lo, hi in zip(used, normals, has_rays, min_d.tolist(), max_d.tolist()):
                if ok:
                    point.normal = normal.copy()  # not a view that would keep the whole batch alive
                point.max_distance = hi
                point.min_distance = lo

    def update_points_descriptors(self, points: list[MapPoint]) -> None:
        """Give each point the observation descriptor with the least median distance to the others.

        Points with the same number of observations are compared in one batch (ties go to the first
        observation). Nothing is recomputed while a point's observations are those of the last choice;
        with two observations the descriptor is kept.
        """
        groups: dict[int, tuple[list[MapPoint], list[np.ndarray]]] = {}
        with self.lock:
            for point in points:
                source = hash(tuple(point.observations.items())) or 1
                if source == point.descriptor_source:
                    continue
                point.descriptor_source = source
                descs = []
                binary = False
                for kf_id, idx in point.observations.items():
                    kf = self.keyframes.get(kf_id)
                    if kf is not None and idx < len(kf.features):
                        descs.append(kf.features.descriptors[idx])
                        binary = kf.features.binary
                if len(descs) < 3:
                    if len(descs) == 1:
                        point.descriptor = descs[0]
                    continue
                key = len(descs) if binary else -len(descs)  # binary and float descriptors apart
                group = groups.setdefault(key, ([], []))
                group[0].append(point)
                group[1].append(np.asarray(descs))
        for key, (pts, stacks) in groups.items():
            n, dims = stacks[0].shape
            step = max(1, _PAIRWISE_BUDGET // (n * n * dims))  # points per batch: bounds the (G, n, n, dims) array
            for start in range(0, len(pts), step):
                D = np.stack(stacks[start:start + step])  # (G, n, bytes or dims)
                if key > 0:  # binary: Hamming distance by a popcount table
                    dist = _POPCOUNT[D[:, :, None, :] ^ D[:, None, :, :]].sum(axis=3, dtype=np.int64)
                else:
                    Df = D.astype(np.float32)
                    dist = np.sqrt(np.maximum(((Df[:, :, None, :] - Df[:, None, :, :]) ** 2).sum(axis=3), 0))
                best = np.argmin(np.median(dist, axis=2), axis=1)
                for point, d, b in zip(pts[start:start + step], D, best):
                    point.descriptor = d[int(b)].copy()  # not a view that would keep the whole batch alive

    # ------------------------------------------------------------------ covisibility
    def covisibility(self, kf: KeyFrame) -> Counter:
        """Keyframe id -> number of map points shared with ``kf`` (excluding ``kf`` itself)."""
        with self.lock:
            found = map(self.points.get, kf.point_ids[kf.point_ids >= 0].tolist())
            counts = Counter(chain.from_iterable(point.observations for point in found if point is not None))
            counts.pop(kf.id, None)
            return counts

    def best_covisible(self, kf: KeyFrame, n: int, min_shared: int = 1) -> list[KeyFrame]:
        """Up to ``n`` keyframes sharing the most points with ``kf``, best first (ties by id)."""
        with self.lock:
            counts = self.covisibility(kf)
            ranked = sorted(
                (c, -kid) for kid, c in counts.items() if c >= min_shared and kid in self.keyframes
            )[::-1]
            return [self.keyframes[-kid] for _, kid in ranked[:n]]

    def points_of(self, keyframes: list[KeyFrame]) -> list[MapPoint]:
        """Distinct good map points observed by ``keyframes`` (in a deterministic order)."""
        with self.lock:
            ids: set[int] = set()
            for kf in keyframes:
                ids.update(int(i) for i in kf.point_ids[kf.point_ids >= 0])
            return [self.points[i] for i in sorted(ids) if i in self.points]

    def compact(self) -> None:
        """Release what only tracking needs (keypoints, descriptors, observations) once the map is left
        behind after tracking loss; poses, points and colours stay for the outputs."""
        with self.lock:
            for kf in self.keyframes.values():
                kf.features = kf.features.subset(np.zeros(0, dtype=np.int64))
                kf.kp_undist = kf.kp_undist[:0]
                kf.inv_sigma2 = kf.inv_sigma2[:0]
                kf.point_ids = kf.point_ids[:0]
                kf.colors = kf.colors[:0]
                kf.track_ids = None
            for p in self.points.values():
                p.descriptor = p.descriptor[:0]
                p.observations = {}

    # ------------------------------------------------------------------ export
    def point_cloud(self) -> tuple[np.ndarray, np.ndarray]:
        """``(P, 3)`` float64 positions and ``(P, 3)`` uint8 RGB colours of the good points."""
        with self.lock:
            pts = [p for p in self.points.values() if not p.bad]
            if not pts:
                return np.zeros((0, 3)), np.zeros((0, 3), np.uint8)
            return np.array([p.position for p in pts]), np.array([p.color for p in pts], dtype=np.uint8)

    def keyframe_list(self) -> list[KeyFrame]:
        with self.lock:
            return [self.keyframes[k] for k in sorted(self.keyframes)]

    def transform(self, T_new_old: np.ndarray, scale: float = 1.0) -> None:
        """Apply a similarity ``x_new = scale * R x_old + t`` to every pose and point (used when chaining maps)."""
        with self.lock:
            R, t = T_new_old[:3, :3], T_new_old[:3, 3]
            for p in self.points.values():
                p.position = scale * (R @ p.position) + t
            for kf in list(self.keyframes.values()) + self.culled_keyframes:
                T_wc = invert(kf.T_cw)
                T_wc_new = np.eye(4)
                T_wc_new[:3, :3] = R @ T_wc[:3, :3]
                T_wc_new[:3, 3] = scale * (R @ T_wc[:3, 3]) + t
                kf.T_cw = invert(T_wc_new)
                if kf.T_c_parent is not None:
                    kf.T_c_parent = kf.T_c_parent.copy()
                    kf.T_c_parent[:3, 3] *= scale
