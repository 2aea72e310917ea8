"""Dominant planes and the scale between two parts of a map that see one plane (slam.geometry.planes)."""

import numpy as np
import pytest

from slam.geometry.planes import dominant_planes, shared_plane_scale


def _floor(rng, n, height=-1.5):
    return np.c_[rng.uniform(-3, 3, n), np.full(n, height), rng.uniform(0.5, 4, n)]


def _wall(rng, n, axis, at):
    """A wall ``axis = at`` (axis 0: x, 2: z) spanning the room."""
    w = np.c_[rng.uniform(-3, 3, n), rng.uniform(-1.5, 1.5, n), rng.uniform(-3, 3, n)]
    w[:, axis] = at
    return w


def _noisy(rng, *parts, sigma=0.01, clutter=100):
    pts = np.concatenate(parts + (rng.uniform(-3, 3, (clutter, 3)),))
    return pts + rng.normal(0.0, sigma, pts.shape)


def test_dominant_planes_finds_floor_and_wall_among_clutter():
    rng = np.random.default_rng(0)
    pts = _noisy(rng, _wall(rng, 600, 2, 3.0), _floor(rng, 300))
    planes = dominant_planes(pts, 0.03, 50)
    assert len(planes) == 2
    wall, floor = planes
    assert abs(wall.normal[2]) > np.cos(np.radians(1.0)) and abs(floor.normal[1]) > np.cos(np.radians(1.0))
    assert abs(wall.signed_distance(np.zeros(3))) == pytest.approx(3.0, abs=0.02)
    assert abs(floor.signed_distance(np.zeros(3))) == pytest.approx(1.5, abs=0.02)
    assert 570 <= wall.num_inliers <= 640 and 280 <= floor.num_inliers <= 330


@pytest.mark.parametrize("factor", [0.5, 1.7])
def test_floor_seen_before_and_after_a_turn_gives_the_scale(factor):
    """Before: the floor and a wall ahead; after a 90 degree turn: the floor and a side wall, the whole part
    off by ``factor`` about the pivot. The floor alone links them."""
    rng = np.random.default_rng(1)
    pivot = np.array([0.2, 0.1, -0.3])
    before = _noisy(rng, _wall(rng, 600, 2, 3.0), _floor(rng, 300))
    after = _noisy(rng, _wall(rng, 400, 0, 2.5), _floor(rng, 200))
    after = pivot + factor * (after - pivot)
    assert shared_plane_scale(before, after, pivot) == pytest.approx(1.0 / factor, rel=0.03)


def test_parallel_walls_on_opposite_sides_are_not_one_plane():
    """After a half turn the camera sees the wall behind it: parallel to the one before, facing the other way."""
    rng = np.random.default_rng(2)
    pivot = np.zeros(3)
    before = _noisy(rng, _wall(rng, 600, 2, 3.0))
    after = _noisy(rng, _wall(rng, 600, 2, -2.0))
    assert shared_plane_scale(before, after, pivot) is None


def test_two_parallel_planes_on_one_side_that_disagree_give_no_scale():
    """A table top above the floor before, only the floor after: which one is seen again cannot be told."""
    rng = np.random.default_rng(3)
    pivot = np.zeros(3)
    before = _noisy(rng, _floor(rng, 400), _floor(rng, 300, height=-0.7))
    after = _noisy(rng, _floor(rng, 300))
    assert shared_plane_scale(before, after, pivot) is None


def test_too_few_points_give_no_scale():
    rng = np.random.default_rng(4)
    before = _noisy(rng, _floor(rng, 300))
    assert shared_plane_scale(before, _floor(rng, 10), np.zeros(3)) is None
