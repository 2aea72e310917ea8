"""slam bench: a tiny suite through worker processes, well-formed outputs, --compare, soak, Ray, profile."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import numpy as np
import pytest

from slam.bench.jobs import Job, execute_isolated, run_ray
from slam.bench.profile import build_tree, format_profile
from slam.bench.report import Thresholds, compare, load_results, summarise, validate_results
from slam.bench.soak import analyse_soak, run_soak
from slam.bench.suites import SynthSpec, folder_suite, parse_variant, parse_variants
from slam.cli import main
from slam.errors import ConfigError, InputError


@pytest.fixture(scope="module")
def tiny_suite(tmp_path_factory) -> Path:
    """Two small synthetic sequences: a room that tracks in 20 frames at 320x240, a 160x120 tube."""
    root = tmp_path_factory.mktemp("suite")
    SynthSpec("room", 20, 0, 320, 240).materialise(root)
    SynthSpec("tube", 20, 1, 160, 120).materialise(root)
    return root


@pytest.fixture(scope="module")
def bench_out(tiny_suite, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    code = main(["bench", str(tiny_suite), "--configs", "sift", "--workers", "2", "--out", str(out), "--quiet",
                 "--strict"])
    assert code == 0
    return out


def test_results_are_well_formed_and_match_each_run(bench_out, tiny_suite):
    from slam.evaluation.metrics import evaluate
    from slam.evaluation.trajectory import read_tum

    data = json.loads((bench_out / "results.json").read_text())
    assert validate_results(data) == []
    assert data["meta"]["suite"] == tiny_suite.name and data["meta"]["command"].startswith("slam bench ")
    assert data["meta"]["machine"]["cpu_count"] >= 1
    runs = data["runs"]
    assert sorted(r["sequence"] for r in runs) == ["room-320x240-20-0", "tube-160x120-20-1"]
    for row in runs:
        assert row["status"] == "ok", row.get("error")
        run_dir = Path(row["out_dir"])
        stats = json.loads((run_dir / "stats.json").read_text())
        assert row["frames"] == stats["frames"] == 20
        assert row["keyframes"] == stats["keyframes"] and row["map_points"] == stats["map_points"]
        assert row["tracked_pct"] == pytest.approx(100 * stats["tracked_fraction"], abs=0.01)
        assert row["fps"] == pytest.approx(stats["fps"], rel=1e-3)
        # memory: the process high-water mark is at least what was sampled while running, and above baseline
        assert row["peak_rss_mb"] >= row["rss_before_mb"] > 0
        assert row["peak_rss_mb"] >= 0.95 * row["run_peak_rss_mb"]
        # per-stage ms per frame: frame time cannot exceed the run's wall time per frame
        assert 0 < row["stage_ms"]["frame"] <= row["ms_per_frame"] * 1.01
        # the ATE in the row is the ATE of the trajectory written, recomputed independently
        if row["ate_rmse"] is None:
            assert not (run_dir / "eval.json").exists() or row["frames"] < 3
        else:
            res = evaluate(read_tum(run_dir / "trajectory.txt"), read_tum(Path(row["path"]) / "groundtruth.txt"),
                           align="sim3")
            assert row["ate_rmse"] == pytest.approx(float(res.ate["rmse"]), rel=1e-3, abs=1e-6)
    md = (bench_out / "results.md").read_text()
    assert "| sequence | config | ATE RMSE" in md
    for row in runs:
        assert f"| {row['sequence']} | sift |" in md
    assert md.count("\n|") >= 2 + 2 * 2  # two tables with a header, a rule and two rows each


def test_compare_flags_an_injected_regression(bench_out, tmp_path):
    new = load_results(bench_out)
    assert compare(new, new) == []
    old = json.loads(json.dumps(new))
    target = old["summary"][0]
    target["metrics"]["fps"]["median"] = new["summary"][0]["metrics"]["fps"]["median"] * 2.0
    target["metrics"]["tracked_pct"] = {"median": 100.0, "min": 100.0, "max": 100.0}
    regs = compare(old, new)
    flagged = {(r["sequence"], r["metric"]) for r in regs}
    assert (target["sequence"], "fps") in flagged
    tracked_now = new["summary"][0]["metrics"]["tracked_pct"]["median"]
    assert ((target["sequence"], "tracked_pct") in flagged) == (100.0 - tracked_now > 2.0)
    assert all(r["sequence"] == target["sequence"] for r in regs)
    # ATE: +25 % is a regression, +10 % is not
    base = {"summary": [{"sequence": "s", "config": "c", "runs": 1, "ok": 1,
                         "metrics": {"ate_rmse": {"median": 1.0, "min": 1.0, "max": 1.0}}}]}
    worse = json.loads(json.dumps(base))
    worse["summary"][0]["metrics"]["ate_rmse"]["median"] = 1.25
    assert [r["metric"] for r in compare(base, worse)] == ["ate_rmse"]
    worse["summary"][0]["metrics"]["ate_rmse"]["median"] = 1.10
    assert compare(base, worse) == []
    assert compare(base, worse, Thresholds(ate_rel=0.05)) != []
    # a run that worked before and fails now
    failed = json.loads(json.dumps(base))
    failed["summary"][0].update(ok=0, metrics={})
    assert [r["metric"] for r in compare(base, failed)] == ["status"]


def test_compare_exit_code_on_the_command_line(bench_out, tiny_suite, tmp_path):
    old = load_results(bench_out)
    for s in old["summary"]:
        s["metrics"]["fps"]["median"] *= 10.0  # "it used to be ten times faster"
        for other in ("ate_rmse", "tracked_pct"):  # the shorter run below may track differently: not compared
            s["metrics"].pop(other, None)
    old_path = tmp_path / "old.json"
    old_path.write_text(json.dumps(old))
    seq = tiny_suite / "tube-160x120-20-1"
    out = tmp_path / "again"
    code = main(["bench", str(seq), "--configs", "sift", "--workers", "1", "--max-frames", "12", "--out", str(out),
                 "--compare", str(old_path), "--fail-on-regression", "--quiet"])
    assert code == 3
    data = json.loads((out / "results.json").read_text())
    assert [r["metric"] for r in data["regressions"]] == ["fps"]
    assert "## Comparison with" in (out / "results.md").read_text()


def test_failed_and_timed_out_runs_are_rows_not_crashes(tmp_path, tiny_suite):
    bad = Job(id="x/sift/r0", suite="t", sequence="x", path=str(tmp_path / "missing"), variant="sift",
              out_dir=str(tmp_path / "bad"))
    row = execute_isolated(bad)
    assert row["status"] == "failed" and "missing" in row["error"]
    assert row.get("frames") is None
    slow = Job(id="t/sift/r0", suite="t", sequence="t", path=str(tiny_suite / "room-320x240-20-0"), variant="sift",
               out_dir=str(tmp_path / "slow"), timeout_s=0.3)
    row = execute_isolated(slow)
    assert row["status"] == "timeout" and "0.3" in row["error"]
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    cancelled = execute_isolated(Job(**dict(slow.to_dict(), timeout_s=None, out_dir=str(tmp_path / "c"))), cancel)
    assert cancelled["status"] == "failed" and "cancelled" in cancelled["error"] and cancelled["job_s"] < 15
    data = {"schema": 1, "meta": {"suite": "t", "command": "c", "date": "d", "machine": {}}, "runs": [row],
            "summary": summarise([row])}
    assert validate_results(data) == []
    data["runs"][0] = dict(row, error=None)
    assert any("without an error" in p for p in validate_results(data))


def test_validation_catches_malformed_rows():
    row = {"id": "a/b/r0", "suite": "s", "sequence": "a", "config": "b", "repeat": 0, "status": "ok",
           "frames": 10, "fps": 5.0, "tracked_pct": 50.0, "ate_rmse": 0.1}
    good = {"schema": 1, "meta": {"suite": "s", "command": "c", "date": "d", "machine": {}}, "runs": [row],
            "summary": summarise([row])}
    assert validate_results(good) == []
    for key, value, expect in (("tracked_pct", 150.0, "outside"), ("fps", 0, "fps"), ("ate_rmse", float("nan"), "finite"),
                               ("status", "weird", "unknown status")):
        bad = json.loads(json.dumps(good))
        bad["runs"][0][key] = value
        problems = validate_results(bad)
        assert any(expect in p for p in problems), (key, problems)
    bad = json.loads(json.dumps(good))
    bad["summary"] = []
    assert validate_results(bad)


def test_repeats_are_summarised_by_median_and_range():
    from slam.bench.report import format_markdown

    rows = [{"id": f"a/b/r{k}", "suite": "s", "sequence": "a", "config": "b", "repeat": k, "status": "ok",
             "frames": 10, "fps": fps, "tracked_pct": 90.0, "ate_rmse": ate}
            for k, (fps, ate) in enumerate([(1.0, 0.3), (2.0, 0.1), (10.0, 0.2)])]
    rows.append(dict(rows[0], id="a/b/r3", repeat=3, status="failed", error="boom", fps=None))
    (s,) = summarise(rows)
    assert s["metrics"]["fps"] == {"median": 2.0, "min": 1.0, "max": 10.0}
    assert s["metrics"]["ate_rmse"]["median"] == pytest.approx(0.2)
    assert (s["runs"], s["ok"], s["status"], s["errors"]) == (4, 3, "partial", ["boom"])
    md = format_markdown({"meta": {"suite": "s", "repeat": 4, "machine": {}}, "summary": [s]})
    assert "| a | b | 0.2000 ±0.1000 |" in md and "3/4 ok" in md and "boom" in md


def test_variants():
    assert parse_variant("sift").overrides == ("features.type=sift",)
    assert parse_variant("orb+hybrid").overrides == ("features.type=orb", "tracking.frontend=hybrid")
    v = parse_variant("sift2k=features.type=sift,features.num_features=2000")
    assert v.name == "sift2k" and v.overrides == ("features.type=sift", "features.num_features=2000")
    for bad in ("surf", "sift+warp", "x=", "x=features.type"):
        with pytest.raises(ConfigError):
            parse_variant(bad)
    with pytest.raises(ConfigError):
        parse_variants("sift,orb,sift")
    from slam.config import load_config

    for v in parse_variants("sift,orb,superpoint,sift+flow,orb+hybrid"):
        load_config("default", list(v.overrides))  # every generated override is a valid config key


def test_folder_suite_finds_sequences_and_rejects_empty(tiny_suite, tmp_path):
    suite = folder_suite(tiny_suite)
    assert [s.name for s in suite.sequences] == ["room-320x240-20-0", "tube-160x120-20-1"]
    assert {s.config for s in suite.sequences} == {"default"}  # pinhole presets: no mask, default config
    with pytest.raises(InputError):
        folder_suite(tmp_path)


def test_profile_breakdown_nests_and_weighs_by_calls():
    stats = {"frames": 100, "sync": True, "fps": 10.0,
             "stage_ms": {"frame": 50.0, "extract": 20.0, "match": 5.0, "mapping": 200.0, "ba": 100.0,
                          "triangulate": 50.0, "custom": 1.0},
             "stage_calls": {"frame": 100, "extract": 100, "match": 100, "mapping": 10, "ba": 10,
                             "triangulate": 10, "custom": 100}}
    roots = build_tree(stats)
    by_name = {r.name: r for r in roots}
    assert set(by_name) == {"frame", "custom"}
    frame = by_name["frame"]
    children = {c.name: c for c in frame.children}
    assert set(children) == {"extract", "match", "mapping"}
    assert children["mapping"].ms == pytest.approx(20.0)  # 200 ms x 10 calls / 100 frames
    assert [c.name for c in children["mapping"].children] == ["ba", "triangulate"]
    assert children["mapping"].children[0].ms == pytest.approx(10.0)
    text = format_profile(stats)
    lines = text.splitlines()
    assert "50.0 ms per frame" in lines[0]
    ba = next(l for l in lines if l.strip().startswith("ba"))
    assert ba.startswith("    ba") and "20.0%" in ba
    other = [l for l in lines if "(other)" in l]
    assert any("5.00 ms" in l for l in other)  # frame 50 - extract 20 - match 5 - mapping 20
    stats["sync"] = False
    assert {r.name for r in build_tree(stats)} == {"frame", "mapping", "custom"}
    assert "no stage timings" in format_profile({"frames": 3, "stage_ms": {}})


def test_soak_analysis_verdicts():
    frames = np.arange(0, 5001, 100)
    flat = [{"frame": int(f), "rss_mb": 300.0 + 2.0 * math.sin(f / 300), "keyframes": min(int(f) // 20, 50),
             "map_points": 2000, "maps": 1} for f in frames]
    a = analyse_soak(flat, 50)
    assert a["rss_bounded"] is True and a["map_bounded"] is True
    growing = [dict(s, rss_mb=300.0 + 0.02 * s["frame"], keyframes=int(s["frame"]) // 20) for s in flat]
    a = analyse_soak(growing, 50)
    assert a["rss_bounded"] is False and a["map_bounded"] is False
    assert a["rss_slope_mb_per_1000_frames"] == pytest.approx(20.0, rel=1e-6)


def test_small_soak_run_writes_curve(tmp_path, tiny_suite):
    # the tiny suite's tube is the soak sequence's cache entry: nothing new to render
    result = run_soak(tmp_path / "soak", frames=20, size=(160, 120), preset="tube", seed=1, max_keyframes=5,
                      sample_every=5, cache_dir=tiny_suite, overrides=["system.device=cpu"])
    assert result["row"]["status"] == "ok", result["row"].get("error")
    samples = result["samples"]
    assert [s["frame"] for s in samples] == [1, 5, 10, 15, 20]
    assert all(s["rss_mb"] > 0 for s in samples)
    assert "mapping.max_keyframes=5" in result["overrides"]
    assert max(s["keyframes"] for s in samples) <= 6
    saved = json.loads((tmp_path / "soak" / "soak.json").read_text())
    assert saved["analysis"]["samples"] == len(samples)
    assert (tmp_path / "soak" / "soak.png").stat().st_size > 1000


def test_ray_runs_the_smallest_job(tiny_suite, tmp_path):
    ray = pytest.importorskip("ray")
    job = Job(id="tube/sift/r0", suite="t", sequence="tube-160x120-20-1", path=str(tiny_suite / "tube-160x120-20-1"),
              variant="sift", out_dir=str(tmp_path / "ray" / "r0"), config="default",
              overrides=["features.type=sift", "system.sync=true", "system.device=cpu", "source.max_frames=10"])
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        rows = run_ray([job], address=None)
    finally:
        ray.shutdown()
    assert len(rows) == 1 and rows[0]["status"] == "ok", rows[0].get("error")
    assert rows[0]["frames"] == 10
    assert (tmp_path / "ray" / "r0" / "stats.json").is_file()
