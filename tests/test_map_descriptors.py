"""A map point's descriptor is the observation descriptor with the least median distance to the others."""

from __future__ import annotations

import numpy as np
import pytest

import slam.map.map as map_module
from slam.features.base import Features
from slam.map.map import KeyFrame, Map


def _keyframe(m: Map, descriptors: np.ndarray, binary: bool) -> KeyFrame:
    n = len(descriptors)
    feats = Features(
        keypoints=np.zeros((n, 2), np.float32), descriptors=descriptors, octaves=np.zeros(n, np.int32),
        sizes=np.full(n, 7.0, np.float32), angles=np.full(n, -1.0, np.float32), responses=np.ones(n, np.float32),
        binary=binary, scale_factor=1.2,
    )
    kf = KeyFrame(id=m.new_keyframe_id(), frame_index=0, timestamp=0.0, T_cw=np.eye(4), features=feats,
                  kp_undist=np.zeros((n, 2)), inv_sigma2=np.ones(n), point_ids=np.full(n, -1, np.int64),
                  colors=np.zeros((n, 3), np.uint8))
    m.add_keyframe(kf)
    return kf


def _medoid(descs: np.ndarray, binary: bool) -> np.ndarray:
    """Reference: pairwise distances written out, first of the least median distance."""
    n = len(descs)
    dist = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if binary:
                dist[i, j] = sum(bin(int(a) ^ int(b)).count("1") for a, b in zip(descs[i], descs[j]))
            else:
                dist[i, j] = np.linalg.norm(descs[i].astype(np.float64) - descs[j].astype(np.float64))
    return descs[int(np.argmin(np.median(dist, axis=1)))]


@pytest.mark.parametrize("small_batches", [False, True])
@pytest.mark.parametrize("binary", [True, False])
def test_batched_descriptor_choice_is_each_points_medoid(binary, small_batches, monkeypatch):
    if small_batches:  # one point per batch: the memory bound on a batch must not change the choice
        monkeypatch.setattr(map_module, "_PAIRWISE_BUDGET", 1)
    rng = np.random.default_rng(7)
    num_kfs, num_points = 6, 40
    if binary:
        descs = rng.integers(0, 256, (num_kfs, num_points, 32), dtype=np.uint8)
        descs[:, :5] = descs[0, :5]  # identical descriptors: ties go to the first observation
    else:
        descs = rng.normal(size=(num_kfs, num_points, 16)).astype(np.float32)
    m = Map(0)
    kfs = [_keyframe(m, descs[k], binary) for k in range(num_kfs)]
    points = []
    for j in range(num_points):
        seen_by = kfs[: 1 + j % num_kfs]  # 1 to 6 observations
        p = m.create_point(np.zeros(3), descs[0, j], seen_by[0], j)
        for kf in seen_by[1:]:
            m.add_observation(p, kf, j)
        p.descriptor = np.zeros_like(descs[0, j])  # so an unchanged descriptor is noticed
        p.descriptor_source = 0
        points.append(p)

    m.update_points_descriptors(points)

    for j, p in enumerate(points):
        n_obs = 1 + j % num_kfs
        if n_obs == 2:
            assert not p.descriptor.any()  # two views do not choose (as before)
        else:
            assert np.array_equal(p.descriptor, _medoid(descs[:n_obs, j], binary)), j
    # nothing changes while the observations stay the same
    before = [p.descriptor for p in points]
    m.update_points_descriptors(points)
    assert all(a is b for a, b in zip(before, (p.descriptor for p in points)))
