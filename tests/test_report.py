"""Run report: a fake run folder gives a self-contained report.html with the key numbers and plots."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest

from slam.errors import InputError
from slam.evaluation.metrics import evaluate
from slam.evaluation.trajectory import Trajectory, write_tum
from slam.geometry.se3 import make_T, so3_exp
from slam.report import write_report

NOISE_M = 0.01


def _groundtruth(n: int = 100) -> Trajectory:
    t = np.arange(n) / 30.0
    T = np.tile(np.eye(4), (n, 1, 1))
    a = np.linspace(0, np.pi, n)
    T[:, :3, 3] = np.stack([2 * np.cos(a), 2 * np.sin(a), 0.1 * np.sin(3 * a)], axis=1)
    for i in range(n):
        T[i, :3, :3] = so3_exp(np.array([0.0, 0.0, a[i]]))
    return Trajectory(t, T)


def _make_run(folder, with_gt: bool = True) -> dict:
    """A run folder as `slam run` leaves it: frames 0-9 initialising, 50-54 lost, the rest tracked."""
    rng = np.random.default_rng(4)
    gt = _groundtruth()
    n = len(gt)
    states = np.array(["tracking"] * n, dtype=object)
    states[:10] = "initialising"
    states[50:55] = "lost"
    tracked_idx = np.flatnonzero(states == "tracking")
    # the estimate: ground truth in another frame and scale, with position noise
    S = make_T(so3_exp(np.array([0.3, -0.2, 1.0])), np.array([1.0, -2.0, 0.5]))
    scale = 0.4
    T_est = gt.T_wc[tracked_idx].copy()
    T_est[:, :3, 3] += rng.normal(scale=NOISE_M, size=(len(tracked_idx), 3))
    T_est[:, :3, 3] = scale * T_est[:, :3, 3] @ S[:3, :3].T + S[:3, 3]
    T_est[:, :3, :3] = S[:3, :3] @ T_est[:, :3, :3]
    est = Trajectory(gt.timestamps[tracked_idx], T_est)
    write_tum(folder / "trajectory.txt", est)
    write_tum(folder / "keyframes.txt", Trajectory(est.timestamps[::10], est.T_wc[::10]))
    points = np.where(states == "tracking", rng.integers(150, 400, size=n), 0)
    lines = [f"{i} {gt.timestamps[i]:.6f} {states[i]} {points[i]}" for i in range(n)]
    (folder / "states.txt").write_text("# index timestamp state tracked_points\n" + "\n".join(lines) + "\n")
    stats = {
        "frames": n, "tracked": len(tracked_idx), "tracked_fraction": len(tracked_idx) / n, "lost": 5,
        "initialising": 10, "keyframes": 9, "keyframes_culled": 1, "map_points": 4321, "maps": 1,
        "resets": 0, "wall_s": 12.5, "fps": 8.0,
        "stage_ms": {"extract": 41.25, "match": 7.5, "ba": 88.75},
        "stage_calls": {"extract": 100, "match": 90, "ba": 9},
        "features": "sift", "frontend": "descriptors", "device": "cpu", "sync": True, "interrupted": False,
        "config": {"features": {"type": "sift", "num_features": 1500}, "system": {"seed": 0, "sync": True}},
    }
    (folder / "stats.json").write_text(json.dumps(stats))
    result = None
    if with_gt:
        write_tum(folder / "groundtruth.txt", gt)
        result = evaluate(est, gt, align="sim3")
        (folder / "eval.json").write_text(json.dumps(result.to_dict()))
    return {"stats": stats, "result": result}


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def _cell(page: str, label: str) -> str:
    m = re.search(rf"<td>{re.escape(label)}</td><td>([^<]*)</td>", page)
    assert m, f"no table row {label!r}"
    return m.group(1)


def test_report_with_ground_truth(tmp_path):
    run = _make_run(tmp_path)
    out = write_report(tmp_path)
    assert out == tmp_path / "report.html"
    page = out.read_text(encoding="utf-8")
    images = _images(page)
    assert len(images) == 4  # trajectory, ATE/RPE over time, tracked points, stage timing
    assert all(img.startswith(b"\x89PNG\r\n\x1a\n") and len(img) > 5000 for img in images)
    assert "src=\"http" not in page and "<script" not in page  # self-contained

    assert _cell(page, "frames") == "100"
    assert _cell(page, "tracked frames") == "85 (85.0 %)"
    assert _cell(page, "map points") == "4321"
    assert _cell(page, "frames per second") == "8"
    # the accuracy numbers: those of the evaluation, and the ATE at the level of the noise put in
    res = run["result"]
    ate = float(_cell(page, "ATE RMSE"))
    assert ate == pytest.approx(res.ate_rmse, rel=1e-3)
    assert 0.5 * NOISE_M < ate < 3 * NOISE_M
    assert float(_cell(page, "Sim3 scale")) == pytest.approx(1 / 0.4, rel=0.02)
    # state shares and stage timings
    assert "<td>lost</td><td>5</td><td>5.0 %</td>" in page
    assert "<td>ba</td><td>88.750</td><td>9</td><td>0.80</td>" in page
    # configuration as YAML
    assert "num_features: 1500" in page and "features:" in page


def test_report_without_ground_truth(tmp_path):
    _make_run(tmp_path, with_gt=False)
    page = write_report(tmp_path).read_text(encoding="utf-8")
    assert "no ground truth" in page
    assert "ATE RMSE" not in page
    assert len(_images(page)) == 3  # trajectory (own frame), tracked points, stage timing
    assert _cell(page, "keyframes") == "9"


def test_report_survives_broken_inputs(tmp_path):
    _make_run(tmp_path)
    (tmp_path / "states.txt").write_text("0 0.0 tracking\n")  # a malformed line
    (tmp_path / "groundtruth.txt").write_text("# nothing\n")  # unreadable ground truth
    page = write_report(tmp_path).read_text(encoding="utf-8")
    assert "states.txt could not be read" in page
    assert "groundtruth.txt could not be read" in page
    assert "ATE RMSE" in page  # the numbers of eval.json are still shown
    assert len(_images(page)) == 2  # trajectory without ground truth and stage timing


def test_report_of_a_run_that_tracked_nothing_is_quiet(tmp_path, caplog):
    """No motion (a static camera): empty trajectory files are a normal outcome, noted, not warned about."""
    (tmp_path / "trajectory.txt").write_text("# timestamp tx ty tz qx qy qz qw\n")
    (tmp_path / "keyframes.txt").write_text("")
    (tmp_path / "states.txt").write_text("# index timestamp state tracked_points\n"
                                         + "".join(f"{i} {i / 20:.6f} initialising 0\n" for i in range(40)))
    (tmp_path / "stats.json").write_text(json.dumps({"frames": 40, "tracked": 0, "keyframes": 0, "maps": 0}))
    with caplog.at_level("WARNING", logger="slam.report"):
        page = write_report(tmp_path).read_text(encoding="utf-8")
    assert "trajectory.txt holds no poses (nothing was tracked)" in page
    assert "could not be read" not in page
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_report_refuses_non_run_folders(tmp_path):
    with pytest.raises(InputError, match="not found"):
        write_report(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty.*not a run folder"):
        write_report(tmp_path / "empty")
