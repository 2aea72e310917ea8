"""tools/oracle_tracks.py: SLAM with flow tracks replaced by ground-truth projections plus an error model."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from slam.synth import generate

TOOL = Path(__file__).resolve().parents[1] / "tools" / "oracle_tracks.py"


@pytest.fixture(scope="module")
def oracle():
    spec = importlib.util.spec_from_file_location("oracle_tracks", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tube_with_depth(tmp_path_factory):
    return generate("tube", tmp_path_factory.mktemp("oracle") / "tube", frames=50, seed=1, size=(320, 240), depth=True)


def ate_percent(out: Path) -> float:
    return json.loads((out / "eval.json").read_text())["ate_percent_of_path"]


def test_exact_tracks_give_a_near_perfect_trajectory_and_errors_degrade_it(oracle, tube_with_depth, tmp_path):
    import slam.flow_tracking as flow

    carry = flow.FlowTracker._carry
    for mode, amount in (("exact", 0), ("iid", 3.0)):
        rc = oracle.main([str(tube_with_depth), str(tmp_path / mode), mode, str(amount), "--sync", "--quiet"])
        assert rc == 0
    assert flow.FlowTracker._carry is carry  # the patch is undone after the run
    exact, noisy = ate_percent(tmp_path / "exact"), ate_percent(tmp_path / "iid")
    assert exact < 0.2, exact
    assert noisy > 2 * exact, (exact, noisy)


def test_a_sequence_without_depth_is_refused_by_name(oracle, tmp_path):
    seq = generate("tube", tmp_path / "nodepth", frames=3, seed=0, size=(160, 120))
    with pytest.raises(SystemExit, match="nodepth.*depth"):
        oracle.main([str(seq), str(tmp_path / "out"), "exact", "0"])
