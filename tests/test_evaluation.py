"""Trajectory evaluation: Umeyama alignment, readers, association, ATE/RPE against evo's golden results
and evo itself, plots and the ``slam eval`` command."""

from __future__ import annotations

import argparse
import io
import json
import math
import zipfile

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from slam.errors import InputError
from slam.evaluation.association import associate
from slam.evaluation.command import add_arguments, run
from slam.evaluation.metrics import (
    error_stats,
    evaluate,
    pairs_by_path,
    relative_pose_errors,
)
from slam.evaluation.plot import save_eval_plot, top_view_axes
from slam.evaluation.readers import (
    detect_format,
    read_euroc_csv,
    read_kitti,
    read_trajectory,
)
from slam.evaluation.trajectory import Trajectory, write_tum
from slam.geometry.alignment import align_trajectory, transform_trajectory, umeyama
from tests.conftest import shared_sequence


# ----------------------------------------------------------------------------------------- helpers
def _random_trajectory(n: int, seed: int, dt: float = 1 / 30, t0: float = 100.0) -> Trajectory:
    """A smooth random-walk trajectory with random orientations, ``n`` poses ``dt`` apart."""
    rng = np.random.default_rng(seed)
    T = np.tile(np.eye(4), (n, 1, 1))
    T[:, :3, 3] = np.cumsum(rng.normal(scale=0.05, size=(n, 3)) + [0.03, 0.01, 0.0], axis=0)
    rotvec = np.cumsum(rng.normal(scale=0.02, size=(n, 3)), axis=0)
    T[:, :3, :3] = Rotation.from_rotvec(rotvec).as_matrix()
    return Trajectory(t0 + dt * np.arange(n), T)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="slam eval")
    add_arguments(p)
    return p


def _evo_archive(ref_dir, name: str) -> tuple[dict, np.ndarray]:
    """``stats.json`` and ``error_array.npz`` of one of evo's result archives."""
    with zipfile.ZipFile(ref_dir / "res_files" / f"{name}.zip") as zf:
        stats = json.loads(zf.read("stats.json"))
        errors = np.load(io.BytesIO(zf.read("error_array.npz")))
    return stats, np.asarray(errors)


# --------------------------------------------------------------------------------------- alignment
def test_umeyama_sim3_round_trip():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(50, 3)) * [3.0, 1.0, 0.5]
    R_true = Rotation.random(random_state=1).as_matrix()
    t_true = np.array([1.5, -2.0, 0.7])
    dst = 2.5 * src @ R_true.T + t_true
    R, t, s = umeyama(src, dst, with_scale=True)
    assert s == pytest.approx(2.5, rel=1e-10)
    np.testing.assert_allclose(R, R_true, atol=1e-10)
    np.testing.assert_allclose(t, t_true, atol=1e-10)
    assert np.linalg.det(R) == pytest.approx(1.0)
    # Noisy points: still close, and the residual is the noise level.
    noisy = dst + rng.normal(scale=0.01, size=dst.shape)
    R2, t2, s2 = umeyama(src, noisy, with_scale=True)
    assert abs(s2 - 2.5) < 0.01
    assert np.degrees(np.arccos((np.trace(R2.T @ R_true) - 1) / 2)) < 0.5


def test_umeyama_se3_and_none():
    rng = np.random.default_rng(2)
    src = rng.normal(size=(30, 3))
    R_true = Rotation.random(random_state=3).as_matrix()
    t_true = np.array([-0.3, 4.0, 2.0])
    dst = src @ R_true.T + t_true
    R, t, s = umeyama(src, dst, with_scale=False)
    assert s == 1.0
    np.testing.assert_allclose(R, R_true, atol=1e-10)
    np.testing.assert_allclose(t, t_true, atol=1e-10)
    # SE3 on scaled data keeps s = 1 and so leaves a residual; Sim3 removes it.
    R, t, s = umeyama(src, 3.0 * dst, with_scale=False)
    assert s == 1.0 and np.abs(src @ R.T + t - 3.0 * dst).max() > 0.5

    gt = _random_trajectory(40, seed=4)
    moved = transform_trajectory(gt, R_true, t_true, 0.4)
    none_al, sim_none = align_trajectory(moved, gt, "none")
    np.testing.assert_array_equal(none_al.T_wc, moved.T_wc)
    assert sim_none.s == 1.0
    sim_al, sim = align_trajectory(moved, gt, "sim3")
    assert sim.s == pytest.approx(2.5, rel=1e-9)
    np.testing.assert_allclose(sim_al.T_wc, gt.T_wc, atol=1e-9)  # rotations follow the alignment too
    with pytest.raises(InputError, match="unknown alignment"):
        align_trajectory(moved, gt, "affine")


def test_umeyama_degenerate_points_give_no_nan():
    src = np.tile([1.0, 2.0, 3.0], (10, 1))
    dst = np.tile([4.0, 5.0, 6.0], (10, 1))
    R, t, s = umeyama(src, dst, with_scale=True)
    assert s == 1.0 and np.all(np.isfinite(R)) and np.all(np.isfinite(t))
    np.testing.assert_allclose(src @ R.T * s + t, dst)

    # A still estimate against a still ground truth: evaluate() must not crash and stays JSON-ready.
    n = 20
    T = np.tile(np.eye(4), (n, 1, 1))
    est = Trajectory(np.arange(n) * 0.05, T)
    gt = Trajectory(np.arange(n) * 0.05, T.copy())
    result = evaluate(est, gt, align="sim3")
    d = result.to_dict()
    json.dumps(d)
    assert d["scale"] == 1.0 and d["ate_rmse"] == pytest.approx(0.0, abs=1e-12)
    assert d["ate_percent_of_path"] is None and d["rpe_dist_num_pairs"] == 0


# ------------------------------------------------------------------------------------- association
def test_association_with_jittered_timestamps():
    rng = np.random.default_rng(5)
    gt_t = 10.0 + np.arange(300) / 30.0  # 30 Hz, 33 ms apart
    keep = np.sort(rng.choice(300, size=200, replace=False))
    est_t = gt_t[keep] + rng.uniform(-0.008, 0.008, size=keep.size)
    est_idx, gt_idx = associate(est_t, gt_t, max_diff=0.02)
    np.testing.assert_array_equal(est_idx, np.arange(200))
    np.testing.assert_array_equal(gt_idx, keep)

    # Offset: the estimate's clock runs 0.5 s behind.
    est_idx, gt_idx = associate(est_t - 0.5, gt_t, max_diff=0.02, offset=0.5)
    np.testing.assert_array_equal(gt_idx, keep)

    # Too far apart: nothing matches.
    est_idx, _ = associate(gt_t[:10] + 0.015, gt_t[:10], max_diff=0.01)
    assert est_idx.size == 0

    # One-to-one: two estimates near one ground-truth stamp; the closer one wins, the other is left out.
    est_idx, gt_idx = associate(np.array([1.004, 1.001, 2.0]), np.array([1.0, 2.0, 3.0]), max_diff=0.02)
    np.testing.assert_array_equal(est_idx, [1, 2])
    np.testing.assert_array_equal(gt_idx, [0, 1])


def test_tracked_fraction_and_too_few_matches():
    gt = _random_trajectory(100, seed=6)
    keep = np.r_[0:40, 60:90]  # a tracking gap inside the run, nothing after pose 89
    est = Trajectory(gt.timestamps[keep] + 0.003, gt.T_wc[keep])
    r = evaluate(est, gt, align="se3")
    assert r.num_matched == 70
    assert r.tracked_fraction == pytest.approx(70 / 90)  # GT poses 0..89 lie in the estimate's span
    assert r.gt_fraction == pytest.approx(0.7)
    assert r.ate_rmse < 1e-9 and r.rpe_trans["rmse"] < 1e-9

    short = Trajectory(gt.timestamps[:2], gt.T_wc[:2])
    with pytest.raises(InputError, match="only 2 estimated poses"):
        evaluate(short, gt)
    far = Trajectory(gt.timestamps + 100.0, gt.T_wc)
    with pytest.raises(InputError, match="need at least 3"):
        evaluate(far, gt)


def test_monocular_scale_is_recovered_by_sim3():
    gt = _random_trajectory(150, seed=7)
    rng = np.random.default_rng(8)
    R_w = Rotation.random(random_state=9).as_matrix()
    est = transform_trajectory(gt, R_w, np.array([3.0, 1.0, -2.0]), 0.3)  # arbitrary monocular frame
    est.T_wc[:, :3, 3] += rng.normal(scale=0.002, size=(150, 3))
    r = evaluate(est, gt, align="sim3")
    assert r.scale == pytest.approx(1 / 0.3, rel=0.01)
    expected = 0.002 * np.sqrt(3) / 0.3  # the noise, scaled into ground-truth units
    assert 0.7 * expected < r.ate_rmse < 1.3 * expected
    assert r.rpe_rot_deg["rmse"] < 1e-6  # rotations were not perturbed
    r_se3 = evaluate(est, gt, align="se3")
    assert r_se3.scale == 1.0 and r_se3.ate_rmse > 10 * r.ate_rmse


# ------------------------------------------------------------------------- golden values (evo's results)
@pytest.mark.parametrize("name,archive", [("ORB", "orb"), ("SPTAM", "sptam")])
def test_kitti00_ape_matches_evo_archive(name, archive):
    ref = shared_sequence("trajectory_reference")
    gt = read_trajectory(ref / "KITTI_00_gt.txt")
    est = read_trajectory(ref / f"KITTI_00_{name}.txt")
    stats, errors = _evo_archive(ref, f"{archive}_ape")
    r = evaluate(est, gt, align="se3", rpe_delta_m=10.0)
    assert r.num_matched == len(errors) == 4541
    d = r.to_dict()
    for key in ("rmse", "mean", "median", "max", "min", "std"):
        assert d[f"ate_{key}"] == pytest.approx(stats[key], abs=1e-6), key
    np.testing.assert_allclose(r.ate_errors, errors, atol=1e-6)


@pytest.mark.parametrize("name,archive", [("ORB", "orb"), ("SPTAM", "sptam")])
def test_kitti00_rpe_matches_evo_archive(name, archive):
    """evo's archived RPE (delta 10 m, consecutive pairs, not aligned) came from an evo version that chose
    the pairs along the *estimate's* path and dropped the first pair; with those pairs our RPE equals it.
    ``evaluate`` itself takes the pairs along ground truth (independent of estimation errors)."""
    ref = shared_sequence("trajectory_reference")
    gt = read_trajectory(ref / "KITTI_00_gt.txt")
    est = read_trajectory(ref / f"KITTI_00_{name}.txt")
    stats, errors = _evo_archive(ref, f"{archive}_rpe")
    pairs = pairs_by_path(est.positions, 10.0)[1:]
    trans, _ = relative_pose_errors(gt.T_wc, est.T_wc, pairs)
    assert len(trans) == len(errors)
    np.testing.assert_allclose(trans, errors, atol=1e-6)
    s = error_stats(trans)
    for key in ("rmse", "mean", "median", "max"):
        assert s[key] == pytest.approx(stats[key], abs=1e-6), key
    # The ground-truth-path pairs of evaluate(): same scale of error, a few pairs more.
    r = evaluate(est, gt, align="se3", rpe_delta_m=10.0)
    assert abs(r.rpe_dist_num_pairs - len(errors)) < 10
    assert r.rpe_dist_trans["rmse"] == pytest.approx(stats["rmse"], rel=0.1)


def test_compare_with_evo_package():
    """Same association, alignment, APE and RPE numbers as the evo package (skipped without evo)."""
    pytest.importorskip("evo")
    import copy

    from evo.core import metrics, sync
    from evo.tools import file_interface

    ref = shared_sequence("trajectory_reference")
    gt_path, est_path = ref / "V101_gt.txt", ref / "V101_openvins.txt"
    ref_evo = file_interface.read_tum_trajectory_file(str(gt_path))
    est_evo = file_interface.read_tum_trajectory_file(str(est_path))
    ref_s, est_s = sync.associate_trajectories(ref_evo, est_evo, max_diff=0.02)
    gt, est = read_trajectory(gt_path), read_trajectory(est_path)
    for mode in ("sim3", "se3"):
        e = copy.deepcopy(est_s)
        _, _, scale = e.align(ref_s, correct_scale=(mode == "sim3"))
        ape = metrics.APE(metrics.PoseRelation.translation_part)
        ape.process_data((ref_s, e))
        rpe_t = metrics.RPE(metrics.PoseRelation.translation_part, 1, metrics.Unit.frames)
        rpe_t.process_data((ref_s, e))
        rpe_r = metrics.RPE(metrics.PoseRelation.rotation_angle_deg, 1, metrics.Unit.frames)
        rpe_r.process_data((ref_s, e))
        rpe_d = metrics.RPE(
            metrics.PoseRelation.translation_part, 5.0, metrics.Unit.meters, pairs_from_reference=True
        )
        rpe_d.process_data((ref_s, e))

        r = evaluate(est, gt, align=mode, max_diff=0.02, rpe_delta_m=5.0)
        assert r.num_matched == ref_s.num_poses
        np.testing.assert_allclose(r.gt.timestamps[r.gt_idx], ref_s.timestamps, atol=1e-9)
        assert r.scale == pytest.approx(scale, rel=1e-9)
        ape_stats = ape.get_all_statistics()
        for key in ("rmse", "mean", "median", "max", "std"):
            assert r.ate[key] == pytest.approx(ape_stats[key], abs=1e-9), key
        assert r.rpe_trans["rmse"] == pytest.approx(rpe_t.get_all_statistics()["rmse"], abs=1e-9)
        assert r.rpe_rot_deg["rmse"] == pytest.approx(rpe_r.get_all_statistics()["rmse"], abs=1e-7)
        assert r.rpe_dist_num_pairs == len(rpe_d.error)
        assert r.rpe_dist_trans["rmse"] == pytest.approx(rpe_d.get_all_statistics()["rmse"], abs=1e-9)

    # EuRoC csv reader against evo's.
    csv_evo = file_interface.read_euroc_csv_trajectory(str(ref / "V102_groundtruth.csv"))
    csv = read_euroc_csv(ref / "V102_groundtruth.csv")
    np.testing.assert_allclose(csv.timestamps, csv_evo.timestamps, atol=1e-6)
    np.testing.assert_allclose(csv.T_wc, np.asarray(csv_evo.poses_se3), atol=1e-9)


# ------------------------------------------------------------------------------------------ readers
def test_readers_on_reference_files(tmp_path):
    ref = shared_sequence("trajectory_reference")
    assert detect_format(ref / "KITTI_00_gt.txt") == "kitti"
    assert detect_format(ref / "V102_groundtruth.csv") == "euroc"
    assert detect_format(ref / "fr2_desk_groundtruth.txt") == "tum"

    kitti = read_kitti(ref / "KITTI_00_gt.txt", timestamps=ref / "KITTI_00_gt_times.txt")
    assert len(kitti) == 4541
    assert kitti.timestamps[1] == pytest.approx(0.1037359)
    assert kitti.T_wc[1, 2, 3] == pytest.approx(0.8586941)  # tz of the second row
    R = kitti.T_wc[:, :3, :3]
    np.testing.assert_allclose(R @ np.swapaxes(R, 1, 2), np.broadcast_to(np.eye(3), R.shape), atol=1e-5)
    np.testing.assert_array_equal(read_kitti(ref / "KITTI_00_ORB.txt").timestamps[:3], [0.0, 1.0, 2.0])
    with pytest.raises(InputError, match="4541 poses but 3 timestamps"):
        read_kitti(ref / "KITTI_00_gt.txt", timestamps=[0.0, 1.0, 2.0])

    euroc = read_trajectory(ref / "V102_groundtruth.csv")
    # First row: 1403715524907143168,0.515356,1.996773,0.971104, q_w 0.161996, q_xyz 0.789985,-0.205376,0.554528
    assert euroc.timestamps[0] == pytest.approx(1403715524.907143168, abs=1e-6)
    np.testing.assert_allclose(euroc.positions[0], [0.515356, 1.996773, 0.971104])
    q_xyzw = [0.789985, -0.205376, 0.554528, 0.161996]
    np.testing.assert_allclose(euroc.T_wc[0, :3, :3], Rotation.from_quat(q_xyzw).as_matrix(), atol=1e-6)
    assert np.all(np.diff(euroc.timestamps) > 0)

    tum = read_trajectory(ref / "freiburg1_xyz-groundtruth.txt")
    assert len(tum) == 3000 and tum.timestamps[0] > 1.3e9

    bad = tmp_path / "five_columns.txt"
    bad.write_text("1 2 3 4 5\n")
    with pytest.raises(InputError, match="unknown trajectory format"):
        read_trajectory(bad)
    with pytest.raises(InputError, match="not found"):
        read_trajectory(tmp_path / "missing.txt")
    with pytest.raises(InputError, match="unknown trajectory format 'g2o'"):
        read_trajectory(ref / "KITTI_00_gt.txt", fmt="g2o")


# ------------------------------------------------------------------------------------ plot, command
def test_top_view_axes_and_plot(tmp_path):
    pts = np.zeros((10, 3))
    pts[:, 0] = np.linspace(0, 5, 10)
    pts[:, 2] = np.linspace(0, -20, 10)
    pts[:, 1] = 0.1 * np.sin(np.arange(10))
    assert top_view_axes(pts) == (0, 2)

    gt = _random_trajectory(60, seed=10)
    r = evaluate(gt, gt, align="se3")
    out = save_eval_plot(r, tmp_path / "sub" / "eval.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_command_exit_codes_and_output(tmp_path, capsys):
    gt = _random_trajectory(80, seed=11)
    est = transform_trajectory(gt, Rotation.random(random_state=12).as_matrix(), np.ones(3), 0.5)
    gt_path, est_path = tmp_path / "gt.txt", tmp_path / "est.txt"
    write_tum(gt_path, gt)
    write_tum(est_path, est)

    args = _parser().parse_args([str(est_path), str(gt_path), "--json", "--plot", str(tmp_path / "p.png")])
    assert run(args) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["align"] == "sim3" and d["num_matched"] == 80
    assert d["scale"] == pytest.approx(2.0, rel=1e-5) and d["ate_rmse"] < 1e-5
    assert (tmp_path / "p.png").is_file()

    assert run(_parser().parse_args([str(est_path), str(gt_path), "--align", "se3"])) == 0
    table = capsys.readouterr().out
    assert "ATE RMSE" in table and "se3" in table and "RPE" in table

    missing = tmp_path / "nope.txt"
    assert run(_parser().parse_args([str(missing), str(gt_path)])) == 1
    err = capsys.readouterr().err
    assert str(missing) in err and "not found" in err

    far = Trajectory(est.timestamps + 50.0, est.T_wc)
    write_tum(est_path, far)
    assert run(_parser().parse_args([str(est_path), str(gt_path)])) == 1
    assert "need at least 3" in capsys.readouterr().err

    with pytest.raises(SystemExit) as exc:
        _parser().parse_args([str(est_path), str(gt_path), "--align", "affine"])
    assert exc.value.code == 2


def test_command_kitti_reference(capsys):
    ref = shared_sequence("trajectory_reference")
    args = _parser().parse_args(
        [str(ref / "KITTI_00_ORB.txt"), str(ref / "KITTI_00_gt.txt"), "--align", "se3", "--json"]
    )
    assert run(args) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["ate_rmse"] == pytest.approx(1.3034497146, abs=1e-6)
    assert d["tracked_fraction"] == 1.0 and math.isclose(d["scale"], 1.0)
    assert 3000 < d["path_length"] < 4500
