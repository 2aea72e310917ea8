"""Tests of the g2o adapter (slam.optim) on synthetic scenes with exact ground truth.

Intrinsics are asymmetric (fx != fy, off-centre principal point) so a transposed or swapped convention
cannot pass.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from slam.geometry.se3 import invert, make_T, rotation_angle, so3_exp
from slam.optim import bundle_adjust, optimize_pose, optimize_pose_graph

INTR = (523.0, 471.0, 301.5, 262.25)  # fx, fy, cx, cy for a 640x480 image


def project(T_cw: np.ndarray, X_w: np.ndarray) -> np.ndarray:
    fx, fy, cx, cy = INTR
    Pc = X_w @ T_cw[:3, :3].T + T_cw[:3, 3]
    return np.stack([fx * Pc[:, 0] / Pc[:, 2] + cx, fy * Pc[:, 1] / Pc[:, 2] + cy], axis=1)


def perturb(T: np.ndarray, rng, rot: float, trans: float) -> np.ndarray:
    return make_T(so3_exp(rng.normal(0, rot, 3)), rng.normal(0, trans, 3)) @ T


def pose_scene(rng, n=300, noise=0.3, outlier_frac=0.2):
    T_true = make_T(so3_exp([0.1, -0.2, 0.05]), [0.6, -0.4, 0.8])
    Xc = np.c_[rng.uniform(-2.5, 2.5, (n, 2)), rng.uniform(3.0, 8.0, n)]
    Xw = (Xc - T_true[:3, 3]) @ T_true[:3, :3]  # camera -> world with T_wc = inv(T_true)
    uv = project(T_true, Xw) + rng.normal(0, noise, (n, 2))
    bad = np.zeros(n, bool)
    bad[rng.choice(n, int(outlier_frac * n), replace=False)] = True
    uv[bad] += rng.uniform(15, 60, (bad.sum(), 2)) * rng.choice([-1, 1], (bad.sum(), 2))
    return T_true, Xw, uv, bad


# ------------------------------------------------------------------------------------ optimize_pose
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_pose_recovers_from_perturbed_start_with_outliers(seed):
    rng = np.random.default_rng(seed)
    # 0.1 px noise on inliers (sigma = 1 px assumed by the weights), 20 % gross outliers of 15-60 px
    T_true, Xw, uv, bad = pose_scene(rng, noise=0.1)
    T0 = make_T(so3_exp([0.03, -0.02, 0.025]), [0.08, -0.05, 0.1]) @ T_true  # ~2.5 deg, 14 cm off
    res = optimize_pose(T0, Xw, uv, np.full(len(Xw), 1.0), INTR)
    rot_err = np.degrees(rotation_angle(res.T_cw[:3, :3] @ T_true[:3, :3].T))
    c_est, c_true = invert(res.T_cw)[:3, 3], invert(T_true)[:3, 3]
    assert rot_err < 0.05
    assert np.linalg.norm(res.T_cw[:3, 3] - T_true[:3, 3]) < 1e-3 * np.linalg.norm(T_true[:3, 3])
    assert np.linalg.norm(c_est - c_true) < 1e-3 * np.linalg.norm(c_true)
    assert not res.inliers[bad].any(), "a gross outlier was kept"
    assert res.inliers[~bad].mean() > 0.97
    assert res.num_inliers == int(res.inliers.sum())
    assert res.chi2.shape == (len(Xw),)
    assert np.all(res.chi2[bad] > 5.991)


def test_pose_exact_data_is_exact_and_conventions_hold():
    rng = np.random.default_rng(5)
    T_true, Xw, uv, _ = pose_scene(rng, n=80, noise=0.0, outlier_frac=0.0)
    res = optimize_pose(perturb(T_true, rng, 0.02, 0.05), Xw, uv, 1.0, INTR, robust=False)
    assert np.abs(res.T_cw - T_true).max() < 1e-6
    assert res.chi2.max() < 1e-8
    # the same data with fx/fy swapped must not fit: the convention is really (fx, fy, cx, cy)
    swapped = optimize_pose(T_true, Xw, uv, 1.0, (INTR[1], INTR[0], INTR[2], INTR[3]), robust=False)
    assert swapped.num_inliers < len(Xw)


def test_pose_weights_are_information():
    """inv_sigma2 scales chi2: doubling it doubles every chi2 at the same pose."""
    rng = np.random.default_rng(3)
    T_true, Xw, uv, _ = pose_scene(rng, n=50, noise=0.5, outlier_frac=0.0)
    r1 = optimize_pose(T_true, Xw, uv, 1.0, INTR, rounds=0)
    r2 = optimize_pose(T_true, Xw, uv, 2.0, INTR, rounds=0)
    np.testing.assert_allclose(r2.chi2, 2 * r1.chi2, rtol=1e-12)
    np.testing.assert_allclose(r1.chi2, ((uv - project(T_true, Xw)) ** 2).sum(1), rtol=1e-9)


def test_pose_degenerate_inputs():
    T = make_T(so3_exp([0.1, 0.0, 0.0]), [0.0, 0.1, 0.0])
    empty = optimize_pose(T, np.zeros((0, 3)), np.zeros((0, 2)), np.zeros(0), INTR)
    assert np.array_equal(empty.T_cw, T) and empty.num_inliers == 0 and empty.inliers.shape == (0,)

    rng = np.random.default_rng(7)
    T_true, Xw, uv, _ = pose_scene(rng, n=60, noise=0.0, outlier_frac=0.0)
    Xw[0] = invert(T_true)[:3, :3] @ np.array([0.1, 0.2, -3.0]) + invert(T_true)[:3, 3]  # behind
    Xw[1] = np.nan  # broken point
    res = optimize_pose(perturb(T_true, rng, 0.01, 0.02), Xw, uv, 1.0, INTR)
    assert np.isfinite(res.T_cw).all()
    assert not res.inliers[0] and not res.inliers[1] and res.inliers[2:].all()
    assert np.abs(res.T_cw - T_true).max() < 1e-6

    all_behind = np.tile(invert(T_true)[:3, 3] - 5.0 * invert(T_true)[:3, 2], (8, 1))  # 5 m behind
    behind = optimize_pose(T_true, all_behind, uv[2:10], 1.0, INTR)
    assert np.array_equal(behind.T_cw, T_true) and behind.num_inliers == 0


def test_pose_bad_shapes_raise():
    with pytest.raises(ValueError):
        optimize_pose(np.eye(3), np.zeros((1, 3)), np.zeros((1, 2)), 1.0, INTR)
    with pytest.raises(ValueError):
        optimize_pose(np.eye(4), np.zeros((2, 3)), np.zeros((3, 2)), 1.0, INTR)


# ------------------------------------------------------------------------------------ bundle_adjust
def ba_scene(rng, n_kf=8, n_pts=300, noise=0.5):
    """Keyframes on an arc looking at a point cloud; every point seen by every keyframe it projects into."""
    T_wc = []
    for k in range(n_kf):
        T_wc.append(make_T(so3_exp([0.0, 0.04 * k - 0.15, 0.01 * k]), [0.25 * k - 1.0, 0.05 * np.sin(k), 0.0]))
    T_cw = invert(np.stack(T_wc))
    X = np.c_[rng.uniform(-3, 3, (n_pts, 2)), rng.uniform(5, 10, n_pts)]
    kf, pt, uv = [], [], []
    for k in range(n_kf):
        u = project(T_cw[k], X)
        vis = (u[:, 0] > 0) & (u[:, 0] < 640) & (u[:, 1] > 0) & (u[:, 1] < 480)
        kf += [k] * int(vis.sum())
        pt += list(np.flatnonzero(vis))
        uv.append(u[vis])
    uv = np.concatenate(uv) + rng.normal(0, noise, (len(kf), 2))
    return T_cw, X, np.array(kf), np.array(pt), uv


def rms_reproj(T_cw, X, kf, pt, uv, mask):
    err = [uv[i] - project(T_cw[kf[i]], X[pt[i]][None])[0] for i in np.flatnonzero(mask)]
    return float(np.sqrt(np.mean(np.sum(np.square(err), axis=1))))


def test_bundle_adjust_reduces_error_to_noise_and_keeps_fixed_keyframes():
    rng = np.random.default_rng(0)
    noise = 0.5
    T_true, X_true, kf, pt, uv = ba_scene(rng, noise=noise)
    bad = rng.random(len(kf)) < 0.05
    uv[bad] += rng.uniform(20, 50, (bad.sum(), 2))
    fixed = np.zeros(len(T_true), bool)
    fixed[:2] = True
    T0 = T_true.copy()
    for k in range(2, len(T0)):
        T0[k] = perturb(T_true[k], rng, 0.005, 0.03)
    X0 = X_true + rng.normal(0, 0.1, X_true.shape)
    inv_s2 = np.full(len(kf), 1.0 / noise**2)
    res = bundle_adjust(T0, fixed, X0, kf, pt, uv, inv_s2, INTR)

    assert np.array_equal(res.T_cw[:2], T0[:2]), "fixed keyframes moved"
    assert res.final_chi2 < 0.01 * res.initial_chi2
    assert not res.aborted and res.iterations > 0
    assert res.outliers[bad].all(), "gross outliers not flagged"
    assert res.outliers[~bad].mean() < 0.08  # chi2(2) > 5.991 for 5 % of good observations
    assert rms_reproj(res.T_cw, res.points_w, kf, pt, uv, ~res.outliers) < 1.2 * noise * np.sqrt(2)
    assert rms_reproj(T0, X0, kf, pt, uv, ~bad) > 10 * noise
    # poses near the truth (the scale is fixed by the two fixed keyframes)
    for k in range(2, len(T0)):
        assert np.degrees(rotation_angle(res.T_cw[k, :3, :3] @ T_true[k, :3, :3].T)) < 0.1
        assert np.linalg.norm(invert(res.T_cw[k])[:3, 3] - invert(T_true[k])[:3, 3]) < 0.02
    np.testing.assert_array_equal(res.outliers, ~(res.chi2 <= 5.991))


def test_points_converge_when_gauge_is_fixed_by_two_fixed_keyframes():
    rng = np.random.default_rng(1)
    T_true, X_true, kf, pt, uv = ba_scene(rng, n_kf=4, n_pts=120, noise=0.0)
    fixed = np.array([True, True, False, False])
    T0 = T_true.copy()
    T0[2:] = [perturb(T, rng, 0.003, 0.02) for T in T_true[2:]]
    X0 = X_true + rng.normal(0, 0.2, X_true.shape)
    res = bundle_adjust(T0, fixed, X0, kf, pt, uv, 1.0, INTR, robust=False)
    ids = np.arange(len(X_true))
    seen_by_fixed = np.isin(ids, pt[kf == 0]) & np.isin(ids, pt[kf == 1])
    assert seen_by_fixed.sum() > 50
    assert np.abs(res.points_w[seen_by_fixed] - X_true[seen_by_fixed]).max() < 1e-5
    assert np.abs(res.T_cw - T_true).max() < 1e-6
    assert not res.outliers.any()


def test_bundle_adjust_fix_points_and_unobserved_elements_unchanged():
    rng = np.random.default_rng(2)
    T_true, X_true, kf, pt, uv = ba_scene(rng, n_kf=5, n_pts=100, noise=0.3)
    X0 = X_true + rng.normal(0, 0.05, X_true.shape)
    X0 = np.vstack([X0, [[1.0, 2.0, 3.0]]])  # a point nobody observes
    T0 = np.concatenate([T_true, [np.eye(4)]])  # a keyframe that observes nothing
    fix_points = np.zeros(len(X0), bool)
    fix_points[:10] = True
    fixed = np.zeros(len(T0), bool)
    fixed[0] = True
    res = bundle_adjust(T0, fixed, X0, kf, pt, uv, 1.0, INTR, fix_points=fix_points)
    assert np.array_equal(res.points_w[:10], X0[:10])
    assert np.array_equal(res.points_w[-1], X0[-1]) and np.array_equal(res.T_cw[-1], np.eye(4))
    assert not np.array_equal(res.points_w[10:-1], X0[10:-1])


def test_bundle_adjust_degenerate_inputs():
    T = np.stack([np.eye(4), make_T(np.eye(3), [-0.5, 0, 0])])
    X = np.array([[0.0, 0.0, 5.0], [0.0, 0.0, -5.0], [np.nan, 0, 1]])
    # zero observations
    res = bundle_adjust(T, [True, False], X, [], [], np.zeros((0, 2)), [], INTR)
    assert res.outliers.shape == (0,) and np.array_equal(res.T_cw, T)
    # a point behind both cameras and a NaN point: flagged, no crash, finite output elsewhere
    kf = np.array([0, 1, 0, 1, 0])
    pt = np.array([0, 0, 1, 1, 2])
    uv = np.r_[project(T[0], X[:1]), project(T[1], X[:1]), [[300, 200], [310, 220], [1, 1]]]
    res = bundle_adjust(T, [True, False], X, kf, pt, uv, 1.0, INTR)
    assert list(res.outliers) == [False, False, True, True, True]
    assert np.isfinite(res.T_cw).all() and np.isfinite(res.points_w[:2]).all()
    # everything fixed: nothing to optimise, results are the input
    res = bundle_adjust(T, [True, True], X, kf, pt, uv, 1.0, INTR, fix_points=np.ones(3, bool))
    assert np.array_equal(res.T_cw, T) and res.iterations == 0
    with pytest.raises(ValueError):
        bundle_adjust(T, [True, False], X, [2], [0], np.zeros((1, 2)), 1.0, INTR)


class _AbortWhenWatched(threading.Event):
    """An abort event that becomes set the moment the optimiser starts watching it (deterministic abort)."""

    def wait(self, timeout=None):
        self.set()
        return super().wait(timeout)


def perturbed_ba_problem(seed: int, n_pts: int):
    """Six keyframes (the first two fixed) and points, poses and points perturbed from the truth:
    ``(T0, fixed, X0, kf, pt, uv)``."""
    rng = np.random.default_rng(seed)
    T_true, X_true, kf, pt, uv = ba_scene(rng, n_kf=6, n_pts=n_pts, noise=0.5)
    fixed = np.zeros(len(T_true), bool)
    fixed[:2] = True
    T0 = T_true.copy()
    T0[2:] = [perturb(T, rng, 0.01, 0.05) for T in T_true[2:]]
    X0 = X_true + rng.normal(0, 0.2, X_true.shape)
    return T0, fixed, X0, kf, pt, uv


def test_bundle_adjust_abort():
    T0, fixed, X0, kf, pt, uv = perturbed_ba_problem(4, 400)

    pre = threading.Event()
    pre.set()
    res = bundle_adjust(T0, fixed, X0, kf, pt, uv, 1.0, INTR, abort=pre)
    assert res.aborted and res.iterations == 0 and np.array_equal(res.T_cw, T0)

    full = bundle_adjust(T0, fixed, X0, kf, pt, uv, 1.0, INTR, abort=threading.Event(),
                         first_iterations=50, iterations=50)
    assert not full.aborted and full.final_chi2 < 0.01 * full.initial_chi2
    assert full.iterations > 5

    res = bundle_adjust(T0, fixed, X0, kf, pt, uv, 1.0, INTR, abort=_AbortWhenWatched(),
                        first_iterations=50, iterations=50)
    assert res.aborted
    assert res.iterations <= 3, "abort did not stop the first stage (or the second stage ran)"
    assert np.isfinite(res.T_cw).all() and np.isfinite(res.points_w).all()


# ------------------------------------------------------------------------------- optimize_pose_graph
def test_pose_graph_closes_a_loop_with_scale_drift():
    rng = np.random.default_rng(6)
    n = 12
    a = 2 * np.pi * np.arange(n) / n  # cameras on a circle of radius 3 m
    T_wc = [make_T(so3_exp([0, a[k], 0]), [3 * np.sin(a[k]), 0, 3 * np.cos(a[k])]) for k in range(n)]
    T_true = invert(np.stack(T_wc))
    edges = [(k, k + 1) for k in range(n - 1)] + [(0, n - 1), (0, 2), (5, 9)]
    T_ji = np.stack([T_true[j] @ invert(T_true[i]) for i, j in edges])
    # start: drifting poses (accumulated rotation/translation error and scale drift)
    S0 = T_true.copy()
    drift = np.eye(4)
    for k in range(1, n):
        drift = perturb(drift, rng, 0.01, 0.05)
        S = drift @ T_true[k]
        S[:3, :3] *= 1.0 + 0.02 * k  # scale drift as monocular SLAM accumulates it
        S0[k] = S
    fixed = np.zeros(n, bool)
    fixed[0] = True
    res = optimize_pose_graph(S0, np.array(edges), T_ji, fixed)
    assert res.final_chi2 < 1e-10 * max(res.initial_chi2, 1.0) + 1e-12
    assert np.array_equal(res.S_cw[0], S0[0])
    np.testing.assert_allclose(res.T_cw, T_true, atol=1e-6)
    np.testing.assert_allclose(res.scale, 1.0, atol=1e-6)


def test_pose_graph_sim3_edge_scale_is_used():
    """A loop edge with a scale of 2 makes the optimum a similarity: S_cw[1] has scale 2 relative to 0."""
    T0 = np.stack([np.eye(4), make_T(np.eye(3), [0.0, 0.0, -1.0])])
    S_10 = make_T(np.eye(3), [0.0, 0.0, -1.0])
    S_10[:3, :3] *= 2.0
    res = optimize_pose_graph(T0, [[0, 1]], S_10[None], [True, False])
    np.testing.assert_allclose(res.S_cw[1], S_10, atol=1e-8)
    assert abs(res.scale[1] - 2.0) < 1e-8
    np.testing.assert_allclose(res.T_cw[1][:3, 3], [0, 0, -0.5], atol=1e-8)
    empty = optimize_pose_graph(T0, np.zeros((0, 2), int), np.zeros((0, 4, 4)), [True, False])
    assert np.array_equal(empty.T_cw, T0) and empty.iterations == 0


# ------------------------------------------------------------------------------------ BundleProcess
def test_bundle_process_gives_the_in_process_result_aborts_and_falls_back():
    from slam.optim.bundle_process import BundleProcess

    T0, fixed, X0, kf, pt, uv = perturbed_ba_problem(5, 200)
    args = (T0, fixed, X0, kf, pt, uv, 1.0, INTR)

    here = bundle_adjust(*args, deterministic=True)
    solver = BundleProcess()
    try:
        there = solver(*args, deterministic=True, abort=threading.Event())
        assert there.iterations == here.iterations > 0 and not there.aborted
        np.testing.assert_allclose(there.T_cw, here.T_cw, atol=1e-12)
        np.testing.assert_allclose(there.points_w, here.points_w, atol=1e-12)
        np.testing.assert_array_equal(there.outliers, here.outliers)

        pre = threading.Event()
        pre.set()  # an abort set before the call reaches the child: nothing is optimised
        res = solver(*args, abort=pre)
        assert res.aborted and res.iterations == 0 and np.array_equal(res.T_cw, T0)

        class SetOnSecondLook(threading.Event):  # clear when the call starts, set while the child works
            looks = 0

            def is_set(self):
                self.looks += 1
                return self.looks > 1

        big = perturbed_ba_problem(6, 3000)
        res = solver(*big, 1.0, INTR, abort=SetOnSecondLook(), first_iterations=50, iterations=50)
        assert res.aborted and res.iterations < 50

        with pytest.raises(RuntimeError, match="ValueError"):  # bad input: the child's error, raised here
            solver(T0, fixed, X0, [99], [0], np.zeros((1, 2)), 1.0, INTR)
        assert solver.alive

        solver._proc.kill()  # the child dies: the call runs in this process instead
        solver._proc.wait(5)
        again = solver(*args, deterministic=True)
        assert not solver.alive
        np.testing.assert_allclose(again.T_cw, here.T_cw, atol=1e-12)
    finally:
        solver.close()
    assert solver._proc.poll() is not None


@pytest.fixture(scope="module")
def small_tube(tmp_path_factory):
    from slam.synth import generate

    return generate("tube", tmp_path_factory.mktemp("ba_process") / "tube", frames=30, seed=2, size=(320, 240))


def test_threaded_run_adjusts_in_a_child_process_and_ends_it(small_tube, tmp_path, monkeypatch):
    """A threaded run's local BA goes through a BundleProcess, whose child is gone once the run ends."""
    from slam.config import load_config
    from slam.optim import bundle_process
    from slam.runner import run_source
    from slam.sources import open_source

    calls = []
    real_call = bundle_process.BundleProcess.__call__

    def counting(self, *args, **kwargs):
        calls.append((self, self.alive))
        return real_call(self, *args, **kwargs)

    cfg = load_config(None, ["system.sync=false"])
    monkeypatch.setattr(bundle_process.BundleProcess, "__call__", counting)
    outcome = run_source(open_source(str(small_tube), cfg.source), cfg, tmp_path / "out")
    assert outcome.result.stats["tracked_fraction"] >= 0.9
    assert len(calls) >= 2 and all(alive for _, alive in calls), "local BA did not run in the child process"
    assert all(solver._proc.poll() is not None for solver, _ in calls), "the child outlived the run"


def test_threaded_run_without_a_child_process_adjusts_in_its_mapping_thread(small_tube, tmp_path, monkeypatch,
                                                                           caplog):
    """Where no child process can start, BundleProcess leaks no pipe and the run's BA stays in-process."""
    import os

    from slam.config import load_config
    from slam.optim import bundle_process
    from slam.runner import run_source
    from slam.sources import open_source

    def no_process(*args, **kwargs):
        raise OSError("no processes here")

    monkeypatch.setattr(bundle_process.subprocess, "Popen", no_process)
    fds = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    with pytest.raises(OSError):
        bundle_process.BundleProcess()
    if fds is not None:
        assert len(os.listdir("/proc/self/fd")) == fds, "pipes left open"

    cfg = load_config(None, ["system.sync=false"])
    outcome = run_source(open_source(str(small_tube), cfg.source), cfg, tmp_path / "out")
    assert outcome.result.stats["tracked_fraction"] >= 0.9
    assert "cannot start the bundle adjustment process" in caplog.text
